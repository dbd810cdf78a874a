"""Ingest, scenario 3: a SIGKILL loses nothing that was answered 200, on tansu (ported from
tests/ingest.rs, which runs it on the mock). `eventrelay run --role ingest` is killed with
SIGKILL while 4 concurrent posters send `/v1/batch` requests of 50 events; every event of every
request answered 200 must then be on `segment.events` (the 200 waits for the broker's acks)."""

import http.client
import json
import threading

from support.ingest import post
from support.procs import poll

KEY = "wk-e2e-kill"
POSTERS, PER_BATCH, MAX_REQUESTS, KILL_AFTER = 4, 50, 2000, 40


def test_sigkill_of_ingest_loses_nothing_answered_200(tansu, eventrelay, kafka, check):
    broker = tansu(storage="sqlite")  # acknowledged means written down
    config = eventrelay.config(broker, None, group="e2e-ingest-kill",
                               ingest={"write_keys": [KEY]})
    service = eventrelay.run(config, role="ingest")
    assert service.ingest_serving(60), f"eventrelay --role ingest: nothing on {config.ingest}"

    acked, answers, lock = [], [], threading.Lock()
    counter = iter(range(MAX_REQUESTS))

    def poster():
        conn = http.client.HTTPConnection(config.ingest, timeout=30)
        for r in counter:  # shared: each request number once; stops at the first failure
            batch = [{"type": "track", "userId": f"u{j % 9}", "event": "Product Viewed",
                      "messageId": f"k-{r}-{j}", "properties": {"sku": f"s{j}"}}
                     for j in range(PER_BATCH)]
            try:
                status, _, _ = post(config.ingest, "/v1/batch", {"batch": batch}, key=KEY,
                                    conn=conn)
            except OSError as e:
                status = type(e).__name__
            with lock:
                answers.append(status)
                if status == 200:
                    acked.append(r)
            if status != 200:
                break
        conn.close()

    threads = [threading.Thread(target=poster, daemon=True) for _ in range(POSTERS)]
    for t in threads:
        t.start()
    poll(lambda: len(acked) >= KILL_AFTER, 60, interval=0.005)
    service.kill()
    for t in threads:
        t.join(35)
    sent = len(answers)
    print(f"SIGKILL after {len(acked)} requests answered 200; {sent} answered in all "
          f"(after the kill: {[a for a in answers if a != 200][:POSTERS]})")
    assert len(acked) >= KILL_AFTER, f"only {len(acked)} requests answered 200 before the kill"
    check(sent > len(acked), f"the kill landed mid-load: {sent - len(acked)} requests in "
                             f"flight got no 200")

    recs = kafka.read(broker.bootstrap, "segment.events", idle=3, timeout=60).records
    on_topic = {json.loads(r["value_text"]).get("messageId") for r in recs}
    missing = [f"k-{r}-{j}" for r in acked for j in range(PER_BATCH)
               if f"k-{r}-{j}" not in on_topic]
    check(not missing, f"every event of the {len(acked)} requests answered 200 "
                       f"({len(acked) * PER_BATCH} events) is on segment.events (missing "
                       f"{len(missing)} {missing[:5]}; {len(recs)} records on the topic, "
                       f"{len(on_topic)} messageIds)")
