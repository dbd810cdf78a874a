//! `eventrelay redrive`: copy dead letters back to the topic they came from (their
//! `eventrelay.error.topic` header), after the cause was fixed. Filters by reason and time, with
//! a limit; a dry run unless `--execute`. The copies keep key, value and the original headers,
//! drop the `eventrelay.error.*` and `eventrelay.retry.*` headers (a redriven record starts a
//! fresh retry window), and carry `eventrelay.redrive.count`.
//!
//! Progress is remembered in the consumer group `<group_id>.redrive.<dlq topic>`, so running it
//! again after `--execute` does not copy the same dead letters twice (`--from-beginning`
//! re-reads the whole topic).

use crate::config::Config;
use crate::kafka::client_config;
use anyhow::{anyhow, Context, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Header carrying how many times a record was redriven.
pub const REDRIVE_COUNT: &str = "eventrelay.redrive.count";

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
    /// Read from the start of the topic, ignoring earlier redrives.
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
            if hd.key.starts_with("eventrelay.error.") || hd.key.starts_with("eventrelay.retry.") {
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

/// Redrive; returns the number of records copied (or that would be, in a dry run).
pub fn run(cfg: &Config, a: &RedriveArgs<'_>) -> Result<usize> {
    let bootstrap = cfg
        .kafka
        .bootstrap_servers
        .as_deref()
        .ok_or_else(|| anyhow!("redrive needs kafka.bootstrap_servers"))?;
    let group = format!("{}.redrive.{}", cfg.kafka.group_id, a.from);
    let consumer: BaseConsumer = client_config(&cfg.kafka, bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating consumer")?;
    let timeout = Duration::from_secs(15);
    let md = consumer.fetch_metadata(Some(a.from), timeout)?;
    let parts: Vec<i32> = md
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        return Err(anyhow!("topic {} does not exist", a.from));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition(a.from, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut assign = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in &parts {
        let start = if a.from_beginning {
            None
        } else {
            committed
                .find_partition(a.from, *p)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0)
        };
        assign.add_partition_offset(a.from, *p, start.map_or(Offset::Beginning, Offset::Offset))?;
        ends.insert(*p, consumer.fetch_watermarks(a.from, *p, timeout)?.1);
    }
    consumer.assign(&assign)?;
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(&cfg.kafka, bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .context("creating producer")?;

    let mut copied = 0usize;
    let mut by_target: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_seen = Instant::now();
    // Read up to the end seen at start (or until quiet: some brokers' watermarks lag).
    while last_seen.elapsed() < Duration::from_secs(3)
        && !ends
            .iter()
            .all(|(p, end)| positions.get(p).is_some_and(|o| o + 1 >= *end) || *end == 0)
        && a.limit.is_none_or(|l| copied < l)
    {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.context("reading dead letters")?;
        last_seen = Instant::now();
        positions.insert(msg.partition(), msg.offset());
        let headers = msg.headers().map(|h| h.detach());
        let reason = header(headers.as_ref(), "eventrelay.error.reason")
            .unwrap_or("")
            .to_string();
        if a.reason.is_some_and(|r| r != reason) {
            continue;
        }
        if let Some(since) = a.since_ms {
            if msg.timestamp().to_millis().is_none_or(|t| t < since) {
                continue;
            }
        }
        let Some(target) = header(headers.as_ref(), "eventrelay.error.topic").map(str::to_string)
        else {
            tracing::warn!(
                partition = msg.partition(),
                offset = msg.offset(),
                "dead letter without eventrelay.error.topic; left alone"
            );
            continue;
        };
        *by_target.entry((target.clone(), reason)).or_default() += 1;
        copied += 1;
        if a.execute {
            let mut rec =
                BaseRecord::<[u8], [u8]>::to(&target).headers(redrive_headers(headers.as_ref()));
            if let Some(k) = msg.key() {
                rec = rec.key(k);
            }
            if let Some(v) = msg.payload() {
                rec = rec.payload(v);
            }
            producer
                .send(rec)
                .map_err(|(e, _)| anyhow!("copying to {target}: {e}"))?;
        }
    }
    println!("{:<28} {:<24} {:>8}", "TARGET TOPIC", "REASON", "RECORDS");
    for ((t, r), n) in &by_target {
        println!("{t:<28} {r:<24} {n:>8}");
    }
    if !a.execute {
        println!("dry run: {copied} dead letter(s) would be copied (add --execute)");
        return Ok(copied);
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing copies")?;
    // Remember how far we got, so the next redrive starts after these.
    let mut done = TopicPartitionList::new();
    for (p, o) in &positions {
        done.add_partition_offset(a.from, *p, Offset::Offset(o + 1))?;
    }
    if done.count() > 0 {
        consumer
            .commit(&done, CommitMode::Sync)
            .context("recording redrive progress")?;
    }
    println!("copied {copied} dead letter(s) back to their topics");
    Ok(copied)
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
                key: "eventrelay.error.reason",
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
}
