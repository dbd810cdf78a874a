//! Replay and redrive on librdkafka's mock cluster: moving the map group back reproduces the
//! records; dead letters from a 400 are delivered after the stub is fixed and redrive runs.

mod common;

use common::*;
use eventrelay::app::Role;
use eventrelay::app::Running;
use eventrelay::ops::redrive::{self, RedriveArgs};
use eventrelay::ops::replay::{self, ReplayArgs, Target};
use eventrelay::testkit::stub::{Fault, Stub};
use std::time::{Duration, Instant};

/// Replay, retrying while the broker still counts the just-stopped members (session timeout).
async fn replay_after_stop(
    cfg: &eventrelay::config::Config,
    partitions: &'static [i32],
    target: Target,
) -> Vec<replay::PlanRow> {
    let started = Instant::now();
    loop {
        let c = cfg.clone();
        let r = tokio::task::spawn_blocking(move || {
            replay::run(
                &c,
                &ReplayArgs {
                    group: "eventrelay",
                    topic: "segment.events",
                    partitions,
                    target,
                    execute: true,
                    force: true,
                },
            )
        })
        .await
        .unwrap();
        match r {
            Ok(plan) => return plan,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("replay not yet possible: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("replay failed: {e:#}"),
        }
    }
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read(b: &str, topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    read_topic(
        b,
        topic,
        n,
        Duration::from_secs(20),
        Duration::from_secs(60),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_to_earliest_and_to_an_offset_reproduces_records() {
    let kafka = cluster();
    let b = kafka.bootstrap().to_string();
    let cfg = config(&b, "http://127.0.0.1:9", "", "");
    produce(&cfg, &b, "segment.events", &events(200, 10));
    let running = Running::start(&cfg, Role::Map).await.unwrap();
    let bb = b.clone();
    let first = tokio::task::spawn_blocking(move || read(&bb, "dest.seg", 200))
        .await
        .unwrap();
    assert_eq!(first.len(), 200);
    // While the group has a live member, replay refuses.
    let c2 = cfg.clone();
    let live = tokio::task::spawn_blocking(move || {
        replay::run(
            &c2,
            &ReplayArgs {
                group: "eventrelay",
                topic: "segment.events",
                partitions: &[],
                target: Target::Earliest,
                execute: true,
                force: false,
            },
        )
    })
    .await
    .unwrap();
    let err = live
        .expect_err("replay must refuse while the group is live")
        .to_string();
    assert!(err.contains("live member"), "{err}");
    running.shutdown(Duration::from_secs(30)).await.unwrap();

    let plan = replay_after_stop(&cfg, &[], Target::Earliest).await;
    assert!(plan.iter().all(|r| r.target == 0), "{plan:?}");
    let running = Running::start(&cfg, Role::Map).await.unwrap();
    let bb = b.clone();
    let again = tokio::task::spawn_blocking(move || read(&bb, "dest.seg", 400))
        .await
        .unwrap();
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    let counts = message_counts(&again);
    assert_eq!(counts.len(), 200);
    assert!(
        counts.values().all(|c| *c == 2),
        "each record reproduced once more"
    );

    // To an offset, on one partition only.
    let plan = replay_after_stop(&cfg, &[0], Target::Offset(5)).await;
    assert_eq!(plan.len(), 1);
    assert_eq!((plan[0].partition, plan[0].target), (0, 5));
    let high = plan[0].high;
    let running = Running::start(&cfg, Role::Map).await.unwrap();
    let bb = b.clone();
    let want = 400 + (high - 5) as usize;
    let third = tokio::task::spawn_blocking(move || read(&bb, "dest.seg", want))
        .await
        .unwrap();
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(third.len(), want, "partition 0 re-read from offset 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redrive_delivers_dead_letters_after_the_fix() {
    let kafka = cluster();
    let b = kafka.bootstrap().to_string();
    let stub = Stub::start("127.0.0.1:0", None).await.unwrap();
    let cfg = config(&b, &stub.url(), "", "");
    stub.inject(Fault {
        status: Some(400),
        path_prefix: Some("/j/".into()),
        ..Default::default()
    });
    let running = Running::start(&cfg, Role::All).await.unwrap();
    let lines: Vec<Vec<u8>> = (0..10)
        .map(|i| format!(r#"{{"type":"page","userId":"u{i}","messageId":"rd-{i}"}}"#).into_bytes())
        .collect();
    produce(&cfg, &b, "segment.events", &lines);
    let bb = b.clone();
    let dlq = tokio::task::spawn_blocking(move || read(&bb, "dest.owneriq.dlq", 10))
        .await
        .unwrap();
    assert_eq!(dlq.len(), 10);
    stub.clear_faults();
    let args = |execute| RedriveArgs {
        from: "dest.owneriq.dlq",
        reason: Some("http_400"),
        since_ms: None,
        limit: None,
        from_beginning: false,
        execute,
    };
    let c2 = cfg.clone();
    let dry = tokio::task::spawn_blocking(move || redrive::run(&c2, &args(false)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dry, 10);
    let c2 = cfg.clone();
    let copied = tokio::task::spawn_blocking(move || redrive::run(&c2, &args(true)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copied, 10);
    let delivered = || {
        stub.requests()
            .iter()
            .filter(|r| r.status == 200 && r.url.contains("/j/"))
            .count()
    };
    wait_for("redriven deliveries", Duration::from_secs(60), || {
        delivered() >= 10
    })
    .await;
    let c2 = cfg.clone();
    let again = tokio::task::spawn_blocking(move || redrive::run(&c2, &args(true)))
        .await
        .unwrap()
        .unwrap();
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(again, 0, "a second redrive copies nothing twice");
    assert_eq!(delivered(), 10);
}
