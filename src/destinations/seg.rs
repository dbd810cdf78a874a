//! Seg: identify (with an email), the four e-commerce tracks, page and email-to-email alias,
//! each as one JSON `POST {endpoint}/v1/{website_id}/events`.
//!
//! The body is fixed at map time and stored in the record, so the bytes the stub records equal
//! what `eventrelay map` prints; only the URL (endpoint, website id) is applied at send time.
//! It is written directly, with `traits`, `properties` and the page fields embedded as the
//! raw JSON text they came as: numbers, escapes and key order reach Seg exactly as sent.

use super::{
    common_headers, deny_unknown, endpoint, required_str, wire, AnswerClass, BuildError,
    ConfigError, Destination, HttpRequest, Method, Verdict,
};
use crate::event::{raw, Ecommerce, Event, EventType, Raw};
use crate::record::{record::Payload, Record};
use std::borrow::Cow;
use std::sync::Arc;

/// Default Seg tracker host.
pub const DEFAULT_ENDPOINT: &str = "https://tracker.segapp.com";

/// Seg settings (SPEC §3).
#[derive(Debug, Clone)]
pub struct Seg {
    /// Base URL, no trailing slash.
    pub endpoint: String,
    /// The website's GUID, lowercase hyphenated.
    pub website_id: String,
}

impl Seg {
    /// Build from the `[destinations.seg]` section; `website_id` must be a GUID.
    pub fn from_config(t: &toml::Table) -> Result<Arc<dyn Destination>, ConfigError> {
        deny_unknown(t, &["endpoint", "website_id"])?;
        let website_id = required_str(t, "website_id")?;
        let guid = uuid::Uuid::try_parse(&website_id)
            .ok()
            .filter(|_| website_id.len() == 36);
        let Some(guid) = guid else {
            return Err(ConfigError::new(
                "website_id",
                format!("{website_id:?} is not a GUID like abc8fb18-7559-4324-9921-a4b5015b4a1c"),
            ));
        };
        Ok(Arc::new(Seg {
            endpoint: endpoint(t, DEFAULT_ENDPOINT)?,
            website_id: guid.hyphenated().to_string(),
        }))
    }
}

/// Seg's name for a Segment e-commerce event (every one of them is one Seg takes).
fn seg_name(e: Ecommerce) -> &'static str {
    match e {
        Ecommerce::ProductListViewed => "RangeView",
        Ecommerce::ProductViewed => "ProductView",
        Ecommerce::ProductAdded => "AddedToBasket",
        Ecommerce::OrderCompleted => "OrderPlaced",
    }
}

/// A plausible email address: one `@`, something before it, a dotted domain after, no spaces.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(char::is_whitespace)
}

/// Writes a JSON object field by field into a borrowed buffer (the record being encoded):
/// strings escaped, raw slices copied as they are.
struct Writer<'o> {
    out: &'o mut Vec<u8>,
    empty: bool,
}

impl<'o> Writer<'o> {
    fn new(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Writer { out, empty: true }
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.key(key);
            escape_into(self.out, v);
        }
    }

    fn raw(&mut self, key: &str, value: Option<Raw<'_>>) {
        if let Some(v) = value {
            self.key(key);
            self.out.extend_from_slice(v.get().as_bytes());
        }
    }

    fn finish(self) {
        self.out.push(b'}');
    }
}

/// Append `s` as a JSON string.
fn escape_into(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Ids, timestamps and emails rarely need escaping: one check, one copy.
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

const EMPTY_OBJECT: Raw<'static> = Raw::trusted("{}");

fn empty_object() -> Raw<'static> {
    EMPTY_OBJECT
}

impl Destination for Seg {
    fn name(&self) -> &'static str {
        "seg"
    }

    fn integration_key(&self) -> &'static str {
        "Seg"
    }

    fn map_into(&self, event: &Event<'_>, out: &mut Vec<u8>) -> Verdict {
        let email = event.email();
        // The skips decided by the type alone, before anything is written.
        match event.kind {
            EventType::Screen | EventType::Group => return Verdict::Skip("unsupported_type"),
            EventType::Identify if email.is_none() => return Verdict::Skip("missing_email"),
            _ => {}
        }
        let raw_len = |v: Option<Raw<'_>>| v.map_or(0, |v| v.get().len());
        let str_len = |v: Option<&str>| v.map_or(0, str::len);
        // About the body's length (its size class is what matters: the length prefixes are
        // written before the body, and a wrong guess costs a copy of it).
        let expect = 112
            + event.message_id.len()
            + str_len(event.timestamp())
            + str_len(event.user_id.as_deref())
            + str_len(event.anonymous_id.as_deref())
            + str_len(email)
            + raw_len(event.properties)
            + match event.kind {
                EventType::Identify => raw_len(event.traits),
                EventType::Track => raw_len(event.context_page) / 2,
                _ => 0,
            };
        out.reserve(expect + 16);
        let payload = wire::open_wrapped(out, 21, expect);
        let mut w = Writer::new(out);
        w.str("type", Some(event.kind.as_str()));
        w.str("messageId", Some(&event.message_id));
        w.str("timestamp", event.timestamp());
        w.str("userId", event.user_id.as_deref());
        w.str("anonymousId", event.anonymous_id.as_deref());
        w.str("email", email);
        let props: Option<Raw<'_>> = Some(match event.properties {
            Some(p) => p,
            None => empty_object(),
        });
        match event.kind {
            EventType::Identify => {
                if email.is_none() {
                    return Verdict::Skip("missing_email");
                }
                w.raw(
                    "traits",
                    Some(match event.traits {
                        Some(t) => t,
                        None => empty_object(),
                    }),
                );
            }
            EventType::Track => {
                let Some(name) = event.ecommerce().map(seg_name) else {
                    return Verdict::Skip("unmapped_event");
                };
                w.str("event", Some(name));
                w.raw("properties", props);
                if let Some(page) = event.context_page {
                    let [url, title] = raw::pick(page, ["url", "title"]);
                    let (url, title) = (raw::present(url), raw::present(title));
                    if url.is_some() || title.is_some() {
                        w.key("page");
                        let mut p = Writer::new(w.out);
                        p.raw("url", url);
                        p.raw("title", title);
                        p.finish();
                    }
                }
            }
            EventType::Page => {
                w.raw("name", event.name);
                let [p_url, p_title] = event
                    .properties
                    .map_or([None; 2], |p| raw::pick(p, ["url", "title"]));
                let [c_url, c_title] = event
                    .context_page
                    .map_or([None; 2], |p| raw::pick(p, ["url", "title"]));
                w.raw("url", raw::present(p_url).or(raw::present(c_url)));
                w.raw("title", raw::present(p_title).or(raw::present(c_title)));
                w.raw("properties", props);
            }
            EventType::Alias => {
                let previous = event.previous_id.as_deref().unwrap_or_default();
                let user = event.user_id.as_deref().unwrap_or_default();
                if !(is_email(previous) && is_email(user)) {
                    return Verdict::Skip("alias_not_email");
                }
                w.str("previousId", Some(previous));
            }
            EventType::Screen | EventType::Group => return Verdict::Skip("unsupported_type"),
        }
        w.finish();
        wire::close_wrapped(out, payload, 1);
        Verdict::Deliver
    }

    fn build_request(&self, record: &Record) -> Result<HttpRequest, BuildError> {
        let Some(Payload::Seg(ev)) = &record.payload else {
            return Err(BuildError {
                reason: "wrong_payload",
                message: "record has no Seg payload".into(),
            });
        };
        let mut headers = Vec::with_capacity(3);
        headers.push(("Content-Type", Cow::Borrowed("application/json")));
        headers.extend(common_headers(record));
        Ok(HttpRequest {
            method: Method::Post,
            url: format!("{}/v1/{}/events", self.endpoint, self.website_id),
            headers,
            body: Some(ev.body.clone()),
        })
    }

    /// Seg documents 200, 201 and 202 as success; any other 2xx is unexpected and permanent.
    fn classify(&self, status: u16) -> AnswerClass {
        match status {
            200..=202 => AnswerClass::Success,
            203..=299 => AnswerClass::Permanent,
            s => super::classify_status(s),
        }
    }
}
