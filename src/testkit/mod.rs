//! Test support: the stand-in destination server ([`stub`]), the sample events, and helpers
//! that produce input and decode requests the way an outside checker would. Nothing on the
//! service path imports this module; the demo, the tests and the benches do.

pub mod stub;

use crate::config::KafkaConfig;
use anyhow::{anyhow, Context, Result};
use rdkafka::error::RDKafkaErrorCode;
use serde_json::Value;
use std::time::Duration;

const EVENTS: &str = include_str!("../../examples/events.ndjson");

/// The sample events of `examples/events.ndjson`, `repeat` times, each copy with its own
/// messageIds.
pub fn sample_events(repeat: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..repeat {
        for line in EVENTS.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(mut o)) => {
                    if let Some(Value::String(id)) = o.get("messageId").cloned() {
                        o.insert("messageId".into(), Value::from(format!("{id}-{i}")));
                    }
                    out.push(Value::Object(o).to_string().into_bytes());
                }
                _ => out.push(line.as_bytes().to_vec()),
            }
        }
    }
    out
}

/// Decode an OwnerIQ URL's `t` list back into pairs, the way SPEC §3 describes a decoder:
/// parse the query, split `t` on `,`, split each on the first `|`, percent-decode both sides.
pub fn decode_t(url: &str) -> Option<Vec<(String, String)>> {
    let query = url.split_once('?')?.1;
    let t = query.split('&').find_map(|kv| kv.strip_prefix("t="))?;
    if t.is_empty() {
        return Some(Vec::new());
    }
    t.split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('|')?;
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .ok()
                    .map(|c| c.into_owned())
            };
            Some((dec(k)?, dec(v)?))
        })
        .collect()
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
    let producer: BaseProducer = crate::kafka::producer_config(kafka, bootstrap)
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
