//! Consumer-group lag as the brokers see it: committed offsets against the log ends.
//!
//! The stages report `eventrelay_consumer_lag` from librdkafka's statistics, which only a
//! running consumer that fetches can give: a stopped map stage reports nothing, and a partition
//! paused behind an open circuit stops updating. An operator's lag alert must fire exactly
//! then, so every eventrelay process also reads the committed lag of every eventrelay group
//! from the brokers (the way kafka-lag-exporter or Burrow do) and exports it as
//! `eventrelay_group_lag{group,topic}`; `eventrelay status` reads the same numbers once.

use crate::config::{Config, KafkaConfig};
use crate::kafka::client_config;
use crate::ops::status::{groups_of, GroupRef};
use anyhow::{anyhow, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One partition of a group's topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    /// Partition.
    pub partition: i32,
    /// Committed offset (`null`: none yet).
    pub committed: Option<i64>,
    /// Log start.
    pub log_start: i64,
    /// Log end (high watermark).
    pub log_end: i64,
    /// Records after the committed offset; with no commit, from the log start, since the
    /// stages start at the earliest offset (so input waiting for a stage that never ran is
    /// lag, not `-` as `kafka-consumer-groups` would print).
    pub lag: i64,
}

/// Lag of one partition: see [`PartitionLag::lag`].
pub fn lag(committed: Option<i64>, log_start: i64, log_end: i64) -> i64 {
    (log_end - committed.unwrap_or(log_start).max(log_start)).max(0)
}

/// A topic the brokers do not know.
#[derive(Debug, thiserror::Error)]
#[error("topic {0} does not exist")]
pub struct NoSuchTopic(pub String);

/// Reads offsets from the brokers without joining any group. Committed offsets can only be
/// asked as the group itself (librdkafka's `group.id`), so it keeps one idle client per group
/// it was asked about; none of them subscribes, so no group sees a member come or go.
pub struct LagReader {
    kafka: KafkaConfig,
    bootstrap: String,
    timeout: Duration,
    reader: BaseConsumer,
    groups: HashMap<String, BaseConsumer>,
}

impl LagReader {
    /// A reader on `bootstrap`; each broker request waits at most `timeout`.
    pub fn new(kafka: &KafkaConfig, bootstrap: &str, timeout: Duration) -> Result<LagReader> {
        let reader = client(kafka, bootstrap, &format!("{}.status", kafka.group_id))?;
        Ok(LagReader {
            kafka: kafka.clone(),
            bootstrap: bootstrap.to_string(),
            timeout,
            reader,
            groups: HashMap::new(),
        })
    }

    /// The client for metadata, watermarks and reading records.
    pub fn reader(&self) -> &BaseConsumer {
        &self.reader
    }

    /// Partition ids of `topic`, sorted; an error when it does not exist.
    pub fn partitions(&self, topic: &str) -> Result<Vec<i32>> {
        partition_ids(&self.reader, topic, self.timeout)
    }

    /// Committed offsets of `group` on `topic`'s partitions `ids`.
    pub fn committed(
        &mut self,
        group: &str,
        topic: &str,
        ids: &[i32],
    ) -> Result<TopicPartitionList> {
        if !self.groups.contains_key(group) {
            let c = client(&self.kafka, &self.bootstrap, group)?;
            self.groups.insert(group.to_string(), c);
        }
        let c = &self.groups[group];
        let mut tpl = TopicPartitionList::new();
        for p in ids {
            tpl.add_partition(topic, *p);
        }
        c.committed_offsets(tpl, self.timeout)
            .with_context(|| format!("reading the committed offsets of {group}"))
    }

    /// Per partition of `topic`: `group`'s committed offset, the log bounds and the lag.
    pub fn group_partitions(&mut self, group: &str, topic: &str) -> Result<Vec<PartitionLag>> {
        let ids = self.partitions(topic)?;
        let committed = self.committed(group, topic, &ids)?;
        let mut rows = Vec::with_capacity(ids.len());
        for p in ids {
            let (low, high) = self
                .reader
                .fetch_watermarks(topic, p, self.timeout)
                .with_context(|| format!("reading the watermarks of {topic} [{p}]"))?;
            let c = committed
                .find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0);
            rows.push(PartitionLag {
                partition: p,
                committed: c,
                log_start: low,
                log_end: high,
                lag: lag(c, low, high),
            });
        }
        Ok(rows)
    }
}

/// Partition ids of `topic` as `client` reads them from the brokers, sorted; [`NoSuchTopic`]
/// when it does not exist.
pub(crate) fn partition_ids(
    client: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading metadata of {topic}"))?;
    let mut ids: Vec<i32> = md
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if ids.is_empty() {
        return Err(NoSuchTopic(topic.to_string()).into());
    }
    ids.sort_unstable();
    Ok(ids)
}

/// A client in `group` that never joins it: no commits, reads committed data only.
pub(crate) fn client(kafka: &KafkaConfig, bootstrap: &str, group: &str) -> Result<BaseConsumer> {
    client_config(kafka, bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating Kafka client")
}

/// How long one broker request of the exporter may take: short, so a broker outage delays a
/// round by seconds, not by minutes of per-partition timeouts.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// Export `eventrelay_group_lag{group,topic}` for every group of [`groups_of`] every `every`,
/// until `shutdown`. A group whose offsets cannot be read keeps its last value (Prometheus
/// marks it stale only if the process stops) and is logged once per failure streak.
pub async fn export(cfg: Config, bootstrap: String, every: Duration, shutdown: CancellationToken) {
    let groups = match groups_of(&cfg) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "group lag export disabled");
            return;
        }
    };
    let mut reader: Option<LagReader> = None;
    let mut failing = false;
    loop {
        let (kafka, b, gs, r) = (
            cfg.kafka.clone(),
            bootstrap.clone(),
            groups.clone(),
            reader.take(),
        );
        let round = tokio::task::spawn_blocking(move || {
            let mut r = match r.map_or_else(|| LagReader::new(&kafka, &b, EXPORT_TIMEOUT), Ok) {
                Ok(r) => r,
                Err(e) => return (None, Err(e)),
            };
            let result = export_round(&mut r, &gs);
            (Some(r), result)
        });
        let (r, result) = tokio::select! {
            _ = shutdown.cancelled() => return,
            j = round => j.unwrap_or_else(|e| (None, Err(anyhow!("group lag round panicked: {e}")))),
        };
        reader = r;
        match result {
            Ok(()) if failing => {
                tracing::info!("group lag readable again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read group lag from the brokers; will retry");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One pass over every group; the first error ends the pass (the brokers are likely gone).
fn export_round(reader: &mut LagReader, groups: &[GroupRef]) -> Result<()> {
    for g in groups {
        let rows = match reader.group_partitions(&g.group, &g.topic) {
            Ok(rows) => rows,
            // A topic that does not exist (yet) has no lag to speak of.
            Err(e) if e.downcast_ref::<NoSuchTopic>().is_some() => continue,
            Err(e) => return Err(e),
        };
        let total: i64 = rows.iter().map(|r| r.lag).sum();
        metrics::gauge!("eventrelay_group_lag", "group" => g.group.clone(), "topic" => g.topic.clone())
            .set(total as f64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_commit_or_the_log_start() {
        assert_eq!(lag(Some(10), 0, 15), 5);
        assert_eq!(lag(None, 3, 15), 12);
        // A commit below a log start that retention moved on: from the log start.
        assert_eq!(lag(Some(1), 5, 15), 10);
        assert_eq!(lag(Some(20), 0, 15), 0);
    }
}
