//! `eventrelay demo`: the whole system on one machine with nothing installed — embedded Kafka,
//! the stub destinations (with a fault window, so retries show), the sample events from
//! `examples/`, live progress, and a summary table at the end.

use crate::cli::Role;
use crate::config::Config;
use crate::kafka::produce_lines;
use crate::service::{runtime, Running};
use crate::stub::{Fault, Stub};
use anyhow::{bail, Result};
use serde_json::Value;
use std::io::Write;
use std::time::{Duration, Instant};

const EVENTS: &str = include_str!("../examples/events.ndjson");

/// The sample events, `repeat` times, each copy with its own messageIds.
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

fn demo_config(stub_url: &str) -> Result<Config> {
    Config::from_toml(&format!(
        r#"
[metrics]
listen = "127.0.0.1:0"
[destinations.owneriq]
endpoint = "{stub_url}"
data_group_id = "9nfdft"
analytics_tag_id = "gcb8"
dct_tag_id = "6qg2"
backoff_min_ms = 100
backoff_max_ms = 1000
[destinations.seg]
endpoint = "{stub_url}"
website_id = "abc8fb18-7559-4324-9921-a4b5015b4a1c"
backoff_min_ms = 100
backoff_max_ms = 1000
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
        let (k, b, topic) = (cfg.kafka.clone(), running.bootstrap.clone(), cfg.kafka.input_topic.clone());
        let produced = tokio::task::spawn_blocking(move || {
            produce_lines(&k, &b, &topic, events.iter().map(Vec::as_slice))
        })
        .await??;
        eprintln!("produced {produced} sample events to {}", cfg.kafka.input_topic);
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
            let outcomes = m.outcomes();
            let mut finished = processed >= total;
            let mut line = format!("\r[{:>5.1}s] mapped {processed}/{total} events", started.elapsed().as_secs_f64());
            for d in &dests {
                let mapped = outcomes.get(&(d.to_string(), "produced".into())).copied().unwrap_or(0);
                let s = &running.send_stats;
                let (ok, dead) = (s.get(d, "delivered"), s.get(d, "dead_lettered"));
                finished &= ok + dead >= mapped;
                line.push_str(&format!(" · {d}: {ok}/{mapped} delivered, {} retries", s.get(d, "retried")));
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

fn print_summary(
    dests: &[&str],
    map: &crate::pipeline::stage::MapStats,
    send: &crate::sender::SendStats,
    requests: usize,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let outcomes = map.outcomes();
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
        let sum = |prefix: &str| -> u64 {
            outcomes
                .iter()
                .filter(|((dd, o), _)| dd == d && o.starts_with(prefix))
                .map(|(_, n)| *n)
                .sum()
        };
        println!(
            "{:<10} {:>7} {:>9} {:>8} {:>9} {:>8} {:>11} {:>13}",
            d,
            sum("produced"),
            sum("skipped:"),
            sum("rejected:"),
            send.get(d, "delivered"),
            send.get(d, "retried"),
            send.get(d, "retry_topic"),
            send.get(d, "dead_lettered"),
        );
    }
    println!();
    println!("skipped and rejected by reason:");
    for ((d, o), n) in &outcomes {
        if let Some(r) = o
            .strip_prefix("skipped:")
            .or_else(|| o.strip_prefix("rejected:"))
        {
            let kind = if o.starts_with("skipped") {
                "skipped"
            } else {
                "rejected"
            };
            println!("  {d:<10} {kind:<9} {r:<20} {n:>7}");
        }
    }
}
