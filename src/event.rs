//! The Segment event model: parsing and validating one raw Kafka record into an [`Event`].
//!
//! Parsing is total: any byte string gives either an [`Event`] or an [`InvalidEvent`] with a
//! stable reason code, never a panic. The reason code is what lands in the dead-letter header
//! `eventrelay.error.reason`, so codes are part of the operator-facing contract.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use std::fmt;

/// Segment rejects events over 32 KB; we treat larger records as invalid input the same way.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;

/// Segment limits `messageId` to 100 characters.
pub const MAX_MESSAGE_ID_CHARS: usize = 100;

/// The six Segment call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Who the user is.
    Identify,
    /// What the user did.
    Track,
    /// A web page view.
    Page,
    /// A mobile screen view.
    Screen,
    /// A user joining an account or organisation.
    Group,
    /// One identity merged into another.
    Alias,
}

impl EventType {
    /// The lowercase name used on the wire and in records.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Identify => "identify",
            EventType::Track => "track",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Group => "group",
            EventType::Alias => "alias",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            EventType::Identify,
            EventType::Track,
            EventType::Page,
            EventType::Screen,
            EventType::Group,
            EventType::Alias,
        ]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }
}

/// The Segment e-commerce events the destinations care about, whatever spelling was used.
///
/// Segment's libraries accept the v1 and v2 names case-insensitively, in either word order and
/// with spaces, underscores or nothing between words; so do we.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ecommerce {
    /// `Order Completed` / `Completed Order`.
    OrderCompleted,
    /// `Product Viewed` / `Viewed Product`.
    ProductViewed,
    /// `Product Added` / `Added Product`.
    ProductAdded,
    /// `Product List Viewed` / `Viewed Product Category` / `Product Category Viewed`.
    ProductListViewed,
}

impl Ecommerce {
    /// Recognise an event name, or `None` for any other event.
    pub fn from_name(name: &str) -> Option<Self> {
        // Lowercase ASCII letters only, separators dropped, on the stack: this runs for every
        // track event and every destination.
        let mut buf = [0u8; 32];
        let mut n = 0;
        for b in name.bytes() {
            if matches!(b, b' ' | b'_' | b'-') {
                continue;
            }
            if !b.is_ascii_alphabetic() || n == buf.len() {
                return None;
            }
            buf[n] = b.to_ascii_lowercase();
            n += 1;
        }
        Some(match &buf[..n] {
            b"ordercompleted" | b"completedorder" => Ecommerce::OrderCompleted,
            b"productviewed" | b"viewedproduct" => Ecommerce::ProductViewed,
            b"productadded" | b"addedproduct" => Ecommerce::ProductAdded,
            b"productlistviewed"
            | b"viewedproductlist"
            | b"viewedproductcategory"
            | b"productcategoryviewed" => Ecommerce::ProductListViewed,
            _ => return None,
        })
    }
}

/// Why a record is not a valid Segment event. The code is stable; the message is for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEvent {
    /// Stable reason code (`invalid_json`, `too_large`, …), used in DLQ headers and metrics.
    pub reason: &'static str,
    /// Human-readable detail naming what is wrong.
    pub message: String,
}

impl InvalidEvent {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        InvalidEvent {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for InvalidEvent {}

/// A validated Segment event. The original JSON object is kept so mappers can pass
/// `traits` and `properties` through exactly as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The call type.
    pub kind: EventType,
    /// `messageId` as sent, or a deterministic `er-<hash>` of the bytes when the sender gave none
    /// (so a replay of the same record gets the same idempotency key).
    pub message_id: String,
    /// `userId`, numbers coerced to strings as Segment does; `None` when absent or empty.
    pub user_id: Option<String>,
    /// `anonymousId`, likewise.
    pub anonymous_id: Option<String>,
    /// The whole JSON object.
    pub raw: Map<String, Value>,
}

fn id_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, InvalidEvent> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(InvalidEvent::new(
            "invalid_field",
            format!("`{key}` must be a string"),
        )),
    }
}

/// Parse an ISO-8601 date-time as Segment libraries send it (RFC 3339, or without an offset,
/// meaning UTC). Returns milliseconds since the epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    None
}

/// The timestamp fields Segment defines; each must be a parseable date-time when present.
pub const TIMESTAMP_FIELDS: [&str; 4] = ["timestamp", "originalTimestamp", "sentAt", "receivedAt"];

impl Event {
    /// Parse and validate one raw record.
    pub fn parse(bytes: &[u8]) -> Result<Event, InvalidEvent> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(InvalidEvent::new(
                "too_large",
                format!(
                    "event is {} bytes, the limit is {MAX_EVENT_BYTES}",
                    bytes.len()
                ),
            ));
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| InvalidEvent::new("invalid_json", format!("not JSON: {e}")))?;
        let Value::Object(raw) = value else {
            return Err(InvalidEvent::new(
                "not_an_object",
                "an event must be a JSON object",
            ));
        };
        Self::from_object(raw, bytes)
    }

    fn from_object(raw: Map<String, Value>, bytes: &[u8]) -> Result<Event, InvalidEvent> {
        let kind = match raw.get("type") {
            None | Some(Value::Null) => {
                return Err(InvalidEvent::new("missing_type", "`type` is missing"))
            }
            Some(Value::String(t)) => EventType::parse(t).ok_or_else(|| {
                InvalidEvent::new(
                    "unknown_type",
                    format!(
                        "`type` {:?} is not one of identify, track, page, screen, group, alias",
                        truncate(t, 40)
                    ),
                )
            })?,
            Some(_) => return Err(InvalidEvent::new("unknown_type", "`type` must be a string")),
        };
        let user_id = id_field(&raw, "userId")?;
        let anonymous_id = id_field(&raw, "anonymousId")?;
        if user_id.is_none() && anonymous_id.is_none() {
            return Err(InvalidEvent::new(
                "missing_identity",
                "either `userId` or `anonymousId` is required",
            ));
        }
        for key in ["context", "traits", "properties", "integrations"] {
            match raw.get(key) {
                None | Some(Value::Null) | Some(Value::Object(_)) => {}
                Some(_) => {
                    return Err(InvalidEvent::new(
                        "invalid_field",
                        format!("`{key}` must be an object"),
                    ))
                }
            }
        }
        let message_id = match raw.get("messageId") {
            None | Some(Value::Null) => synthetic_message_id(bytes),
            Some(Value::String(s)) if s.is_empty() => synthetic_message_id(bytes),
            Some(Value::String(s)) if s.chars().count() <= MAX_MESSAGE_ID_CHARS => s.clone(),
            Some(Value::String(_)) => {
                return Err(InvalidEvent::new(
                    "invalid_message_id",
                    format!("`messageId` is longer than {MAX_MESSAGE_ID_CHARS} characters"),
                ))
            }
            Some(_) => {
                return Err(InvalidEvent::new(
                    "invalid_message_id",
                    "`messageId` must be a string",
                ))
            }
        };
        match kind {
            EventType::Track => match raw.get("event") {
                Some(Value::String(s)) if !s.trim().is_empty() => {}
                _ => {
                    return Err(InvalidEvent::new(
                        "missing_event",
                        "a track call needs a non-empty `event` name",
                    ))
                }
            },
            EventType::Alias => {
                if user_id.is_none() {
                    return Err(InvalidEvent::new(
                        "missing_identity",
                        "an alias call needs `userId`",
                    ));
                }
                if id_field(&raw, "previousId")?.is_none() {
                    return Err(InvalidEvent::new(
                        "missing_previous_id",
                        "an alias call needs `previousId`",
                    ));
                }
            }
            _ => {}
        }
        for key in TIMESTAMP_FIELDS {
            match raw.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if parse_timestamp(s).is_some() => {}
                Some(other) => {
                    return Err(InvalidEvent::new(
                        "invalid_timestamp",
                        format!(
                            "`{key}` is not an ISO-8601 date-time: {}",
                            truncate(&other.to_string(), 60)
                        ),
                    ))
                }
            }
        }
        Ok(Event {
            kind,
            message_id,
            user_id,
            anonymous_id,
            raw,
        })
    }

    /// The Kafka key for records of this event: `userId`, else `anonymousId`.
    pub fn user_key(&self) -> &str {
        self.user_id
            .as_deref()
            .or(self.anonymous_id.as_deref())
            .unwrap_or_default()
    }

    /// A top-level string field, if present and a string.
    pub fn str_field(&self, key: &str) -> Option<&str> {
        self.raw.get(key).and_then(Value::as_str)
    }

    /// A top-level object field (`traits`, `properties`, `context`, …).
    pub fn object(&self, key: &str) -> Option<&Map<String, Value>> {
        self.raw.get(key).and_then(Value::as_object)
    }

    /// `context.<key>` as an object.
    pub fn context_object(&self, key: &str) -> Option<&Map<String, Value>> {
        self.object("context")
            .and_then(|c| c.get(key))
            .and_then(Value::as_object)
    }

    /// The track event name (validated present for track calls).
    pub fn event_name(&self) -> Option<&str> {
        self.str_field("event")
    }

    /// The event's time: `timestamp`, else `originalTimestamp`, else `receivedAt`, else `sentAt`.
    pub fn timestamp(&self) -> Option<&str> {
        ["timestamp", "originalTimestamp", "receivedAt", "sentAt"]
            .into_iter()
            .find_map(|k| self.str_field(k))
    }

    /// The user's email as Segment destinations read it: `context.traits.email`, else
    /// `traits.email` (a non-empty string).
    pub fn email(&self) -> Option<&str> {
        fn from(m: Option<&Map<String, Value>>) -> Option<&str> {
            m.and_then(|m| m.get("email"))
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
        }
        from(self.context_object("traits")).or_else(|| from(self.object("traits")))
    }

    /// Whether the `integrations` object lets this event reach the destination whose
    /// integration key is `key` (matched case-insensitively).
    ///
    /// As in Segment's libraries: `All` defaults to true; an explicit boolean for the
    /// destination wins over `All`; an object value means enabled (with per-event options).
    pub fn enabled_for(&self, key: &str) -> bool {
        let Some(integrations) = self.object("integrations") else {
            return true;
        };
        let mut all = true;
        let mut explicit = None;
        for (k, v) in integrations {
            if k.eq_ignore_ascii_case(key) {
                match v {
                    Value::Bool(b) => explicit = Some(*b),
                    Value::Object(_) => explicit = Some(true),
                    _ => {}
                }
            } else if k.eq_ignore_ascii_case("all") {
                if let Value::Bool(b) = v {
                    all = *b;
                }
            }
        }
        explicit.unwrap_or(all)
    }
}

fn synthetic_message_id(bytes: &[u8]) -> String {
    // FNV-1a 64 twice with different offsets: stable across processes and releases, unlike
    // std's randomly seeded hasher.
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for &byte in bytes {
        a = (a ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("er-{a:016x}{b:016x}")
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// Milliseconds since the epoch, now.
pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(input: &str) -> &'static str {
        Event::parse(input.as_bytes()).unwrap_err().reason
    }

    #[test]
    fn invalid_inputs_name_the_problem() {
        assert_eq!(reason("nope"), "invalid_json");
        assert_eq!(reason("[1]"), "not_an_object");
        assert_eq!(reason(r#"{"userId":"u"}"#), "missing_type");
        assert_eq!(reason(r#"{"type":"boom","userId":"u"}"#), "unknown_type");
        assert_eq!(reason(r#"{"type":"page"}"#), "missing_identity");
        assert_eq!(reason(r#"{"type":"track","userId":"u"}"#), "missing_event");
        assert_eq!(
            reason(r#"{"type":"alias","userId":"u"}"#),
            "missing_previous_id"
        );
        assert_eq!(
            reason(r#"{"type":"alias","anonymousId":"a","previousId":"p"}"#),
            "missing_identity"
        );
        assert_eq!(
            reason(r#"{"type":"page","userId":"u","timestamp":"yesterday"}"#),
            "invalid_timestamp"
        );
        assert_eq!(
            reason(r#"{"type":"page","userId":"u","properties":[1]}"#),
            "invalid_field"
        );
        let long = format!(
            r#"{{"type":"page","userId":"u","messageId":"{}"}}"#,
            "x".repeat(101)
        );
        assert_eq!(reason(&long), "invalid_message_id");
        let big = format!(
            r#"{{"type":"page","userId":"u","properties":{{"p":"{}"}}}}"#,
            "x".repeat(MAX_EVENT_BYTES)
        );
        assert_eq!(reason(&big), "too_large");
    }

    #[test]
    fn integrations_follow_segment_rules() {
        let ev = |i: &str| {
            Event::parse(format!(r#"{{"type":"page","userId":"u","integrations":{i}}}"#).as_bytes())
                .unwrap()
        };
        assert!(ev("{}").enabled_for("Seg"));
        assert!(!ev(r#"{"seg":false}"#).enabled_for("Seg"));
        assert!(!ev(r#"{"All":false}"#).enabled_for("Seg"));
        assert!(ev(r#"{"all":false,"SEG":true}"#).enabled_for("Seg"));
        assert!(ev(r#"{"All":false,"Seg":{"opt":1}}"#).enabled_for("Seg"));
        assert!(!ev(r#"{"All":false,"Seg":{"opt":1}}"#).enabled_for("OwnerIQ"));
        assert!(ev(r#"{"All":true,"OwnerIQ":null}"#).enabled_for("OwnerIQ"));
    }

    #[test]
    fn ecommerce_names_accept_v1_and_v2() {
        use Ecommerce::*;
        for (name, want) in [
            ("Order Completed", OrderCompleted),
            ("completed order", OrderCompleted),
            ("Completed_Order", OrderCompleted),
            ("Viewed Product", ProductViewed),
            ("Product Viewed", ProductViewed),
            ("added product", ProductAdded),
            ("Product List Viewed", ProductListViewed),
            ("Viewed Product Category", ProductListViewed),
            ("Product Category Viewed", ProductListViewed),
        ] {
            assert_eq!(Ecommerce::from_name(name), Some(want), "{name}");
        }
        assert_eq!(Ecommerce::from_name("Order Refunded"), None);
    }

    #[test]
    fn missing_message_id_is_deterministic() {
        let a = Event::parse(br#"{"type":"page","userId":"u"}"#).unwrap();
        let b = Event::parse(br#"{"type":"page","userId":"u"}"#).unwrap();
        assert_eq!(a.message_id, b.message_id);
        assert!(a.message_id.starts_with("er-"));
    }

    #[test]
    fn numeric_user_ids_are_strings() {
        let e = Event::parse(br#"{"type":"page","userId":42}"#).unwrap();
        assert_eq!(e.user_key(), "42");
    }
}
