//! Kafka plumbing shared by the stages: client configuration, topic creation, the embedded
//! in-process cluster, and the per-partition offset tracker that makes commits safe.

use crate::config::{Config, KafkaConfig};
use crate::ops::{record_lag, Health};
use anyhow::{anyhow, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::KafkaResult;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::mocking::MockCluster;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Base client config: bootstrap servers plus the user's `[kafka.properties]`.
pub fn client_config(kafka: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    with_properties(ClientConfig::new(), kafka, bootstrap)
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
    with_properties(c, kafka, bootstrap)
}

fn with_properties(mut c: ClientConfig, kafka: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    c.set("bootstrap.servers", bootstrap);
    c.set("client.id", "eventrelay");
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c
}

/// Every topic the configuration uses: input, input DLQ, and per destination its topic,
/// retry topic and DLQ.
pub fn all_topics(cfg: &Config) -> Result<Vec<String>> {
    let k = &cfg.kafka;
    let mut topics = vec![k.input_topic.clone(), k.input_dlq_topic.clone()];
    for d in cfg.destinations()? {
        let n = d.dest.name();
        topics.push(k.destination_topic(n));
        topics.push(k.retry_topic(n));
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

/// The Kafka key Segment events are partitioned by: `userId`, else `anonymousId` (best effort,
/// for producing test and demo input; `None` when the line is not an event).
pub fn segment_key(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    ["userId", "anonymousId"]
        .iter()
        .find_map(|k| match v.get(*k)? {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

/// Produce raw lines to a topic, keyed as Segment events are, and wait for every ack.
pub fn produce_lines<'a>(
    kafka: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> Result<usize> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = client_config(kafka, bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("creating producer")?;
    let mut n = 0;
    for line in lines {
        let key = segment_key(line);
        let mut rec = BaseRecord::<str, [u8]>::to(topic).payload(line);
        if let Some(k) = key.as_deref() {
            rec = rec.key(k);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    rec = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(anyhow!("producing to {topic}: {e}")),
            }
        }
        n += 1;
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing input")?;
    Ok(n)
}

/// librdkafka's mock cluster running in the process (real Kafka protocol on 127.0.0.1).
///
/// `MockCluster` is not `Send`, so it lives on its own thread for the life of this handle.
pub struct Embedded {
    bootstrap: String,
    /// Dropping it ends the thread, which drops the cluster.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Embedded {
    /// Start a one-broker cluster and create `topics` with `partitions` partitions each.
    pub fn start(topics: &[String], partitions: i32) -> Result<Embedded> {
        let (boot_tx, boot_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = boot_tx.send(Err(anyhow!("starting embedded Kafka: {e}")));
                        return;
                    }
                };
                for t in &topics {
                    if let Err(e) = cluster.create_topic(t, partitions, 1) {
                        let _ = boot_tx.send(Err(anyhow!("creating topic {t}: {e}")));
                        return;
                    }
                }
                let _ = boot_tx.send(Ok(cluster.bootstrap_servers()));
                // Keep the cluster until the handle is dropped.
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .context("spawning embedded Kafka thread")?;
        let bootstrap = boot_rx
            .recv()
            .map_err(|_| anyhow!("embedded Kafka thread died"))??;
        Ok(Embedded {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The `bootstrap.servers` string clients (ours and outside ones) connect to.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Per-partition tracking of records read but not finished, so that a partition's committed
/// offset never passes a record that is not finished (SPEC §1).
///
/// Each record is registered when read, with a count of outstanding pieces of work (one
/// "mapping" token, later replaced by its produced records). Acknowledgements may arrive in any
/// order. The committable offset is the lowest unfinished offset, or one past the highest read.
/// An epoch per assignment makes acknowledgements for a partition that was revoked and
/// re-assigned in between harmless.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// By partition: a tracker serves one consumer of one topic.
    parts: HashMap<i32, PartState>,
    pending_total: usize,
}

#[derive(Debug, Default)]
struct PartState {
    topic: Arc<str>,
    epoch: u64,
    pending: BTreeMap<i64, u32>,
    next: Option<i64>,
    committed: Option<i64>,
    /// Lowest offset whose output failed for good: commits never pass it.
    failed: Option<i64>,
}

/// Identifies one record's tracking slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Topic read from (shared: cloned for every output record).
    pub topic: Arc<str>,
    /// Partition read from.
    pub partition: i32,
    /// Offset read.
    pub offset: i64,
    /// Assignment epoch at read time.
    pub epoch: u64,
}

impl OffsetTracker {
    /// Start (or restart) tracking a partition after an assignment; returns its new epoch.
    pub fn assign(&mut self, topic: &str, partition: i32) -> u64 {
        let old = self.parts.remove(&partition).unwrap_or_default();
        self.pending_total -= old.pending.len();
        let epoch = old.epoch + 1;
        self.parts.insert(
            partition,
            PartState {
                topic: Arc::from(topic),
                epoch,
                ..Default::default()
            },
        );
        epoch
    }

    /// Stop tracking a revoked partition.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(p) = self
            .parts
            .get_mut(&partition)
            .filter(|p| &*p.topic == topic)
        {
            self.pending_total -= p.pending.len();
            p.pending.clear();
            p.next = None;
            p.committed = None;
            p.failed = None;
            p.epoch += 1;
        }
    }

    /// Register a record read with `work` outstanding pieces; `None` if the partition is not
    /// assigned (a record from before a revoke).
    pub fn register(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        work: u32,
    ) -> Option<Slot> {
        let p = self
            .parts
            .get_mut(&partition)
            .filter(|p| &*p.topic == topic)?;
        if work > 0 && p.pending.insert(offset, work).is_none() {
            self.pending_total += 1;
        }
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Some(Slot {
            topic: p.topic.clone(),
            partition,
            offset,
            epoch: p.epoch,
        })
    }

    /// Add (`delta > 0`) or finish (`delta < 0`) pieces of work for a record.
    pub fn adjust(&mut self, slot: &Slot, delta: i64) {
        let Some(p) = self.parts.get_mut(&slot.partition) else {
            return;
        };
        if p.epoch != slot.epoch {
            return;
        }
        if let Some(n) = p.pending.get_mut(&slot.offset) {
            let v = *n as i64 + delta;
            if v <= 0 {
                p.pending.remove(&slot.offset);
                self.pending_total -= 1;
            } else {
                *n = v as u32;
            }
        }
    }

    /// A piece of work failed for good (a produce that will never be acknowledged): the
    /// partition's committed offset must stay before it until the process restarts.
    pub fn fail(&mut self, slot: &Slot) {
        if let Some(p) = self.parts.get_mut(&slot.partition) {
            if p.epoch == slot.epoch {
                p.failed = Some(p.failed.map_or(slot.offset, |f| f.min(slot.offset)));
            }
        }
    }

    /// Whether any produce failed for good.
    pub fn has_failed(&self) -> bool {
        self.parts.values().any(|p| p.failed.is_some())
    }

    /// Records read and not finished, over all partitions.
    pub fn pending(&self) -> usize {
        self.pending_total
    }

    /// Records not finished in the given partitions.
    pub fn pending_in(&self, tpl: &TopicPartitionList) -> usize {
        tpl.elements()
            .iter()
            .filter_map(|e| self.parts.get(&e.partition()))
            .map(|p| p.pending.len())
            .sum()
    }

    fn committable(p: &PartState) -> Option<i64> {
        let c = match p.pending.keys().next() {
            Some(&lowest) => Some(lowest),
            None => p.next,
        };
        match (c, p.failed) {
            (Some(c), Some(f)) => Some(c.min(f)),
            (c, _) => c,
        }
    }

    /// Offsets to commit (next offset to read, Kafka's convention) for partitions whose
    /// committable offset moved since the last call (every partition with `force`, for commits
    /// that must not rely on an earlier asynchronous one); `only` restricts to some partitions.
    pub fn take_commits(
        &mut self,
        only: Option<&TopicPartitionList>,
        force: bool,
    ) -> Option<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for (partition, p) in self.parts.iter_mut() {
            let topic = &*p.topic;
            if let Some(only) = only {
                if only.find_partition(topic, *partition).is_none() {
                    continue;
                }
            }
            if let Some(c) = Self::committable(p) {
                if force || p.committed != Some(c) {
                    let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(c));
                    p.committed = Some(c);
                }
            }
        }
        (tpl.count() > 0).then_some(tpl)
    }

    /// Forget that offsets were committed (a commit failed), so the next call retries them.
    pub fn uncommit(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            if let Some(p) = self.parts.get_mut(&e.partition()) {
                p.committed = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn offsets(t: &mut OffsetTracker) -> Vec<(i32, i64)> {
        let mut v: Vec<(i32, i64)> = t
            .take_commits(None, false)
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn commits_stop_at_the_first_unfinished_record() {
        let mut t = OffsetTracker::default();
        t.assign("in", 0);
        let a = t.register("in", 0, 10, 1).unwrap();
        let b = t.register("in", 0, 11, 1).unwrap();
        let c = t.register("in", 0, 12, 1).unwrap();
        t.adjust(&b, -1);
        t.adjust(&c, -1);
        assert_eq!(offsets(&mut t), vec![(0, 10)]);
        t.adjust(&a, 1); // a produced two records instead of one token
        t.adjust(&a, -1);
        assert_eq!(offsets(&mut t), vec![]);
        t.adjust(&a, -1);
        assert_eq!(offsets(&mut t), vec![(0, 13)]);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn stale_epochs_are_ignored_and_failures_hold_the_offset() {
        let mut t = OffsetTracker::default();
        t.assign("in", 1);
        let old = t.register("in", 1, 5, 1).unwrap();
        t.revoke("in", 1);
        t.assign("in", 1);
        let new = t.register("in", 1, 7, 1).unwrap();
        t.adjust(&old, -1);
        assert_eq!(t.pending(), 1);
        t.fail(&new);
        t.adjust(&new, -1);
        assert!(t.has_failed());
        assert_eq!(offsets(&mut t), vec![(1, 7)]);
    }
}

/// The tracker plus a condition variable, shared by a consumer thread, the workers that finish
/// records, and the rebalance callback that waits for them.
#[derive(Debug, Default)]
pub struct Progress {
    tracker: Mutex<OffsetTracker>,
    changed: Condvar,
}

impl Progress {
    /// Run `f` on the tracker (a poisoned lock is recovered: the tracker has no invariants a
    /// panic elsewhere could break halfway).
    pub fn with<T>(&self, f: impl FnOnce(&mut OffsetTracker) -> T) -> T {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut t)
    }

    /// Finish (`-1`) or add work for a record and wake waiters.
    pub fn adjust(&self, slot: &Slot, delta: i64) {
        self.with(|t| t.adjust(slot, delta));
        self.changed.notify_all();
    }

    /// Mark a record's work failed for good and wake waiters.
    pub fn fail(&self, slot: &Slot) {
        self.with(|t| t.fail(slot));
        self.changed.notify_all();
    }

    /// Wait until `done(tracker)` or the timeout; returns whether it became true.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&OffsetTracker) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        while !done(&t) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            t = self
                .changed
                .wait_timeout(t, left.min(Duration::from_millis(50)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }
}

/// How a [`TrackingContext`] commits when it is transactional (the map stage's exactly-once
/// mode): the offsets go into the producer's transaction instead of a plain commit.
pub trait Transactional: Send + Sync {
    /// Flush, add `offsets` (if any) to the open transaction, commit it, begin the next.
    fn commit_with(
        &self,
        offsets: Option<TopicPartitionList>,
        group: &ConsumerGroupMetadata,
    ) -> Result<()>;
}

/// Consumer context shared by the stages: reports lag and broker state, and on revoke finishes
/// the revoked partitions' in-flight work (bounded) and commits it before letting them go.
pub struct TrackingContext {
    /// Offsets and in-flight work.
    pub progress: Arc<Progress>,
    /// Readiness.
    pub health: Arc<Health>,
    /// Consumer group, for the lag metric.
    pub group: String,
    /// How long a revoke or shutdown waits for in-flight work.
    pub drain_timeout: Duration,
    /// Set in exactly-once mode.
    pub transactional: Option<Arc<dyn Transactional>>,
    /// Set once the final commit is done: the revoke that closing the consumer triggers then
    /// neither waits nor commits again.
    pub closing: AtomicBool,
}

impl ClientContext for TrackingContext {
    fn stats(&self, statistics: Statistics) {
        record_lag(&self.group, &statistics);
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.health.broker_up.store(up, Ordering::Relaxed);
    }
}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked: finishing in-flight work");
            self.health.partitions_revoked(tpl.count());
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

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        // An asynchronous commit that failed (e.g. during a rebalance) is retried next time.
        if let Err(e) = result {
            tracing::debug!(error = %e, "commit failed; will retry");
            self.progress.with(|t| t.uncommit(offsets));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(group = %self.group, partitions = tpl.count(), "partitions assigned");
            self.health.partitions_assigned(tpl.count());
            // A partition paused before a rebalance stays paused in librdkafka until resumed,
            // even when it comes back in a new assignment: start every assignment fetching
            // (the consume loops pause again when they are over their in-flight bound).
            if let Err(e) = consumer.resume(tpl) {
                tracing::warn!(error = %e, "resuming newly assigned partitions");
            }
            self.progress.with(|t| {
                for e in tpl.elements() {
                    t.assign(e.topic(), e.partition());
                }
            });
        }
    }
}

impl TrackingContext {
    /// Wait (bounded) for the work of `only` (or everything) to finish, then commit it.
    pub fn finish_and_commit(
        &self,
        consumer: &BaseConsumer<Self>,
        only: Option<&TopicPartitionList>,
    ) -> Result<()> {
        // A transaction covers every partition, so it waits for all work.
        let wait_for = if self.transactional.is_some() {
            None
        } else {
            only
        };
        let drained = self
            .progress
            .wait_until(self.drain_timeout, |t| match wait_for {
                Some(tpl) => t.pending_in(tpl) == 0,
                None => t.pending() == 0,
            });
        if !drained {
            tracing::warn!(group = %self.group, "in-flight work did not finish in time; committing what is done");
        }
        self.commit(consumer, only, CommitMode::Sync)
    }

    /// Commit what is finished: a plain commit, or the open transaction in exactly-once mode
    /// (which needs every dispatched record finished: callers wait first).
    pub fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        only: Option<&TopicPartitionList>,
        mode: CommitMode,
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
            if let Some(tpl) = offsets {
                if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                    tracing::warn!(error = %e, "plain commit after the transaction failed");
                }
            }
            return Ok(());
        }
        let force = matches!(mode, CommitMode::Sync);
        let Some(tpl) = self.progress.with(|t| t.take_commits(only, force)) else {
            return Ok(());
        };
        if let Err(e) = consumer.commit(&tpl, mode) {
            self.progress.with(|t| t.uncommit(&tpl));
            return Err(anyhow!("committing offsets: {e}"));
        }
        Ok(())
    }
}
