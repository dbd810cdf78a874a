//! Golden tests: every example call in the destination docs (`shared/seeds/`), mapped with the
//! example config, must produce exactly the request SPEC §3 describes.

use eventrelay::config::Config;
use eventrelay::destinations::owneriq::decode_t;
use eventrelay::destinations::Destination;
use eventrelay::tester::map_ndjson;
use serde_json::{json, Value};
use std::sync::Arc;

fn dests() -> Vec<Arc<dyn Destination>> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/eventrelay.toml"
    ))
    .unwrap();
    Config::from_toml(&text)
        .unwrap()
        .destinations()
        .unwrap()
        .into_iter()
        .map(|d| d.dest)
        .collect()
}

/// Map NDJSON text; returns the output lines as JSON.
fn map(input: &str) -> Vec<Value> {
    let mut out = Vec::new();
    map_ndjson(&dests(), input.as_bytes(), &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn example(message_id: &str) -> String {
    let all = include_str!("../examples/events.ndjson");
    all.lines()
        .find(|l| l.contains(&format!("\"messageId\":\"{message_id}\"")))
        .unwrap_or_else(|| panic!("no example {message_id}"))
        .to_string()
}

fn for_dest<'a>(lines: &'a [Value], dest: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["destination"] == dest)
        .unwrap_or_else(|| panic!("no line for {dest} in {lines:?}"))
}

fn seg_body(message_id: &str) -> Value {
    let lines = map(&example(message_id));
    let l = for_dest(&lines, "seg");
    let req = &l["request"];
    assert_eq!(req["method"], "POST", "{l}");
    assert_eq!(
        req["url"],
        "https://tracker.segapp.com/v1/abc8fb18-7559-4324-9921-a4b5015b4a1c/events"
    );
    assert_eq!(req["headers"]["Content-Type"], "application/json");
    assert_eq!(req["headers"]["Idempotency-Key"], message_id);
    req["body"].clone()
}

fn seg_skip(message_id: &str) -> Value {
    for_dest(&map(&example(message_id)), "seg")["skipped"].clone()
}

#[test]
fn owneriq_page_sends_match_keys_to_the_analytics_tag() {
    let lines = map(&example("ex-page-1"));
    let req = &for_dest(&lines, "owneriq")["request"];
    assert_eq!(req["method"], "GET");
    assert_eq!(
        req["url"],
        "https://px.owneriq.net/j/?pt=9nfdft&s=gcb8&t=email|jane.doe%40example.com,customer_id|019mr8mf4r"
    );
    assert_eq!(req["headers"]["Idempotency-Key"], "ex-page-1");
    assert_eq!(req["body"], Value::Null);
}

#[test]
fn owneriq_order_completed_is_a_dct_conversion_with_every_pair() {
    let lines = map(&example("ex-oiq-order-1"));
    let url = for_dest(&lines, "owneriq")["request"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        url.starts_with("https://px.owneriq.net/j/?pt=9nfdft&s=6qg2&cnv=true&t="),
        "{url}"
    );
    let pairs = decode_t(&url).unwrap();
    let want: Vec<(String, String)> = [
        ("brand_1", "Monopoly"),
        ("id_1", "45790-32"),
        ("price_1", "19"),
        ("product_type_1", "Games"),
        ("quantity_1", "1"),
        ("name_1", "Monopoly: 3rd Edition"),
        ("id_2", "46493-32"),
        ("price_2", "3"),
        ("product_type_2", "Games"),
        ("quantity_2", "2"),
        ("name_2", "Uno Card Game"),
        ("order_id", "50314b8e9bcf000000000000"),
        ("total_cost_notax", "27.5"),
        ("customer_id", "019mr8mf4r"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(pairs, want);
}

#[test]
fn owneriq_order_reads_v2_names_and_falls_back_to_revenue() {
    let lines = map(&example("ex-order-no-seg"));
    let url = for_dest(&lines, "owneriq")["request"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let pairs = decode_t(&url).unwrap();
    assert!(pairs.contains(&("order_id".into(), "o-42".into())));
    assert!(pairs.contains(&("total_cost_notax".into(), "12".into())));
    assert!(pairs.contains(&("id_1".into(), "s1".into())));
}

#[test]
fn owneriq_order_without_order_id_is_rejected() {
    let lines = map(&example("ex-order-missing-id"));
    assert_eq!(for_dest(&lines, "owneriq")["rejected"], "missing_order_id");
}

#[test]
fn owneriq_skips_what_it_does_not_take() {
    assert_eq!(
        for_dest(&map(&example("ex-identify-1")), "owneriq")["skipped"],
        "unsupported_type"
    );
    assert_eq!(
        for_dest(&map(&example("ex-signup")), "owneriq")["skipped"],
        "unmapped_event"
    );
    assert_eq!(
        for_dest(&map(&example("ex-screen")), "owneriq")["skipped"],
        "unsupported_type"
    );
}

#[test]
fn seg_identify_with_email_passes_all_traits() {
    assert_eq!(
        seg_body("ex-identify-1"),
        json!({
            "type": "identify",
            "messageId": "ex-identify-1",
            "timestamp": "2026-11-20T09:59:00.000Z",
            "userId": "019mr8mf4r",
            "email": "jane.doe@example.com",
            "traits": {"email": "jane.doe@example.com", "name": "Jane Doe", "plan": "premium"}
        })
    );
}

#[test]
fn seg_identify_without_email_is_skipped() {
    assert_eq!(seg_skip("ex-identify-anon"), "missing_email");
}

#[test]
fn seg_personas_audience_boolean_passes_through() {
    let body = seg_body("ex-personas-1");
    assert_eq!(body["traits"]["order_completed_last_30days"], true);
}

#[test]
fn seg_viewed_product_category_is_range_view_with_categories_and_brands() {
    let body = seg_body("ex-range-1");
    assert_eq!(body["event"], "RangeView");
    assert_eq!(
        body["properties"]["categories"],
        json!(["Games", "Board Games"])
    );
    assert_eq!(body["properties"]["brands"], json!(["Hasbro"]));
    assert_eq!(
        body["page"],
        json!({"url": "https://shop.example.com/games", "title": "Games"})
    );
}

#[test]
fn seg_viewed_product_and_added_product() {
    let body = seg_body("ex-product-1");
    assert_eq!(body["event"], "ProductView");
    for k in [
        "image_url",
        "original_price",
        "variant_name",
        "categories",
        "brands",
    ] {
        assert!(!body["properties"][k].is_null(), "{k}");
    }
    assert_eq!(seg_body("ex-added-1")["event"], "AddedToBasket");
}

#[test]
fn seg_completed_order_v1_and_v2_are_order_placed_with_extra_properties() {
    for id in ["ex-seg-order-v1", "ex-seg-order-v2"] {
        let body = seg_body(id);
        assert_eq!(body["event"], "OrderPlaced", "{id}");
        let p = &body["properties"];
        assert_eq!(p["delivery_method"], "Standard shipping");
        assert_eq!(p["_p"], 15);
        assert_eq!(p["revenue"], 25);
        assert_eq!(
            p["products"][0]["image_url"],
            "http://example.com/url-to-product-image"
        );
        assert_eq!(p["products"][0]["original_price"], 19.99);
        assert_eq!(p["products"][0]["variant_name"], "Product Variant Name");
    }
    assert_eq!(seg_body("ex-seg-order-v1")["email"], "jane.doe@example.com");
}

#[test]
fn seg_page_takes_url_and_title_from_properties() {
    let body = seg_body("ex-page-1");
    assert_eq!(body["name"], "Home");
    assert_eq!(body["url"], "https://shop.example.com/");
    assert_eq!(body["title"], "Shop");
}

#[test]
fn seg_alias_only_between_emails() {
    let body = seg_body("ex-alias-email");
    assert_eq!(body["previousId"], "old-email@segment.com");
    assert_eq!(body["userId"], "new-email@segment.com");
    assert_eq!(seg_skip("ex-alias-ids"), "alias_not_email");
}

#[test]
fn seg_skips_screen_group_and_unmapped_tracks() {
    assert_eq!(seg_skip("ex-screen"), "unsupported_type");
    assert_eq!(seg_skip("ex-group"), "unsupported_type");
    assert_eq!(seg_skip("ex-signup"), "unmapped_event");
}

#[test]
fn integrations_switch_destinations_off() {
    assert_eq!(seg_skip("ex-order-no-seg"), "disabled");
    let lines = map(&example("ex-page-oiq-only"));
    assert_eq!(for_dest(&lines, "seg")["skipped"], "disabled");
    assert!(for_dest(&lines, "owneriq")["request"]["url"]
        .as_str()
        .unwrap()
        .contains("customer_id|anon-77"));
}

#[test]
fn invalid_lines_are_reported_with_their_number() {
    let lines = map("{\"type\":\"page\",\"userId\":\"u\"}\n\nnot json\n{\"type\":\"page\"}\n");
    let invalid: Vec<_> = lines
        .iter()
        .filter(|l| l.get("invalid").is_some())
        .collect();
    assert_eq!(invalid.len(), 2);
    assert_eq!(invalid[0]["line"], 3);
    assert_eq!(invalid[0]["invalid"], "invalid_json");
    assert_eq!(invalid[1]["line"], 4);
    assert_eq!(invalid[1]["invalid"], "missing_identity");
}

#[test]
fn one_line_per_event_and_destination() {
    let all = include_str!("../examples/events.ndjson");
    let lines = map(all);
    let valid = all
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok())
        .count()
        - 1;
    let invalid = lines.iter().filter(|l| l.get("invalid").is_some()).count();
    assert_eq!(invalid, 2);
    assert_eq!(lines.len() - invalid, valid * 2);
}
