//! Destinations: one module per destination, one trait they all implement, one registry.
//!
//! A destination does two pure things: it **maps** an [`Event`] to a record payload (or skips
//! or rejects it), and it **builds** the HTTP request for a record from its current settings.
//! The mapping is written once, as [`Destination::map_into`], which encodes the payload as
//! protobuf straight from the borrowed event (the map stage's path, [`route_encoded`]);
//! [`Destination::map`] decodes that for `eventrelay map` and the tests.
//! The map stage calls the first, the send stage and `eventrelay map` call the second, so what
//! `map` prints is exactly what the sender sends.
//!
//! Adding a destination: write `destinations/<name>.rs` implementing [`Destination`] and add one
//! line to [`REGISTRY`].

pub mod owneriq;
pub mod seg;
pub(crate) mod wire;

use crate::event::Event;
use crate::record::{record::Payload, EventTimes, Record, Source};
use prost::Message;
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

/// What a mapper decided for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum MapOutcome {
    /// Deliver these payloads (usually one).
    Deliver(Vec<Payload>),
    /// Normal traffic the destination does not take; counted, nothing else.
    Skip(&'static str),
    /// A data problem: the event goes to the input dead-letter topic with this reason.
    Reject(&'static str),
}

/// What a mapper decided for one event, its payload already encoded ([`Destination::map_into`]).
///
/// Why not [`MapOutcome`]: the map stage only needs protobuf bytes, and building owned
/// payloads first cost as much as parsing the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// One payload was appended.
    Deliver,
    /// Normal traffic the destination does not take; nothing appended.
    Skip(&'static str),
    /// A data problem (input dead-letter topic with this reason); nothing appended.
    Reject(&'static str),
}

/// The HTTP methods destinations use. An enum, not a string, so a typo cannot reach the
/// sender; it prints as `"GET"`/`"POST"` in `eventrelay map` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Method {
    /// `GET` (OwnerIQ's pixel).
    #[serde(rename = "GET")]
    Get,
    /// `POST` (Seg's events API).
    #[serde(rename = "POST")]
    Post,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// An HTTP request ready to send. Headers keep their order so output is deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET` or `POST`.
    pub method: Method,
    /// Absolute URL.
    pub url: String,
    /// Header name/value pairs; a value that is the same for every request is borrowed, so
    /// building it costs nothing per request.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// Body bytes (JSON), if any: shared with the record it came from, not copied.
    pub body: Option<bytes::Bytes>,
}

/// How a destination answered, as far as retries are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerClass {
    /// Delivered.
    Success,
    /// Try again later (408, 423, 429, 5xx except 501, connection errors, timeouts).
    Retryable,
    /// Will never succeed as is (other 4xx, 501, unexpected codes): dead-letter it.
    Permanent,
}

/// Segment's classification of HTTP status codes (SPEC §3), shared by all destinations.
pub fn classify_status(status: u16) -> AnswerClass {
    match status {
        200..=299 => AnswerClass::Success,
        408 | 423 | 429 => AnswerClass::Retryable,
        501 => AnswerClass::Permanent,
        500..=599 => AnswerClass::Retryable,
        _ => AnswerClass::Permanent,
    }
}

/// Why a request could not be built from a record (a record from another version or a
/// corrupted topic); the record is dead-lettered with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct BuildError {
    /// Stable reason code.
    pub reason: &'static str,
    /// Detail.
    pub message: String,
}

/// A destination: pure mapping plus request building.
pub trait Destination: Send + Sync {
    /// Registry name: config section, topic suffix, metric label (`owneriq`).
    fn name(&self) -> &'static str;
    /// The key in a Segment event's `integrations` object (`OwnerIQ`).
    fn integration_key(&self) -> &'static str;
    /// Map one event, appending the payload to `out` as the protobuf encoding of the
    /// `Record` payload field (`owneriq = 20`, `seg = 21`, key included) when it delivers.
    /// Pure: no I/O, no clock, no randomness. The one implementation of the mapping: the map
    /// stage encodes records with it straight into a reused buffer ([`RecordBuf`]).
    fn map_into(&self, event: &Event<'_>, out: &mut Vec<u8>) -> Verdict;
    /// Map one event to owned payloads (`eventrelay map`, tests): [`Self::map_into`], decoded.
    fn map(&self, event: &Event<'_>) -> MapOutcome {
        let mut out = Vec::new();
        match self.map_into(event, &mut out) {
            Verdict::Deliver => match Record::decode(out.as_slice()) {
                Ok(Record {
                    payload: Some(p), ..
                }) => MapOutcome::Deliver(vec![p]),
                // Unreachable for the built-in destinations (their payloads are always
                // valid); a new destination writing broken bytes shows up here in tests.
                _ => MapOutcome::Reject("encoding_error"),
            },
            Verdict::Skip(r) => MapOutcome::Skip(r),
            Verdict::Reject(r) => MapOutcome::Reject(r),
        }
    }
    /// Build the HTTP request for a record with the current settings. Read only the record's
    /// `message_id` and payload: the send stage decodes records as a [`crate::record::Delivery`],
    /// which holds only those (and `received_at_ms`), and leaves the other fields empty.
    fn build_request(&self, record: &Record) -> Result<HttpRequest, BuildError>;
    /// Classify an HTTP status. Defaults to Segment's rules.
    fn classify(&self, status: u16) -> AnswerClass {
        classify_status(status)
    }
}

/// Constructor of a destination from its config section (the keys the destination owns).
pub type Constructor = fn(&toml::Table) -> Result<Arc<dyn Destination>, ConfigError>;

/// Every destination eventrelay knows: (name, constructor). One line per destination.
pub const REGISTRY: &[(&str, Constructor)] = &[
    ("owneriq", owneriq::OwnerIq::from_config),
    ("seg", seg::Seg::from_config),
];

/// A bad destination setting; `key` is the setting's name inside the section.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The setting, relative to the destination section.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// A config error for `key`.
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Read a required non-empty string setting.
pub fn required_str(t: &toml::Table, key: &str) -> Result<String, ConfigError> {
    match t.get(key) {
        None => Err(ConfigError::new(key, "is required")),
        Some(toml::Value::String(s)) if s.trim().is_empty() => {
            Err(ConfigError::new(key, "must not be empty"))
        }
        Some(toml::Value::String(s)) => Ok(s.trim().to_string()),
        Some(_) => Err(ConfigError::new(key, "must be a string")),
    }
}

/// Read an optional endpoint setting: an absolute http(s) URL, trailing `/` removed.
pub fn endpoint(t: &toml::Table, default: &str) -> Result<String, ConfigError> {
    let raw = match t.get("endpoint") {
        None => return Ok(default.to_string()),
        Some(toml::Value::String(s)) => s.trim().to_string(),
        Some(_) => return Err(ConfigError::new("endpoint", "must be a string")),
    };
    let parsed = url::Url::parse(&raw)
        .map_err(|e| ConfigError::new("endpoint", format!("{raw:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(ConfigError::new(
            "endpoint",
            format!("{raw:?} must be an http or https URL"),
        ));
    }
    // Request URLs are built as `{endpoint}/j/?…` and `{endpoint}/v1/…`: a query or fragment
    // here would end up in the middle of them.
    if parsed.query().is_some() || parsed.fragment().is_some() || raw.contains(['?', '#']) {
        return Err(ConfigError::new(
            "endpoint",
            format!("{raw:?} must not have a query (`?…`) or fragment (`#…`)"),
        ));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// Reject keys a destination does not know.
pub fn deny_unknown(t: &toml::Table, known: &[&str]) -> Result<(), ConfigError> {
    match t.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ConfigError::new(
            k,
            format!("unknown setting (known: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Build a record envelope around a payload for `event`.
pub fn envelope(
    dest: &str,
    event: &Event<'_>,
    source: Option<Source>,
    received_at_ms: i64,
    payload: Payload,
) -> Record {
    let s = |v: &Option<std::borrow::Cow<'_, str>>| v.as_deref().unwrap_or_default().to_string();
    let t = &event.times;
    Record {
        message_id: event.message_id.to_string(),
        user_key: event.user_key().to_string(),
        destination: dest.to_string(),
        event_type: event.kind.as_str().to_string(),
        event_name: event.event_name().unwrap_or_default().to_string(),
        source,
        times: Some(EventTimes {
            timestamp: s(&t.timestamp),
            original_timestamp: s(&t.original_timestamp),
            sent_at: s(&t.sent_at),
            received_at: s(&t.received_at),
        }),
        received_at_ms,
        payload: Some(payload),
    }
}

/// What happened to one event at one destination, ready for output or production.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// Records to produce.
    Records(Vec<Record>),
    /// Skipped with a reason (including `disabled` by the integrations object).
    Skipped(&'static str),
    /// Rejected with a reason.
    Rejected(&'static str),
}

/// Apply the integrations object and the mapper for one destination.
pub fn route(
    dest: &dyn Destination,
    event: &Event<'_>,
    source: Option<&Source>,
    received_at_ms: i64,
) -> Routed {
    if !event.enabled_for(dest.integration_key()) {
        return Routed::Skipped("disabled");
    }
    match dest.map(event) {
        MapOutcome::Deliver(payloads) => Routed::Records(
            payloads
                .into_iter()
                .map(|p| envelope(dest.name(), event, source.cloned(), received_at_ms, p))
                .collect(),
        ),
        MapOutcome::Skip(r) => Routed::Skipped(r),
        MapOutcome::Reject(r) => Routed::Rejected(r),
    }
}

/// Per-destination verdicts for one event with the records already protobuf-encoded, in a
/// buffer the map stage's worker reuses from event to event (no allocation per record once
/// warm). [`RecordBuf::get`] gives each destination's outcome in [`route_encoded`]'s order.
#[derive(Debug, Default)]
pub struct RecordBuf {
    bytes: Vec<u8>,
    outcomes: Vec<Slot>,
}

#[derive(Debug, Clone)]
enum Slot {
    Record(Range<usize>),
    Skipped(&'static str),
    Rejected(&'static str),
}

/// One destination's outcome in a [`RecordBuf`]: like [`Routed`], the record as its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded<'b> {
    /// The encoded `Record` to produce.
    Record(&'b [u8]),
    /// Skipped with a reason (including `disabled` by the integrations object).
    Skipped(&'static str),
    /// Rejected with a reason.
    Rejected(&'static str),
}

impl RecordBuf {
    /// An empty buffer; it grows to the largest event's records and stays there.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget the previous event's outcomes, keeping the memory.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.outcomes.clear();
    }

    /// Number of outcomes (one per destination routed since [`Self::clear`]).
    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// Whether no destination was routed since [`Self::clear`].
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// The `i`-th outcome.
    pub fn get(&self, i: usize) -> Encoded<'_> {
        match &self.outcomes[i] {
            Slot::Record(r) => Encoded::Record(&self.bytes[r.clone()]),
            Slot::Skipped(r) => Encoded::Skipped(r),
            Slot::Rejected(r) => Encoded::Rejected(r),
        }
    }

    /// Every outcome, in routing order.
    pub fn iter(&self) -> impl Iterator<Item = Encoded<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// [`route`] for the map stage: the same verdict, the record encoded into `buf` (bytes equal
/// to `Record::encode_to_vec()` of what [`route`] returns) and appended as one outcome.
pub fn route_encoded(
    dest: &dyn Destination,
    event: &Event<'_>,
    source: Option<&Source>,
    received_at_ms: i64,
    buf: &mut RecordBuf,
) {
    if !event.enabled_for(dest.integration_key()) {
        buf.outcomes.push(Slot::Skipped("disabled"));
        return;
    }
    let out = &mut buf.bytes;
    let start = out.len();
    wire::put_envelope(out, dest.name(), event, source, received_at_ms);
    let slot = match dest.map_into(event, out) {
        Verdict::Deliver => Slot::Record(start..out.len()),
        Verdict::Skip(r) => Slot::Skipped(r),
        Verdict::Reject(r) => Slot::Rejected(r),
    };
    if !matches!(slot, Slot::Record(_)) {
        out.truncate(start);
    }
    buf.outcomes.push(slot);
}

/// The common request headers every destination sends.
pub fn common_headers(record: &Record) -> [(&'static str, Cow<'static, str>); 2] {
    [
        ("Idempotency-Key", Cow::Owned(record.message_id.clone())),
        (
            "User-Agent",
            Cow::Borrowed(concat!("eventrelay/", env!("CARGO_PKG_VERSION"))),
        ),
    ]
}
