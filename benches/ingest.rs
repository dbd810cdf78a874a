//! Ingest throughput: a load generator posting Segment batches of 100 events to `/v1/batch`
//! (as Segment's server libraries do), each answered only after the broker acknowledged all
//! 100, against the same events produced straight to Kafka with ingest's producer settings (the
//! ceiling ingest can approach).
//!
//! `cargo bench --bench ingest -- [--bootstrap HOST:PORT] [--events N] [--concurrency C]
//! [--batch B] [--gzip]`
//!
//! Without `--bootstrap` it runs on the embedded mock cluster with 16 partitions (the mock keeps
//! about 5 MB per partition, so the default 60 k events of ~450 bytes fit). Server and load
//! generator share the machine: the server on a 2-worker runtime, the generator on 1.

use eventrelay::config::Config;
use eventrelay::ingest::Ingest;
use eventrelay::Embedded;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "wk-bench";

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A realistic event: ~450 bytes, the shape analytics-node sends.
fn event(i: usize) -> Value {
    let user = format!("user-{}", (i * 7919) % 5000);
    let common = json!({
        "userId": user, "messageId": format!("bench-{i}"),
        "timestamp": "2026-11-20T10:00:00.000Z",
        "context": {"library": {"name": "@segment/analytics-node", "version": "3.1.0"},
                    "traits": {"email": format!("{user}@example.com")}},
        "_metadata": {"jsRuntime": "node"}
    });
    let mut e = match i % 4 {
        0 => {
            json!({"type": "page", "name": "Product", "properties": {"url": "https://shop.example.com/p/123", "title": "Shoe", "path": "/p/123"}})
        }
        1 => {
            json!({"type": "track", "event": "Product Viewed", "properties": {"product_id": format!("p{i}"), "price": 19.99, "category": "shoes", "brand": "Acme"}})
        }
        2 => {
            json!({"type": "identify", "traits": {"email": format!("{user}@example.com"), "name": "A Person", "plan": "pro"}})
        }
        _ => {
            json!({"type": "track", "event": "Order Completed", "properties": {"order_id": format!("o{i}"), "total": 27.5, "products": [{"product_id": "p1", "sku": "s1", "price": 27.5, "quantity": 1}]}})
        }
    };
    if let (Value::Object(a), Value::Object(b)) = (&mut e, common) {
        a.extend(b);
    }
    e
}

fn bodies(n_requests: usize, batch: usize, gzip: bool) -> Vec<Vec<u8>> {
    (0..n_requests)
        .map(|r| {
            let events: Vec<Value> = (0..batch).map(|j| event(r * batch + j)).collect();
            let text = json!({"batch": events, "sentAt": "2026-11-20T10:00:01.000Z"}).to_string();
            if gzip {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(text.as_bytes()).expect("gzip");
                enc.finish().expect("gzip")
            } else {
                text.into_bytes()
            }
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: usize = arg("--events")
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    let batch: usize = arg("--batch").and_then(|v| v.parse().ok()).unwrap_or(100);
    let concurrency: usize = arg("--concurrency")
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let gzip = args.iter().any(|a| a == "--gzip");
    let embedded = match arg("--bootstrap") {
        Some(_) => None,
        None => Some(Embedded::start(&["segment.events".to_string()], 16).expect("kafka")),
    };
    let bootstrap = arg("--bootstrap")
        .or_else(|| embedded.as_ref().map(|e| e.bootstrap().to_string()))
        .expect("bootstrap");
    let cfg = Config::from_toml(&format!(
        "[kafka]\nbootstrap_servers = \"{bootstrap}\"\n[ingest]\nlisten = \"127.0.0.1:0\"\nwrite_keys = [\"{KEY}\"]\n"
    ))
    .expect("config");
    let n_requests = n.div_ceil(batch);
    let bodies = Arc::new(bodies(n_requests, batch, gzip));
    let raw_bytes: usize = bodies.iter().map(Vec::len).sum();
    println!(
        "ingest bench: {} events in {n_requests} batches of {batch} ({:.0} KB per request{}), concurrency {concurrency}, broker {}",
        n_requests * batch,
        raw_bytes as f64 / n_requests as f64 / 1024.0,
        if gzip { ", gzip" } else { "" },
        if embedded.is_some() { "embedded mock (16 partitions)" } else { bootstrap.as_str() }
    );

    // --- ingest over HTTP ---
    let server_rt = runtime(2);
    let ingest = server_rt
        .block_on(Ingest::bind(&cfg, &bootstrap))
        .expect("bind");
    let addr = ingest.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = server_rt.spawn(ingest.serve(async move {
        let _ = stop_rx.await;
    }));
    let client_rt = runtime(1);
    let (elapsed, mut lat, failures) = client_rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .build()
            .expect("client");
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, next, bodies) = (client.clone(), next.clone(), bodies.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut failures = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    let t = Instant::now();
                    let mut req = client
                        .post(format!("http://{addr}/v1/batch"))
                        .basic_auth(KEY, Some(""))
                        .header("content-type", "application/json")
                        .body(body.clone());
                    if gzip {
                        req = req.header("content-encoding", "gzip");
                    }
                    match req.send().await {
                        Ok(r) if r.status().is_success() => {
                            lat.push(t.elapsed().as_secs_f64() * 1000.0)
                        }
                        Ok(r) => {
                            failures += 1;
                            eprintln!("status {}", r.status());
                        }
                        Err(e) => {
                            failures += 1;
                            eprintln!("error {e}");
                        }
                    }
                }
                (lat, failures)
            }));
        }
        let mut lat = Vec::new();
        let mut failures = 0;
        for t in tasks {
            let (l, f) = t.await.expect("task");
            lat.extend(l);
            failures += f;
        }
        (started.elapsed(), lat, failures)
    });
    let _ = stop_tx.send(());
    let _ = server_rt.block_on(served);
    lat.sort_by(f64::total_cmp);
    let ok_events = lat.len() * batch;
    let ingest_rate = ok_events as f64 / elapsed.as_secs_f64();
    println!(
        "ingest: {ok_events} events acknowledged in {:.2} s = {:.0} events/s ({:.0} requests/s); request latency p50 {:.1} ms, p99 {:.1} ms; {failures} failed requests",
        elapsed.as_secs_f64(),
        ingest_rate,
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    // --- the ceiling: the same events produced directly, same producer settings ---
    let events: Vec<(String, Vec<u8>)> = (0..n_requests * batch)
        .map(|i| {
            let e = event(i);
            (
                e["userId"].as_str().unwrap_or_default().to_string(),
                e.to_string().into_bytes(),
            )
        })
        .collect();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "2")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("producer");
    let direct = client_rt.block_on(async {
        let started = Instant::now();
        for chunk in events.chunks(batch * concurrency) {
            let mut pending = Vec::with_capacity(chunk.len());
            for (k, v) in chunk {
                loop {
                    match producer.send_result(
                        FutureRecord::to("segment.events")
                            .key(k.as_str())
                            .payload(v.as_slice()),
                    ) {
                        Ok(f) => {
                            pending.push(f);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            }
            for f in pending {
                let _ = f.await;
            }
        }
        started.elapsed()
    });
    let direct_rate = events.len() as f64 / direct.as_secs_f64();
    println!(
        "direct produce (no HTTP, {} events in flight at most): {:.0} events/s",
        batch * concurrency,
        direct_rate
    );
    println!("ingest / direct: {:.2}", ingest_rate / direct_rate.max(1.0));
}
