//! The live delivery view (SPEC §7 `/deliveries`, §6 `tail`): the last delivery attempts of
//! each destination, kept in a bounded ring in memory, served as JSON by the ops endpoint and
//! followed in the terminal by `eventrelay tail`.
//!
//! Why it exists: the metrics say how many attempts failed and the logs are scattered across
//! pods; an operator asking "what did Seg answer just now, and for which message?" needs the
//! attempts themselves, the way Segment's "Event Delivery" page shows them.
//!
//! Nothing secret is kept: a URL is masked before it is stored (its userinfo, and the values
//! of query keys that look like credentials), error texts have the URLs inside them masked the
//! same way, and of the request headers only the Idempotency-Key (the messageId) is kept.
//!
//! Cost on the send stage's hot path: one short lock of the destination's own ring per attempt
//! (a push; the entry it displaces is dropped after the lock is released). An entry owns only
//! its messageId, its masked URL and, when the attempt failed, its error text. The memory is
//! bounded by `metrics.deliveries_kept` entries per destination (default 1,000; a few hundred
//! bytes each plus the URL).

use crate::config::Config;
use crate::event::now_millis;
use crate::ops::Output;
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::config::{DEFAULT_KEPT, MAX_KEPT};

/// Attempts one `/deliveries` answer holds when no `limit` is given.
pub const DEFAULT_LIMIT: usize = 100;

/// The largest `limit` honoured (larger ones are lowered to it): one answer stays small enough
/// to build under the ring's lock without holding up the lanes.
pub const MAX_LIMIT: usize = 1_000;

/// What became of the record after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The destination accepted it.
    Success,
    /// It failed and the lane tries again in place, after a short backoff (or once the
    /// destination's circuit lets requests through again).
    InPlaceRetry,
    /// It failed and was handed to the retry topic, to be tried again when due.
    Retry,
    /// It failed for good (a permanent answer, or the retry window is over): dead-lettered.
    DeadLetter,
}

impl Outcome {
    /// The name used in JSON and by `tail` (`success`, `in_place_retry`, `retry`,
    /// `dead_letter`), the same words as the `outcome` label of `eventrelay_deliveries_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::InPlaceRetry => "in_place_retry",
            Outcome::Retry => "retry",
            Outcome::DeadLetter => "dead_letter",
        }
    }
}

/// One attempt as the send stage sees it, borrowed: [`DestinationLog::record`] masks and copies
/// only what it keeps, so the caller allocates nothing.
#[derive(Debug, Clone)]
pub struct AttemptInput<'a> {
    /// The record's messageId, sent as the Idempotency-Key header.
    pub message_id: &'a str,
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The request URL with credentials masked ([`mask_url`]); shared, so a lane whose URL
    /// repeats masks it once.
    pub url: Arc<str>,
    /// The HTTP status, when the destination answered.
    pub status: Option<u16>,
    /// Why there is no status (`timeout`, `connect_error`, `invalid_request`, `error`).
    pub error_class: Option<&'static str>,
    /// How long the HTTP exchange took.
    pub latency: Duration,
    /// Which attempt of this record it was, counting earlier passes through the retry topic.
    pub attempt: u32,
    /// What became of the record.
    pub outcome: Outcome,
    /// What went wrong (masked before it is stored), for failures.
    pub error: Option<&'a str>,
}

/// One stored attempt, as `/deliveries` serves it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// Position in this destination's sequence of attempts since the process started (1, 2,
    /// …): `tail` asks for those after the last one it printed.
    pub seq: u64,
    /// When the attempt ended (RFC 3339, milliseconds, UTC).
    #[serde(serialize_with = "rfc3339_ms")]
    pub time: i64,
    /// The messageId (Idempotency-Key).
    pub message_id: String,
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The request URL with credentials masked.
    pub url: Arc<str>,
    /// The HTTP status, or null when there was no answer (see `errorClass`).
    pub status: Option<u16>,
    /// Why there was no answer: `timeout`, `connect_error`, `invalid_request` or `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_class: Option<&'static str>,
    /// Duration of the HTTP exchange in milliseconds.
    #[serde(serialize_with = "millis")]
    pub latency_ms: Duration,
    /// Attempt number of this record (1 for the first).
    pub attempt: u32,
    /// What became of the record.
    pub outcome: Outcome,
    /// What went wrong, with credentials masked; absent on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn rfc3339_ms<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*ms))
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The last attempts of one destination: a ring of at most `kept` entries behind one lock.
#[derive(Debug)]
pub struct DestinationLog {
    name: String,
    kept: usize,
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    /// The `seq` of the newest attempt (0 before the first).
    latest: u64,
    entries: VecDeque<Attempt>,
}

/// Which attempts a reader wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    /// Only attempts that did not succeed.
    pub failed: bool,
    /// At most this many (the newest).
    pub limit: usize,
    /// Only attempts with a `seq` above this.
    pub after: u64,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            failed: false,
            limit: DEFAULT_LIMIT,
            after: 0,
        }
    }
}

/// One `/deliveries` answer.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// The destination asked about.
    pub destination: String,
    /// When this process's view began (RFC 3339): `seq` numbers start over when it changes,
    /// which is how `tail` notices a restart.
    pub started: String,
    /// How many attempts the ring keeps.
    pub kept: usize,
    /// The `seq` of the newest attempt recorded, whether or not it passed the filter.
    pub latest: u64,
    /// The attempts that passed the filter, newest first.
    pub attempts: Vec<Attempt>,
}

impl DestinationLog {
    /// An empty ring for `name` keeping at most `kept` attempts (0 keeps nothing).
    pub fn new(name: &str, kept: usize) -> DestinationLog {
        DestinationLog {
            name: name.to_string(),
            kept,
            ring: Mutex::new(Ring {
                latest: 0,
                entries: VecDeque::with_capacity(kept.min(64)),
            }),
        }
    }

    /// Keep one attempt, displacing the oldest when the ring is full. Masking (by the caller)
    /// and copying happen before the lock is taken, and the displaced entry is freed after it
    /// is released, so the lock is held for a push only.
    pub fn record(&self, a: AttemptInput<'_>) {
        if self.kept == 0 {
            return;
        }
        let mut entry = Attempt {
            seq: 0,
            time: now_millis(),
            message_id: a.message_id.to_string(),
            method: a.method,
            url: a.url,
            status: a.status,
            error_class: a.error_class,
            latency_ms: a.latency,
            attempt: a.attempt,
            outcome: a.outcome,
            error: a.error.map(mask_text),
        };
        let displaced = {
            // Nothing panics while the lock is held, so a poisoned lock still holds a ring.
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.latest += 1;
            entry.seq = ring.latest;
            let displaced = if ring.entries.len() >= self.kept {
                ring.entries.pop_front()
            } else {
                None
            };
            ring.entries.push_back(entry);
            displaced
        };
        drop(displaced);
    }

    /// The attempts passing `f`, newest first.
    pub fn page(&self, f: Filter, started: &str) -> Page {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let attempts = ring
            .entries
            .iter()
            .rev()
            .take_while(|a| a.seq > f.after)
            .filter(|a| !f.failed || a.outcome != Outcome::Success)
            .take(f.limit)
            .cloned()
            .collect();
        Page {
            destination: self.name.clone(),
            started: started.to_string(),
            kept: self.kept,
            latest: ring.latest,
            attempts,
        }
    }

    /// How many attempts the ring holds now.
    pub fn len(&self) -> usize {
        self.ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    /// Whether no attempt has been kept yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rings of every destination this process sends to. Built once when the process starts,
/// so looking a destination up takes no lock; a destination it does not send to is unknown
/// (404 at `/deliveries`).
#[derive(Debug)]
pub struct DeliveryLog {
    started: String,
    dests: BTreeMap<String, Arc<DestinationLog>>,
}

impl Default for DeliveryLog {
    /// A log of no destination (a process that sends nothing).
    fn default() -> Self {
        DeliveryLog::new(std::iter::empty::<&str>(), 0)
    }
}

impl DeliveryLog {
    /// One ring of `kept` attempts for each of `destinations`.
    pub fn new<'a>(destinations: impl IntoIterator<Item = &'a str>, kept: usize) -> DeliveryLog {
        DeliveryLog {
            started: format_time(now_millis()),
            dests: destinations
                .into_iter()
                .map(|d| (d.to_string(), Arc::new(DestinationLog::new(d, kept))))
                .collect(),
        }
    }

    /// The ring of `destination`, if this process sends to it.
    pub fn destination(&self, destination: &str) -> Option<Arc<DestinationLog>> {
        self.dests.get(destination).cloned()
    }

    /// The ring the send stage of `destination` records into: its own, or one keeping nothing
    /// when the log was built without it (a stage started outside `app::Running`).
    pub fn for_sender(&self, destination: &str) -> Arc<DestinationLog> {
        self.destination(destination)
            .unwrap_or_else(|| Arc::new(DestinationLog::new(destination, 0)))
    }

    /// Answer `GET /deliveries` from its query parameters (`destination`, `failed`, `limit`,
    /// `after`); an error is (HTTP status, message) for a JSON error body.
    pub fn answer(&self, params: &HashMap<String, String>) -> Result<Page, (u16, String)> {
        let sends = || {
            let names: Vec<&str> = self.dests.keys().map(String::as_str).collect();
            if names.is_empty() {
                "this process sends to no destination".to_string()
            } else {
                format!("this process sends to: {}", names.join(", "))
            }
        };
        if let Some(k) = params
            .keys()
            .find(|k| !matches!(k.as_str(), "destination" | "failed" | "limit" | "after"))
        {
            return Err((
                400,
                format!("unknown parameter {k:?} (known: destination, failed, limit, after)"),
            ));
        }
        let Some(name) = params.get("destination") else {
            return Err((
                400,
                format!("say which destination: ?destination=NAME ({})", sends()),
            ));
        };
        let Some(log) = self.dests.get(name) else {
            return Err((404, format!("unknown destination {name:?} ({})", sends())));
        };
        let failed = match params.get("failed").map(String::as_str) {
            None | Some("false" | "0" | "no" | "") => false,
            Some("true" | "1" | "yes") => true,
            Some(v) => return Err((400, format!("failed={v:?}: say true or false"))),
        };
        let limit = match params.get("limit") {
            None => DEFAULT_LIMIT,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n > 0 => n.min(MAX_LIMIT),
                _ => return Err((400, format!("limit={v:?}: say a number from 1"))),
            },
        };
        let after = match params.get("after") {
            None => 0,
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| (400, format!("after={v:?}: say a seq number")))?,
        };
        Ok(log.page(
            Filter {
                failed,
                limit,
                after,
            },
            &self.started,
        ))
    }
}

/// Whether a query key names a credential: `key`, `token`, `secret`, `password` and the like,
/// ignoring case, `_`, `-` and percent-encoding, so `api_key`, `writeKey`, `X-Api-Key`,
/// `access_token` and `client_secret` all count. Erring towards masking is the point.
fn is_secret_key(key: &str) -> bool {
    // Normalised on the stack: query keys are short, and a long one is masked to be safe.
    let mut buf = [0u8; 48];
    let mut n = 0;
    let b = key.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let mut c = b[i];
        if c == b'%' && i + 2 < b.len() {
            let hex = |h: u8| (h as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                c = (hi * 16 + lo) as u8;
                i += 2;
            }
        }
        i += 1;
        if c.is_ascii_alphanumeric() {
            if n == buf.len() {
                return true;
            }
            buf[n] = c.to_ascii_lowercase();
            n += 1;
        }
    }
    let k = &buf[..n];
    const ENDINGS: &[&[u8]] = &[
        b"key",
        b"token",
        b"secret",
        b"password",
        b"passwd",
        b"pwd",
        b"signature",
        b"credential",
        b"credentials",
    ];
    const WHOLE: &[&[u8]] = &[b"sig", b"auth", b"authorization", b"session", b"sessionid"];
    ENDINGS.iter().any(|e| k.ends_with(e)) || WHOLE.contains(&k)
}

/// `url` with its credentials replaced by `***`: the userinfo (`https://***@host/…`; a
/// Segment-style write key is the Basic user name, so the user goes too) and the values of
/// query keys that look like secrets (see `is_secret_key`). Everything else is kept as
/// written, so the URL still says where the request went.
pub fn mask_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let auth_start = url.find("://").map_or(0, |i| i + 3);
    let auth_end = url[auth_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |j| auth_start + j);
    match url[auth_start..auth_end].rfind('@') {
        Some(at) => {
            out.push_str(&url[..auth_start]);
            out.push_str("***");
            out.push_str(&url[auth_start + at..auth_end]);
        }
        None => out.push_str(&url[..auth_end]),
    }
    let rest = &url[auth_end..];
    let (before_fragment, fragment) = match rest.find('#') {
        Some(h) => rest.split_at(h),
        None => (rest, ""),
    };
    match before_fragment.split_once('?') {
        None => out.push_str(before_fragment),
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((k, v)) if !v.is_empty() && is_secret_key(k) => {
                        out.push_str(k);
                        out.push_str("=***");
                    }
                    _ => out.push_str(pair),
                }
            }
        }
    }
    out.push_str(fragment);
    out
}

/// `text` (an error message, a snippet of an answer) with every URL in it masked as
/// [`mask_url`] does: HTTP client errors quote the request URL.
pub fn mask_text(text: &str) -> String {
    if !text.contains("://") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        // The scheme: the letters, digits, `+`, `-` and `.` just before `://`.
        let start = rest[..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[sep..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '<' | '>'))
            .map_or(rest.len(), |j| sep + j);
        out.push_str(&rest[..start]);
        out.push_str(&mask_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// What `eventrelay tail` follows and how it prints.
#[derive(Debug, Clone)]
pub struct TailArgs {
    /// The destination whose attempts to follow.
    pub destination: String,
    /// Only attempts that did not succeed.
    pub failed: bool,
    /// One line per attempt for people (`text`), or NDJSON (`json`).
    pub output: Output,
    /// How often to ask the endpoint.
    pub interval: Duration,
}

/// The base URL of the ops endpoint of the process configured by `cfg` (`metrics.listen`),
/// with an unspecified listen address (`0.0.0.0`, `[::]`) reached on the loopback.
pub fn ops_base_url(cfg: &Config) -> Result<String> {
    let listen = &cfg.metrics.listen;
    let mut addr: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("metrics.listen {listen:?} is not an address"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(format!("http://{addr}"))
}

/// `eventrelay tail`: follow the attempts of a destination of the process configured by `cfg`
/// on stdout until Ctrl-C.
pub async fn run_tail(cfg: &Config, args: &TailArgs) -> Result<()> {
    let base = ops_base_url(cfg)?;
    let mut out = std::io::stdout();
    tail(&base, args, &mut out, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Why one poll of the endpoint failed.
enum PollError {
    /// The endpoint answered that the question is wrong (unknown destination, bad parameter):
    /// asking again will not help.
    Refused(anyhow::Error),
    /// The endpoint could not be reached or answered nonsense: perhaps restarting.
    Unreachable(anyhow::Error),
}

/// Follow `/deliveries` at `base` (e.g. `http://127.0.0.1:9464`): poll every `args.interval`,
/// write each attempt not written before (oldest first, one line each) to `out`, until `stop`
/// resolves. The first poll failing, or the endpoint refusing the question (an unknown
/// destination), is an error; a process that stops answering later is waited for (it may be
/// restarting), and its new attempts are printed once it is back.
pub async fn tail(
    base: &str,
    args: &TailArgs,
    out: &mut (dyn Write + Send),
    stop: impl Future<Output = ()>,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("creating HTTP client")?;
    tokio::pin!(stop);
    let mut last_seq = 0u64;
    let mut started: Option<String> = None;
    let mut polls = 0u64;
    let mut unreachable = false;
    loop {
        let mut params = vec![
            ("destination", args.destination.clone()),
            ("limit", MAX_LIMIT.to_string()),
            ("after", last_seq.to_string()),
        ];
        if args.failed {
            params.push(("failed", "true".into()));
        }
        let url = url::Url::parse_with_params(&format!("{base}/deliveries"), &params)
            .with_context(|| format!("{base} is not a URL"))?;
        polls += 1;
        match poll(&client, url).await {
            Ok(page) => {
                if unreachable {
                    eprintln!("tail: {base} answers again");
                    unreachable = false;
                }
                let page_started = page.get("started").and_then(Value::as_str);
                if started.is_some() && started.as_deref() != page_started {
                    // Another process (a restart): its seq numbers start over.
                    eprintln!("tail: the process restarted; following its attempts");
                    started = page_started.map(str::to_string);
                    last_seq = 0;
                    continue;
                }
                started = page_started.map(str::to_string);
                let attempts = page
                    .get("attempts")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if attempts.len() >= MAX_LIMIT && last_seq > 0 {
                    eprintln!(
                        "tail: more than {MAX_LIMIT} new attempts since the last poll; \
                         showing the newest {MAX_LIMIT}"
                    );
                }
                for a in attempts.iter().rev() {
                    let line = match args.output {
                        Output::Text => format_line(a),
                        Output::Json => a.to_string(),
                    };
                    writeln!(out, "{line}")?;
                }
                out.flush()?;
                last_seq = last_seq.max(page.get("latest").and_then(Value::as_u64).unwrap_or(0));
            }
            Err(PollError::Refused(e)) => return Err(e),
            Err(PollError::Unreachable(e)) if polls == 1 => return Err(e),
            Err(PollError::Unreachable(e)) => {
                if !unreachable {
                    eprintln!("tail: {e:#}; trying again");
                    unreachable = true;
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(args.interval) => {}
        }
    }
}

async fn poll(client: &reqwest::Client, url: url::Url) -> Result<Value, PollError> {
    let shown = url.to_string();
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| PollError::Unreachable(anyhow!("cannot reach {shown}: {e}")))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| PollError::Unreachable(anyhow!("reading the answer of {shown}: {e}")))?;
    let body: Value = serde_json::from_str(&text).map_err(|_| {
        PollError::Unreachable(anyhow!(
            "{shown} answered {status} with something other than JSON (is it eventrelay's ops endpoint?)"
        ))
    })?;
    if status.is_client_error() {
        let msg = body.get("error").and_then(Value::as_str).unwrap_or("");
        return Err(PollError::Refused(anyhow!("{shown}: {status}: {msg}")));
    }
    if !status.is_success() {
        return Err(PollError::Unreachable(anyhow!("{shown} answered {status}")));
    }
    Ok(body)
}

/// One attempt as one line for people: time, outcome, status (or error class), latency,
/// attempt number, messageId, method and URL, then the error text if any.
pub fn format_line(a: &Value) -> String {
    let s = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("-");
    let status = match a.get("status").and_then(Value::as_u64) {
        Some(code) => code.to_string(),
        None => s("errorClass").to_string(),
    };
    let latency = a.get("latencyMs").and_then(Value::as_f64).unwrap_or(0.0);
    let attempt = a.get("attempt").and_then(Value::as_u64).unwrap_or(0);
    let mut line = format!(
        "{} {:<14} {:>13} {:>9.1}ms #{:<3} {} {} {}",
        s("time"),
        s("outcome"),
        status,
        latency,
        attempt,
        s("messageId"),
        s("method"),
        s("url"),
    );
    if let Some(e) = a.get("error").and_then(Value::as_str) {
        line.push_str("  ");
        line.push_str(e);
    }
    line
}

/// Where the error text of a non-success answer may quote the destination's body: at most
/// this many bytes of it, so one chatty destination cannot grow the ring.
pub const ANSWER_SNIPPET: usize = 200;

/// The first [`ANSWER_SNIPPET`] bytes of an answer's body as text (cut at a character
/// boundary, whitespace collapsed to one line), or `None` for an empty body.
pub fn answer_snippet(body: &[u8]) -> Option<String> {
    let cut = &body[..body.len().min(ANSWER_SNIPPET)];
    let text = String::from_utf8_lossy(cut);
    let one_line: Vec<&str> = text.split_whitespace().collect();
    if one_line.is_empty() {
        return None;
    }
    let mut s = one_line.join(" ");
    if body.len() > ANSWER_SNIPPET {
        s.push('…');
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(id: &str, outcome: Outcome) -> AttemptInput<'_> {
        AttemptInput {
            message_id: id,
            method: "POST",
            url: mask_url("https://seg.example.com/v1/site/events").into(),
            status: Some(if outcome == Outcome::Success {
                200
            } else {
                400
            }),
            error_class: None,
            latency: Duration::from_micros(1500),
            attempt: 1,
            outcome,
            error: (outcome != Outcome::Success).then_some("HTTP 400"),
        }
    }

    fn ids(p: &Page) -> Vec<&str> {
        p.attempts.iter().map(|a| a.message_id.as_str()).collect()
    }

    #[test]
    fn the_ring_keeps_the_newest_and_serves_them_newest_first() {
        let log = DestinationLog::new("seg", 3);
        for i in 0..5 {
            log.record(input(&format!("m-{i}"), Outcome::Success));
        }
        assert_eq!(log.len(), 3, "bounded");
        let p = log.page(Filter::default(), "t");
        assert_eq!(ids(&p), ["m-4", "m-3", "m-2"]);
        assert_eq!(p.latest, 5);
        assert_eq!(p.attempts[0].seq, 5);
        let p = log.page(
            Filter {
                limit: 2,
                ..Filter::default()
            },
            "t",
        );
        assert_eq!(ids(&p), ["m-4", "m-3"], "limit keeps the newest");
        let p = log.page(
            Filter {
                after: 4,
                ..Filter::default()
            },
            "t",
        );
        assert_eq!(
            ids(&p),
            ["m-4"],
            "after: only those not seen (m-4 is seq 5)"
        );
    }

    #[test]
    fn failed_keeps_only_what_did_not_succeed() {
        let log = DestinationLog::new("seg", 10);
        log.record(input("ok-1", Outcome::Success));
        log.record(input("dead", Outcome::DeadLetter));
        log.record(input("again", Outcome::InPlaceRetry));
        log.record(input("later", Outcome::Retry));
        log.record(input("ok-2", Outcome::Success));
        let p = log.page(
            Filter {
                failed: true,
                ..Filter::default()
            },
            "t",
        );
        assert_eq!(ids(&p), ["later", "again", "dead"]);
        assert_eq!(p.latest, 5, "latest counts every attempt");
    }

    #[test]
    fn keeping_nothing_records_nothing() {
        let log = DestinationLog::new("seg", 0);
        log.record(input("m", Outcome::Success));
        assert!(log.is_empty());
        assert!(DeliveryLog::default().for_sender("seg").is_empty());
    }

    #[test]
    fn an_attempt_serializes_as_documented() {
        let log = DestinationLog::new("seg", 10);
        log.record(AttemptInput {
            status: None,
            error_class: Some("timeout"),
            error: Some("timeout: error sending request for url (https://u:p@h/x?api_key=s)"),
            ..input("m-1", Outcome::Retry)
        });
        let v = serde_json::to_value(&log.page(Filter::default(), "t").attempts[0]).unwrap();
        assert_eq!(v["messageId"], "m-1");
        assert_eq!(v["status"], Value::Null);
        assert_eq!(v["errorClass"], "timeout");
        assert_eq!(v["outcome"], "retry");
        assert_eq!(v["latencyMs"], 1.5);
        assert_eq!(
            v["error"],
            "timeout: error sending request for url (https://***@h/x?api_key=***)"
        );
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        let line = format_line(&v);
        assert!(line.contains("retry") && line.contains("timeout") && line.contains("m-1"));
    }

    #[test]
    fn urls_lose_their_credentials() {
        for (raw, masked) in [
            (
                "https://seg.example.com/v1/site/events",
                "https://seg.example.com/v1/site/events",
            ),
            (
                "https://user:pa55@seg.example.com/v1/x",
                "https://***@seg.example.com/v1/x",
            ),
            (
                "https://writekey@api.example.com/v1/track",
                "https://***@api.example.com/v1/track",
            ),
            (
                "http://h/j/?pt=9nfdft&s=gcb8&t=a|b,c|d",
                "http://h/j/?pt=9nfdft&s=gcb8&t=a|b,c|d",
            ),
            (
                "http://h/p?api_key=abc&x=1&token=t&writeKey=w&X-Api-Key=k&password=&sig=s#f",
                "http://h/p?api_key=***&x=1&token=***&writeKey=***&X-Api-Key=***&password=&sig=***#f",
            ),
            (
                "http://h/p?client_secret=1&access_token=2&api%5Fkey=3&key=4&monkey=5",
                "http://h/p?client_secret=***&access_token=***&api%5Fkey=***&key=***&monkey=***",
            ),
            ("http://h@x/?a=@b", "http://***@x/?a=@b"),
            ("http://h/p?a@b=1", "http://h/p?a@b=1"),
        ] {
            assert_eq!(mask_url(raw), masked, "{raw}");
        }
    }

    #[test]
    fn urls_inside_text_are_masked() {
        assert_eq!(mask_text("HTTP 400"), "HTTP 400");
        assert_eq!(
            mask_text("error for url (http://a:b@h/?token=x) and \"https://h/?key=y\" end"),
            "error for url (http://***@h/?token=***) and \"https://h/?key=***\" end"
        );
        assert_eq!(mask_text("://"), "://");
    }

    #[test]
    fn the_endpoint_checks_its_parameters() {
        let log = DeliveryLog::new(["owneriq", "seg"], 10);
        log.for_sender("seg")
            .record(input("m-1", Outcome::DeadLetter));
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let page = log
            .answer(&q(&[
                ("destination", "seg"),
                ("failed", "true"),
                ("limit", "5"),
            ]))
            .unwrap();
        assert_eq!(ids(&page), ["m-1"]);
        let code = |pairs: &[(&str, &str)]| log.answer(&q(pairs)).unwrap_err().0;
        assert_eq!(code(&[("destination", "nope")]), 404);
        assert_eq!(code(&[]), 400);
        assert_eq!(code(&[("destination", "seg"), ("limit", "0")]), 400);
        assert_eq!(code(&[("destination", "seg"), ("failed", "maybe")]), 400);
        assert_eq!(code(&[("destination", "seg"), ("destinaton", "x")]), 400);
        let (_, msg) = log.answer(&q(&[("destination", "nope")])).unwrap_err();
        assert!(msg.contains("owneriq, seg"), "{msg}");
    }

    /// The hot-path cost of `record`: `cargo test --release --lib -- --ignored record_cost
    /// --nocapture` (one thread, then 4 threads on one ring).
    #[test]
    #[ignore]
    fn record_cost() {
        let url = "https://tracker.segapp.com/v1/abc8fb18-7559-4324-9921-a4b5015b4a1c/events";
        let log = Arc::new(DestinationLog::new("seg", DEFAULT_KEPT));
        let one = |log: &DestinationLog, n: usize| {
            for i in 0..n {
                log.record(AttemptInput {
                    message_id: "0b1a2c3d-4e5f-6789-abcd-ef0123456789",
                    // Masked per record, as for a destination whose URL changes every time.
                    url: mask_url(url).into(),
                    attempt: i as u32,
                    error: None,
                    ..input("", Outcome::Success)
                });
            }
        };
        let n = 1_000_000;
        let t = std::time::Instant::now();
        one(&log, n);
        eprintln!(
            "1 thread: {:.0} ns/record",
            t.elapsed().as_nanos() as f64 / n as f64
        );
        let t = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| one(&log, n / 4));
            }
        });
        eprintln!(
            "4 threads: {:.0} ns/record",
            t.elapsed().as_nanos() as f64 / n as f64
        );
        assert_eq!(log.len(), DEFAULT_KEPT);
    }

    #[test]
    fn answer_snippets_are_short_and_one_line() {
        assert_eq!(answer_snippet(b""), None);
        assert_eq!(
            answer_snippet(b"{\"error\":\n  \"bad\"}").as_deref(),
            Some("{\"error\": \"bad\"}")
        );
        let long = vec![b'x'; 1000];
        assert_eq!(
            answer_snippet(&long).unwrap().chars().count(),
            ANSWER_SNIPPET + 1
        );
    }
}
