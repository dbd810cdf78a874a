//! The one stage consumer both stages run: poll, register each record with the offset tracker,
//! hand it to a lane by the hash of its key, commit what is finished, pause what is backed up,
//! drain on revoke and at shutdown.
//!
//! Backpressure never blocks the poll loop. When a record's lane is full, the record waits in
//! that lane's stash (in order: a later record for the same lane queues behind it, so one
//! user's records never overtake each other) and its partition is paused; every other lane and
//! partition keeps flowing (pausing makes librdkafka drop what it fetched beyond the last
//! record polled and fetch again from there on resume). A stashed record is registered but not started: a revoke or
//! shutdown does not wait for it, and commits stop before it, so the next owner reads it again.
//! At the stage's in-flight bound the loop stops polling (librdkafka's prefetch bound then
//! stops fetching, and nothing fetched is thrown away) until half of it is finished; the whole
//! assignment pauses only when the stage asks (a destination's circuit breaker is open).

use super::tracker::{OffsetTracker, Progress, Slot};
use crate::config::KafkaConfig;
use anyhow::{anyhow, Context, Result};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the consumers tell the rest of the process about the group (readiness lives in `ops`,
/// which depends on this module, not the other way round).
pub trait GroupObserver: Send + Sync {
    /// Partitions were assigned to one of our consumers.
    fn assigned(&self, partitions: usize);
    /// Partitions were taken away.
    fn revoked(&self, partitions: usize);
    /// Whether some broker is up, from librdkafka's statistics.
    fn broker_up(&self, up: bool);
}

/// How a stage consumer commits when it is transactional (the map stage's exactly-once mode):
/// the offsets go into the producer's transaction instead of a plain commit.
pub trait Transactional: Send + Sync {
    /// Flush, add `offsets` (if any) to the open transaction, commit it, begin the next.
    fn commit_with(
        &self,
        offsets: Option<TopicPartitionList>,
        group: &ConsumerGroupMetadata,
    ) -> Result<()>;
}

/// The answer of a lane offered a job without waiting.
pub enum Offer<J> {
    /// The lane took it.
    Taken,
    /// The lane is full: here is the job back.
    Full(J),
    /// The lane has stopped.
    Closed,
}

/// The lanes a stage consumer feeds: worker threads (map stage) or async delivery lanes (send
/// stage). Offering never waits.
pub trait Lanes<J> {
    /// How many lanes.
    fn count(&self) -> usize;
    /// Offer `job` to lane `lane`.
    fn offer(&self, lane: usize, job: J) -> Offer<J>;
}

impl<J> Lanes<J> for Vec<crossbeam_channel::Sender<J>> {
    fn count(&self) -> usize {
        self.len()
    }
    fn offer(&self, lane: usize, job: J) -> Offer<J> {
        match self[lane].try_send(job) {
            Ok(()) => Offer::Taken,
            Err(crossbeam_channel::TrySendError::Full(j)) => Offer::Full(j),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Offer::Closed,
        }
    }
}

impl<J> Lanes<J> for Vec<tokio::sync::mpsc::Sender<J>> {
    fn count(&self) -> usize {
        self.len()
    }
    fn offer(&self, lane: usize, job: J) -> Offer<J> {
        match self[lane].try_send(job) {
            Ok(()) => Offer::Taken,
            Err(tokio::sync::mpsc::error::TrySendError::Full(j)) => Offer::Full(j),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }
}

/// What a stage does with the records its consumer reads.
pub trait Intake {
    /// The owned form of a record that a lane works on.
    type Job;
    /// Copy out of the borrowed message what the lane needs.
    fn job(&mut self, msg: &BorrowedMessage<'_>, slot: Slot) -> Self::Job;
    /// The time (ms since the epoch) before which the record must not be worked on (the retry
    /// topic's due time); `None` for now.
    fn due_ms(&self, _msg: &BorrowedMessage<'_>) -> Option<i64> {
        None
    }
    /// Whether to pause the whole assignment now (a destination's circuit breaker is open).
    fn hold_all(&self) -> bool {
        false
    }
}

/// What one stage consumer reads and how.
pub struct ConsumerSpec {
    /// Consumer group.
    pub group: String,
    /// This consumer's name inside the process (`map`, `send.seg`, …): the suffix of its
    /// static-membership id.
    pub member: String,
    /// Topic to read.
    pub topic: String,
    /// Records read and not finished at which the whole assignment pauses (it resumes at half).
    pub max_in_flight: usize,
    /// How often finished offsets are committed.
    pub commit_every: Duration,
    /// Extra librdkafka settings, each applied unless `[kafka.properties]` sets it.
    pub defaults: Vec<(&'static str, String)>,
    /// Exactly-once mode: commits go into this transaction.
    pub transactional: Option<Arc<dyn Transactional>>,
}

/// A group consumer with offset tracking, lanes and backpressure; see the module docs.
pub struct StageConsumer {
    consumer: BaseConsumer<TrackingContext>,
    progress: Arc<Progress>,
    topic: String,
    max_in_flight: usize,
    commit_every: Duration,
    exactly_once: bool,
}

/// How long a revoke or shutdown waits for in-flight work: half of the shorter of the group's
/// session timeout and max poll interval (librdkafka defaults: 45 s and 300 s, so 22.5 s), so a
/// draining member neither loses its session nor holds up the group's rebalance past its
/// timeout.
pub fn drain_timeout(cfg: &rdkafka::ClientConfig) -> Duration {
    let ms = |key: &str, default: u64| {
        cfg.get(key)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(default)
    };
    let bound = ms("session.timeout.ms", 45_000).min(ms("max.poll.interval.ms", 300_000));
    Duration::from_millis((bound / 2).max(1_000))
}

impl StageConsumer {
    /// Create the consumer and subscribe. `progress` is the tracker lanes (and producers'
    /// delivery reports) finish work in; a fresh one per consumer.
    pub fn new(
        kafka: &KafkaConfig,
        bootstrap: &str,
        spec: ConsumerSpec,
        observer: Arc<dyn GroupObserver>,
        progress: Arc<Progress>,
    ) -> Result<StageConsumer> {
        let mut cc = super::group_consumer_config(kafka, bootstrap, &spec.group, &spec.member);
        for (k, v) in &spec.defaults {
            if !kafka.properties.contains_key(*k) {
                cc.set(*k, v);
            }
        }
        let exactly_once = spec.transactional.is_some();
        let consumer: BaseConsumer<TrackingContext> = cc
            .create_with_context(TrackingContext {
                progress: progress.clone(),
                observer,
                group: spec.group.clone(),
                drain_timeout: drain_timeout(&cc),
                transactional: spec.transactional,
                closing: AtomicBool::new(false),
                rebalanced: AtomicBool::new(false),
            })
            .with_context(|| format!("creating consumer for group {}", spec.group))?;
        consumer
            .subscribe(&[&spec.topic])
            .with_context(|| format!("subscribing to {}", spec.topic))?;
        Ok(StageConsumer {
            consumer,
            progress,
            topic: spec.topic,
            max_in_flight: spec.max_in_flight.max(1),
            commit_every: spec.commit_every,
            exactly_once,
        })
    }

    /// Poll and dispatch until `shutdown`; then stop feeding the lanes (dropping them), wait
    /// (bounded) for work in progress, commit it and leave the group.
    pub fn run<I: Intake, L: Lanes<I::Job>>(
        self,
        mut intake: I,
        lanes: L,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut lp = Loop {
            c: &self,
            stash: (0..lanes.count()).map(|_| VecDeque::new()).collect(),
            stashed_in: HashMap::new(),
            waiting: HashMap::new(),
            paused: HashSet::new(),
            throttled: false,
            last_poll: Instant::now(),
            held: false,
            dirty: true,
            hasher: ahash::RandomState::with_seeds(1, 2, 3, 4),
            commits: 0,
        };
        let result = lp.poll_until(&mut intake, &lanes, shutdown);
        drop(lp);
        drop(lanes);
        let ctx = self.consumer.context();
        // Nothing more is dispatched: stop fetching, so the polls between final commit tries
        // wait instead of returning records that would only be thrown away.
        if let Ok(assigned) = self.consumer.assignment() {
            let _ = self.consumer.pause(&assigned);
        }
        ctx.wait_for_work(None);
        // From here a revoke (the session expiring while the coordinator is gone, the group
        // rebalancing, closing the consumer) neither waits for work again nor commits: the
        // final commit below does.
        ctx.closing.store(true, Ordering::Relaxed);
        let closing = ctx.commit(&self.consumer, None, CommitMode::Sync, true);
        if let Err(e) = &closing {
            // Nothing is lost: what was not committed is read again by the next owner.
            tracing::warn!(group = %ctx.group, error = %format!("{e:#}"),
                "final commit failed; the next owner re-reads from the last commit");
        }
        self.consumer.unsubscribe();
        let group = ctx.group.clone();
        close_bounded(self.consumer, &group);
        result
    }
}

/// How long a stopping stage waits for librdkafka to close its consumer (leave the group,
/// answer what is still queued for the coordinator).
const CLOSE_BOUND: Duration = Duration::from_secs(5);

/// Close (drop) the consumer, waiting at most `CLOSE_BOUND`. Closing waits for every commit
/// still held for the group coordinator: with the broker gone, until they expire
/// (`session.timeout.ms` after they were held, 45 s by default) or the broker is back, and a
/// request on a connection that hangs waits up to `socket.timeout.ms` (60 s). Past the bound
/// the consumer finishes closing on a thread of its own (or never, when the process exits
/// first; its revoke callback then only reports to the observer) and the stage goes on
/// stopping: the group drops this member when its session times out, and the next owner reads
/// again from the last commit that made it.
fn close_bounded(consumer: BaseConsumer<TrackingContext>, group: &str) {
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let closer = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = closed_tx.send(());
        });
    // Should the thread not start, the consumer was dropped (closed) here already.
    if closer.is_ok() {
        match closed_rx.recv_timeout(CLOSE_BOUND) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => tracing::warn!(group,
                bound = ?CLOSE_BOUND,
                "the consumer did not close in time (the group coordinator is unreachable); leaving it to close in the background"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                tracing::warn!(group, "closing the consumer panicked")
            }
        }
    }
}

/// A record waiting for its lane.
struct Stashed<J> {
    slot: Slot,
    job: J,
}

/// The poll loop's state.
struct Loop<'a, J> {
    c: &'a StageConsumer,
    /// Per lane, records waiting for room, in arrival order.
    stash: Vec<VecDeque<Stashed<J>>>,
    /// Per partition, how many of its records are stashed (paused while > 0).
    stashed_in: HashMap<i32, usize>,
    /// Per partition, the due time of the record it waits for (retry topic).
    waiting: HashMap<i32, i64>,
    /// Partitions this loop paused.
    paused: HashSet<i32>,
    /// At the in-flight bound (until back at half): the loop stops polling, so librdkafka's
    /// own prefetch bound (`queued.max.messages.kbytes`) stops fetching. Pausing instead would
    /// make librdkafka drop everything already fetched for those partitions and fetch it again
    /// on resume, which under sustained load costs more than the work itself.
    throttled: bool,
    /// When the loop last called poll (it must at least every `max.poll.interval.ms`).
    last_poll: Instant,
    /// Paused because the stage asked.
    held: bool,
    /// Pause state must be recomputed.
    dirty: bool,
    hasher: ahash::RandomState,
    /// Periodic commits made (every `RESEND_EVERY`th sends every partition again).
    commits: u32,
}

/// How long a revoke or a stop keeps trying to commit what is finished (plain commits; in
/// exactly-once mode the transaction's own 30 s timeouts apply). librdkafka's synchronous
/// commit has no time bound of its own: with the group coordinator gone (a broker outage) it
/// waits until the session times out (45 s by default), once per try, and closing the consumer
/// waits for commits still held for the coordinator: a stop during an outage took over a
/// minute.
const COMMIT_BOUND: Duration = Duration::from_secs(5);

/// Pause before a refused commit is tried again (a rebalance in progress refuses commits; the
/// poll in between lets it proceed).
const COMMIT_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Every this many periodic commits, every partition's committable offset is sent again, not
/// only those that moved. librdkafka reports nothing back for a manual asynchronous commit
/// (no commit callback is called for it), so a commit lost in a rebalance or an outage is
/// otherwise only repeated once its partition moves on.
const RESEND_EVERY: u32 = 10;

/// How often the loop retries stashed records, wakes due partitions and checks the in-flight
/// bound when nothing else happens.
const TICK: Duration = Duration::from_millis(10);

/// While throttled, the loop still polls this often (one record at most, which waits in the
/// stash like any other), far inside librdkafka's `max.poll.interval.ms`.
const THROTTLED_POLL_EVERY: Duration = Duration::from_millis(500);

/// How long a throttled loop sleeps between looks at the in-flight count. Lanes still hold
/// half the bound when it resumes (tens of milliseconds of work at full speed), so a few
/// milliseconds cost no throughput, and each look is a thread wake-up on a busy machine.
const THROTTLED_NAP: Duration = Duration::from_millis(5);

impl<J> Loop<'_, J> {
    fn poll_until<I: Intake<Job = J>, L: Lanes<J>>(
        &mut self,
        intake: &mut I,
        lanes: &L,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let consumer = &self.c.consumer;
        let ctx = consumer.context();
        let mut last_commit = Instant::now();
        let mut last_tick = Instant::now();
        let mut since_tick = 0u32;
        while !shutdown.is_cancelled() {
            if self.c.progress.has_failed() {
                return Err(anyhow!(
                    "a record could not be handed on for good; stopping so a restart re-reads it from the last commit"
                ));
            }
            // One clock read per turn (a turn per record under load).
            let now = Instant::now();
            if now.duration_since(last_commit) >= self.c.commit_every {
                last_commit = now;
                self.commit_periodically()?;
            }
            if self.dirty || since_tick >= 256 || now.duration_since(last_tick) >= TICK {
                last_tick = now;
                since_tick = 0;
                self.flush_stash(lanes)?;
                self.wake_due();
                self.apply_pauses(intake.hold_all());
            }
            if self.throttled && now.duration_since(self.last_poll) < THROTTLED_POLL_EVERY {
                std::thread::sleep(THROTTLED_NAP);
                continue;
            }
            self.last_poll = now;
            let wait = if self.throttled {
                Duration::ZERO
            } else if !self.stashed_in.is_empty() {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(50)
            };
            let polled = consumer.poll(wait);
            // Rebalance callbacks run inside poll: before this record is handled, forget the
            // pauses librdkafka undid by resuming the new assignment (a not-yet-due record just
            // polled must be able to pause its partition again and have that remembered).
            if ctx.rebalanced.swap(false, Ordering::Relaxed) {
                self.paused.clear();
                self.held = false;
                self.dirty = true;
            }
            let msg = match polled {
                None => continue,
                Some(Ok(m)) => m,
                Some(Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ))) => {
                    tracing::warn!(topic = %self.c.topic, "topic does not exist yet");
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.c.topic, error = %e, "consumer error");
                    continue;
                }
            };
            since_tick += 1;
            if let Some(due) = intake.due_ms(&msg) {
                self.wait_for(&msg, due);
                continue;
            }
            let Some(slot) = self
                .c
                .progress
                .with(|t| t.register(msg.topic(), msg.partition(), msg.offset(), 1))
            else {
                continue;
            };
            let lane = match msg.key() {
                Some(k) => (self.hasher.hash_one(k) % lanes.count() as u64) as usize,
                None => (msg.partition().unsigned_abs() as usize) % lanes.count(),
            };
            let job = intake.job(&msg, slot.clone());
            drop(msg);
            self.dispatch(lanes, lane, slot, job)?;
        }
        Ok(())
    }

    /// Hand a job to its lane, or stash it (in order) and pause its partition.
    fn dispatch<L: Lanes<J>>(&mut self, lanes: &L, lane: usize, slot: Slot, job: J) -> Result<()> {
        let job = if self.stash[lane].is_empty() {
            match lanes.offer(lane, job) {
                Offer::Taken => return Ok(()),
                Offer::Full(j) => j,
                Offer::Closed => return Err(anyhow!("lane {lane} stopped")),
            }
        } else {
            job
        };
        self.c.progress.with(|t| t.set_stashed(&slot, true));
        let n = self.stashed_in.entry(slot.partition).or_default();
        *n += 1;
        if *n == 1 {
            self.dirty = true;
        }
        self.stash[lane].push_back(Stashed { slot, job });
        Ok(())
    }

    /// Offer stashed records to their lanes again, oldest first; drop those of partitions
    /// revoked since (the next owner reads them again).
    fn flush_stash<L: Lanes<J>>(&mut self, lanes: &L) -> Result<()> {
        for lane in 0..self.stash.len() {
            while let Some(front) = self.stash[lane].pop_front() {
                let current = self.c.progress.with(|t| t.is_current(&front.slot));
                if current {
                    match lanes.offer(lane, front.job) {
                        Offer::Taken => {
                            self.c.progress.with(|t| t.set_stashed(&front.slot, false));
                        }
                        Offer::Full(job) => {
                            self.stash[lane].push_front(Stashed {
                                slot: front.slot,
                                job,
                            });
                            break;
                        }
                        Offer::Closed => return Err(anyhow!("lane {lane} stopped")),
                    }
                }
                if let Some(n) = self.stashed_in.get_mut(&front.slot.partition) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.stashed_in.remove(&front.slot.partition);
                        self.dirty = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// A record that is not due yet: pause its partition and rewind to it, so it is read again
    /// (with everything after it) once due. Nothing is registered, so commits are unaffected.
    fn wait_for(&mut self, msg: &BorrowedMessage<'_>, due: i64) {
        let consumer = &self.c.consumer;
        let tpl = partitions(&self.c.topic, [msg.partition()]);
        let _ = consumer.pause(&tpl);
        self.paused.insert(msg.partition());
        let _ = consumer.seek(
            &self.c.topic,
            msg.partition(),
            Offset::Offset(msg.offset()),
            Duration::from_secs(5),
        );
        self.waiting.insert(msg.partition(), due);
    }

    fn wake_due(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let now = crate::event::now_millis();
        let before = self.waiting.len();
        self.waiting.retain(|_, due| *due > now);
        if self.waiting.len() != before {
            self.dirty = true;
        }
    }

    /// Pause exactly what should be paused: everything at the in-flight bound or when the
    /// stage holds; otherwise the partitions with stashed records or a record not yet due.
    fn apply_pauses(&mut self, hold_all: bool) {
        let pending = self.c.progress.with(|t| t.pending());
        let max = self.c.max_in_flight;
        if pending >= max && !self.throttled {
            self.throttled = true;
        } else if self.throttled && pending <= max / 2 {
            self.throttled = false;
        }
        if hold_all != self.held {
            self.held = hold_all;
            self.dirty = true;
        }
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let consumer = &self.c.consumer;
        let Ok(assigned) = consumer.assignment() else {
            return;
        };
        let all = self.held;
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        for e in assigned.elements() {
            let p = e.partition();
            let want = all || self.stashed_in.contains_key(&p) || self.waiting.contains_key(&p);
            match (want, self.paused.contains(&p)) {
                (true, false) => pause.push(p),
                (false, true) => resume.push(p),
                _ => {}
            }
        }
        tracing::debug!(topic = %self.c.topic, ?pause, ?resume, throttled = self.throttled,
            held = self.held, stashed = ?self.stashed_in, waiting = self.waiting.len(), "pause state");
        if !pause.is_empty()
            && consumer
                .pause(&partitions(&self.c.topic, pause.iter().copied()))
                .is_ok()
        {
            self.paused.extend(pause);
        }
        if !resume.is_empty()
            && consumer
                .resume(&partitions(&self.c.topic, resume.iter().copied()))
                .is_ok()
        {
            for p in resume {
                self.paused.remove(&p);
            }
        }
    }

    fn commit_periodically(&mut self) -> Result<()> {
        let consumer = &self.c.consumer;
        let ctx = consumer.context();
        if self.c.exactly_once {
            // A transaction covers everything read: wait for it all (bounded), then commit.
            return ctx.finish_and_commit(consumer, None);
        }
        self.commits = self.commits.wrapping_add(1);
        let resend = self.commits.is_multiple_of(RESEND_EVERY);
        if let Err(e) = ctx.commit(consumer, None, CommitMode::Async, resend) {
            tracing::warn!(group = %ctx.group, error = %e, "periodic commit failed; will retry");
        }
        Ok(())
    }
}

fn partitions(topic: &str, ps: impl IntoIterator<Item = i32>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in ps {
        tpl.add_partition(topic, p);
    }
    tpl
}

/// Consumer context of the stage consumers: reports lag and broker state, and on revoke
/// finishes the revoked partitions' work in progress (bounded) and commits it before letting
/// them go.
pub struct TrackingContext {
    progress: Arc<Progress>,
    observer: Arc<dyn GroupObserver>,
    group: String,
    drain_timeout: Duration,
    transactional: Option<Arc<dyn Transactional>>,
    /// Set once a stopping consumer has waited for its work: a revoke from then on (the
    /// session expiring, a rebalance, closing the consumer) neither waits nor commits, since
    /// the stop's final commit does; and that final commit may poll between tries.
    closing: AtomicBool,
    /// Set on every assignment: the poll loop forgets the pauses it made.
    rebalanced: AtomicBool,
}

impl ClientContext for TrackingContext {
    fn stats(&self, statistics: Statistics) {
        record_lag(&self.group, &statistics);
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.observer.broker_up(up);
    }
}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked: finishing work in progress");
            self.observer.revoked(tpl.count());
            if self.closing.load(Ordering::Relaxed) {
                return;
            }
            if let Err(e) = self.finish_and_commit(consumer, Some(tpl)) {
                tracing::warn!(error = %format!("{e:#}"), "commit before revoke failed; the next owner re-reads from the last commit");
            }
            self.progress.with(|t| {
                for e in tpl.elements() {
                    t.revoke(e.topic(), e.partition());
                }
            });
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(group = %self.group, partitions = tpl.count(), "partitions assigned");
            self.observer.assigned(tpl.count());
            // A partition paused before a rebalance stays paused in librdkafka until resumed,
            // even when it comes back in a new assignment: start every assignment fetching (the
            // poll loop pauses again what it must).
            if let Err(e) = consumer.resume(tpl) {
                tracing::warn!(error = %e, "resuming newly assigned partitions");
            }
            self.progress.with(|t| {
                for e in tpl.elements() {
                    t.assign(e.topic(), e.partition());
                }
            });
            self.rebalanced.store(true, Ordering::Relaxed);
        }
    }
}

impl TrackingContext {
    /// Wait (bounded) for the work in progress of `only` (or everywhere) to finish, then commit.
    fn finish_and_commit(
        &self,
        consumer: &BaseConsumer<Self>,
        only: Option<&TopicPartitionList>,
    ) -> Result<()> {
        self.wait_for_work(only);
        self.commit(consumer, only, CommitMode::Sync, true)
    }

    /// Wait, up to the drain bound, for the work in progress of `only` (or everywhere) to finish.
    fn wait_for_work(&self, only: Option<&TopicPartitionList>) {
        // A transaction covers every partition, so it waits for all work.
        let wait_for = if self.transactional.is_some() {
            None
        } else {
            only
        };
        let drained = self
            .progress
            .wait_until(self.drain_timeout, |t: &OffsetTracker| {
                t.in_progress_in(wait_for) == 0
            });
        if !drained {
            tracing::warn!(group = %self.group, timeout = ?self.drain_timeout,
                "work in progress did not finish in time; committing what is done");
        }
    }

    /// Commit what is finished: a plain commit (`Sync` ones bounded by `COMMIT_BOUND`), or the
    /// open transaction in exactly-once mode (which needs every dispatched record finished:
    /// callers wait first). `all` sends every partition's offset, not only those that moved
    /// since the last commit.
    fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        only: Option<&TopicPartitionList>,
        mode: CommitMode,
        all: bool,
    ) -> Result<()> {
        if let Some(txn) = &self.transactional {
            let meta = consumer
                .group_metadata()
                .ok_or_else(|| anyhow!("no consumer group metadata"))?;
            let offsets = self.progress.with(|t| t.take_commits(None, false));
            txn.commit_with(offsets.clone(), &meta)?;
            // The offsets are committed inside the transaction. Committing them once more the
            // plain way changes nothing on Kafka, and is what makes a restart resume from them
            // on brokers whose TxnOffsetCommit does not store offsets (librdkafka's mock
            // cluster: a crash between the two calls there repeats one transaction).
            // (The coordinator has just answered the transaction's offsets, so this commit is
            // not first checked the way `commit_bounded` checks: reading offsets back right
            // after a transaction can be answered "unstable" and retried for a while.)
            if let Some(tpl) = offsets {
                if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                    tracing::warn!(error = %e, "plain commit after the transaction failed");
                }
            }
            return Ok(());
        }
        let Some(tpl) = self.progress.with(|t| t.take_commits(only, all)) else {
            return Ok(());
        };
        let sent = match mode {
            CommitMode::Async => consumer
                .commit(&tpl, mode)
                .map_err(|e| anyhow!("committing offsets: {e}")),
            // Only the stop's final commit may poll between tries: it runs on the poll loop's
            // thread after the loop (nothing polled then is dispatched or committed past). A
            // revoke callback must not poll, and neither may the loop itself mid-stream: a
            // record polled there and dropped would be committed past.
            CommitMode::Sync => {
                commit_bounded(consumer, &tpl, self.closing.load(Ordering::Relaxed))
            }
        };
        if sent.is_err() {
            self.progress.with(|t| t.uncommit(&tpl));
        }
        sent
    }
}

/// A synchronous commit of `tpl` that gives up after `COMMIT_BOUND`. Reading the group's
/// committed offsets first (a request librdkafka bounds by a timeout) finds out whether the
/// coordinator answers at all, so the commit itself is only sent when it can be answered, and
/// nothing is left held for the coordinator to hold up closing the consumer. (Should the
/// coordinator go in the moment between the two, the commit waits as librdkafka's does: the
/// bound is for an outage, not for that race.) With `retry`, a
/// refused commit (a rebalance in progress) is tried again within the bound after polling the
/// consumer to let the rebalance proceed, which throws away any record that poll returns.
fn commit_bounded<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
    retry: bool,
) -> Result<()> {
    let deadline = Instant::now() + COMMIT_BOUND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = consumer.committed_offsets(tpl.clone(), left) {
            return Err(anyhow!(
                "reading the group's committed offsets (is the coordinator there?): {e}"
            ));
        }
        match consumer.commit(tpl, CommitMode::Sync) {
            Ok(()) => return Ok(()),
            Err(e) if retry && Instant::now() + COMMIT_RETRY_PAUSE < deadline => {
                tracing::debug!(error = %e, "commit refused; trying again");
                let _ = consumer.poll(COMMIT_RETRY_PAUSE);
            }
            Err(e) => return Err(anyhow!("committing offsets: {e}")),
        }
    }
}

/// Record consumer lag per partition from a librdkafka statistics report.
fn record_lag(group: &str, stats: &Statistics) {
    for (topic, t) in &stats.topics {
        for (p, part) in &t.partitions {
            if *p < 0 || part.consumer_lag < 0 {
                continue;
            }
            metrics::gauge!("eventrelay_consumer_lag",
                "group" => group.to_string(), "topic" => topic.clone(), "partition" => p.to_string())
            .set(part.consumer_lag as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_timeout_follows_the_group_timeouts() {
        let mut c = rdkafka::ClientConfig::new();
        assert_eq!(drain_timeout(&c), Duration::from_millis(22_500));
        c.set("session.timeout.ms", "6000");
        assert_eq!(drain_timeout(&c), Duration::from_secs(3));
        c.set("max.poll.interval.ms", "1000");
        assert_eq!(drain_timeout(&c), Duration::from_secs(1));
    }
}
