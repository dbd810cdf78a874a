#!/usr/bin/env bash
# End-to-end suite on a real broker server (tansu, sqlite storage) with an outside client
# (tests/e2e/kafka_client.py, confluent-kafka):
#   1. map+send: 2000 generated events (every 50th invalid) through `eventrelay run --role all`;
#      the destination topics, the input dead-letter topic, per-user order, the requests the
#      stub destination received (compared with what `eventrelay map` prints for the same
#      lines), the metrics, a clean SIGTERM and the committed input offsets.
#   2. retries and dead letters: a 4 s window of Seg 503s (everything still delivered, retries
#      counted), then OwnerIQ answering 400 (records land in dest.owneriq.dlq with the send
#      error headers, after one attempt).
#   3. replay and redrive: `eventrelay replay` refuses while group e2e-replay (`run --role map`)
#      is live; after a stop a dry run changes nothing, `--to-earliest --execute` moves the group
#      to 0 and a re-run writes every dest.seg record a second time; `--to-offset 5 --partitions
#      0` moves only partition 0. Then 10 OwnerIQ dead letters (stub answering 400) are redriven
#      with `eventrelay redrive` once the stub is healthy again (delivered once each, a second
#      redrive copies nothing).
#   4. crash: `run --role map` and `run --role send` as separate processes; the sender is killed
#      with SIGKILL while delivering (the stub adds 20 ms per request so the kill lands
#      mid-stream) and restarted after its 6 s session timeout: every request `eventrelay map`
#      prints for the input reaches the stub with a 2xx at least once (duplicates are counted
#      and reported).
# Prints PASS/FAIL lines with figures; exits non-zero on any failure.
# Needs tansu on PATH (else SKIP, or FAIL with EVENTRELAY_REQUIRE_TANSU=1), python3 with
# confluent-kafka, and a built eventrelay (target/release, else target/debug; waits up to
# 20 minutes for one to appear, never builds it).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
KC=(python3 "$ROOT/tests/e2e/kafka_client.py")
START_TS=$(date +%s)

need_or_skip() { # $1 = what is missing
  if [ "${EVENTRELAY_REQUIRE_TANSU:-0}" = 1 ]; then
    echo "FAIL $1 (EVENTRELAY_REQUIRE_TANSU=1)"
    exit 1
  fi
  echo "SKIP tansu e2e: $1"
  exit 0
}
command -v tansu >/dev/null 2>&1 || need_or_skip "tansu is not on PATH"
python3 -c 'import confluent_kafka' >/dev/null 2>&1 || need_or_skip "python3 has no confluent_kafka"

# --- the eventrelay binary (built by scripts/test.sh; maybe still compiling) ---------------
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
find_bin() {
  if [ -x "$TARGET_DIR/release/eventrelay" ]; then
    echo "$TARGET_DIR/release/eventrelay"
  elif [ -x "$TARGET_DIR/debug/eventrelay" ]; then
    echo "$TARGET_DIR/debug/eventrelay"
  fi
}
BIN=$(find_bin)
waited=0
while [ -z "$BIN" ]; do
  if [ "$waited" -ge 1200 ]; then
    echo "FAIL no eventrelay binary in target/release or target/debug after 20 minutes"
    exit 1
  fi
  echo "waiting for target/{release,debug}/eventrelay to be built (${waited}s)"
  sleep 30
  waited=$((waited + 30))
  BIN=$(find_bin)
done
echo "eventrelay: $BIN"
echo "tansu: $(command -v tansu) ($(tansu --version 2>/dev/null || echo '?'))"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/eventrelay-tansu-e2e.XXXXXX")
PIDS=()
NAMES=()
FAILS=0
PASSES=0

cleanup() {
  local rc=$?
  trap - EXIT
  local i
  for i in "${!PIDS[@]}"; do
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true
  done
  for _ in $(seq 1 50); do
    local alive=0
    for i in "${!PIDS[@]}"; do
      if kill -0 "${PIDS[$i]}" 2>/dev/null; then alive=1; fi
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for i in "${!PIDS[@]}"; do
    kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    wait "${PIDS[$i]}" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ] || [ "$FAILS" -ne 0 ]; then
    echo "== logs (failure) from $WORK"
    local f
    for f in "$WORK"/*.log; do
      [ -e "$f" ] || continue
      echo "---- $(basename "$f") (last 60 lines)"
      tail -n 60 "$f" | cut -c1-400
    done
    [ "$rc" -ne 0 ] || rc=1
  fi
  if [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
  exit "$rc"
}
trap cleanup EXIT

die() {
  echo "FAIL $*"
  FAILS=$((FAILS + 1))
  exit 1
}

# start_bg NAME CMD... : run CMD in the background, logging to $WORK/NAME.log; sets LAST_PID.
start_bg() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  NAMES+=("$name")
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # PORT TIMEOUT_SECS
  python3 - "$1" "$2" <<'EOF'
import socket, sys, time
port, timeout = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
EOF
}

wait_http_ok() { # URL TIMEOUT_SECS
  python3 - "$1" "$2" <<'EOF'
import sys, time, urllib.request
url, timeout = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(1)
EOF
}

http() { # METHOD URL [JSON_BODY]
  python3 - "$@" <<'EOF'
import sys, urllib.request
method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request(url, data=data, method=method,
                             headers={"Content-Type": "application/json"} if data else {})
with urllib.request.urlopen(req, timeout=10) as r:
    sys.stdout.write(r.read().decode())
EOF
}

# run_check CMD... : a check that prints its own PASS/FAIL lines; counts failing ones.
run_check() {
  local out
  local rc=0
  out=$("$@" 2>&1) || rc=$?
  printf '%s\n' "$out"
  local p f
  p=$(printf '%s\n' "$out" | grep -c '^PASS' || true)
  f=$(printf '%s\n' "$out" | grep -c '^FAIL' || true)
  PASSES=$((PASSES + p))
  FAILS=$((FAILS + f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL check command exited $rc: $*"
    FAILS=$((FAILS + 1))
  fi
}
pass() { echo "PASS $*"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }

start_tansu() { # NAME -> sets BOOT
  local name=$1
  local port
  port=$(free_port)
  mkdir -p "$WORK/$name"
  start_bg "$name" tansu broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "sqlite:///$WORK/$name/tansu.db"
  if ! wait_port "$port" 30; then
    die "tansu ($name) did not accept connections on 127.0.0.1:$port within 30 s"
  fi
  BOOT="127.0.0.1:$port"
  echo "tansu $name on $BOOT (sqlite $WORK/$name/tansu.db)"
}

write_config() { # FILE BOOT METRICS_ADDR STUB_ADDR GROUP
  cat >"$1" <<EOF
[kafka]
bootstrap_servers = "$2"
group_id = "$5"

[metrics]
listen = "$3"

[destinations.owneriq]
endpoint = "http://$4"
data_group_id = "9nfdft"
analytics_tag_id = "gcb8"
dct_tag_id = "6qg2"
backoff_min_ms = 100
backoff_max_ms = 1000

[destinations.seg]
endpoint = "http://$4"
website_id = "abc8fb18-7559-4324-9921-a4b5015b4a1c"
backoff_min_ms = 100
backoff_max_ms = 1000
EOF
}

# stop_eventrelay PID NAME : SIGTERM, require exit 0 within 60 s.
stop_eventrelay() {
  local pid=$1 name=$2
  local t0 t1
  t0=$(date +%s.%N)
  kill -TERM "$pid"
  local i
  for i in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    fail "$name: still running 60 s after SIGTERM"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return
  fi
  local rc=0
  wait "$pid" || rc=$?
  t1=$(date +%s.%N)
  local secs
  secs=$(python3 -c "print(f'{$t1-$t0:.1f}')")
  if [ "$rc" -eq 0 ]; then
    pass "$name: exited 0 ${secs}s after SIGTERM"
  else
    fail "$name: exit code $rc after SIGTERM (${secs}s)"
  fi
}

# --- the checks, in Python ------------------------------------------------------------------
CHECK="$WORK/check.py"
cat >"$CHECK" <<'PYEOF'
"""Checks for tansu_e2e.sh. Each subcommand prints PASS/FAIL lines and exits 1 on failure."""
import json
import re
import sys
import time
import urllib.request
from collections import Counter, defaultdict

sys.path.insert(0, sys.argv.pop(1))  # tests/e2e, for kafka_client.event_key
from kafka_client import event_key  # noqa: E402

FAILED = []


def ok(msg):
    print(f"PASS {msg}")


def bad(msg):
    print(f"FAIL {msg}")
    FAILED.append(msg)


def check(cond, msg):
    (ok if cond else bad)(msg)
    return cond


def done():
    sys.exit(1 if FAILED else 0)


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def event_lines(path):
    """Non-blank input lines (bytes), as `eventrelay map` and `produce` number them."""
    data = open(path, "rb").read()
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in data.split(b"\n")]
    return [ln for ln in lines if ln.strip()]


def compact(body):
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def norm(v):
    """JSON value with integral floats as ints, so 39.0 == 39 as in JSON."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [norm(x) for x in v]
    return v


def canon(body):
    return json.dumps(norm(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dest_of_path(url):
    path = re.sub(r"^https?://[^/]+", "", url)
    if path.startswith("/j/"):
        return "owneriq"
    if path.startswith("/v1/"):
        return "seg"
    return "?"


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode("utf-8"))


def get_text(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode("utf-8")


# --- expect: what `eventrelay map` printed ---------------------------------------------------

def load_expect(map_out):
    exp = {"requests": defaultdict(list), "skipped": Counter(), "rejected": [], "invalid": []}
    for d in load_jsonl(map_out):
        if "invalid" in d:
            exp["invalid"].append(d)
        elif "request" in d:
            exp["requests"][d["destination"]].append(d)
        elif "skipped" in d:
            exp["skipped"][(d["destination"], d["skipped"])] += 1
        elif "rejected" in d:
            exp["rejected"].append(d)
        else:
            raise ValueError(f"unexpected map line {d}")
    return exp


def cmd_expect(map_out):
    exp = load_expect(map_out)
    req = {d: len(v) for d, v in sorted(exp["requests"].items())}
    print(json.dumps({"requests": req, "skipped": sum(exp["skipped"].values()),
                      "rejected": len(exp["rejected"]), "invalid": len(exp["invalid"])}))


# --- input: what is in segment.events equals the file ---------------------------------------

def cmd_input(events, records):
    lines = event_lines(events)
    recs = load_jsonl(records)
    got = Counter(r["value_text"] for r in recs)
    want = Counter(ln.decode("utf-8") for ln in lines)
    check(got == want, f"segment.events holds exactly the {len(lines)} generated lines "
                       f"(read {len(recs)}, differing {sum(((got - want) + (want - got)).values())})")
    def key_of(text):
        k = event_key(text.encode("utf-8"))
        return k.decode("utf-8") if k else None
    keys_ok = sum(1 for r in recs if r["key"] == key_of(r["value_text"]))
    check(keys_ok == len(recs), f"input keys = userId ({keys_ok}/{len(recs)})")
    done()


# --- records: destination topics and the input dead-letter topic ----------------------------

def cmd_records(events, map_out, records, summary_out):
    exp = load_expect(map_out)
    lines = event_lines(events)
    by_text = {ln.decode("utf-8", errors="replace"): i for i, ln in enumerate(lines, 1)}
    msg_line = {}
    for i, ln in enumerate(lines, 1):
        try:
            ev = json.loads(ln)
            if isinstance(ev, dict) and isinstance(ev.get("messageId"), str):
                msg_line[ev["messageId"]] = (i, ln)
        except ValueError:
            pass
    recs = load_jsonl(records)
    by_topic = defaultdict(list)
    for r in recs:
        by_topic[r["topic"]].append(r)
    summary = {"read": {}, "invalid": len(exp["invalid"]), "rejected": len(exp["rejected"])}

    for dest in ("seg", "owneriq"):
        topic = f"dest.{dest}"
        got = by_topic.get(topic, [])
        want = exp["requests"].get(dest, [])
        summary["read"][dest] = len(got)
        ids = Counter((r["record"] or {}).get("message_id") for r in got)
        want_ids = Counter(d["messageId"] for d in want)
        dups = sum(n - 1 for n in ids.values() if n > 1)
        missing = sorted(set(want_ids) - set(ids))
        extra = sorted(set(ids) - set(want_ids), key=str)
        check(len(got) == len(want),
              f"{topic}: {len(got)} records read, {len(want)} expected from `map` "
              f"(duplicates {dups})")
        check(not missing and not extra,
              f"{topic}: every expected messageId present ({len(set(ids) & set(want_ids))}/"
              f"{len(want_ids)}; missing {len(missing)} {missing[:5]}, unexpected {len(extra)} "
              f"{extra[:5]})")
        errs = [r for r in got if r.get("record_error") or r["record"] is None]
        check(not errs, f"{topic}: every record decodes as eventrelay.v1.Record "
                        f"({len(got) - len(errs)}/{len(got)})")
        # record fields agree with the input event
        wrong = []
        for r in got:
            rec = r["record"] or {}
            mid = rec.get("message_id")
            src = msg_line.get(mid)
            if src is None:
                wrong.append((mid, "no such input"))
                continue
            k = event_key(src[1])
            k = k.decode() if k else None
            if rec.get("destination") != dest:
                wrong.append((mid, f"destination {rec.get('destination')!r}"))
            elif r["key"] != k or rec.get("user_key") != k:
                wrong.append((mid, f"key {r['key']!r} user_key {rec.get('user_key')!r} != {k!r}"))
            elif dest == "seg" and (rec.get("seg") is None or rec["seg"].get("body") is None):
                wrong.append((mid, "no seg body"))
            elif dest == "owneriq" and rec.get("owneriq") is None:
                wrong.append((mid, "no owneriq payload"))
            elif (rec.get("source") or {}).get("topic") != "segment.events":
                wrong.append((mid, f"source {rec.get('source')}"))
        check(not wrong, f"{topic}: key, user_key, destination, payload and source agree with "
                         f"the input ({len(got) - len(wrong)}/{len(got)}; first wrong {wrong[:3]})")
        # seg body in the record == the body `map` prints
        if dest == "seg":
            want_body = {d["messageId"]: d["request"]["body"] for d in want}
            diff = [(r["record"] or {}).get("message_id") for r in got
                    if ((r["record"] or {}).get("seg") or {}).get("body")
                    != want_body.get((r["record"] or {}).get("message_id"))]
            check(not diff, f"{topic}: decoded seg bodies equal the `map` bodies "
                            f"({len(got) - len(diff)}/{len(got)}; first differing {diff[:3]})")

    # per-user order: within each partition, per key, seq (seg) / input line (both) increase
    for dest in ("seg", "owneriq"):
        topic = f"dest.{dest}"
        got = by_topic.get(topic, [])
        parts_of_key = defaultdict(set)
        last_line, last_seq = {}, {}
        inversions = []
        for r in sorted(got, key=lambda r: (r["partition"], r["offset"])):
            rec = r["record"] or {}
            pk = (r["partition"], r["key"])
            parts_of_key[r["key"]].add(r["partition"])
            line = msg_line.get(rec.get("message_id"), (0, b""))[0]
            seq = None
            if dest == "seg":  # identify bodies carry no properties
                body = (rec.get("seg") or {}).get("body") or {}
                seq = (body.get("properties") or {}).get("seq")
            if pk in last_line and line <= last_line[pk]:
                inversions.append((pk, "input line", last_line[pk], line))
            if seq is not None and pk in last_seq and seq <= last_seq[pk]:
                inversions.append((pk, "seq", last_seq[pk], seq))
            last_line[pk] = line
            if seq is not None:
                last_seq[pk] = seq
        split = {k: sorted(p) for k, p in parts_of_key.items() if len(p) > 1}
        what = "properties.seq and input order" if dest == "seg" else "input order"
        check(not inversions and not split,
              f"{topic}: per-user order kept ({what} increase per key within each partition; "
              f"{len(parts_of_key)} users, {len(inversions)} inversions {inversions[:3]}, "
              f"users split over partitions {len(split)})")

    # segment.events.dlq: invalid lines and rejects, with their reasons
    dlq = by_topic.get("segment.events.dlq", [])
    summary["read"]["segment.events.dlq"] = len(dlq)
    n_exp = len(exp["invalid"]) + len(exp["rejected"])
    check(len(dlq) == n_exp,
          f"segment.events.dlq: {len(dlq)} records, expected {n_exp} "
          f"({len(exp['invalid'])} invalid + {len(exp['rejected'])} rejected per `map`)")
    inv_reason = {d["line"]: d["invalid"] for d in exp["invalid"]}
    rej = defaultdict(list)
    for d in exp["rejected"]:
        rej[d["messageId"]].append(d)
    matched = 0
    problems = []
    key_wrong = []
    seen = Counter()
    for r in dlq:
        h = r["headers"]
        text = r["value_text"]
        line = by_text.get(text)
        if line is None:
            problems.append(("value is not an input line", (text or "")[:60]))
            continue
        k = event_key(lines[line - 1])
        k = k.decode() if k else None
        if line in inv_reason:
            want = {"eventrelay.error.stage": "parse", "eventrelay.error.reason": inv_reason[line]}
            seen[("invalid", line)] += 1
        else:
            mid = json.loads(text).get("messageId")
            cands = rej.get(mid)
            if not cands:
                problems.append(("not expected in the dlq", line))
                continue
            d = cands[0]
            want = {"eventrelay.error.stage": "map", "eventrelay.error.reason": d["rejected"],
                    "eventrelay.error.destination": d["destination"]}
            seen[("rejected", mid)] += 1
        diffs = {n: (h.get(n), v) for n, v in want.items() if h.get(n) != v}
        for n in ("eventrelay.error.topic", "eventrelay.error.partition",
                  "eventrelay.error.offset", "eventrelay.error.message"):
            if not h.get(n):
                diffs[n] = (h.get(n), "present")
        if h.get("eventrelay.error.topic") not in (None, "segment.events"):
            diffs["eventrelay.error.topic"] = (h.get("eventrelay.error.topic"), "segment.events")
        if diffs:
            problems.append((line, diffs))
        else:
            matched += 1
        if r["key"] != k:
            key_wrong.append((line, r["key"], k))
    check(not problems and matched == n_exp,
          f"segment.events.dlq: stage, reason, destination and error headers as expected "
          f"({matched}/{n_exp}; reasons {dict(Counter(d['invalid'] for d in exp['invalid']))}; "
          f"problems {len(problems)} {problems[:3]})")
    check(not key_wrong,
          f"segment.events.dlq: original key kept, a null key staying null "
          f"({len(dlq) - len(key_wrong)}/{len(dlq)}; wrong (line, dlq key, input key) "
          f"{key_wrong[:3]})")
    with open(summary_out, "w") as f:
        json.dump(summary, f)
    done()


# --- stub: what the destination received -----------------------------------------------------

def stub_requests(stub):
    return get_json(f"http://{stub}/requests")


def cmd_stub_wait(stub, want, timeout):
    want, timeout = int(want), float(timeout)
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    n = -1
    while time.monotonic() < deadline:
        n = len(stub_requests(stub))
        if n >= want:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # anything beyond the expected count would show now
    n = len(stub_requests(stub))
    check(n == want, f"stub received {n} requests, expected {want} "
                     f"(waited {time.monotonic() - t0:.1f}s)")
    done()


def cmd_stub_compare(stub, map_out):
    exp = load_expect(map_out)
    reqs = stub_requests(stub)
    want = [d for v in exp["requests"].values() for d in v]
    per_dest = Counter(dest_of_path(r["url"]) for r in reqs)
    want_dest = Counter(d["destination"] for d in want)
    check(per_dest == want_dest, f"stub requests per destination {dict(per_dest)}, "
                                 f"expected {dict(want_dest)}")
    statuses = Counter(r["status"] for r in reqs)
    check(set(statuses) <= {200}, f"stub answered every request 200 (statuses {dict(statuses)})")

    def want_body_text(d):
        b = d["request"]["body"]
        return "" if b is None else compact(b)

    def got_body_parsed(r):
        if r["body"] == "":
            return None
        try:
            return json.loads(r["body"])
        except ValueError:
            return ("unparseable", r["body"])

    exact_got = Counter((r["method"], r["url"], r["body"]) for r in reqs)
    exact_want = Counter((d["request"]["method"], d["request"]["url"], want_body_text(d))
                         for d in want)
    parsed_got = Counter((r["method"], r["url"], canon(got_body_parsed(r))) for r in reqs)
    parsed_want = Counter((d["request"]["method"], d["request"]["url"],
                           canon(d["request"]["body"])) for d in want)
    pg, pw = parsed_got - parsed_want, parsed_want - parsed_got
    check(not pg and not pw,
          f"stub (method, url, body) multiset == `map` requests, bodies compared as parsed "
          f"JSON ({len(reqs)} vs {len(want)}; only at stub {sum(pg.values())}, only in map "
          f"{sum(pw.values())}; e.g. stub {list(pg)[:1]} map {list(pw)[:1]})")
    eg, ew = exact_got - exact_want, exact_want - exact_got
    check(not eg and not ew,
          f"stub (method, url, body) multiset == `map` requests, bodies compared as exact "
          f"compact-JSON strings (only at stub {sum(eg.values())}, only in map "
          f"{sum(ew.values())}; e.g. stub {list(eg)[:1]} map {list(ew)[:1]})")
    # Idempotency-Key = messageId of the request it carries
    ids_for = defaultdict(list)
    for d in want:
        ids_for[(d["request"]["method"], d["request"]["url"],
                 canon(d["request"]["body"]))].append(d["messageId"])
    wrong = []
    for r in reqs:
        key = r["headers"].get("idempotency-key")
        cands = ids_for.get((r["method"], r["url"], canon(got_body_parsed(r))), [])
        if key not in cands:
            wrong.append((key, cands[:2]))
    check(not wrong, f"every request's idempotency-key header is its messageId "
                     f"({len(reqs) - len(wrong)}/{len(reqs)}; wrong {wrong[:3]})")
    idem = Counter((dest_of_path(r["url"]), r["headers"].get("idempotency-key")) for r in reqs)
    dup = {k: n for k, n in idem.items() if n > 1}
    check(not dup, f"no request delivered twice (repeated (destination, idempotency-key) "
                   f"{len(dup)} {list(dup)[:3]})")
    ct_bad = [r["headers"].get("content-type") for r in reqs
              if dest_of_path(r["url"]) == "seg"
              and not (r["headers"].get("content-type") or "").startswith("application/json")]
    check(not ct_bad, f"Seg requests carry Content-Type: application/json (bad {len(ct_bad)})")
    done()


# --- metrics -------------------------------------------------------------------------------

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    out = []
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = LINE.match(ln)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def msum(ms, name, **want):
    return sum(v for n, lab, v in ms if n == name
               and all(lab.get(k) == str(x) for k, x in want.items()))


def cmd_metrics(metrics_addr, summary_path, map_out, consumed, timeout):
    exp = load_expect(map_out)
    summary = json.load(open(summary_path))
    consumed = int(consumed)
    n_req = {d: len(v) for d, v in exp["requests"].items()}

    def evaluate(ms):
        res = []
        c = msum(ms, "eventrelay_events_consumed_total", topic="segment.events")
        res.append((c == consumed, f'eventrelay_events_consumed_total{{topic="segment.events"}} '
                                   f'= {c:g}, expected {consumed}'))
        for dest in ("owneriq", "seg"):
            p = msum(ms, "eventrelay_records_produced_total", destination=dest)
            res.append((p == summary["read"][dest],
                        f'eventrelay_records_produced_total{{destination="{dest}"}} = {p:g}, '
                        f'records read from dest.{dest} {summary["read"][dest]}'))
            s = msum(ms, "eventrelay_deliveries_total", destination=dest, outcome="success")
            res.append((s == n_req.get(dest, 0),
                        f'eventrelay_deliveries_total{{destination="{dest}",outcome="success"}} '
                        f'= {s:g}, requests expected {n_req.get(dest, 0)}'))
        inv = msum(ms, "eventrelay_events_invalid_total")
        res.append((inv == len(exp["invalid"]),
                    f"eventrelay_events_invalid_total (sum over reasons) = {inv:g}, "
                    f"invalid lines {len(exp['invalid'])}"))
        for (dest, reason), n in sorted(exp["skipped"].items()):
            s = msum(ms, "eventrelay_events_skipped_total", destination=dest, reason=reason)
            res.append((s == n, f'eventrelay_events_skipped_total{{destination="{dest}",'
                                f'reason="{reason}"}} = {s:g}, `map` skipped {n}'))
        return res

    deadline = time.monotonic() + float(timeout)
    while True:
        ms = parse_metrics(get_text(f"http://{metrics_addr}/metrics"))
        res = evaluate(ms)
        if all(c for c, _ in res) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    for c, msg in res:
        check(c, msg)
    done()


def cmd_metric_value(metrics_addr, name, *labels):
    want = dict(x.split("=", 1) for x in labels)
    ms = parse_metrics(get_text(f"http://{metrics_addr}/metrics"))
    print(f"{msum(ms, name, **want):g}")


# --- scenario 2 ----------------------------------------------------------------------------

def successes(stub):
    """2xx answers the stub gave, per destination and Idempotency-Key."""
    succ = defaultdict(Counter)
    for r in stub_requests(stub):
        if 200 <= r["status"] < 300:
            succ[dest_of_path(r["url"])][r["headers"].get("idempotency-key")] += 1
    return succ


def wait_successes(stub, want, timeout):
    """Poll until every wanted Idempotency-Key got a 2xx (or the timeout); the last count."""
    deadline = time.monotonic() + float(timeout)
    while True:
        succ = successes(stub)
        if all(set(want[d]) <= set(succ[d]) for d in want) or time.monotonic() >= deadline:
            return succ
        time.sleep(0.5)


def cmd_wait_delivered(stub, map_out, timeout):
    """Wait until every `map` request got a 2xx at the stub; report per destination."""
    exp = load_expect(map_out)
    want = {d: Counter(x["messageId"] for x in v) for d, v in exp["requests"].items()}
    t0 = time.monotonic()
    wait_successes(stub, want, timeout)
    time.sleep(1.0)
    reqs = stub_requests(stub)
    succ = defaultdict(Counter)
    statuses = defaultdict(Counter)
    for r in reqs:
        d = dest_of_path(r["url"])
        statuses[d][r["status"]] += 1
        if 200 <= r["status"] < 300:
            succ[d][r["headers"].get("idempotency-key")] += 1
    for d in sorted(want):
        ids = want[d]
        got = succ[d]
        relevant = {k: n for k, n in got.items() if k in ids}
        missing = sorted(set(ids) - set(got))
        check(not missing and sum(relevant.values()) == sum(ids.values()),
              f"{d}: {sum(relevant.values())} successful deliveries for {sum(ids.values())} "
              f"expected requests (missing {len(missing)} {missing[:5]}; repeated "
              f"{sum(n - 1 for n in relevant.values() if n > 1)}; stub statuses "
              f"{dict(statuses[d])}; after {time.monotonic() - t0:.1f}s)")
    done()


def cmd_send_dlq(records, stub, n, prefix):
    n = int(n)
    recs = load_jsonl(records)
    check(len(recs) == n, f"dest.owneriq.dlq: {len(recs)} records, expected {n}")
    want = {"eventrelay.error.stage": "send", "eventrelay.error.reason": "http_400",
            "eventrelay.error.status": "400", "eventrelay.error.attempts": "1"}
    bad_h = []
    ids = Counter()
    for r in recs:
        h = r["headers"]
        rec = r["record"] or {}
        ids[rec.get("message_id")] += 1
        diffs = {k: h.get(k) for k, v in want.items() if h.get(k) != v}
        if rec.get("destination") != "owneriq" or rec.get("owneriq") is None:
            diffs["record"] = rec.get("destination")
        if not r["key"] or r["key"] != f"u-{rec.get('message_id', '').split('-')[-1]}":
            diffs["key"] = r["key"]
        if diffs:
            bad_h.append((rec.get("message_id"), diffs))
    expected_ids = {f"{prefix}{i}" for i in range(1, n + 1)}
    check(set(ids) == expected_ids and all(v == 1 for v in ids.values()),
          f"dest.owneriq.dlq: messageIds {prefix}1..{prefix}{n}, once each "
          f"({len(set(ids) & expected_ids)}/{n})")
    check(not bad_h, f"dest.owneriq.dlq headers stage=send reason=http_400 status=400 "
                     f"attempts=1, key kept ({len(recs) - len(bad_h)}/{len(recs)}; "
                     f"wrong {bad_h[:3]})")
    oiq = [r for r in stub_requests(stub) if dest_of_path(r["url"]) == "owneriq"
           and (r["headers"].get("idempotency-key") or "").startswith(prefix)]
    st = Counter(r["status"] for r in oiq)
    check(len(oiq) == n and set(st) == {400},
          f"stub got each {prefix}* OwnerIQ request once and answered 400 "
          f"({len(oiq)} requests, statuses {dict(st)})")
    done()


def cmd_offsets(path, want):
    d = json.load(open(path))
    offs = d.get("offsets", {})
    total = sum(v or 0 for v in offs.values())
    check(total == int(want), f"group {d.get('group')} committed offsets on {d.get('topic')} "
                              f"{offs} sum to {total}, expected {want}")
    done()


# --- scenario 3: replay and redrive ----------------------------------------------------------

def load_offsets(path):
    try:
        return {k: v for k, v in json.load(open(path)).get("offsets", {}).items()}
    except (OSError, ValueError):
        return None


def parse_plan(path, topic):
    """The rows of `eventrelay replay`'s plan table: {partition: {current, target, low, high}}."""
    rows = {}
    for ln in open(path, encoding="utf-8", errors="replace"):
        f = ln.split()
        if len(f) == 6 and f[0] == topic and f[1].isdigit():
            try:
                rows[f[1]] = {"current": None if f[2] == "-" else int(f[2]), "target": int(f[3]),
                              "low": int(f[4]), "high": int(f[5])}
            except ValueError:
                pass
    return rows


def cmd_offsets_sum(path, want, label):
    offs = load_offsets(path)
    total = None if offs is None else sum(v or 0 for v in offs.values())
    check(total == int(want), f"{label}: committed offsets {offs} sum to {total}, expected {want}")
    done()


def cmd_offsets_all(path, want, label):
    offs = load_offsets(path)
    check(bool(offs) and all(v == int(want) for v in offs.values()),
          f"{label}: committed offsets {offs}, expected {want} on every partition")
    done()


def cmd_replay_plan(out, topic, before, after, want_target):
    """A dry run: a row per partition, target `want_target`, CURRENT = the committed offsets,
    and the committed offsets unchanged afterwards."""
    rows = parse_plan(out, topic)
    b, a = load_offsets(before), load_offsets(after)
    text = open(out, encoding="utf-8", errors="replace").read()
    check(bool(rows) and b is not None and set(rows) == set(b)
          and all(r["target"] == int(want_target) for r in rows.values()),
          f"replay dry run plan: target {want_target} on every partition "
          f"({ {p: r['target'] for p, r in rows.items()} }; partitions of the group {sorted(b or {})})")
    check(bool(rows) and b is not None and all(r["current"] == b.get(p) for p, r in rows.items()),
          f"replay dry run plan: CURRENT column = committed offsets "
          f"({ {p: r['current'] for p, r in rows.items()} } vs {b})")
    check("dry run" in text, "replay dry run says it changed nothing ('dry run' in its output)")
    check(a is not None and a == b, f"group offsets unchanged by the dry run (before {b}, after {a})")
    done()


def cmd_replay_moved(before, after, counts, partition, offset):
    """After `--to-offset OFFSET --partitions PARTITION --execute`: that partition at OFFSET
    clamped to [0, log end], the others unchanged."""
    b, a = load_offsets(before), load_offsets(after)
    ends = json.load(open(counts)).get("by_partition", {})
    end = ends.get(partition)
    want = dict(b or {})
    if end is not None:
        want[partition] = max(0, min(int(offset), int(end)))
    check(b is not None and end is not None and a == want,
          f"--to-offset {offset} --partitions {partition}: offsets {a}, expected {want} "
          f"(before {b}; partition {partition} holds {end} records)")
    done()


def cmd_seg_twice(map_out, records):
    exp = load_expect(map_out)
    want = Counter(d["messageId"] for d in exp["requests"].get("seg", []))
    got = Counter((r["record"] or {}).get("message_id") for r in load_jsonl(records)
                  if r["topic"] == "dest.seg")
    twice = sum(1 for m in want if got.get(m) == 2)
    other = {m: n for m, n in got.items() if n != 2 or m not in want}
    check(twice == len(want) and not other and len(want) > 0,
          f"dest.seg after the replay: each of the {len(want)} expected messageIds twice "
          f"({twice}/{len(want)}; {sum(got.values())} records; wrong counts {len(other)} "
          f"{list(other.items())[:5]})")
    done()


def cmd_redriven(stub, prefix, n, timeout):
    """Wait until OwnerIQ answered 200 for prefix1..prefixN; each exactly once."""
    n = int(n)
    ids = {f"{prefix}{i}" for i in range(1, n + 1)}
    t0 = time.monotonic()
    deadline = t0 + float(timeout)

    def ok200():
        return Counter(r["headers"].get("idempotency-key") for r in stub_requests(stub)
                       if dest_of_path(r["url"]) == "owneriq" and r["status"] == 200
                       and (r["headers"].get("idempotency-key") or "").startswith(prefix))

    while not ids <= set(ok200()) and time.monotonic() < deadline:
        time.sleep(0.5)
    waited = time.monotonic() - t0
    time.sleep(1.0)
    got = ok200()
    st = Counter(r["status"] for r in stub_requests(stub) if dest_of_path(r["url"]) == "owneriq"
                 and (r["headers"].get("idempotency-key") or "").startswith(prefix))
    check(set(got) == ids and all(v == 1 for v in got.values()),
          f"stub: {sum(got.values())} successful (200) OwnerIQ requests for {prefix}1..{prefix}{n} "
          f"after the redrive ({len(set(got) & ids)}/{n} ids, repeated "
          f"{sum(v - 1 for v in got.values() if v > 1)}; all {prefix}* OwnerIQ statuses "
          f"{dict(st)}; after {waited:.1f}s)")
    done()


def cmd_redrive_copies(records, prefix, n):
    """dest.owneriq: the originals plus one copy each carrying eventrelay.redrive.count=1 and no
    eventrelay.error.* header."""
    n = int(n)
    recs = [r for r in load_jsonl(records)
            if ((r["record"] or {}).get("message_id") or "").startswith(prefix)]
    copies = [r for r in recs if "eventrelay.redrive.count" in r["headers"]]
    ids = Counter(r["record"]["message_id"] for r in copies)
    bad = [(r["record"]["message_id"], r["headers"]) for r in copies
           if r["headers"].get("eventrelay.redrive.count") != "1"
           or any(k.startswith("eventrelay.error.") for k in r["headers"])]
    want = {f"{prefix}{i}" for i in range(1, n + 1)}
    check(len(recs) == 2 * n and set(ids) == want and all(v == 1 for v in ids.values())
          and not bad,
          f"dest.owneriq: {len(recs)} {prefix}* records ({2 * n} expected: originals + copies), "
          f"{len(copies)} copies with eventrelay.redrive.count=1 and no error headers "
          f"(ids {len(set(ids) & want)}/{n}; wrong {bad[:2]})")
    done()


# --- scenario 4 ----------------------------------------------------------------------------

def cmd_delivered_at_least_once(stub, map_out, timeout):
    """Wait until every `map` request got a 2xx at least once; report duplicates."""
    exp = load_expect(map_out)
    want = {d: set(x["messageId"] for x in v) for d, v in exp["requests"].items()}
    t0 = time.monotonic()
    succ = wait_successes(stub, want, timeout)
    for d in sorted(want):
        missing = sorted(want[d] - set(succ[d]))
        dup = sum(n - 1 for k, n in succ[d].items() if k in want[d] and n > 1)
        check(not missing,
              f"{d}: {len(want[d]) - len(missing)} of {len(want[d])} expected requests delivered "
              f"at least once across the SIGKILL (missing {len(missing)} {missing[:5]}); "
              f"{dup} duplicate deliveries (after {time.monotonic() - t0:.1f}s)")
    done()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "expect": cmd_expect, "input": cmd_input, "records": cmd_records,
        "stub-wait": cmd_stub_wait, "stub-compare": cmd_stub_compare, "metrics": cmd_metrics,
        "metric-value": cmd_metric_value, "wait-delivered": cmd_wait_delivered,
        "send-dlq": cmd_send_dlq, "offsets": cmd_offsets,
        "offsets-sum": cmd_offsets_sum, "offsets-all": cmd_offsets_all,
        "replay-plan": cmd_replay_plan, "replay-moved": cmd_replay_moved,
        "seg-twice": cmd_seg_twice, "redriven": cmd_redriven,
        "redrive-copies": cmd_redrive_copies,
        "delivered-at-least-once": cmd_delivered_at_least_once,
    }[cmd](*args)
PYEOF
chk() { python3 "$CHECK" "$ROOT/tests/e2e" "$@"; }

# kc NAME ARGS... : outside client; stdout to $WORK/NAME.out, stderr to $WORK/NAME.kc.log
kc() {
  local name=$1
  shift
  "${KC[@]}" "$@" >"$WORK/$name.out" 2>"$WORK/$name.kc.log"
}

# =============================================================================================
echo "== scenario 1: map+send on tansu"
start_tansu tansu1
B1=$BOOT
STUB1=127.0.0.1:$(free_port)
MET1=127.0.0.1:$(free_port)
start_bg stub1 "$BIN" stub --listen "$STUB1" --record "$WORK/stub1.ndjson"
wait_port "${STUB1##*:}" 30 || die "stub did not listen on $STUB1"
CONF1="$WORK/eventrelay1.toml"
write_config "$CONF1" "$B1" "$MET1" "$STUB1" eventrelay
start_bg eventrelay1 "$BIN" run --config "$CONF1" --role all
ER1=$LAST_PID
if wait_http_ok "http://$MET1/readyz" 60; then
  pass "eventrelay ready (/readyz 200) on $B1"
else
  kill -0 "$ER1" 2>/dev/null || die "eventrelay exited at start"
  echo "note: /readyz not 200 after 60 s, going on"
fi

N=2000
SEED=7
"${KC[@]}" generate --count $N --invalid-every 50 --seed $SEED >"$WORK/events1.ndjson"
kc produce1 produce --bootstrap "$B1" --topic segment.events --generate $N --invalid-every 50 \
  --seed $SEED || die "produce failed: $(cat "$WORK/produce1.out" "$WORK/produce1.kc.log" | tail -5)"
echo "produced: $(cat "$WORK/produce1.out")"
"$BIN" map --config "$CONF1" "$WORK/events1.ndjson" >"$WORK/map1.ndjson" 2>"$WORK/map1.log" \
  || die "eventrelay map failed: $(tail -5 "$WORK/map1.log")"
EXP1=$(chk expect "$WORK/map1.ndjson")
echo "expected from eventrelay map: $EXP1"
read -r E_SEG E_OIQ E_REJ E_INV < <(python3 -c '
import json,sys; d=json.loads(sys.argv[1])
print(d["requests"].get("seg",0), d["requests"].get("owneriq",0), d["rejected"], d["invalid"])' "$EXP1")
E_DLQ=$((E_INV + E_REJ))
E_ALL=$((E_SEG + E_OIQ + E_DLQ))
E_REQ=$((E_SEG + E_OIQ))

kc input1 consume --bootstrap "$B1" --topic segment.events --expect $N --timeout 60 || true
run_check chk input "$WORK/events1.ndjson" "$WORK/input1.out"

# wait until the expected records are readable, then read everything there is
T0=$(date +%s)
if kc wait1 consume --bootstrap "$B1" --topic dest.seg --topic dest.owneriq \
     --topic segment.events.dlq --expect $E_ALL --timeout 120; then
  echo "all $E_ALL expected records readable after $(($(date +%s) - T0))s"
else
  echo "only $(wc -l <"$WORK/wait1.out") of $E_ALL expected records readable after 120 s"
fi
kc count1 count --bootstrap "$B1" --topic dest.seg --topic dest.owneriq \
  --topic segment.events.dlq --timeout 60 --idle 3 || true
echo "counted: $(cat "$WORK/count1.out")"
TOTAL1=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["count"])' \
  "$WORK/count1.out" 2>/dev/null || echo 0)
[ "$TOTAL1" -ge "$(wc -l <"$WORK/wait1.out")" ] || TOTAL1=$(wc -l <"$WORK/wait1.out")
kc records1 consume --bootstrap "$B1" --topic dest.seg --topic dest.owneriq \
  --topic segment.events.dlq --expect "$TOTAL1" --timeout 60 || true
run_check chk records "$WORK/events1.ndjson" "$WORK/map1.ndjson" "$WORK/records1.out" \
  "$WORK/summary1.json"

run_check chk stub-wait "$STUB1" $E_REQ 60
run_check chk stub-compare "$STUB1" "$WORK/map1.ndjson"
if [ -f "$WORK/summary1.json" ]; then
  run_check chk metrics "$MET1" "$WORK/summary1.json" "$WORK/map1.ndjson" $N 15
else
  fail "metrics not checked (no record summary)"
fi

stop_eventrelay "$ER1" "eventrelay (scenario 1)"
kc offsets1 group-offsets --bootstrap "$B1" --group eventrelay --topic segment.events \
  || echo "group-offsets: $(tail -3 "$WORK/offsets1.kc.log")"
run_check chk offsets "$WORK/offsets1.out" $N

# =============================================================================================
echo "== scenario 2: retries and dead letters on tansu"
start_tansu tansu2
B2=$BOOT
STUB2=127.0.0.1:$(free_port)
MET2=127.0.0.1:$(free_port)
start_bg stub2 "$BIN" stub --listen "$STUB2" --record "$WORK/stub2.ndjson"
wait_port "${STUB2##*:}" 30 || die "stub did not listen on $STUB2"
CONF2="$WORK/eventrelay2.toml"
write_config "$CONF2" "$B2" "$MET2" "$STUB2" e2e-retry
start_bg eventrelay2 "$BIN" run --config "$CONF2" --role all
ER2=$LAST_PID
if wait_http_ok "http://$MET2/readyz" 60; then
  pass "eventrelay ready (/readyz 200) on $B2"
else
  kill -0 "$ER2" 2>/dev/null || die "eventrelay exited at start"
  echo "note: /readyz not 200 after 60 s, going on"
fi

N2=200
SEED2=11
"${KC[@]}" generate --count $N2 --seed $SEED2 >"$WORK/events2.ndjson"
"$BIN" map --config "$CONF2" "$WORK/events2.ndjson" >"$WORK/map2.ndjson" 2>"$WORK/map2.log" \
  || die "eventrelay map failed: $(tail -5 "$WORK/map2.log")"
echo "expected from eventrelay map: $(chk expect "$WORK/map2.ndjson")"
http POST "http://$STUB2/faults" '{"status":503,"rate":1.0,"for_secs":4,"path_prefix":"/v1/"}' >/dev/null
echo "injected: Seg answers 503 for 4 s"
kc produce2 produce --bootstrap "$B2" --topic segment.events --generate $N2 --seed $SEED2 \
  || die "produce failed: $(cat "$WORK/produce2.out" "$WORK/produce2.kc.log" | tail -5)"
echo "produced: $(cat "$WORK/produce2.out")"
run_check chk wait-delivered "$STUB2" "$WORK/map2.ndjson" 90
RETRY=$(chk metric-value "$MET2" eventrelay_deliveries_total destination=seg outcome=retry)
A503=$(chk metric-value "$MET2" eventrelay_delivery_attempts_total destination=seg status=503)
S503=$(python3 -c '
import json,sys,urllib.request
r=json.load(urllib.request.urlopen("http://"+sys.argv[1]+"/requests"))
print(sum(1 for x in r if x["status"]==503))' "$STUB2")
if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1])>0 or float(sys.argv[2])>0 else 1)' \
     "$RETRY" "$A503"; then
  pass "seg retries counted: deliveries_total{outcome=\"retry\"} = $RETRY, delivery_attempts_total{status=\"503\"} = $A503 (stub answered 503 $S503 times)"
else
  fail "seg retries not counted: deliveries_total{outcome=\"retry\"} = $RETRY, delivery_attempts_total{status=\"503\"} = $A503 (stub answered 503 $S503 times)"
fi

http POST "http://$STUB2/faults" '{"status":400,"rate":1.0,"path_prefix":"/j/"}' >/dev/null
echo "injected: OwnerIQ answers 400"
N3=20
for i in $(seq 1 $N3); do
  printf '{"type":"page","userId":"u-%d","messageId":"dl-%d"}\n' "$i" "$i"
done >"$WORK/events3.ndjson"
"$BIN" map --config "$CONF2" "$WORK/events3.ndjson" >"$WORK/map3.ndjson" 2>"$WORK/map3.log" \
  || die "eventrelay map failed: $(tail -5 "$WORK/map3.log")"
kc produce3 produce --bootstrap "$B2" --topic segment.events --file "$WORK/events3.ndjson" \
  || die "produce failed: $(cat "$WORK/produce3.out" "$WORK/produce3.kc.log" | tail -5)"
echo "produced: $(cat "$WORK/produce3.out")"
kc dlq3 consume --bootstrap "$B2" --topic dest.owneriq.dlq --expect $N3 --timeout 60 || true
kc dlqcount3 count --bootstrap "$B2" --topic dest.owneriq.dlq --timeout 30 --idle 3 || true
DLQN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["count"])' \
  "$WORK/dlqcount3.out" 2>/dev/null || echo "?")
[ "$DLQN" = "$N3" ] && pass "dest.owneriq.dlq holds $DLQN records in all" \
  || fail "dest.owneriq.dlq holds $DLQN records in all, expected $N3"
run_check chk send-dlq "$WORK/dlq3.out" "$STUB2" $N3 dl-
# the Seg side of the same page events is unaffected by OwnerIQ's 400s
python3 - "$WORK/map3.ndjson" >"$WORK/map3seg.ndjson" <<'EOF'
import json, sys
for ln in open(sys.argv[1], encoding="utf-8"):
    if ln.strip() and json.loads(ln).get("destination") == "seg":
        sys.stdout.write(ln)
EOF
run_check chk wait-delivered "$STUB2" "$WORK/map3seg.ndjson" 30
DL=$(chk metric-value "$MET2" eventrelay_deliveries_total destination=owneriq outcome=dead_letter)
[ "$DL" = "$N3" ] && pass "eventrelay_deliveries_total{destination=\"owneriq\",outcome=\"dead_letter\"} = $DL" \
  || fail "eventrelay_deliveries_total{destination=\"owneriq\",outcome=\"dead_letter\"} = $DL, expected $N3"

stop_eventrelay "$ER2" "eventrelay (scenario 2)"

# =============================================================================================
echo "== scenario 3: replay and redrive on tansu"
# er_cmd NAME ARGS... : run `eventrelay ARGS` to completion, output in $WORK/NAME.log; sets ER_RC.
er_cmd() {
  local name=$1
  shift
  ER_RC=0
  "$BIN" "$@" >"$WORK/$name.log" 2>&1 || ER_RC=$?
}
last_lines() { tail -n "${2:-3}" "$1" 2>/dev/null | tr '\n' ' ' | cut -c1-400; }
# er_error LOG : eventrelay's own error line, else the last lines of LOG.
er_error() {
  local line
  line=$(grep -m1 '^eventrelay: error' "$1" 2>/dev/null || true)
  if [ -n "$line" ]; then echo "${line:0:400}"; else last_lines "$1" 4; fi
}
# replay_failed NAME WHAT : FAIL line for a replay that exited non-zero, with a hint when the
# broker could not describe the group.
replay_failed() {
  fail "$2 exited $ER_RC: $(er_error "$WORK/$1.log")"
  if grep -q 'describing the consumer group' "$WORK/$1.log" && [ -z "${NOTED_DESCRIBE:-}" ]; then
    NOTED_DESCRIBE=1
    local err
    err=$(grep -m1 ERROR "$WORK/tansu3.log" | sed 's/\x1b\[[0-9;]*m//g' || true)
    echo "note: the broker failed DescribeGroups; tansu logged: ${err:0:110} ... ${err: -90}"
  fi
}

# --- 3a: replay (group e2e-replay, --role map) ---
start_tansu tansu3
B3=$BOOT
STUB3=127.0.0.1:$(free_port)
MET3=127.0.0.1:$(free_port)
start_bg stub3 "$BIN" stub --listen "$STUB3" --record "$WORK/stub3.ndjson"
wait_port "${STUB3##*:}" 30 || die "stub did not listen on $STUB3"
CONF3="$WORK/eventrelay3.toml"
GROUP3=e2e-replay
write_config "$CONF3" "$B3" "$MET3" "$STUB3" "$GROUP3"
N4=100
SEED4=13
"${KC[@]}" generate --count $N4 --seed $SEED4 >"$WORK/events4.ndjson"
"$BIN" map --config "$CONF3" "$WORK/events4.ndjson" >"$WORK/map4.ndjson" 2>"$WORK/map4.log" \
  || die "eventrelay map failed: $(tail -5 "$WORK/map4.log")"
E4_SEG=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"].get("seg",0))' \
  "$(chk expect "$WORK/map4.ndjson")")
echo "expected from eventrelay map: $E4_SEG dest.seg records for $N4 events"

start_bg eventrelay3a "$BIN" run --config "$CONF3" --role map
ER3=$LAST_PID
if wait_http_ok "http://$MET3/readyz" 60; then
  pass "eventrelay --role map ready (/readyz 200) on $B3, group $GROUP3"
else
  kill -0 "$ER3" 2>/dev/null || die "eventrelay exited at start"
  echo "note: /readyz not 200 after 60 s, going on"
fi
kc produce4 produce --bootstrap "$B3" --topic segment.events --generate $N4 --seed $SEED4 \
  || die "produce failed: $(cat "$WORK/produce4.out" "$WORK/produce4.kc.log" | tail -5)"
echo "produced: $(cat "$WORK/produce4.out")"
if kc wait4 consume --bootstrap "$B3" --topic dest.seg --expect "$E4_SEG" --timeout 60; then
  pass "dest.seg holds the $E4_SEG expected records (first run)"
else
  fail "dest.seg: only $(wc -l <"$WORK/wait4.out") of $E4_SEG expected records after 60 s"
fi

er_cmd replay_live replay --config "$CONF3" --group "$GROUP3" --topic segment.events \
  --to-earliest --execute
# tansu 0.6.0 with sqlite storage cannot describe groups; replay then refuses because it cannot
# check liveness (without --force), which is also a refusal.
if [ "$ER_RC" -ne 0 ] && grep -Eq 'has [0-9]+ live member|cannot check that group .* has no live members' "$WORK/replay_live.log"; then
  pass "replay --execute refused while the group runs (exit $ER_RC): $(er_error "$WORK/replay_live.log")"
elif [ "$ER_RC" -ne 0 ]; then
  replay_failed replay_live "replay --execute while the group runs (expected a refusal naming its live members)"
else
  fail "replay --execute while the group runs exited 0 (expected a refusal naming its live members): $(last_lines "$WORK/replay_live.log" 2)"
fi
stop_eventrelay "$ER3" "eventrelay --role map (scenario 3, first run)"

kc offsets4a group-offsets --bootstrap "$B3" --group "$GROUP3" --topic segment.events \
  || echo "group-offsets: $(last_lines "$WORK/offsets4a.kc.log")"
run_check chk offsets-sum "$WORK/offsets4a.out" $N4 "group $GROUP3 after the first run"

# The group's consumers are stopped now; --force because tansu cannot describe groups.
er_cmd replay_dry replay --config "$CONF3" --group "$GROUP3" --topic segment.events --to-earliest --force
if [ "$ER_RC" -eq 0 ]; then
  pass "replay --to-earliest (dry run) exited 0"
  sed 's/^/    | /' "$WORK/replay_dry.log" | grep -v ' INFO \| WARN ' | head -8
  kc offsets4b group-offsets --bootstrap "$B3" --group "$GROUP3" --topic segment.events \
    || echo "group-offsets: $(last_lines "$WORK/offsets4b.kc.log")"
  run_check chk replay-plan "$WORK/replay_dry.log" segment.events "$WORK/offsets4a.out" \
    "$WORK/offsets4b.out" 0
else
  replay_failed replay_dry "replay --to-earliest (dry run)"
fi

er_cmd replay_exec replay --config "$CONF3" --group "$GROUP3" --topic segment.events \
  --to-earliest --execute --force
REPLAYED=0
if [ "$ER_RC" -eq 0 ]; then
  pass "replay --to-earliest --execute exited 0: $(grep -i 'moved' "$WORK/replay_exec.log" | head -1)"
  REPLAYED=1
else
  replay_failed replay_exec "replay --to-earliest --execute"
fi
kc offsets4c group-offsets --bootstrap "$B3" --group "$GROUP3" --topic segment.events \
  || echo "group-offsets: $(last_lines "$WORK/offsets4c.kc.log")"
run_check chk offsets-all "$WORK/offsets4c.out" 0 "group $GROUP3 after replay --to-earliest --execute"

if [ "$REPLAYED" = 1 ]; then
  start_bg eventrelay3b "$BIN" run --config "$CONF3" --role map
  ER3=$LAST_PID
  E4_TWICE=$((2 * E4_SEG))
  T0=$(date +%s)
  if kc wait4b consume --bootstrap "$B3" --topic dest.seg --expect $E4_TWICE --timeout 90; then
    echo "all $E4_TWICE expected dest.seg records readable after $(($(date +%s) - T0))s"
  else
    echo "only $(wc -l <"$WORK/wait4b.out") of $E4_TWICE expected dest.seg records after 90 s"
  fi
  kc count4b count --bootstrap "$B3" --topic dest.seg --timeout 60 --idle 3 || true
  C4=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["count"])' \
    "$WORK/count4b.out" 2>/dev/null || echo 0)
  [ "$C4" = "$E4_TWICE" ] && pass "dest.seg holds $C4 records after the re-run ($E4_SEG twice)" \
    || fail "dest.seg holds $C4 records after the re-run, expected $E4_TWICE ($E4_SEG twice)"
  [ "$C4" -ge "$(wc -l <"$WORK/wait4b.out")" ] || C4=$(wc -l <"$WORK/wait4b.out")
  kc records4b consume --bootstrap "$B3" --topic dest.seg --expect "$C4" --timeout 60 || true
  run_check chk seg-twice "$WORK/map4.ndjson" "$WORK/records4b.out"
  stop_eventrelay "$ER3" "eventrelay --role map (scenario 3, re-run)"

  kc offsets4d group-offsets --bootstrap "$B3" --group "$GROUP3" --topic segment.events \
    || echo "group-offsets: $(last_lines "$WORK/offsets4d.kc.log")"
  run_check chk offsets-sum "$WORK/offsets4d.out" $N4 "group $GROUP3 after the re-run"
else
  fail "re-run after the replay not checked: replay --execute did not move the group"
  cp "$WORK/offsets4c.out" "$WORK/offsets4d.out"
fi
kc count4in count --bootstrap "$B3" --topic segment.events --timeout 30 --idle 2 || true
er_cmd replay_p0 replay --config "$CONF3" --group "$GROUP3" --topic segment.events \
  --to-offset 5 --partitions 0 --execute --force
if [ "$ER_RC" -eq 0 ]; then
  pass "replay --to-offset 5 --partitions 0 --execute exited 0"
  kc offsets4e group-offsets --bootstrap "$B3" --group "$GROUP3" --topic segment.events \
    || echo "group-offsets: $(last_lines "$WORK/offsets4e.kc.log")"
  run_check chk replay-moved "$WORK/offsets4d.out" "$WORK/offsets4e.out" "$WORK/count4in.out" 0 5
else
  replay_failed replay_p0 "replay --to-offset 5 --partitions 0 --execute"
fi

# --- 3b: redrive (group e2e-redrive, --role all) ---
start_tansu tansu4
B4=$BOOT
STUB4=127.0.0.1:$(free_port)
MET4=127.0.0.1:$(free_port)
start_bg stub4 "$BIN" stub --listen "$STUB4" --record "$WORK/stub4.ndjson"
wait_port "${STUB4##*:}" 30 || die "stub did not listen on $STUB4"
CONF4="$WORK/eventrelay4.toml"
write_config "$CONF4" "$B4" "$MET4" "$STUB4" e2e-redrive
http POST "http://$STUB4/faults" '{"status":400,"path_prefix":"/j/"}' >/dev/null
echo "injected: OwnerIQ answers 400"
start_bg eventrelay4 "$BIN" run --config "$CONF4" --role all
ER4=$LAST_PID
if wait_http_ok "http://$MET4/readyz" 60; then
  pass "eventrelay ready (/readyz 200) on $B4"
else
  kill -0 "$ER4" 2>/dev/null || die "eventrelay exited at start"
  echo "note: /readyz not 200 after 60 s, going on"
fi
N5=10
for i in $(seq 1 $N5); do
  printf '{"type":"page","userId":"u-%d","messageId":"rd-%d"}\n' "$i" "$i"
done >"$WORK/events5.ndjson"
kc produce5 produce --bootstrap "$B4" --topic segment.events --file "$WORK/events5.ndjson" \
  || die "produce failed: $(cat "$WORK/produce5.out" "$WORK/produce5.kc.log" | tail -5)"
echo "produced: $(cat "$WORK/produce5.out")"
if kc dlq5 consume --bootstrap "$B4" --topic dest.owneriq.dlq --expect $N5 --timeout 60; then
  pass "dest.owneriq.dlq holds the $N5 dead letters (OwnerIQ answered 400)"
else
  fail "dest.owneriq.dlq: only $(wc -l <"$WORK/dlq5.out") of $N5 dead letters after 60 s"
fi
echo "dead letters point at: $(python3 -c '
import json,sys
from collections import Counter
print(dict(Counter(json.loads(l)["headers"].get("eventrelay.error.topic") for l in open(sys.argv[1]) if l.strip())))' "$WORK/dlq5.out")"
http DELETE "http://$STUB4/faults" >/dev/null
echo "cleared the stub's faults"

er_cmd redrive_dry redrive --config "$CONF4" --from dest.owneriq.dlq --reason http_400
if [ "$ER_RC" -eq 0 ] && grep -q "dry run: $N5 dead letter" "$WORK/redrive_dry.log"; then
  pass "redrive --reason http_400 (dry run) reports $N5: $(grep 'dry run' "$WORK/redrive_dry.log" | head -1)"
else
  fail "redrive --reason http_400 (dry run): exit $ER_RC, expected $N5 reported; output: $(last_lines "$WORK/redrive_dry.log" 4)"
fi
er_cmd redrive_exec redrive --config "$CONF4" --from dest.owneriq.dlq --reason http_400 --execute
if [ "$ER_RC" -eq 0 ] && grep -q "copied $N5 dead letter" "$WORK/redrive_exec.log"; then
  pass "redrive --execute copied $N5: $(grep '^copied' "$WORK/redrive_exec.log" | head -1)"
else
  fail "redrive --execute: exit $ER_RC, expected $N5 copied; output: $(last_lines "$WORK/redrive_exec.log" 4)"
fi
run_check chk redriven "$STUB4" rd- $N5 60
er_cmd redrive_again redrive --config "$CONF4" --from dest.owneriq.dlq --reason http_400 --execute
if [ "$ER_RC" -eq 0 ] && grep -q "copied 0 dead letter" "$WORK/redrive_again.log"; then
  pass "second redrive --execute copied 0 (progress remembered)"
else
  fail "second redrive --execute: exit $ER_RC, expected 0 copied; output: $(last_lines "$WORK/redrive_again.log" 4)"
fi
kc owneriq5 consume --bootstrap "$B4" --topic dest.owneriq --expect $((2 * N5)) --timeout 30 || true
run_check chk redrive-copies "$WORK/owneriq5.out" rd- $N5
stop_eventrelay "$ER4" "eventrelay (scenario 3, redrive)"

# =============================================================================================
echo "== scenario 4: sender killed with SIGKILL mid-delivery on tansu"
start_tansu tansu5
B5=$BOOT
STUB5=127.0.0.1:$(free_port)
MET5M=127.0.0.1:$(free_port)
MET5S=127.0.0.1:$(free_port)
start_bg stub5 "$BIN" stub --listen "$STUB5"
wait_port "${STUB5##*:}" 30 || die "stub did not listen on $STUB5"
http POST "http://$STUB5/faults" '{"latency_ms":20}' >/dev/null
CONF5M="$WORK/eventrelay5m.toml"
CONF5S="$WORK/eventrelay5s.toml"
write_config "$CONF5M" "$B5" "$MET5M" "$STUB5" e2e-kill
write_config "$CONF5S" "$B5" "$MET5S" "$STUB5" e2e-kill
# A short session timeout for the sender, so the killed member leaves the group in seconds.
printf '\n[kafka.properties]\n"session.timeout.ms" = "6000"\n' >>"$CONF5S"
start_bg eventrelay5map "$BIN" run --config "$CONF5M" --role map
ER5M=$LAST_PID
start_bg eventrelay5send "$BIN" run --config "$CONF5S" --role send
ER5S=$LAST_PID
wait_http_ok "http://$MET5S/readyz" 60 || echo "note: sender /readyz not 200 after 60 s, going on"
N6=3000
SEED6=23
"${KC[@]}" generate --count $N6 --seed $SEED6 >"$WORK/events6.ndjson"
"$BIN" map --config "$CONF5M" "$WORK/events6.ndjson" >"$WORK/map6.ndjson" 2>"$WORK/map6.log" \
  || die "eventrelay map failed: $(tail -5 "$WORK/map6.log")"
E_REQ6=$(python3 -c '
import json,sys; d=json.loads(sys.argv[1]); print(sum(d["requests"].values()))' \
  "$(chk expect "$WORK/map6.ndjson")")
kc produce6 produce --bootstrap "$B5" --topic segment.events --generate $N6 --seed $SEED6 \
  || die "produce failed: $(cat "$WORK/produce6.out" "$WORK/produce6.kc.log" | tail -5)"
echo "produced: $(cat "$WORK/produce6.out"); $E_REQ6 requests expected"
# kill the sender once a random share (20-60 %) of the requests has arrived (the stub's 20 ms
# per request keeps 64 lanes under ~3 k requests/s, so this lands mid-delivery)
KILL_AT=$(python3 -c "import random; print(int($E_REQ6 * random.uniform(0.2, 0.6)))")
python3 - "http://$STUB5/requests/count" "$KILL_AT" 120 <<'EOF' || true
import json, sys, time, urllib.request
url, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        if json.load(urllib.request.urlopen(url, timeout=5))["count"] >= want:
            break
    except Exception:
        pass
    time.sleep(0.01)
EOF
kill -KILL "$ER5S" 2>/dev/null || true
wait "$ER5S" 2>/dev/null || true
SEEN=$(http GET "http://$STUB5/requests/count" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])' || echo 0)
if [ "$SEEN" -gt 0 ] && [ "$SEEN" -lt "$E_REQ6" ]; then
  pass "sender killed with SIGKILL mid-delivery: the stub had seen $SEEN of $E_REQ6 requests"
else
  fail "the SIGKILL did not land mid-delivery: the stub had seen $SEEN of $E_REQ6 requests"
fi
# Restart once the killed member's session has expired. tansu 0.6.0 sometimes gives a member
# that joined while the dead one was still in the group an empty assignment when the dead one
# expires, and never rebalances again (seen once in three runs; a real broker does not).
sleep 10
start_bg eventrelay5send2 "$BIN" run --config "$CONF5S" --role send
ER5S2=$LAST_PID
run_check chk delivered-at-least-once "$STUB5" "$WORK/map6.ndjson" 120
stop_eventrelay "$ER5S2" "eventrelay (scenario 4, restarted sender)"
stop_eventrelay "$ER5M" "eventrelay (scenario 4, map)"

echo "== tansu e2e: $PASSES passed, $FAILS failed in $(($(date +%s) - START_TS))s"
[ "$FAILS" -eq 0 ]
