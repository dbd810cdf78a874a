//! Hostile-input edges found by trying eventrelay as a new user would (issue 10), one test
//! each: what `eventrelay map` shows is what the service does.

use eventrelay::config::Config;
use eventrelay::destinations::owneriq::MAX_URL_BYTES;
use eventrelay::destinations::{Destination, Method, Routed};
use eventrelay::event::{parse_timestamp, Event, MAX_EVENT_BYTES};
use eventrelay::map_input;
use eventrelay::tester::map_ndjson;
use eventrelay::testkit::decode_t;
use serde_json::Value;
use std::io::Read;
use std::sync::Arc;

fn dests() -> Vec<Arc<dyn Destination>> {
    Config::from_toml(include_str!("../examples/eventrelay.toml"))
        .unwrap()
        .destinations()
        .unwrap()
        .into_iter()
        .map(|d| d.dest)
        .collect()
}

fn map(input: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    map_ndjson(&dests(), input, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn line_for<'a>(lines: &'a [Value], dest: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["destination"] == dest)
        .unwrap_or_else(|| panic!("no {dest} line in {lines:?}"))
}

fn pairs(lines: &[Value]) -> Vec<(String, String)> {
    decode_t(
        line_for(lines, "owneriq")["request"]["url"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
}

fn reason(input: &str) -> &'static str {
    Event::parse(input.as_bytes()).unwrap_err().reason
}

#[test]
fn e1_message_id_with_control_characters_is_invalid_at_map_time() {
    assert_eq!(
        reason(r#"{"type":"page","userId":"u","messageId":"a\u0001b"}"#),
        "invalid_message_id"
    );
    assert_eq!(
        reason(r#"{"type":"page","userId":"u","messageId":"a\nb"}"#),
        "invalid_message_id"
    );
    let lines = map(br#"{"type":"page","userId":"u","messageId":"a\u007fb"}"#);
    assert_eq!(lines[0]["invalid"], "invalid_message_id");
    // Every request built carries a header value the HTTP client accepts.
    let e = Event::parse(br#"{"type":"page","userId":"u","messageId":"ok \u00e9"}"#).unwrap();
    assert!(reqwest::header::HeaderValue::from_str(&e.message_id).is_ok());
}

#[test]
fn e1_message_id_of_only_spaces_is_treated_as_missing() {
    let a = Event::parse(br#"{"type":"page","userId":"u","messageId":"   "}"#).unwrap();
    let b = Event::parse(br#"{"type":"page","userId":"v","messageId":"   "}"#).unwrap();
    assert!(a.message_id.starts_with("er-"), "{}", a.message_id);
    assert_ne!(
        a.message_id, b.message_id,
        "unrelated events must not share a key"
    );
}

#[test]
fn e2_blank_order_id_falls_back_to_order_id_then_id() {
    let order = |props: &str| {
        let e = format!(
            r#"{{"type":"track","userId":"u","event":"Order Completed","properties":{props}}}"#
        );
        map(e.as_bytes())
    };
    let p = pairs(&order(r#"{"orderId":"","order_id":"o-2","id":"o-3"}"#));
    assert!(p.contains(&("order_id".into(), "o-2".into())), "{p:?}");
    let p = pairs(&order(r#"{"orderId":"  ","order_id":" ","id":"o-3"}"#));
    assert!(p.contains(&("order_id".into(), "o-3".into())), "{p:?}");
    let lines = order(r#"{"orderId":"","order_id":null,"id":" "}"#);
    assert_eq!(line_for(&lines, "owneriq")["rejected"], "missing_order_id");
}

#[test]
fn e3_numbers_are_kept_exactly_as_sent() {
    let lines = map(
        br#"{"type":"track","userId":"u","event":"Order Completed","properties":{"orderId":18446744073709551617,"total":1E2,"products":[{"sku":"s","price":-0,"quantity":1.50}]}}"#,
    );
    let p = pairs(&lines);
    assert!(p.contains(&("order_id".into(), "18446744073709551617".into())));
    assert!(p.contains(&("total_cost_notax".into(), "1E2".into())));
    assert!(p.contains(&("price_1".into(), "-0".into())));
    assert!(p.contains(&("quantity_1".into(), "1.50".into())));
    // Products after a non-object element that is a number beyond `f64` are still read
    // (the one-pass walk over `products` falls back to raw elements).
    // (`map` would print a Seg body `serde_json::Value` cannot read back: OwnerIQ only.)
    let oiq = dests();
    let (_, routed) = map_input(
        &oiq,
        br#"{"type":"track","userId":"u","event":"Order Completed","properties":{"orderId":"o","products":[{"sku":"a"},1e400,"x",[1e999],{"sku":"b","price":2e400}]}}"#,
        None,
        0,
    )
    .unwrap();
    let Routed::Records(r) = &routed[0] else {
        panic!("{routed:?}")
    };
    let p = decode_t(&oiq[0].build_request(&r[0]).unwrap().url).unwrap();
    assert!(p.contains(&("id_1".into(), "a".into())), "{p:?}");
    assert!(p.contains(&("id_2".into(), "b".into())), "{p:?}");
    assert!(p.contains(&("price_2".into(), "2e400".into())), "{p:?}");
    assert_eq!(p.iter().filter(|(k, _)| k.starts_with("id_")).count(), 2);
    // The Seg body embeds properties as sent (text, not a re-serialised float).
    let mut out = Vec::new();
    map_ndjson(
        &dests(),
        &br#"{"type":"track","userId":"u","event":"Order Completed","properties":{"orderId":1,"total":1E2,"x":-0}}"#[..],
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(r#""total":1E2,"x":-0"#), "{text}");
}

#[test]
fn e3_user_ids_beyond_u64_stay_distinct() {
    let key = |id: &str| {
        let bytes = format!(r#"{{"type":"page","userId":{id}}}"#);
        let (event, routed) = map_input(&dests(), bytes.as_bytes(), None, 0).unwrap();
        let Routed::Records(r) = &routed[0] else {
            panic!("{routed:?}")
        };
        (event.user_key().to_string(), r[0].user_key.clone())
    };
    let (a, ra) = key("18446744073709551616");
    let (b, rb) = key("18446744073709551617");
    assert_eq!(a, "18446744073709551616");
    assert_eq!(b, "18446744073709551617");
    assert_eq!((ra, rb), (a, b));
}

#[test]
fn e4_owneriq_urls_over_the_cap_are_rejected_with_a_reason_map_shows() {
    let products: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"sku":"sku-{i}","name":"Name with spaces, commas | pipes"}}"#))
        .collect();
    let e = format!(
        r#"{{"type":"track","userId":"u","event":"Order Completed","properties":{{"orderId":"o","products":[{}]}}}}"#,
        products.join(",")
    );
    assert!(e.len() < MAX_EVENT_BYTES);
    let lines = map(e.as_bytes());
    assert_eq!(line_for(&lines, "owneriq")["rejected"], "url_too_long");
    // Just under the cap still goes out, and no URL sent is over it.
    let few = format!(
        r#"{{"type":"track","userId":"u","event":"Order Completed","properties":{{"orderId":"o","products":[{}]}}}}"#,
        products[..40].join(",")
    );
    let lines = map(few.as_bytes());
    let url = line_for(&lines, "owneriq")["request"]["url"]
        .as_str()
        .unwrap();
    assert!(url.len() <= MAX_URL_BYTES);
}

#[test]
fn e5_timestamps_are_read_leniently() {
    let t = |s: &str| parse_timestamp(s);
    let z = t("2026-11-20T10:00:00Z").unwrap();
    assert_eq!(t("2026-11-20T10:00:00+0000"), Some(z));
    assert_eq!(t("2026-11-20T10:00:00+00"), Some(z));
    assert_eq!(t("2026-11-20T11:00:00+01:00"), Some(z));
    assert_eq!(t("2026-11-20T10:00"), Some(z));
    assert_eq!(t("2026-11-20 10:00:00"), Some(z));
    assert_eq!(t("2026-11-20t10:00:00.000z"), Some(z));
    assert_eq!(t("2026-11-20T10:00:00.123456789Z"), Some(z + 123));
    assert_eq!(t("2026-11-20T05:30-0430"), Some(z));
    assert_eq!(t("2026-11-20"), Some(z - 10 * 3600 * 1000));
    for bad in [
        "yesterday",
        "2026-13-01",
        "2026-11-20T25:00",
        "2026-11-20T10:00:00+1",
        "",
        "2026-11-20T",
    ] {
        assert_eq!(t(bad), None, "{bad}");
    }
    // Only sentAt/receivedAt in such a form: the event is valid.
    let lines = map(br#"{"type":"page","userId":"u","sentAt":"2026-11-20T10:00+0000","receivedAt":"2026-11-20"}"#);
    assert!(
        lines.iter().all(|l| l.get("invalid").is_none()),
        "{lines:?}"
    );
}

#[test]
fn e6_nesting_beyond_the_limit_has_its_own_reason() {
    let deep = |n: usize| {
        format!(
            r#"{{"type":"page","userId":"u","properties":{{"p":{}{}}}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    assert_eq!(reason(&deep(200)), "too_deep");
    // Too deep wins over any other problem of the same record.
    assert_eq!(reason(&format!("{} trailing", deep(200))), "too_deep");
    assert_eq!(reason(&format!("[{}]", deep(200))), "too_deep");
    let mut not_utf8 = deep(200).into_bytes();
    not_utf8.insert(1, 0xff);
    assert_eq!(Event::parse(&not_utf8).unwrap_err().reason, "too_deep");
    // Brackets inside strings do not count.
    let in_string = format!(
        r#"{{"type":"page","userId":"u","properties":{{"p":"{}"}}}}"#,
        "[".repeat(300)
    );
    assert!(Event::parse(in_string.as_bytes()).is_ok());
    assert!(Event::parse(deep(100).as_bytes()).is_ok());
}

/// A reader that would hand out `len` bytes of one huge line, then a valid event.
struct HugeLine {
    left: usize,
    tail: &'static [u8],
}

impl Read for HugeLine {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left > 0 {
            let n = buf.len().min(self.left);
            buf[..n].fill(b'x');
            self.left -= n;
            return Ok(n);
        }
        let n = buf.len().min(self.tail.len());
        buf[..n].copy_from_slice(&self.tail[..n]);
        self.tail = &self.tail[n..];
        Ok(n)
    }
}

#[test]
fn e7_map_stops_reading_a_line_at_the_limit_and_skips_blank_lines() {
    let input = std::io::BufReader::new(HugeLine {
        left: 64 * 1024 * 1024,
        tail: b"\n\n   \n{\"type\":\"page\",\"userId\":\"u\"}\n",
    });
    let mut out = Vec::new();
    map_ndjson(&dests(), input, &mut out).unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["line"], 1);
    assert_eq!(lines[0]["invalid"], "too_large");
    assert!(lines[0]["message"]
        .as_str()
        .unwrap()
        .contains("67108864 bytes"));
    // Lines 2 and 3 are blank: no output; line 4 is mapped for both destinations.
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1]["request"]["method"], "GET");
    assert_eq!(lines[2]["request"]["method"], "POST");
    // A line exactly at the limit is read and judged by the event parser.
    let pad = MAX_EVENT_BYTES - r#"{"type":"page","userId":"u","p":""}"#.len();
    let exact = format!(
        r#"{{"type":"page","userId":"u","p":"{}"}}"#,
        "x".repeat(pad)
    );
    assert_eq!(exact.len(), MAX_EVENT_BYTES);
    assert!(map(exact.as_bytes())
        .iter()
        .all(|l| l.get("invalid").is_none()));
    let over = format!(
        r#"{{"type":"page","userId":"u","p":"{}"}}"#,
        "x".repeat(pad + 1)
    );
    assert_eq!(map(over.as_bytes())[0]["invalid"], "too_large");
}

#[test]
fn e8_endpoint_with_query_or_fragment_is_refused_naming_the_key() {
    for endpoint in [
        "https://px.owneriq.net#frag",
        "https://px.owneriq.net/?a=b",
        "https://px.owneriq.net?",
    ] {
        let toml = format!(
            "[destinations.owneriq]\nendpoint = \"{endpoint}\"\ndata_group_id = \"a\"\nanalytics_tag_id = \"b\"\ndct_tag_id = \"c\"\n"
        );
        let err = Config::from_toml(&toml)
            .and_then(|c| c.destinations().map(|_| ()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("destinations.owneriq.endpoint"),
            "{endpoint}: {err}"
        );
    }
    let toml = "[destinations.seg]\nendpoint = \"https://t.example/x#y\"\nwebsite_id = \"abc8fb18-7559-4324-9921-a4b5015b4a1c\"\n";
    let err = Config::from_toml(toml)
        .and_then(|c| c.destinations().map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("destinations.seg.endpoint"), "{err}");
}

#[test]
fn method_is_an_enum_printed_as_its_name() {
    assert_eq!(serde_json::to_value(Method::Get).unwrap(), "GET");
    assert_eq!(serde_json::to_value(Method::Post).unwrap(), "POST");
}
