"""Chaos 5: two instances (`run --role all`, `kafka.instance_id` a and b) in one group while
input keeps arriving; b is killed with SIGKILL and restarted every `period` seconds: every
request reaches the stub at least once (duplicates reported), and a keeps running."""

import random
import time

import pytest

from support.chaos import Feeder, StubFile, chaos_config, report_delivery, scales, want_of
from support.records import generate_events

GROUP = "chaos-pair"


@pytest.mark.parametrize("scale", scales(
    short=dict(period=12, cycles=2, rate=200, deliver_secs=180),
    long=dict(period=30, cycles=10, rate=200, deliver_secs=600)))
def test_instance_restarted_every_period_loses_nothing(scale, tansu, stub, eventrelay, kafka,
                                                       check):
    broker = tansu(storage="sqlite")
    dest = stub(name="stub", record=True)
    stubs = {"owneriq": dest, "seg": dest}
    configs = {i: chaos_config(eventrelay, broker, stubs, GROUP, name=f"instance-{i}",
                               instance_id=f"pair-{i}") for i in "ab"}
    a = eventrelay.run(configs["a"], role="all", name="a")
    b = eventrelay.run(configs["b"], role="all", name="b-0")
    for p in (a, b):
        assert p.ready(60), f"{p.name} not ready in 60 s"

    n = int(scale.rate * scale.period * (scale.cycles + 0.5))
    lines = list(generate_events(n, seed=53))
    want = want_of(eventrelay.map(configs["a"], lines, "events"))
    recorded = StubFile(eventrelay.work / "stub.ndjson")
    feeder = Feeder(kafka, broker.bootstrap, lines, scale.rate)
    feeder.start()
    t_start = time.monotonic()
    for c in range(scale.cycles):
        # Every `period` s, a little jitter so the kill lands at a different moment each time.
        time.sleep(max(0.0, t_start + (c + 1) * scale.period + random.uniform(-1, 1)
                       - time.monotonic()))
        b.kill()
        print(f"cycle {c + 1}: b killed at {time.monotonic() - t_start:.1f}s "
              f"({feeder.sent} of {n} fed)")
        b = eventrelay.run(configs["b"], role="all", name=f"b-{c + 1}")
    check(feeder.done.wait(600) and feeder.failed == 0, f"input: {feeder.summary()}")
    t0 = time.monotonic()
    recorded.wait_all(want, scale.deliver_secs)
    dups = report_delivery(check, recorded, want, f"b restarted {scale.cycles}x",
                           time.monotonic() - t0)
    print(f"FIGURES two instances: b SIGKILLed and restarted every {scale.period}s, "
          f"{scale.cycles} times, {n} events; duplicates {sum(dups.values())} ({dups})")
    check(a.alive(), "instance a kept running")
    check.exits_cleanly(b, "instance b (last restart)")
    check.exits_cleanly(a, "instance a")
