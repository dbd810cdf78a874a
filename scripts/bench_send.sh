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
if command -v tansu >/dev/null 2>&1; then
  work=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
  tpid=$!
  trap 'kill $tpid 2>/dev/null; rm -rf "$work"' EXIT
  for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
  echo "== sender RSS with a backlog on tansu (127.0.0.1:$port)"
  cargo bench --bench sender -- --bootstrap "127.0.0.1:$port" --backlog "${1:-1000000}" 2>/dev/null | sed -n '/^backlog/,$p'
else
  echo "tansu not installed (scripts/setup.sh --tansu): skipping the backlog run"
fi
