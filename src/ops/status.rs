//! `eventrelay status`: one screen for an operator, like `kafka-consumer-groups --describe`
//! with the destinations beside it. During an incident the questions are always the same (is a
//! group behind, is a circuit open, is anything being delivered, what is piling up in the
//! dead-letter topics and why), and the answers live in two places: the brokers (offsets,
//! dead letters) and the metrics endpoints of the running processes (circuit state, delivery
//! counters). This reads both and prints one report; either side may be unreachable, and the
//! report says so and still shows the other.

use crate::config::Config;
use crate::kafka::headers::{self, ERROR_REASON};
use crate::ops::lag::LagReader;
use crate::ops::redrive::Progress;
use anyhow::{anyhow, Context, Result};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long to wait for one broker answer (metadata, offsets, watermarks, group list).
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for one metrics endpoint.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// A dead-letter scan stops when nothing arrived for this long (some brokers' watermarks run
/// ahead of what is readable: tansu, or an open transaction under `read_committed`).
const SCAN_QUIET: Duration = Duration::from_secs(2);
/// A dead-letter scan never takes longer than this, whatever the topic holds.
const SCAN_MAX: Duration = Duration::from_secs(20);

/// Defaults for the command line, so the CLI and the tests agree.
pub const DEFAULT_WINDOW_SECS: f64 = 5.0;
/// Newest dead letters read per partition to count reasons: bounded so `status` stays a
/// glance on a DLQ with millions of records.
pub const DEFAULT_SCAN_PER_PARTITION: usize = 1000;

/// What `status` was asked to do.
#[derive(Debug, Clone)]
pub struct StatusArgs {
    /// Metrics endpoints (`host:port`, `http://host:port` or a full `/metrics` URL). Empty:
    /// the config's `metrics.listen`. Map and send often run as separate processes, so several
    /// can be given; their counters are added and their circuit states combined.
    pub metrics: Vec<String>,
    /// Time between the two reads of the delivery counters: the window "recent" deliveries
    /// are measured over. Zero: one read, totals since each process started only.
    pub window: Duration,
    /// Newest dead letters read per partition to count reasons.
    pub scan_per_partition: usize,
}

impl Default for StatusArgs {
    fn default() -> Self {
        StatusArgs {
            metrics: Vec::new(),
            window: Duration::from_secs_f64(DEFAULT_WINDOW_SECS),
            scan_per_partition: DEFAULT_SCAN_PER_PARTITION,
        }
    }
}

/// The whole report: printed as text or as one JSON document (`--output json`).
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// When the report was made (RFC 3339, UTC).
    pub at: String,
    /// `bootstrap.servers` read (`null` with the embedded cluster, which lives only inside a
    /// running process).
    pub brokers: Option<String>,
    /// Why the broker part is missing or partial (unreachable, embedded), if it is.
    pub brokers_error: Option<String>,
    /// Why group states and member counts are missing (some brokers, like librdkafka's mock
    /// cluster, cannot describe groups), if they are.
    pub group_states_error: Option<String>,
    /// Seconds between the two metrics reads, as measured; `null` when only one was made.
    pub window_secs: Option<f64>,
    /// Newest dead letters read per partition (the reason counts' bound).
    pub scan_per_partition: usize,
    /// Each metrics endpoint and whether it answered.
    pub endpoints: Vec<EndpointStatus>,
    /// Per enabled destination: circuit, recent deliveries, lag, dead letters.
    pub destinations: Vec<DestinationStatus>,
    /// Per consumer group eventrelay uses and its topic: offsets and lag per partition.
    pub groups: Vec<GroupStatus>,
    /// Per dead-letter topic: depth and reasons.
    pub dead_letters: Vec<DeadLetterStatus>,
}

/// One metrics endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    /// The `/metrics` URL read.
    pub url: String,
    /// Whether `/metrics` answered (on every read).
    pub up: bool,
    /// Whether `/readyz` said ready (`null` when it did not answer).
    pub ready: Option<bool>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// A destination's circuit breaker state, from `eventrelay_circuit_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    /// Sending normally.
    Closed,
    /// Probing the destination.
    HalfOpen,
    /// Not sending; consumers paused.
    Open,
}

impl Circuit {
    /// From the gauge value (0 closed, 1 half-open, 2 open).
    pub fn from_gauge(v: f64) -> Option<Circuit> {
        match v.round() as i64 {
            0 => Some(Circuit::Closed),
            1 => Some(Circuit::HalfOpen),
            2 => Some(Circuit::Open),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::HalfOpen => "half-open",
            Circuit::Open => "open",
        }
    }
}

/// Finished deliveries by outcome (`eventrelay_deliveries_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Deliveries {
    /// Delivered.
    pub success: u64,
    /// Handed to the retry topic.
    pub retry: u64,
    /// Dead-lettered.
    pub dead_letter: u64,
}

/// One destination at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationStatus {
    /// Destination name.
    pub destination: String,
    /// Circuit state; with several processes the worst one (open over half-open over closed),
    /// as the `EventrelayCircuitOpen` alert's `max` does. `null`: no endpoint read reports
    /// it (none reachable, or none runs this destination's send stage).
    pub circuit: Option<Circuit>,
    /// Deliveries during the window (`null` when not measured).
    pub window: Option<Deliveries>,
    /// Failed HTTP attempts during the window, by status (`503`, `timeout`, …).
    pub failed_attempts: BTreeMap<String, u64>,
    /// Deliveries since the scraped processes started (`null` when no endpoint reports any).
    pub totals: Option<Deliveries>,
    /// Last successful delivery (RFC 3339), from `eventrelay_last_success_timestamp_seconds`;
    /// `null` when none since the scraped processes started.
    pub last_success: Option<String>,
    /// Seconds since [`Self::last_success`].
    pub last_success_age_secs: Option<f64>,
    /// Lag of the send group on `dest.<d>` (records waiting).
    pub lag: Option<i64>,
    /// Lag of the retry group on `dest.<d>.retry` (records waiting for their due time, normal).
    pub retry_lag: Option<i64>,
    /// Records in `dest.<d>.dlq` not yet redriven.
    pub dead_letters: Option<i64>,
}

/// One consumer group on one topic.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    /// Consumer group.
    pub group: String,
    /// Topic it reads.
    pub topic: String,
    /// Which stage runs it: `map`, `send` or `retry`.
    pub stage: String,
    /// Destination, for send and retry groups.
    pub destination: Option<String>,
    /// Group state from the broker (`Stable`, `Empty`, …), when it can describe groups.
    pub state: Option<String>,
    /// Live members, when the broker can describe groups.
    pub members: Option<usize>,
    /// Per partition.
    pub partitions: Vec<PartitionLag>,
    /// Sum of the partitions' lag.
    pub lag: i64,
    /// Why this group could not be read, if so.
    pub error: Option<String>,
}

pub use crate::ops::lag::{lag, PartitionLag};

/// One dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterStatus {
    /// Topic.
    pub topic: String,
    /// Destination for `dest.<d>.dlq`; `null` for the input DLQ.
    pub destination: Option<String>,
    /// Records in the topic (log end − log start, over its partitions).
    pub records: i64,
    /// Of those, copied back by `eventrelay redrive` (its progress group).
    pub redriven: i64,
    /// Dead letters read to count reasons (the newest of each partition).
    pub scanned: u64,
    /// Reasons of the dead letters read (`eventrelay.error.reason`; `(none)` without one).
    pub by_reason: BTreeMap<String, u64>,
    /// True when not every record was read: the reason counts cover the newest
    /// `scan_per_partition` of each partition only.
    pub truncated: bool,
    /// Time stamp of the newest dead letter read (RFC 3339).
    pub newest: Option<String>,
    /// Why this topic could not be read, if so.
    pub error: Option<String>,
}

/// `eventrelay status`: read the metrics endpoints twice, `window` apart, and the brokers in
/// between; combine them into one report.
pub async fn run(cfg: &Config, a: &StatusArgs) -> Result<StatusReport> {
    let urls = endpoint_urls(cfg, &a.metrics)?;
    let client = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .context("creating the HTTP client")?;
    let first = scrape_all(&client, &urls).await;
    let first_at = Instant::now();
    let ready = futures_ready(&client, &urls).await;
    // The brokers are read while the window runs, so the command takes max(window, brokers).
    let brokers = {
        let cfg = cfg.clone();
        let scan = a.scan_per_partition;
        tokio::task::spawn_blocking(move || read_brokers(&cfg, scan))
    };
    let second = if a.window.is_zero() {
        None
    } else {
        tokio::time::sleep_until((first_at + a.window).into()).await;
        Some((scrape_all(&client, &urls).await, first_at.elapsed()))
    };
    let brokers = brokers
        .await
        .map_err(|e| anyhow!("reading the brokers panicked: {e}"))?;
    Ok(assemble(cfg, a, &urls, first, ready, second, brokers))
}

/// The `/metrics` URLs to read: `--metrics` when given, else `metrics.listen` (an unspecified
/// address such as `0.0.0.0` is read on loopback).
pub fn endpoint_urls(cfg: &Config, given: &[String]) -> Result<Vec<String>> {
    if !given.is_empty() {
        return Ok(given.iter().map(|s| metrics_url(s)).collect());
    }
    let addr: SocketAddr = cfg
        .metrics
        .listen
        .parse()
        .with_context(|| format!("metrics.listen {:?}", cfg.metrics.listen))?;
    if addr.port() == 0 {
        // A random port: nothing to guess; the broker part is still useful.
        return Ok(Vec::new());
    }
    let host = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => "127.0.0.1".to_string(),
            SocketAddr::V6(_) => "[::1]".to_string(),
        }
    } else {
        match addr {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        }
    };
    Ok(vec![format!("http://{host}:{}/metrics", addr.port())])
}

/// `host:port`, `http://host:port` or a full URL → the `/metrics` URL.
pub fn metrics_url(s: &str) -> String {
    let s = s.trim();
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let after_scheme = with_scheme.split_once("://").map_or("", |(_, r)| r);
    if after_scheme.contains('/') && !after_scheme.ends_with('/') {
        with_scheme
    } else {
        format!("{}/metrics", with_scheme.trim_end_matches('/'))
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels, in the order written.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse the Prometheus text exposition format (what `/metrics` serves). Comments, and lines
/// that do not parse, are skipped: a status screen should show what it can.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels_from(body)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Labels from `a="x",b="y"}` on: the pairs and what follows the closing brace.
fn parse_labels_from(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        while i < b.len() && matches!(b[i], b',' | b' ') {
            i += 1;
        }
        if i >= b.len() {
            return None;
        }
        if b[i] == b'}' {
            return Some((labels, &s[i + 1..]));
        }
        let eq = s[i..].find('=')? + i;
        let key = s[i..eq].trim().to_string();
        if b.get(eq + 1) != Some(&b'"') {
            return None;
        }
        let mut value = String::new();
        let mut escaped = false;
        let mut j = eq + 2;
        let mut closed = false;
        for c in s[eq + 2..].chars() {
            j += c.len_utf8();
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false
                }
                (true, c) => {
                    value.push(c);
                    escaped = false
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    closed = true;
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        if !closed {
            return None;
        }
        labels.push((key, value));
        i = j;
    }
}

/// One read of every endpoint: the samples, or why not.
type Scrapes = Vec<std::result::Result<Vec<Sample>, String>>;

async fn scrape_all(client: &reqwest::Client, urls: &[String]) -> Scrapes {
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        out.push(scrape(client, url).await);
    }
    out
}

async fn scrape(client: &reqwest::Client, url: &str) -> std::result::Result<Vec<Sample>, String> {
    let resp = client.get(url).send().await.map_err(|e| chain(&e))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let text = resp.text().await.map_err(|e| e.to_string())?;
    Ok(parse_metrics(&text))
}

/// An error with its causes: reqwest's own message hides "connection refused" in its source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// `/readyz` of each endpoint (same host and port as its `/metrics`).
async fn futures_ready(client: &reqwest::Client, urls: &[String]) -> Vec<Option<bool>> {
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        let readyz = match url.strip_suffix("/metrics") {
            Some(base) => format!("{base}/readyz"),
            None => {
                out.push(None);
                continue;
            }
        };
        out.push(
            client
                .get(readyz)
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success()),
        );
    }
    out
}

/// What the brokers said.
struct BrokerPart {
    error: Option<String>,
    group_states_error: Option<String>,
    groups: Vec<GroupStatus>,
    dead_letters: Vec<DeadLetterStatus>,
}

/// One consumer group eventrelay uses, and what it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    /// Consumer group.
    pub group: String,
    /// Topic it reads.
    pub topic: String,
    /// `map`, `send` or `retry`.
    pub stage: &'static str,
    /// Destination, for send and retry groups.
    pub destination: Option<String>,
}

/// The consumer groups eventrelay uses: the map group on the input topic, and per destination
/// `<group_id>.send.<d>` on `dest.<d>` and, per delay tier, `<group_id>.send.<d>.retry.<tier>`
/// on `dest.<d>.retry.<tier>` (the names `sender` joins with).
pub fn groups_of(cfg: &Config) -> Result<Vec<GroupRef>> {
    let k = &cfg.kafka;
    let mut out = vec![GroupRef {
        group: k.group_id.clone(),
        topic: k.input_topic.clone(),
        stage: "map",
        destination: None,
    }];
    for d in cfg.destinations()? {
        let n = d.dest.name();
        let send = format!("{}.send.{n}", k.group_id);
        out.push(GroupRef {
            group: send.clone(),
            topic: k.destination_topic(n),
            stage: "send",
            destination: Some(n.to_string()),
        });
        for tier in &d.delivery.retry_tiers {
            out.push(GroupRef {
                group: format!("{send}.retry.{}", crate::config::tier_label(*tier)),
                topic: k.retry_topic(n, *tier),
                stage: "retry",
                destination: Some(n.to_string()),
            });
        }
    }
    Ok(out)
}

fn read_brokers(cfg: &Config, scan: usize) -> BrokerPart {
    let mut part = BrokerPart {
        error: None,
        group_states_error: None,
        groups: Vec::new(),
        dead_letters: Vec::new(),
    };
    let Some(bootstrap) = cfg.kafka.bootstrap_servers.as_deref() else {
        part.error = Some(
            "no kafka.bootstrap_servers: the embedded cluster lives only inside a running process (its log says its address; set it to read offsets)".into(),
        );
        return part;
    };
    let groups = match groups_of(cfg) {
        Ok(g) => g,
        Err(e) => {
            part.error = Some(format!("{e:#}"));
            return part;
        }
    };
    let mut lags = match LagReader::new(&cfg.kafka, bootstrap, BROKER_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            part.error = Some(format!("{e:#}"));
            return part;
        }
    };
    let reader = lags.reader();
    if let Err(e) = reader.fetch_metadata(None, BROKER_TIMEOUT) {
        part.error = Some(format!("cannot reach the brokers at {bootstrap}: {e}"));
        return part;
    }
    let described = match reader.fetch_group_list(None, BROKER_TIMEOUT) {
        Ok(list) => Some(
            list.groups()
                .iter()
                .map(|g| {
                    (
                        g.name().to_string(),
                        (g.state().to_string(), g.members().len()),
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        ),
        Err(e) => {
            part.group_states_error = Some(format!("the broker cannot describe groups: {e}"));
            None
        }
    };
    for GroupRef {
        group,
        topic,
        stage,
        destination,
    } in groups
    {
        let mut g = GroupStatus {
            group: group.clone(),
            topic: topic.clone(),
            stage: stage.to_string(),
            destination,
            state: None,
            members: None,
            partitions: Vec::new(),
            lag: 0,
            error: None,
        };
        if let Some(d) = &described {
            // A group the broker does not list has never been used, or is empty and expired.
            let (state, members) = d.get(&group).cloned().unwrap_or(("Dead".into(), 0));
            g.state = Some(state);
            g.members = Some(members);
        }
        match lags.group_partitions(&group, &topic) {
            Ok(rows) => {
                g.lag = rows.iter().map(|r| r.lag).sum();
                g.partitions = rows;
            }
            Err(e) => g.error = Some(format!("{e:#}")),
        }
        part.groups.push(g);
    }
    let k = &cfg.kafka;
    let mut dlqs = vec![(k.input_dlq_topic.clone(), None)];
    if let Ok(ds) = cfg.destinations() {
        for d in ds {
            dlqs.push((k.dlq_topic(d.dest.name()), Some(d.dest.name().to_string())));
        }
    }
    for (topic, destination) in dlqs {
        let mut s = DeadLetterStatus {
            topic: topic.clone(),
            destination,
            records: 0,
            redriven: 0,
            scanned: 0,
            by_reason: BTreeMap::new(),
            truncated: false,
            newest: None,
            error: None,
        };
        if let Err(e) = scan_dead_letters(cfg, bootstrap, &mut lags, scan, &mut s) {
            s.error = Some(format!("{e:#}"));
        }
        part.dead_letters.push(s);
    }
    part
}

/// Depth, redrive progress and the reasons of the newest `scan` dead letters per partition.
fn scan_dead_letters(
    cfg: &Config,
    bootstrap: &str,
    lags: &mut LagReader,
    scan: usize,
    s: &mut DeadLetterStatus,
) -> Result<()> {
    let topic = s.topic.clone();
    let ids = lags.partitions(&topic)?;
    let redrive_group = format!("{}.redrive.{topic}", cfg.kafka.group_id);
    let progress = lags.committed(&redrive_group, &topic, &ids)?;
    let reader = lags.reader();
    let mut assign = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in &ids {
        let (low, high) = reader
            .fetch_watermarks(&topic, *p, BROKER_TIMEOUT)
            .with_context(|| format!("reading the watermarks of {topic} [{p}]"))?;
        s.records += (high - low).max(0);
        if let Some(mut prog) = progress
            .find_partition(&topic, *p)
            .and_then(|e| Some(Progress::decode(e.offset().to_raw()?, e.metadata())))
            .filter(|pr| pr.next() >= 0)
        {
            prog.clamp_to(low);
            s.redriven += prog.copied_in(low, high);
        }
        if high <= low || scan == 0 {
            s.truncated |= high > low;
            continue;
        }
        let from = (high - scan as i64).max(low);
        s.truncated |= from > low;
        assign.add_partition_offset(&topic, *p, Offset::Offset(from))?;
        ends.insert(*p, high);
    }
    if ends.is_empty() {
        return Ok(());
    }
    let c = crate::ops::lag::client(
        &cfg.kafka,
        bootstrap,
        &format!("{}.status", cfg.kafka.group_id),
    )?;
    c.assign(&assign)
        .context("assigning the dead-letter topic")?;
    let started = Instant::now();
    let mut last = Instant::now();
    let mut newest_ms: Option<i64> = None;
    while !ends.is_empty() && last.elapsed() < SCAN_QUIET && started.elapsed() < SCAN_MAX {
        let Some(msg) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.with_context(|| format!("reading {topic}"))?;
        last = Instant::now();
        let Some(end) = ends.get(&msg.partition()).copied() else {
            continue;
        };
        if msg.offset() >= end {
            continue;
        }
        if msg.offset() + 1 >= end {
            ends.remove(&msg.partition());
        }
        s.scanned += 1;
        let reason = headers::text(msg.headers(), ERROR_REASON).unwrap_or("(none)");
        *s.by_reason.entry(reason.to_string()).or_default() += 1;
        if let Some(ts) = msg.timestamp().to_millis() {
            newest_ms = Some(newest_ms.map_or(ts, |n| n.max(ts)));
        }
    }
    // A partition not read to its end (watermark ahead of what is readable, or the time bound)
    // leaves the counts partial too.
    s.truncated |= !ends.is_empty();
    s.newest = newest_ms.and_then(rfc3339_ms);
    Ok(())
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Sum of the samples named `name` whose labels include every pair of `with`, over the
/// endpoints that answered.
fn total(scrapes: &[&Vec<Sample>], name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for s in scrapes {
        for x in s.iter().filter(|x| x.name == name) {
            if with.iter().all(|(k, v)| x.label(k) == Some(v)) {
                found = true;
                sum += x.value;
            }
        }
    }
    found.then_some(sum)
}

/// Counter increase between two reads of one endpoint; a counter that went down means the
/// process restarted, and then everything it counted since is the increase (as `rate()` does).
pub fn increase(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// Increase of every matching series over the window, summed over endpoints that answered
/// both reads.
fn window_increase(
    pairs: &[(&Vec<Sample>, &Vec<Sample>)],
    name: &str,
    with: &[(&str, &str)],
) -> BTreeMap<Vec<(String, String)>, f64> {
    let mut out: BTreeMap<Vec<(String, String)>, f64> = BTreeMap::new();
    for (before, after) in pairs {
        for x in after.iter().filter(|x| x.name == name) {
            if !with.iter().all(|(k, v)| x.label(k) == Some(v)) {
                continue;
            }
            let b = before
                .iter()
                .find(|y| y.name == name && y.labels == x.labels)
                .map_or(0.0, |y| y.value);
            *out.entry(x.labels.clone()).or_default() += increase(b, x.value);
        }
    }
    out
}

fn assemble(
    cfg: &Config,
    a: &StatusArgs,
    urls: &[String],
    first: Scrapes,
    ready: Vec<Option<bool>>,
    second: Option<(Scrapes, Duration)>,
    brokers: BrokerPart,
) -> StatusReport {
    let endpoints: Vec<EndpointStatus> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let err = first[i].as_ref().err().cloned().or_else(|| {
                second
                    .as_ref()
                    .and_then(|(s, _)| s[i].as_ref().err().cloned())
            });
            EndpointStatus {
                url: url.clone(),
                up: err.is_none(),
                ready: ready.get(i).copied().flatten(),
                error: err,
            }
        })
        .collect();
    // The latest read of each endpoint, and the (before, after) pairs that answered twice.
    let latest: Vec<&Vec<Sample>> = (0..urls.len())
        .filter_map(|i| {
            second
                .as_ref()
                .and_then(|(s, _)| s[i].as_ref().ok())
                .or(first[i].as_ref().ok())
        })
        .collect();
    let pairs: Vec<(&Vec<Sample>, &Vec<Sample>)> = match &second {
        Some((s, _)) => (0..urls.len())
            .filter_map(|i| Some((first[i].as_ref().ok()?, s[i].as_ref().ok()?)))
            .collect(),
        None => Vec::new(),
    };
    let now_ms = crate::event::now_millis();
    let names: Vec<String> = cfg
        .destinations()
        .map(|ds| ds.iter().map(|d| d.dest.name().to_string()).collect())
        .unwrap_or_default();
    let group_lag = |stage: &str, d: &str| {
        brokers
            .groups
            .iter()
            .find(|g| g.stage == stage && g.destination.as_deref() == Some(d) && g.error.is_none())
            .map(|g| g.lag)
    };
    let destinations = names
        .iter()
        .map(|d| {
            let circuit = latest
                .iter()
                .flat_map(|s| s.iter())
                .filter(|x| {
                    x.name == "eventrelay_circuit_state" && x.label("destination") == Some(d)
                })
                .filter_map(|x| Circuit::from_gauge(x.value))
                .max_by_key(|c| *c as u8);
            let outcome = |o: &str| {
                total(
                    &latest,
                    "eventrelay_deliveries_total",
                    &[("destination", d), ("outcome", o)],
                )
            };
            let totals = match (outcome("success"), outcome("retry"), outcome("dead_letter")) {
                (None, None, None) => None,
                (s, r, dl) => Some(Deliveries {
                    success: s.unwrap_or(0.0) as u64,
                    retry: r.unwrap_or(0.0) as u64,
                    dead_letter: dl.unwrap_or(0.0) as u64,
                }),
            };
            let window = (!pairs.is_empty()).then(|| {
                let inc = |o: &str| {
                    window_increase(
                        &pairs,
                        "eventrelay_deliveries_total",
                        &[("destination", d), ("outcome", o)],
                    )
                    .values()
                    .sum::<f64>() as u64
                };
                Deliveries {
                    success: inc("success"),
                    retry: inc("retry"),
                    dead_letter: inc("dead_letter"),
                }
            });
            let mut failed_attempts = BTreeMap::new();
            for (labels, n) in window_increase(
                &pairs,
                "eventrelay_delivery_attempts_total",
                &[("destination", d)],
            ) {
                let status = labels
                    .iter()
                    .find(|(k, _)| k == "status")
                    .map_or("", |(_, v)| v.as_str());
                if n > 0.0 && !status.starts_with('2') {
                    *failed_attempts.entry(status.to_string()).or_default() += n as u64;
                }
            }
            let last_ms = latest
                .iter()
                .flat_map(|s| s.iter())
                .filter(|x| {
                    x.name == "eventrelay_last_success_timestamp_seconds"
                        && x.label("destination") == Some(d)
                        && x.value > 0.0
                })
                .map(|x| (x.value * 1000.0) as i64)
                .max();
            DestinationStatus {
                destination: d.clone(),
                circuit,
                window,
                failed_attempts,
                totals,
                last_success: last_ms.and_then(rfc3339_ms),
                last_success_age_secs: last_ms.map(|t| ((now_ms - t).max(0)) as f64 / 1000.0),
                lag: group_lag("send", d),
                retry_lag: group_lag("retry", d),
                dead_letters: brokers
                    .dead_letters
                    .iter()
                    .find(|x| x.destination.as_deref() == Some(d) && x.error.is_none())
                    .map(|x| x.records - x.redriven),
            }
        })
        .collect();
    StatusReport {
        at: rfc3339_ms(now_ms).unwrap_or_default(),
        brokers: cfg.kafka.bootstrap_servers.clone(),
        brokers_error: brokers.error,
        group_states_error: brokers.group_states_error,
        window_secs: second
            .as_ref()
            .filter(|_| !pairs.is_empty())
            .map(|(_, d)| (d.as_secs_f64() * 10.0).round() / 10.0),
        scan_per_partition: a.scan_per_partition,
        endpoints,
        destinations,
        groups: brokers.groups,
        dead_letters: brokers.dead_letters,
    }
}

impl StatusReport {
    /// The operator's screen: endpoints, destinations, consumer groups (per partition, like
    /// `kafka-consumer-groups --describe`), dead letters.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let dash = |o: Option<i64>| o.map_or("-".to_string(), |v| v.to_string());
        out.push_str(&format!(
            "eventrelay status at {}, brokers {}\n",
            self.at,
            self.brokers.as_deref().unwrap_or("(embedded)")
        ));
        if self.endpoints.is_empty() {
            out.push_str("metrics: no endpoint (metrics.listen has port 0): pass --metrics HOST:PORT for circuit states and deliveries\n");
        }
        for e in &self.endpoints {
            match &e.error {
                None => out.push_str(&format!(
                    "metrics {}: up, {}\n",
                    e.url,
                    match e.ready {
                        Some(true) => "ready",
                        Some(false) => "NOT ready (/readyz)",
                        None => "readiness unknown",
                    }
                )),
                Some(err) => out.push_str(&format!(
                    "metrics {}: UNREACHABLE ({err}); circuit states and deliveries from it are missing\n",
                    e.url
                )),
            }
        }
        let window = match self.window_secs {
            Some(w) => format!("in the last {w:.1} s"),
            None => "(window not measured)".to_string(),
        };
        out.push_str(&format!(
            "\nDESTINATIONS: deliveries {window}; lag in records\n{:<12} {:<10} {:>8} {:>6} {:>11} {:<24} {:>8} {:>9} {:>8}  {}\n",
            "DESTINATION", "CIRCUIT", "SUCCESS", "RETRY", "DEAD-LETTER", "FAILED-ATTEMPTS", "LAG", "RETRY-LAG", "DLQ", "LAST-SUCCESS"
        ));
        for d in &self.destinations {
            let w = |f: fn(&Deliveries) -> u64| {
                d.window
                    .as_ref()
                    .map_or("-".to_string(), |x| f(x).to_string())
            };
            let failed = if d.failed_attempts.is_empty() {
                if d.window.is_some() {
                    "0".to_string()
                } else {
                    "-".to_string()
                }
            } else {
                d.failed_attempts
                    .iter()
                    .map(|(s, n)| format!("{s}:{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let last = match (&d.last_success, d.last_success_age_secs) {
                (Some(t), Some(age)) => format!("{t} ({age:.0} s ago)"),
                _ if d.totals.is_some() => "none since start".to_string(),
                _ => "unknown".to_string(),
            };
            out.push_str(&format!(
                "{:<12} {:<10} {:>8} {:>6} {:>11} {:<24} {:>8} {:>9} {:>8}  {}\n",
                d.destination,
                d.circuit.map_or("unknown", Circuit::as_str),
                w(|x| x.success),
                w(|x| x.retry),
                w(|x| x.dead_letter),
                failed,
                dash(d.lag),
                dash(d.retry_lag),
                dash(d.dead_letters),
                last
            ));
        }
        out.push_str("\nCONSUMER GROUPS\n");
        if let Some(e) = &self.brokers_error {
            out.push_str(&format!("brokers: {e}\n"));
        }
        if let Some(e) = &self.group_states_error {
            out.push_str(&format!("(group states unknown: {e})\n"));
        }
        if !self.groups.is_empty() {
            out.push_str(&format!(
                "{:<32} {:<20} {:<12} {:>7} {:>9} {:>10} {:>10} {:>10}\n",
                "GROUP", "TOPIC", "STATE", "MEMBERS", "PARTITION", "COMMITTED", "LOG-END", "LAG",
            ));
        }
        for g in &self.groups {
            let state = g.state.as_deref().unwrap_or("-");
            let members = g.members.map_or("-".to_string(), |m| m.to_string());
            if let Some(e) = &g.error {
                out.push_str(&format!("{:<32} {:<20} {e}\n", g.group, g.topic));
                continue;
            }
            for p in &g.partitions {
                out.push_str(&format!(
                    "{:<32} {:<20} {:<12} {:>7} {:>9} {:>10} {:>10} {:>10}\n",
                    g.group,
                    g.topic,
                    state,
                    members,
                    p.partition,
                    dash(p.committed),
                    p.log_end,
                    p.lag
                ));
            }
            out.push_str(&format!(
                "{:<32} {:<20} {:<12} {:>7} {:>9} {:>10} {:>10} {:>10} {}\n",
                g.group,
                g.topic,
                state,
                members,
                "TOTAL",
                "",
                "",
                g.lag,
                if g.lag > 0 && g.stage != "retry" {
                    "<- behind"
                } else {
                    ""
                }
            ));
        }
        if self.dead_letters.is_empty() {
            return out;
        }
        out.push_str(&format!(
            "\nDEAD LETTERS: reasons of the newest {} per partition\n{:<22} {:>9} {:>9}  {}\n",
            self.scan_per_partition, "TOPIC", "RECORDS", "REDRIVEN", "REASONS"
        ));
        for d in &self.dead_letters {
            if let Some(e) = &d.error {
                out.push_str(&format!("{:<22} {e}\n", d.topic));
                continue;
            }
            let mut reasons = d
                .by_reason
                .iter()
                .map(|(r, n)| format!("{r}:{n}"))
                .collect::<Vec<_>>()
                .join(" ");
            if reasons.is_empty() {
                reasons.push('-');
            }
            if d.truncated {
                reasons.push_str(&format!(
                    " (read {} of {}: truncated)",
                    d.scanned, d.records
                ));
            }
            if let Some(t) = &d.newest {
                reasons.push_str(&format!(", newest {t}"));
            }
            out.push_str(&format!(
                "{:<22} {:>9} {:>9}  {}\n",
                d.topic, d.records, d.redriven, reasons
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exporters_text() {
        let text = "# HELP eventrelay_deliveries_total Finished deliveries\n\
            # TYPE eventrelay_deliveries_total counter\n\
            eventrelay_deliveries_total{destination=\"seg\",outcome=\"success\"} 42\n\
            eventrelay_circuit_state{destination=\"seg\"} 2\n\
            eventrelay_events_invalid_total{reason=\"a \\\"q\\\", b\"} 3 1700000000000\n\
            up 1\n\
            garbage{\n";
        let s = parse_metrics(text);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "eventrelay_deliveries_total");
        assert_eq!(s[0].label("destination"), Some("seg"));
        assert_eq!(s[0].label("outcome"), Some("success"));
        assert_eq!(s[0].value, 42.0);
        assert_eq!(s[1].value, 2.0);
        assert_eq!(s[2].label("reason"), Some("a \"q\", b"));
        assert_eq!(s[2].value, 3.0);
        assert_eq!(s[3].name, "up");
        assert!(s[3].labels.is_empty());
    }

    #[test]
    fn endpoint_forms_become_metrics_urls() {
        assert_eq!(
            metrics_url("127.0.0.1:9464"),
            "http://127.0.0.1:9464/metrics"
        );
        assert_eq!(metrics_url("http://h:1"), "http://h:1/metrics");
        assert_eq!(metrics_url("http://h:1/"), "http://h:1/metrics");
        assert_eq!(metrics_url("http://h:1/metrics"), "http://h:1/metrics");
        let cfg = Config::from_toml("[metrics]\nlisten = \"0.0.0.0:9464\"\n").unwrap();
        assert_eq!(
            endpoint_urls(&cfg, &[]).unwrap(),
            vec!["http://127.0.0.1:9464/metrics"]
        );
        assert_eq!(
            endpoint_urls(&cfg, &["a:1".into(), "b:2".into()]).unwrap(),
            vec!["http://a:1/metrics", "http://b:2/metrics"],
            "--metrics replaces metrics.listen"
        );
        let random = Config::from_toml("[metrics]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        assert!(endpoint_urls(&random, &[]).unwrap().is_empty());
    }

    #[test]
    fn counter_increase_survives_a_restart() {
        assert_eq!(increase(10.0, 15.0), 5.0);
        assert_eq!(increase(10.0, 3.0), 3.0);
    }

    #[test]
    fn window_sums_endpoints_and_circuit_takes_the_worst() {
        let a1 = parse_metrics(
            "eventrelay_deliveries_total{destination=\"seg\",outcome=\"success\"} 10\n",
        );
        let a2 = parse_metrics("eventrelay_deliveries_total{destination=\"seg\",outcome=\"success\"} 15\neventrelay_circuit_state{destination=\"seg\"} 0\n");
        let b1 = parse_metrics(
            "eventrelay_deliveries_total{destination=\"seg\",outcome=\"success\"} 100\n",
        );
        let b2 = parse_metrics("eventrelay_deliveries_total{destination=\"seg\",outcome=\"success\"} 107\neventrelay_circuit_state{destination=\"seg\"} 2\neventrelay_delivery_attempts_total{destination=\"seg\",status=\"503\"} 4\n");
        let cfg = Config::from_toml(
            "[destinations.seg]\nwebsite_id = \"abc8fb18-7559-4324-9921-a4b5015b4a1c\"\n",
        )
        .unwrap();
        let urls = vec![
            "http://a/metrics".to_string(),
            "http://b/metrics".to_string(),
        ];
        let r = assemble(
            &cfg,
            &StatusArgs::default(),
            &urls,
            vec![Ok(a1), Ok(b1)],
            vec![Some(true), Some(true)],
            Some((vec![Ok(a2), Ok(b2)], Duration::from_secs(5))),
            BrokerPart {
                error: Some("test".into()),
                group_states_error: None,
                groups: Vec::new(),
                dead_letters: Vec::new(),
            },
        );
        let seg = &r.destinations[0];
        assert_eq!(seg.window.unwrap().success, 12);
        assert_eq!(seg.totals.unwrap().success, 122);
        assert_eq!(seg.circuit, Some(Circuit::Open));
        assert_eq!(seg.failed_attempts.get("503"), Some(&4));
        assert_eq!(r.window_secs, Some(5.0));
        assert!(r.to_text().contains("open"));
    }
}
