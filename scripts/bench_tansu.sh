# Sourced by the bench scripts: `tansu_start` starts a throw-away tansu (memory storage) on a
# free loopback port and sets TANSU_BOOT; `tansu_stop` stops it (also done on exit). Without
# tansu installed (scripts/setup.sh --tansu installs it) TANSU_BOOT stays empty.
TANSU_BOOT=
tansu_pid=
tansu_work=
tansu_stop() {
  if [ -n "$tansu_pid" ]; then
    kill "$tansu_pid" 2>/dev/null || true
    wait "$tansu_pid" 2>/dev/null || true
  fi
  [ -z "$tansu_work" ] || rm -rf "$tansu_work"
  tansu_pid=
  tansu_work=
  TANSU_BOOT=
}
tansu_start() {
  tansu_stop
  if ! command -v tansu >/dev/null 2>&1; then
    echo "tansu not installed (scripts/setup.sh --tansu): skipping the tansu run"
    return 0
  fi
  tansu_work=$(mktemp -d)
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$tansu_work/tansu.log" 2>&1 &
  tansu_pid=$!
  for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
  if ! (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "tansu did not listen on 127.0.0.1:$port within 10 s:" >&2
    tail -n 5 "$tansu_work/tansu.log" >&2
    exit 1
  fi
  TANSU_BOOT="127.0.0.1:$port"
}
trap tansu_stop EXIT
