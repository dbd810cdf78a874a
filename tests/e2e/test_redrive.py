"""Scenario 3b, redrive, on tansu: 10 OwnerIQ dead letters (the stub answering 400) are copied
back with `eventrelay redrive` once the stub is healthy again: delivered once each, and a
second redrive copies nothing."""

import time
from collections import Counter

from support.expect import dest_of_url
from support.procs import poll, quiet_period

N = 10
PREFIX = "rd-"


def test_redrive(tansu, stub, eventrelay, kafka, check):
    broker = tansu(storage="sqlite")  # redrive resumes from where it stopped
    dest = stub()
    config = eventrelay.config(broker, dest, group="e2e-redrive")
    dest.fault(status=400, path_prefix="/j/")
    service = eventrelay.run(config, role="all")
    check(service.ready(60), f"eventrelay ready (/readyz 200) on {broker.bootstrap}")
    assert service.alive(), f"eventrelay exited at start (exit code {service.popen.returncode})"

    events = [f'{{"type":"page","userId":"u-{i}","messageId":"{PREFIX}{i}"}}'.encode()
              for i in range(1, N + 1)]
    kafka.produce(broker.bootstrap, "segment.events", events)
    dlq = kafka.read(broker.bootstrap, "dest.owneriq.dlq", expect=N, timeout=60)
    check(len(dlq) == N, f"dest.owneriq.dlq holds the {N} dead letters (OwnerIQ answered 400; "
                         f"read {len(dlq)})")
    print("dead letters point at:",
          dict(Counter(r["headers"].get("eventrelay.error.topic") for r in dlq.records)))
    dest.clear_faults()

    def redrive(name, *args):
        return eventrelay.cmd(name, "redrive", "--config", config.path,
                              "--from", "dest.owneriq.dlq", "--reason", "http_400", *args)

    dry = redrive("redrive-dry")
    check(dry.rc == 0 and f"dry run: {N} dead letter" in dry.output,
          f"redrive --reason http_400 (dry run): exit {dry.rc}, reports {N}: "
          + next((ln for ln in dry.output.splitlines() if "dry run" in ln), dry.error()))
    done = redrive("redrive-exec", "--execute")
    check(done.rc == 0 and f"copied {N} dead letter" in done.output,
          f"redrive --execute: exit {done.rc}, copied {N}: "
          + next((ln for ln in done.output.splitlines() if ln.startswith("copied")), done.error()))
    check_redriven(check, dest, timeout=60)
    again = redrive("redrive-again", "--execute")
    check(again.rc == 0 and "copied 0 dead letter" in again.output,
          f"second redrive --execute: exit {again.rc}, copied 0 (progress remembered): "
          + next((ln for ln in again.output.splitlines() if ln.startswith("copied")), again.error()))

    # dest.owneriq: the originals plus one copy each, marked as a redrive, without error headers
    recs = [r for r in kafka.read(broker.bootstrap, "dest.owneriq", expect=2 * N, timeout=30).records
            if ((r["record"] or {}).get("message_id") or "").startswith(PREFIX)]
    copies = [r for r in recs if "eventrelay.redrive.count" in r["headers"]]
    ids = Counter(r["record"]["message_id"] for r in copies)
    bad = [(r["record"]["message_id"], r["headers"]) for r in copies
           if r["headers"].get("eventrelay.redrive.count") != "1"
           or any(k.startswith("eventrelay.error.") for k in r["headers"])]
    want = {f"{PREFIX}{i}" for i in range(1, N + 1)}
    check(len(recs) == 2 * N and set(ids) == want and all(v == 1 for v in ids.values()) and not bad,
          f"dest.owneriq: {len(recs)} {PREFIX}* records ({2 * N} expected: originals + copies), "
          f"{len(copies)} copies with eventrelay.redrive.count=1 and no error headers "
          f"(ids {len(set(ids) & want)}/{N}; wrong {bad[:2]})")

    check.exits_cleanly(service, "eventrelay (scenario 3, redrive)")


def check_redriven(check, dest, timeout):
    """OwnerIQ answered 200 for every redriven dead letter, exactly once each."""
    ids = {f"{PREFIX}{i}" for i in range(1, N + 1)}

    def mine(r):
        return (dest_of_url(r["url"]) == "owneriq"
                and (r["headers"].get("idempotency-key") or "").startswith(PREFIX))

    def ok200():
        return Counter(r["headers"].get("idempotency-key") for r in dest.requests()
                       if mine(r) and r["status"] == 200)

    t0 = time.monotonic()
    poll(lambda: ids <= set(ok200()), timeout, interval=0.5)
    waited = time.monotonic() - t0
    quiet_period(1.0)
    got = ok200()
    st = Counter(r["status"] for r in dest.requests() if mine(r))
    check(set(got) == ids and all(v == 1 for v in got.values()),
          f"stub: {sum(got.values())} successful (200) OwnerIQ requests for {PREFIX}1..{PREFIX}{N} "
          f"after the redrive ({len(set(got) & ids)}/{N} ids, repeated "
          f"{sum(v - 1 for v in got.values() if v > 1)}; all {PREFIX}* OwnerIQ statuses "
          f"{dict(st)}; after {waited:.1f}s)")
