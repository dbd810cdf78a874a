//! Parse the mapping bench's corpus with each candidate parser, one thread, best of 7 rounds.
//! Every candidate reads the same bytes and must touch what the event model needs: the
//! identity fields as text and `properties`, `traits`, `context.traits`, `context.page` as raw
//! slices (or values, for the tree parsers).

#[path = "../../corpus.rs"]
mod corpus;

use std::hint::black_box;
use std::time::Instant;

/// The event model's shape, for one raw-slice type `$raw`.
macro_rules! model {
    ($m:ident, $raw:ty) => {
        mod $m {
            use serde::Deserialize;
            use std::borrow::Cow;
            #[derive(Deserialize)]
            pub struct Ctx<'a> {
                #[serde(borrow)]
                pub traits: Option<$raw>,
                #[serde(borrow)]
                pub page: Option<$raw>,
            }
            #[derive(Deserialize)]
            pub struct Ev<'a> {
                #[serde(rename = "type", borrow)]
                pub kind: Option<Cow<'a, str>>,
                #[serde(rename = "messageId", borrow)]
                pub message_id: Option<Cow<'a, str>>,
                #[serde(rename = "userId", borrow)]
                pub user_id: Option<$raw>,
                #[serde(rename = "anonymousId", borrow)]
                pub anonymous_id: Option<$raw>,
                #[serde(borrow)]
                pub event: Option<Cow<'a, str>>,
                #[serde(borrow)]
                pub timestamp: Option<Cow<'a, str>>,
                #[serde(borrow)]
                pub properties: Option<$raw>,
                #[serde(borrow)]
                pub traits: Option<$raw>,
                #[serde(borrow)]
                pub integrations: Option<$raw>,
                #[serde(borrow)]
                pub context: Option<Ctx<'a>>,
            }
            pub fn touch(e: &Ev<'_>) -> usize {
                e.kind.as_ref().map_or(0, |s| s.len())
                    + e.message_id.as_ref().map_or(0, |s| s.len())
                    + e.event.as_ref().map_or(0, |s| s.len())
                    + e.timestamp.as_ref().map_or(0, |s| s.len())
                    + e.user_id.is_some() as usize
                    + e.anonymous_id.is_some() as usize
                    + e.properties.is_some() as usize
                    + e.traits.is_some() as usize
                    + e.integrations.is_some() as usize
                    + e.context.as_ref().map_or(0, |c| {
                        c.traits.is_some() as usize + c.page.is_some() as usize
                    })
            }
        }
    };
}

model!(sj, &'a serde_json::value::RawValue);
model!(sonic, sonic_rs::LazyValue<'a>);

/// jiter: walk the top-level object, read the text fields, keep the rest as raw slices (byte
/// ranges around `next_skip`), after one UTF-8 check of the whole record (jiter's skip does
/// not check UTF-8; the event model checks the record once up front).
fn jiter_model(e: &[u8]) -> Option<usize> {
    use jiter::{Jiter, Peek};
    std::str::from_utf8(e).ok()?;
    let mut j = Jiter::new(e);
    let mut n = 0usize;
    let raw = |j: &mut Jiter<'_>| -> Option<usize> {
        let start = j.current_index();
        j.next_skip().ok()?;
        Some(j.slice_to_current(start).len())
    };
    let mut key = j.next_object().ok()?.map(str::to_owned);
    while let Some(k) = key.as_deref() {
        match k {
            "type" | "messageId" | "event" | "timestamp" => n += j.next_str().ok()?.len(),
            "userId" | "anonymousId" | "properties" | "traits" | "integrations" => n += raw(&mut j)?,
            "context" => {
                if j.peek().ok()? == Peek::Object {
                    let mut ck = j.next_object().ok()?.map(str::to_owned);
                    while let Some(c) = ck.as_deref() {
                        match c {
                            "traits" | "page" => n += raw(&mut j)?,
                            _ => j.next_skip().ok()?,
                        }
                        ck = j.next_key().ok()?.map(str::to_owned);
                    }
                } else {
                    j.next_skip().ok()?;
                }
            }
            _ => j.next_skip().ok()?,
        }
        key = j.next_key().ok()?.map(str::to_owned);
    }
    j.finish().ok()?;
    Some(n)
}

/// sonic-rs: the lazy object iterator (validating), raw slices of the values kept.
fn sonic_iter_model(e: &[u8]) -> Option<usize> {
    use sonic_rs::JsonValueTrait;
    let text = std::str::from_utf8(e).ok()?;
    let mut n = 0usize;
    for kv in sonic_rs::to_object_iter(text) {
        let (k, v) = kv.ok()?;
        match &*k {
            "type" | "messageId" | "event" | "timestamp" => n += v.as_str()?.len(),
            "userId" | "anonymousId" | "properties" | "traits" | "integrations" => n += v.as_raw_str().len(),
            "context" => {
                for ckv in sonic_rs::to_object_iter(v.as_raw_str()) {
                    let (c, cv) = ckv.ok()?;
                    if &*c == "traits" || &*c == "page" {
                        n += cv.as_raw_str().len();
                    }
                }
            }
            _ => {}
        }
    }
    Some(n)
}

fn time(name: &str, corpus: &[Vec<u8>], base: Option<f64>, mut f: impl FnMut(&[u8]) -> usize) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        let mut n = 0;
        for e in corpus {
            n += f(e);
        }
        black_box(n);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let rate = corpus.len() as f64 / best;
    let ratio = base.map_or(String::from("1.00"), |b| format!("{:.2}", rate / b));
    println!("| {name} | {:.0} k | {:.2} µs | {ratio} |", rate / 1e3, 1e6 / rate);
    rate
}

fn main() {
    let corpus = corpus::corpus(5_000);
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    println!(
        "corpus: {} events, {:.0} bytes average; sonic-rs built {}",
        corpus.len(),
        bytes as f64 / corpus.len() as f64,
        if cfg!(target_feature = "avx2") { "with AVX2 (target-cpu=native)" } else { "without -C target-cpu=native" }
    );
    println!("| parser | events/s | per event | × serde_json Value |\n|---|---|---|---|");
    let base = time("serde_json → `Value` (preserve_order)", &corpus, None, |e| {
        serde_json::from_slice::<serde_json::Value>(e).map_or(0, |v| v.as_object().map_or(0, |o| o.len()))
    });
    time("serde_json → borrowed struct + `&RawValue`", &corpus, Some(base), |e| {
        serde_json::from_slice::<sj::Ev<'_>>(e).map_or(0, |v| sj::touch(&v))
    });
    time("sonic-rs → `sonic_rs::Value`", &corpus, Some(base), |e| {
        use sonic_rs::JsonContainerTrait;
        sonic_rs::from_slice::<sonic_rs::Value>(e).map_or(0, |v| v.as_object().map_or(0, |o| o.len()))
    });
    time("sonic-rs → borrowed struct + `LazyValue`", &corpus, Some(base), |e| {
        sonic_rs::from_slice::<sonic::Ev<'_>>(e).map_or(0, |v| sonic::touch(&v))
    });
    time("jiter → top-level walk, raw slices by index (UTF-8 checked once)", &corpus, Some(base), |e| {
        jiter_model(e).unwrap_or(0)
    });
    time("sonic-rs → lazy object iterator, raw slices (UTF-8 checked once)", &corpus, Some(base), |e| {
        sonic_iter_model(e).unwrap_or(0)
    });
    let mut buf = Vec::new();
    time("simd-json → `BorrowedValue` (copy into a reused buffer first)", &corpus, Some(base), |e| {
        use simd_json::prelude::*;
        buf.clear();
        buf.extend_from_slice(e);
        simd_json::to_borrowed_value(&mut buf).map_or(0, |v| v.as_object().map_or(0, |o| o.len()))
    });
}
