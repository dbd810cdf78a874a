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
    map_cfg = eventrelay.config(broker, dest, group=group, name="map")
    send_cfg = eventrelay.config(broker, dest, group=group, name="send",
                                 properties=send_props or None)
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
    # resolve (the error ratio over the shipped 5m
    # window falls under 5 % once enough deliveries succeed) ---
    dest.clear_faults()
    # --- busy and healthy: valid, invalid, rejected, skipped events ---
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
    topic) while the map stage keeps filling dest.seg. A stopped map stage cannot be shown this
    way: consumer lag is reported by the consumer itself (librdkafka statistics), so a stage with
    no running process has no lag series at all, and only EventrelayInstanceDown tells."""
    t_start = time.monotonic()
    broker = tansu(storage="sqlite")
    dest = stub(record=False)
    dest.fault(status=503, rate=1.0, path_prefix="/v1/")
    map_cfg = eventrelay.config(broker, dest, group="e2e-stall", name="map")
    send_cfg = eventrelay.config(broker, dest, group="e2e-stall", name="send")
    send_cfg.path.write_text(send_cfg.path.read_text().replace(
        "[destinations.seg]\n", "[destinations.seg]\nbreaker_failures = 1\n"))
    mapper = eventrelay.run(map_cfg, role="map", name="eventrelay-map")
    sender = eventrelay.run(send_cfg, role="send", name="eventrelay-send")
    server = prometheus([("map", mapper), ("send", sender)])
    assert mapper.ready(60) and sender.ready(60), "eventrelay map/send not ready within 60 s"

    # EventrelayConsumerLagGrowing is not asserted: its 10,000-record threshold was not reached
    # in a short run on the 2-core machine (a slow OwnerIQ, one lane at 25 ms per request, with
    # 24,000 events peaked at 9,700 records of lag after 90 s: the map stage on tansu is the
    # bottleneck), and a send stage held by its circuit reports lag that stops growing (below).
    kafka.produce(broker.bootstrap, "segment.events", events(6000, 41, "s"))
    lag = 'sum by (topic) (max by (group, topic, partition) (eventrelay_consumer_lag{topic=~"dest.(seg|owneriq)"}))'
    got, secs = server.wait_firing("EventrelayNoProgress", 90, topic="dest.seg")
    check(got and all(a["labels"].get("group") == "e2e-stall.send.seg" for a in got),
          f'EventrelayNoProgress{{group="e2e-stall.send.seg",topic="dest.seg"}} fires with Seg '
          f'held by its open circuit (after {secs:.0f}s; lag {server.series(lag)}; '
          f'alerts: {server.describe_alerts()})')
    seg_lag = server.value('sum(max by (partition) (eventrelay_consumer_lag{topic="dest.seg"}))')
    print(f"note: lag reported on dest.seg, held by the open circuit: {seg_lag} (librdkafka's "
          f"consumer_lag comes from fetches, which a paused partition does not make)")
    check(server.firing("EventrelayCircuitOpen", destination="seg"),
          f'EventrelayCircuitOpen{{destination="seg"}} fires too ({server.describe_alerts()})')
    busy = [a for a in server.alerts("EventrelayNoProgress")
            if a["labels"].get("topic") != "dest.seg"]
    check(not busy, f"EventrelayNoProgress for no other topic (owneriq delivers, the map "
                    f"stage consumes): {server.describe_alerts()}")
    print(f"scenario took {time.monotonic() - t_start:.0f}s")
