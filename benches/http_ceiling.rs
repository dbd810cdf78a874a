//! The HTTP ceiling of this machine, for reading the sender bench: how many requests per second
//! reqwest (the sender's client) gets from an axum server that does nothing but answer 200, at
//! concurrency 64 over loopback, with no Kafka and no mapping. `cargo bench --bench http_ceiling`
//!
//! Two layouts: client and server each on a runtime with one worker thread (as the sender and a
//! stub process share 2 cores), and both on one runtime with 2 workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const URL_PATH: &str = "/v1/abc8fb18-7559-4324-9921-a4b5015b4a1c/events";
const BODY: &str = r#"{"type":"track","messageId":"m-1","event":"ProductView","userId":"u-1"}"#;

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn serve() -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/v1/{id}/events",
        axum::routing::post(|_b: axum::body::Bytes| async { axum::http::StatusCode::OK }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    addr
}

/// Requests/s of 64 looping clients over `secs` after a 1 s warm-up.
async fn load(addr: std::net::SocketAddr, secs: u64) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let n = Arc::new(AtomicU64::new(0));
    let url = format!("http://{addr}{URL_PATH}");
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (c, n, url) = (client.clone(), n.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let sent = c
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("m-{i}"))
                    .body(BODY)
                    .send()
                    .await;
                if let Ok(r) = sent {
                    let _ = r.bytes().await;
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = n.load(Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let rate = (n.load(Ordering::Relaxed) - start) as f64 / t.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    rate
}

fn main() {
    let server_rt = runtime(1);
    let addr = server_rt.block_on(serve());
    let split = runtime(1).block_on(load(addr, 4));
    drop(server_rt);
    let shared_rt = runtime(2);
    let shared = shared_rt.block_on(async { load(serve().await, 4).await });
    println!("\nHTTP ceiling (reqwest → axum answering 200, loopback, concurrency 64, no Kafka):");
    println!("client and server on one worker thread each: {split:.0} requests/s");
    println!("client and server on one 2-worker runtime:   {shared:.0} requests/s");
}
