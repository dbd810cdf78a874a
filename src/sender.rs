//! The send stage: per destination, drain `dest.<d>` (and its retry topic) to the destination's
//! HTTP API.
//!
//! For each destination, two consumer threads (the destination topic, and its retry topic) feed
//! `concurrency` lanes. A record goes to the lane of its key's hash, so one user's records are
//! sent one after another, in order, while different users go in parallel. A lane sends with a
//! few quick in-place retries (backon, jittered exponential, honouring `Retry-After`); a record
//! still failing is handed to `dest.<d>.retry` with a due time, so it never blocks its partition.
//! The retry consumer pauses a partition until its head record is due, then resumes it; it
//! never sleeps on the consumer thread. Permanent failures and records past the retry window go
//! to `dest.<d>.dlq`. Offsets are committed only up to the first record not yet finished.
//!
//! Destinations share nothing but the process: separate consumers, lanes, HTTP pools and rate
//! limits, so one that is slow or down never slows another.

use crate::config::{Config, DeliveryConfig, EnabledDestination};
use crate::destinations::{AnswerClass, Destination, HttpRequest};
use crate::event::now_millis;
use crate::kafka::{client_config, Progress, Slot, TrackingContext};
use crate::ops::Health;
use crate::record::Record;
use anyhow::{anyhow, Context, Result};
use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Per-destination delivery counts, for the demo summary and tests.
#[derive(Debug, Default)]
pub struct SendStats {
    per_dest: Mutex<BTreeMap<String, Arc<DestCounts>>>,
}

/// One destination's counts: plain atomics, so lanes never share a lock to count.
#[derive(Debug, Default)]
struct DestCounts {
    delivered: AtomicU64,
    retried: AtomicU64,
    retry_topic: AtomicU64,
    dead_lettered: AtomicU64,
}

impl SendStats {
    fn for_dest(&self, dest: &str) -> Arc<DestCounts> {
        match self.per_dest.lock() {
            Ok(mut m) => m.entry(dest.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// Count of `what` (`delivered`, `retried`, `retry_topic`, `dead_lettered`) for `dest`.
    pub fn get(&self, dest: &str, what: &str) -> u64 {
        let Some(c) = self.per_dest.lock().ok().and_then(|m| m.get(dest).cloned()) else {
            return 0;
        };
        let n = match what {
            "delivered" => &c.delivered,
            "retried" => &c.retried,
            "retry_topic" => &c.retry_topic,
            "dead_lettered" => &c.dead_lettered,
            _ => return 0,
        };
        n.load(Ordering::Relaxed)
    }
}

/// Metric handles a lane touches on every request, registered once per destination instead of
/// looked up by name and labels each time.
struct LaneMetrics {
    duration: metrics::Histogram,
    end_to_end: metrics::Histogram,
    success: metrics::Counter,
    /// `eventrelay_delivery_attempts_total` by status 100..=599, registered on first use.
    by_status: Vec<std::sync::OnceLock<metrics::Counter>>,
}

impl LaneMetrics {
    fn new(name: &'static str) -> LaneMetrics {
        LaneMetrics {
            duration: metrics::histogram!("eventrelay_delivery_duration_seconds", "destination" => name),
            end_to_end: metrics::histogram!("eventrelay_end_to_end_latency_seconds", "destination" => name),
            success: metrics::counter!("eventrelay_deliveries_total", "destination" => name, "outcome" => "success"),
            by_status: (100..600).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    fn attempt(&self, name: &'static str, status: u16) {
        match self.by_status.get(usize::from(status).wrapping_sub(100)) {
            Some(c) => c
                .get_or_init(|| {
                    metrics::counter!("eventrelay_delivery_attempts_total", "destination" => name, "status" => status.to_string())
                })
                .increment(1),
            None => metrics::counter!("eventrelay_delivery_attempts_total", "destination" => name, "status" => status.to_string())
                .increment(1),
        }
    }
}

/// Header names of the retry topic.
pub mod headers {
    /// When the record is due again (ms since the epoch).
    pub const DUE: &str = "eventrelay.retry.due_ms";
    /// Attempts made so far.
    pub const ATTEMPTS: &str = "eventrelay.retry.attempts";
    /// When the first attempt was made (ms since the epoch); the retry window counts from it.
    pub const FIRST: &str = "eventrelay.retry.first_attempt_ms";
    /// Where the record was first read from.
    pub const ORIGIN_TOPIC: &str = "eventrelay.origin.topic";
    /// Partition it was first read from.
    pub const ORIGIN_PARTITION: &str = "eventrelay.origin.partition";
    /// Offset it was first read from.
    pub const ORIGIN_OFFSET: &str = "eventrelay.origin.offset";
}

/// One record read, on its way to a lane.
struct Item {
    slot: Slot,
    progress: Arc<Progress>,
    /// Read from the retry topic: its retry headers (attempts, first attempt) count.
    retried: bool,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

impl Item {
    fn header(&self, name: &str) -> Option<String> {
        header_value(self.headers.as_ref()?, name)
    }
}

fn header_value(h: &OwnedHeaders, name: &str) -> Option<String> {
    h.iter()
        .filter(|hd| hd.key == name)
        .last()
        .and_then(|hd| hd.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Everything a lane needs, shared by all lanes of one destination.
struct Lane {
    dest: Arc<dyn Destination>,
    delivery: DeliveryConfig,
    client: reqwest::Client,
    limiter: Option<DefaultDirectRateLimiter>,
    producer: FutureProducer,
    retry_topic: String,
    dlq_topic: String,
    counts: Arc<DestCounts>,
    metrics: LaneMetrics,
}

/// Why one HTTP attempt did not succeed.
#[derive(Debug)]
struct AttemptError {
    status: Option<u16>,
    class: AnswerClass,
    retry_after: Option<Duration>,
    message: String,
}

/// Longest `Retry-After` waited in place; longer ones go to the retry topic.
const MAX_IN_PLACE_WAIT: Duration = Duration::from_secs(5);

impl Lane {
    /// One request; `body` is the request's body, shared between attempts without copying.
    async fn attempt(
        &self,
        req: &HttpRequest,
        body: Option<&bytes::Bytes>,
    ) -> Result<u16, AttemptError> {
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
        let name = self.dest.name();
        let method = match req.method {
            crate::destinations::Method::Post => reqwest::Method::POST,
            crate::destinations::Method::Get => reqwest::Method::GET,
        };
        let mut rb = self.client.request(method, &req.url);
        for (k, v) in &req.headers {
            rb = rb.header(*k, v);
        }
        if let Some(b) = body {
            rb = rb.body(b.clone());
        }
        let started = Instant::now();
        let result = rb.send().await;
        self.metrics
            .duration
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                self.metrics.attempt(name, status);
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                // Read the body so the connection goes back to the pool.
                let _ = resp.bytes().await;
                match self.dest.classify(status) {
                    AnswerClass::Success => Ok(status),
                    class => Err(AttemptError {
                        status: Some(status),
                        class,
                        retry_after,
                        message: format!("HTTP {status}"),
                    }),
                }
            }
            Err(e) => {
                let label = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect_error"
                } else if e.is_builder() {
                    "invalid_request"
                } else {
                    "error"
                };
                metrics::counter!("eventrelay_delivery_attempts_total", "destination" => name, "status" => label)
                    .increment(1);
                Err(AttemptError {
                    status: None,
                    // A request that cannot even be built (e.g. a header value with control
                    // characters) will never succeed.
                    class: if e.is_builder() {
                        AnswerClass::Permanent
                    } else {
                        AnswerClass::Retryable
                    },
                    retry_after: None,
                    message: format!("{label}: {e}"),
                })
            }
        }
    }

    /// Deliver one item: in-place retries, then success, retry topic or dead letter.
    async fn deliver(&self, item: Item) {
        let built = Record::decode(item.payload.as_slice())
            .map_err(|e| {
                (
                    "undecodable_record",
                    format!("not an eventrelay record: {e}"),
                )
            })
            .and_then(|r| {
                self.dest
                    .build_request(&r)
                    .map(|req| (r, req))
                    .map_err(|e| (e.reason, e.message))
            });
        let (record, mut req) = match built {
            Ok(ok) => ok,
            Err((reason, message)) => {
                return self.finish_dead(item, reason, &message, None, 0).await;
            }
        };
        let body = req.body.take().map(bytes::Bytes::from);
        // Retry headers count only on the retry topic: a dead letter redriven to `dest.<d>`
        // starts a fresh retry window.
        let retry_header = |name: &str| item.retried.then(|| item.header(name)).flatten();
        let prior: u32 = retry_header(headers::ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let first_ms: i64 = retry_header(headers::FIRST)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(now_millis);
        let attempts = AtomicU32::new(0);
        let d = &self.delivery;
        let backoff = ExponentialBuilder::new()
            .with_min_delay(d.backoff_min)
            .with_max_delay(d.backoff_min.saturating_mul(8).min(d.backoff_max))
            .with_max_times(d.in_place_retries)
            .with_jitter();
        let result = (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.attempt(&req, body.as_ref()).await
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &AttemptError| {
            e.class == AnswerClass::Retryable
                && e.retry_after.is_none_or(|ra| ra <= MAX_IN_PLACE_WAIT)
        })
        .adjust(|e: &AttemptError, dur| dur.map(|d| e.retry_after.map_or(d, |ra| ra.max(d))))
        .notify(|_, _| {
            self.counts.retried.fetch_add(1, Ordering::Relaxed);
        })
        .await;
        let attempts = prior + attempts.load(Ordering::Relaxed);
        match result {
            Ok(_) => {
                self.counts.delivered.fetch_add(1, Ordering::Relaxed);
                self.metrics.success.increment(1);
                if record.received_at_ms > 0 {
                    let latency = (now_millis() - record.received_at_ms).max(0) as f64 / 1000.0;
                    self.metrics.end_to_end.record(latency);
                }
                item.progress.adjust(&item.slot, -1);
            }
            Err(e) if e.class == AnswerClass::Permanent => {
                let reason = match e.status {
                    Some(s) => format!("http_{s}"),
                    None => "permanent_error".into(),
                };
                self.finish_dead(item, &reason, &e.message, e.status, attempts)
                    .await;
            }
            Err(e) => {
                let now = now_millis();
                if now - first_ms >= d.retry_window.as_millis() as i64 {
                    let msg = format!("still failing after the retry window: {}", e.message);
                    self.finish_dead(item, "retries_exhausted", &msg, e.status, attempts)
                        .await;
                } else {
                    self.finish_retry(item, &e, attempts, first_ms).await;
                }
            }
        }
    }

    /// Hand a record to the retry topic with its next due time.
    async fn finish_retry(&self, item: Item, e: &AttemptError, attempts: u32, first_ms: i64) {
        let d = &self.delivery;
        // The n-th delay of a jittered exponential schedule from backoff_min to backoff_max.
        let delay = ExponentialBuilder::new()
            .with_min_delay(d.backoff_min)
            .with_max_delay(d.backoff_max)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempts.min(64) as usize)
            .unwrap_or(d.backoff_max);
        let delay = e.retry_after.map_or(delay, |ra| ra.max(delay));
        let due = now_millis() + delay.as_millis() as i64;
        let mut h = OwnedHeaders::new();
        let origin = origin_of(&item);
        for (k, v) in [
            (headers::DUE, due.to_string()),
            (headers::ATTEMPTS, attempts.to_string()),
            (headers::FIRST, first_ms.to_string()),
            (headers::ORIGIN_TOPIC, origin.0),
            (headers::ORIGIN_PARTITION, origin.1),
            (headers::ORIGIN_OFFSET, origin.2),
            ("eventrelay.retry.last_error", e.message.clone()),
        ] {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let name = self.dest.name();
        if self.produce(&self.retry_topic, &item, h).await {
            self.counts.retry_topic.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("eventrelay_deliveries_total", "destination" => name, "outcome" => "retry")
                .increment(1);
            item.progress.adjust(&item.slot, -1);
        } else {
            item.progress.fail(&item.slot);
        }
    }

    /// Dead-letter a record with Kafka-Connect-style error headers.
    async fn finish_dead(
        &self,
        item: Item,
        reason: &str,
        message: &str,
        status: Option<u16>,
        attempts: u32,
    ) {
        let mut h = OwnedHeaders::new();
        if let Some(orig) = &item.headers {
            for hd in orig.iter() {
                h = h.insert(Header {
                    key: hd.key,
                    value: hd.value,
                });
            }
        }
        let origin = origin_of(&item);
        let status = status.map(|s| s.to_string()).unwrap_or_default();
        for (k, v) in [
            ("eventrelay.error.stage", "send".to_string()),
            ("eventrelay.error.reason", reason.to_string()),
            ("eventrelay.error.message", message.to_string()),
            ("eventrelay.error.topic", origin.0),
            ("eventrelay.error.partition", origin.1),
            ("eventrelay.error.offset", origin.2),
            ("eventrelay.error.status", status),
            ("eventrelay.error.attempts", attempts.to_string()),
            ("eventrelay.error.destination", self.dest.name().to_string()),
        ] {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let name = self.dest.name();
        tracing::debug!(destination = name, reason, "dead-lettering record");
        if self.produce(&self.dlq_topic, &item, h).await {
            self.counts.dead_lettered.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("eventrelay_deliveries_total", "destination" => name, "outcome" => "dead_letter")
                .increment(1);
            metrics::counter!("eventrelay_dead_letters_total", "topic" => self.dlq_topic.clone(), "reason" => reason.to_string())
                .increment(1);
            item.progress.adjust(&item.slot, -1);
        } else {
            item.progress.fail(&item.slot);
        }
    }

    async fn produce(&self, topic: &str, item: &Item, headers: OwnedHeaders) -> bool {
        let mut rec = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(item.payload.as_slice())
            .headers(headers);
        if let Some(k) = &item.key {
            rec = rec.key(k.as_slice());
        }
        match self.producer.send(rec, Duration::from_secs(60)).await {
            Ok(_) => true,
            Err((e, _)) => {
                tracing::error!(error = %e, topic, "cannot produce; the offset will not be committed past this record");
                false
            }
        }
    }
}

/// Where a record was first read: the origin headers of a retried record, else its own slot.
fn origin_of(item: &Item) -> (String, String, String) {
    match (
        item.header(headers::ORIGIN_TOPIC),
        item.header(headers::ORIGIN_PARTITION),
        item.header(headers::ORIGIN_OFFSET),
    ) {
        (Some(t), Some(p), Some(o)) => (t, p, o),
        _ => (
            item.slot.topic.to_string(),
            item.slot.partition.to_string(),
            item.slot.offset.to_string(),
        ),
    }
}

/// Wait for every lane; dropping the returned future (on timeout) aborts those still running.
async fn futures_join(lanes: Vec<tokio::task::JoinHandle<()>>) {
    let aborts: Vec<_> = lanes.iter().map(|l| l.abort_handle()).collect();
    let _guard = AbortOnDrop(aborts);
    for l in lanes {
        let _ = l.await;
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for a in &self.0 {
            a.abort();
        }
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(24 * 3600)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = when.timestamp_millis() - now_millis();
    Some(Duration::from_millis(ms.clamp(0, 24 * 3600 * 1000) as u64))
}

/// Run one destination's send stage until `stop`; then drain (bounded), commit and return.
pub async fn run_send_stage(
    cfg: &Config,
    bootstrap: &str,
    d: EnabledDestination,
    stop: Arc<AtomicBool>,
    stats: Arc<SendStats>,
    health: Arc<Health>,
) -> Result<()> {
    let k = &cfg.kafka;
    let name = d.dest.name();
    let delivery = d.delivery.clone();
    let client = reqwest::Client::builder()
        .timeout(delivery.timeout)
        .pool_max_idle_per_host(delivery.concurrency)
        .build()
        .context("creating HTTP client")?;
    let limiter = delivery
        .rate_limit
        .and_then(NonZeroU32::new)
        .map(|r| RateLimiter::direct(Quota::per_second(r)));
    let producer: FutureProducer = client_config(k, bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .context("creating producer")?;
    let lane = Arc::new(Lane {
        dest: d.dest.clone(),
        delivery: delivery.clone(),
        client,
        limiter,
        producer,
        retry_topic: k.retry_topic(name),
        dlq_topic: k.dlq_topic(name),
        counts: stats.for_dest(name),
        metrics: LaneMetrics::new(name),
    });
    let mut senders = Vec::with_capacity(delivery.concurrency);
    let mut lanes = Vec::with_capacity(delivery.concurrency);
    for _ in 0..delivery.concurrency {
        let (tx, mut rx) = mpsc::channel::<Item>(64);
        senders.push(tx);
        let lane = lane.clone();
        lanes.push(tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                lane.deliver(item).await;
            }
        }));
    }
    let group = format!("{}.send.{name}", k.group_id);
    let max_in_flight = (delivery.concurrency * 64).max(1024);
    // Either consumer failing stops both, so the stage ends and the process restarts instead
    // of half the destination going unconsumed.
    let failed = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for (topic, group, retry) in [
        (k.destination_topic(name), group.clone(), false),
        (k.retry_topic(name), format!("{group}.retry"), true),
    ] {
        let (cfg_k, b, stop, failed, health, senders) = (
            k.clone(),
            bootstrap.to_string(),
            stop.clone(),
            failed.clone(),
            health.clone(),
            senders.clone(),
        );
        consumers.push(tokio::task::spawn_blocking(move || {
            let r = consume(ConsumeArgs {
                kafka: &cfg_k,
                bootstrap: &b,
                topic: &topic,
                group: &group,
                retry,
                lanes: senders,
                stop: &stop,
                failed: &failed,
                health,
                max_in_flight,
            });
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            r
        }));
    }
    drop(senders);
    tracing::info!(
        destination = name,
        concurrency = delivery.concurrency,
        "send stage started"
    );
    let mut result = Ok(());
    for c in consumers {
        match c.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(anyhow!("send consumer panicked: {e}")),
        }
    }
    // Consumers have committed what finished; give lanes a moment, then stop them (their
    // unfinished records were not committed and will be read again).
    let all_lanes = futures_join(lanes);
    if tokio::time::timeout(Duration::from_secs(5), all_lanes)
        .await
        .is_err()
    {
        tracing::warn!(
            destination = name,
            "lanes still busy at shutdown; their records will be re-read"
        );
    }
    tracing::info!(destination = name, "send stage stopped");
    result
}

struct ConsumeArgs<'a> {
    kafka: &'a crate::config::KafkaConfig,
    bootstrap: &'a str,
    topic: &'a str,
    group: &'a str,
    retry: bool,
    lanes: Vec<mpsc::Sender<Item>>,
    stop: &'a AtomicBool,
    failed: &'a AtomicBool,
    health: Arc<Health>,
    max_in_flight: usize,
}

/// librdkafka's prefetch bound per consumer. Its default (64 MB per consumer, two consumers per
/// destination) would be most of the sender's memory while a destination is down and a backlog
/// waits; 16 MB is still seconds of records at full delivery speed. `[kafka.properties]` wins.
const PREFETCH_KEY: &str = "queued.max.messages.kbytes";
const PREFETCH_KB: &str = "16384";

/// A consumer thread: poll, route to lanes by key, commit what is finished; for the retry topic,
/// pause partitions whose head record is not yet due.
fn consume(a: ConsumeArgs<'_>) -> Result<()> {
    let progress = Arc::new(Progress::default());
    let mut cc = crate::kafka::consumer_config(a.kafka, a.bootstrap);
    if !a.kafka.properties.contains_key(PREFETCH_KEY) {
        cc.set(PREFETCH_KEY, PREFETCH_KB);
    }
    let consumer: BaseConsumer<TrackingContext> = cc
        .set("group.id", a.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "5000")
        .create_with_context(TrackingContext {
            progress: progress.clone(),
            health: a.health,
            group: a.group.to_string(),
            drain_timeout: Duration::from_secs(20),
            transactional: None,
            closing: AtomicBool::new(false),
        })
        .context("creating send consumer")?;
    consumer
        .subscribe(&[a.topic])
        .with_context(|| format!("subscribing to {}", a.topic))?;
    let hasher = ahash::RandomState::with_seeds(5, 6, 7, 8);
    let ctx = consumer.context();
    let mut last_commit = Instant::now();
    let mut paused_all = false;
    // Retry topic: partitions waiting for their head record, and when it is due.
    let mut waiting: HashMap<i32, i64> = HashMap::new();
    let mut result = Ok(());
    while !a.stop.load(Ordering::Relaxed) && !a.failed.load(Ordering::Relaxed) {
        if progress.with(|t| t.has_failed()) {
            result = Err(anyhow!(
                "a record could not be handed on; stopping so a restart retries it"
            ));
            break;
        }
        if last_commit.elapsed() >= Duration::from_millis(500) {
            last_commit = Instant::now();
            if let Err(e) = ctx.commit(&consumer, None, CommitMode::Async) {
                tracing::warn!(error = %e, "periodic commit failed; will retry");
            }
        }
        let pending = progress.with(|t| t.pending());
        if pending >= a.max_in_flight {
            if let Ok(asg) = consumer.assignment() {
                let _ = consumer.pause(&asg);
                paused_all = true;
            }
        } else if paused_all && pending <= a.max_in_flight / 2 {
            if let Ok(asg) = consumer.assignment() {
                let keep: TopicPartitionList = partitions(
                    a.topic,
                    asg.elements()
                        .iter()
                        .map(|e| e.partition())
                        .filter(|p| !waiting.contains_key(p)),
                );
                let _ = consumer.resume(&keep);
            }
            paused_all = false;
        }
        if !waiting.is_empty() {
            let now = now_millis();
            let due: Vec<i32> = waiting
                .iter()
                .filter(|(_, d)| **d <= now)
                .map(|(p, _)| *p)
                .collect();
            if !due.is_empty() {
                for p in &due {
                    waiting.remove(p);
                }
                let _ = consumer.resume(&partitions(a.topic, due.into_iter()));
            }
        }
        let msg = match consumer.poll(Duration::from_millis(50)) {
            None => continue,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!(error = %e, topic = a.topic, "consumer error");
                continue;
            }
        };
        if a.retry {
            let due = msg
                .headers()
                .and_then(|h| {
                    h.iter()
                        .filter(|hd| hd.key == headers::DUE)
                        .last()
                        .and_then(|hd| hd.value)
                })
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                .unwrap_or(0);
            if due > now_millis() {
                let tpl = partitions(a.topic, std::iter::once(msg.partition()));
                let _ = consumer.pause(&tpl);
                let _ = consumer.seek(
                    a.topic,
                    msg.partition(),
                    Offset::Offset(msg.offset()),
                    Duration::from_secs(5),
                );
                waiting.insert(msg.partition(), due);
                continue;
            }
        }
        let Some(item) = item_for(&msg, &progress, a.retry) else {
            continue;
        };
        let idx = match &item.key {
            Some(k) => (hasher.hash_one(k) % a.lanes.len() as u64) as usize,
            None => (item.slot.partition.unsigned_abs() as usize) % a.lanes.len(),
        };
        if a.lanes[idx].blocking_send(item).is_err() {
            result = Err(anyhow!("lane {idx} stopped"));
            break;
        }
    }
    if let Err(e) = ctx.finish_and_commit(&consumer, None) {
        tracing::warn!(error = %e, "final commit failed");
    }
    ctx.closing.store(true, Ordering::Relaxed);
    consumer.unsubscribe();
    result
}

fn partitions(topic: &str, ps: impl Iterator<Item = i32>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in ps {
        tpl.add_partition(topic, p);
    }
    tpl
}

fn item_for(msg: &BorrowedMessage<'_>, progress: &Arc<Progress>, retried: bool) -> Option<Item> {
    let slot = progress.with(|t| t.register(msg.topic(), msg.partition(), msg.offset(), 1))?;
    Some(Item {
        slot,
        progress: progress.clone(),
        retried,
        key: msg.key().map(<[u8]>::to_vec),
        payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers: msg.headers().map(|h| h.detach()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
