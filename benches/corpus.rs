//! A deterministic corpus of realistic Segment events for the benchmarks: all call types,
//! e-commerce events with 1–10 products, 0.5–4 KB each.

use serde_json::{json, Value};

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
