//! Today's mapper (before the borrowed event model), kept verbatim apart from paths so the
//! differential test can run old and new side by side. Only what `eventrelay map` needs:
//! the event model, both mappers, request building and the output lines.
#![allow(dead_code, clippy::all)]

pub mod event {
    // The Segment event model: parsing and validating one raw Kafka record into an [`Event`].
    //
    // Parsing is total: any byte string gives either an [`Event`] or an [`InvalidEvent`] with a
    // stable reason code, never a panic. The reason code is what lands in the dead-letter header
    // `eventrelay.error.reason`, so codes are part of the operator-facing contract.

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
    pub const TIMESTAMP_FIELDS: [&str; 4] =
        ["timestamp", "originalTimestamp", "sentAt", "receivedAt"];

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
                Some(_) => {
                    return Err(InvalidEvent::new("unknown_type", "`type` must be a string"))
                }
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
}

pub mod destinations {
    use super::event::{Ecommerce, Event, EventType};
    use eventrelay::record::{
        owner_iq_hit::Kind, record::Payload, EventTimes, OwnerIqHit, Pair, Record, SegEvent, Source,
    };
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    use serde::Serialize;
    use serde_json::{Map, Value};
    use std::fmt::Write;

    pub enum MapOutcome {
        Deliver(Vec<Payload>),
        Skip(&'static str),
        Reject(&'static str),
    }
    pub struct HttpRequest {
        pub method: &'static str,
        pub url: String,
        pub headers: Vec<(&'static str, String)>,
        pub body: Option<Vec<u8>>,
    }
    pub enum Routed {
        Records(Vec<Record>),
        Skipped(&'static str),
        Rejected(&'static str),
    }
    /// Build a record envelope around a payload for `event`.
    pub fn envelope(
        dest: &str,
        event: &Event,
        source: Option<Source>,
        received_at_ms: i64,
        payload: Payload,
    ) -> Record {
        let s = |k: &str| event.str_field(k).unwrap_or_default().to_string();
        Record {
            message_id: event.message_id.clone(),
            user_key: event.user_key().to_string(),
            destination: dest.to_string(),
            event_type: event.kind.as_str().to_string(),
            event_name: event.event_name().unwrap_or_default().to_string(),
            source,
            times: Some(EventTimes {
                timestamp: s("timestamp"),
                original_timestamp: s("originalTimestamp"),
                sent_at: s("sentAt"),
                received_at: s("receivedAt"),
            }),
            received_at_ms,
            payload: Some(payload),
        }
    }

    pub fn route(dest: &dyn Dest, event: &Event) -> Routed {
        if !event.enabled_for(dest.integration_key()) {
            return Routed::Skipped("disabled");
        }
        match dest.map(event) {
            MapOutcome::Deliver(payloads) => Routed::Records(
                payloads
                    .into_iter()
                    .map(|p| envelope(dest.name(), event, None, 0, p))
                    .collect(),
            ),
            MapOutcome::Skip(r) => Routed::Skipped(r),
            MapOutcome::Reject(r) => Routed::Rejected(r),
        }
    }
    pub trait Dest {
        fn name(&self) -> &'static str;
        fn integration_key(&self) -> &'static str;
        fn map(&self, event: &Event) -> MapOutcome;
        fn build_request(&self, record: &Record) -> Result<HttpRequest, &'static str>;
    }
    /// Render a JSON scalar the way the destinations want it in text: strings as is, numbers in
    /// their JSON form, booleans as `true`/`false`, arrays and objects as compact JSON.
    /// `None` for null (an absent value).
    pub fn json_text(v: &Value) -> Option<String> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => Some(other.to_string()),
        }
    }

    /// The common request headers every destination sends.
    pub fn common_headers(record: &Record) -> Vec<(&'static str, String)> {
        vec![
            ("Idempotency-Key", record.message_id.clone()),
            (
                "User-Agent",
                concat!("eventrelay/", env!("CARGO_PKG_VERSION")).to_string(),
            ),
        ]
    }
    /// Characters left as is: RFC 3986 unreserved.
    const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');

    pub struct OwnerIq {
        pub endpoint: String,
        pub data_group_id: String,
        pub analytics_tag_id: String,
        pub dct_tag_id: String,
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

    impl Dest for OwnerIq {
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

        fn build_request(&self, record: &Record) -> Result<HttpRequest, &'static str> {
            let Some(Payload::Owneriq(hit)) = &record.payload else {
                return Err("wrong_payload");
            };
            let (tag, conversion) = match Kind::try_from(hit.kind) {
                Ok(Kind::Page) => (&self.analytics_tag_id, false),
                Ok(Kind::Conversion) => (&self.dct_tag_id, true),
                _ => return Err("wrong_payload"),
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

    /// The Seg event name for a Segment track event name, if Seg takes it.
    pub fn seg_event_name(name: &str) -> Option<&'static str> {
        Some(match Ecommerce::from_name(name)? {
            Ecommerce::ProductListViewed => "RangeView",
            Ecommerce::ProductViewed => "ProductView",
            Ecommerce::ProductAdded => "AddedToBasket",
            Ecommerce::OrderCompleted => "OrderPlaced",
        })
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

    /// The JSON body Seg receives. Borrowed from the event, so `traits` and `properties` are
    /// serialised straight from the parsed input instead of being deep-copied first.
    #[derive(Serialize, Default)]
    struct Body<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(rename = "messageId")]
        message_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        timestamp: Option<&'a str>,
        #[serde(rename = "userId", skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
        #[serde(rename = "anonymousId", skip_serializing_if = "Option::is_none")]
        anonymous_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        email: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        traits: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        properties: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        page: Option<Page<'a>>,
        #[serde(rename = "previousId", skip_serializing_if = "Option::is_none")]
        previous_id: Option<&'a str>,
    }

    #[derive(Serialize)]
    struct Page<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<&'a Value>,
    }

    static EMPTY_OBJECT: std::sync::LazyLock<Value> =
        std::sync::LazyLock::new(|| Value::Object(Map::new()));

    fn present(v: Option<&Value>) -> Option<&Value> {
        v.filter(|v| !v.is_null())
    }

    pub struct Seg {
        pub endpoint: String,
        pub website_id: String,
    }
    impl Dest for Seg {
        fn name(&self) -> &'static str {
            "seg"
        }

        fn integration_key(&self) -> &'static str {
            "Seg"
        }

        fn map(&self, event: &Event) -> MapOutcome {
            let email = event.email();
            let mut body = Body {
                kind: event.kind.as_str(),
                message_id: &event.message_id,
                timestamp: event.timestamp(),
                user_id: event.user_id.as_deref(),
                anonymous_id: event.anonymous_id.as_deref(),
                email,
                ..Default::default()
            };
            let props = present(event.raw.get("properties"));
            match event.kind {
                EventType::Identify => {
                    if email.is_none() {
                        return MapOutcome::Skip("missing_email");
                    }
                    body.traits = Some(present(event.raw.get("traits")).unwrap_or(&*EMPTY_OBJECT));
                }
                EventType::Track => {
                    let Some(name) = event.event_name().and_then(seg_event_name) else {
                        return MapOutcome::Skip("unmapped_event");
                    };
                    body.event = Some(name);
                    body.properties = Some(props.unwrap_or(&*EMPTY_OBJECT));
                    if let Some(page) = event.context_object("page") {
                        let (url, title) = (present(page.get("url")), present(page.get("title")));
                        if url.is_some() || title.is_some() {
                            body.page = Some(Page { url, title });
                        }
                    }
                }
                EventType::Page => {
                    body.name = present(event.raw.get("name"));
                    let ctx_page = event.context_object("page");
                    let from = |key: &str| {
                        present(props.and_then(|p| p.get(key)))
                            .or_else(|| present(ctx_page.and_then(|p| p.get(key))))
                    };
                    body.url = from("url");
                    body.title = from("title");
                    body.properties = Some(props.unwrap_or(&*EMPTY_OBJECT));
                }
                EventType::Alias => {
                    let previous = event.str_field("previousId").unwrap_or_default();
                    let user = event.user_id.as_deref().unwrap_or_default();
                    if !(is_email(previous) && is_email(user)) {
                        return MapOutcome::Skip("alias_not_email");
                    }
                    body.previous_id = Some(previous);
                }
                EventType::Screen | EventType::Group => {
                    return MapOutcome::Skip("unsupported_type")
                }
            }
            match serde_json::to_vec(&body) {
                Ok(bytes) => {
                    MapOutcome::Deliver(vec![Payload::Seg(SegEvent { body: bytes.into() })])
                }
                // Serialising borrowed JSON values cannot fail; keep the arm total anyway.
                Err(_) => MapOutcome::Reject("unserializable"),
            }
        }

        fn build_request(&self, record: &Record) -> Result<HttpRequest, &'static str> {
            let Some(Payload::Seg(ev)) = &record.payload else {
                return Err("wrong_payload");
            };
            let mut headers = vec![("Content-Type", "application/json".to_string())];
            headers.extend(common_headers(record));
            Ok(HttpRequest {
                method: "POST",
                url: format!("{}/v1/{}/events", self.endpoint, self.website_id),
                headers,
                body: Some(ev.body.to_vec()),
            })
        }
    }
}

pub mod tester {
    use super::destinations::*;
    use super::event::Event;
    use serde_json::{json, Map, Value};

    /// The old `eventrelay map` line for each (event, destination), as JSON values.
    pub fn map_line(dests: &[&dyn Dest], line_no: usize, bytes: &[u8]) -> Vec<Value> {
        let event = match Event::parse(bytes) {
            Ok(e) => e,
            Err(invalid) => {
                return vec![
                    json!({"line": line_no, "invalid": invalid.reason, "message": invalid.message}),
                ]
            }
        };
        let mut out = Vec::new();
        for dest in dests {
            let head = |k: &str, v: Value| json!({"destination": dest.name(), "messageId": event.message_id, k: v});
            match route(*dest, &event) {
                Routed::Records(records) => {
                    for record in records {
                        out.push(match dest.build_request(&record) {
                            Ok(req) => head("request", request_json(&req)),
                            Err(e) => head("rejected", Value::from(e)),
                        });
                    }
                }
                Routed::Skipped(r) => out.push(head("skipped", Value::from(r))),
                Routed::Rejected(r) => out.push(head("rejected", Value::from(r))),
            }
        }
        out
    }
    /// The JSON form of a request, as `eventrelay map` prints it.
    pub fn request_json(req: &HttpRequest) -> Value {
        let headers: Map<String, Value> = req
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(v.as_str())))
            .collect();
        let body = req
            .body
            .as_deref()
            .map(|b| {
                serde_json::from_slice(b)
                    .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(b)))
            })
            .unwrap_or(Value::Null);
        json!({"method": req.method, "url": req.url, "headers": headers, "body": body})
    }
}
