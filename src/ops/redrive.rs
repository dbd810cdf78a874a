//! `eventrelay redrive`: copy dead letters back to the topic they came from (their
//! `eventrelay.error.topic` header), after the cause was fixed. Filters by reason and time, with
//! a limit; a dry run unless `--execute`. The copies keep key, value and the original headers,
//! drop the `eventrelay.error.*` and `eventrelay.retry.*` headers (a redriven record starts a
//! fresh retry window), and carry `eventrelay.redrive.count`.
//!
//! # Progress: exactly the dead letters that were copied
//!
//! Progress is remembered in the consumer group `<group_id>.redrive.<dlq topic>`, one
//! [`Progress`] per partition: the committed offset is the first dead letter *not* copied yet
//! (everything below it was), and the commit's metadata string lists the offsets above it that
//! were copied. So a run copies each dead letter at most once, and a dead letter that a run
//! left alone, because `--reason` or `--since` filtered it out, `--limit` stopped the run
//! before it, or it had no target topic, stays reachable by a later run with other filters:
//! after `--reason http_400 --execute`, `--reason permanent_error` still finds its dead letters.
//! Why not one offset per partition (the old design): it commits past what the filters skipped.
//! Why not "commit up to the first dead letter not copied" alone: the next run would copy again
//! the ones behind it. Why not a group per reason: `--since` and `--limit` skip too, and a run
//! without `--reason` could not tell which reasons' groups exist (not every broker lists groups).
//!
//! The list is kept short ([`MAX_RANGES`] runs of consecutive offsets per partition, at most
//! [`MAX_METADATA`] bytes, under the brokers' 4 KiB `offset.metadata.max.bytes`): a run that would
//! need more leaves the rest of that partition for a later run and says so. It fills only when
//! many interleaved dead letters are repeatedly left behind; redriving or draining those (or
//! `--from-beginning`) empties it again. `--from-beginning` ignores progress when choosing
//! (copies again what was copied) and adds to it what it copies.
//!
//! # Commit after acknowledgement
//!
//! A copy counts as done only when the broker acknowledged it (`acks=all`, idempotent
//! producer): progress is committed after every copy's delivery report arrived, and records
//! only the acknowledged ones. A copy that failed stays uncopied in progress, and the run
//! fails, so running it again retries exactly those.

use crate::config::Config;
use crate::kafka::client_config;
use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::headers::REDRIVE_COUNT;
use crate::headers::{ERROR_PREFIX, ERROR_REASON, ERROR_TOPIC, RETRY_PREFIX};

/// At most this many runs of consecutive copied offsets are remembered above a partition's
/// committed offset (each at most ~40 bytes of commit metadata).
pub const MAX_RANGES: usize = 64;
/// Longest commit metadata written: under the 4 KiB brokers accept by default
/// (`offset.metadata.max.bytes`).
pub const MAX_METADATA: usize = 3_000;
/// Version tag of the progress metadata, so a later format can tell this one apart.
const PROGRESS_TAG: &str = "redrive.v1;";
/// How long to wait for broker answers (metadata, offsets, commits).
const TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for the copies' acknowledgements.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Stop reading when nothing new came for this long (some brokers' watermarks lag).
const QUIET: Duration = Duration::from_secs(3);

/// What `redrive` was asked to do.
pub struct RedriveArgs<'a> {
    /// Dead-letter topic to read.
    pub from: &'a str,
    /// Only dead letters with this `eventrelay.error.reason`.
    pub reason: Option<&'a str>,
    /// Only dead letters written at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// At most this many copies.
    pub limit: Option<usize>,
    /// Choose regardless of earlier redrives (copy again what was copied).
    pub from_beginning: bool,
    /// Copy (otherwise only report).
    pub execute: bool,
}

/// The headers of a redriven copy: original headers without `eventrelay.error.*` and without
/// an older redrive count, plus the new count.
pub fn redrive_headers(h: Option<&OwnedHeaders>) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    let mut count = 0u32;
    if let Some(h) = h {
        for hd in h.iter() {
            if hd.key == REDRIVE_COUNT {
                count = hd
                    .value
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or(0);
                continue;
            }
            if hd.key.starts_with(ERROR_PREFIX) || hd.key.starts_with(RETRY_PREFIX) {
                continue;
            }
            out = out.insert(Header {
                key: hd.key,
                value: hd.value,
            });
        }
    }
    let n = (count + 1).to_string();
    out.insert(Header {
        key: REDRIVE_COUNT,
        value: Some(n.as_bytes()),
    })
}

fn header<'a>(h: Option<&'a OwnedHeaders>, name: &str) -> Option<&'a str> {
    h?.iter()
        .filter(|hd| hd.key == name)
        .last()
        .and_then(|hd| std::str::from_utf8(hd.value?).ok())
}

/// Which dead letters of one partition were copied: every offset below `next`, and the
/// half-open ranges in `copied` (sorted, disjoint, not touching, all above `next`).
///
/// Stored as the group's committed offset (`next`) plus its metadata ([`Progress::encode`]), so
/// progress lives in Kafka beside the dead letters, with no other store to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    next: i64,
    copied: Vec<(i64, i64)>,
}

impl Progress {
    /// Nothing copied at or above `next` (a partition never redriven starts at its log start).
    pub fn new(next: i64) -> Progress {
        Progress {
            next,
            copied: Vec::new(),
        }
    }

    /// The committed offset: the first dead letter not copied.
    pub fn next(&self) -> i64 {
        self.next
    }

    /// Whether the dead letter at `offset` was copied.
    pub fn is_copied(&self, offset: i64) -> bool {
        offset < self.next || self.copied.iter().any(|(s, e)| *s <= offset && offset < *e)
    }

    /// How many offsets in `low..high` were copied. `eventrelay status` subtracts it from a
    /// dead-letter topic's depth, since a redrive copies and never deletes: without it a
    /// redriven DLQ would look exactly as full as before.
    pub fn copied_in(&self, low: i64, high: i64) -> i64 {
        let below = (self.next.min(high) - low).max(0);
        below
            + self
                .copied
                .iter()
                .map(|(s, e)| ((*e).min(high) - (*s).max(low)).max(0))
                .sum::<i64>()
    }

    /// Whether `offset` can be recorded without remembering more than [`MAX_RANGES`] ranges.
    pub fn has_room_for(&self, offset: i64) -> bool {
        let mut p = self.clone();
        p.record(offset);
        p.copied.len() <= MAX_RANGES
    }

    /// Record the dead letter at `offset` as copied (in any order: acknowledgements arrive out
    /// of order), advancing `next` over what became contiguous.
    pub fn record(&mut self, offset: i64) {
        if self.is_copied(offset) {
            return;
        }
        let at = self.copied.partition_point(|(s, _)| *s < offset);
        self.copied.insert(at, (offset, offset + 1));
        self.normalize();
    }

    /// Forget what lies below the log start `low` (retention deleted it): nothing there can be
    /// read again.
    pub fn clamp_to(&mut self, low: i64) {
        if self.next < low {
            self.next = low;
            self.normalize();
        }
    }

    fn normalize(&mut self) {
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(self.copied.len());
        for &(s, e) in &self.copied {
            let (s, e) = (s.max(self.next), e.max(self.next));
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ if s < e => merged.push((s, e)),
                _ => {}
            }
        }
        if let Some(&(s, e)) = merged.first() {
            if s <= self.next {
                self.next = e;
                merged.remove(0);
            }
        }
        self.copied = merged;
    }

    /// The commit metadata: `redrive.v1;` then `gap+len` per range, the gap counted from the end
    /// of the previous range (from `next` for the first), so it stays short.
    ///
    /// At most [`MAX_METADATA`] bytes: ranges that would not fit (possible only when failed
    /// copies split the ranges a run planned) are left out, so those copies may be made again
    /// by a later run (a duplicate, never a loss) rather than the commit being refused.
    pub fn encode(&self) -> String {
        let mut out = String::from(PROGRESS_TAG);
        let mut prev = self.next;
        for (i, (s, e)) in self.copied.iter().enumerate() {
            let item = format!("{}{}+{}", if i > 0 { "," } else { "" }, s - prev, e - s);
            if out.len() + item.len() > MAX_METADATA {
                tracing::warn!(
                    dropped = self.copied.len() - i,
                    "redrive progress too long; some copied ranges are forgotten and may be copied again"
                );
                break;
            }
            out.push_str(&item);
            prev = *e;
        }
        out
    }

    /// Read progress back from a committed offset and its metadata. Metadata that is not ours
    /// (or damaged) keeps only `next`: the dead letters above it may then be copied again, which
    /// is a duplicate, never a loss.
    pub fn decode(next: i64, metadata: &str) -> Progress {
        let mut p = Progress::new(next);
        let Some(list) = metadata.strip_prefix(PROGRESS_TAG) else {
            return p;
        };
        let mut prev = next;
        for item in list.split(',').filter(|s| !s.is_empty()) {
            let parsed = item
                .split_once('+')
                .and_then(|(g, l)| Some((g.parse::<i64>().ok()?, l.parse::<i64>().ok()?)));
            let Some((gap, len)) = parsed.filter(|(g, l)| *g >= 0 && *l > 0) else {
                tracing::warn!(
                    metadata,
                    "unreadable redrive progress; keeping the offset only"
                );
                return Progress::new(next);
            };
            let (Some(s), Some(e)) = (
                prev.checked_add(gap),
                prev.checked_add(gap).and_then(|s| s.checked_add(len)),
            ) else {
                return Progress::new(next);
            };
            p.copied.push((s, e));
            prev = e;
        }
        p.normalize();
        p
    }
}

/// One dead letter as the filter sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// When it was written (ms since the epoch), if the broker says.
    pub timestamp_ms: Option<i64>,
    /// Its `eventrelay.error.reason`.
    pub reason: Option<String>,
    /// Its `eventrelay.error.topic`: where a copy goes.
    pub target: Option<String>,
}

/// What the filter decided for one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Copy it.
    Copy,
    /// An earlier redrive copied it.
    AlreadyCopied,
    /// `--reason` names another reason.
    OtherReason,
    /// Written before `--since`.
    BeforeSince,
    /// No `eventrelay.error.topic` header: nowhere to copy it to.
    NoTargetTopic,
    /// Progress of its partition cannot remember more copies in this run ([`MAX_RANGES`]).
    ProgressFull,
}

/// Filter step: whether this dead letter is copied. Pure, so every rule is unit-tested; the
/// order matters only for the report (a dead letter is counted under its first reason to stay).
pub fn decide(dl: &DeadLetter, a: &RedriveArgs<'_>, progress: &Progress) -> Decision {
    if !a.from_beginning && progress.is_copied(dl.offset) {
        return Decision::AlreadyCopied;
    }
    if a.reason.is_some_and(|r| dl.reason.as_deref() != Some(r)) {
        return Decision::OtherReason;
    }
    if a.since_ms
        .is_some_and(|since| dl.timestamp_ms.is_none_or(|t| t < since))
    {
        return Decision::BeforeSince;
    }
    if dl.target.is_none() {
        return Decision::NoTargetTopic;
    }
    if !progress.has_room_for(dl.offset) {
        return Decision::ProgressFull;
    }
    Decision::Copy
}

/// One row of the report: copies per target topic and reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    /// Topic the copies go to.
    pub target_topic: String,
    /// Their `eventrelay.error.reason` (empty when absent).
    pub reason: String,
    /// How many.
    pub records: usize,
}

/// What a redrive did (or, in a dry run, would do); printed as a table or as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// Dead-letter topic read.
    pub from: String,
    /// Whether copies were made (false: dry run).
    pub execute: bool,
    /// Dead letters copied (or that would be).
    pub copied: usize,
    /// `copied` by target topic and reason.
    pub rows: Vec<ReportRow>,
    /// Dead letters read and left alone, by why (they stay reachable by a later run, except
    /// `already_copied`).
    pub left: BTreeMap<String, usize>,
}

impl RedriveReport {
    /// The human table: one row per target topic and reason, then a summary line.
    pub fn to_text(&self) -> String {
        let mut out = format!("{:<28} {:<24} {:>8}\n", "TARGET TOPIC", "REASON", "RECORDS");
        for r in &self.rows {
            out.push_str(&format!(
                "{:<28} {:<24} {:>8}\n",
                r.target_topic, r.reason, r.records
            ));
        }
        let left: Vec<String> = self.left.iter().map(|(k, n)| format!("{n} {k}")).collect();
        if !left.is_empty() {
            out.push_str(&format!("left alone: {}\n", left.join(", ")));
        }
        if self.execute {
            out.push_str(&format!(
                "copied {} dead letter(s) back to their topics\n",
                self.copied
            ));
        } else {
            out.push_str(&format!(
                "dry run: {} dead letter(s) would be copied (add --execute)\n",
                self.copied
            ));
        }
        out
    }
}

/// Redrive: scan, filter, copy, wait for the acknowledgements, commit progress. Returns the
/// report; fails (after committing what was acknowledged) when a copy was not.
pub fn run(cfg: &Config, a: &RedriveArgs<'_>) -> Result<RedriveReport> {
    let bootstrap = cfg
        .kafka
        .bootstrap_servers
        .as_deref()
        .ok_or_else(|| anyhow!("redrive needs kafka.bootstrap_servers"))?;
    let group = format!("{}.redrive.{}", cfg.kafka.group_id, a.from);
    let mut scan = Scan::open(cfg, bootstrap, &group, a)?;
    let copier = if a.execute {
        Some(Copier::new(cfg, bootstrap)?)
    } else {
        None
    };
    let mut report = RedriveReport {
        from: a.from.to_string(),
        execute: a.execute,
        copied: 0,
        rows: Vec::new(),
        left: BTreeMap::new(),
    };
    let mut by_target: BTreeMap<(String, String), usize> = BTreeMap::new();
    // What this run chose, so the limit on remembered ranges counts the choices not yet acked.
    let mut planned = scan.progress.clone();
    while a.limit.is_none_or(|l| report.copied < l) {
        let Some(msg) = scan.next_dead_letter()? else {
            break;
        };
        let headers = msg.headers().map(|h| h.detach());
        let dl = DeadLetter {
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            reason: header(headers.as_ref(), ERROR_REASON).map(str::to_string),
            target: header(headers.as_ref(), ERROR_TOPIC).map(str::to_string),
        };
        let progress = planned.entry(dl.partition).or_default();
        let decision = decide(&dl, a, progress);
        if decision != Decision::Copy {
            if decision == Decision::NoTargetTopic {
                tracing::warn!(
                    partition = dl.partition,
                    offset = dl.offset,
                    "dead letter without {ERROR_TOPIC}; left alone"
                );
            }
            let key = serde_json::to_value(decision)?
                .as_str()
                .unwrap_or_default()
                .to_string();
            *report.left.entry(key).or_default() += 1;
            continue;
        }
        progress.record(dl.offset);
        let target = dl.target.clone().unwrap_or_default();
        *by_target
            .entry((target.clone(), dl.reason.clone().unwrap_or_default()))
            .or_default() += 1;
        report.copied += 1;
        if let Some(c) = &copier {
            c.copy(&msg, &target, headers.as_ref(), (dl.partition, dl.offset))?;
        }
    }
    report.rows = by_target
        .into_iter()
        .map(|((target_topic, reason), records)| ReportRow {
            target_topic,
            reason,
            records,
        })
        .collect();
    if let Some(full) = report.left.get("progress_full") {
        tracing::warn!(
            left = full,
            "redrive progress is full on some partition; run again after redriving the dead letters left before them"
        );
    }
    let Some(copier) = copier else {
        return Ok(report);
    };
    let acks = copier.wait_for_acks(report.copied)?;
    let mut progress = scan.progress.clone();
    for (p, o) in &acks.acked {
        progress.entry(*p).or_default().record(*o);
    }
    scan.commit(&progress)?;
    if !acks.failed.is_empty() {
        let (p, o, e) = &acks.failed[0];
        bail!(
            "{} of {} copies were not acknowledged (first: partition {p} offset {o}: {e}); progress records only the {} acknowledged, so running redrive again retries the rest",
            acks.failed.len(),
            report.copied,
            acks.acked.len()
        );
    }
    Ok(report)
}

/// Scan step: the dead-letter topic read from where progress says nothing before was left
/// behind, up to the log end seen at the start (records dead-lettered meanwhile wait for the
/// next run, so a run always ends).
struct Scan<'a> {
    consumer: BaseConsumer,
    topic: &'a str,
    /// Progress committed before this run, per partition.
    progress: BTreeMap<i32, Progress>,
    /// Log end per partition at the start.
    ends: BTreeMap<i32, i64>,
    /// Partitions still to be read to their end.
    open: usize,
    last_seen: Instant,
}

impl<'a> Scan<'a> {
    /// Read the committed progress and assign each partition from its first dead letter not
    /// copied (from the log start with `--from-beginning`, which chooses regardless of it).
    fn open(cfg: &Config, bootstrap: &str, group: &str, a: &RedriveArgs<'a>) -> Result<Scan<'a>> {
        let consumer = crate::ops::lag::client(&cfg.kafka, bootstrap, group)?;
        let parts = crate::ops::lag::partition_ids(&consumer, a.from, TIMEOUT)?;
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition(a.from, *p);
        }
        let committed = consumer
            .committed_offsets(tpl, TIMEOUT)
            .context("reading redrive progress")?;
        let mut assign = TopicPartitionList::new();
        let mut progress = BTreeMap::new();
        let mut ends = BTreeMap::new();
        let mut open = 0;
        for p in &parts {
            let (low, high) = consumer.fetch_watermarks(a.from, *p, TIMEOUT)?;
            let mut prog = committed
                .find_partition(a.from, *p)
                .and_then(|e| Some(Progress::decode(e.offset().to_raw()?, e.metadata())))
                .filter(|pr| pr.next() >= 0)
                .unwrap_or_else(|| Progress::new(low));
            prog.clamp_to(low);
            let start = if a.from_beginning { low } else { prog.next() };
            if start < high {
                open += 1;
            }
            assign.add_partition_offset(a.from, *p, Offset::Offset(start))?;
            progress.insert(*p, prog);
            ends.insert(*p, high);
        }
        consumer.assign(&assign)?;
        Ok(Scan {
            consumer,
            topic: a.from,
            progress,
            ends,
            open,
            last_seen: Instant::now(),
        })
    }

    /// The next dead letter, or `None` when every partition was read to its end at the start
    /// (or nothing came for [`QUIET`]: some brokers' watermarks lag).
    fn next_dead_letter(&mut self) -> Result<Option<BorrowedMessage<'_>>> {
        while self.open > 0 && self.last_seen.elapsed() < QUIET {
            let Some(msg) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = msg.context("reading dead letters")?;
            self.last_seen = Instant::now();
            let end = self.ends.get(&msg.partition()).copied().unwrap_or(0);
            if msg.offset() >= end {
                continue;
            }
            if msg.offset() + 1 == end {
                self.open -= 1;
            }
            return Ok(Some(msg));
        }
        Ok(None)
    }

    /// Commit step: the first dead letter not copied as the offset, the copied ones above it as
    /// metadata. Only after [`Copier::wait_for_acks`]: progress must never claim a copy the
    /// broker may not have.
    fn commit(&self, progress: &BTreeMap<i32, Progress>) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, prog) in progress {
            if self.progress.get(p) == Some(prog) {
                continue;
            }
            tpl.add_partition_offset(self.topic, *p, Offset::Offset(prog.next()))?;
            if let Some(mut e) = tpl.find_partition(self.topic, *p) {
                e.set_metadata(prog.encode());
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .context("recording redrive progress")
    }
}

/// The copies' delivery reports, by dead letter (partition, offset).
#[derive(Default)]
struct Acks {
    acked: Vec<(i32, i64)>,
    failed: Vec<(i32, i64, String)>,
}

/// Collects delivery reports so that progress records only acknowledged copies.
#[derive(Default)]
struct AckContext {
    acks: Mutex<Acks>,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<(i32, i64)>;

    fn delivery(&self, result: &DeliveryResult<'_>, source: Self::DeliveryOpaque) {
        let (p, o) = *source;
        let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => acks.acked.push((p, o)),
            Err((e, _)) => acks.failed.push((p, o, e.to_string())),
        }
    }
}

/// Copy step: produces the copies (idempotent, `acks=all`) and tracks their acknowledgements.
struct Copier {
    producer: BaseProducer<AckContext>,
}

impl Copier {
    fn new(cfg: &Config, bootstrap: &str) -> Result<Copier> {
        let producer = client_config(&cfg.kafka, bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create_with_context(AckContext::default())
            .context("creating producer")?;
        Ok(Copier { producer })
    }

    /// Queue one copy, waiting for room when the producer queue is full (a large dead-letter
    /// topic must not fail on its own size).
    fn copy(
        &self,
        msg: &BorrowedMessage<'_>,
        target: &str,
        headers: Option<&OwnedHeaders>,
        source: (i32, i64),
    ) -> Result<()> {
        let mut rec =
            BaseRecord::<[u8], [u8], Box<(i32, i64)>>::with_opaque_to(target, Box::new(source))
                .headers(redrive_headers(headers));
        if let Some(k) = msg.key() {
            rec = rec.key(k);
        }
        if let Some(v) = msg.payload() {
            rec = rec.payload(v);
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => {
                    self.producer.poll(Duration::ZERO);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    self.producer.poll(Duration::from_millis(100));
                }
                Err((e, _)) => bail!("copying to {target}: {e}"),
            }
        }
    }

    /// Wait for every copy's delivery report (at most [`ACK_TIMEOUT`]); a copy without one
    /// counts as failed.
    fn wait_for_acks(self, sent: usize) -> Result<Acks> {
        let flushed = self.producer.flush(ACK_TIMEOUT);
        let mut acks = std::mem::take(
            &mut *self
                .producer
                .context()
                .acks
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "not every copy was acknowledged in time");
        }
        let missing = sent.saturating_sub(acks.acked.len() + acks.failed.len());
        if missing > 0 && acks.failed.is_empty() {
            acks.failed
                .push((-1, -1, format!("{missing} without a delivery report")));
        }
        Ok(acks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_drop_error_headers_and_count_redrives() {
        let h = OwnedHeaders::new()
            .insert(Header {
                key: "trace",
                value: Some("abc"),
            })
            .insert(Header {
                key: ERROR_REASON,
                value: Some("http_400"),
            })
            .insert(Header {
                key: REDRIVE_COUNT,
                value: Some("2"),
            });
        let out = redrive_headers(Some(&h));
        let pairs: Vec<(String, String)> = out
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("trace".into(), "abc".into()),
                (REDRIVE_COUNT.into(), "3".into())
            ]
        );
    }

    #[test]
    fn progress_advances_only_over_contiguous_copies() {
        let mut p = Progress::new(10);
        p.record(12);
        p.record(13);
        assert_eq!(
            p.next(),
            10,
            "11 was not copied, so 10 and 11 stay reachable"
        );
        assert!(p.is_copied(12) && p.is_copied(13) && p.is_copied(9));
        assert!(!p.is_copied(10) && !p.is_copied(11) && !p.is_copied(14));
        // Acknowledgements out of order still close the gap.
        p.record(11);
        p.record(10);
        assert_eq!(p, Progress::new(14));
    }

    #[test]
    fn copied_in_counts_copies_inside_the_range() {
        let mut p = Progress::new(10);
        p.record(15);
        p.record(16);
        p.record(20);
        assert_eq!(p.copied_in(0, 100), 13, "0..10, 15, 16, 20");
        assert_eq!(p.copied_in(5, 16), 6, "5..10 and 15");
        assert_eq!(p.copied_in(11, 15), 0);
        assert_eq!(Progress::new(0).copied_in(0, 50), 0);
    }

    #[test]
    fn progress_round_trips_through_commit_metadata() {
        let mut p = Progress::new(100);
        for o in [101, 102, 103, 200, 5_000_000_000] {
            p.record(o);
        }
        let meta = p.encode();
        assert_eq!(meta, "redrive.v1;1+3,96+1,4999999799+1");
        assert_eq!(Progress::decode(100, &meta), p);
        // Not ours, or damaged: the offset alone (a possible duplicate, never a loss).
        assert_eq!(Progress::decode(100, ""), Progress::new(100));
        assert_eq!(Progress::decode(100, "redrive.v1;1+x"), Progress::new(100));
        assert_eq!(
            Progress::decode(100, &format!("redrive.v1;{}+1", i64::MAX)),
            Progress::new(100)
        );
    }

    #[test]
    fn retention_past_the_progress_drops_what_it_deleted() {
        let mut p = Progress::new(0);
        p.record(5);
        p.record(9);
        p.clamp_to(6);
        assert_eq!(p.next(), 6);
        assert!(!p.is_copied(7) && p.is_copied(9));
        p.clamp_to(9);
        assert_eq!(p, Progress::new(10));
    }

    #[test]
    fn progress_refuses_more_than_max_ranges() {
        let mut p = Progress::new(0);
        for i in 0..MAX_RANGES as i64 {
            assert!(p.has_room_for(1 + 2 * i));
            p.record(1 + 2 * i);
        }
        let last = 2 * MAX_RANGES as i64 - 1;
        assert!(
            !p.has_room_for(last + 2),
            "a new range would exceed the cap"
        );
        assert!(p.has_room_for(last + 1), "extending the last range is free");
        assert!(p.has_room_for(0), "filling the first gap shrinks the list");
        assert!(p.encode().len() < 1024);
        // Huge gaps still fit the metadata bound, in full.
        let mut p = Progress::new(0);
        for i in 0..MAX_RANGES as i64 {
            p.record(i64::MAX / 128 * (i + 1));
        }
        assert!(p.encode().len() <= MAX_METADATA);
        assert_eq!(Progress::decode(0, &p.encode()), p);
    }

    #[test]
    fn metadata_too_long_forgets_ranges_instead_of_failing_the_commit() {
        let mut p = Progress::new(0);
        for i in 0..4 * MAX_RANGES as i64 {
            p.record(i64::MAX / 1024 * (i + 1));
        }
        let meta = p.encode();
        assert!(meta.len() <= MAX_METADATA);
        let back = Progress::decode(0, &meta);
        assert_eq!(back.next(), 0);
        assert!(back.is_copied(i64::MAX / 1024) && !back.is_copied(i64::MAX / 1024 * 250));
    }

    fn dl(offset: i64, reason: &str, ts: i64) -> DeadLetter {
        DeadLetter {
            partition: 0,
            offset,
            timestamp_ms: Some(ts),
            reason: Some(reason.into()),
            target: Some("dest.seg".into()),
        }
    }

    #[test]
    fn filters_decide_and_skipped_dead_letters_stay_uncopied() {
        let args = RedriveArgs {
            from: "dest.seg.dlq",
            reason: Some("http_400"),
            since_ms: Some(1_000),
            limit: None,
            from_beginning: false,
            execute: true,
        };
        let mut p = Progress::new(0);
        assert_eq!(decide(&dl(0, "http_400", 1_000), &args, &p), Decision::Copy);
        p.record(0);
        assert_eq!(
            decide(&dl(0, "http_400", 1_000), &args, &p),
            Decision::AlreadyCopied
        );
        assert_eq!(
            decide(&dl(1, "permanent_error", 1_000), &args, &p),
            Decision::OtherReason
        );
        assert_eq!(
            decide(&dl(2, "http_400", 999), &args, &p),
            Decision::BeforeSince
        );
        let mut no_target = dl(3, "http_400", 2_000);
        no_target.target = None;
        assert_eq!(decide(&no_target, &args, &p), Decision::NoTargetTopic);
        p.record(4);
        // The skipped ones (1, 2, 3) are still there for a run with other filters.
        assert_eq!(p.next(), 1);
        let other = RedriveArgs {
            reason: Some("permanent_error"),
            since_ms: None,
            ..args
        };
        assert_eq!(
            decide(&dl(1, "permanent_error", 1_000), &other, &p),
            Decision::Copy
        );
        assert_eq!(
            decide(&dl(4, "http_400", 1_000), &other, &p),
            Decision::AlreadyCopied
        );
        let again = RedriveArgs {
            from_beginning: true,
            reason: None,
            ..other
        };
        assert_eq!(
            decide(&dl(4, "http_400", 1_000), &again, &p),
            Decision::Copy
        );
    }
}
