"""Ingest, scenario 1: Segment's own libraries through the whole pipeline on tansu.
`segment-analytics-python` (gzip on) and `@segment/analytics-node`, unmodified, pointed at
`eventrelay run --role all` (ingest, map and send in one process) with their `host` option,
each make identify, track (an `Order Completed` with products and a `Viewed Product`), page,
screen, group and alias. `segment.events`, read back by an outside client, holds each call
once, keyed by userId, with its fields and the ones ingest fills; the stub then holds exactly
the requests `eventrelay map` prints for the events read back."""

import json
import time
from collections import Counter, defaultdict

from support.procs import poll, quiet_period
from test_map_send import check_stub_requests

KEY = "wk-e2e-clients"


def test_segment_libraries_through_the_pipeline(tansu, stub, eventrelay, kafka, segment_libs,
                                                check, tmp_path):
    libs = segment_libs
    broker = tansu(storage="sqlite")  # the send stage may resume mid-batch (conftest.tansu)
    dest = stub()
    config = eventrelay.config(broker, dest, group="e2e-clients", ingest={"write_keys": [KEY]})
    service = eventrelay.run(config, role="all")
    assert service.ready(60), f"eventrelay (ingest {config.ingest}) not ready within 60 s"

    run = str(int(time.time()))
    for lib in libs.LIBS:
        rc = libs.send(lib, f"http://{config.ingest}", KEY, run, tmp_path / f"client-{lib}.log")
        out = (tmp_path / f"client-{lib}.log").read_text().strip().splitlines()
        check(rc == 0, f"{libs.LIBS[lib]} made its {len(libs.CALLS)} calls without an error "
                       f"(exit {rc}: {' | '.join(out[-3:])[:300]})")

    # --- segment.events: each call once, with its fields ---
    n_calls = len(libs.LIBS) * len(libs.CALLS)
    recs = kafka.read(broker.bootstrap, "segment.events", expect=n_calls, idle=2,
                      timeout=30).records
    found = defaultdict(list)
    for r in recs:
        e = json.loads(r["value_text"])
        lib = next((lib for lib in libs.LIBS if e.get("userId") == libs.user_of(lib, run)), None)
        found[(lib, libs.call_of(e))].append((r, e))
    check(len(recs) == n_calls and set(found) == {(lib, c) for lib in libs.LIBS
                                                  for c in libs.CALLS},
          f"segment.events holds {len(recs)} records, the {n_calls} calls and nothing else")
    for lib in libs.LIBS:
        for call in libs.CALLS:
            got = found.get((lib, call), [])
            what = f"{libs.LIBS[lib]} {call[0]}{' ' + call[1] if call[1] else ''}"
            if len(got) != 1:
                check(False, f"{what}: on segment.events {len(got)} times, expected once")
                continue
            r, e = got[0]
            bad = libs.problems(lib, run, e)
            if r["key"] != e.get("userId"):
                bad.append(f"key {r['key']!r}")
            check(not bad, f"{what}: once, keyed by userId, fields as sent and filled"
                           + (f" (wrong: {', '.join(bad)}; {r['value_text'][:300]})" if bad else ""))

    # --- the stub: exactly what the Event Tester says for those events ---
    exp = eventrelay.map(config, [r["value_text"].encode() for r in recs], "clients")
    check(exp.n_requests("seg") > 0 and exp.n_requests("owneriq") > 0,
          f"`map` expects requests to both destinations ({exp.summary()})")
    poll(lambda: dest.count() >= exp.n_requests(), 60, interval=0.5)
    quiet_period(1.0)
    check(dest.count() == exp.n_requests(),
          f"stub received {dest.count()} requests, expected {exp.n_requests()}")
    reqs = dest.requests()
    check_stub_requests(check, exp, reqs)
    per_call = Counter()
    ids = {e["messageId"]: libs.call_of(e) for (_lib, _c), v in found.items() for _r, e in v}
    for r in reqs:
        per_call[ids.get(r["headers"].get("idempotency-key"))] += 1
    print(f"requests at the stub per call: {dict(per_call)}")

    ms = service.metrics()
    n = ms.sum("eventrelay_ingest_events_total")
    check(n == n_calls, f"eventrelay_ingest_events_total = {n:g}, expected {n_calls}")
    check.exits_cleanly(service, "eventrelay --role all with ingest")
