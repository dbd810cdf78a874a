"""Scenario 1, map + send: 2,000 generated events (every 50th invalid JSON) produced by an outside
client through `eventrelay run --role all` on tansu. What the user sees must equal what the
Event Tester (`eventrelay map`) says for the same lines: the destination topics, the input
dead-letter topic, per-user order, the requests the destinations received, the metrics; then a
clean SIGTERM leaves the input offsets committed."""

import json
from collections import Counter, defaultdict

from support.expect import canon, compact, dest_of_url
from support.procs import poll, quiet_period
from support.records import event_key, generate_events

N = 2000
DESTS = ("seg", "owneriq")
OUT_TOPICS = ["dest.seg", "dest.owneriq", "segment.events.dlq"]


def test_map_and_send(tansu, stub, eventrelay, kafka, check):
    # sqlite storage: the send stage pauses a partition behind a full lane and resumes it from
    # mid-batch offsets, which tansu 0.6.0 serves wrongly from memory storage (conftest.tansu).
    broker = tansu(storage="sqlite")
    dest = stub()
    config = eventrelay.config(broker, dest, group="eventrelay")
    service = eventrelay.run(config, role="all")
    check(service.ready(60), f"eventrelay ready (/readyz 200) on {broker.bootstrap}")
    assert service.alive(), f"eventrelay exited at start (exit code {service.popen.returncode})"

    lines = list(generate_events(N, invalid_every=50, seed=7))
    exp = eventrelay.map(config, lines, "events")
    print(f"produced: {kafka.produce(broker.bootstrap, 'segment.events', lines)}")

    check_input_topic(check, lines, kafka.read(broker.bootstrap, "segment.events",
                                               expect=N, timeout=60).records)

    # Everything expected, then until nothing new for 3 s (so extra records would show).
    want = exp.n_requests() + len(exp.invalid) + len(exp.rejected)
    out = kafka.read(broker.bootstrap, OUT_TOPICS, expect=want, idle=3, timeout=120)
    print(f"read {len(out)} records from {OUT_TOPICS} in {out.seconds:.1f}s ({want} expected)")
    by_topic = defaultdict(list)
    for r in out.records:
        by_topic[r["topic"]].append(r)
    check_destination_topics(check, lines, exp, by_topic)
    check_per_user_order(check, lines, by_topic)
    check_input_dead_letters(check, lines, exp, by_topic["segment.events.dlq"])

    poll(lambda: dest.count() >= exp.n_requests(), 60, interval=0.5)
    quiet_period(1.0)
    n = dest.count()
    check(n == exp.n_requests(), f"stub received {n} requests, expected {exp.n_requests()}")
    check_stub_requests(check, exp, dest.requests())
    check_metrics(check, service, exp, by_topic)

    check.exits_cleanly(service, "eventrelay (scenario 1)")
    offsets = kafka.group_offsets(broker.bootstrap, "eventrelay", "segment.events")
    total = None if offsets is None else sum(v or 0 for v in offsets.values())
    check(total == N, f"group eventrelay committed offsets on segment.events {offsets} sum to "
                      f"{total}, expected {N}")


def _key_text(line: bytes):
    k = event_key(line)
    return k.decode() if k else None


def _line_of_message(lines):
    """messageId -> (1-based input line, line bytes), for the lines that parse."""
    out = {}
    for i, ln in enumerate(lines, 1):
        try:
            ev = json.loads(ln)
        except ValueError:
            continue
        if isinstance(ev, dict) and isinstance(ev.get("messageId"), str):
            out[ev["messageId"]] = (i, ln)
    return out


def check_input_topic(check, lines, recs):
    got = Counter(r["value_text"] for r in recs)
    want = Counter(ln.decode("utf-8") for ln in lines)
    check(got == want, f"segment.events holds exactly the {len(lines)} generated lines "
                       f"(read {len(recs)}, differing {sum(((got - want) + (want - got)).values())})")
    keys_ok = sum(1 for r in recs if r["key"] == _key_text(r["value_text"].encode()))
    check(keys_ok == len(recs), f"input keys = userId ({keys_ok}/{len(recs)})")


def check_destination_topics(check, lines, exp, by_topic):
    msg_line = _line_of_message(lines)
    for dest in DESTS:
        topic = f"dest.{dest}"
        got = by_topic[topic]
        want = exp.requests.get(dest, [])
        ids = Counter((r["record"] or {}).get("message_id") for r in got)
        want_ids = exp.message_ids(dest)
        dups = sum(n - 1 for n in ids.values() if n > 1)
        missing = sorted(set(want_ids) - set(ids))
        extra = sorted(set(ids) - set(want_ids), key=str)
        check(len(got) == len(want), f"{topic}: {len(got)} records read, {len(want)} expected "
                                     f"from `map` (duplicates {dups})")
        check(not missing and not extra,
              f"{topic}: every expected messageId present ({len(set(ids) & set(want_ids))}/"
              f"{len(want_ids)}; missing {len(missing)} {missing[:5]}, unexpected {len(extra)} "
              f"{extra[:5]})")
        errs = [r for r in got if r.get("record_error") or r["record"] is None]
        check(not errs, f"{topic}: every record decodes as eventrelay.v1.Record "
                        f"({len(got) - len(errs)}/{len(got)})")
        wrong = []
        for r in got:
            rec = r["record"] or {}
            mid = rec.get("message_id")
            src = msg_line.get(mid)
            if src is None:
                wrong.append((mid, "no such input"))
                continue
            k = _key_text(src[1])
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
        if dest == "seg":
            want_body = {d["messageId"]: d["request"]["body"] for d in want}
            diff = [(r["record"] or {}).get("message_id") for r in got
                    if ((r["record"] or {}).get("seg") or {}).get("body")
                    != want_body.get((r["record"] or {}).get("message_id"))]
            check(not diff, f"{topic}: decoded seg bodies equal the `map` bodies "
                            f"({len(got) - len(diff)}/{len(got)}; first differing {diff[:3]})")


def check_per_user_order(check, lines, by_topic):
    """Within each partition, per key, the input line (both) and properties.seq (seg) increase,
    and no user's records are split over partitions."""
    msg_line = _line_of_message(lines)
    for dest in DESTS:
        topic = f"dest.{dest}"
        parts_of_key = defaultdict(set)
        last_line, last_seq = {}, {}
        inversions = []
        for r in sorted(by_topic[topic], key=lambda r: (r["partition"], r["offset"])):
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


def check_input_dead_letters(check, lines, exp, dlq):
    """segment.events.dlq: the invalid lines and the rejects, each with its stage, reason and
    where it came from, under its original key."""
    n_exp = len(exp.invalid) + len(exp.rejected)
    check(len(dlq) == n_exp,
          f"segment.events.dlq: {len(dlq)} records, expected {n_exp} "
          f"({len(exp.invalid)} invalid + {len(exp.rejected)} rejected per `map`)")
    by_text = {ln.decode("utf-8", errors="replace"): i for i, ln in enumerate(lines, 1)}
    inv_reason = {d["line"]: d["invalid"] for d in exp.invalid}
    rej = defaultdict(list)
    for d in exp.rejected:
        rej[d["messageId"]].append(d)
    matched, problems, key_wrong = 0, [], []
    for r in dlq:
        h, text = r["headers"], r["value_text"]
        line = by_text.get(text)
        if line is None:
            problems.append(("value is not an input line", (text or "")[:60]))
            continue
        if line in inv_reason:
            want = {"eventrelay.error.stage": "parse", "eventrelay.error.reason": inv_reason[line]}
        else:
            cands = rej.get(json.loads(text).get("messageId"))
            if not cands:
                problems.append(("not expected in the dlq", line))
                continue
            want = {"eventrelay.error.stage": "map", "eventrelay.error.reason": cands[0]["rejected"],
                    "eventrelay.error.destination": cands[0]["destination"]}
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
        if r["key"] != _key_text(lines[line - 1]):
            key_wrong.append((line, r["key"], _key_text(lines[line - 1])))
    check(not problems and matched == n_exp,
          f"segment.events.dlq: stage, reason, destination and error headers as expected "
          f"({matched}/{n_exp}; reasons {dict(Counter(d['invalid'] for d in exp.invalid))}; "
          f"problems {len(problems)} {problems[:3]})")
    check(not key_wrong,
          f"segment.events.dlq: original key kept, a null key staying null "
          f"({len(dlq) - len(key_wrong)}/{len(dlq)}; wrong (line, dlq key, input key) "
          f"{key_wrong[:3]})")


def check_stub_requests(check, exp, reqs):
    """The requests the destinations received are exactly the ones `map` prints."""
    want = exp.all_requests()
    per_dest = Counter(dest_of_url(r["url"]) for r in reqs)
    want_dest = Counter(d["destination"] for d in want)
    check(per_dest == want_dest, f"stub requests per destination {dict(per_dest)}, "
                                 f"expected {dict(want_dest)}")
    statuses = Counter(r["status"] for r in reqs)
    check(set(statuses) <= {200}, f"stub answered every request 200 (statuses {dict(statuses)})")

    def want_body_text(d):
        b = d["request"]["body"]
        return "" if b is None else compact(b)

    def got_body(r):
        if r["body"] == "":
            return None
        try:
            return json.loads(r["body"])
        except ValueError:
            return ("unparseable", r["body"])

    parsed_got = Counter((r["method"], r["url"], canon(got_body(r))) for r in reqs)
    parsed_want = Counter((d["request"]["method"], d["request"]["url"],
                           canon(d["request"]["body"])) for d in want)
    pg, pw = parsed_got - parsed_want, parsed_want - parsed_got
    check(not pg and not pw,
          f"stub (method, url, body) multiset == `map` requests, bodies compared as parsed "
          f"JSON ({len(reqs)} vs {len(want)}; only at stub {sum(pg.values())}, only in map "
          f"{sum(pw.values())}; e.g. stub {list(pg)[:1]} map {list(pw)[:1]})")
    exact_got = Counter((r["method"], r["url"], r["body"]) for r in reqs)
    exact_want = Counter((d["request"]["method"], d["request"]["url"], want_body_text(d))
                         for d in want)
    eg, ew = exact_got - exact_want, exact_want - exact_got
    check(not eg and not ew,
          f"stub (method, url, body) multiset == `map` requests, bodies compared as exact "
          f"compact-JSON strings (only at stub {sum(eg.values())}, only in map "
          f"{sum(ew.values())}; e.g. stub {list(eg)[:1]} map {list(ew)[:1]})")
    ids_for = defaultdict(list)
    for d in want:
        ids_for[(d["request"]["method"], d["request"]["url"],
                 canon(d["request"]["body"]))].append(d["messageId"])
    wrong = []
    for r in reqs:
        key = r["headers"].get("idempotency-key")
        cands = ids_for.get((r["method"], r["url"], canon(got_body(r))), [])
        if key not in cands:
            wrong.append((key, cands[:2]))
    check(not wrong, f"every request's idempotency-key header is its messageId "
                     f"({len(reqs) - len(wrong)}/{len(reqs)}; wrong {wrong[:3]})")
    idem = Counter((dest_of_url(r["url"]), r["headers"].get("idempotency-key")) for r in reqs)
    dup = {k: n for k, n in idem.items() if n > 1}
    check(not dup, f"no request delivered twice (repeated (destination, idempotency-key) "
                   f"{len(dup)} {list(dup)[:3]})")
    ct_bad = [r["headers"].get("content-type") for r in reqs
              if dest_of_url(r["url"]) == "seg"
              and not (r["headers"].get("content-type") or "").startswith("application/json")]
    check(not ct_bad, f"Seg requests carry Content-Type: application/json (bad {len(ct_bad)})")


def check_metrics(check, service, exp, by_topic, timeout=15):
    """/metrics agrees with what was consumed, produced, delivered, found invalid and skipped
    (polled: the counters may trail the records by a moment)."""

    def evaluate():
        ms = service.metrics()
        res = []
        c = ms.sum("eventrelay_events_consumed_total", topic="segment.events")
        res.append((c == N, f'eventrelay_events_consumed_total{{topic="segment.events"}} = '
                            f'{c:g}, expected {N}'))
        for dest in ("owneriq", "seg"):
            read = len(by_topic[f"dest.{dest}"])
            p = ms.sum("eventrelay_records_produced_total", destination=dest)
            res.append((p == read, f'eventrelay_records_produced_total{{destination="{dest}"}} = '
                                   f'{p:g}, records read from dest.{dest} {read}'))
            s = ms.sum("eventrelay_deliveries_total", destination=dest, outcome="success")
            res.append((s == exp.n_requests(dest),
                        f'eventrelay_deliveries_total{{destination="{dest}",outcome="success"}} '
                        f'= {s:g}, requests expected {exp.n_requests(dest)}'))
        inv = ms.sum("eventrelay_events_invalid_total")
        res.append((inv == len(exp.invalid), f"eventrelay_events_invalid_total (sum over "
                                             f"reasons) = {inv:g}, invalid lines {len(exp.invalid)}"))
        for (dest, reason), n in sorted(exp.skipped.items()):
            s = ms.sum("eventrelay_events_skipped_total", destination=dest, reason=reason)
            res.append((s == n, f'eventrelay_events_skipped_total{{destination="{dest}",'
                                f'reason="{reason}"}} = {s:g}, `map` skipped {n}'))
        return res

    results = []

    def all_true():
        results[:] = evaluate()
        return all(ok for ok, _ in results)

    poll(all_true, timeout, interval=0.5)
    if not results:
        check(False, f"/metrics on {service.config.metrics} did not answer")
    for ok, msg in results:
        check(ok, msg)
