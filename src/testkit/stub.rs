//! `eventrelay stub`: a stand-in for both destinations' APIs on loopback, for the demo, the
//! tests and docker-compose.
//!
//! It checks that each request has the SPEC §3 shape (400 when not), records every request
//! (`GET /requests`, `GET /requests/count`, and optionally an NDJSON file), and injects faults on command
//! (`POST /faults` with `{"status", "rate", "retry_after", "latency_ms", "for_secs",
//! "down_secs", "path_prefix"}`, `DELETE /faults`).

use super::decode_t;
use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One recorded request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recorded {
    /// `GET` / `POST`.
    pub method: String,
    /// `http://host/path?query` as received.
    pub url: String,
    /// Request headers (lowercase names).
    pub headers: serde_json::Map<String, Value>,
    /// Body as text (empty when none).
    pub body: String,
    /// Status the stub answered.
    pub status: u16,
    /// When it arrived (ms since the epoch).
    pub at_ms: i64,
}

/// A fault to inject.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    /// Status to answer instead of success (e.g. 500, 429, 400).
    pub status: Option<u16>,
    /// Fraction of requests affected (default 1.0).
    pub rate: Option<f64>,
    /// `Retry-After` seconds to send with the fault status.
    pub retry_after: Option<u64>,
    /// Added latency for every request, in ms.
    pub latency_ms: Option<u64>,
    /// How long the fault lasts (default: until cleared).
    pub for_secs: Option<f64>,
    /// Stop listening for this many seconds (connections refused), then come back.
    pub down_secs: Option<f64>,
    /// Only requests whose path starts with this (`/j/` for OwnerIQ, `/v1/` for Seg).
    pub path_prefix: Option<String>,
    /// Only the next this-many matching requests (then the fault is spent).
    pub count: Option<u32>,
    /// Only requests whose URL (path and query) or body contains this text (one user's
    /// requests: `"userId":"user-7"` in a Seg body, `user-7` in an OwnerIQ `t` list).
    pub contains: Option<String>,
}

struct ActiveFault {
    fault: Fault,
    until: Option<Instant>,
}

/// A request as received, kept cheaply (shared buffers, no parsing) and turned into a
/// [`Recorded`] only when listed: the stub must not be the bottleneck of a throughput bench.
struct Raw {
    method: &'static str,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    status: u16,
    at_ms: i64,
}

impl Raw {
    fn recorded(&self) -> Recorded {
        let host = self
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("stub");
        Recorded {
            method: self.method.to_string(),
            url: format!("http://{host}{}", self.uri),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&self.body).into_owned(),
            status: self.status,
            at_ms: self.at_ms,
        }
    }
}

/// Requests kept in memory for `GET /requests`; older ones are dropped beyond this (the count
/// keeps going), so a long-running stub does not grow without bound. A kept request can pin
/// the connection's read buffer it was parsed from, so this is a few hundred MB at most.
pub const KEEP_RECORDED: usize = 250_000;

#[derive(Default)]
struct Log {
    kept: std::collections::VecDeque<Arc<Raw>>,
    total: u64,
}

#[derive(Default)]
struct StubState {
    recorded: Mutex<Log>,
    faults: Mutex<Vec<ActiveFault>>,
    file: Option<Mutex<std::fs::File>>,
    down_until: Mutex<Option<Instant>>,
}

/// A running stub.
pub struct Stub {
    /// Bound address.
    pub addr: SocketAddr,
    state: Arc<StubState>,
}

impl Stub {
    /// Start on `listen` (use port 0 for any), recording to `file` when given.
    pub async fn start(listen: &str, file: Option<&std::path::Path>) -> Result<Stub> {
        let file = match file {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening {}", p.display()))?,
            )),
            None => None,
        };
        let state = Arc::new(StubState {
            file,
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve_loop(listener, addr, state.clone()));
        Ok(Stub { addr, state })
    }

    /// Base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests kept so far (the last [`KEEP_RECORDED`]), oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        listing(&self.state)
    }

    /// How many requests arrived (cheaper than [`Stub::requests`]).
    pub fn request_count(&self) -> usize {
        self.state
            .recorded
            .lock()
            .map(|r| r.total as usize)
            .unwrap_or(0)
    }

    /// Inject a fault.
    pub fn inject(&self, fault: Fault) {
        add_fault(&self.state, fault);
    }

    /// Forget the requests recorded so far (a test's next phase counts from zero).
    pub fn clear_requests(&self) {
        if let Ok(mut r) = self.state.recorded.lock() {
            *r = Log::default();
        }
    }

    /// Stop every fault.
    pub fn clear_faults(&self) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.clear();
        }
    }
}

impl Fault {
    /// Refuse values that make no sense (a status outside 100..=599, a rate outside 0..=1, a
    /// duration that is negative, not a number or longer than a day), naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.status {
            if !(100..=599).contains(&s) {
                return Err(format!("status: {s} is not an HTTP status"));
            }
        }
        if let Some(r) = self.rate {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("rate: {r} is not between 0 and 1"));
            }
        }
        for (name, v) in [("for_secs", self.for_secs), ("down_secs", self.down_secs)] {
            if let Some(v) = v {
                if !(0.0..=MAX_FAULT_SECS).contains(&v) {
                    return Err(format!("{name}: {v} is not between 0 and {MAX_FAULT_SECS}"));
                }
            }
        }
        if self
            .latency_ms
            .is_some_and(|l| l > MAX_FAULT_SECS as u64 * 1000)
        {
            return Err("latency_ms: longer than a day".into());
        }
        if self.retry_after.is_some_and(|r| r > MAX_FAULT_SECS as u64) {
            return Err("retry_after: longer than a day".into());
        }
        Ok(())
    }
}

/// Longest fault duration the stub takes: a day.
const MAX_FAULT_SECS: f64 = 86_400.0;

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.clamp(0.0, MAX_FAULT_SECS)).unwrap_or_default()
}

fn add_fault(state: &StubState, fault: Fault) {
    if let Some(s) = fault.down_secs {
        if let Ok(mut d) = state.down_until.lock() {
            *d = Some(Instant::now() + secs(s));
        }
    }
    let until = fault.for_secs.map(|s| Instant::now() + secs(s));
    if fault.status.is_some() || fault.latency_ms.is_some() {
        if let Ok(mut f) = state.faults.lock() {
            f.push(ActiveFault { fault, until });
        }
    }
}

/// Serve, going away while a `down_secs` fault is active (the listener is closed, so
/// connections are refused) and coming back on the same address after it.
async fn serve_loop(
    mut listener: tokio::net::TcpListener,
    addr: SocketAddr,
    state: Arc<StubState>,
) {
    loop {
        let app = router(state.clone());
        let st = state.clone();
        let went_down = async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if st.down_until.lock().map(|d| d.is_some()).unwrap_or(false) {
                    return;
                }
            }
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(went_down)
            .await
        {
            tracing::error!(error = %e, "stub server stopped");
            return;
        }
        let until = state.down_until.lock().ok().and_then(|d| *d);
        if let Some(until) = until {
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        }
        if let Ok(mut d) = state.down_until.lock() {
            *d = None;
        }
        listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
    }
}

fn router(state: Arc<StubState>) -> Router {
    Router::new()
        .route("/j/", get(owneriq))
        .route("/v1/{website_id}/events", post(seg))
        .route("/requests", get(list).delete(clear))
        .route("/requests/count", get(count))
        .route("/faults", post(set_fault).delete(clear_fault))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

fn listing(s: &StubState) -> Vec<Recorded> {
    // Take the entries under the lock, build them outside it: handlers keep recording meanwhile.
    let kept: Vec<Arc<Raw>> = s
        .recorded
        .lock()
        .map(|r| r.kept.iter().cloned().collect())
        .unwrap_or_default();
    kept.iter().map(|r| r.recorded()).collect()
}

async fn list(State(s): State<Arc<StubState>>) -> Json<Vec<Recorded>> {
    Json(listing(&s))
}

/// `GET /requests/count`: how many requests arrived, as `{"count": N}`.
async fn count(State(s): State<Arc<StubState>>) -> Json<Value> {
    let n = s.recorded.lock().map(|r| r.total).unwrap_or(0);
    Json(serde_json::json!({ "count": n }))
}

async fn clear(State(s): State<Arc<StubState>>) -> StatusCode {
    if let Ok(mut r) = s.recorded.lock() {
        *r = Log::default();
    }
    StatusCode::NO_CONTENT
}

async fn set_fault(State(s): State<Arc<StubState>>, Json(f): Json<Fault>) -> (StatusCode, String) {
    if let Err(e) = f.validate() {
        return (StatusCode::BAD_REQUEST, format!("{e}\n"));
    }
    add_fault(&s, f);
    (StatusCode::NO_CONTENT, String::new())
}

async fn clear_fault(State(s): State<Arc<StubState>>) -> StatusCode {
    if let Ok(mut f) = s.faults.lock() {
        f.clear();
    }
    StatusCode::NO_CONTENT
}

/// The fault that applies to this request, if any (and the latency to add).
fn fault_for(s: &StubState, uri: &Uri, body: &[u8]) -> (Option<(u16, Option<u64>)>, u64) {
    let path = uri.path();
    let Ok(mut faults) = s.faults.lock() else {
        return (None, 0);
    };
    let now = Instant::now();
    faults.retain(|f| f.until.is_none_or(|u| u > now) && f.fault.count != Some(0));
    let mut latency = 0;
    let mut answer = None;
    for f in faults.iter_mut() {
        let prefix = f.fault.path_prefix.as_deref();
        if prefix.is_some_and(|p| !path.starts_with(p)) {
            continue;
        }
        if let Some(text) = f.fault.contains.as_deref() {
            let in_url = uri
                .path_and_query()
                .is_some_and(|pq| pq.as_str().contains(text));
            let in_body =
                !text.is_empty() && body.windows(text.len()).any(|w| w == text.as_bytes());
            if !in_url && !in_body {
                continue;
            }
        }
        latency = latency.max(f.fault.latency_ms.unwrap_or(0));
        if let Some(status) = f.fault.status {
            if answer.is_none() && rand::random::<f64>() < f.fault.rate.unwrap_or(1.0) {
                answer = Some((status, f.fault.retry_after));
                if let Some(c) = &mut f.fault.count {
                    *c = c.saturating_sub(1);
                }
            }
        }
    }
    (answer, latency)
}

async fn answer(
    s: &StubState,
    method: &'static str,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    shape_error: Option<String>,
) -> Response {
    let (fault, latency) = fault_for(s, &uri, &body);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let (status, retry_after, message) = match (shape_error, fault) {
        (Some(err), _) => (400, None, err),
        (None, Some((st, ra))) => (st, ra, "injected fault".to_string()),
        (None, None) => (200, None, "ok".to_string()),
    };
    let raw = Raw {
        method,
        uri,
        headers,
        body,
        status,
        at_ms: crate::event::now_millis(),
    };
    if let Some(f) = &s.file {
        if let (Ok(mut f), Ok(line)) = (f.lock(), serde_json::to_string(&raw.recorded())) {
            let _ = writeln!(f, "{line}");
        }
    }
    if let Ok(mut r) = s.recorded.lock() {
        if r.kept.len() >= KEEP_RECORDED {
            r.kept.pop_front();
        }
        r.kept.push_back(Arc::new(raw));
        r.total += 1;
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (code, message).into_response();
    if let Some(ra) = retry_after {
        if let Ok(v) = ra.to_string().parse() {
            resp.headers_mut().insert("retry-after", v);
        }
    }
    resp
}

fn idempotency_problem(headers: &HeaderMap) -> Option<String> {
    match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        Some(k) if !k.is_empty() => None,
        _ => Some("missing Idempotency-Key".into()),
    }
}

async fn owneriq(State(s): State<Arc<StubState>>, uri: Uri, headers: HeaderMap) -> Response {
    let problem = idempotency_problem(&headers).or_else(|| {
        let q = uri.query().unwrap_or_default();
        let has = |k: &str| {
            q.split('&')
                .any(|kv| kv.starts_with(&format!("{k}=")) && kv.len() > k.len() + 1)
        };
        if !has("pt") || !has("s") {
            return Some("pt and s are required".into());
        }
        match decode_t(&uri.to_string()) {
            Some(pairs) if pairs.iter().any(|(k, _)| k == "customer_id") => None,
            Some(_) => Some("t has no customer_id".into()),
            None => Some("t is not a list of key|value pairs".into()),
        }
    });
    answer(&s, "GET", uri, headers, Bytes::new(), problem).await
}

/// What the stub checks of a Seg body: a JSON object with string `type` and `messageId`
/// (other fields are skipped without being built).
#[derive(Deserialize)]
struct SegShape<'a> {
    #[serde(rename = "type", borrow)]
    _type: std::borrow::Cow<'a, str>,
    #[serde(rename = "messageId", borrow)]
    _message_id: std::borrow::Cow<'a, str>,
}

async fn seg(
    State(s): State<Arc<StubState>>,
    Path(website_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let problem = idempotency_problem(&headers)
        .or_else(|| {
            (uuid::Uuid::try_parse(&website_id).is_err())
                .then(|| format!("website id {website_id:?} is not a GUID"))
        })
        .or_else(|| {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            (!ct.starts_with("application/json"))
                .then(|| "Content-Type must be application/json".into())
        })
        .or_else(|| match serde_json::from_slice::<SegShape<'_>>(&body) {
            // serde also reads a struct from a JSON array: only an object is the Seg shape.
            Ok(_) if body.trim_ascii_start().first() == Some(&b'{') => None,
            Ok(_) => Some("body must be a JSON object with string type and messageId".into()),
            Err(e) => Some(format!(
                "body must be a JSON object with string type and messageId: {e}"
            )),
        });
    answer(&s, "POST", uri, headers, body, problem).await
}

/// `eventrelay stub`: serve until SIGINT/SIGTERM.
pub fn run(listen: &str, record: Option<&std::path::Path>, fault: Fault) -> Result<()> {
    crate::app::runtime()?.block_on(async {
        let stub = Stub::start(listen, record).await?;
        stub.inject(fault);
        tracing::info!(addr = %stub.addr, "stub destinations listening (OwnerIQ: GET /j/, Seg: POST /v1/{{website_id}}/events; GET /requests, POST/DELETE /faults)");
        println!("{}", stub.url());
        crate::app::shutdown_signal().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsense_faults_are_refused_not_panicked_on() {
        let f = |json: &str| serde_json::from_str::<Fault>(json).expect("fault json");
        for bad in [
            r#"{"for_secs":1e300}"#,
            r#"{"down_secs":-1}"#,
            r#"{"status":42}"#,
            r#"{"status":503,"rate":1.5}"#,
            r#"{"latency_ms":999999999999}"#,
        ] {
            assert!(f(bad).validate().is_err(), "{bad}");
        }
        assert!(f(r#"{"status":503,"rate":0.3,"for_secs":4}"#)
            .validate()
            .is_ok());
        // Even unchecked, durations never panic.
        assert_eq!(secs(1e300), Duration::from_secs(86_400));
        assert_eq!(secs(f64::NAN), Duration::ZERO);
    }

    #[tokio::test]
    async fn seg_shape_is_checked_and_every_request_recorded() {
        let stub = Stub::start("127.0.0.1:0", None).await.expect("stub");
        let url = format!(
            "{}/v1/abc8fb18-7559-4324-9921-a4b5015b4a1c/events",
            stub.url()
        );
        let client = reqwest::Client::new();
        let post = |body: &'static str| {
            client
                .post(&url)
                .header("content-type", "application/json")
                .header("idempotency-key", "m-1")
                .body(body)
                .send()
        };
        let status = |r: reqwest::Result<reqwest::Response>| r.map(|r| r.status().as_u16()).ok();
        let ok = r#"{"type":"track","messageId":"m-1","event":"Caf\u00e9","properties":{"a":[1]}}"#;
        assert_eq!(status(post(ok).await), Some(200));
        assert_eq!(status(post(r#"["track","m-1"]"#).await), Some(400));
        assert_eq!(status(post(r#"{"type":"track"}"#).await), Some(400));
        assert_eq!(
            status(post(r#"{"type":1,"messageId":"m"}"#).await),
            Some(400)
        );
        assert_eq!(status(post("not json").await), Some(400));
        let recorded = stub.requests();
        assert_eq!(recorded.len(), 5);
        assert_eq!(stub.request_count(), 5);
        assert_eq!(recorded[0].body, ok);
        assert_eq!(recorded[0].status, 200);
        assert!(recorded[0].url.ends_with("/events"));
        assert_eq!(
            recorded[0].headers.get("idempotency-key"),
            Some(&Value::from("m-1"))
        );
    }
}
