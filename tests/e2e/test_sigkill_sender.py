"""Scenario 4, crash, on tansu: `run --role map` and `run --role send` as separate processes; the
sender is killed with SIGKILL while delivering (the stub adds 20 ms per request so the kill
lands mid-stream) and restarted: every request `eventrelay map` prints for the input reaches the
stub with a 2xx at least once (duplicates are counted and reported)."""

import random
import time

from support.procs import poll
from support.records import generate_events

N = 3000
GROUP = "e2e-kill"
SESSION_TIMEOUT_S = 6


def test_sender_killed_mid_delivery_loses_nothing(tansu, stub, eventrelay, kafka, check):
    broker = tansu(storage="sqlite")  # the restarted sender resumes from committed offsets
    dest = stub(record=False)
    dest.fault(latency_ms=20)
    map_config = eventrelay.config(broker, dest, group=GROUP, name="map")
    # A short session timeout for the sender, so the killed member leaves the group in seconds.
    send_config = eventrelay.config(broker, dest, group=GROUP, name="send",
                                    properties={"session.timeout.ms": SESSION_TIMEOUT_S * 1000})
    mapper = eventrelay.run(map_config, role="map", name="eventrelay-map")
    sender = eventrelay.run(send_config, role="send", name="eventrelay-send")
    if not sender.ready(60):
        print("note: sender /readyz not 200 after 60 s, going on")
    assert mapper.alive() and sender.alive(), "eventrelay exited at start"

    lines = list(generate_events(N, seed=23))
    exp = eventrelay.map(map_config, lines, "events")
    n_req = exp.n_requests()
    kafka.produce(broker.bootstrap, "segment.events", lines)

    # Kill once a random share (20-60 %) of the requests has arrived: the stub's 20 ms per
    # request keeps 64 lanes under ~3 k requests/s, so this lands mid-delivery.
    kill_at = int(n_req * random.uniform(0.2, 0.6))
    print(f"SIGKILL after {kill_at} of {n_req} requests")
    poll(lambda: dest.count() >= kill_at, 120, interval=0.01)
    sender.kill()
    seen = dest.count()
    check(0 < seen < n_req, f"sender killed with SIGKILL mid-delivery: the stub had seen {seen} "
                            f"of {n_req} requests")

    # Restart once the killed member's session has expired. tansu 0.6.0 sometimes gives a member
    # that joined while the dead one was still in the group an empty assignment when the dead
    # one expires, and never rebalances again (seen once in three runs; a real broker does
    # not). The expiry is not observable from outside (tansu cannot describe groups), hence a
    # wait of the session timeout plus a margin.
    time.sleep(SESSION_TIMEOUT_S + 4)
    restarted = eventrelay.run(send_config, role="send", name="eventrelay-send-restarted")

    want = {d: {x["messageId"] for x in v} for d, v in exp.requests.items()}
    t0 = time.monotonic()
    succ = dest.wait_successes(want, 120)
    for d in sorted(want):
        missing = sorted(want[d] - set(succ[d]))
        dup = sum(n - 1 for k, n in succ[d].items() if k in want[d] and n > 1)
        check(not missing,
              f"{d}: {len(want[d]) - len(missing)} of {len(want[d])} expected requests delivered "
              f"at least once across the SIGKILL (missing {len(missing)} {missing[:5]}); "
              f"{dup} duplicate deliveries (after {time.monotonic() - t0:.1f}s)")

    check.exits_cleanly(restarted, "eventrelay (scenario 4, restarted sender)")
    check.exits_cleanly(mapper, "eventrelay (scenario 4, map)")
