//! OwnerIQ: page views to the Website Analytics Tag, `Order Completed` to a DCT conversion.
//!
//! OwnerIQ's browser pixel is `GET {endpoint}/j/?pt=<dataGroupId>&s=<tagId>&t=<pairs>`, `t` a
//! comma-joined list of `key|value` pairs with each key and value percent-encoded. We send the
//! same request server-side. Everything outside the RFC 3986 unreserved set is encoded, so `,`,
//! `|`, `&` and `=` inside a value can never be confused with the separators.

use super::{
    common_headers, deny_unknown, endpoint, json_text, required_str, BuildError, ConfigError,
    Destination, HttpRequest, MapOutcome,
};
use crate::event::{Ecommerce, Event, EventType};
use crate::record::{owner_iq_hit::Kind, record::Payload, OwnerIqHit, Pair, Record};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};
use std::fmt::Write;
use std::sync::Arc;

/// Default OwnerIQ pixel host.
pub const DEFAULT_ENDPOINT: &str = "https://px.owneriq.net";

/// Characters left as is: RFC 3986 unreserved.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// OwnerIQ settings (SPEC §3).
#[derive(Debug, Clone)]
pub struct OwnerIq {
    /// Base URL, no trailing slash.
    pub endpoint: String,
    /// `pt`.
    pub data_group_id: String,
    /// `s` for page calls.
    pub analytics_tag_id: String,
    /// `s` for conversions.
    pub dct_tag_id: String,
}

impl OwnerIq {
    /// Build from the `[destinations.owneriq]` section.
    pub fn from_config(t: &toml::Table) -> Result<Arc<dyn Destination>, ConfigError> {
        deny_unknown(
            t,
            &[
                "endpoint",
                "data_group_id",
                "analytics_tag_id",
                "dct_tag_id",
            ],
        )?;
        Ok(Arc::new(OwnerIq {
            endpoint: endpoint(t, DEFAULT_ENDPOINT)?,
            data_group_id: required_str(t, "data_group_id")?,
            analytics_tag_id: required_str(t, "analytics_tag_id")?,
            dct_tag_id: required_str(t, "dct_tag_id")?,
        }))
    }
}

/// Percent-encode one key or value of the `t` list (or a query parameter).
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

fn push(pairs: &mut Vec<Pair>, key: impl Into<String>, value: Option<&Value>) {
    if let Some(value) = value.and_then(json_text) {
        pairs.push(Pair {
            key: key.into(),
            value,
        });
    }
}

fn first<'a>(m: Option<&'a Map<String, Value>>, keys: &[&str]) -> Option<&'a Value> {
    let m = m?;
    keys.iter().filter_map(|k| m.get(*k)).find(|v| !v.is_null())
}

fn match_keys(event: &Event, pairs: &mut Vec<Pair>) {
    let email = event
        .email()
        .map(|e| Value::String(e.to_string()))
        .or_else(|| first(event.object("properties"), &["email"]).cloned());
    push(pairs, "email", email.as_ref());
    let customer = Value::String(event.user_key().to_string());
    push(pairs, "customer_id", Some(&customer));
}

impl Destination for OwnerIq {
    fn name(&self) -> &'static str {
        "owneriq"
    }

    fn integration_key(&self) -> &'static str {
        "OwnerIQ"
    }

    fn map(&self, event: &Event) -> MapOutcome {
        let mut pairs = Vec::new();
        let kind = match event.kind {
            EventType::Page => Kind::Page,
            EventType::Track => {
                if event.event_name().and_then(Ecommerce::from_name)
                    != Some(Ecommerce::OrderCompleted)
                {
                    return MapOutcome::Skip("unmapped_event");
                }
                let props = event.object("properties");
                let empty = Vec::new();
                let products = props
                    .and_then(|p| p.get("products"))
                    .and_then(Value::as_array)
                    .unwrap_or(&empty);
                for (i, product) in products.iter().filter_map(Value::as_object).enumerate() {
                    let n = i + 1;
                    let p = Some(product);
                    push(&mut pairs, format!("brand_{n}"), first(p, &["brand"]));
                    push(&mut pairs, format!("id_{n}"), first(p, &["sku"]));
                    push(&mut pairs, format!("price_{n}"), first(p, &["price"]));
                    push(
                        &mut pairs,
                        format!("product_type_{n}"),
                        first(p, &["category"]),
                    );
                    push(&mut pairs, format!("quantity_{n}"), first(p, &["quantity"]));
                    push(
                        &mut pairs,
                        format!("name_{n}"),
                        first(p, &["name", "title"]),
                    );
                }
                let order_id = first(props, &["orderId", "order_id", "id"])
                    .filter(|v| v.as_str().is_none_or(|s| !s.trim().is_empty()));
                let Some(order_id) = order_id else {
                    return MapOutcome::Reject("missing_order_id");
                };
                push(&mut pairs, "order_id", Some(order_id));
                let zero = Value::from(0);
                let total = first(props, &["total", "revenue"]).unwrap_or(&zero);
                push(&mut pairs, "total_cost_notax", Some(total));
                Kind::Conversion
            }
            _ => return MapOutcome::Skip("unsupported_type"),
        };
        match_keys(event, &mut pairs);
        MapOutcome::Deliver(vec![Payload::Owneriq(OwnerIqHit {
            kind: kind as i32,
            pairs,
        })])
    }

    fn build_request(&self, record: &Record) -> Result<HttpRequest, BuildError> {
        let Some(Payload::Owneriq(hit)) = &record.payload else {
            return Err(BuildError {
                reason: "wrong_payload",
                message: "record has no OwnerIQ payload".into(),
            });
        };
        let (tag, conversion) = match Kind::try_from(hit.kind) {
            Ok(Kind::Page) => (&self.analytics_tag_id, false),
            Ok(Kind::Conversion) => (&self.dct_tag_id, true),
            _ => {
                return Err(BuildError {
                    reason: "wrong_payload",
                    message: format!("unknown OwnerIQ hit kind {}", hit.kind),
                })
            }
        };
        let mut url = format!(
            "{}/j/?pt={}&s={}",
            self.endpoint,
            encode(&self.data_group_id),
            encode(tag)
        );
        if conversion {
            url.push_str("&cnv=true");
        }
        url.push_str("&t=");
        for (i, pair) in hit.pairs.iter().enumerate() {
            if i > 0 {
                url.push(',');
            }
            let _ = write!(url, "{}|{}", encode(&pair.key), encode(&pair.value));
        }
        Ok(HttpRequest {
            method: "GET",
            url,
            headers: common_headers(record),
            body: None,
        })
    }
}

/// Decode an OwnerIQ URL's `t` list back into pairs, the way SPEC §3 describes a decoder.
/// Used by tests and the stub destination.
pub fn decode_t(url: &str) -> Option<Vec<(String, String)>> {
    let query = url.split_once('?')?.1;
    let t = query.split('&').find_map(|kv| kv.strip_prefix("t="))?;
    if t.is_empty() {
        return Some(Vec::new());
    }
    t.split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('|')?;
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .ok()
                    .map(|c| c.into_owned())
            };
            Some((dec(k)?, dec(v)?))
        })
        .collect()
}
