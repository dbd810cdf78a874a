//! Mapping throughput on a generated corpus of realistic events (all types, e-commerce events
//! with 1–10 products, 0.5–4 KB), beside serde_json parse-only of the same bytes.
//!
//! `cargo bench --bench mapping` prints events/s for both and the ratio (goal: mapping ≥ 0.6×
//! parse-only). "Mapping" is the whole per-event work of the map stage: parse, validate, run
//! every enabled destination's mapper, build the record and encode it as protobuf.

use criterion::{black_box, criterion_group, Criterion, Throughput};
use eventrelay::config::Config;
use eventrelay::destinations::{Destination, Routed};
use eventrelay::pipeline::map_input;
use prost::Message;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// A deterministic corpus: same events on every run.
pub fn corpus(n: usize) -> Vec<Vec<u8>> {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    let names = [
        "Order Completed",
        "Viewed Product",
        "Added Product",
        "Viewed Product Category",
        "Signed Up",
        "Completed Order",
    ];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let user = format!("user-{}", rnd(5000));
        let ctx = json!({
            "traits": {"email": format!("{user}@example.com")},
            "page": {"url": "https://shop.example.com/p/1", "title": "Product", "path": "/p/1", "referrer": "https://google.com/", "search": ""},
            "ip": "203.0.113.7",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "library": {"name": "analytics.js", "version": "4.1.0"},
        });
        let products: Vec<Value> = (0..1 + rnd(10))
            .map(|p| json!({"product_id": format!("p{p}"), "sku": format!("SKU-{p}-{}", rnd(1000)),
                "name": format!("Product number {p} with a fairly long descriptive name"), "brand": "Hasbro",
                "price": 9.99 + p as f64, "quantity": 1 + rnd(3), "category": "Games",
                "categories": ["Games", "Board Games"], "image_url": "https://cdn.example.com/img/p.jpg"}))
            .collect();
        let kind = rnd(6);
        let mut ev = match kind {
            0 => {
                json!({"type": "page", "name": "Product", "properties": {"url": "https://shop.example.com/p/1", "title": "Product"}})
            }
            1 => {
                json!({"type": "identify", "traits": {"email": format!("{user}@example.com"), "name": "Jane", "plan": "premium", "order_completed_last_30days": true}})
            }
            2 => json!({"type": "screen", "name": "Home"}),
            3 => json!({"type": "alias", "previousId": format!("{user}@old.example.com")}),
            _ => {
                let name = names[rnd(names.len() as u64) as usize];
                json!({"type": "track", "event": name, "properties": {"orderId": format!("o-{i}"), "total": 99.5,
                    "revenue": 90, "currency": "USD", "products": products}})
            }
        };
        let o = ev.as_object_mut().expect("object");
        o.insert(
            "userId".into(),
            Value::from(if kind == 3 {
                format!("{user}@example.com")
            } else {
                user
            }),
        );
        o.insert("messageId".into(), Value::from(format!("bench-{i}")));
        o.insert("timestamp".into(), Value::from("2026-11-20T10:00:00.000Z"));
        o.insert("context".into(), ctx);
        let mut bytes = ev.to_string().into_bytes();
        // Pad small events toward the 0.5–4 KB range with an ignored property.
        let want = 512 + rnd(3584) as usize;
        if bytes.len() < want {
            let mut v: Value = serde_json::from_slice(&bytes).expect("json");
            v["context"]["padding"] = Value::from("x".repeat(want - bytes.len()));
            bytes = v.to_string().into_bytes();
        }
        out.push(bytes);
    }
    out
}

fn dests() -> Vec<Arc<dyn Destination>> {
    Config::from_toml(include_str!("../examples/eventrelay.toml"))
        .expect("config")
        .destinations()
        .expect("destinations")
        .into_iter()
        .map(|d| d.dest)
        .collect()
}

fn map_all(dests: &[Arc<dyn Destination>], corpus: &[Vec<u8>]) -> usize {
    let mut n = 0;
    for e in corpus {
        if let Ok((_, routed)) = map_input(dests, e, None, 0) {
            for r in routed {
                if let Routed::Records(recs) = r {
                    for rec in recs {
                        n += rec.encode_to_vec().len();
                    }
                }
            }
        }
    }
    n
}

fn parse_all(corpus: &[Vec<u8>]) -> usize {
    corpus
        .iter()
        .filter(|e| serde_json::from_slice::<Value>(e).is_ok())
        .count()
}

fn bench(c: &mut Criterion) {
    let corpus = corpus(5_000);
    let dests = dests();
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("per_event");
    g.throughput(Throughput::Elements(corpus.len() as u64));
    g.bench_function("serde_json_parse_only", |b| {
        b.iter(|| parse_all(black_box(&corpus)))
    });
    g.bench_function("map_all_destinations", |b| {
        b.iter(|| map_all(&dests, black_box(&corpus)))
    });
    g.finish();

    // The headline figure: both measured in the same run, interleaved, best of 5 rounds.
    let (mut best_parse, mut best_map) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        black_box(parse_all(&corpus));
        best_parse = best_parse.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        black_box(map_all(&dests, &corpus));
        best_map = best_map.min(t.elapsed().as_secs_f64());
    }
    let n = corpus.len() as f64;
    println!(
        "\nmapping corpus: {} events, {:.0} bytes average\nparse-only: {:.0} events/s\nmap (parse + validate + both mappers + protobuf): {:.0} events/s\nratio map/parse-only: {:.2} (goal >= 0.6)",
        corpus.len(),
        bytes as f64 / n,
        n / best_parse,
        n / best_map,
        best_parse / best_map
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
