"""Chaos 2 and 3: Seg down for a while, then back, while input keeps arriving (OwnerIQ, on a
stub of its own, stays healthy); map and send run as separate processes.

Modes of the outage (the Seg stub's `POST /faults`):
- `refused`: `down_secs` — the stub closes its listener, connections are refused;
- `503`:     `status 503, for_secs` — up, answering 503 (the destination's own count of the
             requests it got, which a refused connection cannot give);
- `hang`:    `latency_ms` of an hour for `for_secs` — connections accepted, never answered
             (eventrelay's 10 s request timeout is what ends each attempt).

Checks: every Seg and OwnerIQ request delivered at least once once it is back; after the
circuit opened, at most 1 request per second reached Seg; the send process's RSS in the second
half of the outage at most 32 MB over the first half (flat: lag grows on the broker, not in
memory). Figures: the failed attempts (eventrelay's `eventrelay_delivery_attempts_total` for
Seg by non-2xx status: connect errors, 503s, timeouts) in all and after the circuit opened
(in `hang` mode shifted by the 10 s request timeout, since an attempt is counted when it ends), the stub's own 503 count in `503` mode, the maximum RSS, and how long after
Seg came back everything was delivered."""

import time

import pytest

from support.chaos import (Feeder, RssSampler, StubFile, chaos_config, metric, report_delivery,
                           scales, want_of)
from support.expect import Metrics
from support.procs import http, poll
from support.records import generate_events

GROUP = "chaos-outage"
HANG_MS = 3_600_000
TIMEOUT_S = 10.0  # destinations.<d>.timeout_ms default


def _failed_attempts(send) -> float:
    text = http("GET", f"http://{send.config.metrics}/metrics", timeout=5)
    return sum(v for n, lab, v in Metrics(text).samples
               if n == "eventrelay_delivery_attempts_total" and lab.get("destination") == "seg"
               and not lab.get("status", "").startswith("2"))


def _start_outage(seg_stub, mode: str, secs: float) -> None:
    if mode == "refused":
        seg_stub.fault(down_secs=secs)
    elif mode == "503":
        seg_stub.fault(status=503, for_secs=secs)
    elif mode == "hang":
        seg_stub.fault(latency_ms=HANG_MS, for_secs=secs)
    else:
        raise ValueError(mode)


@pytest.mark.parametrize("mode", ["refused", "503", "hang"])
@pytest.mark.parametrize("scale", scales(
    short=dict(outage={"refused": 15, "503": 15, "hang": 25}, rate=100, warm=4,
               deliver_secs=180),
    long=dict(outage={"refused": 600, "503": 600, "hang": 600}, rate=50, warm=10,
              deliver_secs=600)))
def test_destination_outage_loses_nothing(scale, mode, tansu, stub, eventrelay, kafka, check):
    outage = scale.outage[mode]
    broker = tansu(storage="sqlite")
    stubs = {"owneriq": stub(name="oiq", record=True), "seg": stub(name="seg", record=True)}
    configs = {role: chaos_config(eventrelay, broker, stubs, GROUP, name=role,
                                  instance_id=f"outage-{role}") for role in ("map", "send")}
    mapper = eventrelay.run(configs["map"], role="map", name="map")
    sender = eventrelay.run(configs["send"], role="send", name="send")
    for p in (mapper, sender):
        assert p.ready(60), f"{p.name} not ready in 60 s"
    rss = RssSampler(sender.pid)
    rss.start()

    lines = list(generate_events(int(scale.rate * (scale.warm + outage)), seed=43))
    exp = eventrelay.map(configs["map"], lines, "events")
    want = want_of(exp)
    seg_file = StubFile(eventrelay.work / "seg.ndjson")
    oiq_file = StubFile(eventrelay.work / "oiq.ndjson")
    feeder = Feeder(kafka, broker.bootstrap, lines, scale.rate)
    feeder.start()
    assert poll(lambda: seg_file.update().succ["seg"], 60), "no Seg delivery before the outage"
    time.sleep(scale.warm)  # healthy traffic before the outage: nothing to poll for

    oiq_before = len(oiq_file.update().succ["owneriq"])
    t_down, t_down_ms = time.monotonic(), int(time.time() * 1000)
    _start_outage(stubs["seg"], mode, outage)
    t_back = t_down + outage
    # Attempts are counted when they end; a hanging one ends at the request timeout, so in
    # `hang` mode the attempts started in [open, back] are those ending `shift` s later.
    shift = TIMEOUT_S if mode == "hang" else 0.0
    seen = {"t_open": None, "at_open": None, "at_back": None, "states": set()}

    def watch(until: float) -> None:
        while (now := time.monotonic()) < until:
            state = metric(sender, "eventrelay_circuit_state", destination="seg")
            seen["states"].add(state)
            if state == 2 and seen["t_open"] is None:
                seen["t_open"] = now
            if seen["t_open"] and seen["at_open"] is None and now >= seen["t_open"] + shift:
                seen["at_open"] = _failed_attempts(sender)
            if seen["at_back"] is None and now >= t_back + shift:
                seen["at_back"] = _failed_attempts(sender)
            time.sleep(0.25)

    watch(t_back)  # the outage itself
    t_back_ms = t_down_ms + int(outage * 1000)
    oiq_during = len(oiq_file.update().succ["owneriq"]) - oiq_before
    watch(t_back + shift + 0.5)
    t_open, failed_at_open, states = seen["t_open"], seen["at_open"], seen["states"]

    recovered = seg_file.wait_all({"seg": want["seg"]}, scale.deliver_secs)
    # From the stub's arrival times: the wait above may start after the work was done.
    t_all = max(0, seg_file.last_first_ok_ms({"seg": want["seg"]}) - t_back_ms) / 1000
    oiq_file.wait_all({"owneriq": want["owneriq"]}, 60)
    check(feeder.done.is_set() and feeder.failed == 0, f"input: {feeder.summary()}")
    report_delivery(check, seg_file, {"seg": want["seg"]}, f"Seg {mode} {outage}s", t_all)
    report_delivery(check, oiq_file, {"owneriq": want["owneriq"]},
                    f"OwnerIQ beside Seg {mode}", t_all)
    check(recovered, f"Seg {mode}: everything delivered {t_all:.1f}s after it came back")
    check(oiq_during > 0, f"OwnerIQ kept delivering during Seg's outage ({oiq_during} requests)")

    rss.stop.set()
    failed = _failed_attempts(sender)
    failed_in_window = (seen["at_back"] or failed) - (failed_at_open or 0)
    check(t_open is not None, f"Seg's circuit opened during the outage (states seen {states}, "
                              f"opened {((t_open or t_back) - t_down):.1f}s in)")
    after_open = failed_in_window / (t_back - t_open) if t_open else float("nan")
    check(t_open is not None and after_open <= 1.0,
          f"Seg {mode}: {after_open:.2f} failed attempts/s after the circuit opened "
          f"({failed_in_window:.0f} in {t_back - (t_open or t_down):.0f}s); "
          f"{failed:.0f} in the whole {outage}s outage ({failed / outage:.2f}/s), "
          f"{failed_at_open} before it opened")
    stub_503 = seg_file.between(t_down_ms, t_back_ms).get(503, 0)
    if mode == "503":
        print(f"the Seg stub answered {stub_503} requests with 503 during the outage "
              f"({stub_503 / outage:.2f}/s)")
    first = rss.max_between(t_down, t_down + outage / 2)
    second = rss.max_between(t_down + outage / 2, t_back)
    overall = max(mb for _, mb in rss.samples)
    check(second <= first + 32, f"send RSS flat during the outage: max {first:.0f} MB in the "
                                f"first half, {second:.0f} MB in the second")
    print(f"FIGURES outage {mode} {outage}s at {scale.rate} events/s: circuit open after "
          f"{((t_open or t_back) - t_down):.1f}s; failed attempts {failed:.0f} "
          f"({failed / outage:.2f}/s overall, {after_open:.2f}/s after open)"
          + (f"; stub 503s {stub_503}" if mode == "503" else "")
          + f"; send RSS max {overall:.0f} MB (outage halves {first:.0f}/{second:.0f}); "
          f"all delivered {t_all:.1f}s after back; OwnerIQ during outage {oiq_during}")
    check.exits_cleanly(sender, "eventrelay --role send")
    check.exits_cleanly(mapper, "eventrelay --role map")
