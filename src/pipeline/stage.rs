//! The map stage on Kafka: consumer group → worker pool → `dest.<destination>` topics.
//!
//! Threads, and why:
//! - the **consumer thread** (the caller's) polls the input topic, registers each record with the
//!   [`OffsetTracker`] and routes it to a worker by the hash of its key, so one user's events are
//!   mapped and produced in input order. It commits what the tracker says is finished and pauses
//!   the input when `map.max_in_flight` records are unfinished, so memory stays flat;
//! - **workers** parse, map and hand records to the producer (CPU work, one thread per core);
//! - the **producer's thread** runs delivery callbacks, which finish work in the tracker.
//!
//! Input offsets are committed only when every record produced from them, and from every earlier
//! offset of the partition, is acknowledged (acks=all, idempotent producer). With
//! `kafka.exactly_once` the producer is transactional and offsets are committed inside the
//! transaction instead.

use crate::config::Config;
use crate::destinations::{Destination, Routed};
use crate::event::now_millis;
use crate::kafka::{client_config, Progress, Slot, TrackingContext, Transactional};
use crate::ops::Health;
use crate::pipeline::map_input;
use crate::record::Source;
use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts the demo and tests read; Prometheus metrics are recorded alongside.
#[derive(Debug, Default)]
pub struct MapStats {
    /// Input records read.
    pub consumed: AtomicU64,
    /// Input records that were not valid events.
    pub invalid: AtomicU64,
    /// Input records whose mapping is finished and counted in `outcomes` (they may still be
    /// on their way to the broker).
    pub processed: AtomicU64,
    /// Output records (destination records and dead letters) acknowledged by the broker.
    pub acked: AtomicU64,
    /// Per (destination, outcome): `produced`, `skipped:<reason>`, `rejected:<reason>`.
    pub outcomes: Mutex<BTreeMap<(String, String), u64>>,
}

impl MapStats {
    /// A snapshot of the per-destination outcome counts.
    pub fn outcomes(&self) -> BTreeMap<(String, String), u64> {
        self.outcomes.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Producer context: delivery reports finish work in the tracker.
struct ProduceCtx {
    progress: Arc<Progress>,
    stats: Arc<MapStats>,
}

impl ClientContext for ProduceCtx {}

impl ProducerContext for ProduceCtx {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Box<Slot>) {
        match result {
            Ok(_) => {
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
                self.progress.adjust(&slot, -1)
            }
            Err((e, m)) => {
                tracing::error!(error = %e, topic = m.topic(), input_offset = slot.offset,
                    "produce failed for good; the input offset will not be committed past it");
                self.progress.fail(&slot);
            }
        }
    }
}

type MapProducer = ThreadedProducer<ProduceCtx>;

/// Exactly-once commits: the input offsets go into the producer's transaction.
struct Txn {
    producer: Arc<MapProducer>,
    progress: Arc<Progress>,
}

impl Transactional for Txn {
    fn commit_with(
        &self,
        offsets: Option<TopicPartitionList>,
        group: &ConsumerGroupMetadata,
    ) -> Result<()> {
        let timeout = Duration::from_secs(30);
        self.producer
            .flush(timeout)
            .context("flushing transactional producer")?;
        if self.progress.with(|t| t.pending()) > 0 {
            let _ = self.producer.abort_transaction(timeout);
            return Err(anyhow!("transaction has unfinished work; aborted"));
        }
        if let Some(tpl) = offsets {
            self.producer
                .send_offsets_to_transaction(&tpl, group, timeout)
                .context("adding offsets to the transaction")?;
        }
        self.producer
            .commit_transaction(timeout)
            .context("committing transaction")?;
        self.producer
            .begin_transaction()
            .context("beginning transaction")
    }
}

/// One input record handed to a worker.
struct Job {
    slot: Slot,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    timestamp_ms: i64,
}

/// Topic names and stage settings the workers need.
struct Route {
    dests: Vec<Arc<dyn Destination>>,
    topics: Vec<String>,
    dlq: String,
}

/// Run the map stage until `stop` is set; then drain, commit and return.
pub fn run_map_stage(
    cfg: &Config,
    bootstrap: &str,
    stop: Arc<AtomicBool>,
    stats: Arc<MapStats>,
    health: Arc<Health>,
) -> Result<()> {
    let k = &cfg.kafka;
    let dests: Vec<Arc<dyn Destination>> =
        cfg.destinations()?.into_iter().map(|d| d.dest).collect();
    let route = Arc::new(Route {
        topics: dests
            .iter()
            .map(|d| k.destination_topic(d.name()))
            .collect(),
        dests,
        dlq: k.input_dlq_topic.clone(),
    });
    let progress = Arc::new(Progress::default());

    let mut pc = client_config(k, bootstrap);
    pc.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000");
    if k.exactly_once {
        pc.set(
            "transactional.id",
            format!("{}-map-{}", k.group_id, transactional_suffix()),
        );
    }
    let producer: Arc<MapProducer> = Arc::new(
        pc.create_with_context(ProduceCtx {
            stats: stats.clone(),
            progress: progress.clone(),
        })
        .context("creating producer")?,
    );
    if k.exactly_once {
        producer
            .init_transactions(Duration::from_secs(30))
            .context("initialising transactions")?;
        producer
            .begin_transaction()
            .context("beginning transaction")?;
    }

    let mut cc = crate::kafka::consumer_config(k, bootstrap);
    cc.set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000");
    let transactional: Option<Arc<dyn Transactional>> = if k.exactly_once {
        Some(Arc::new(Txn {
            producer: producer.clone(),
            progress: progress.clone(),
        }))
    } else {
        None
    };
    let consumer: BaseConsumer<TrackingContext> = cc
        .create_with_context(TrackingContext {
            progress: progress.clone(),
            health,
            group: k.group_id.clone(),
            drain_timeout: Duration::from_secs(20),
            transactional,
            closing: AtomicBool::new(false),
        })
        .context("creating consumer")?;
    consumer
        .subscribe(&[&k.input_topic])
        .context("subscribing to the input topic")?;
    tracing::info!(topic = %k.input_topic, group = %k.group_id, workers = cfg.map.worker_count(),
        exactly_once = k.exactly_once, "map stage started");

    let workers = cfg.map.worker_count();
    let per_worker = (cfg.map.max_in_flight / workers).max(64);
    let mut senders: Vec<Sender<Job>> = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for i in 0..workers {
        let (tx, rx) = bounded::<Job>(per_worker);
        senders.push(tx);
        let (route, progress, producer, stats) = (
            route.clone(),
            progress.clone(),
            producer.clone(),
            stats.clone(),
        );
        handles.push(
            std::thread::Builder::new()
                .name(format!("map-worker-{i}"))
                .spawn(move || worker(rx, &route, &progress, &producer, &stats))
                .context("spawning worker")?,
        );
    }

    let result = consume_loop(cfg, &consumer, &senders, &progress, &stop, &stats);

    // Drain: no more input; let workers finish, the producer deliver, then commit.
    drop(senders);
    for h in handles {
        let _ = h.join();
    }
    let _ = producer.flush(Duration::from_secs(30));
    let ctx = consumer.context();
    let closing = ctx.finish_and_commit(&consumer, None);
    if let Err(e) = &closing {
        tracing::warn!(error = %e, "final commit failed");
    }
    ctx.closing.store(true, Ordering::Relaxed);
    consumer.unsubscribe();
    drop(consumer);
    tracing::info!("map stage stopped");
    result.and(closing)
}

fn transactional_suffix() -> String {
    // One transactional id per process: two instances of the group sharing one would fence
    // each other in turn. `EVENTRELAY_INSTANCE` (a pod name, say) keeps it stable across
    // restarts, so a restarted instance aborts its predecessor's open transaction at once
    // instead of letting it time out; without it, a random id per process.
    std::env::var("EVENTRELAY_INSTANCE")
        .unwrap_or_else(|_| format!("{:016x}", rand::random::<u64>()))
}

fn consume_loop(
    cfg: &Config,
    consumer: &BaseConsumer<TrackingContext>,
    senders: &[Sender<Job>],
    progress: &Progress,
    stop: &AtomicBool,
    stats: &MapStats,
) -> Result<()> {
    let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
    let ctx = consumer.context();
    let commit_every = Duration::from_millis(if cfg.kafka.exactly_once { 100 } else { 500 });
    let mut last_commit = Instant::now();
    let mut paused = false;
    let consumed = metrics::counter!("eventrelay_events_consumed_total", "topic" => cfg.kafka.input_topic.clone());
    let max_in_flight = cfg.map.max_in_flight;
    while !stop.load(Ordering::Relaxed) {
        if progress.with(|t| t.has_failed()) {
            return Err(anyhow!(
                "a produce failed for good; stopping so a restart re-reads from the last commit"
            ));
        }
        if last_commit.elapsed() >= commit_every {
            last_commit = Instant::now();
            let r = if cfg.kafka.exactly_once {
                ctx.finish_and_commit(consumer, None)
            } else {
                ctx.commit(consumer, None, CommitMode::Async)
            };
            if let Err(e) = r {
                if cfg.kafka.exactly_once {
                    return Err(e);
                }
                tracing::warn!(error = %e, "periodic commit failed; will retry");
            }
        }
        let pending = progress.with(|t| t.pending());
        if pending >= max_in_flight {
            if let Ok(a) = consumer.assignment() {
                let _ = consumer.pause(&a);
                paused = true;
            }
        } else if paused && pending <= max_in_flight / 2 {
            if let Ok(a) = consumer.assignment() {
                let _ = consumer.resume(&a);
            }
            paused = false;
        }
        let Some(msg) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let msg = match msg {
            Ok(m) => m,
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                tracing::warn!("input topic does not exist yet");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
        };
        stats.consumed.fetch_add(1, Ordering::Relaxed);
        consumed.increment(1);
        let Some(job) = job_for(&msg, progress) else {
            continue;
        };
        let idx = match &job.key {
            Some(k) => (hasher.hash_one(k) % senders.len() as u64) as usize,
            None => (job.slot.partition.unsigned_abs() as usize) % senders.len(),
        };
        // Blocks when the worker is full: backpressure up to the consumer.
        if senders[idx].send(job).is_err() {
            return Err(anyhow!("worker {idx} stopped"));
        }
    }
    if paused {
        if let Ok(a) = consumer.assignment() {
            let _ = consumer.resume(&a);
        }
    }
    Ok(())
}

fn job_for(msg: &BorrowedMessage<'_>, progress: &Progress) -> Option<Job> {
    let slot = progress.with(|t| t.register(msg.topic(), msg.partition(), msg.offset(), 1))?;
    Some(Job {
        slot,
        key: msg.key().map(<[u8]>::to_vec),
        payload: msg.payload().map(<[u8]>::to_vec),
        headers: msg.headers().map(|h| h.detach()),
        timestamp_ms: msg.timestamp().to_millis().unwrap_or_else(now_millis),
    })
}

/// What happened to one event at one destination (or to an invalid input), for counting.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    Produced(&'static str),
    Skipped(&'static str, &'static str),
    Rejected(&'static str, &'static str),
    Invalid(&'static str),
}

/// Per-worker counts, merged into the shared stats and the Prometheus counters now and then:
/// nothing is allocated or locked per event for counting.
#[derive(Default)]
struct LocalStats {
    counts: HashMap<Outcome, u64>,
    since_flush: u32,
}

impl LocalStats {
    fn count(&mut self, o: Outcome) {
        *self.counts.entry(o).or_default() += 1;
    }

    fn flush(&mut self, stats: &MapStats) {
        let processed = self.since_flush as u64;
        if let Ok(mut m) = stats.outcomes.lock() {
            for (o, n) in self.counts.drain() {
                let key = match o {
                    Outcome::Produced(d) => {
                        metrics::counter!("eventrelay_records_produced_total", "destination" => d)
                            .increment(n);
                        (d.to_string(), "produced".to_string())
                    }
                    Outcome::Skipped(d, r) => {
                        metrics::counter!("eventrelay_events_skipped_total", "destination" => d, "reason" => r)
                            .increment(n);
                        (d.to_string(), format!("skipped:{r}"))
                    }
                    Outcome::Rejected(d, r) => {
                        metrics::counter!("eventrelay_events_rejected_total", "destination" => d, "reason" => r)
                            .increment(n);
                        (d.to_string(), format!("rejected:{r}"))
                    }
                    Outcome::Invalid(r) => {
                        metrics::counter!("eventrelay_events_invalid_total", "reason" => r)
                            .increment(n);
                        stats.invalid.fetch_add(n, Ordering::Relaxed);
                        continue;
                    }
                };
                *m.entry(key).or_default() += n;
            }
        }
        // Counted after the outcomes, so `processed` never runs ahead of them.
        stats.processed.fetch_add(processed, Ordering::Relaxed);
        self.since_flush = 0;
    }
}

fn worker(
    rx: Receiver<Job>,
    route: &Route,
    progress: &Progress,
    producer: &MapProducer,
    stats: &MapStats,
) {
    let mut local = LocalStats::default();
    loop {
        let job = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(j) => j,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                local.flush(stats);
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        process(job, route, progress, producer, &mut local);
        local.since_flush += 1;
        if local.since_flush >= 1024 || rx.is_empty() {
            local.flush(stats);
        }
    }
    local.flush(stats);
}

/// Error headers added to dead letters, Kafka Connect style.
fn error_headers(
    base: Option<&OwnedHeaders>,
    stage: &str,
    reason: &str,
    message: &str,
    slot: &Slot,
    destination: Option<&str>,
) -> OwnedHeaders {
    let mut h = OwnedHeaders::new();
    if let Some(base) = base {
        for i in 0..base.count() {
            let hd = base.get(i);
            h = h.insert(Header {
                key: hd.key,
                value: hd.value,
            });
        }
    }
    let partition = slot.partition.to_string();
    let offset = slot.offset.to_string();
    let mut add = |k: &str, v: &str| {
        h = std::mem::take(&mut h).insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    };
    add("eventrelay.error.stage", stage);
    add("eventrelay.error.reason", reason);
    add("eventrelay.error.message", message);
    add("eventrelay.error.topic", &slot.topic);
    add("eventrelay.error.partition", &partition);
    add("eventrelay.error.offset", &offset);
    if let Some(d) = destination {
        add("eventrelay.error.destination", d);
    }
    h
}

/// Hand one record to the producer, retrying while its queue is full. `false` when the
/// producer refused it for good (e.g. larger than the broker accepts).
fn produce(
    producer: &MapProducer,
    mut record: BaseRecord<'_, [u8], [u8], Box<Slot>>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, r)) => {
                tracing::error!(error = %e, topic = r.topic, "cannot produce record");
                return Err(e);
            }
        }
    }
}

fn record_for<'a>(
    out: &Output<'a>,
    value: Option<&'a [u8]>,
    headers: Option<OwnedHeaders>,
    slot: &Slot,
) -> BaseRecord<'a, [u8], [u8], Box<Slot>> {
    let mut rec = BaseRecord::with_opaque_to(out.topic, Box::new(slot.clone()));
    if let Some(k) = out.key {
        rec = rec.key(k);
    }
    if let Some(v) = value {
        rec = rec.payload(v);
    }
    if let Some(h) = headers {
        rec = rec.headers(h);
    }
    rec
}

/// One record to produce for an input record.
struct Output<'a> {
    topic: &'a str,
    /// As read for dead letters (a null key stays null), the user key for records.
    key: Option<&'a [u8]>,
    /// As read for dead letters (a null value stays null), the encoded record otherwise.
    value: Option<Cow<'a, [u8]>>,
    headers: Option<OwnedHeaders>,
}

fn process(
    job: Job,
    route: &Route,
    progress: &Progress,
    producer: &MapProducer,
    local: &mut LocalStats,
) {
    let slot = job.slot;
    let source = Source {
        topic: slot.topic.to_string(),
        partition: slot.partition,
        offset: slot.offset,
    };
    let payload = job.payload.as_deref();
    let key = job.key.as_deref();
    let mapped = map_input(
        &route.dests,
        payload.unwrap_or_default(),
        Some(&source),
        job.timestamp_ms,
    );
    let mut outputs: Vec<Output<'_>> = Vec::new();
    match &mapped {
        Err(invalid) => {
            local.count(Outcome::Invalid(invalid.reason));
            let h = error_headers(
                job.headers.as_ref(),
                "parse",
                invalid.reason,
                &invalid.message,
                &slot,
                None,
            );
            outputs.push(Output {
                topic: &route.dlq,
                key,
                value: payload.map(Cow::Borrowed),
                headers: Some(h),
            });
        }
        Ok((event, routed)) => {
            for (i, r) in routed.iter().enumerate() {
                let name = route.dests[i].name();
                match r {
                    Routed::Records(records) => {
                        for record in records {
                            local.count(Outcome::Produced(name));
                            outputs.push(Output {
                                topic: &route.topics[i],
                                key: Some(event.user_key().as_bytes()),
                                value: Some(Cow::Owned(record.encode_to_vec())),
                                headers: None,
                            });
                        }
                    }
                    Routed::Skipped(reason) => {
                        local.count(Outcome::Skipped(name, reason));
                    }
                    Routed::Rejected(reason) => {
                        local.count(Outcome::Rejected(name, reason));
                        let msg = format!("{name} rejected the event: {reason}");
                        let h = error_headers(
                            job.headers.as_ref(),
                            "map",
                            reason,
                            &msg,
                            &slot,
                            Some(name),
                        );
                        outputs.push(Output {
                            topic: &route.dlq,
                            key,
                            value: payload.map(Cow::Borrowed),
                            headers: Some(h),
                        });
                    }
                }
            }
        }
    }
    // One mapping token was registered; it becomes one piece of work per output.
    progress.adjust(&slot, outputs.len() as i64 - 1);
    for out in outputs {
        let build = |value, headers| record_for(&out, value, headers, &slot);
        let sent = match produce(producer, build(out.value.as_deref(), out.headers.clone())) {
            // A dead letter too large for the producer (an oversized input plus headers): keep
            // the verdict and the coordinates, drop the value, rather than stop the pipeline.
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))
                if out.headers.is_some() =>
            {
                let h = out.headers.clone().map(|h| {
                    h.insert(Header {
                        key: "eventrelay.error.value_dropped",
                        value: Some("too large for the dead-letter topic"),
                    })
                });
                produce(producer, build(None, h))
            }
            other => other,
        };
        if sent.is_err() {
            // Nothing will acknowledge it: the offset must never be committed past it.
            progress.fail(&slot);
        }
    }
}
