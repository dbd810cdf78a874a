"""Operations seen live (issue 13): a real Prometheus (Debian's `prometheus`) scrapes map and send
running as separate processes on tansu, evaluating the shipped alert rules (only their `for:`
shortened, support/prom.py), and every check goes through its HTTP API.

test_destination_alerts_and_dashboard: Seg answers 503 until its circuit opens ->
EventrelayDeliveryErrorRate and EventrelayCircuitOpen fire for seg and only for it, and resolve
once Seg is back; OwnerIQ answers 400 to a tenth of its requests -> EventrelayDeadLetters for
owneriq; every query of the Grafana dashboard then evaluates and returns data; the sender
SIGKILLed -> EventrelayInstanceDown for it.

test_stalled_stage_alerts: the Seg send stage held by its open circuit while input keeps
arriving -> EventrelayNoProgress on dest.seg (and on no other topic).

test_stopped_map_stage_alerts: the map stage stopped while 12,000 events arrive -> the send
process, reading every group's committed lag from the brokers (eventrelay_group_lag), shows
the map group's lag, and EventrelayConsumerLagGrowing and EventrelayNoProgress fire for
segment.events; both resolve once the map stage runs again.
"""

import time

from support import prom
from support.records import generate_events

ALERT_WAIT = 60  # seconds for an alert to fire once its condition holds (for: 3 s, 1 s scrapes)


def rejected_events(n: int) -> list[bytes]:
    """Order Completed without an orderId: OwnerIQ rejects it (missing_order_id)."""
    return [(f'{{"type":"track","event":"Order Completed","userId":"u-rej-{i}",'
             f'"messageId":"rej-{i}","properties":{{"products":[{{"product_id":"p{i}",'
             f'"price":1.5,"quantity":1}}]}}}}').encode() for i in range(1, n + 1)]


def events(n: int, seed: int, prefix: str, **kw) -> list[bytes]:
    """generate_events with messageIds `<prefix>-<i>` (the de-duplication table would skip a
    messageId seen before)."""
    return [ln.replace(b'"messageId":"gen-', f'"messageId":"{prefix}-'.encode())
            for ln in generate_events(n, seed=seed, **kw)]


def start_stack(tansu, stub, eventrelay, prometheus, group, **send_props):
    broker = tansu(storage="sqlite")  # the retry topics' consumers seek back
    dest = stub(record=False)
    map_cfg = eventrelay.config(broker, dest, group=group, name="map", group_lag_secs=1)
    send_cfg = eventrelay.config(broker, dest, group=group, name="send",
                                 properties=send_props or None, group_lag_secs=1)
    mapper = eventrelay.run(map_cfg, role="map", name="eventrelay-map")
    sender = eventrelay.run(send_cfg, role="send", name="eventrelay-send")
    server = prometheus([("map", mapper), ("send", sender)])
    return broker, dest, mapper, sender, server


def test_destination_alerts_and_dashboard(tansu, stub, eventrelay, kafka, prometheus, check):
    t_start = time.monotonic()
    broker, dest, mapper, sender, server = start_stack(tansu, stub, eventrelay, prometheus,
                                                       "e2e-prom")
    assert mapper.ready(60) and sender.ready(60), "eventrelay map/send not ready within 60 s"
    up = server.wait(lambda: server.value('sum(up{job="eventrelay"})') == 2, 30)
    check(up, f'both targets scraped (up{{job="eventrelay"}}): {server.targets_up()}')

    # --- Seg degraded: 503 to half of its requests (2 in-place retries, so about 1 record in
    # 8 is handed to the retry topic; 20 failures in a row, which open the circuit, are rare) ---
    dest.fault(status=503, rate=0.5, path_prefix="/v1/")
    kafka.produce(broker.bootstrap, "segment.events", events(400, 32, "b"))
    got, secs = server.wait_firing("EventrelayDeliveryErrorRate", ALERT_WAIT, destination="seg")
    check(got, f'EventrelayDeliveryErrorRate{{destination="seg"}} fires with Seg answering 503 to '
               f'half of its requests (after {secs:.0f}s; alerts: {server.describe_alerts()})')

    # --- Seg down: 503 to everything, its circuit opens ---
    dest.fault(status=503, rate=1.0, path_prefix="/v1/")
    kafka.produce(broker.bootstrap, "segment.events", events(200, 33, "c"))
    got, secs = server.wait_firing("EventrelayCircuitOpen", ALERT_WAIT, destination="seg")
    check(got, f'EventrelayCircuitOpen{{destination="seg"}} fires with Seg answering 503 '
               f'(after {secs:.0f}s; alerts: {server.describe_alerts()})')
    other = [a for a in server.alerts() if a["labels"].get("destination") == "owneriq"]
    check(not other, f"no alert for owneriq while only Seg fails ({server.describe_alerts()})")

    # --- Seg back, and busy healthy traffic (valid, invalid, rejected, skipped events): both
    # resolve (the error ratio over the shipped 5m window falls under 5 % once enough
    # deliveries succeed) ---
    dest.clear_faults()
    lines = events(3000, 31, "a", invalid_every=50) + rejected_events(5)
    kafka.produce(broker.bootstrap, "segment.events", lines)
    ok = server.wait(lambda: (server.value('sum(eventrelay_deliveries_total{outcome="success"})')
                              or 0) >= 3000, 90)
    check(ok, "3,000 successful deliveries seen by Prometheus within 90 s")

    for name in ("EventrelayCircuitOpen", "EventrelayDeliveryErrorRate"):
        gone, secs = server.wait_resolved(name, 90, destination="seg")
        ratio = server.value('sum(rate(eventrelay_deliveries_total{destination="seg",'
                             'outcome=~"retry|dead_letter"}[5m])) / sum(rate('
                             'eventrelay_deliveries_total{destination="seg"}[5m]))')
        check(gone, f'{name}{{destination="seg"}} resolves once Seg answers again (after '
                    f'{secs:.0f}s; seg error ratio over 5m {ratio}; {server.describe_alerts()})')

    # --- OwnerIQ answers 400 to a tenth of its requests: dead letters ---
    dest.fault(status=400, rate=0.1, path_prefix="/j/")
    kafka.produce(broker.bootstrap, "segment.events", events(600, 35, "e"))
    got, secs = server.wait_firing("EventrelayDeadLetters", ALERT_WAIT, destination="owneriq")
    check(got, f'EventrelayDeadLetters{{destination="owneriq"}} fires with OwnerIQ answering 400 '
               f'to 10 % (after {secs:.0f}s; alerts: {server.describe_alerts()})')
    seg_dl = server.firing("EventrelayDeadLetters", destination="seg")
    check(not seg_dl, f"no EventrelayDeadLetters for seg ({server.describe_alerts()})")

    # --- every dashboard query, during the busy scenario ---
    check_dashboard(check, server)

    # --- the sender killed ---
    sender.kill()
    got, secs = server.wait_firing("EventrelayInstanceDown", ALERT_WAIT, role="send")
    check(got and all(a["labels"].get("instance") == sender.config.metrics for a in got),
          f'EventrelayInstanceDown{{role="send",instance="{sender.config.metrics}"}} fires after '
          f'SIGKILL (after {secs:.0f}s; alerts: {server.describe_alerts()})')
    check(not server.firing("EventrelayInstanceDown", role="map"),
          "no EventrelayInstanceDown for the map instance")
    print(f"scenario took {time.monotonic() - t_start:.0f}s")


def check_dashboard(check, server):
    """Every target of every panel, with $destination = All (.*) and each destination value,
    $__rate_interval = 1m: no query error; with All, a finite value and the labels the legend
    names."""
    variables = prom.dashboard_variables()
    dest_var = next(v for v in variables if v["name"] == "destination")
    values = server._api("label/destination/values",
                         **{"match[]": "eventrelay_deliveries_total"})
    check(set(values) >= {"seg", "owneriq"},
          f"the $destination variable's query "
          f"({dest_var['definition']}) offers seg and owneriq: {values}")
    for panel in prom.dashboard_panels():
        for t in panel["targets"]:
            label = f'panel "{panel["title"]}" ({t.get("legendFormat") or t["expr"][:60]})'
            for choice in [dest_var.get("allValue") or ".*"] + values:
                expr = prom.substitute(t["expr"], {"destination": choice})
                try:
                    series = server.series(expr)
                except prom.QueryError as e:
                    check(False, f"{label} with $destination={choice}: query error {e}")
                    continue
                if choice not in values:  # All: must show something
                    missing = prom.legend_labels(t.get("legendFormat")) - set().union(
                        *(s["metric"] for s in series)) if series else set()
                    check(prom.has_value(series) and not missing,
                          f"{label}: {len(series)} series with a value"
                          + (f", legend labels missing: {sorted(missing)}" if missing else "")
                          + f" — {expr}")


def test_stalled_stage_alerts(tansu, stub, eventrelay, kafka, prometheus, check):
    """Seg down from the start with `breaker_failures = 1`: its circuit opens at the first
    failure, so its send stage holds every record (nothing delivered, nothing handed to the retry
    topic) while the map stage keeps filling dest.seg."""
    t_start = time.monotonic()
    broker = tansu(storage="sqlite")
    dest = stub(record=False)
    dest.fault(status=503, rate=1.0, path_prefix="/v1/")
    map_cfg = eventrelay.config(broker, dest, group="e2e-stall", name="map", group_lag_secs=1)
    send_cfg = eventrelay.config(broker, dest, group="e2e-stall", name="send", group_lag_secs=1)
    send_cfg.path.write_text(send_cfg.path.read_text().replace(
        "[destinations.seg]\n", "[destinations.seg]\nbreaker_failures = 1\n"))
    mapper = eventrelay.run(map_cfg, role="map", name="eventrelay-map")
    sender = eventrelay.run(send_cfg, role="send", name="eventrelay-send")
    server = prometheus([("map", mapper), ("send", sender)])
    assert mapper.ready(60) and sender.ready(60), "eventrelay map/send not ready within 60 s"

    # EventrelayConsumerLagGrowing (over 10,000 records) is asserted on the map group, stopped,
    # in test_stopped_map_stage_alerts: here the map stage is what fills dest.seg, a few
    # thousand records a second on tansu.
    kafka.produce(broker.bootstrap, "segment.events", events(6000, 41, "s"))
    lag = 'max by (group, topic) (eventrelay_group_lag{topic=~"dest.(seg|owneriq)"})'
    got, secs = server.wait_firing("EventrelayNoProgress", 90, topic="dest.seg")
    check(got and all(a["labels"].get("group") == "e2e-stall.send.seg" for a in got),
          f'EventrelayNoProgress{{group="e2e-stall.send.seg",topic="dest.seg"}} fires with Seg '
          f'held by its open circuit (after {secs:.0f}s; lag {server.series(lag)}; '
          f'alerts: {server.describe_alerts()})')
    seg_lag = server.value('max(eventrelay_group_lag{topic="dest.seg"})')
    client_lag = server.value('sum(max by (partition) (eventrelay_consumer_lag{topic="dest.seg"}))')
    check((seg_lag or 0) > 0, f"eventrelay_group_lag on dest.seg, held by the open circuit, "
                              f"shows the waiting records: {seg_lag} (librdkafka's per-partition "
                              f"consumer_lag, from fetches a paused partition does not make: "
                              f"{client_lag})")
    # The circuit opened at the first failure; its alert may still be pending (its own `for:`).
    got, secs = server.wait_firing("EventrelayCircuitOpen", ALERT_WAIT, destination="seg")
    check(got, f'EventrelayCircuitOpen{{destination="seg"}} fires too (after {secs:.0f}s more; '
               f'{server.describe_alerts()})')
    busy = [a for a in server.alerts("EventrelayNoProgress")
            if a["labels"].get("topic") != "dest.seg"]
    check(not busy, f"EventrelayNoProgress for no other topic (owneriq delivers, the map "
                    f"stage consumes): {server.describe_alerts()}")
    print(f"scenario took {time.monotonic() - t_start:.0f}s")


def test_stopped_map_stage_alerts(tansu, stub, eventrelay, kafka, prometheus, check):
    """The map stage stopped (SIGTERM) before any input arrives, then 2 x 6,000 events: the map
    process exports nothing any more, but the send process reads the map group's committed lag
    from the brokers. Both lag alerts fire for the map group, and resolve once it runs again."""
    t_start = time.monotonic()
    broker, dest, mapper, sender, server = start_stack(tansu, stub, eventrelay, prometheus,
                                                       "e2e-stop")
    assert mapper.ready(60) and sender.ready(60), "eventrelay map/send not ready within 60 s"
    rc, _ = mapper.stop()
    check(rc == 0, f"the map stage stops cleanly on SIGTERM (exit {rc})")

    map_lag = 'max(eventrelay_group_lag{group="e2e-stop",topic="segment.events"})'
    kafka.produce(broker.bootstrap, "segment.events", events(6000, 51, "m"))
    seen = server.wait(lambda: (server.value(map_lag) or 0) >= 6000, 60)
    check(seen, f"the send process reports the stopped map group's lag: {server.value(map_lag)}")
    kafka.produce(broker.bootstrap, "segment.events", events(6000, 52, "n"))
    for name in ("EventrelayConsumerLagGrowing", "EventrelayNoProgress"):
        got, secs = server.wait_firing(name, ALERT_WAIT, topic="segment.events")
        check(got and all(a["labels"].get("group") == "e2e-stop" for a in got),
              f'{name}{{group="e2e-stop",topic="segment.events"}} fires with the map stage '
              f'stopped (after {secs:.0f}s; lag {server.value(map_lag)}; '
              f'alerts: {server.describe_alerts()})')
    others = [a for a in server.alerts("EventrelayNoProgress")
              if a["labels"].get("topic") != "segment.events"]
    check(not others, f"EventrelayNoProgress for no other topic: {server.describe_alerts()}")

    eventrelay.run(mapper.config, role="map", name="eventrelay-map-again")
    for name in ("EventrelayConsumerLagGrowing", "EventrelayNoProgress"):
        gone, secs = server.wait_resolved(name, 120, topic="segment.events")
        check(gone, f"{name} resolves once the map stage runs again (after {secs:.0f}s; lag "
                    f"{server.value(map_lag)}; {server.describe_alerts()})")
    print(f"scenario took {time.monotonic() - t_start:.0f}s")
