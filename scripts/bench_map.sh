#!/usr/bin/env bash
# Map stage vs pass-through, on the embedded mock cluster and on tansu, with the figures the
# README quotes:  bash scripts/bench_map.sh [EVENTS_ON_TANSU]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
echo "== mapping (cargo bench --bench mapping)"
cargo bench --bench mapping -- --warm-up-time 1 --measurement-time 3 2>/dev/null | sed -n '/^mapping corpus/,$p'
echo "== pipeline on the mock cluster"
cargo bench --bench pipeline 2>/dev/null | sed -n '/^pipeline bench/,$p'
. scripts/bench_tansu.sh
tansu_start
if [ -n "$TANSU_BOOT" ]; then
  echo "== pipeline on tansu ($TANSU_BOOT)"
  cargo bench --bench pipeline -- --bootstrap "$TANSU_BOOT" --events "${1:-1000000}" 2>/dev/null | sed -n '/^pipeline bench/,$p'
fi
# `BENCH_FETCH_WAIT_MS=10 bash scripts/bench_map.sh N` sets kafka.fetch_wait_max_ms in every run
# (see the README's notes: tansu's memory storage can stop returning records with short waits).
