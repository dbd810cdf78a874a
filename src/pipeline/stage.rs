//! The map stage on Kafka: consumer group → worker pool → `dest.<destination>` topics.
//!
//! Threads, and why:
//! - the **consumer thread** (the caller's) runs the [`StageConsumer`]: it polls the input
//!   topic, registers each record with the offset tracker and hands it to a worker by the hash
//!   of its key, so one user's events are mapped and produced in input order; it commits what
//!   is finished and pauses what is backed up, so memory stays flat;
//! - **workers** parse, map and hand records to the producer (CPU work, one thread per core);
//! - the **producer's thread** runs delivery callbacks, which finish work in the tracker.
//!
//! Input offsets are committed only when every record produced from them, and from every earlier
//! offset of the partition, is acknowledged (acks=all, idempotent producer). With
//! `kafka.exactly_once` the producer is transactional and offsets are committed inside the
//! transaction instead.

use crate::config::Config;
use crate::destinations::{Destination, Encoded, RecordBuf};
use crate::event::now_millis;
use crate::kafka::headers::{self, DeadLetter, ErrorStage, Origin};
use crate::kafka::{
    producer_config, ConsumerSpec, GroupObserver, Intake, Progress, Slot, StageConsumer,
    Transactional,
};
use crate::pipeline::dedup::Dedup;
use crate::pipeline::map_input_encoded;
use crate::record::Source;
use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What became of one event at one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DestOutcome {
    /// A record was produced to the destination topic.
    Produced,
    /// Normal traffic the destination does not take, with the reason.
    Skipped(&'static str),
    /// A data problem (sent to the input DLQ), with the reason.
    Rejected(&'static str),
}

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
    outcomes: Mutex<BTreeMap<(&'static str, DestOutcome), u64>>,
}

impl MapStats {
    /// A snapshot of the counts per (destination, outcome).
    pub fn outcomes(&self) -> BTreeMap<(&'static str, DestOutcome), u64> {
        self.outcomes.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Records produced for `dest`.
    pub fn produced(&self, dest: &str) -> u64 {
        self.sum(dest, |o| matches!(o, DestOutcome::Produced))
    }

    /// Events `dest` skipped, any reason.
    pub fn skipped(&self, dest: &str) -> u64 {
        self.sum(dest, |o| matches!(o, DestOutcome::Skipped(_)))
    }

    /// Events `dest` rejected, any reason.
    pub fn rejected(&self, dest: &str) -> u64 {
        self.sum(dest, |o| matches!(o, DestOutcome::Rejected(_)))
    }

    fn sum(&self, dest: &str, f: impl Fn(&DestOutcome) -> bool) -> u64 {
        self.outcomes()
            .iter()
            .filter(|((d, o), _)| *d == dest && f(o))
            .map(|(_, n)| *n)
            .sum()
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
        // Stashed records are not in this transaction: their offsets are not committed (commits
        // stop before them), so only work handed on and unfinished blocks the commit.
        if self.progress.with(|t| t.in_progress_in(None)) > 0 {
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

/// The map stage's side of the stage consumer: copy each input record into a [`Job`].
struct MapIntake {
    stats: Arc<MapStats>,
    consumed: metrics::Counter,
}

impl Intake for MapIntake {
    type Job = Job;

    fn job(&mut self, msg: &BorrowedMessage<'_>, slot: Slot) -> Job {
        self.stats.consumed.fetch_add(1, Ordering::Relaxed);
        self.consumed.increment(1);
        Job {
            slot,
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            headers: msg.headers().map(|h| h.detach()),
            timestamp_ms: msg.timestamp().to_millis().unwrap_or_else(now_millis),
        }
    }
}

/// Topic names and stage settings the workers need.
struct Route {
    dests: Vec<Arc<dyn Destination>>,
    topics: Vec<String>,
    dlq: String,
    dedup_window_ms: i64,
    dedup_per_worker: usize,
    /// Set once the consumer has drained and committed: work still waiting for room in the
    /// producer's queue (the broker gone) is given up instead of waited for, since nothing
    /// after that commit is committed by this process, and the workers can end.
    abandon: std::sync::atomic::AtomicBool,
}

/// How long a stopping map stage waits for its producer's last acknowledgements.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// Skip reason of a messageId seen at an earlier offset within the window.
pub const DUPLICATE: &str = "duplicate";

/// Run the map stage until `shutdown`; then drain, commit and return.
pub fn run_map_stage(
    cfg: &Config,
    bootstrap: &str,
    shutdown: CancellationToken,
    stats: Arc<MapStats>,
    observer: Arc<dyn GroupObserver>,
) -> Result<()> {
    let k = &cfg.kafka;
    let route = Arc::new(route(cfg)?);
    // The consumer owns the tracker; the producer's delivery reports finish work in it.
    let progress = Arc::new(Progress::default());
    let producer = start_producer(cfg, bootstrap, &stats, &progress)?;
    let consumer = StageConsumer::new(
        k,
        bootstrap,
        ConsumerSpec {
            group: k.group_id.clone(),
            member: "map".into(),
            topic: k.input_topic.clone(),
            max_in_flight: cfg.map.max_in_flight,
            commit_every: Duration::from_millis(if k.exactly_once { 100 } else { 500 }),
            defaults: Vec::new(),
            transactional: k.exactly_once.then(|| {
                Arc::new(Txn {
                    producer: producer.clone(),
                    progress: progress.clone(),
                }) as Arc<dyn Transactional>
            }),
        },
        observer,
        progress.clone(),
    )?;
    tracing::info!(topic = %k.input_topic, group = %k.group_id, workers = cfg.map.worker_count(),
        exactly_once = k.exactly_once, "map stage started");
    let (lanes, workers) = start_workers(cfg, &route, &progress, &producer, &stats)?;
    // Series that alerts and the dashboard divide by exist from the start at 0.
    for d in &route.dests {
        metrics::counter!("eventrelay_records_produced_total", "destination" => d.name())
            .increment(0);
    }
    let intake = MapIntake {
        stats: stats.clone(),
        consumed: metrics::counter!("eventrelay_events_consumed_total", "topic" => k.input_topic.clone()),
    };
    // Returns after the lanes are closed, the work in progress finished (bounded) and committed.
    let result = consumer.run(intake, lanes, &shutdown);
    route
        .abandon
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    // Offsets are committed by now only up to outputs the broker acknowledged, so this flush
    // is a courtesy (fewer outputs written again after a restart), not a guarantee: bounded
    // short, since with the broker gone it can only wait.
    let _ = producer.flush(FINAL_FLUSH);
    tracing::info!("map stage stopped");
    result
}

fn route(cfg: &Config) -> Result<Route> {
    let dests: Vec<Arc<dyn Destination>> =
        cfg.destinations()?.into_iter().map(|d| d.dest).collect();
    Ok(Route {
        topics: dests
            .iter()
            .map(|d| cfg.kafka.destination_topic(d.name()))
            .collect(),
        dests,
        dlq: cfg.kafka.input_dlq_topic.clone(),
        dedup_window_ms: (cfg.map.dedup_window_secs.saturating_mul(1000)).min(i64::MAX as u64)
            as i64,
        dedup_per_worker: if cfg.map.dedup_window_secs == 0 {
            0
        } else {
            cfg.map.dedup_max_entries / cfg.map.worker_count().max(1)
        },
        abandon: std::sync::atomic::AtomicBool::new(false),
    })
}

/// The stage's producer: the shared preset with larger batches, transactional in exactly-once
/// mode (one transactional id per process).
fn start_producer(
    cfg: &Config,
    bootstrap: &str,
    stats: &Arc<MapStats>,
    progress: &Arc<Progress>,
) -> Result<Arc<MapProducer>> {
    let k = &cfg.kafka;
    let mut pc = producer_config(k, bootstrap);
    for (key, v) in [
        ("batch.num.messages", "10000"),
        ("queue.buffering.max.messages", "200000"),
    ] {
        if !k.properties.contains_key(key) {
            pc.set(key, v);
        }
    }
    if k.exactly_once {
        pc.set(
            "transactional.id",
            format!("{}-map-{}", k.group_id, crate::kafka::process_id(k)),
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
    Ok(producer)
}

type Workers = (Vec<Sender<Job>>, Vec<std::thread::JoinHandle<()>>);

/// One worker thread per core, each with a bounded queue (the stage consumer's lanes).
fn start_workers(
    cfg: &Config,
    route: &Arc<Route>,
    progress: &Arc<Progress>,
    producer: &Arc<MapProducer>,
    stats: &Arc<MapStats>,
) -> Result<Workers> {
    let workers = cfg.map.worker_count();
    let per_worker = (cfg.map.max_in_flight / workers).max(64);
    let mut senders = Vec::with_capacity(workers);
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
    Ok((senders, handles))
}

/// What happened to one event at one destination, or to an input that is not an event.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    Dest(&'static str, DestOutcome),
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
                match o {
                    Outcome::Dest(d, out) => {
                        match out {
                            DestOutcome::Produced => metrics::counter!("eventrelay_records_produced_total", "destination" => d),
                            DestOutcome::Skipped(r) => metrics::counter!("eventrelay_events_skipped_total", "destination" => d, "reason" => r),
                            DestOutcome::Rejected(r) => metrics::counter!("eventrelay_events_rejected_total", "destination" => d, "reason" => r),
                        }
                        .increment(n);
                        *m.entry((d, out)).or_default() += n;
                    }
                    Outcome::Invalid(r) => {
                        metrics::counter!("eventrelay_events_invalid_total", "reason" => r)
                            .increment(n);
                        stats.invalid.fetch_add(n, Ordering::Relaxed);
                    }
                }
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
    let mut scratch = Scratch {
        dedup: Dedup::new(route.dedup_window_ms, route.dedup_per_worker),
        records: RecordBuf::new(),
        source: Source::default(),
    };
    loop {
        let job = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(j) => j,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                local.flush(stats);
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        process(job, route, progress, producer, &mut local, &mut scratch);
        local.since_flush += 1;
        if local.since_flush >= 1024 || rx.is_empty() {
            local.flush(stats);
        }
    }
    local.flush(stats);
}

/// Hand one record to the producer, retrying while its queue is full (the broker slow or
/// gone: backpressure) unless the stage has `abandon`ed its remaining work. An error when the
/// producer refused it for good (e.g. larger than the broker accepts) or it was abandoned.
fn produce(
    producer: &MapProducer,
    mut record: BaseRecord<'_, [u8], [u8], Box<Slot>>,
    abandon: &std::sync::atomic::AtomicBool,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                if abandon.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
                }
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

/// A worker's state reused from event to event: its de-duplication table, the buffer records
/// are encoded into, and the source coordinates.
struct Scratch {
    dedup: Dedup,
    records: RecordBuf,
    source: Source,
}

/// Map one input record and hand its outputs to the producer.
fn process(
    job: Job,
    route: &Route,
    progress: &Progress,
    producer: &MapProducer,
    local: &mut LocalStats,
    scratch: &mut Scratch,
) {
    let slot = &job.slot;
    let Scratch {
        dedup,
        records,
        source,
    } = scratch;
    // The source coordinates every record carries; the topic string is copied only when it
    // changes, not once per event.
    if source.topic != *slot.topic {
        source.topic = slot.topic.to_string();
    }
    source.partition = slot.partition;
    source.offset = slot.offset;
    let mapped = map_input_encoded(
        &route.dests,
        job.payload.as_deref().unwrap_or_default(),
        Some(source),
        job.timestamp_ms,
        records,
    );
    let outputs = match &mapped {
        Err(invalid) => {
            local.count(Outcome::Invalid(invalid.reason));
            vec![dead_letter(
                &job,
                route,
                ErrorStage::Parse,
                invalid.reason,
                &invalid.message,
                None,
            )]
        }
        Ok(event)
            if dedup.is_duplicate(slot.partition, slot.offset, &event.message_id, now_millis()) =>
        {
            for d in &route.dests {
                local.count(Outcome::Dest(d.name(), DestOutcome::Skipped(DUPLICATE)));
            }
            Vec::new()
        }
        Ok(event) => destination_outputs(&job, route, event.user_key().as_bytes(), records, local),
    };
    // One mapping token was registered; it becomes one piece of work per output.
    progress.adjust(slot, outputs.len() as i64 - 1);
    produce_all(outputs, slot, producer, progress, &route.abandon);
}

/// Per destination: its record, or a dead letter for a reject; skips are only counted.
fn destination_outputs<'a>(
    job: &'a Job,
    route: &'a Route,
    user_key: &'a [u8],
    records: &'a RecordBuf,
    local: &mut LocalStats,
) -> Vec<Output<'a>> {
    let mut outputs = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let name = route.dests[i].name();
        match r {
            Encoded::Record(record) => {
                local.count(Outcome::Dest(name, DestOutcome::Produced));
                outputs.push(Output {
                    topic: &route.topics[i],
                    key: Some(user_key),
                    value: Some(Cow::Borrowed(record)),
                    headers: None,
                });
            }
            Encoded::Skipped(reason) => {
                local.count(Outcome::Dest(name, DestOutcome::Skipped(reason)));
            }
            Encoded::Rejected(reason) => {
                local.count(Outcome::Dest(name, DestOutcome::Rejected(reason)));
                let msg = format!("{name} rejected the event: {reason}");
                outputs.push(dead_letter(
                    job,
                    route,
                    ErrorStage::Map,
                    reason,
                    &msg,
                    Some(name),
                ));
            }
        }
    }
    outputs
}

/// The input record as read (key, value, headers) for the input dead-letter topic, with the
/// verdict in the `eventrelay.error.*` headers.
fn dead_letter<'a>(
    job: &'a Job,
    route: &'a Route,
    stage: ErrorStage,
    reason: &str,
    message: &str,
    destination: Option<&str>,
) -> Output<'a> {
    let origin = Origin {
        topic: job.slot.topic.to_string(),
        partition: job.slot.partition,
        offset: job.slot.offset,
    };
    let h = headers::dead_letter(
        job.headers.as_ref(),
        &DeadLetter {
            stage,
            reason,
            message,
            origin: &origin,
            destination,
            send: None,
        },
    );
    Output {
        topic: &route.dlq,
        key: job.key.as_deref(),
        value: job.payload.as_deref().map(Cow::Borrowed),
        headers: Some(h),
    }
}

/// Hand every output to the producer; one that cannot be produced at all holds the input
/// offset back for good (the stage then stops and a restart re-reads it).
fn produce_all(
    outputs: Vec<Output<'_>>,
    slot: &Slot,
    producer: &MapProducer,
    progress: &Progress,
    abandon: &std::sync::atomic::AtomicBool,
) {
    for out in outputs {
        let build = |value, headers| record_for(&out, value, headers, slot);
        let sent = match produce(
            producer,
            build(out.value.as_deref(), out.headers.clone()),
            abandon,
        ) {
            // A dead letter too large for the producer (an oversized input plus headers): keep
            // the verdict and the coordinates, drop the value, rather than stop the pipeline.
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))
                if out.headers.is_some() =>
            {
                let h = out.headers.clone().map(headers::value_dropped);
                produce(producer, build(None, h), abandon)
            }
            other => other,
        };
        if sent.is_err() {
            // Nothing will acknowledge it: the offset must never be committed past it.
            progress.fail(slot);
        }
    }
}
