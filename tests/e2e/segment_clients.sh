#!/usr/bin/env bash
# Segment's own client libraries, unmodified from the registries, against eventrelay's ingest:
# `segment-analytics-python` (PyPI, with gzip on) and `@segment/analytics-node` (npm) are
# pointed at `eventrelay run --role ingest` with their `host` option and send identify, track,
# page, screen, group and alias; tests/clients/check.py then reads the input topic with
# confluent-kafka and finds each call exactly once, keyed by userId, with its fields and the
# ones ingest fills. The broker is the process's embedded cluster (its address is read from the
# JSON log), so nothing else has to run.
# Needs python3 with segment-analytics-python and confluent-kafka, node with
# tests/clients/node_modules (scripts/setup.sh installs all three), and a built eventrelay:
# $EVENTRELAY_BIN, else target/release, else target/debug (never builds it; waits up to 20
# minutes for one to appear, as scripts/test.sh builds it first).
# Prints PASS/FAIL lines; exits non-zero on any failure. Missing libraries are a SKIP unless
# EVENTRELAY_REQUIRE_CLIENTS=1 (scripts/test.sh sets it).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

skip_or_fail() {
  if [ "${EVENTRELAY_REQUIRE_CLIENTS:-0}" = 1 ]; then
    echo "FAIL $1 (EVENTRELAY_REQUIRE_CLIENTS=1)"
    exit 1
  fi
  echo "SKIP segment clients: $1"
  exit 0
}
python3 -c 'import segment.analytics, confluent_kafka' >/dev/null 2>&1 \
  || skip_or_fail "python3 lacks segment-analytics-python or confluent-kafka (scripts/setup.sh)"
command -v node >/dev/null 2>&1 || skip_or_fail "node is not installed"
[ -d "$ROOT/tests/clients/node_modules/@segment/analytics-node" ] \
  || skip_or_fail "tests/clients/node_modules lacks @segment/analytics-node (scripts/setup.sh)"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
find_bin() {
  if [ -n "${EVENTRELAY_BIN:-}" ]; then
    echo "$EVENTRELAY_BIN"
  elif [ -x "$TARGET_DIR/release/eventrelay" ]; then
    echo "$TARGET_DIR/release/eventrelay"
  elif [ -x "$TARGET_DIR/debug/eventrelay" ]; then
    echo "$TARGET_DIR/debug/eventrelay"
  fi
}
BIN=$(find_bin)
waited=0
while [ -z "$BIN" ]; do
  [ "$waited" -ge 1200 ] && { echo "FAIL no eventrelay binary after 20 minutes"; exit 1; }
  echo "waiting for target/{release,debug}/eventrelay to be built (${waited}s)"
  sleep 30
  waited=$((waited + 30))
  BIN=$(find_bin)
done

WORK=$(mktemp -d)
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

KEY="wk-clients-$$"
cat >"$WORK/config.toml" <<EOF
[metrics]
listen = "127.0.0.1:0"
[ingest]
listen = "127.0.0.1:0"
write_keys = ["$KEY"]
EOF
"$BIN" --log-format json run --config "$WORK/config.toml" --role ingest 2>"$WORK/log" &
PID=$!

# The embedded broker's and the ingest listener's addresses, from the JSON log.
field_from_log() { # $1 = field name, $2 = text in the message
  python3 - "$WORK/log" "$1" "$2" <<'EOF'
import json, sys
path, field, msg = sys.argv[1:4]
for line in open(path, errors="replace"):
    try:
        f = json.loads(line).get("fields", {})
    except ValueError:
        continue
    if msg in str(f.get("message", "")) and field in f:
        print(f[field])
        break
EOF
}
BOOTSTRAP="" ADDR=""
for _ in $(seq 1 100); do
  kill -0 "$PID" 2>/dev/null || { echo "FAIL eventrelay exited:"; cat "$WORK/log"; exit 1; }
  BOOTSTRAP=$(field_from_log bootstrap "embedded Kafka")
  ADDR=$(field_from_log addr "ingest: serving")
  [ -n "$BOOTSTRAP" ] && [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "FAIL ingest did not start:"; cat "$WORK/log"; exit 1; }
echo "eventrelay ingest at http://$ADDR, embedded Kafka at $BOOTSTRAP ($BIN)"

RUN="$(date +%s)$$"
fail=0
python3 "$ROOT/tests/clients/python_client.py" "http://$ADDR" "$KEY" "$RUN" || fail=1
(cd "$ROOT/tests/clients" && node node_client.mjs "http://$ADDR" "$KEY" "$RUN") || fail=1
python3 "$ROOT/tests/clients/check.py" "$BOOTSTRAP" segment.events "$RUN" || fail=1

kill -TERM "$PID"
if wait "$PID"; then
  echo "PASS eventrelay run --role ingest stopped cleanly on SIGTERM"
else
  echo "FAIL eventrelay exited non-zero on SIGTERM:"; tail -20 "$WORK/log"; fail=1
fi
PID=""
if [ "$fail" = 0 ]; then
  echo "PASS segment clients: python and node libraries through ingest"
else
  echo "FAIL segment clients"
  exit 1
fi
