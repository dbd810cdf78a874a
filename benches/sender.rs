//! Send stage throughput: deliveries/s to the stub destination on loopback, concurrency 64,
//! no faults. `cargo bench --bench sender -- [--records N]`
//!
//! `dest.seg` (on an embedded mock cluster, 16 partitions because the mock keeps 5 MB per
//! partition) is filled with N Seg records mapped from the benchmark corpus; then the Seg send
//! stage starts and the time from the first request the stub sees to the N-th is measured.

#[path = "corpus.rs"]
mod corpus;

use eventrelay::cli::Role;
use eventrelay::config::Config;
use eventrelay::destinations::Routed;
use eventrelay::kafka::{client_config, Embedded};
use eventrelay::pipeline::map_input;
use eventrelay::service::Running;
use eventrelay::stub::Stub;
use prost::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--records")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let topics: Vec<String> = [
        "segment.events",
        "segment.events.dlq",
        "dest.seg",
        "dest.seg.retry",
        "dest.seg.dlq",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let kafka = Embedded::start(&topics, 16).expect("mock");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let stub = Stub::start("127.0.0.1:0", None).await.expect("stub");
        let cfg = Config::from_toml(&format!(
            "[kafka]\nbootstrap_servers = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[destinations.seg]\nendpoint = \"{}\"\nwebsite_id = \"abc8fb18-7559-4324-9921-a4b5015b4a1c\"\nconcurrency = 64\n",
            kafka.bootstrap(),
            stub.url()
        ))
        .expect("config");
        let dests: Vec<_> = cfg.destinations().expect("dests").into_iter().map(|d| d.dest).collect();
        let pool = corpus::corpus(5_000);
        let records: Vec<(String, Vec<u8>)> = pool
            .iter()
            .filter_map(|e| match map_input(&dests, e, None, eventrelay::event::now_millis()) {
                Ok((ev, routed)) => match routed.into_iter().next() {
                    Some(Routed::Records(r)) => Some((ev.user_key().to_string(), r[0].encode_to_vec())),
                    _ => None,
                },
                Err(_) => None,
            })
            .collect();
        let p: BaseProducer = client_config(&cfg.kafka, kafka.bootstrap()).create().expect("producer");
        for i in 0..n {
            let (k, v) = &records[i % records.len()];
            let mut rec = BaseRecord::<str, [u8]>::to("dest.seg").key(k).payload(v);
            while let Err((_, r)) = p.send(rec) {
                rec = r;
                p.poll(Duration::from_millis(5));
            }
            p.poll(Duration::ZERO);
        }
        p.flush(Duration::from_secs(60)).expect("flush");
        let running = Running::start(&cfg, Role::Send).await.expect("send stage");
        while stub.request_count() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let first = Instant::now();
        loop {
            let got = stub.request_count();
            if got >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = first.elapsed().as_secs_f64();
        running.shutdown(Duration::from_secs(30)).await.expect("shutdown");
        println!("\nsender bench (mock cluster, stub on loopback, concurrency 64): {n} Seg deliveries in {secs:.2} s = {:.0} deliveries/s", n as f64 / secs);
    });
}
