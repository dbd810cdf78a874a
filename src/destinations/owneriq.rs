//! OwnerIQ: page views to the Website Analytics Tag, `Order Completed` to a DCT conversion.
//!
//! OwnerIQ's browser pixel is `GET {endpoint}/j/?pt=<dataGroupId>&s=<tagId>&t=<pairs>`, `t` a
//! comma-joined list of `key|value` pairs with each key and value percent-encoded. We send the
//! same request server-side. Everything outside the RFC 3986 unreserved set is encoded, so `,`,
//! `|`, `&` and `=` inside a value can never be confused with the separators.

use super::{
    common_headers, deny_unknown, endpoint, required_str, BuildError, ConfigError, Destination,
    HttpRequest, MapOutcome, Method,
};
use crate::event::{raw, Ecommerce, Event, EventType};
use crate::record::{owner_iq_hit::Kind, record::Payload, OwnerIqHit, Pair, Record};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// Longest OwnerIQ URL sent. Common servers refuse a request line over 8 KB (nginx's
/// `large_client_header_buffers`, Apache's `LimitRequestLine`) with 414, which is permanent:
/// a longer URL is rejected at map time (`url_too_long`, to the input dead-letter topic), so
/// `eventrelay map` shows it and nothing is sent that cannot be received. 8,000 leaves room for
/// `GET ` and ` HTTP/1.1` in the 8,192-byte line.
pub const MAX_URL_BYTES: usize = 8_000;

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

/// Length of `s` once percent-encoded, without encoding it.
fn encoded_len(s: &str) -> usize {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                1
            } else {
                3
            }
        })
        .sum()
}

fn push(pairs: &mut Vec<Pair>, key: impl Into<String>, value: Option<&RawValue>) {
    if let Some(value) = value.and_then(raw::text) {
        pairs.push(Pair {
            key: key.into(),
            value: value.into_owned(),
        });
    }
}

/// The first of `values` that is present and not null.
fn first<const N: usize>(values: [Option<&RawValue>; N]) -> Option<&RawValue> {
    values.into_iter().find_map(raw::present)
}

fn match_keys(event: &Event<'_>, props_email: Option<&RawValue>, pairs: &mut Vec<Pair>) {
    let email = match event.email() {
        Some(e) => Some(e.to_string()),
        None => raw::present(props_email)
            .and_then(raw::text)
            .map(Cow::into_owned),
    };
    if let Some(value) = email {
        pairs.push(Pair {
            key: "email".into(),
            value,
        });
    }
    pairs.push(Pair {
        key: "customer_id".into(),
        value: event.user_key().to_string(),
    });
}

impl OwnerIq {
    /// The URL up to `&t=`, for a hit of this kind.
    fn prefix(&self, kind: Kind) -> Option<String> {
        let (tag, conversion) = match kind {
            Kind::Page => (&self.analytics_tag_id, false),
            Kind::Conversion => (&self.dct_tag_id, true),
            Kind::Unspecified => return None,
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
        Some(url)
    }

    /// The length of the URL for these pairs, computed without building it.
    fn url_len(&self, kind: Kind, pairs: &[Pair]) -> usize {
        let prefix = match kind {
            Kind::Page => encoded_len(&self.analytics_tag_id),
            Kind::Conversion => encoded_len(&self.dct_tag_id) + "&cnv=true".len(),
            Kind::Unspecified => 0,
        } + self.endpoint.len()
            + "/j/?pt=".len()
            + encoded_len(&self.data_group_id)
            + "&s=".len()
            + "&t=".len();
        let t: usize = pairs
            .iter()
            .map(|p| encoded_len(&p.key) + 1 + encoded_len(&p.value))
            .sum();
        prefix + t + pairs.len().saturating_sub(1)
    }
}

impl Destination for OwnerIq {
    fn name(&self) -> &'static str {
        "owneriq"
    }

    fn integration_key(&self) -> &'static str {
        "OwnerIQ"
    }

    fn map(&self, event: &Event<'_>) -> MapOutcome {
        let mut pairs = Vec::new();
        let mut props_email = None;
        let kind = match event.kind {
            EventType::Page => {
                if event.email().is_none() {
                    props_email = event.properties.and_then(|p| raw::pick(p, ["email"])[0]);
                }
                Kind::Page
            }
            EventType::Track => {
                if event.event_name().and_then(Ecommerce::from_name)
                    != Some(Ecommerce::OrderCompleted)
                {
                    return MapOutcome::Skip("unmapped_event");
                }
                let [products, order_id, order_id2, id, total, revenue, email] =
                    event.properties.map_or([None; 7], |p| {
                        raw::pick(
                            p,
                            [
                                "products", "orderId", "order_id", "id", "total", "revenue",
                                "email",
                            ],
                        )
                    });
                props_email = email;
                let products = products.map(raw::elements).unwrap_or_default();
                for (i, product) in products
                    .into_iter()
                    .filter(|p| raw::is_object(p))
                    .enumerate()
                {
                    let n = i + 1;
                    let [brand, sku, price, category, quantity, name, title] = raw::pick(
                        product,
                        [
                            "brand", "sku", "price", "category", "quantity", "name", "title",
                        ],
                    );
                    push(&mut pairs, format!("brand_{n}"), raw::present(brand));
                    push(&mut pairs, format!("id_{n}"), raw::present(sku));
                    push(&mut pairs, format!("price_{n}"), raw::present(price));
                    push(
                        &mut pairs,
                        format!("product_type_{n}"),
                        raw::present(category),
                    );
                    push(&mut pairs, format!("quantity_{n}"), raw::present(quantity));
                    push(&mut pairs, format!("name_{n}"), first([name, title]));
                }
                // The first usable id: a blank string falls back to the next name.
                let order_id = [order_id, order_id2, id].into_iter().find(|v| {
                    v.is_some_and(|v| {
                        !raw::is_null(v) && raw::as_str(v).is_none_or(|s| !s.trim().is_empty())
                    })
                });
                let Some(order_id) = order_id else {
                    return MapOutcome::Reject("missing_order_id");
                };
                push(&mut pairs, "order_id", order_id);
                match first([total, revenue]) {
                    Some(total) => push(&mut pairs, "total_cost_notax", Some(total)),
                    None => pairs.push(Pair {
                        key: "total_cost_notax".into(),
                        value: "0".into(),
                    }),
                }
                Kind::Conversion
            }
            _ => return MapOutcome::Skip("unsupported_type"),
        };
        match_keys(event, props_email, &mut pairs);
        if self.url_len(kind, &pairs) > MAX_URL_BYTES {
            return MapOutcome::Reject("url_too_long");
        }
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
        let Some(mut url) = Kind::try_from(hit.kind).ok().and_then(|k| self.prefix(k)) else {
            return Err(BuildError {
                reason: "wrong_payload",
                message: format!("unknown OwnerIQ hit kind {}", hit.kind),
            });
        };
        for (i, pair) in hit.pairs.iter().enumerate() {
            if i > 0 {
                url.push(',');
            }
            url.extend(utf8_percent_encode(&pair.key, ENCODE));
            url.push('|');
            url.extend(utf8_percent_encode(&pair.value, ENCODE));
        }
        // Settings may have changed since the record was mapped (a longer endpoint).
        if url.len() > MAX_URL_BYTES {
            return Err(BuildError {
                reason: "url_too_long",
                message: format!(
                    "the URL would be {} bytes, the limit is {MAX_URL_BYTES}",
                    url.len()
                ),
            });
        }
        Ok(HttpRequest {
            method: Method::Get,
            url,
            headers: common_headers(record),
            body: None,
        })
    }
}
