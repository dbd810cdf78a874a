//! `eventrelay status` on librdkafka's mock cluster: a map group left behind (its stage
//! stopped with input waiting) and a destination whose circuit is open (the stub answers 503)
//! both show up, in the report struct, its JSON form and its text; invalid input shows up in
//! the input DLQ by reason; an unreachable metrics endpoint is reported and the broker part
//! still printed.

mod common;

use common::*;
use eventrelay::app::{Role, Running};
use eventrelay::ops::status::{self, Circuit, StatusArgs, StatusReport};
use eventrelay::testkit::stub::{Fault, Stub};
use std::time::{Duration, Instant};

async fn status_of(cfg: &eventrelay::config::Config, args: StatusArgs) -> StatusReport {
    status::run(cfg, &args).await.expect("status")
}

fn group<'a>(r: &'a StatusReport, name: &str) -> &'a status::GroupStatus {
    r.groups
        .iter()
        .find(|g| g.group == name)
        .unwrap_or_else(|| panic!("group {name} in {:?}", r.groups))
}

fn dest<'a>(r: &'a StatusReport, name: &str) -> &'a status::DestinationStatus {
    r.destinations
        .iter()
        .find(|d| d.destination == name)
        .expect("destination")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_group_and_an_open_circuit_show_up() {
    let kafka = cluster();
    let b = kafka.bootstrap().to_string();
    let stub = Stub::start("127.0.0.1:0", None).await.unwrap();
    // Seg is down for the whole test; the circuit opens after 5 failures and stays open.
    stub.inject(Fault {
        status: Some(503),
        path_prefix: Some("/v1/".into()),
        ..Default::default()
    });
    let cfg = config(
        &b,
        &stub.url(),
        "",
        "backoff_min_ms = 100\nbackoff_max_ms = 500\nbreaker_failures = 5\nbreaker_open_ms = 120000\nbreaker_open_max_ms = 120000",
    );
    let mapper = Running::start(&cfg, Role::Map).await.unwrap();
    let sender = Running::start(&cfg, Role::Send).await.unwrap();
    let metrics = vec![
        sender.metrics_addr.to_string(),
        mapper.metrics_addr.to_string(),
    ];
    let mut lines = events(200, 20);
    lines.extend((0..8).map(|i| format!("not json {i}").into_bytes()));
    produce(&cfg, &b, "segment.events", &lines);

    // Wait until the map stage has committed everything and Seg's circuit is open.
    let quick = |metrics: &Vec<String>| StatusArgs {
        metrics: metrics.clone(),
        window: Duration::ZERO,
        scan_per_partition: 100,
    };
    let started = Instant::now();
    loop {
        let r = status_of(&cfg, quick(&metrics)).await;
        let map_done = group(&r, "eventrelay").lag == 0
            && group(&r, "eventrelay")
                .partitions
                .iter()
                .all(|p| p.committed.is_some() || p.log_end == 0);
        if map_done && dest(&r, "seg").circuit == Some(Circuit::Open) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "map stage done and Seg's circuit open within 60 s; last report:\n{}",
            r.to_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The map stage stops; input keeps arriving.
    mapper.shutdown(Duration::from_secs(30)).await.unwrap();
    produce(&cfg, &b, "segment.events", &events(50, 5));

    let r = status_of(
        &cfg,
        StatusArgs {
            metrics: vec![sender.metrics_addr.to_string()],
            window: Duration::from_secs(1),
            scan_per_partition: 1,
        },
    )
    .await;
    let text = r.to_text();
    let json = serde_json::to_value(&r).unwrap();
    // Seg's circuit must still be open when read; then the sender can go.
    sender.shutdown(Duration::from_secs(30)).await.unwrap();
    eprintln!("{text}");

    // The stopped map stage: exactly the input produced after it stopped is lag.
    let map = group(&r, "eventrelay");
    assert_eq!(map.topic, "segment.events");
    assert_eq!(map.lag, 50, "{text}");
    assert_eq!(map.partitions.len(), 4);
    assert!(text.contains("<- behind"), "{text}");

    // Seg: circuit open, nothing delivered, its records waiting as lag on dest.seg.
    let seg = dest(&r, "seg");
    assert_eq!(seg.circuit, Some(Circuit::Open), "{text}");
    assert_eq!(seg.window.map(|w| w.success), Some(0));
    assert!(
        seg.lag.unwrap_or(0) > 0,
        "Seg's records wait in dest.seg: {text}"
    );
    assert!(seg.last_success.is_none());
    assert!(r.window_secs.is_some_and(|w| w >= 1.0));
    let seg_send = group(&r, "eventrelay.send.seg");
    assert_eq!(seg_send.topic, "dest.seg");
    assert_eq!(seg_send.lag, seg.lag.unwrap());
    assert!(
        r.groups
            .iter()
            .any(|g| g.group == "eventrelay.send.seg.retry.500ms"
                && g.topic == "dest.seg.retry.500ms")
    );

    // OwnerIQ: delivered everything, circuit closed, a last success.
    let oiq = dest(&r, "owneriq");
    assert_eq!(oiq.circuit, Some(Circuit::Closed), "{text}");
    assert_eq!(oiq.lag, Some(0), "{text}");
    assert!(oiq.totals.is_some_and(|t| t.success >= 100), "{text}");
    assert!(oiq.last_success.is_some() && oiq.last_success_age_secs.is_some());

    // The 8 invalid lines: in the input DLQ as invalid_json; with 1 read per partition of 4,
    // some partition holds more than it read, so the counts say they are truncated.
    let dlq = r
        .dead_letters
        .iter()
        .find(|d| d.topic == "segment.events.dlq")
        .unwrap();
    assert_eq!(dlq.records, 8, "{text}");
    assert_eq!(dlq.redriven, 0);
    assert!(
        dlq.truncated && dlq.scanned < 8 && dlq.scanned >= 1,
        "{dlq:?}"
    );
    assert_eq!(
        dlq.by_reason.get("invalid_json").copied(),
        Some(dlq.scanned)
    );
    assert!(dlq.newest.is_some());
    assert!(r
        .dead_letters
        .iter()
        .any(|d| d.topic == "dest.seg.dlq" && d.records == 0));

    // The JSON document scripts read.
    let seg_json = json["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == "seg")
        .unwrap();
    assert_eq!(seg_json["circuit"], "open");
    assert_eq!(seg_json["window"]["success"], 0);
    let map_json = json["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "eventrelay")
        .unwrap();
    assert_eq!(map_json["lag"], 50);
    assert_eq!(map_json["partitions"].as_array().unwrap().len(), 4);
    assert!(json["endpoints"][0]["up"].as_bool().unwrap());
    assert_eq!(
        json["dead_letters"][0]["by_reason"]["invalid_json"],
        dlq.scanned
    );

    // Metrics unreachable (everything stopped): said so, and the broker part still there.
    let r = status_of(&cfg, quick(&vec!["127.0.0.1:9".to_string()])).await;
    assert!(!r.endpoints[0].up && r.endpoints[0].error.is_some());
    assert_eq!(dest(&r, "seg").circuit, None);
    assert_eq!(group(&r, "eventrelay").lag, 50);
    assert!(r.to_text().contains("UNREACHABLE"), "{}", r.to_text());
}
