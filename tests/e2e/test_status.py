"""`eventrelay status` on tansu (issue 13): map and send run as separate processes; Seg answers
503 until its circuit opens; then the map stage stops while input keeps arriving. `status
--output json` must show the map group's lag, Seg's open circuit with its records waiting as
lag on dest.seg, and OwnerIQ closed with a last success; the text form says which group is
behind."""

import json

from support.procs import poll
from support.records import generate_events

N = 200
LATE = 50


def status(eventrelay, config, *metrics):
    args = ["status", "--config", config.path, "--window-secs", "1", "--output", "json"]
    for m in metrics:
        args += ["--metrics", m]
    r = eventrelay.cmd("status", *args, timeout=60)
    assert r.rc == 0, f"eventrelay status exited {r.rc}: {r.error()}"
    # stdout and stderr share the log: the document is the line that opens with "{".
    lines = r.output.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("{"))
    doc, _ = json.JSONDecoder().raw_decode("\n".join(lines[start:]))
    return doc


def group(report, name):
    return next(g for g in report["groups"] if g["group"] == name)


def dest(report, name):
    return next(d for d in report["destinations"] if d["destination"] == name)


def test_status_shows_a_lagging_group_and_an_open_circuit(tansu, stub, eventrelay, kafka, check):
    broker = tansu(storage="sqlite")
    target = stub()
    breaker = "breaker_failures = 5\nbreaker_open_ms = 60000\nbreaker_open_max_ms = 60000\n"
    cfgs = {}
    for role in ("map", "send"):
        cfg = eventrelay.config(broker, target, group="eventrelay", name=role)
        # The last section is [destinations.seg]: the breaker settings land there.
        cfg.path.write_text(cfg.path.read_text() + breaker)
        cfgs[role] = cfg
    target.fault(status=503, rate=1.0, path_prefix="/v1/")
    mapper = eventrelay.run(cfgs["map"], role="map", name="map")
    sender = eventrelay.run(cfgs["send"], role="send", name="send")
    check(mapper.ready(60) and sender.ready(60), "map and send processes ready")
    kafka.produce(broker.bootstrap, "segment.events", list(generate_events(N, seed=13)))

    def opened():
        r = status(eventrelay, cfgs["send"])
        return dest(r, "seg")["circuit"] == "open" and group(r, "eventrelay")["lag"] == 0
    check(poll(opened, 90), "map stage caught up and Seg's circuit open within 90 s")

    mapper.stop()
    kafka.produce(broker.bootstrap, "segment.events", list(generate_events(LATE, seed=14)))
    # tansu's high watermarks can trail what is readable (SPEC §8): wait for them to show it.
    poll(lambda: group(status(eventrelay, cfgs["send"]), "eventrelay")["lag"] >= LATE, 30)
    r = status(eventrelay, cfgs["send"])
    text = eventrelay.cmd("status-text", "status", "--config", cfgs["send"].path,
                          "--window-secs", "0").output
    print(text)

    m = group(r, "eventrelay")
    check(m["topic"] == "segment.events" and m["lag"] == LATE,
          f"map group lag on segment.events = {m['lag']}, expected {LATE} (input after it stopped)")
    check("<- behind" in text, "the text form marks the lagging group as behind")
    seg = dest(r, "seg")
    check(seg["circuit"] == "open", f"Seg's circuit: {seg['circuit']}, expected open")
    check((seg["lag"] or 0) > 0, f"Seg's records wait as lag on dest.seg: {seg['lag']}")
    check((seg["window"] or {}).get("success", 0) == 0, "no Seg delivery in the window")
    oiq = dest(r, "owneriq")
    check(oiq["circuit"] == "closed" and oiq["last_success"] is not None,
          f"OwnerIQ closed with a last success: {oiq['circuit']}, {oiq['last_success']}")
    check(sender.alive(), "the send process is still running")
