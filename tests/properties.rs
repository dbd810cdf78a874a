//! Property tests for parsing and the mappers: no input panics, mapping is deterministic,
//! every request URL parses, and an OwnerIQ `t` list decodes back to what went in.

use eventrelay::config::Config;
use eventrelay::destinations::{Destination, Routed};
use eventrelay::map_input;
use eventrelay::testkit::decode_t;
use proptest::prelude::*;
use prost::Message as _;
use serde_json::{json, Map, Value};
use std::sync::Arc;

fn dests() -> Vec<Arc<dyn Destination>> {
    let text = include_str!("../examples/eventrelay.toml");
    Config::from_toml(text)
        .unwrap()
        .destinations()
        .unwrap()
        .into_iter()
        .map(|d| d.dest)
        .collect()
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text values including separators and non-ASCII, for the `t` list round trip.
fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9 ,|&=%+#?/:@é中\\-_.~]{0,15}"
}

/// A Segment-shaped event with arbitrary values in the places mappers read.
fn segmentish() -> impl Strategy<Value = Value> {
    let kinds = prop::sample::select(vec![
        "identify", "track", "page", "screen", "group", "alias",
    ]);
    let names = prop::sample::select(vec![
        "Order Completed",
        "completed order",
        "Viewed Product",
        "Product Added",
        "Viewed Product Category",
        "Signed Up",
    ]);
    (
        kinds,
        names,
        any_json(),
        any_json(),
        any_json(),
        text(),
        prop::option::of(text()),
    )
        .prop_map(|(kind, name, props, traits, ctx, user, email)| {
            let mut ev = Map::new();
            ev.insert("type".into(), json!(kind));
            ev.insert("userId".into(), json!(user));
            ev.insert("event".into(), json!(name));
            ev.insert("previousId".into(), json!("prev@example.com"));
            ev.insert("properties".into(), props);
            ev.insert("traits".into(), traits);
            ev.insert(
                "context".into(),
                json!({"traits": {"email": email}, "page": ctx}),
            );
            Value::Object(ev)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = map_input(&dests(), &bytes, None, 0);
    }

    #[test]
    fn any_json_never_panics(v in any_json()) {
        let _ = map_input(&dests(), v.to_string().as_bytes(), None, 0);
    }

    #[test]
    fn mapping_is_deterministic_and_urls_parse(v in segmentish()) {
        let dests = dests();
        let bytes = v.to_string();
        let a = map_input(&dests, bytes.as_bytes(), None, 0);
        let b = map_input(&dests, bytes.as_bytes(), None, 0);
        prop_assert_eq!(&a, &b);
        if let Ok((_, routed)) = a {
            for (dest, r) in dests.iter().zip(routed) {
                if let Routed::Records(records) = r {
                    for record in records {
                        let req = dest.build_request(&record).unwrap();
                        // The send stage reads the record as a `Delivery`: the same request.
                        let narrow = eventrelay::record::Delivery::decode(record.encode_to_vec().as_slice())
                            .map(eventrelay::record::Record::from)
                            .unwrap();
                        prop_assert_eq!(&dest.build_request(&narrow).unwrap(), &req);
                        prop_assert!(url::Url::parse(&req.url).is_ok(), "{}", req.url);
                        if let Some(body) = &req.body {
                            prop_assert!(serde_json::from_slice::<Value>(body).is_ok());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn owneriq_t_list_decodes_to_what_went_in(
        brand in text(), sku in text(), name in text(), order in text(),
        email in text(), user in text(), price in any::<u32>(),
    ) {
        let ev = json!({
            "type": "track", "userId": user, "event": "Order Completed",
            "context": {"traits": {"email": email}},
            "properties": {"orderId": order, "total": 1.5,
                "products": [{"brand": brand, "sku": sku, "name": name, "price": price}]}
        });
        let dests = dests();
        let (_, routed) = map_input(&dests, ev.to_string().as_bytes(), None, 0).unwrap();
        let Routed::Records(records) = &routed[0] else { panic!("{:?}", routed[0]) };
        let req = dests[0].build_request(&records[0]).unwrap();
        let pairs = decode_t(&req.url).unwrap();
        let want: Vec<(String, String)> = vec![
            ("brand_1".into(), brand), ("id_1".into(), sku), ("price_1".into(), price.to_string()),
            ("name_1".into(), name), ("order_id".into(), order),
            ("total_cost_notax".into(), "1.5".into()), ("email".into(), email),
            ("customer_id".into(), user),
        ];
        prop_assert_eq!(pairs, want);
    }
}

/// An `Order Completed` `properties` object: order fields and products with arbitrary values,
/// products mixing objects and other values, and arbitrary extra members.
fn order_properties() -> impl Strategy<Value = Value> {
    let product = prop_oneof![
        3 => prop::collection::btree_map(
            prop::sample::select(vec!["brand", "sku", "price", "category", "quantity", "name", "title", "image_url"]),
            any_json(),
            0..6,
        )
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        1 => any_json(),
    ];
    (
        prop::collection::btree_map(
            prop::sample::select(vec![
                "orderId", "order_id", "id", "total", "revenue", "email", "currency", "url",
            ]),
            any_json(),
            0..6,
        ),
        prop::option::of(prop::collection::vec(product, 0..5)),
    )
        .prop_map(|(members, products)| {
            let mut m: Map<String, Value> = members
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            if let Some(p) = products {
                m.insert("products".into(), Value::Array(p));
            }
            Value::Object(m)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The event pass reads an order's `properties` member by member, on the way when `event`
    /// comes first and from the slice when it comes later, keys written with escapes or not.
    /// Every way gives the same records, whitespace included.
    #[test]
    fn an_order_maps_the_same_whichever_way_it_is_read(
        props in order_properties(),
        pretty in any::<bool>(),
        ws in prop::sample::select(vec!["", " ", "\n  ", "\t"]),
    ) {
        let props = if pretty { serde_json::to_string_pretty(&props).unwrap() } else { props.to_string() };
        let head = r#""type":"track","userId":"u-1","messageId":"m-1","context":{"traits":{"email":"a@b.co"}}"#;
        let name = r#""event":"Order Completed""#;
        let layouts = [
            // before the next key, at the end of the event, after the walk, an escaped key
            format!("{{{head},{name},{ws}\"properties\"{ws}:{ws}{props}{ws},{ws}\"x\":1}}"),
            format!("{{{head},{name},\"properties\":{ws}{props}{ws}}}{ws}"),
            format!("{{{head},\"properties\":{props},{name}}}"),
            format!("{{{head},{name},\"properties\":{props},\"\\u0078\":1}}"),
        ];
        for layout in &layouts {
            let event = eventrelay::event::Event::parse(layout.as_bytes()).unwrap();
            prop_assert!(event.order().is_some(), "{}", layout);
        }
        let dests = dests();
        let mapped: Vec<_> = layouts
            .iter()
            .map(|e| map_input(&dests, e.as_bytes(), None, 0).map(|(_, routed)| routed).map_err(|e| e.reason))
            .collect();
        for (layout, m) in layouts.iter().zip(&mapped).skip(1) {
            prop_assert_eq!(&mapped[0], m, "{}", layout);
        }
    }
}
