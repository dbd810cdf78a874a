//! OwnerIQ: page views to the Website Analytics Tag, `Order Completed` to a DCT conversion.
//!
//! OwnerIQ's browser pixel is `GET {endpoint}/j/?pt=<dataGroupId>&s=<tagId>&t=<pairs>`, `t` a
//! comma-joined list of `key|value` pairs with each key and value percent-encoded. We send the
//! same request server-side. Everything outside the RFC 3986 unreserved set is encoded, so `,`,
//! `|`, `&` and `=` inside a value can never be confused with the separators.

use super::{
    common_headers, deny_unknown, endpoint, required_str, wire, BuildError, ConfigError,
    Destination, HttpRequest, Method, Verdict,
};
use crate::event::{raw, Ecommerce, Event, EventType, Raw, ORDER_KEYS};
use crate::record::{owner_iq_hit::Kind, record::Payload, Record};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
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
fn encoded_len(s: &[u8]) -> usize {
    // Each byte takes 1 or 3: a table, so the loop has no branches (it runs for every key and
    // value of every conversion).
    const WIDTH: [u8; 256] = {
        let mut t = [3u8; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                t[b] = 1;
            }
            b += 1;
        }
        t
    };
    s.iter().map(|&b| usize::from(WIDTH[usize::from(b)])).sum()
}

/// The first usable order id in the documented order: a null or blank string falls back to
/// the next name.
fn first_order_id(ids: [Option<Raw<'_>>; 3]) -> Option<Raw<'_>> {
    ids.into_iter()
        .flatten()
        .find(|v| !raw::is_null(*v) && raw::as_str(*v).is_none_or(|s| !s.trim().is_empty()))
}

/// The `t` list being encoded into an `OwnerIqHit` (field 2, `repeated Pair`), with the
/// length its URL form will have.
struct Pairs<'o> {
    out: &'o mut Vec<u8>,
    /// Percent-encoded `key|value` bytes so far, commas included.
    url_len: usize,
    count: usize,
}

impl Pairs<'_> {
    fn add(&mut self, key: &[u8], value: &str) {
        let value = value.as_bytes();
        let len = wire::str_field_len(1, key) + wire::str_field_len(2, value);
        self.out.reserve(len + 3);
        wire::put_len_header(self.out, 2, len);
        wire::put_str(self.out, 1, key);
        wire::put_str(self.out, 2, value);
        self.url_len += encoded_len(key) + 1 + encoded_len(value) + usize::from(self.count > 0);
        self.count += 1;
    }

    fn push(&mut self, key: &[u8], value: Option<Raw<'_>>) {
        if let Some(value) = value.and_then(raw::text) {
            self.add(key, &value);
        }
    }

    /// The pairs of the `n`-th product (values in [`PRODUCT_KEYS`] order).
    fn product(&mut self, n: usize, values: [Option<Raw<'_>>; 7]) {
        let [brand, sku, price, category, quantity, name, title] = values;
        self.push_nth("brand", n, raw::present(brand));
        self.push_nth("id", n, raw::present(sku));
        self.push_nth("price", n, raw::present(price));
        self.push_nth("product_type", n, raw::present(category));
        self.push_nth("quantity", n, raw::present(quantity));
        self.push_nth("name", n, first([name, title]));
    }

    /// `{name}_{n}` as a key.
    fn push_nth(&mut self, name: &str, n: usize, value: Option<Raw<'_>>) {
        if value.is_some() {
            let mut key = [0u8; 40];
            let len = nth_key(&mut key, name, n);
            self.push(&key[..len], value);
        }
    }
}

/// Write `{name}_{n}` into `buf` (names are short constants), returning its length.
fn nth_key(buf: &mut [u8; 40], name: &str, mut n: usize) -> usize {
    let name = name.as_bytes();
    buf[..name.len()].copy_from_slice(name);
    buf[name.len()] = b'_';
    let mut digits = [0u8; 20];
    let mut d = digits.len();
    loop {
        d -= 1;
        digits[d] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let at = name.len() + 1;
    let nd = digits.len() - d;
    buf[at..at + nd].copy_from_slice(&digits[d..]);
    at + nd
}

/// The first of `values` that is present and not null.
fn first<const N: usize>(values: [Option<Raw<'_>>; N]) -> Option<Raw<'_>> {
    values.into_iter().find_map(raw::present)
}

fn match_keys(event: &Event<'_>, props_email: Option<Raw<'_>>, pairs: &mut Pairs<'_>) {
    match event.email() {
        Some(e) => pairs.add(b"email", e),
        None => pairs.push(b"email", raw::present(props_email)),
    }
    pairs.add(b"customer_id", event.user_key());
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

    /// The length of the URL up to `&t=` for a hit of this kind, computed without building it.
    fn prefix_len(&self, kind: Kind) -> usize {
        let tag = match kind {
            Kind::Page => encoded_len(self.analytics_tag_id.as_bytes()),
            Kind::Conversion => encoded_len(self.dct_tag_id.as_bytes()) + "&cnv=true".len(),
            Kind::Unspecified => 0,
        };
        tag + self.endpoint.len()
            + "/j/?pt=".len()
            + encoded_len(self.data_group_id.as_bytes())
            + "&s=".len()
            + "&t=".len()
    }
}

impl Destination for OwnerIq {
    fn name(&self) -> &'static str {
        "owneriq"
    }

    fn integration_key(&self) -> &'static str {
        "OwnerIQ"
    }

    fn map_into(&self, event: &Event<'_>, out: &mut Vec<u8>) -> Verdict {
        let kind = match event.kind {
            EventType::Page => Kind::Page,
            EventType::Track => {
                if event.ecommerce() != Some(Ecommerce::OrderCompleted) {
                    return Verdict::Skip("unmapped_event");
                }
                Kind::Conversion
            }
            _ => return Verdict::Skip("unsupported_type"),
        };
        // A page hit is two short pairs; a conversion many (the guess sizes the length prefix).
        let hit = wire::open(out, 20, if kind == Kind::Page { 80 } else { 1024 });
        wire::put_key(out, 1, 0);
        wire::put_varint(out, kind as u64);
        let mut pairs = Pairs {
            out: &mut *out,
            url_len: 0,
            count: 0,
        };
        let mut props_email = None;
        if kind == Kind::Page {
            if event.email().is_none() {
                props_email = event.properties.and_then(|p| raw::pick(p, ["email"])[0]);
            }
        } else {
            let [order_id, order_id2, id, total, revenue, email] = match event.order() {
                Some(order) => {
                    // The event pass read `properties` member by member: nothing to parse.
                    for (n, product) in order.products().iter().enumerate() {
                        pairs.product(n + 1, *product);
                    }
                    order.pick(ORDER_KEYS)
                }
                // No `properties`: no order fields.
                None => [None; 6],
            };
            props_email = email;
            let Some(order_id) = first_order_id([order_id, order_id2, id]) else {
                return Verdict::Reject("missing_order_id");
            };
            pairs.push(b"order_id", Some(order_id));
            match first([total, revenue]) {
                Some(total) => pairs.push(b"total_cost_notax", Some(total)),
                None => pairs.add(b"total_cost_notax", "0"),
            }
        }
        match_keys(event, props_email, &mut pairs);
        if self.prefix_len(kind) + pairs.url_len > MAX_URL_BYTES {
            return Verdict::Reject("url_too_long");
        }
        wire::close(out, hit);
        Verdict::Deliver
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
            headers: common_headers(record).into(),
            body: None,
        })
    }
}
