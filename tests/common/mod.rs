//! Shared helpers for the Kafka integration tests: an embedded cluster, configs, producing
//! input, and reading topics back the way an outside consumer would.
#![allow(dead_code)]

use eventrelay::config::Config;
use eventrelay::record::Record;
use eventrelay::{testkit::produce_lines, Embedded};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub const WEBSITE_ID: &str = "abc8fb18-7559-4324-9921-a4b5015b4a1c";

/// Every topic a config with both destinations uses.
pub fn topics() -> Vec<String> {
    [
        "segment.events",
        "segment.events.dlq",
        "dest.owneriq",
        "dest.owneriq.retry.500ms",
        "dest.owneriq.retry.2s",
        "dest.owneriq.dlq",
        "dest.seg",
        "dest.seg.retry.500ms",
        "dest.seg.retry.2s",
        "dest.seg.dlq",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// An embedded cluster with all topics, 4 partitions each.
pub fn cluster() -> Embedded {
    Embedded::start(&topics(), 4).expect("embedded kafka")
}

/// Config TOML for a broker and destination endpoint, plus extra TOML appended.
pub fn config_toml(bootstrap: &str, endpoint: &str, extra_kafka: &str, extra: &str) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
{extra_kafka}
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
[metrics]
listen = "127.0.0.1:0"
[destinations.owneriq]
endpoint = "{endpoint}"
data_group_id = "9nfdft"
analytics_tag_id = "gcb8"
dct_tag_id = "6qg2"
retry_tier_ms = [500, 2000]
{extra}
[destinations.seg]
endpoint = "{endpoint}"
website_id = "{WEBSITE_ID}"
retry_tier_ms = [500, 2000]
{extra}
"#
    )
}

pub fn config(bootstrap: &str, endpoint: &str, extra_kafka: &str, extra: &str) -> Config {
    Config::from_toml(&config_toml(bootstrap, endpoint, extra_kafka, extra)).expect("config")
}

/// `n` events over `users` users: pages and Viewed Product tracks (both go to Seg; pages also
/// to OwnerIQ), each with a per-user sequence number in `properties.seq`.
pub fn events(n: usize, users: usize) -> Vec<Vec<u8>> {
    let mut seq = vec![0u64; users];
    (0..n)
        .map(|i| {
            let u = (i * 7919) % users;
            seq[u] += 1;
            let (kind, event) = if i % 2 == 0 { ("page", Value::Null) } else { ("track", json!("Viewed Product")) };
            json!({"type": kind, "event": event, "userId": format!("user-{u}"), "messageId": format!("m-{i}"),
                "timestamp": "2026-11-20T10:00:00Z", "context": {"traits": {"email": format!("u{u}@example.com")}},
                "properties": {"seq": seq[u], "url": "https://shop.example.com/", "title": "Shop"}})
            .to_string()
            .into_bytes()
        })
        .collect()
}

pub fn produce(cfg: &Config, bootstrap: &str, topic: &str, lines: &[Vec<u8>]) {
    let n = produce_lines(
        &cfg.kafka,
        bootstrap,
        topic,
        lines.iter().map(Vec::as_slice),
    )
    .expect("produce");
    assert_eq!(n, lines.len());
}

/// Read a topic from the beginning (all partitions, no group commits) until `expect` records
/// were read or nothing new came for `idle`, at most `timeout`.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    expect: usize,
    idle: Duration,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    read_until(bootstrap, topic, |m| m.len() >= expect, idle, timeout)
}

/// Read a topic from the beginning until `done(read so far)`, or nothing new came for `idle`,
/// at most `timeout`.
pub fn read_until(
    bootstrap: &str,
    topic: &str,
    done: impl Fn(&[OwnedMessage]) -> bool,
    idle: Duration,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let mut last = Instant::now();
    let mut out = Vec::new();
    let mut checked = usize::MAX;
    while started.elapsed() < timeout && last.elapsed() < idle {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
            last = Instant::now();
            continue;
        }
        // Between batches only: the predicate may be costly.
        if out.len() != checked {
            checked = out.len();
            if done(&out) {
                break;
            }
        }
    }
    out
}

/// True when every `m-<i>` for `i < n` has been read (duplicates allowed).
pub fn all_ids(n: usize) -> impl Fn(&[OwnedMessage]) -> bool {
    move |msgs| message_counts(msgs).len() >= n
}

pub fn decode(m: &OwnedMessage) -> Record {
    Record::decode(m.payload().expect("payload")).expect("record")
}

pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    let h = m.headers()?;
    (0..h.count())
        .map(|i| h.get(i))
        .find(|hd| hd.key == name)
        .and_then(|hd| hd.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// messageId → how many times it was seen.
pub fn message_counts(msgs: &[OwnedMessage]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for m in msgs {
        *c.entry(decode(m).message_id).or_insert(0) += 1;
    }
    c
}
