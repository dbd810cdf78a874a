//! Replay and redrive on librdkafka's mock cluster: moving the map group back reproduces the
//! records; dead letters from a 400 are delivered after the stub is fixed and redrive runs;
//! dead letters a redrive's filters skipped stay reachable by a later run; a copy the broker
//! refuses leaves progress uncommitted.

mod common;

use common::*;
use eventrelay::app::Role;
use eventrelay::app::Running;
use eventrelay::ops::redrive::{self, RedriveArgs};
use eventrelay::ops::replay::{self, ReplayArgs, Target};
use eventrelay::testkit::stub::{Fault, Stub};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, TopicPartitionList};
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
            Ok(report) => return report.partitions,
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
    assert_eq!(dry.copied, 10);
    assert!(!dry.execute);
    let c2 = cfg.clone();
    let copied = tokio::task::spawn_blocking(move || redrive::run(&c2, &args(true)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copied.copied, 10);
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
    assert_eq!(again.copied, 0, "a second redrive copies nothing twice");
    assert!(again.left.is_empty(), "nothing re-read: {again:?}");
    assert_eq!(delivered(), 10);
}

/// Write dead letters straight to `topic`, each `(partition, reason)` with the SPEC §4 headers
/// pointing back at `dest.seg`, and a key and value naming its index.
fn dead_letters(bootstrap: &str, topic: &str, letters: &[(i32, &str)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for (i, (partition, reason)) in letters.iter().enumerate() {
        let key = format!("dl-{i}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "eventrelay.error.reason",
                value: Some(*reason),
            })
            .insert(Header {
                key: "eventrelay.error.topic",
                value: Some("dest.seg"),
            });
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(*partition)
                    .key(&key)
                    .payload(&key)
                    .headers(headers),
            )
            .expect("queue dead letter");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Run redrive on `dest.seg.dlq` with these filters.
fn redrive_seg(
    cfg: &eventrelay::config::Config,
    reason: Option<&str>,
    limit: Option<usize>,
    from_beginning: bool,
    execute: bool,
) -> anyhow::Result<redrive::RedriveReport> {
    redrive::run(
        cfg,
        &RedriveArgs {
            from: "dest.seg.dlq",
            reason,
            since_ms: None,
            limit,
            from_beginning,
            execute,
        },
    )
}

/// Every copy on `dest.seg`, by key, read the way an outside consumer would.
fn copies(b: &str) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for m in read_topic(
        b,
        "dest.seg",
        usize::MAX,
        Duration::from_secs(3),
        Duration::from_secs(30),
    ) {
        use rdkafka::Message;
        let k = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        *out.entry(k).or_default() += 1;
    }
    out
}

/// The scenario of issue 11: after `redrive --reason http_400 --execute`, the permanent_error
/// dead letter between the http_400 ones is still found by `--reason permanent_error` (it was
/// 0 before, 1 only with `--from-beginning`); no dead letter is ever copied twice; `--limit`
/// leaves the rest for the next run.
#[test]
fn redrive_leaves_filtered_dead_letters_for_a_later_run() {
    let kafka = cluster();
    let b = kafka.bootstrap().to_string();
    let cfg = config(&b, "http://127.0.0.1:9", "", "");
    // Partition 0 holds the permanent_error between http_400s; partition 1 only http_400s.
    let mut letters = vec![(0, "http_400"); 4];
    letters.push((0, "permanent_error"));
    letters.extend([(0, "http_400"); 3]);
    letters.extend([(1, "http_400"); 3]);
    dead_letters(&b, "dest.seg.dlq", &letters);

    // --limit leaves the rest reachable.
    let first = redrive_seg(&cfg, Some("http_400"), Some(4), false, true).unwrap();
    assert_eq!(first.copied, 4);
    let rest = redrive_seg(&cfg, Some("http_400"), None, false, true).unwrap();
    assert_eq!(rest.copied, 6, "{rest:?}");
    assert_eq!(rest.left.get("other_reason"), Some(&1));

    let dry = redrive_seg(&cfg, Some("permanent_error"), None, false, false).unwrap();
    assert_eq!(
        dry.copied, 1,
        "the filtered dead letter is still reachable: {dry:?}"
    );
    assert_eq!(dry.rows[0].reason, "permanent_error");
    // Read from the permanent_error on: partition 1 and the offsets before it are done.
    assert_eq!(dry.left.get("already_copied"), Some(&3), "{dry:?}");
    let dry = redrive_seg(&cfg, Some("permanent_error"), None, true, false).unwrap();
    assert_eq!(dry.copied, 1);
    let all = redrive_seg(&cfg, None, None, false, false).unwrap();
    assert_eq!(all.copied, 1, "without --reason: only what was not copied");

    let done = redrive_seg(&cfg, Some("permanent_error"), None, false, true).unwrap();
    assert_eq!(done.copied, 1);
    let nothing = redrive_seg(&cfg, None, None, false, true).unwrap();
    assert_eq!(nothing.copied, 0, "{nothing:?}");

    let copied = copies(&b);
    assert_eq!(copied.len(), letters.len(), "{copied:?}");
    assert!(
        copied.values().all(|n| *n == 1),
        "each copied once: {copied:?}"
    );
    // The progress of partition 0 is one offset again: everything in it was copied.
    let json = serde_json::to_value(&done).unwrap();
    assert_eq!(json["rows"][0]["target_topic"], "dest.seg");
    assert_eq!(json["rows"][0]["records"], 1);
}

/// A copy the broker refuses is not recorded: the run fails, nothing is committed, and the next
/// run copies every dead letter. Uses librdkafka's mock cluster directly for its fault
/// injection (errors for Produce requests).
#[test]
fn redrive_commits_nothing_when_copies_are_not_acknowledged() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("dest.seg.dlq", 1, 1).unwrap();
    mock.create_topic("dest.seg", 1, 1).unwrap();
    let b = mock.bootstrap_servers();
    let cfg = config(&b, "http://127.0.0.1:9", "", "");
    dead_letters(&b, "dest.seg.dlq", &[(0, "http_400"); 5]);

    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 100],
    );
    let err = redrive_seg(&cfg, None, None, false, true)
        .expect_err("unacknowledged copies must fail the run")
        .to_string();
    assert!(err.contains("not acknowledged"), "{err}");
    mock.clear_request_errors(RDKafkaApiKey::Produce);

    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("group.id", "eventrelay.redrive.dest.seg.dlq")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("dest.seg.dlq", 0);
    let committed = group
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let e = committed.find_partition("dest.seg.dlq", 0).unwrap();
    assert_eq!(
        e.offset(),
        rdkafka::Offset::Invalid,
        "no progress committed: {e:?}"
    );

    let again = redrive_seg(&cfg, None, None, false, true).unwrap();
    assert_eq!(again.copied, 5);
    let committed = group
        .committed_offsets(
            {
                let mut t = TopicPartitionList::new();
                t.add_partition("dest.seg.dlq", 0);
                t
            },
            Duration::from_secs(10),
        )
        .unwrap();
    let e = committed.find_partition("dest.seg.dlq", 0).unwrap();
    assert_eq!(
        e.offset().to_raw(),
        Some(5),
        "progress after the acknowledged copies"
    );
    let copied = copies(&b);
    assert_eq!(copied.values().sum::<usize>(), 5, "{copied:?}");
}
