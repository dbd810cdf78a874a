"""Ingest, scenario 4: messageId de-duplication on tansu. A batch posted twice through ingest
(a client retrying after a lost answer: the same messageIds) is on `segment.events` twice,
delivered once at the stub, the copies skipped by the map stage as `duplicate` for every
destination. After the service stops, `eventrelay replay --to-earliest --execute` of the map
group and a restart deliver each event once more (the originals, at the lower offsets, again;
the copies skipped again)."""

import json
import time
from collections import Counter

from support.expect import dest_of_url
from support.ingest import post
from support.procs import poll, quiet_period

KEY = "wk-e2e-dup"
GROUP = "e2e-dup"


def delivered(stub) -> Counter:
    """(destination, Idempotency-Key) -> requests answered 2xx."""
    return Counter((dest_of_url(r["url"]), r["headers"].get("idempotency-key"))
                   for r in stub.requests() if 200 <= r["status"] < 300)


def test_same_message_id_twice_is_delivered_once_and_replay_delivers_again(
        tansu, stub, eventrelay, kafka, check):
    broker = tansu(storage="sqlite")  # the replayed group re-reads from offset 0
    dest = stub()
    config = eventrelay.config(broker, dest, group=GROUP, ingest={"write_keys": [KEY]})
    service = eventrelay.run(config, role="all")
    assert service.ready(60), f"eventrelay (ingest {config.ingest}) not ready within 60 s"

    run = str(int(time.time()))
    user = f"dup-{run}"
    batch = [
        {"type": "identify", "userId": user, "messageId": f"{run}-1",
         "traits": {"email": f"{user}@example.com"}},
        {"type": "page", "userId": user, "messageId": f"{run}-2", "name": "Home",
         "properties": {"url": "https://shop.example.com/"}},
        {"type": "track", "userId": user, "messageId": f"{run}-3", "event": "Order Completed",
         "properties": {"orderId": f"o-{run}", "total": 12.0,
                        "products": [{"sku": "sku-9", "price": 12.0, "quantity": 1}]}},
    ]
    for attempt in ("first", "again"):
        s, answer, _ = post(config.ingest, "/v1/batch", {"batch": batch}, key=KEY)
        assert s == 200, f"batch ({attempt}): {s} {answer}"

    recs = kafka.read(broker.bootstrap, "segment.events", expect=2 * len(batch), idle=2,
                      timeout=30).records
    ids = Counter(json.loads(r["value_text"])["messageId"] for r in recs)
    check(len(recs) == 2 * len(batch) and set(ids.values()) == {2},
          f"segment.events holds each of the {len(batch)} messageIds twice ({dict(ids)})")
    firsts = {}
    for r in sorted(recs, key=lambda r: r["offset"]):
        firsts.setdefault(json.loads(r["value_text"])["messageId"], r["value_text"].encode())
    exp = eventrelay.map(config, list(firsts.values()), "originals")
    want = Counter({(d["destination"], d["messageId"]): 1 for d in exp.all_requests()})
    check(exp.n_requests("seg") > 0 and exp.n_requests("owneriq") > 0,
          f"`map` expects requests to both destinations for the originals ({exp.summary()})")

    # --- first pass: each request once ---
    poll(lambda: sum(delivered(dest).values()) >= sum(want.values()), 60, interval=0.5)
    quiet_period(2.0)
    got = delivered(dest)
    check(got == want, f"each expected request delivered once ({len(want)} requests; "
                       f"got {dict(got)})")
    ms = service.metrics()
    for d in ("seg", "owneriq"):
        n = ms.sum("eventrelay_events_skipped_total", destination=d, reason="duplicate")
        check(n == len(batch), f'eventrelay_events_skipped_total{{destination="{d}",'
                               f'reason="duplicate"}} = {n:g}, expected {len(batch)}')
    check.exits_cleanly(service, "eventrelay --role all (first pass)")

    # --- replay of the map group: delivered once more, the copies still skipped ---
    moved = eventrelay.cmd("replay", "replay", "--config", config.path, "--group", GROUP,
                           "--topic", "segment.events", "--to-earliest", "--execute", "--force")
    check(moved.rc == 0, f"replay --to-earliest --execute of group {GROUP} exited {moved.rc}"
                         + ("" if moved.rc == 0 else f": {moved.error()}"))
    again = eventrelay.run(config, role="all", name="eventrelay-after-replay")
    assert again.ready(60), "eventrelay did not get ready after the replay"
    want2 = Counter({k: 2 for k in want})
    poll(lambda: sum(delivered(dest).values()) >= sum(want2.values()), 60, interval=0.5)
    quiet_period(2.0)
    got = delivered(dest)
    check(got == want2, f"after the replay each expected request delivered exactly twice "
                        f"in all (got {dict(got)})")
    n = again.metrics().sum("eventrelay_events_skipped_total", reason="duplicate")
    check(n == 2 * len(batch), f'after the replay eventrelay_events_skipped_total'
                               f'{{reason="duplicate"}} = {n:g} (both destinations), '
                               f"expected {2 * len(batch)}")
    check.exits_cleanly(again, "eventrelay --role all (after the replay)")
