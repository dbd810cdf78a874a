//! `eventrelay demo`: the whole system on one machine with nothing installed — embedded Kafka,
//! the ingest API (the sample events from `examples/` arrive through `/v1/batch`, the way
//! Segment's libraries send them), the stub destinations (with a fault window, so retries
//! show), live progress, and a summary table at the end.

use crate::app::{runtime, Role, Running};
use crate::config::Config;
use crate::pipeline::stage::{DestOutcome, MapStats};
use crate::sender::{SendCount, SendStats};
use crate::testkit::stub::{Fault, Stub};
use crate::testkit::{produce_lines, sample_events};
use anyhow::{bail, Result};
use std::io::Write;
use std::time::{Duration, Instant};

/// What the demo wrote to the input topic, and how.
struct Sent {
    ingested: usize,
    raw: usize,
}

/// The demo's write key (HTTP Basic user name, as Segment's libraries send it).
const WRITE_KEY: &str = "demo-write-key";

/// Send the sample events the way Segment's libraries do: `POST /v1/batch` with the write key
/// as the Basic user name, 100 events per batch. Lines that are not JSON cannot come from a
/// library; they are written straight to the input topic, as a broken producer would, so the
/// summary shows the dead-letter path too.
async fn send_through_ingest(
    running: &Running,
    cfg: &Config,
    events: Vec<Vec<u8>>,
) -> Result<Sent> {
    let addr = running
        .ingest_addr
        .ok_or_else(|| anyhow::anyhow!("the demo runs ingest"))?;
    let (json, raw): (Vec<Vec<u8>>, Vec<Vec<u8>>) = events
        .into_iter()
        .partition(|l| serde_json::from_slice::<serde_json::Value>(l).is_ok_and(|v| v.is_object()));
    let client = reqwest::Client::new();
    for chunk in json.chunks(100) {
        let batch: Vec<serde_json::Value> = chunk
            .iter()
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        let resp = client
            .post(format!("http://{addr}/v1/batch"))
            .basic_auth(WRITE_KEY, Some(""))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::json!({ "batch": batch }).to_string())
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!(
                "ingest answered {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
    }
    let (k, b, topic) = (
        cfg.kafka.clone(),
        running.bootstrap.clone(),
        cfg.kafka.input_topic.clone(),
    );
    let n_raw = raw.len();
    tokio::task::spawn_blocking(move || {
        produce_lines(&k, &b, &topic, raw.iter().map(Vec::as_slice))
    })
    .await??;
    Ok(Sent {
        ingested: json.len(),
        raw: n_raw,
    })
}

fn demo_config(stub_url: &str) -> Result<Config> {
    Config::from_toml(&format!(
        r#"
[metrics]
listen = "127.0.0.1:0"
[ingest]
listen = "127.0.0.1:0"
write_keys = ["{WRITE_KEY}"]
[destinations.owneriq]
endpoint = "{stub_url}"
data_group_id = "9nfdft"
analytics_tag_id = "gcb8"
dct_tag_id = "6qg2"
backoff_min_ms = 100
backoff_max_ms = 1000
retry_tier_ms = [500, 2000]
[destinations.seg]
endpoint = "{stub_url}"
website_id = "abc8fb18-7559-4324-9921-a4b5015b4a1c"
backoff_min_ms = 100
backoff_max_ms = 1000
retry_tier_ms = [500, 2000]
"#
    ))
}

/// Run the demo; `repeat` copies of the sample events.
pub fn run(repeat: usize) -> Result<()> {
    runtime()?.block_on(async move {
        let stub = Stub::start("127.0.0.1:0", None).await?;
        let cfg = demo_config(&stub.url())?;
        let running = Running::start(&cfg, Role::All).await?;
        eprintln!(
            "eventrelay demo: embedded Kafka at {} · stub destinations at {} · metrics at http://{}/metrics",
            running.bootstrap,
            stub.url(),
            running.metrics_addr
        );
        let events = sample_events(repeat);
        let total = events.len() as u64;
        let sent = send_through_ingest(&running, &cfg, events).await?;
        eprintln!("sent {} sample events through ingest (/v1/batch, batches of 100) and wrote {} lines that are not JSON straight to {}",
            sent.ingested, sent.raw, cfg.kafka.input_topic);
        // A fault window: Seg answers 503 to 30% of requests for the next 4 seconds (the
        // consumer groups take a few seconds to form), so the summary shows retries recover.
        stub.inject(Fault {
            status: Some(503),
            rate: Some(0.3),
            for_secs: Some(4.0),
            path_prefix: Some("/v1/".into()),
            ..Default::default()
        });

        let dests: Vec<&'static str> = cfg.destinations()?.iter().map(|d| d.dest.name()).collect();
        let started = Instant::now();
        let mut done = false;
        while started.elapsed() < Duration::from_secs(120) {
            let m = &running.map_stats;
            let processed = m.processed.load(std::sync::atomic::Ordering::Relaxed);
            let mut finished = processed >= total;
            let mut line = format!("\r[{:>5.1}s] mapped {processed}/{total} events", started.elapsed().as_secs_f64());
            for d in &dests {
                let mapped = m.produced(d);
                let s = &running.send_stats;
                let (ok, dead) = (s.get(d, SendCount::Delivered), s.get(d, SendCount::DeadLettered));
                finished &= ok + dead >= mapped;
                line.push_str(&format!(" · {d}: {ok}/{mapped} delivered, {} retries", s.get(d, SendCount::Retried)));
            }
            eprint!("{line}   ");
            let _ = std::io::stderr().flush();
            if finished {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!();
        let map_stats = running.map_stats.clone();
        let send_stats = running.send_stats.clone();
        let requests = stub.request_count();
        running.shutdown(Duration::from_secs(60)).await?;
        print_summary(&dests, &map_stats, &send_stats, requests);
        if !done {
            bail!("the demo did not finish within 120 s");
        }
        Ok(())
    })
}

fn print_summary(dests: &[&str], map: &MapStats, send: &SendStats, requests: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    println!();
    println!(
        "input: {} events read, {} invalid (to segment.events.dlq)",
        map.consumed.load(Relaxed),
        map.invalid.load(Relaxed)
    );
    println!("stub destinations received {requests} requests");
    println!();
    println!(
        "{:<10} {:>7} {:>9} {:>8} {:>9} {:>8} {:>11} {:>13}",
        "dest",
        "mapped",
        "skipped",
        "rejected",
        "delivered",
        "retries",
        "retry-topic",
        "dead-lettered"
    );
    for d in dests {
        println!(
            "{:<10} {:>7} {:>9} {:>8} {:>9} {:>8} {:>11} {:>13}",
            d,
            map.produced(d),
            map.skipped(d),
            map.rejected(d),
            send.get(d, SendCount::Delivered),
            send.get(d, SendCount::Retried),
            send.get(d, SendCount::RetryTopic),
            send.get(d, SendCount::DeadLettered),
        );
    }
    println!();
    println!("skipped and rejected by reason:");
    for ((d, o), n) in &map.outcomes() {
        let (kind, reason) = match o {
            DestOutcome::Produced => continue,
            DestOutcome::Skipped(r) => ("skipped", r),
            DestOutcome::Rejected(r) => ("rejected", r),
        };
        println!("  {d:<10} {kind:<9} {reason:<20} {n:>7}");
    }
}
