//! Configuration: one TOML file, every key overridable from the environment.
//!
//! `EVENTRELAY_<SECTION>__<KEY>` overrides `[section] key` (nested sections join with `__`, e.g.
//! `EVENTRELAY_DESTINATIONS__SEG__WEBSITE_ID`). Unknown keys and bad values fail at start with a
//! message that names the key, so a typo never silently turns a destination off.

use crate::destinations::{ConfigError, Destination, REGISTRY};
use anyhow::{anyhow, bail, Context, Result};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[kafka]`.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// `[metrics]`.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[map]`: the map stage's worker pool.
    #[serde(default)]
    pub map: MapConfig,
    /// `[ingest]`: the Segment-compatible HTTP tracking API (off unless `listen` is set).
    #[serde(default)]
    pub ingest: IngestConfig,
    /// `[destinations.<name>]`: a destination with no section is off.
    #[serde(default)]
    pub destinations: BTreeMap<String, toml::Table>,
}

/// `[kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Broker list; absent means an embedded in-process cluster (librdkafka's mock).
    pub bootstrap_servers: Option<String>,
    /// Consumer group of the map stage; the send stage uses `<group_id>.send.<destination>`.
    pub group_id: String,
    /// Raw Segment events.
    pub input_topic: String,
    /// Invalid input and rejected events.
    pub input_dlq_topic: String,
    /// Destination topics are `<prefix><destination>` (`dest.owneriq`).
    pub destination_topic_prefix: String,
    /// Partitions for topics eventrelay creates.
    pub partitions: i32,
    /// Replication factor for topics eventrelay creates.
    pub replication_factor: i32,
    /// Map stage with a transactional producer: each input record's outputs are committed
    /// atomically with its offset.
    pub exactly_once: bool,
    /// Longest a stage consumer's fetch waits for data (librdkafka `fetch.wait.max.ms`).
    /// Absent: 100 ms on a real broker (which answers as soon as data arrives, so this only
    /// bounds idle polling) and 10 ms on the embedded mock cluster (which holds an empty answer
    /// for the whole wait, so the wait is added to every record's latency).
    pub fetch_wait_max_ms: Option<u32>,
    /// Static group membership (`group.instance.id`): each consumer of the process joins as
    /// `<instance_id>.<member>`, so a restarted process with the same id (a StatefulSet pod
    /// name) takes its partitions back at once instead of after the session timeout. Also the
    /// stable part of the map stage's transactional id.
    pub instance_id: Option<String>,
    /// Passed to librdkafka as is (security, SASL, tuning).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: None,
            group_id: "eventrelay".into(),
            input_topic: "segment.events".into(),
            input_dlq_topic: "segment.events.dlq".into(),
            destination_topic_prefix: "dest.".into(),
            partitions: 4,
            replication_factor: 1,
            exactly_once: false,
            fetch_wait_max_ms: None,
            instance_id: None,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// `dest.<name>`.
    pub fn destination_topic(&self, name: &str) -> String {
        format!("{}{name}", self.destination_topic_prefix)
    }
    /// `dest.<name>.retry.<tier>`: one retry topic per delay tier (`dest.seg.retry.1m`).
    pub fn retry_topic(&self, name: &str, tier: Duration) -> String {
        format!(
            "{}{name}.retry.{}",
            self.destination_topic_prefix,
            tier_label(tier)
        )
    }
    /// `dest.<name>.dlq`.
    pub fn dlq_topic(&self, name: &str) -> String {
        format!("{}{name}.dlq", self.destination_topic_prefix)
    }
}

/// A delay tier's name in topic and group names: `500ms`, `10s`, `5m`, `2h`.
pub fn tier_label(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0ms".into(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

/// Attempts kept per destination unless `metrics.deliveries_kept` says otherwise: enough to
/// see a burst of failures, small enough (well under a megabyte) to never matter.
pub const DEFAULT_KEPT: usize = 1_000;

/// The most `metrics.deliveries_kept` may ask for, so a typo cannot make the view a leak.
pub const MAX_KEPT: usize = 100_000;

/// Reject a `metrics.deliveries_kept` above [`MAX_KEPT`].
fn check_kept(kept: usize) -> Result<()> {
    if kept > MAX_KEPT {
        bail!("invalid configuration: metrics.deliveries_kept {kept} is more than {MAX_KEPT}");
    }
    Ok(())
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP listener serving `/metrics`, `/healthz`, `/readyz`, `/deliveries`.
    pub listen: String,
    /// Delivery attempts `/deliveries` keeps per destination (memory bound; 0 keeps none).
    pub deliveries_kept: usize,
    /// How often the process reads every eventrelay group's committed lag from the brokers
    /// for `eventrelay_group_lag` (seconds; 0 turns it off). That gauge is what the lag
    /// alerts use, since it exists even while the stage it measures is down.
    pub group_lag_interval_secs: f64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".into(),
            deliveries_kept: DEFAULT_KEPT,
            group_lag_interval_secs: 10.0,
        }
    }
}

/// `[map]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MapConfig {
    /// Worker threads; 0 means the number of cores.
    pub workers: usize,
    /// Input records read but not yet acknowledged, across all partitions; consumption pauses
    /// at this bound so memory stays flat when the broker slows.
    pub max_in_flight: usize,
    /// messageId de-duplication window (Segment: at least 24 hours); 0 turns it off.
    pub dedup_window_secs: u64,
    /// messageIds remembered per process at most (about 40 bytes each), split between workers.
    pub dedup_max_entries: usize,
}

impl Default for MapConfig {
    fn default() -> Self {
        MapConfig {
            workers: 0,
            max_in_flight: 20_000,
            dedup_window_secs: 24 * 3600,
            dedup_max_entries: 1_000_000,
        }
    }
}

impl MapConfig {
    /// Worker count with 0 resolved to the number of cores.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            self.workers
        }
    }
}

/// `[ingest]`: Segment's HTTP Tracking API in front of the input topic, so that Segment's own
/// client libraries can point their `host` option at eventrelay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address of the HTTP listener; absent means no ingest (`--role all` then skips it).
    pub listen: Option<String>,
    /// Accepted write keys (HTTP Basic user name, or `writeKey` in the body); any other → 401.
    pub write_keys: Vec<String>,
    /// Largest event, in bytes, as written to the input topic (Segment: 32 KB). Kept equal to
    /// the map stage's limit so nothing answered 200 is later dead-lettered for its size.
    pub max_event_bytes: usize,
    /// Largest request body after gzip decoding (Segment: 500 KB per batch).
    pub max_batch_bytes: usize,
    /// How long the broker has to acknowledge an event (librdkafka `message.timeout.ms`);
    /// past it the request gets 503 and the client retries.
    pub ack_timeout_ms: u64,
    /// Seconds a 503 (producer queue full, broker unreachable) asks clients to wait.
    pub retry_after_secs: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: None,
            write_keys: Vec::new(),
            max_event_bytes: crate::event::MAX_EVENT_BYTES,
            max_batch_bytes: 500 * 1024,
            ack_timeout_ms: 30_000,
            retry_after_secs: 5,
        }
    }
}

/// Delivery settings every destination section may carry beside its own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Requests per second, if limited.
    pub rate_limit: Option<u32>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Quick retries in place before handing off to the retry topic.
    pub in_place_retries: usize,
    /// First backoff delay (in place, and the first retry-topic delay).
    pub backoff_min: Duration,
    /// Largest retry-topic delay.
    pub backoff_max: Duration,
    /// How long after the first attempt a record may still be retried (Segment: 4 hours).
    pub retry_window: Duration,
    /// Delay tiers of the retry topics, ascending: a record handed to the retry topic goes to
    /// the smallest tier at least as long as its backoff (or `Retry-After`), so every record
    /// of one tier topic waits the same time and its head is always the earliest due.
    pub retry_tiers: Vec<Duration>,
    /// Circuit breaker: consecutive retryable failures that open it (0: never).
    pub breaker_failures: u32,
    /// Circuit breaker: how long it stays open before the first probe.
    pub breaker_open: Duration,
    /// Circuit breaker: longest open period (doubles after each failed probe).
    pub breaker_open_max: Duration,
    /// Circuit breaker: at most one probe request per this interval while half-open.
    pub breaker_probe_interval: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            concurrency: 64,
            rate_limit: None,
            timeout: Duration::from_secs(10),
            in_place_retries: 2,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(300),
            retry_window: Duration::from_secs(4 * 3600),
            retry_tiers: [10, 60, 300, 1800]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            breaker_failures: 20,
            breaker_open: Duration::from_secs(5),
            breaker_open_max: Duration::from_secs(60),
            breaker_probe_interval: Duration::from_secs(1),
        }
    }
}

/// Delivery keys, with how to read them; everything else in the section is the destination's.
const DELIVERY_KEYS: &[&str] = &[
    "concurrency",
    "rate_limit",
    "timeout_ms",
    "in_place_retries",
    "backoff_min_ms",
    "backoff_max_ms",
    "retry_window_secs",
    "retry_tier_ms",
    "breaker_failures",
    "breaker_open_ms",
    "breaker_open_max_ms",
    "breaker_probe_interval_ms",
];

fn positive(t: &toml::Table, key: &str) -> Result<Option<u64>, ConfigError> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Integer(i)) if *i >= 0 => Ok(Some(*i as u64)),
        Some(_) => Err(ConfigError::new(key, "must be a non-negative integer")),
    }
}

impl DeliveryConfig {
    fn from_table(t: &toml::Table) -> Result<Self, ConfigError> {
        let mut d = DeliveryConfig::default();
        if let Some(v) = positive(t, "concurrency")? {
            if v == 0 {
                return Err(ConfigError::new("concurrency", "must be at least 1"));
            }
            d.concurrency = v as usize;
        }
        if let Some(v) = positive(t, "rate_limit")? {
            d.rate_limit = (v > 0).then_some(v.min(u32::MAX as u64) as u32);
        }
        if let Some(v) = positive(t, "timeout_ms")? {
            d.timeout = Duration::from_millis(v.max(1));
        }
        if let Some(v) = positive(t, "in_place_retries")? {
            d.in_place_retries = v as usize;
        }
        if let Some(v) = positive(t, "backoff_min_ms")? {
            d.backoff_min = Duration::from_millis(v.max(1));
        }
        if let Some(v) = positive(t, "backoff_max_ms")? {
            d.backoff_max = Duration::from_millis(v.max(1));
        }
        if let Some(v) = positive(t, "retry_window_secs")? {
            d.retry_window = Duration::from_secs(v);
        }
        if let Some(v) = t.get("retry_tier_ms") {
            let bad = || {
                ConfigError::new(
                    "retry_tier_ms",
                    "must be a non-empty list of positive integers (ms), ascending, at most 8",
                )
            };
            let list = v.as_array().ok_or_else(bad)?;
            let tiers: Vec<Duration> = list
                .iter()
                .map(|x| match x {
                    toml::Value::Integer(i) if *i > 0 => Ok(Duration::from_millis(*i as u64)),
                    _ => Err(bad()),
                })
                .collect::<Result<_, _>>()?;
            if tiers.is_empty() || tiers.len() > 8 || tiers.windows(2).any(|w| w[0] >= w[1]) {
                return Err(bad());
            }
            d.retry_tiers = tiers;
        }
        if let Some(v) = positive(t, "breaker_failures")? {
            d.breaker_failures = v.min(u32::MAX as u64) as u32;
        }
        if let Some(v) = positive(t, "breaker_open_ms")? {
            d.breaker_open = Duration::from_millis(v.max(1));
        }
        if let Some(v) = positive(t, "breaker_open_max_ms")? {
            d.breaker_open_max = Duration::from_millis(v.max(1));
        }
        if let Some(v) = positive(t, "breaker_probe_interval_ms")? {
            d.breaker_probe_interval = Duration::from_millis(v.max(1));
        }
        if d.breaker_open_max < d.breaker_open {
            return Err(ConfigError::new(
                "breaker_open_max_ms",
                "must not be smaller than breaker_open_ms",
            ));
        }
        if d.backoff_max < d.backoff_min {
            return Err(ConfigError::new(
                "backoff_max_ms",
                "must not be smaller than backoff_min_ms",
            ));
        }
        Ok(d)
    }
}

/// One enabled destination: the mapper/request builder and its delivery settings.
#[derive(Clone)]
pub struct EnabledDestination {
    /// The destination.
    pub dest: Arc<dyn Destination>,
    /// How to deliver to it.
    pub delivery: DeliveryConfig,
}

impl Config {
    /// Load from a TOML file plus environment overrides, and validate.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let mut fig = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        let fig = fig.merge(
            Env::prefixed("EVENTRELAY_")
                .split("__")
                .filter(|k| k.as_str().contains('.')),
        );
        let cfg: Config = fig.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            anyhow!("invalid configuration: {}", msgs.join("; "))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse TOML text (no environment), for tests and the demo.
    pub fn from_toml(text: &str) -> Result<Config> {
        let cfg: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| anyhow!("invalid configuration: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every value; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let k = &self.kafka;
        for (key, v) in [
            ("kafka.group_id", &k.group_id),
            ("kafka.input_topic", &k.input_topic),
            ("kafka.input_dlq_topic", &k.input_dlq_topic),
            (
                "kafka.destination_topic_prefix",
                &k.destination_topic_prefix,
            ),
        ] {
            if v.trim().is_empty() {
                bail!("invalid configuration: {key} must not be empty");
            }
        }
        if let Some(b) = &k.bootstrap_servers {
            if b.trim().is_empty() {
                bail!("invalid configuration: kafka.bootstrap_servers must not be empty (remove it for the embedded cluster)");
            }
        }
        if k.partitions < 1 {
            bail!("invalid configuration: kafka.partitions must be at least 1");
        }
        if k.replication_factor < 1 {
            bail!("invalid configuration: kafka.replication_factor must be at least 1");
        }
        self.metrics.listen.parse::<SocketAddr>().with_context(|| {
            format!(
                "invalid configuration: metrics.listen {:?} is not an address like 127.0.0.1:9464",
                self.metrics.listen
            )
        })?;
        check_kept(self.metrics.deliveries_kept)?;
        let every = self.metrics.group_lag_interval_secs;
        if !every.is_finite() || !(0.0..=86_400.0).contains(&every) {
            bail!("invalid configuration: metrics.group_lag_interval_secs {every} is not between 0 and 86400");
        }
        if self.map.max_in_flight == 0 {
            bail!("invalid configuration: map.max_in_flight must be at least 1");
        }
        let ing = &self.ingest;
        if let Some(listen) = &ing.listen {
            listen.parse::<SocketAddr>().with_context(|| {
                format!("invalid configuration: ingest.listen {listen:?} is not an address like 127.0.0.1:8088")
            })?;
            if ing.write_keys.iter().all(|k| k.trim().is_empty()) {
                bail!("invalid configuration: ingest.write_keys must list at least one key when ingest.listen is set");
            }
        }
        if ing.write_keys.iter().any(|k| k.trim().is_empty()) {
            bail!("invalid configuration: ingest.write_keys must not contain an empty key");
        }
        if ing.max_event_bytes == 0 || ing.max_batch_bytes < ing.max_event_bytes {
            bail!("invalid configuration: ingest.max_batch_bytes must be at least ingest.max_event_bytes (> 0)");
        }
        if ing.ack_timeout_ms == 0 {
            bail!("invalid configuration: ingest.ack_timeout_ms must be at least 1");
        }
        self.destinations()?;
        Ok(())
    }

    /// The enabled destinations, in registry order.
    pub fn destinations(&self) -> Result<Vec<EnabledDestination>> {
        if let Some(name) = self
            .destinations
            .keys()
            .find(|n| !REGISTRY.iter().any(|(r, _)| r == n))
        {
            let known: Vec<&str> = REGISTRY.iter().map(|(n, _)| *n).collect();
            bail!(
                "invalid configuration: destinations.{name}: unknown destination (known: {})",
                known.join(", ")
            );
        }
        let mut out = Vec::new();
        for (name, ctor) in REGISTRY {
            let Some(section) = self.destinations.get(*name) else {
                continue;
            };
            let in_section = |e: ConfigError| {
                anyhow!(
                    "invalid configuration: destinations.{name}.{}: {}",
                    e.key,
                    e.message
                )
            };
            let delivery = DeliveryConfig::from_table(section).map_err(in_section)?;
            let own: toml::Table = section
                .iter()
                .filter(|(k, _)| !DELIVERY_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let dest = ctor(&own).map_err(in_section)?;
            out.push(EnabledDestination { dest, delivery });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn retry_tiers_name_their_topics_and_are_validated() {
        assert_eq!(tier_label(Duration::from_millis(500)), "500ms");
        assert_eq!(tier_label(Duration::from_secs(10)), "10s");
        assert_eq!(tier_label(Duration::from_secs(300)), "5m");
        assert_eq!(tier_label(Duration::from_secs(7200)), "2h");
        let k = KafkaConfig::default();
        assert_eq!(
            k.retry_topic("seg", Duration::from_secs(60)),
            "dest.seg.retry.1m"
        );
        let seg = "[destinations.seg]\nwebsite_id = \"abc8fb18-7559-4324-9921-a4b5015b4a1c\"\n";
        let cfg = Config::from_toml(&format!("{seg}retry_tier_ms = [1000, 60000]\n")).unwrap();
        let d = &cfg.destinations().unwrap()[0].delivery;
        assert_eq!(
            d.retry_tiers,
            vec![Duration::from_secs(1), Duration::from_secs(60)]
        );
        for bad in ["[]", "[60000, 1000]", "[0]", "\"1m\""] {
            let cfg = Config::from_toml(&format!("{seg}retry_tier_ms = {bad}\n"));
            let e = cfg
                .and_then(|c| c.destinations().map(|_| ()))
                .unwrap_err()
                .to_string();
            assert!(e.contains("destinations.seg.retry_tier_ms"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(err("[destinations.seg]\nwebsite_id = \"nope\"")
            .contains("destinations.seg.website_id"));
        assert!(err(
            "[destinations.owneriq]\ndata_group_id=\"a\"\nanalytics_tag_id=\"b\"\ndct_tag_id=\"\""
        )
        .contains("destinations.owneriq.dct_tag_id"));
        assert!(err("[kafka]\ngroup_idd = \"x\"").contains("group_idd"));
        assert!(err("[destinations.nope]\n").contains("destinations.nope"));
        assert!(err(
            "[destinations.seg]\nwebsite_id=\"abc8fb18-7559-4324-9921-a4b5015b4a1c\"\nwebsiteid=1"
        )
        .contains("destinations.seg.websiteid"));
        assert!(err("[metrics]\nlisten = \"here\"").contains("metrics.listen"));
        assert!(err("[ingest]\nlistenn = \"127.0.0.1:1\"").contains("listenn"));
        assert!(err("[ingest]\nlisten = \"nope\"\nwrite_keys=[\"k\"]").contains("ingest.listen"));
        assert!(err("[ingest]\nlisten = \"127.0.0.1:0\"").contains("ingest.write_keys"));
        assert!(err("[metrics]\ndeliveries_kept = 1000000").contains("metrics.deliveries_kept"));
        assert!(err("[metrics]\ngroup_lag_interval_secs = -1").contains("group_lag_interval_secs"));
        assert!(err("[destinations.seg]\nwebsite_id=\"abc8fb18-7559-4324-9921-a4b5015b4a1c\"\nconcurrency=0")
            .contains("destinations.seg.concurrency"));
    }

    #[test]
    fn destination_without_section_is_off() {
        let cfg = Config::from_toml(
            "[destinations.seg]\nwebsite_id=\"abc8fb18-7559-4324-9921-a4b5015b4a1c\"\nconcurrency=8",
        )
        .unwrap();
        let d = cfg.destinations().unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].dest.name(), "seg");
        assert_eq!(d[0].delivery.concurrency, 8);
    }
}
