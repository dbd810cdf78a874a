#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what they need (scripts/setup.sh), runs the
# unit, golden, property and mock-cluster tests (cargo test), then the end-to-end suites in
# tests/e2e/ (tansu, a real broker server, with outside Python clients; the deploy files;
# Segment's own Python and Node.js libraries against ingest).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh --tansu
cargo build --release --bins
# Unit, golden, property and mock-cluster tests; benches are only compiled here (their figures
# come from `cargo bench`, scripts/bench_map.sh and scripts/bench_send.sh, never from timed tests).
cargo test --lib --bins --tests
cargo bench --no-run
export EVENTRELAY_REQUIRE_TANSU=1 EVENTRELAY_REQUIRE_CLIENTS=1
for t in tests/e2e/*.sh; do
  [ -e "$t" ] || continue
  echo "== $t"
  bash "$t"
done
echo "all tests passed"
