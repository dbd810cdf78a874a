#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what they need (scripts/setup.sh), runs the
# unit, golden, property and mock-cluster tests (cargo test), then the end-to-end suite in
# tests/e2e/ (pytest: tansu, a real broker server, with outside Python clients and Segment's
# own Python and Node.js libraries against ingest), and the remaining shell suite there (the
# deploy files).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh --tansu
cargo build --release --bins
# Unit, golden, property and mock-cluster tests; benches are only compiled here (their figures
# come from `cargo bench`, scripts/bench_map.sh and scripts/bench_send.sh, never from timed tests).
cargo test --lib --bins --tests
cargo bench --no-run
# End to end: the pytest suite over tansu with outside clients (tests/e2e/README.md), where a
# missing tansu, confluent-kafka or Segment library fails instead of skipping; then the
# remaining shell suites.
export EVENTRELAY_REQUIRE_TANSU=1 EVENTRELAY_REQUIRE_CLIENTS=1
echo "== tests/e2e (pytest)"
python3 -m pytest tests/e2e -v --durations=10
for t in tests/e2e/*.sh; do
  [ -e "$t" ] || continue
  echo "== $t"
  bash "$t"
done
echo "all tests passed"
