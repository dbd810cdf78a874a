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
if command -v tansu >/dev/null 2>&1; then
  work=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
  tpid=$!
  trap 'kill $tpid 2>/dev/null; rm -rf "$work"' EXIT
  for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
  echo "== pipeline on tansu (127.0.0.1:$port)"
  cargo bench --bench pipeline -- --bootstrap "127.0.0.1:$port" --events "${1:-1000000}" 2>/dev/null | sed -n '/^pipeline bench/,$p'
else
  echo "tansu not installed (scripts/setup.sh --tansu): skipping the tansu run"
fi
