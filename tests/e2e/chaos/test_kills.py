"""Chaos 1: SIGKILLs at random moments of the map and the send process (`run --role map`,
`run --role send`, each with its own `kafka.instance_id`), alternating, while input keeps
arriving: every request `eventrelay map` prints for the input reaches the stub with a 2xx at
least once. Duplicates and each kill's recovery time are reported.

Recovery time of a kill: from the SIGKILL until the restarted process has its partitions
again (its log's `partitions assigned` line for the map group, or for both destinations' send
groups). The process is restarted at once, so this is start-up plus the static-membership
takeover; tansu cannot describe groups, so the log is the only place to see it."""

import random
import statistics
import time

import pytest

from support.procs import poll
from support.records import generate_events

from support.chaos import Feeder, StubFile, chaos_config, report_delivery, scales, want_of

GROUP = "chaos-kill"


def _assigned(proc, role) -> bool:
    """The process's log shows its main consumer groups got their partitions."""
    groups = [GROUP] if role == "map" else [f"{GROUP}.send.{d}" for d in ("owneriq", "seg")]
    text = proc.output()
    return all(f"partitions assigned group={g} partitions" in text for g in groups)


@pytest.mark.parametrize("scale", scales(
    short=dict(events=10_000, rate=300, kills=4, gap=(1.0, 3.0), deliver_secs=120),
    long=dict(events=100_000, rate=450, kills=20, gap=(1.0, 8.0), deliver_secs=600)))
def test_sigkills_of_map_and_send_lose_nothing(scale, tansu, stub, eventrelay, kafka, check):
    broker = tansu(storage="sqlite")
    dest = stub(name="stub", record=True)
    stubs = {"owneriq": dest, "seg": dest}
    configs = {role: chaos_config(eventrelay, broker, stubs, GROUP, name=role,
                                  instance_id=f"chaos-{role}") for role in ("map", "send")}
    live = {role: eventrelay.run(configs[role], role=role, name=f"{role}-0")
            for role in ("map", "send")}
    for role, p in live.items():
        assert p.ready(60), f"eventrelay --role {role} not ready in 60 s"

    lines = list(generate_events(scale.events, seed=41))
    exp = eventrelay.map(configs["map"], lines, "events")
    want = want_of(exp)
    feeder = Feeder(kafka, broker.bootstrap, lines, scale.rate)
    recorded = StubFile(eventrelay.work / "stub.ndjson")
    t_start = time.monotonic()
    feeder.start()

    rng = random.Random()
    recoveries = {"map": [], "send": []}
    for k in range(scale.kills):
        role = "map" if k % 2 == 0 else "send"
        time.sleep(rng.uniform(*scale.gap))  # a random moment: nothing to poll for
        delivered = sum(len(v) for v in recorded.update().succ.values())
        live[role].kill()
        t_kill = time.monotonic()
        live[role] = eventrelay.run(configs[role], role=role, name=f"{role}-{k + 1}")
        ok = poll(lambda: _assigned(live[role], role), 120, interval=0.1)
        rec = time.monotonic() - t_kill
        recoveries[role].append(rec)
        print(f"kill {k + 1}: {role} at {t_kill - t_start:.1f}s (fed {feeder.sent}, "
              f"{delivered} delivered so far); partitions back after {rec:.1f}s")
        check(ok, f"kill {k + 1} ({role}): the restarted process had its partitions within 120 s "
                  f"({rec:.1f}s)")

    fed_at_last_kill = feeder.sent
    check(poll(feeder.done.is_set, 600) and feeder.failed == 0, f"input: {feeder.summary()}")
    print(f"{fed_at_last_kill} of {scale.events} events fed at the last kill")
    t0 = time.monotonic()
    recorded.wait_all(want, scale.deliver_secs)
    dups = report_delivery(check, recorded, want, f"{scale.kills} SIGKILLs",
                           time.monotonic() - t0)
    total = sum(len(v) for v in want.values())
    rec_all = recoveries["map"] + recoveries["send"]
    print(f"FIGURES kills: {scale.kills} over {scale.events} events; duplicates "
          f"{sum(dups.values())} of {total} requests ({dups}); recovery s map "
          f"{[round(x, 1) for x in recoveries['map']]} send "
          f"{[round(x, 1) for x in recoveries['send']]}; median "
          f"{statistics.median(rec_all):.1f} max {max(rec_all):.1f}; run "
          f"{time.monotonic() - t_start:.0f}s")
    for role, p in live.items():
        check.exits_cleanly(p, f"eventrelay --role {role} (last restart)")
