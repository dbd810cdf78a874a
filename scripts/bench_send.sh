#!/usr/bin/env bash
# Send stage figures the README quotes:  bash scripts/bench_send.sh [BACKLOG_ON_TANSU]  (default 1000000)
#  1. the HTTP ceiling of this machine (reqwest → axum answering 200, no Kafka);
#  2. deliveries/s to the stub (its own process) at concurrency 64, and latency at half that rate;
#  3. on tansu: the sender's RSS while Seg is down and a backlog of N records waits in Kafka.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
echo "== HTTP ceiling (cargo bench --bench http_ceiling)"
cargo bench --bench http_ceiling 2>/dev/null | sed -n '/^HTTP ceiling/,$p'
echo "== sender on the mock cluster (cargo bench --bench sender)"
cargo bench --bench sender 2>/dev/null | sed -n '/^sender bench/,$p'
. scripts/bench_tansu.sh
tansu_start
if [ -n "$TANSU_BOOT" ]; then
  echo "== sender RSS with a backlog on tansu ($TANSU_BOOT)"
  cargo bench --bench sender -- --bootstrap "$TANSU_BOOT" --backlog "${1:-1000000}" 2>/dev/null | sed -n '/^backlog/,$p'
fi
