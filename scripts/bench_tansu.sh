# Sourced by the bench scripts: start a throw-away tansu (memory storage) on a free loopback
# port, stopped and cleaned up on exit. Sets TANSU_BOOT, or leaves it empty when tansu is not
# installed (scripts/setup.sh --tansu installs it).
TANSU_BOOT=
if command -v tansu >/dev/null 2>&1; then
  tansu_work=$(mktemp -d)
  tansu_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  tansu broker --listener-url "tcp://127.0.0.1:$tansu_port" --advertised-listener-url "tcp://127.0.0.1:$tansu_port" \
    --storage-engine memory://tansu/ >"$tansu_work/tansu.log" 2>&1 &
  tansu_pid=$!
  trap 'kill "$tansu_pid" 2>/dev/null || true; wait "$tansu_pid" 2>/dev/null || true; rm -rf "$tansu_work"' EXIT
  for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$tansu_port") 2>/dev/null && break; sleep 0.2; done
  if ! (echo >"/dev/tcp/127.0.0.1/$tansu_port") 2>/dev/null; then
    echo "tansu did not listen on 127.0.0.1:$tansu_port within 10 s:" >&2
    tail -n 5 "$tansu_work/tansu.log" >&2
    exit 1
  fi
  TANSU_BOOT="127.0.0.1:$tansu_port"
else
  echo "tansu not installed (scripts/setup.sh --tansu): skipping the tansu run"
fi
