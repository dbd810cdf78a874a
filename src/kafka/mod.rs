//! Kafka plumbing shared by the stages: client presets, topics, the embedded cluster, the
//! offset tracker, the one stage consumer both stages run, and the `eventrelay.*` headers.

mod consumer;
mod embedded;
pub mod headers;
mod tracker;

pub use consumer::{ConsumerSpec, GroupObserver, Intake, StageConsumer, Transactional};
pub use embedded::Embedded;
pub use tracker::{Progress, Slot};

use crate::config::{Config, KafkaConfig};
use anyhow::{anyhow, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

/// Base client config: bootstrap servers plus the user's `[kafka.properties]`.
pub fn client_config(kafka: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    with_properties(ClientConfig::new(), kafka, bootstrap, &[])
}

/// Config for the stages' group consumers: [`client_config`] with `fetch.wait.max.ms` from
/// `kafka.fetch_wait_max_ms` (under the user's `[kafka.properties]`). librdkafka's mock
/// cluster computes an empty fetch answer at once and then holds it for the whole wait
/// (`rdkafka_mock_handlers.c`), which with librdkafka's default 500 ms put half a second of
/// latency on every record of the embedded demo.
pub fn consumer_config(kafka: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let wait = kafka
        .fetch_wait_max_ms
        .unwrap_or(if kafka.bootstrap_servers.is_none() {
            10
        } else {
            100
        });
    let mut c = ClientConfig::new();
    c.set("fetch.wait.max.ms", wait.to_string());
    with_properties(c, kafka, bootstrap, PRODUCER_ONLY)
}

/// The one preset every stage consumer uses: [`consumer_config`] in consumer group `group`,
/// offsets committed only by the stage (never automatically), reading committed data only,
/// lag statistics every 5 s, and static membership when `kafka.instance_id` is set.
///
/// `member` names this consumer inside the process (`map`, `send.seg`, `send.seg.retry.1m`), so
/// each of the process's consumer groups gets its own `group.instance.id`
/// (`<instance_id>.<member>`): a restarted process with the same id takes its partitions back
/// at once instead of after the session timeout.
pub fn group_consumer_config(
    kafka: &KafkaConfig,
    bootstrap: &str,
    group: &str,
    member: &str,
) -> ClientConfig {
    let mut c = consumer_config(kafka, bootstrap);
    // Tunables the user may override in [kafka.properties] …
    for (k, v) in [
        ("auto.offset.reset", "earliest"),
        ("isolation.level", "read_committed"),
        ("statistics.interval.ms", "5000"),
        // When the prefetch queue is full (`queued.max.messages.kbytes`), librdkafka waits
        // this long before fetching again; its default, 1 s, left the send stage's lanes idle
        // for most of every second once its 16 MB prefetch filled (38 k records/s with no
        // HTTP at all, 329 k/s with the prefetch never full). 10 ms costs a wake-up, not a
        // fetch, per partition while full.
        ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
    ] {
        if !kafka.properties.contains_key(k) {
            c.set(k, v);
        }
    }
    if let Some(id) = kafka.instance_id.as_deref().filter(|s| !s.is_empty()) {
        c.set("group.instance.id", format!("{id}.{member}"));
    }
    // … and what the offset tracking depends on, which they may not.
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    c
}

/// See the comment where [`group_consumer_config`] sets `fetch.queue.backoff.ms`.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// The one producer preset of the stages: idempotent, acknowledged by every in-sync replica,
/// short linger. `[kafka.properties]` may tune batching and compression (`linger.ms`,
/// `batch.num.messages`, `compression.type = "lz4"`), never the delivery guarantees.
pub fn producer_config(kafka: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("linger.ms", "5");
    let mut c = with_properties(c, kafka, bootstrap, CONSUMER_ONLY);
    c.set("enable.idempotence", "true").set("acks", "all");
    c
}

/// `bootstrap.servers`, `client.id` and the user's `[kafka.properties]` except the keys of
/// `skip` (those of the other kind of client).
fn with_properties(
    mut c: ClientConfig,
    kafka: &KafkaConfig,
    bootstrap: &str,
    skip: &[&str],
) -> ClientConfig {
    c.set("bootstrap.servers", bootstrap);
    c.set("client.id", "eventrelay");
    for (k, v) in &kafka.properties {
        if !skip.contains(&k.as_str()) {
            c.set(k, v);
        }
    }
    c
}

/// librdkafka's consumer-only properties (the `C` rows of its CONFIGURATION.md, 2.12). One
/// `[kafka.properties]` table serves every client, and a producer given one of these logs a
/// CONFWARN at start that an operator would chase; producers are not given them.
const CONSUMER_ONLY: &[&str] = &[
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    "check.crcs",
    "consume.callback.max.messages",
    "coordinator.query.interval.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "fetch.error.backoff.ms",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "fetch.min.bytes",
    "fetch.queue.backoff.ms",
    "fetch.wait.max.ms",
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.protocol.type",
    "group.remote.assignor",
    "heartbeat.interval.ms",
    "isolation.level",
    "max.partition.fetch.bytes",
    "max.poll.interval.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "partition.assignment.strategy",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "session.timeout.ms",
];

/// librdkafka's producer-only properties (the `P` rows): the stages' consumers are not given
/// them, for the same reason as [`CONSUMER_ONLY`].
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "batch.num.messages",
    "batch.size",
    "compression.codec",
    "compression.level",
    "compression.type",
    "delivery.report.only.error",
    "delivery.timeout.ms",
    "enable.gapless.guarantee",
    "enable.idempotence",
    "linger.ms",
    "message.send.max.retries",
    "message.timeout.ms",
    "queue.buffering.backpressure.threshold",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "queuing.strategy",
    "request.required.acks",
    "request.timeout.ms",
    "retries",
    "sticky.partitioning.linger.ms",
    "transaction.timeout.ms",
    "transactional.id",
];

/// One id per process for what must not be shared between two live processes (transactional
/// ids): `kafka.instance_id` when set (stable across restarts, so a restarted instance fences
/// its predecessor at once), else random.
pub fn process_id(kafka: &KafkaConfig) -> String {
    kafka
        .instance_id
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()))
}

/// Every topic the configuration uses: input, input DLQ, and per destination its topic,
/// retry topic and DLQ.
pub fn all_topics(cfg: &Config) -> Result<Vec<String>> {
    let k = &cfg.kafka;
    let mut topics = vec![k.input_topic.clone(), k.input_dlq_topic.clone()];
    for d in cfg.destinations()? {
        let n = d.dest.name();
        topics.push(k.destination_topic(n));
        for tier in &d.delivery.retry_tiers {
            topics.push(k.retry_topic(n, *tier));
        }
        topics.push(k.dlq_topic(n));
    }
    Ok(topics)
}

/// Create missing topics with the admin API (tansu and real Kafka; the mock cluster has none
/// and is handled by [`Embedded`]). Existing topics are left as they are.
pub async fn ensure_topics(kafka: &KafkaConfig, bootstrap: &str, topics: &[String]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, bootstrap)
        .create()
        .context("creating Kafka admin client")?;
    let existing = |admin: &AdminClient<DefaultClientContext>| -> Result<Vec<String>> {
        let md = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(15))
            .with_context(|| format!("cannot reach Kafka at {bootstrap}"))?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.name().to_string())
            .collect())
    };
    let have = existing(&admin)?;
    let missing: Vec<&String> = topics.iter().filter(|t| !have.contains(t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                kafka.partitions,
                TopicReplication::Fixed(kafka.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(15)))
        .request_timeout(Some(Duration::from_secs(15)));
    match admin.create_topics(&new, &opts).await {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(t) => {
                        tracing::info!(topic = %t, partitions = kafka.partitions, "created topic")
                    }
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((t, e)) => tracing::warn!(topic = %t, error = %e, "could not create topic"),
                }
            }
        }
        // Brokers without the admin API (librdkafka's mock cluster) may still auto-create.
        Err(e) => tracing::warn!(error = %e, "cannot create topics"),
    }
    let have = existing(&admin)?;
    match topics.iter().find(|t| !have.contains(t)) {
        Some(t) => Err(anyhow!("topic {t} does not exist and could not be created")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_client_gets_only_its_kind_of_property() {
        let cfg = crate::config::Config::from_toml(
            "[kafka]\nbootstrap_servers = \"b:9092\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"compression.type\" = \"lz4\"\n\"socket.keepalive.enable\" = \"true\"\n",
        )
        .expect("config");
        let p = producer_config(&cfg.kafka, "b:9092");
        assert_eq!(p.get("compression.type"), Some("lz4"));
        assert_eq!(p.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(p.get("session.timeout.ms"), None, "consumer-only");
        let c = group_consumer_config(&cfg.kafka, "b:9092", "g", "map");
        assert_eq!(c.get("session.timeout.ms"), Some("6000"));
        assert_eq!(c.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(c.get("compression.type"), None, "producer-only");
        let any = client_config(&cfg.kafka, "b:9092");
        assert_eq!(
            any.get("session.timeout.ms"),
            Some("6000"),
            "a plain client gets all"
        );
    }

    #[test]
    fn consumer_fetch_wait_defaults_by_broker_and_yields_to_properties() {
        let wait = |toml: &str| {
            let cfg = crate::config::Config::from_toml(toml).expect("config");
            consumer_config(&cfg.kafka, "127.0.0.1:1")
                .get("fetch.wait.max.ms")
                .map(str::to_string)
        };
        assert_eq!(wait(""), Some("10".into()), "embedded mock cluster");
        let real = "[kafka]\nbootstrap_servers = \"b:9092\"\n";
        assert_eq!(wait(real), Some("100".into()), "real broker");
        assert_eq!(
            wait(&format!("{real}fetch_wait_max_ms = 250\n")),
            Some("250".into())
        );
        assert_eq!(
            wait(&format!(
                "{real}fetch_wait_max_ms = 250\n[kafka.properties]\n\"fetch.wait.max.ms\" = \"7\"\n"
            )),
            Some("7".into()),
            "[kafka.properties] wins"
        );
    }

    #[test]
    fn static_membership_gets_a_suffix_per_consumer_and_offsets_stay_manual() {
        let cfg = crate::config::Config::from_toml(
            "[kafka]\nbootstrap_servers = \"b:9092\"\ninstance_id = \"er-0\"\n[kafka.properties]\n\"enable.auto.commit\" = \"true\"\n",
        )
        .expect("config");
        let c = group_consumer_config(&cfg.kafka, "b:9092", "g.send.seg", "send.seg");
        assert_eq!(c.get("group.instance.id"), Some("er-0.send.seg"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("group.id"), Some("g.send.seg"));
    }
}
