//! The send stage: per destination, drain `dest.<d>` (and its retry topic) to the destination's
//! HTTP API.
//!
//! For each destination, two stage consumers (the destination topic, and its retry topic) feed
//! `concurrency` lanes. A record goes to the lane of its key's hash, so one user's records are
//! sent one after another, in order, while different users go in parallel; a full lane pauses
//! only the partitions feeding it (see [`crate::kafka::StageConsumer`]). A lane sends with a
//! few quick in-place retries (backon, jittered exponential, honouring `Retry-After`); a record
//! still failing is handed to `dest.<d>.retry` with a due time, so it never blocks its partition.
//! The retry consumer pauses a partition until its head record is due, then resumes it; it
//! never sleeps on the consumer thread. Permanent failures and records past the retry window go
//! to `dest.<d>.dlq`. Offsets are committed only up to the first record not yet finished.
//!
//! Destinations share nothing but the process: separate consumers, lanes, HTTP pools and rate
//! limits, so one that is slow or down never slows another.

use crate::config::{Config, DeliveryConfig, EnabledDestination};
use crate::destinations::{AnswerClass, Destination, HttpRequest};
use crate::event::now_millis;
use crate::kafka::headers::{self, DeadLetter, ErrorStage, Origin, RetryState};
use crate::kafka::{
    producer_config, ConsumerSpec, GroupObserver, Intake, Progress, Slot, StageConsumer,
};
use crate::ops::deliveries::{
    answer_snippet, mask_url, AttemptInput, DeliveryLog, DestinationLog, Outcome,
};
use crate::record::{Delivery, Record};
use anyhow::{anyhow, Context, Result};
use backon::{BackoffBuilder, ExponentialBuilder};
use breaker::{Admit, Breaker, BreakerConfig, Verdict};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prost::Message as _;
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub mod breaker;

/// Attempts a retry header may claim; more is a forged or corrupt header.
const MAX_ATTEMPTS: u32 = 1_000_000;

/// What the send stage counts per destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendCount {
    /// Delivered (the destination answered success).
    Delivered,
    /// In-place retries made.
    Retried,
    /// Handed to the retry topic.
    RetryTopic,
    /// Dead-lettered.
    DeadLettered,
}

/// Per-destination delivery counts, for the demo summary and tests.
#[derive(Debug, Default)]
pub struct SendStats {
    per_dest: Mutex<BTreeMap<String, Arc<DestCounts>>>,
}

/// One destination's counts: plain atomics, so lanes never share a lock to count.
#[derive(Debug, Default)]
struct DestCounts {
    delivered: AtomicU64,
    retried: AtomicU64,
    retry_topic: AtomicU64,
    dead_lettered: AtomicU64,
}

impl SendStats {
    fn for_dest(&self, dest: &str) -> Arc<DestCounts> {
        match self.per_dest.lock() {
            Ok(mut m) => m.entry(dest.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// The count of `what` for `dest` (0 for a destination that has not started).
    pub fn get(&self, dest: &str, what: SendCount) -> u64 {
        let Some(c) = self.per_dest.lock().ok().and_then(|m| m.get(dest).cloned()) else {
            return 0;
        };
        match what {
            SendCount::Delivered => &c.delivered,
            SendCount::Retried => &c.retried,
            SendCount::RetryTopic => &c.retry_topic,
            SendCount::DeadLettered => &c.dead_lettered,
        }
        .load(Ordering::Relaxed)
    }
}

/// Metric handles a lane touches on every request, registered once per destination instead of
/// looked up by name and labels each time.
struct LaneMetrics {
    duration: metrics::Histogram,
    end_to_end: metrics::Histogram,
    success: metrics::Counter,
    /// When the last delivery succeeded (Unix seconds), so `eventrelay status` and alerts can
    /// tell "quiet" from "stuck" without a log search.
    last_success: metrics::Gauge,
    /// `eventrelay_delivery_attempts_total` by status 100..=599, registered on first use.
    by_status: Vec<std::sync::OnceLock<metrics::Counter>>,
}

impl LaneMetrics {
    fn new(name: &'static str) -> LaneMetrics {
        // Every outcome's series exists from the start at 0, so the first burst of retries or
        // dead letters is an increase `rate()` can see (a series born at its first increment
        // shows none, and alerts on it never fire).
        for outcome in ["retry", "dead_letter"] {
            metrics::counter!("eventrelay_deliveries_total", "destination" => name, "outcome" => outcome)
                .increment(0);
        }
        LaneMetrics {
            duration: metrics::histogram!("eventrelay_delivery_duration_seconds", "destination" => name),
            end_to_end: metrics::histogram!("eventrelay_end_to_end_latency_seconds", "destination" => name),
            success: metrics::counter!("eventrelay_deliveries_total", "destination" => name, "outcome" => "success"),
            last_success: metrics::gauge!("eventrelay_last_success_timestamp_seconds", "destination" => name),
            by_status: (100..600).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    fn attempt(&self, name: &'static str, status: u16) {
        match self.by_status.get(usize::from(status).wrapping_sub(100)) {
            Some(c) => c
                .get_or_init(|| {
                    metrics::counter!("eventrelay_delivery_attempts_total", "destination" => name, "status" => status.to_string())
                })
                .increment(1),
            None => metrics::counter!("eventrelay_delivery_attempts_total", "destination" => name, "status" => status.to_string())
                .increment(1),
        }
    }
}

/// One record read, on its way to a lane.
struct Item {
    slot: Slot,
    progress: Arc<Progress>,
    /// Read from the retry topic: its retry headers (attempts, first attempt) count.
    retried: bool,
    /// Key and payload share one copy of the record's bytes.
    key: Option<bytes::Bytes>,
    payload: bytes::Bytes,
    headers: Option<OwnedHeaders>,
}

/// Everything a lane needs, shared by all lanes of one destination.
struct Lane {
    dest: Arc<dyn Destination>,
    delivery: DeliveryConfig,
    client: reqwest::Client,
    limiter: Option<DefaultDirectRateLimiter>,
    producer: FutureProducer,
    /// Retry topics by delay tier, ascending.
    retry_topics: Vec<(Duration, String)>,
    dlq_topic: String,
    counts: Arc<DestCounts>,
    metrics: LaneMetrics,
    breaker: Arc<Breaker>,
    shutdown: CancellationToken,
    /// The last attempts, for `/deliveries`.
    deliveries: Arc<DestinationLog>,
}

/// Why one HTTP attempt did not succeed.
#[derive(Debug)]
struct AttemptError {
    status: Option<u16>,
    class: AnswerClass,
    retry_after: Option<Duration>,
    message: String,
    /// No answer: `timeout`, `connect_error`, `invalid_request` or `error`.
    error_class: Option<&'static str>,
    /// The start of the answer's body, for `/deliveries`.
    answer: Option<String>,
}

/// Longest `Retry-After` waited in place; longer ones go to the retry topic.
const MAX_IN_PLACE_WAIT: Duration = Duration::from_secs(5);

/// What a record's retry headers say (they count only on a retry topic: a dead letter
/// redriven to `dest.<d>` starts a fresh retry window).
struct RetryContext {
    /// Attempts made before this read.
    prior: u32,
    /// When the first attempt was made (ms since the epoch); the window counts from it.
    first_ms: i64,
    /// Not to be attempted before this (ms since the epoch): a long `Retry-After`.
    not_before: Option<i64>,
    /// The last error, carried on while hopping.
    last_error: Option<String>,
}

impl RetryContext {
    fn of(item: &Item) -> RetryContext {
        let now = now_millis();
        let h = item.headers.as_ref().filter(|_| item.retried);
        RetryContext {
            prior: headers::count(h, headers::RETRY_ATTEMPTS, MAX_ATTEMPTS).unwrap_or(0),
            // A first attempt "in the future" (a clock or a forged header) counts from now.
            first_ms: headers::time_ms(h, headers::RETRY_FIRST, now).map_or(now, |f| f.min(now)),
            not_before: headers::time_ms(h, headers::RETRY_NOT_BEFORE, now).filter(|nb| *nb > now),
            last_error: headers::text(h, headers::RETRY_LAST_ERROR).map(str::to_string),
        }
    }

    /// The wait still owed to a `Retry-After`, as the error that asked for it.
    fn waiting(&self) -> Option<AttemptError> {
        let left = self.not_before? - now_millis();
        (left > 0).then(|| AttemptError {
            status: None,
            error_class: None,
            answer: None,
            class: AnswerClass::Retryable,
            retry_after: Some(Duration::from_millis(left as u64)),
            message: self
                .last_error
                .clone()
                .unwrap_or_else(|| "waiting for Retry-After".into()),
        })
    }
}

/// How a record's attempts ended.
struct Tried {
    result: Result<u16, AttemptError>,
    attempts: u32,
    latency: Duration,
}

impl Lane {
    /// One destination's HTTP client, rate limiter, producer (retry topic, DLQ) and metrics.
    fn new(
        cfg: &Config,
        bootstrap: &str,
        d: &EnabledDestination,
        stats: &SendStats,
        shutdown: CancellationToken,
        deliveries: &DeliveryLog,
    ) -> Result<Lane> {
        let k = &cfg.kafka;
        let name = d.dest.name();
        let delivery = d.delivery.clone();
        let client = reqwest::Client::builder()
            .timeout(delivery.timeout)
            .pool_max_idle_per_host(delivery.concurrency)
            .build()
            .context("creating HTTP client")?;
        let limiter = delivery
            .rate_limit
            .and_then(NonZeroU32::new)
            .map(|r| RateLimiter::direct(Quota::per_second(r)));
        let producer: FutureProducer = producer_config(k, bootstrap)
            .create()
            .context("creating producer")?;
        let breaker = BreakerConfig {
            failures: delivery.breaker_failures,
            open_for: delivery.breaker_open,
            open_max: delivery.breaker_open_max,
            probe_interval: delivery.breaker_probe_interval,
        };
        Ok(Lane {
            dest: d.dest.clone(),
            delivery,
            client,
            limiter,
            producer,
            retry_topics: d
                .delivery
                .retry_tiers
                .iter()
                .map(|t| (*t, k.retry_topic(name, *t)))
                .collect(),
            dlq_topic: k.dlq_topic(name),
            counts: stats.for_dest(name),
            metrics: LaneMetrics::new(name),
            breaker: Arc::new(Breaker::new(name, breaker)),
            shutdown,
            deliveries: deliveries.for_sender(name),
        })
    }

    /// Keep one attempt in the live delivery view (`/deliveries`).
    #[allow(clippy::too_many_arguments)]
    fn note(
        &self,
        record: &Record,
        req: &HttpRequest,
        cache: &mut LaneCache,
        attempt: u32,
        answer: Result<u16, &AttemptError>,
        latency: Duration,
        outcome: Outcome,
    ) {
        let (status, error_class, error, body) = match answer {
            Ok(s) => (Some(s), None, None, None),
            Err(e) => (
                e.status,
                e.error_class,
                Some(e.message.as_str()),
                e.answer.as_deref(),
            ),
        };
        let joined;
        let error = match (error, body) {
            (Some(m), Some(b)) => {
                joined = format!("{m}: {b}");
                Some(joined.as_str())
            }
            (m, _) => m,
        };
        self.deliveries.record(AttemptInput {
            message_id: &record.message_id,
            method: req.method.as_str(),
            url: cache.urls.masked(&req.url),
            status,
            error_class,
            latency,
            attempt,
            outcome,
            error,
        });
    }

    /// One request; its body and headers were made once for all attempts (cloning them shares
    /// their bytes). Also returns how long the HTTP exchange took.
    async fn attempt(
        &self,
        req: &HttpRequest,
        parts: &Parts,
        cache: &mut LaneCache,
    ) -> (Result<u16, AttemptError>, Duration) {
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
        let name = self.dest.name();
        let method = match req.method {
            crate::destinations::Method::Post => reqwest::Method::POST,
            crate::destinations::Method::Get => reqwest::Method::GET,
        };
        let mut rb = match cache.urls.get(&req.url) {
            Some(url) => self.client.request(method, url),
            // Unparseable: reqwest reports it as the builder error it always was.
            None => self.client.request(method, &req.url),
        };
        for (k, v) in &parts.headers {
            rb = rb.header(k.clone(), v.clone());
        }
        if let Some(b) = &parts.body {
            rb = rb.body(b.clone());
        }
        let started = Instant::now();
        let result = rb.send().await;
        let latency = started.elapsed();
        self.metrics.duration.record(latency.as_secs_f64());
        let answer = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                self.metrics.attempt(name, status);
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                // Read the body so the connection goes back to the pool.
                let read = resp.bytes().await;
                match self.dest.classify(status) {
                    AnswerClass::Success => Ok(status),
                    class => Err(AttemptError {
                        status: Some(status),
                        class,
                        retry_after,
                        message: format!("HTTP {status}"),
                        error_class: None,
                        answer: read.ok().and_then(|b| answer_snippet(&b)),
                    }),
                }
            }
            Err(e) => {
                let label = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect_error"
                } else if e.is_builder() {
                    "invalid_request"
                } else {
                    "error"
                };
                metrics::counter!("eventrelay_delivery_attempts_total", "destination" => name, "status" => label)
                    .increment(1);
                Err(AttemptError {
                    status: None,
                    // A request that cannot even be built (e.g. a header value with control
                    // characters) will never succeed.
                    class: if e.is_builder() {
                        AnswerClass::Permanent
                    } else {
                        AnswerClass::Retryable
                    },
                    retry_after: None,
                    // Without the URL: the message goes into retry and dead-letter headers, and
                    // an endpoint may carry credentials.
                    message: format!("{label}: {}", e.without_url()),
                    error_class: Some(label),
                    answer: None,
                })
            }
        };
        (answer, latency)
    }

    /// Deliver one item: in-place retries (or waiting on the breaker), then success, retry
    /// topic or dead letter.
    async fn deliver(&self, item: Item, cache: &mut LaneCache) {
        let (record, req, parts) = match self.prepare(&item, cache) {
            Ok(ok) => ok,
            Err((reason, message)) => {
                return self.finish_dead(item, reason, &message, None, 0).await;
            }
        };
        let retry = RetryContext::of(&item);
        // A long Retry-After hops through the longest tier without an attempt until it passes.
        if let Some(wait) = retry.waiting() {
            return self
                .finish_retry(item, &wait, retry.prior, retry.first_ms)
                .await;
        }
        let Some(tried) = self.attempts(&record, &req, &parts, &retry, cache).await else {
            // Shutdown while waiting on the breaker: not finished and not started over; commits
            // stop before it, and the next owner (or this process after its restart) sends it.
            item.progress.abandon(&item.slot);
            return;
        };
        let outcome = self.outcome_of(&tried.result, retry.first_ms);
        self.note(
            &record,
            &req,
            cache,
            tried.attempts,
            tried.result.as_ref().copied(),
            tried.latency,
            outcome,
        );
        self.settle(item, &record, tried, outcome, retry.first_ms)
            .await;
    }

    /// The record decoded and its request built with the current settings, its body and
    /// headers made once for every attempt, or why it never can be.
    fn prepare(
        &self,
        item: &Item,
        cache: &mut LaneCache,
    ) -> Result<(Record, HttpRequest, Parts), (&'static str, String)> {
        // From the payload's `Bytes`, so the Seg body is a slice of it, not a copy; only what
        // a request is built from ([`Delivery`]).
        let record = Delivery::decode(item.payload.clone())
            .map(Record::from)
            .map_err(|e| {
                (
                    "undecodable_record",
                    format!("not an eventrelay record: {e}"),
                )
            })?;
        let mut req = self
            .dest
            .build_request(&record)
            .map_err(|e| (e.reason, e.message))?;
        let body = req.body.take();
        let mut headers = Vec::with_capacity(req.headers.len());
        for (k, v) in std::mem::take(&mut req.headers) {
            let invalid = || {
                (
                    "permanent_error",
                    format!("invalid_request: header {k} has characters HTTP does not allow"),
                )
            };
            let name = cache.name(k).ok_or_else(invalid)?;
            headers.push((name, header_value(v).ok_or_else(invalid)?));
        }
        Ok((record, req, Parts { body, headers }))
    }

    /// Attempt until the answer settles the record: success, a permanent failure, the end of
    /// the retry window, a long `Retry-After`, or in-place retries used up. While the
    /// destination's circuit is open, wait for it instead: the record neither burns attempts
    /// nor moves to the retry topic because the destination is down. `None` at shutdown.
    async fn attempts(
        &self,
        record: &Record,
        req: &HttpRequest,
        parts: &Parts,
        retry: &RetryContext,
        cache: &mut LaneCache,
    ) -> Option<Tried> {
        let d = &self.delivery;
        let mut in_place = ExponentialBuilder::new()
            .with_min_delay(d.backoff_min)
            .with_max_delay(d.backoff_min.saturating_mul(8).min(d.backoff_max))
            .with_max_times(d.in_place_retries)
            .with_jitter()
            .build();
        let mut attempts = retry.prior;
        loop {
            let admit = self.breaker.admit(&self.shutdown).await;
            if admit == Admit::Shutdown {
                return None;
            }
            attempts = attempts.saturating_add(1);
            let (result, latency) = self.attempt(req, parts, cache).await;
            let verdict = match &result {
                Err(e) if e.class == AnswerClass::Retryable => Verdict::Down,
                _ => Verdict::Up,
            };
            self.breaker.record(admit, verdict);
            let settled = |result| {
                Some(Tried {
                    result,
                    attempts,
                    latency,
                })
            };
            let e = match result {
                Err(e) if e.class == AnswerClass::Retryable => e,
                other => return settled(other),
            };
            let window_left = retry.first_ms + d.retry_window.as_millis() as i64 - now_millis();
            if window_left <= 0 || e.retry_after.is_some_and(|ra| ra > MAX_IN_PLACE_WAIT) {
                return settled(Err(e));
            }
            // While the destination is down (not this record), wait for the breaker instead.
            let delay = match self.breaker.is_holding() {
                true => None,
                false => match in_place.next() {
                    Some(delay) => Some(delay),
                    None => return settled(Err(e)),
                },
            };
            self.note(
                record,
                req,
                cache,
                attempts,
                Err(&e),
                latency,
                Outcome::InPlaceRetry,
            );
            if let Some(delay) = delay {
                self.counts.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(e.retry_after.map_or(delay, |ra| ra.max(delay))).await;
            }
        }
    }

    /// Where a settled record goes.
    fn outcome_of(&self, result: &Result<u16, AttemptError>, first_ms: i64) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) if e.class == AnswerClass::Permanent => Outcome::DeadLetter,
            Err(_) if now_millis() - first_ms >= self.delivery.retry_window.as_millis() as i64 => {
                Outcome::DeadLetter
            }
            Err(_) => Outcome::Retry,
        }
    }

    /// Count and finish a settled record: delivered, dead-lettered, or handed to a retry tier.
    async fn settle(
        &self,
        item: Item,
        record: &Record,
        tried: Tried,
        outcome: Outcome,
        first_ms: i64,
    ) {
        let attempts = tried.attempts;
        match tried.result {
            Ok(_) => {
                self.counts.delivered.fetch_add(1, Ordering::Relaxed);
                self.metrics.success.increment(1);
                let now = now_millis();
                self.metrics.last_success.set(now as f64 / 1000.0);
                if record.received_at_ms > 0 {
                    let latency = (now - record.received_at_ms).max(0) as f64 / 1000.0;
                    self.metrics.end_to_end.record(latency);
                }
                item.progress.adjust(&item.slot, -1);
            }
            Err(e) if e.class == AnswerClass::Permanent => {
                let reason = match e.status {
                    Some(s) => format!("http_{s}"),
                    None => "permanent_error".into(),
                };
                self.finish_dead(item, &reason, &e.message, e.status, attempts)
                    .await;
            }
            Err(e) if outcome == Outcome::DeadLetter => {
                let msg = format!("still failing after the retry window: {}", e.message);
                self.finish_dead(item, "retries_exhausted", &msg, e.status, attempts)
                    .await;
            }
            Err(e) => self.finish_retry(item, &e, attempts, first_ms).await,
        }
    }

    /// The dead-letter topic stands in when no tier exists (the config refuses an empty list).
    fn retry_topics_fallback(&self) -> &str {
        &self.dlq_topic
    }

    /// Hand a record to the retry topic of its delay tier, with its due time.
    async fn finish_retry(&self, item: Item, e: &AttemptError, attempts: u32, first_ms: i64) {
        let d = &self.delivery;
        // The n-th delay of a jittered exponential schedule from backoff_min to backoff_max.
        let delay = ExponentialBuilder::new()
            .with_min_delay(d.backoff_min)
            .with_max_delay(d.backoff_max)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempts.min(64) as usize)
            .unwrap_or(d.backoff_max);
        let delay = e.retry_after.map_or(delay, |ra| ra.max(delay));
        // The tier: the smallest delay at least as long (else the longest). Every record of a
        // tier topic waits the same time, so the topic's head is always its earliest due.
        let (tier, topic) = self
            .retry_topics
            .iter()
            .find(|(t, _)| *t >= delay)
            .or(self.retry_topics.last())
            .map(|(t, topic)| (*t, topic.as_str()))
            .unwrap_or((delay, self.retry_topics_fallback()));
        // Never later than the end of the retry window: a long Retry-After must not hold the
        // record past the point where it is given up.
        let window_end = first_ms.saturating_add(d.retry_window.as_millis() as i64);
        let now = now_millis();
        let due = now.saturating_add(tier.as_millis() as i64).min(window_end);
        let not_before = now.saturating_add(delay.as_millis() as i64).min(window_end);
        let origin = origin_of(&item);
        let h = headers::retry(&RetryState {
            due_ms: due,
            attempts,
            first_attempt_ms: first_ms,
            not_before_ms: Some(not_before),
            origin: &origin,
            last_error: &e.message,
        });
        let name = self.dest.name();
        if self.produce(topic, &item, h).await {
            self.counts.retry_topic.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("eventrelay_deliveries_total", "destination" => name, "outcome" => "retry")
                .increment(1);
            item.progress.adjust(&item.slot, -1);
        } else {
            item.progress.fail(&item.slot);
        }
    }

    /// Dead-letter a record with Kafka-Connect-style error headers.
    async fn finish_dead(
        &self,
        item: Item,
        reason: &str,
        message: &str,
        status: Option<u16>,
        attempts: u32,
    ) {
        let origin = origin_of(&item);
        let h = headers::dead_letter(
            item.headers.as_ref(),
            &DeadLetter {
                stage: ErrorStage::Send,
                reason,
                message,
                origin: &origin,
                destination: Some(self.dest.name()),
                send: Some((status, attempts)),
            },
        );
        let name = self.dest.name();
        tracing::debug!(destination = name, reason, "dead-lettering record");
        if self.produce(&self.dlq_topic, &item, h).await {
            self.counts.dead_lettered.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("eventrelay_deliveries_total", "destination" => name, "outcome" => "dead_letter")
                .increment(1);
            metrics::counter!("eventrelay_dead_letters_total", "topic" => self.dlq_topic.clone(), "reason" => reason.to_string())
                .increment(1);
            item.progress.adjust(&item.slot, -1);
        } else {
            item.progress.fail(&item.slot);
        }
    }

    async fn produce(&self, topic: &str, item: &Item, headers: OwnedHeaders) -> bool {
        let mut rec = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&item.payload[..])
            .headers(headers);
        if let Some(k) = &item.key {
            rec = rec.key(k.as_ref());
        }
        match self.producer.send(rec, Duration::from_secs(60)).await {
            Ok(_) => true,
            Err((e, _)) => {
                tracing::error!(error = %e, topic, "cannot produce; the offset will not be committed past this record");
                false
            }
        }
    }
}

/// Where a record was first read: the origin headers of a retried record, else its own slot.
fn origin_of(item: &Item) -> Origin {
    // Origin headers survive a redrive too, so a dead letter always names where it began.
    headers::origin(item.headers.as_ref()).unwrap_or_else(|| Origin {
        topic: item.slot.topic.to_string(),
        partition: item.slot.partition,
        offset: item.slot.offset,
    })
}

/// Wait for every lane; dropping the returned future (on timeout) aborts those still running.
async fn futures_join(lanes: Vec<tokio::task::JoinHandle<()>>) {
    let aborts: Vec<_> = lanes.iter().map(|l| l.abort_handle()).collect();
    let _guard = AbortOnDrop(aborts);
    for l in lanes {
        let _ = l.await;
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for a in &self.0 {
            a.abort();
        }
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(24 * 3600)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = when.timestamp_millis() - now_millis();
    Some(Duration::from_millis(ms.clamp(0, 24 * 3600 * 1000) as u64))
}

/// Run one destination's send stage until `shutdown`; then drain (bounded), commit and return.
/// Counts go to `stats`, and every attempt to its ring in `deliveries` (`/deliveries`).
pub async fn run_send_stage(
    cfg: &Config,
    bootstrap: &str,
    d: EnabledDestination,
    shutdown: CancellationToken,
    stats: Arc<SendStats>,
    observer: Arc<dyn GroupObserver>,
    deliveries: Arc<DeliveryLog>,
) -> Result<()> {
    let name = d.dest.name();
    let delivery = d.delivery.clone();
    // Either consumer failing stops both (and the stage), so the process restarts instead of
    // half the destination going unconsumed.
    let stage = shutdown.child_token();
    let lane = Arc::new(Lane::new(
        cfg,
        bootstrap,
        &d,
        &stats,
        stage.clone(),
        &deliveries,
    )?);
    let depth = lane_depth(max_in_flight(&delivery));
    let (senders, lanes) = start_lanes(&lane, delivery.concurrency, depth);
    let consumers = start_consumers(cfg, bootstrap, &d, &lane, &senders, &stage, &observer);
    drop(senders);
    tracing::info!(
        destination = name,
        concurrency = delivery.concurrency,
        "send stage started"
    );
    let mut result = Ok(());
    for c in consumers {
        match c.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(anyhow!("send consumer panicked: {e}")),
        }
    }
    // Consumers have committed what finished; give lanes a moment, then stop them (their
    // unfinished records were not committed and will be read again).
    if tokio::time::timeout(Duration::from_secs(5), futures_join(lanes))
        .await
        .is_err()
    {
        tracing::warn!(
            destination = name,
            "lanes still busy at shutdown; their records will be re-read"
        );
    }
    tracing::info!(destination = name, "send stage stopped");
    result
}

/// Which topics a destination's sender reads: its topic and every retry tier, each with its own
/// consumer group and static-membership name.
fn sources(
    k: &crate::config::KafkaConfig,
    d: &EnabledDestination,
) -> Vec<(String, String, String, Option<Duration>)> {
    let name = d.dest.name();
    let group = format!("{}.send.{name}", k.group_id);
    let mut out = vec![(
        k.destination_topic(name),
        group.clone(),
        format!("send.{name}"),
        None,
    )];
    for tier in &d.delivery.retry_tiers {
        let label = crate::config::tier_label(*tier);
        out.push((
            k.retry_topic(name, *tier),
            format!("{group}.retry.{label}"),
            format!("send.{name}.retry.{label}"),
            Some(*tier),
        ));
    }
    out
}

/// One stage consumer per source, each on its own blocking thread, all feeding the same lanes;
/// one failing cancels the stage.
fn start_consumers(
    cfg: &Config,
    bootstrap: &str,
    d: &EnabledDestination,
    lane: &Arc<Lane>,
    senders: &[mpsc::Sender<Item>],
    stage: &CancellationToken,
    observer: &Arc<dyn GroupObserver>,
) -> Vec<tokio::task::JoinHandle<Result<()>>> {
    let k = &cfg.kafka;
    let max_in_flight = max_in_flight(&d.delivery);
    sources(k, d)
        .into_iter()
        .map(|(topic, group, member, tier)| {
            let mut defaults = vec![(PREFETCH_KEY, PREFETCH_KB.to_string())];
            if tier.is_some() {
                // A retry tier's records wait seconds by design: half a second more per fetch
                // costs nothing and spares the broker 4 idle fetches a second per tier.
                defaults.push(("fetch.wait.max.ms", RETRY_FETCH_WAIT_MS.to_string()));
            }
            let spec = ConsumerSpec {
                group,
                member,
                topic,
                max_in_flight,
                commit_every: Duration::from_millis(500),
                defaults,
                transactional: None,
            };
            let (kafka, b, stage, observer, senders, breaker) = (
                k.clone(),
                bootstrap.to_string(),
                stage.clone(),
                observer.clone(),
                senders.to_vec(),
                lane.breaker.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let progress = Arc::new(Progress::default());
                let r = StageConsumer::new(&kafka, &b, spec, observer, progress.clone()).and_then(
                    |c| {
                        let intake = SendIntake {
                            progress,
                            tier,
                            breaker,
                        };
                        c.run(intake, senders, &stage)
                    },
                );
                if r.is_err() {
                    stage.cancel();
                }
                r
            })
        })
        .collect()
}

/// Records read and not finished, per consumer, at which it stops polling: 64 per lane.
fn max_in_flight(delivery: &DeliveryConfig) -> usize {
    (delivery.concurrency * 64).max(1024)
}

/// Records a lane can hold before its consumer stashes and pauses the partition feeding it:
/// a quarter of the in-flight bound. Deep enough that lanes never fill under even load (there
/// the in-flight bound throttles polling, which drops nothing librdkafka fetched), shallow
/// enough that one slow user's lane filling up leaves three quarters of the bound to the others.
fn lane_depth(max_in_flight: usize) -> usize {
    (max_in_flight / 4).max(64)
}

/// The last URL a lane saw, and its parse once it came twice in a row. A destination whose
/// requests share one URL (Seg: `<endpoint>/v1/<website_id>/events`) is parsed twice per lane
/// instead of once per request, which was 4 % of the send stage's CPU (host parsing, IDNA); one
/// that varies per record (OwnerIQ's query) costs a compare and a copy into a reused buffer.
#[derive(Default)]
struct UrlCache {
    text: String,
    parsed: Option<reqwest::Url>,
    /// `text` with credentials masked, for the delivery view.
    masked: Option<Arc<str>>,
}

impl UrlCache {
    /// `url` parsed; `None` when it does not parse.
    fn get(&mut self, url: &str) -> Option<reqwest::Url> {
        if self.text != url {
            self.text.clear();
            self.text.push_str(url);
            self.parsed = None;
            self.masked = None;
            return reqwest::Url::parse(url).ok();
        }
        if self.parsed.is_none() {
            self.parsed = Some(reqwest::Url::parse(url).ok()?);
        }
        self.parsed.clone()
    }

    /// `url` with credentials masked ([`mask_url`]), masked once while it repeats.
    fn masked(&mut self, url: &str) -> Arc<str> {
        if self.text != url {
            return mask_url(url).into();
        }
        self.masked
            .get_or_insert_with(|| mask_url(url).into())
            .clone()
    }
}

/// What a lane keeps between records: the last URL's parse and the header names it met, so
/// neither is parsed per request.
#[derive(Default)]
struct LaneCache {
    urls: UrlCache,
    names: Vec<(&'static str, reqwest::header::HeaderName)>,
}

impl LaneCache {
    /// The header name `k`; `None` when it is not a valid one.
    fn name(&mut self, k: &'static str) -> Option<reqwest::header::HeaderName> {
        if let Some((_, n)) = self.names.iter().find(|(s, _)| *s == k) {
            return Some(n.clone());
        }
        let n = reqwest::header::HeaderName::from_bytes(k.as_bytes()).ok()?;
        self.names.push((k, n.clone()));
        Some(n)
    }
}

/// A header value: a borrowed visible-ASCII one is used in place (no copy), an owned one
/// without copying its bytes; `None` when it holds bytes HTTP does not allow (control
/// characters).
fn header_value(v: Cow<'static, str>) -> Option<reqwest::header::HeaderValue> {
    use reqwest::header::HeaderValue;
    match v {
        // Exactly what `from_static` accepts (it panics on anything else).
        Cow::Borrowed(s) if s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) => {
            Some(HeaderValue::from_static(s))
        }
        Cow::Borrowed(s) => HeaderValue::from_str(s).ok(),
        Cow::Owned(s) => HeaderValue::try_from(s).ok(),
    }
}

/// A request's parts made once for all its attempts.
struct Parts {
    body: Option<bytes::Bytes>,
    headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
}

/// `concurrency` lanes, each a task sending its records one after another.
fn start_lanes(
    lane: &Arc<Lane>,
    concurrency: usize,
    depth: usize,
) -> (Vec<mpsc::Sender<Item>>, Vec<tokio::task::JoinHandle<()>>) {
    let mut senders = Vec::with_capacity(concurrency);
    let mut lanes = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (tx, mut rx) = mpsc::channel::<Item>(depth);
        senders.push(tx);
        let lane = lane.clone();
        lanes.push(tokio::spawn(async move {
            let mut cache = LaneCache::default();
            while let Some(item) = rx.recv().await {
                lane.deliver(item, &mut cache).await;
            }
        }));
    }
    (senders, lanes)
}

/// librdkafka's prefetch bound per consumer. Its default (64 MB per consumer, two consumers per
/// destination) would be most of the sender's memory while a destination is down and a backlog
/// waits; 16 MB is still seconds of records at full delivery speed. `[kafka.properties]` wins.
const PREFETCH_KEY: &str = "queued.max.messages.kbytes";
const PREFETCH_KB: &str = "16384";

/// Longest a retry tier's fetch waits for data (`fetch.wait.max.ms`; `[kafka.properties]`
/// wins).
const RETRY_FETCH_WAIT_MS: u32 = 500;

/// The send stage's side of the stage consumer: records become [`Item`]s; on the retry topic,
/// a record waits until its due time.
struct SendIntake {
    progress: Arc<Progress>,
    /// The delay tier, when this consumer reads a retry topic.
    tier: Option<Duration>,
    breaker: Arc<Breaker>,
}

/// How far a retry record's due time may lie past its tier's delay after it was written (clock
/// differences between the instance that wrote it and the one reading it).
const DUE_SLACK_MS: i64 = 5_000;

impl Intake for SendIntake {
    type Job = Item;

    fn job(&mut self, msg: &BorrowedMessage<'_>, slot: Slot) -> Item {
        // One allocation for both (and shared from the start, so the lane's clones of the
        // payload cost no allocation either).
        let (p, k) = (msg.payload().unwrap_or_default(), msg.key());
        let mut buf = bytes::BytesMut::with_capacity(p.len() + k.map_or(0, <[u8]>::len));
        buf.extend_from_slice(p);
        let payload = buf.split().freeze();
        let key = k.map(|k| {
            buf.extend_from_slice(k);
            buf.split().freeze()
        });
        Item {
            slot,
            progress: self.progress.clone(),
            retried: self.tier.is_some(),
            key,
            payload,
            headers: msg.headers().map(|h| h.detach()),
        }
    }

    /// The due time from the record's header, capped at its tier's delay after the record was
    /// written (plus [`DUE_SLACK_MS`]): the sender never writes a later one, so a header
    /// further out (hand-made, or from a clock far ahead) cannot park a record, and every
    /// record behind it in the partition, for longer than the tier says.
    fn due_ms(&self, msg: &BorrowedMessage<'_>) -> Option<i64> {
        let tier = self.tier?;
        let now = now_millis();
        let due = headers::time_ms(msg.headers(), headers::RETRY_DUE, now)?;
        let written = msg
            .timestamp()
            .to_millis()
            .filter(|t| *t > 0)
            .unwrap_or(now)
            .min(now);
        let cap = written
            .saturating_add(tier.as_millis() as i64)
            .saturating_add(DUE_SLACK_MS);
        Some(due.min(cap)).filter(|due| *due > now)
    }

    /// While the destination's circuit is not closed, read nothing more: lag grows on the
    /// broker, not records in memory.
    fn hold_all(&self) -> bool {
        self.breaker.holds_consumers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_never_panic_and_refuse_control_characters() {
        for (v, ok) in [
            ("application/json", true),
            ("caf\u{e9}", true),
            ("a\tb", true),
            ("a\u{1}b", false),
            ("a\u{7f}", false),
        ] {
            assert_eq!(header_value(Cow::Borrowed(v)).is_some(), ok, "{v:?}");
            assert_eq!(
                header_value(Cow::Owned(v.to_string())).is_some(),
                ok,
                "{v:?}"
            );
        }
    }

    #[test]
    fn url_cache_gives_what_a_parse_gives() {
        let mut c = UrlCache::default();
        for u in [
            "http://127.0.0.1:9/v1/abc/events",
            "http://127.0.0.1:9/v1/abc/events",
            "https://px.owneriq.net/j/?t=a,b&x=%20",
            "http://127.0.0.1:9/v1/abc/events",
        ] {
            assert_eq!(c.get(u), reqwest::Url::parse(u).ok(), "{u}");
        }
        assert_eq!(c.get("not a url"), None);
        assert_eq!(
            c.get("http://127.0.0.1:9/v1/abc/events").map(String::from),
            Some("http://127.0.0.1:9/v1/abc/events".to_string())
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
