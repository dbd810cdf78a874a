#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what they need (scripts/setup.sh), runs the
# unit, golden, property and mock-cluster tests (cargo test), then the end-to-end suite on a
# real broker server (tansu) with outside Python clients.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh --tansu
cargo build --release --bins
cargo test --all-targets
export EVENTRELAY_REQUIRE_TANSU=1
for t in tests/e2e/*.sh; do
  [ -e "$t" ] || continue
  echo "== $t"
  bash "$t"
done
echo "all tests passed"
