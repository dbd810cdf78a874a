"""Scenario 2, retries and dead letters, on tansu: Seg answers 503 for 4 s and everything is still
delivered (the retries counted in /metrics); then OwnerIQ answers 400 and its records land in
dest.owneriq.dlq with the send error headers after one attempt, while Seg gets the same events
as usual."""

import time
from collections import Counter, defaultdict

from support.expect import dest_of_url
from support.procs import poll, quiet_period
from support.records import generate_events

N = 200
N_DEAD = 20


def test_retries_then_dead_letters(tansu, stub, eventrelay, kafka, check):
    # sqlite: the retry-topic consumer seeks back to a record that is not yet due and fetches
    # it again later, and tansu's memory storage would serve that fetch from the next batch on.
    broker = tansu(storage="sqlite")
    dest = stub()
    config = eventrelay.config(broker, dest, group="e2e-retry")
    service = eventrelay.run(config, role="all")
    check(service.ready(60), f"eventrelay ready (/readyz 200) on {broker.bootstrap}")
    assert service.alive(), f"eventrelay exited at start (exit code {service.popen.returncode})"

    # --- a 4 s window of Seg 503s: retried until delivered ---
    lines = list(generate_events(N, seed=11))
    exp = eventrelay.map(config, lines, "events")
    dest.fault(status=503, rate=1.0, for_secs=4, path_prefix="/v1/")
    kafka.produce(broker.bootstrap, "segment.events", lines)
    check_delivered_once(check, dest, exp.requests, timeout=90)
    ms = service.metrics()
    retry = ms.sum("eventrelay_deliveries_total", destination="seg", outcome="retry")
    a503 = ms.sum("eventrelay_delivery_attempts_total", destination="seg", status="503")
    s503 = sum(1 for r in dest.requests() if r["status"] == 503)
    check(retry > 0 or a503 > 0,
          f'seg retries counted: deliveries_total{{outcome="retry"}} = {retry:g}, '
          f'delivery_attempts_total{{status="503"}} = {a503:g} (stub answered 503 {s503} times)')

    # --- OwnerIQ answers 400: dead letters after one attempt ---
    dest.fault(status=400, rate=1.0, path_prefix="/j/")
    dead = [f'{{"type":"page","userId":"u-{i}","messageId":"dl-{i}"}}'.encode()
            for i in range(1, N_DEAD + 1)]
    exp_dead = eventrelay.map(config, dead, "dead")
    kafka.produce(broker.bootstrap, "segment.events", dead)
    dlq = kafka.read(broker.bootstrap, "dest.owneriq.dlq", expect=N_DEAD, idle=3, timeout=60)
    check(len(dlq) == N_DEAD, f"dest.owneriq.dlq holds {len(dlq)} records in all, expected {N_DEAD}")
    check_send_dead_letters(check, dlq.records, dest, prefix="dl-")
    # the Seg side of the same page events is unaffected by OwnerIQ's 400s
    check_delivered_once(check, dest, {"seg": exp_dead.requests["seg"]}, timeout=30)
    def dead_lettered():
        return service.metrics().sum("eventrelay_deliveries_total", destination="owneriq",
                                     outcome="dead_letter")
    poll(lambda: dead_lettered() == N_DEAD, 15)
    dl = dead_lettered()
    check(dl == N_DEAD, f'eventrelay_deliveries_total{{destination="owneriq",'
                        f'outcome="dead_letter"}} = {dl:g}, expected {N_DEAD}')

    check.exits_cleanly(service, "eventrelay (scenario 2)")


def check_delivered_once(check, dest, requests, timeout):
    """Every request `map` printed (destination -> map lines) got exactly one 2xx at the stub."""
    want = {d: Counter(x["messageId"] for x in v) for d, v in requests.items()}
    t0 = time.monotonic()
    dest.wait_successes(want, timeout)
    quiet_period(1.0)
    succ, statuses = defaultdict(Counter), defaultdict(Counter)
    for r in dest.requests():
        d = dest_of_url(r["url"])
        statuses[d][r["status"]] += 1
        if 200 <= r["status"] < 300:
            succ[d][r["headers"].get("idempotency-key")] += 1
    for d in sorted(want):
        ids = want[d]
        relevant = {k: n for k, n in succ[d].items() if k in ids}
        missing = sorted(set(ids) - set(succ[d]))
        check(not missing and sum(relevant.values()) == sum(ids.values()),
              f"{d}: {sum(relevant.values())} successful deliveries for {sum(ids.values())} "
              f"expected requests (missing {len(missing)} {missing[:5]}; repeated "
              f"{sum(n - 1 for n in relevant.values() if n > 1)}; stub statuses "
              f"{dict(statuses[d])}; after {time.monotonic() - t0:.1f}s)")


def check_send_dead_letters(check, recs, dest, prefix):
    n = N_DEAD
    want = {"eventrelay.error.stage": "send", "eventrelay.error.reason": "http_400",
            "eventrelay.error.status": "400", "eventrelay.error.attempts": "1"}
    bad, ids = [], Counter()
    for r in recs:
        h, rec = r["headers"], r["record"] or {}
        ids[rec.get("message_id")] += 1
        diffs = {k: h.get(k) for k, v in want.items() if h.get(k) != v}
        if rec.get("destination") != "owneriq" or rec.get("owneriq") is None:
            diffs["record"] = rec.get("destination")
        if not r["key"] or r["key"] != f"u-{rec.get('message_id', '').split('-')[-1]}":
            diffs["key"] = r["key"]
        if diffs:
            bad.append((rec.get("message_id"), diffs))
    expected_ids = {f"{prefix}{i}" for i in range(1, n + 1)}
    check(set(ids) == expected_ids and all(v == 1 for v in ids.values()),
          f"dest.owneriq.dlq: messageIds {prefix}1..{prefix}{n}, once each "
          f"({len(set(ids) & expected_ids)}/{n})")
    check(not bad, f"dest.owneriq.dlq headers stage=send reason=http_400 status=400 attempts=1, "
                   f"key kept ({len(recs) - len(bad)}/{len(recs)}; wrong {bad[:3]})")
    oiq = [r for r in dest.requests() if dest_of_url(r["url"]) == "owneriq"
           and (r["headers"].get("idempotency-key") or "").startswith(prefix)]
    st = Counter(r["status"] for r in oiq)
    check(len(oiq) == n and set(st) == {400},
          f"stub got each {prefix}* OwnerIQ request once and answered 400 "
          f"({len(oiq)} requests, statuses {dict(st)})")
