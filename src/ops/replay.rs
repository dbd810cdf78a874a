//! `eventrelay replay`: move a consumer group's committed offsets, in the vocabulary of
//! `kafka-consumer-groups --reset-offsets`. A dry run prints the plan; `--execute` commits it.
//! It refuses while the group has live members, since they would overwrite the new offsets.

use crate::config::Config;
use crate::kafka::client_config;
use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::time::Duration;

/// How long to wait for broker answers (metadata, offsets, group list).
const TIMEOUT: Duration = Duration::from_secs(15);

/// Where to move each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The log start.
    Earliest,
    /// The log end (skip everything not yet read).
    Latest,
    /// An absolute offset (clamped to the log).
    Offset(i64),
    /// The first offset whose timestamp is at or after this instant (ms since the epoch).
    Datetime(i64),
    /// Current committed offset plus this (negative to re-read).
    ShiftBy(i64),
}

/// One partition's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanRow {
    /// Partition.
    pub partition: i32,
    /// Committed offset now, if any (`null` in JSON when none).
    pub current: Option<i64>,
    /// Log start.
    #[serde(rename = "log_start")]
    pub low: i64,
    /// Log end.
    #[serde(rename = "log_end")]
    pub high: i64,
    /// Offset the group will resume from.
    pub target: i64,
}

/// Resolve the target offset of one partition. `by_time` is the broker's answer to the
/// timestamp lookup (`None`: no offset at or after the time, i.e. the log end).
///
/// Pure, so the date-time rules are tested here: neither broker on the test machine answers
/// timestamp lookups correctly (the mock cluster answers End, tansu 0.6.0 answers 0).
pub fn resolve(
    target: Target,
    current: Option<i64>,
    low: i64,
    high: i64,
    by_time: Option<i64>,
) -> Result<i64> {
    let clamp = |o: i64| o.clamp(low, high.max(low));
    Ok(match target {
        Target::Earliest => low,
        Target::Latest => high,
        Target::Offset(o) => clamp(o),
        Target::Datetime(_) => clamp(by_time.unwrap_or(high)),
        Target::ShiftBy(n) => {
            let cur = current.ok_or_else(|| {
                anyhow!("--shift-by needs a committed offset, and the group has none")
            })?;
            clamp(cur.saturating_add(n))
        }
    })
}

/// Parse `2026-11-22T10:00:00Z` (RFC 3339) to ms since the epoch.
pub fn parse_datetime(s: &str) -> Result<i64> {
    crate::event::parse_timestamp(s)
        .ok_or_else(|| anyhow!("{s:?} is not a date-time like 2026-11-22T10:00:00Z"))
}

/// What `replay` was asked to do.
pub struct ReplayArgs<'a> {
    /// Consumer group to move.
    pub group: &'a str,
    /// Topic whose offsets move.
    pub topic: &'a str,
    /// Only these partitions (all when empty).
    pub partitions: &'a [i32],
    /// Where to.
    pub target: Target,
    /// Commit the plan (otherwise only print it).
    pub execute: bool,
    /// Go ahead when the broker cannot describe the group (so liveness can't be checked).
    pub force: bool,
}

/// What `replay` planned (and, with `--execute`, committed); printed as a table or as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Consumer group moved.
    pub group: String,
    /// Topic whose offsets move.
    pub topic: String,
    /// Whether the plan was committed (false: dry run).
    pub execute: bool,
    /// One row per partition.
    pub partitions: Vec<PlanRow>,
}

impl ReplayReport {
    /// The human table, then a summary line.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{:<28} {:>9} {:>12} {:>12} {:>12} {:>12}\n",
            "TOPIC", "PARTITION", "CURRENT", "TARGET", "LOG-START", "LOG-END"
        );
        for r in &self.partitions {
            let cur = r.current.map_or("-".to_string(), |c| c.to_string());
            out.push_str(&format!(
                "{:<28} {:>9} {:>12} {:>12} {:>12} {:>12}\n",
                self.topic, r.partition, cur, r.target, r.low, r.high
            ));
        }
        if self.execute {
            out.push_str(&format!(
                "group {:?} moved on {} partition(s) of {}\n",
                self.group,
                self.partitions.len(),
                self.topic
            ));
        } else {
            out.push_str(&format!(
                "dry run: nothing changed (add --execute to move group {:?})\n",
                self.group
            ));
        }
        out
    }
}

/// Replay: check liveness, plan, and with `--execute` commit the plan.
pub fn run(cfg: &Config, a: &ReplayArgs<'_>) -> Result<ReplayReport> {
    let bootstrap = cfg
        .kafka
        .bootstrap_servers
        .as_deref()
        .ok_or_else(|| anyhow!("replay needs kafka.bootstrap_servers (the embedded cluster lives only inside a running process)"))?;
    let consumer: BaseConsumer = client_config(&cfg.kafka, bootstrap)
        .set("group.id", a.group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating Kafka client")?;
    check_liveness(&consumer, a.group, TIMEOUT, a.force)?;
    let rows = plan(&consumer, a)?;
    if a.execute {
        execute(cfg, bootstrap, a, &rows)?;
    }
    Ok(ReplayReport {
        group: a.group.to_string(),
        topic: a.topic.to_string(),
        execute: a.execute,
        partitions: rows,
    })
}

/// Plan step: one row per chosen partition with where the group is and where it will resume.
/// Read-only, so a dry run is exactly the plan `--execute` would commit.
fn plan(consumer: &BaseConsumer, a: &ReplayArgs<'_>) -> Result<Vec<PlanRow>> {
    let md = consumer
        .fetch_metadata(Some(a.topic), TIMEOUT)
        .with_context(|| format!("reading metadata of {}", a.topic))?;
    let topic_md = md
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| anyhow!("topic {} does not exist", a.topic))?;
    let mut ids: Vec<i32> = topic_md.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    if let Some(bad) = a.partitions.iter().find(|p| !ids.contains(p)) {
        bail!("topic {} has no partition {bad} (it has {ids:?})", a.topic);
    }
    if !a.partitions.is_empty() {
        ids.retain(|p| a.partitions.contains(p));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &ids {
        tpl.add_partition(a.topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, TIMEOUT)
        .context("reading committed offsets")?;
    let by_time = match a.target {
        Target::Datetime(ms) => {
            let mut q = TopicPartitionList::new();
            for p in &ids {
                q.add_partition_offset(a.topic, *p, Offset::Offset(ms))?;
            }
            Some(
                consumer
                    .offsets_for_times(q, TIMEOUT)
                    .context("looking up offsets by time")?,
            )
        }
        _ => None,
    };
    let mut rows = Vec::new();
    for p in &ids {
        let (low, high) = consumer
            .fetch_watermarks(a.topic, *p, TIMEOUT)
            .with_context(|| format!("reading watermarks of partition {p}"))?;
        let current = committed
            .find_partition(a.topic, *p)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0);
        let found = by_time
            .as_ref()
            .and_then(|t| t.find_partition(a.topic, *p))
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0);
        let target = resolve(a.target, current, low, high, found)?;
        rows.push(PlanRow {
            partition: *p,
            current,
            low,
            high,
            target,
        });
    }
    Ok(rows)
}

/// Execute step: commit the plan's targets for the group.
fn execute(cfg: &Config, bootstrap: &str, a: &ReplayArgs<'_>, rows: &[PlanRow]) -> Result<()> {
    let mut commit = TopicPartitionList::new();
    for r in rows {
        commit.add_partition_offset(a.topic, r.partition, Offset::Offset(r.target))?;
    }
    commit_as_member(cfg, bootstrap, a, &commit, rows.len())
}

/// Commit `offsets` for the group. A commit from outside the group (generation -1) is what
/// `kafka-consumer-groups` effectively does, but some brokers (librdkafka's mock cluster) reject
/// it once the group exists; so join the group as its only member (liveness was checked), wait
/// for the whole topic to be assigned, commit with that membership, and leave.
fn commit_as_member(
    cfg: &Config,
    bootstrap: &str,
    a: &ReplayArgs<'_>,
    offsets: &TopicPartitionList,
    partitions: usize,
) -> Result<()> {
    let consumer: BaseConsumer = client_config(&cfg.kafka, bootstrap)
        .set("group.id", a.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("creating Kafka client")?;
    if consumer.commit(offsets, CommitMode::Sync).is_ok() {
        return Ok(());
    }
    consumer
        .subscribe(&[a.topic])
        .context("joining the group")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let _ = consumer.poll(Duration::from_millis(100));
        let assigned = consumer.assignment().map(|t| t.count()).unwrap_or(0);
        if assigned >= partitions {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "could not become the group's only member within 60 s (are its consumers stopped?)"
            );
        }
    }
    consumer
        .commit(offsets, CommitMode::Sync)
        .context("committing the new offsets")?;
    consumer.unsubscribe();
    Ok(())
}

/// Check-liveness step: refuse while the group has live members, since they would overwrite
/// the new offsets with their own next commit. Done before planning (a dry run refuses too), so
/// the plan shown is one that can be executed.
fn check_liveness(
    consumer: &BaseConsumer,
    group: &str,
    timeout: Duration,
    force: bool,
) -> Result<()> {
    let groups = match consumer.fetch_group_list(Some(group), timeout) {
        Ok(g) => g,
        // Some brokers (librdkafka's mock cluster) cannot describe groups.
        Err(e) if force => {
            tracing::warn!(error = %e, "cannot describe the group; going ahead because of --force");
            return Ok(());
        }
        Err(e) => bail!(
            "cannot check that group {group:?} has no live members ({e}); stop its consumers and pass --force"
        ),
    };
    if let Some(g) = groups.groups().iter().find(|g| g.name() == group) {
        let n = g.members().len();
        if n > 0 {
            bail!(
                "group {group:?} has {n} live member(s) (state {}): stop its consumers first, or they would overwrite the new offsets",
                g.state()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve_and_clamp_to_the_log() {
        assert_eq!(
            resolve(Target::Earliest, Some(50), 10, 100, None).unwrap(),
            10
        );
        assert_eq!(
            resolve(Target::Latest, Some(50), 10, 100, None).unwrap(),
            100
        );
        assert_eq!(resolve(Target::Offset(5), None, 10, 100, None).unwrap(), 10);
        assert_eq!(
            resolve(Target::Offset(500), None, 10, 100, None).unwrap(),
            100
        );
        assert_eq!(
            resolve(Target::ShiftBy(-20), Some(50), 10, 100, None).unwrap(),
            30
        );
        assert_eq!(
            resolve(Target::ShiftBy(-80), Some(50), 10, 100, None).unwrap(),
            10
        );
        assert!(resolve(Target::ShiftBy(-1), None, 10, 100, None).is_err());
    }

    #[test]
    fn datetime_uses_the_lookup_or_the_log_end() {
        let t = Target::Datetime(parse_datetime("2026-11-22T10:00:00Z").unwrap());
        assert_eq!(resolve(t, Some(3), 0, 100, Some(42)).unwrap(), 42);
        // No record at or after the time: resume at the end, like kafka-consumer-groups.
        assert_eq!(resolve(t, Some(3), 0, 100, None).unwrap(), 100);
        // A lookup below the log start (retention moved it) clamps.
        assert_eq!(resolve(t, None, 20, 100, Some(5)).unwrap(), 20);
        assert!(parse_datetime("yesterday").is_err());
    }
}
