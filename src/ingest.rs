//! Ingest: Segment's HTTP Tracking API in front of the input topic.
//!
//! A team that already uses Segment's client libraries points their `host` option at
//! `ingest.listen` and its events land on `kafka.input_topic` without any other change. The
//! routes are Segment's: `POST /v1/{identify,track,page,screen,group,alias,batch}`, the
//! one-letter paths the browser library (analytics-next) posts to (`/v1/i`, `/v1/t`, `/v1/p`,
//! `/v1/s`, `/v1/g`, `/v1/a`, and `/v1/b` for its batching dispatcher), and `/v1/import`, the
//! older name of `/v1/batch`.
//!
//! What a request gets, and why:
//! - **401** without a known write key (HTTP Basic user name, else `writeKey` in the body),
//!   so one source's key cannot be guessed into another's pipeline;
//! - **400** with a Segment-style JSON error (`{"success":false,"code":…,"message":…}`, the
//!   shape Segment's Python library reads) when the body is not JSON, is over Segment's limits
//!   (32 KB per event, 500 KB per batch, both after gzip decoding) or is not a batch;
//!   Segment's libraries drop a request answered 400 instead of retrying it forever;
//! - **503** with `Retry-After` when the producer queue is full or the broker did not
//!   acknowledge in time: every Segment library retries 5xx, so back-pressure reaches the
//!   client instead of growing memory here;
//! - **200** `{"success":true}` only after the broker acknowledged every event of the request
//!   (idempotent producer, `acks=all`): an answered event survives a crash of this process.
//!
//! Events are not validated beyond being JSON objects: an event Segment's API would take but
//! the map stage finds invalid (no user id, unknown type) still goes to the topic, and from
//! there to `segment.events.dlq` with its reason, so nothing is dropped silently.

use crate::config::Config;
use crate::event::parse_timestamp;
use crate::kafka::GroupObserver;
use anyhow::{anyhow, Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most events one batch may hold (Segment documents 2,500); more is answered 400 rather than
/// partly dropped.
pub const MAX_BATCH_EVENTS: usize = 2500;

/// Room for gzip framing on top of the decoded limit when reading the raw body: the limits are
/// on the decoded JSON, and incompressible data grows a little when gzipped.
const RAW_SLACK: usize = 16 * 1024;

/// What a route carries: one call of a given type, or a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One call; the type comes from the path.
    Single(&'static str),
    /// `{"batch":[…], "sentAt", "context", "integrations", "writeKey"}`.
    Batch,
}

/// Every route, with what it carries. The one-letter paths are analytics-next's
/// (`${apiHost}/${type.charAt(0)}` and `${apiHost}/b`), so the browser library works too.
pub const ROUTES: &[(&str, Kind)] = &[
    ("/v1/identify", Kind::Single("identify")),
    ("/v1/track", Kind::Single("track")),
    ("/v1/page", Kind::Single("page")),
    ("/v1/screen", Kind::Single("screen")),
    ("/v1/group", Kind::Single("group")),
    ("/v1/alias", Kind::Single("alias")),
    ("/v1/i", Kind::Single("identify")),
    ("/v1/t", Kind::Single("track")),
    ("/v1/p", Kind::Single("page")),
    ("/v1/s", Kind::Single("screen")),
    ("/v1/g", Kind::Single("group")),
    ("/v1/a", Kind::Single("alias")),
    ("/v1/batch", Kind::Batch),
    ("/v1/import", Kind::Batch),
    ("/v1/b", Kind::Batch),
];

/// Why a request was not taken: the HTTP status, a stable code (the `code` of the JSON answer
/// and the `reason` label of `eventrelay_ingest_rejected_total`) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 400, 401 or 503.
    pub status: StatusCode,
    /// Stable code: `unauthorized`, `too_large`, `invalid_json`, `invalid_gzip`,
    /// `unsupported_encoding`, `invalid_batch`, `too_many_events`, `body_unreadable`,
    /// `queue_full`, `broker_unavailable`.
    pub code: &'static str,
    /// What was wrong, for the client's logs.
    pub message: String,
}

impl Rejection {
    fn bad(code: &'static str, message: impl Into<String>) -> Rejection {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    fn unauthorized(message: impl Into<String>) -> Rejection {
        Rejection {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: message.into(),
        }
    }

    fn unavailable(code: &'static str, message: impl Into<String>) -> Rejection {
        Rejection {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code,
            message: message.into(),
        }
    }
}

/// The limits a request is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest event as written to the topic, in bytes.
    pub max_event_bytes: usize,
    /// Largest decoded batch body, in bytes.
    pub max_batch_bytes: usize,
}

/// One event ready for the topic.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// userId, else anonymousId (the input topic's partitioning key).
    pub key: Option<String>,
    /// The enriched event JSON.
    pub payload: Vec<u8>,
}

/// Where the write key was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// A known key came in the `Authorization: Basic` header.
    Header,
    /// No header: the body must carry a known `writeKey`.
    Body,
}

/// Check the `Authorization` header: a known Basic user name is `Auth::Header`, no header is
/// `Auth::Body`, anything else (unknown key, another scheme, bad base64) is 401. The password
/// is ignored, as Segment does (its libraries send `writeKey:`; some send no colon).
pub fn authorize_header(headers: &HeaderMap, keys: &HashSet<String>) -> Result<Auth, Rejection> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Auth::Body);
    };
    let value = value
        .to_str()
        .map_err(|_| Rejection::unauthorized("the Authorization header is not text"))?;
    let Some((scheme, rest)) = value.trim().split_once(' ') else {
        return Err(Rejection::unauthorized(
            "the Authorization header must be Basic <base64 of writeKey:>",
        ));
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Rejection::unauthorized(
            "only Basic authentication with the write key as user name is supported",
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| Rejection::unauthorized("the Basic credentials are not base64"))?;
    let text = String::from_utf8_lossy(&decoded);
    let user = text.split_once(':').map_or(&*text, |(u, _)| u);
    if keys.contains(user) {
        Ok(Auth::Header)
    } else {
        Err(Rejection::unauthorized("unknown write key"))
    }
}

/// Undo `Content-Encoding: gzip` (also `x-gzip`; `identity` or none pass through) and hold the
/// decoded body to `limit` bytes, reading at most one byte past it so a gzip bomb costs
/// nothing.
pub fn decode_body(headers: &HeaderMap, raw: Bytes, limit: usize) -> Result<Bytes, Rejection> {
    let too_large = |n: &str| {
        Rejection::bad(
            "too_large",
            format!("request body is {n} bytes, the limit is {limit}"),
        )
    };
    let encoding = match headers.get(header::CONTENT_ENCODING) {
        None => "identity".to_string(),
        Some(v) => v
            .to_str()
            .map_err(|_| Rejection::bad("unsupported_encoding", "Content-Encoding is not text"))?
            .trim()
            .to_ascii_lowercase(),
    };
    match encoding.as_str() {
        "" | "identity" => {
            if raw.len() > limit {
                return Err(too_large(&raw.len().to_string()));
            }
            Ok(raw)
        }
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit + 1));
            flate2::read::MultiGzDecoder::new(&raw[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| Rejection::bad("invalid_gzip", format!("cannot gunzip body: {e}")))?;
            if out.len() > limit {
                return Err(too_large(&format!("more than {limit}")));
            }
            Ok(Bytes::from(out))
        }
        other => Err(Rejection::bad(
            "unsupported_encoding",
            format!("Content-Encoding {other:?} is not supported (use gzip or none)"),
        )),
    }
}

/// The batch-level fields Segment applies to every event of a batch.
#[derive(Debug, Default)]
struct BatchDefaults {
    sent_at: Option<Value>,
    context: Option<Map<String, Value>>,
    integrations: Option<Map<String, Value>>,
}

/// Turn a decoded body into the events to produce. `auth` says whether the header already
/// carried a known key; otherwise the body's `writeKey` (for a batch: the batch's, else every
/// event's own) must be one of `keys`.
pub fn prepare(
    kind: Kind,
    body: &[u8],
    auth: Auth,
    keys: &HashSet<String>,
    limits: Limits,
    received_at: DateTime<Utc>,
) -> Result<Vec<Prepared>, Rejection> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::bad("invalid_json", format!("body is not valid JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(Rejection::bad("invalid_json", "body must be a JSON object"));
    };
    let known = |v: Option<&Value>| matches!(v, Some(Value::String(k)) if keys.contains(k));
    let top_key = top.remove("writeKey");
    let (mut events, defaults) = match kind {
        Kind::Single(kind) => {
            if auth == Auth::Body && !known(top_key.as_ref()) {
                return Err(missing_key(top_key.as_ref()));
            }
            // The path says what the call is, as on Segment's API.
            top.insert("type".into(), Value::String(kind.into()));
            (vec![top], BatchDefaults::default())
        }
        Kind::Batch => {
            let Some(Value::Array(batch)) = top.remove("batch") else {
                return Err(Rejection::bad(
                    "invalid_batch",
                    "body must have a `batch` array of calls",
                ));
            };
            if batch.len() > MAX_BATCH_EVENTS {
                return Err(Rejection::bad(
                    "too_many_events",
                    format!(
                        "batch has {} events, the limit is {MAX_BATCH_EVENTS}",
                        batch.len()
                    ),
                ));
            }
            let mut events = Vec::with_capacity(batch.len());
            for (i, e) in batch.into_iter().enumerate() {
                match e {
                    Value::Object(m) => events.push(m),
                    _ => {
                        return Err(Rejection::bad(
                            "invalid_batch",
                            format!("batch[{i}] is not a JSON object"),
                        ))
                    }
                }
            }
            if auth == Auth::Body && !known(top_key.as_ref()) {
                // The browser library's `/v1/b` carries the key at the top; older callers put
                // it on every event. Each event must then carry a known one.
                if let Some(bad) = events.iter().find(|e| !known(e.get("writeKey"))) {
                    return Err(missing_key(top_key.as_ref().or(bad.get("writeKey"))));
                }
            }
            let object = |v: Option<Value>| match v {
                Some(Value::Object(m)) => Some(m),
                _ => None,
            };
            let defaults = BatchDefaults {
                sent_at: top.remove("sentAt").filter(|v| !v.is_null()),
                context: object(top.remove("context")),
                integrations: object(top.remove("integrations")),
            };
            (events, defaults)
        }
    };
    let mut out = Vec::with_capacity(events.len());
    for (i, event) in events.iter_mut().enumerate() {
        enrich(event, &defaults, received_at);
        let payload = serde_json::to_vec(&*event).map_err(|e| {
            Rejection::bad("invalid_json", format!("cannot serialize event {i}: {e}"))
        })?;
        if payload.len() > limits.max_event_bytes {
            let which = match kind {
                Kind::Single(_) => "event".to_string(),
                Kind::Batch => format!("batch[{i}]"),
            };
            return Err(Rejection::bad(
                "too_large",
                format!(
                    "{which} is {} bytes with the fields ingest adds (messageId, receivedAt, timestamp); the limit is {}",
                    payload.len(),
                    limits.max_event_bytes
                ),
            ));
        }
        out.push(Prepared {
            key: partition_key(event),
            payload,
        });
    }
    Ok(out)
}

fn missing_key(given: Option<&Value>) -> Rejection {
    match given {
        None | Some(Value::Null) => Rejection::unauthorized(
            "no write key: send it as the HTTP Basic user name or as `writeKey` in the body",
        ),
        Some(_) => Rejection::unauthorized("unknown write key"),
    }
}

/// Fill in what Segment's API fills in: the batch's `sentAt`, `context` and `integrations`
/// (the event's own values win), `messageId` when missing, `receivedAt`, and `timestamp`
/// corrected for the client's clock skew: `receivedAt - (sentAt - timestamp)`, keeping the
/// client's value as `originalTimestamp` (Segment's "Timestamps" spec). The write key is
/// removed: it is a credential and has no business in the topic.
fn enrich(event: &mut Map<String, Value>, defaults: &BatchDefaults, received_at: DateTime<Utc>) {
    event.remove("writeKey");
    if let Some(sent_at) = &defaults.sent_at {
        if event.get("sentAt").is_none_or(Value::is_null) {
            event.insert("sentAt".into(), sent_at.clone());
        }
    }
    for (field, fill) in [
        ("context", &defaults.context),
        ("integrations", &defaults.integrations),
    ] {
        let Some(fill) = fill else { continue };
        match event.get_mut(field) {
            Some(Value::Object(own)) => merge_defaults(own, fill),
            Some(v) if !v.is_null() => {}
            _ => {
                event.insert(field.into(), Value::Object(fill.clone()));
            }
        }
    }
    let needs_id = match event.get("messageId") {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    };
    if needs_id {
        let id = uuid::Builder::from_random_bytes(rand::random::<[u8; 16]>()).into_uuid();
        event.insert("messageId".into(), Value::String(id.to_string()));
    }
    let received_ms = received_at.timestamp_millis();
    event.insert("receivedAt".into(), Value::String(iso(received_at)));
    let client_ts = match event.get("timestamp") {
        Some(Value::String(s)) => Some((s.clone(), parse_timestamp(s))),
        _ => None,
    };
    match client_ts {
        Some((text, Some(ts_ms))) => {
            if event.get("originalTimestamp").is_none_or(Value::is_null) {
                event.insert("originalTimestamp".into(), Value::String(text));
            }
            let sent_ms = match event.get("sentAt") {
                Some(Value::String(s)) => parse_timestamp(s),
                _ => None,
            };
            let corrected = sent_ms
                .and_then(|sent| sent.checked_sub(ts_ms))
                .and_then(|skewed| received_ms.checked_sub(skewed))
                .and_then(DateTime::from_timestamp_millis);
            if let Some(t) = corrected {
                event.insert("timestamp".into(), Value::String(iso(t)));
            }
        }
        // An unparseable timestamp is left for the map stage to dead-letter with its reason.
        Some((_, None)) => {}
        None => {
            if event.get("timestamp").is_none_or(Value::is_null) {
                event.insert("timestamp".into(), Value::String(iso(received_at)));
            }
        }
    }
}

/// Add `fill`'s keys that `own` lacks, recursing into objects both have; `own` wins.
/// serde_json bounds nesting at 128 levels when parsing, so the recursion is bounded too.
fn merge_defaults(own: &mut Map<String, Value>, fill: &Map<String, Value>) {
    for (k, v) in fill {
        match (own.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge_defaults(a, b),
            (Some(existing), _) if !existing.is_null() => {}
            _ => {
                own.insert(k.clone(), v.clone());
            }
        }
    }
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// userId, else anonymousId: the input topic is partitioned by user so one user's events stay
/// in order (SPEC §4).
fn partition_key(event: &Map<String, Value>) -> Option<String> {
    ["userId", "anonymousId"]
        .iter()
        .find_map(|k| match event.get(*k)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

/// What every request handler shares.
struct Shared {
    producer: FutureProducer<IngestCtx>,
    topic: String,
    keys: HashSet<String>,
    limits: Limits,
    retry_after_secs: u64,
}

/// The ingest producer's context: its statistics report whether some broker is up.
pub struct IngestCtx {
    observer: Option<Arc<dyn GroupObserver>>,
}

impl rdkafka::ClientContext for IngestCtx {
    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(o) = &self.observer {
            o.broker_up(statistics.brokers.values().any(|b| b.state == "UP"));
        }
    }
}

/// A bound ingest listener with its producer; [`Ingest::serve`] runs it.
pub struct Ingest {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Ingest {
    /// Create the producer (idempotent, `acks=all`, `message.timeout.ms` from
    /// `ingest.ack_timeout_ms`) and bind `ingest.listen`. Binding here, before serving, lets
    /// `run` fail at start on a taken port and lets tests learn a `:0` port.
    pub async fn bind(cfg: &Config, bootstrap: &str) -> Result<Ingest> {
        Ingest::bind_observed(cfg, bootstrap, None).await
    }

    /// [`Ingest::bind`], reporting whether the brokers are up to `observer` (the process's
    /// readiness: an ingest-only process is ready when it can hand events to the broker).
    pub async fn bind_observed(
        cfg: &Config,
        bootstrap: &str,
        observer: Option<Arc<dyn GroupObserver>>,
    ) -> Result<Ingest> {
        let ing = &cfg.ingest;
        let listen = ing
            .listen
            .as_deref()
            .ok_or_else(|| anyhow!("ingest.listen is not set"))?;
        let mut c = crate::kafka::producer_config(&cfg.kafka, bootstrap);
        for (k, v) in [
            ("client.id", "eventrelay-ingest"),
            ("linger.ms", "2"),
            // Bounded so a slow broker turns into 503s (clients back off) instead of memory.
            ("queue.buffering.max.kbytes", "65536"),
        ] {
            if !cfg.kafka.properties.contains_key(k) {
                c.set(k, v);
            }
        }
        // Not overridable: a 200 means the broker acknowledged within the request's time.
        c.set("message.timeout.ms", ing.ack_timeout_ms.to_string());
        // Statistics every second tell readiness whether the brokers are up.
        if !cfg.kafka.properties.contains_key("statistics.interval.ms") {
            c.set("statistics.interval.ms", "1000");
        }
        let producer: FutureProducer<IngestCtx> = c
            .create_with_context(IngestCtx { observer })
            .context("creating the ingest producer")?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding ingest.listen {listen}"))?;
        let addr = listener.local_addr()?;
        describe_metrics();
        Ok(Ingest {
            listener,
            addr,
            shared: Arc::new(Shared {
                producer,
                topic: cfg.kafka.input_topic.clone(),
                keys: ing.write_keys.iter().cloned().collect(),
                limits: Limits {
                    max_event_bytes: ing.max_event_bytes,
                    max_batch_bytes: ing.max_batch_bytes,
                },
                retry_after_secs: ing.retry_after_secs,
            }),
        })
    }

    /// The address actually bound (useful when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until `shutdown` resolves, finish the requests in flight (each waits for its
    /// acknowledgements), then flush the producer.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let mut app = Router::new();
        for &(path, kind) in ROUTES {
            app = app.route(
                path,
                post(
                    move |State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body| {
                        handle(s, kind, path, headers, body)
                    },
                )
                .options(preflight),
            );
        }
        let app = app
            .fallback(|| async {
                metrics::counter!("eventrelay_ingest_requests_total",
                    "path" => "other", "status" => "404")
                .increment(1);
                reply(
                    StatusCode::NOT_FOUND,
                    error_body("not_found", "no such endpoint; see /v1/batch, /v1/track, …"),
                    None,
                )
            })
            .with_state(self.shared.clone());
        tracing::info!(addr = %self.addr, topic = %self.shared.topic, "ingest: serving Segment's HTTP Tracking API");
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("ingest server")?;
        let producer = self.shared.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10)))
            .await
            .map_err(|e| anyhow!("ingest flush task: {e}"))?
            .context("flushing the ingest producer")?;
        Ok(())
    }
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        "eventrelay_ingest_requests_total",
        "Ingest HTTP requests by path and status."
    );
    describe_counter!(
        "eventrelay_ingest_events_total",
        "Events the broker acknowledged through ingest."
    );
    describe_counter!(
        "eventrelay_ingest_rejected_total",
        "Ingest requests not taken, by reason."
    );
    describe_histogram!(
        "eventrelay_ingest_request_duration_seconds",
        Unit::Seconds,
        "Ingest request duration, body read to answer (includes waiting for broker acks)."
    );
}

async fn handle(
    s: Arc<Shared>,
    kind: Kind,
    path: &'static str,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let (status, response) = match accept(&s, kind, &headers, body).await {
        Ok(n) => {
            metrics::counter!("eventrelay_ingest_events_total").increment(n as u64);
            (
                StatusCode::OK,
                reply(StatusCode::OK, r#"{"success":true}"#.to_string(), None),
            )
        }
        Err(r) => {
            metrics::counter!("eventrelay_ingest_rejected_total", "reason" => r.code).increment(1);
            if r.status == StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(code = r.code, message = %r.message, "ingest: answering 503");
            } else {
                tracing::debug!(status = r.status.as_u16(), code = r.code, message = %r.message, "ingest: rejected");
            }
            let retry = (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(s.retry_after_secs);
            (
                r.status,
                reply(r.status, error_body(r.code, &r.message), retry),
            )
        }
    };
    metrics::counter!("eventrelay_ingest_requests_total",
        "path" => path, "status" => status.as_str().to_string())
    .increment(1);
    metrics::histogram!("eventrelay_ingest_request_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    response
}

async fn accept(
    s: &Shared,
    kind: Kind,
    headers: &HeaderMap,
    body: Body,
) -> Result<usize, Rejection> {
    let received_at = Utc::now();
    let auth = authorize_header(headers, &s.keys)?;
    let limit = match kind {
        Kind::Single(_) => s.limits.max_event_bytes,
        Kind::Batch => s.limits.max_batch_bytes,
    };
    let raw = axum::body::to_bytes(body, limit + RAW_SLACK)
        .await
        .map_err(|e| {
            let text = format!("{e:#}");
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            let mut over = false;
            while let Some(err) = source {
                over |= err.to_string().contains("length limit");
                source = err.source();
            }
            if over {
                Rejection::bad("too_large", format!("request body is over {limit} bytes"))
            } else {
                Rejection::bad("body_unreadable", format!("cannot read body: {text}"))
            }
        })?;
    let decoded = decode_body(headers, raw, limit)?;
    let events = prepare(kind, &decoded, auth, &s.keys, s.limits, received_at)?;
    produce(s, &events).await
}

/// Queue every event, then wait for every acknowledgement. Events queued before a failure
/// still reach the broker; the client retries the whole request, so they may be written twice
/// (at least once, with the same messageIds when the client set them, as Segment's libraries
/// do).
async fn produce(s: &Shared, events: &[Prepared]) -> Result<usize, Rejection> {
    let mut pending = Vec::with_capacity(events.len());
    for e in events {
        let mut rec = FutureRecord::<str, [u8]>::to(&s.topic).payload(&e.payload);
        if let Some(k) = e.key.as_deref() {
            rec = rec.key(k);
        }
        match s.producer.send_result(rec) {
            Ok(f) => pending.push(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                return Err(Rejection::unavailable(
                    "queue_full",
                    "the producer queue is full; retry later",
                ))
            }
            Err((e, _)) => {
                return Err(Rejection::unavailable(
                    "broker_unavailable",
                    format!("cannot produce: {e}"),
                ))
            }
        }
    }
    for f in pending {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(Rejection::unavailable(
                    "broker_unavailable",
                    format!("the broker did not acknowledge: {e}"),
                ))
            }
            Err(_) => {
                return Err(Rejection::unavailable(
                    "broker_unavailable",
                    "the producer is shutting down",
                ))
            }
        }
    }
    Ok(events.len())
}

fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"success": false, "code": code, "message": message}).to_string()
}

fn reply(status: StatusCode, body: String, retry_after: Option<u64>) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The browser library posts cross-origin (text/plain, so no preflight) and reads the
    // status: without this header the browser hides it and the library retries forever.
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if let Some(secs) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// CORS preflight for browsers that send custom headers (Authorization, Content-Encoding).
async fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Authorization, Content-Encoding"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn keys() -> HashSet<String> {
        ["k1".to_string()].into_iter().collect()
    }

    const LIMITS: Limits = Limits {
        max_event_bytes: 32 * 1024,
        max_batch_bytes: 500 * 1024,
    };

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap()
    }

    fn one(kind: Kind, body: Value, auth: Auth) -> Result<Vec<Value>, Rejection> {
        prepare(
            kind,
            body.to_string().as_bytes(),
            auth,
            &keys(),
            LIMITS,
            now(),
        )
        .map(|v| {
            v.into_iter()
                .map(|p| serde_json::from_slice(&p.payload).unwrap())
                .collect()
        })
    }

    #[test]
    fn skew_is_corrected_from_sent_at() {
        // Client clock 1 h fast: sent 11:00:05 by its clock, event at 11:00:00 by its clock.
        let out = one(
            Kind::Single("track"),
            serde_json::json!({"writeKey":"k1","userId":"u","event":"E",
                "timestamp":"2026-11-20T11:00:00Z","sentAt":"2026-11-20T11:00:05Z"}),
            Auth::Body,
        )
        .unwrap();
        let e = &out[0];
        assert_eq!(e["timestamp"], "2026-11-20T09:59:55.000Z");
        assert_eq!(e["originalTimestamp"], "2026-11-20T11:00:00Z");
        assert_eq!(e["receivedAt"], "2026-11-20T10:00:00.000Z");
        assert_eq!(e["type"], "track");
        assert!(e.get("writeKey").is_none());
        assert_eq!(e["messageId"].as_str().unwrap().len(), 36);
    }

    #[test]
    fn batch_fields_apply_to_events_and_own_values_win() {
        let out = one(
            Kind::Batch,
            serde_json::json!({"writeKey":"k1","sentAt":"2026-11-20T10:00:10Z",
            "context":{"ip":"1.2.3.4","library":{"name":"x","version":"1"}},
            "integrations":{"Seg":false},
            "batch":[
              {"type":"page","anonymousId":"a","timestamp":"2026-11-20T10:00:00Z",
               "context":{"library":{"name":"own"}},"messageId":"m1"},
              {"type":"track","userId":"u","event":"E","integrations":{"Seg":true}}
            ]}),
            Auth::Body,
        )
        .unwrap();
        assert_eq!(out[0]["timestamp"], "2026-11-20T09:59:50.000Z");
        assert_eq!(out[0]["sentAt"], "2026-11-20T10:00:10Z");
        assert_eq!(out[0]["context"]["ip"], "1.2.3.4");
        assert_eq!(out[0]["context"]["library"]["name"], "own");
        assert_eq!(out[0]["context"]["library"]["version"], "1");
        assert_eq!(out[0]["integrations"]["Seg"], false);
        assert_eq!(out[0]["messageId"], "m1");
        assert_eq!(out[1]["integrations"]["Seg"], true);
        // No client timestamp: the receipt time stands in.
        assert_eq!(out[1]["timestamp"], "2026-11-20T10:00:00.000Z");
    }

    #[test]
    fn keys_and_limits() {
        let ev = serde_json::json!({"userId":"u","event":"E"});
        assert_eq!(
            one(Kind::Single("track"), ev.clone(), Auth::Body)
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
        assert!(one(Kind::Single("track"), ev, Auth::Header).is_ok());
        let per_event = serde_json::json!({"batch":[{"writeKey":"k1","userId":"u"},{"writeKey":"no","userId":"v"}]});
        assert_eq!(
            one(Kind::Batch, per_event, Auth::Body).unwrap_err().code,
            "unauthorized"
        );
        let big =
            serde_json::json!({"writeKey":"k1","userId":"u","properties":{"x":"y".repeat(33_000)}});
        assert_eq!(
            one(Kind::Single("track"), big, Auth::Body)
                .unwrap_err()
                .code,
            "too_large"
        );
        assert_eq!(
            prepare(Kind::Batch, b"{nope", Auth::Header, &keys(), LIMITS, now())
                .unwrap_err()
                .code,
            "invalid_json"
        );
        assert_eq!(
            one(Kind::Batch, serde_json::json!({"batch":{}}), Auth::Header)
                .unwrap_err()
                .code,
            "invalid_batch"
        );
    }

    #[test]
    fn basic_auth_header() {
        let mut h = HeaderMap::new();
        assert_eq!(authorize_header(&h, &keys()), Ok(Auth::Body));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic azE6"),
        ); // k1:
        assert_eq!(authorize_header(&h, &keys()), Ok(Auth::Header));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic azE="),
        ); // k1
        assert_eq!(authorize_header(&h, &keys()), Ok(Auth::Header));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic azI6"),
        ); // k2:
        assert!(authorize_header(&h, &keys()).is_err());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert!(authorize_header(&h, &keys()).is_err());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(authorize_header(&h, &keys()).is_err());
    }

    #[test]
    fn gzip_bodies_are_decoded_within_the_limit() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&vec![b' '; 10_000]).unwrap();
        let gz = Bytes::from(enc.finish().unwrap());
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(decode_body(&h, gz.clone(), 10_000).unwrap().len(), 10_000);
        assert_eq!(decode_body(&h, gz, 9_999).unwrap_err().code, "too_large");
        assert_eq!(
            decode_body(&h, Bytes::from_static(b"not gzip"), 100)
                .unwrap_err()
                .code,
            "invalid_gzip"
        );
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(
            decode_body(&h, Bytes::new(), 100).unwrap_err().code,
            "unsupported_encoding"
        );
    }
}
