"""Chaos 4: the broker (tansu, sqlite storage) stopped with SIGTERM mid-run and started again
on the same storage and address, while input keeps arriving (the outside producer rides it
out) and `run --role all` keeps running: every request reaches the stub at least once, and
eventrelay delivers again afterwards. eventrelay's map stage exits (code 1) when a produce
fails for good, so that a restart re-reads from the last commit; the test restarts it as an
orchestrator would and says so.

Known blocker (tansu 0.6.0): a broker restarted on the same sqlite file panics on the first
produce of an idempotent producer that was connected before the restart ("more or less than
one row" in tansu_storage::lite idempotent_message_check); its storage task is gone and every
later request fails. eventrelay's producers are always idempotent, so the test is marked
xfail when that panic is in the restarted broker's log, and fails on anything else."""

import time

import pytest

from support.chaos import (Feeder, StubFile, chaos_config, report_delivery, restart_broker,
                           scales, want_of)
from support.procs import poll
from support.records import generate_events

GROUP = "chaos-broker"


@pytest.mark.parametrize("scale", scales(
    short=dict(events=4_000, rate=200, down=5, deliver_secs=180),
    long=dict(events=60_000, rate=200, down=60, deliver_secs=600)))
def test_broker_restart_loses_nothing(scale, tansu, stub, eventrelay, kafka, procs, check):
    broker = tansu(storage="sqlite")
    dest = stub(name="stub", record=True)
    config = chaos_config(eventrelay, broker, {"owneriq": dest, "seg": dest}, GROUP,
                          name="eventrelay", instance_id="broker-chaos")
    service = eventrelay.run(config, role="all", name="eventrelay")
    assert service.ready(60), "eventrelay not ready in 60 s"

    lines = list(generate_events(scale.events, seed=47))
    want = want_of(eventrelay.map(config, lines, "events"))
    recorded = StubFile(eventrelay.work / "stub.ndjson")
    feeder = Feeder(kafka, broker.bootstrap, lines, scale.rate)
    feeder.start()
    # Mid-run: a third of the input fed.
    assert poll(lambda: feeder.sent >= scale.events // 3, 120, interval=0.05)
    before = sum(len(v) for v in recorded.update().succ.values())
    t_stop = time.monotonic()
    up_secs = restart_broker(procs, broker, scale.down, "tansu-restarted")
    t_up = time.monotonic()
    print(f"broker stopped after {feeder.sent} of {scale.events} events fed ({before} "
          f"delivered); back after {t_up - t_stop:.1f}s (accepting {up_secs:.1f}s after start)")
    restarted_log = broker.proc.log
    if poll(lambda: "panicked at" in restarted_log.read_text(errors="replace"), 5):
        pytest.xfail("tansu 0.6.0 restarted on its sqlite storage panicked on an idempotent "
                     "producer's produce (tansu_storage lite.rs:503 'more or less than one row')")
    if not service.alive():
        print(f"eventrelay exited with {service.popen.returncode} while the broker was down "
              f"(a produce failed for good); restarting it as an orchestrator would")
        service = eventrelay.run(config, role="all", name="eventrelay-restarted")
    resumed = poll(lambda: sum(len(v) for v in recorded.update().succ.values()) > before + 100
                   or recorded.all_delivered(want), 180, interval=0.2)
    t_resumed = time.monotonic() - t_up
    check(resumed, f"deliveries resumed {t_resumed:.1f}s after the broker came back")

    check(poll(feeder.done.is_set, 600) and feeder.failed == 0, f"input: {feeder.summary()}")
    t0 = time.monotonic()
    recorded.wait_all(want, scale.deliver_secs)
    dups = report_delivery(check, recorded, want, f"broker down {scale.down}s",
                           time.monotonic() - t0)
    check(service.alive(), "eventrelay running after the broker restart")
    print(f"FIGURES broker restart: down {scale.down}s during {scale.events} events at "
          f"{scale.rate}/s; deliveries resumed {t_resumed:.1f}s after it was back; duplicates "
          f"{sum(dups.values())} ({dups})")
    check.exits_cleanly(service, "eventrelay --role all")
