//! Operations: Prometheus metrics, `/healthz` and `/readyz`, the live delivery view
//! (`/deliveries`, `tail`), logging set-up, the offset tools (`replay`, `redrive`) operators use
//! when something went wrong, and `status`, which tells them what went wrong.

pub mod deliveries;
pub mod lag;
pub mod redrive;
pub mod replay;
pub mod status;

use crate::kafka::GroupObserver;
use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// How `replay`, `redrive` and `tail` print (for `tail`, `json` is one JSON object a line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// A table for people.
    #[default]
    Text,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Print a report as `output` asks: its table (`text`) or the report as one JSON document.
pub fn print_report<T: serde::Serialize>(
    output: Output,
    report: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<()> {
    match output {
        Output::Text => print!("{}", text(report)),
        Output::Json => println!("{}", serde_json::to_string_pretty(report)?),
    }
    Ok(())
}

/// Latency histogram buckets in seconds: 1 ms to 4 hours (the retry window).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0, 14400.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Install the global Prometheus recorder once (later calls return the same handle).
pub fn install_metrics() -> Result<PrometheusHandle> {
    // Two stages (or two tests) starting at once must not both try to install: the second
    // install fails ("a recorder is already installed").
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), LATENCY_BUCKETS)
        .context("setting histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    // The recorder keeps histogram samples until they are folded into buckets, which happens on
    // a scrape or an upkeep: without this thread an unscraped instance grows by every sample
    // (two per delivery).
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        })
        .context("spawning the metrics upkeep thread")?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "eventrelay_events_consumed_total",
        "Input records read, by topic."
    );
    describe_counter!(
        "eventrelay_events_invalid_total",
        "Input records that were not valid Segment events, by reason."
    );
    describe_counter!(
        "eventrelay_records_produced_total",
        "Destination records produced by the map stage."
    );
    describe_counter!(
        "eventrelay_events_skipped_total",
        "Events a destination does not take, by reason."
    );
    describe_counter!(
        "eventrelay_events_rejected_total",
        "Events a destination rejected as bad data (sent to the input DLQ)."
    );
    describe_counter!(
        "eventrelay_deliveries_total",
        "Finished deliveries by outcome: success, retry (handed to the retry topic), dead_letter."
    );
    describe_counter!(
        "eventrelay_delivery_attempts_total",
        "HTTP attempts by status code (or error class)."
    );
    describe_histogram!(
        "eventrelay_delivery_duration_seconds",
        Unit::Seconds,
        "Duration of one HTTP attempt."
    );
    describe_histogram!(
        "eventrelay_end_to_end_latency_seconds",
        Unit::Seconds,
        "From the input record's timestamp to successful delivery."
    );
    describe_gauge!(
        "eventrelay_consumer_lag",
        "Consumer lag in records, from librdkafka statistics."
    );
    describe_gauge!(
        "eventrelay_group_lag",
        "Committed lag of an eventrelay consumer group on a topic, read from the brokers."
    );
    describe_gauge!(
        "eventrelay_last_success_timestamp_seconds",
        Unit::Seconds,
        "When the last delivery to the destination succeeded (Unix time)."
    );
}

/// Readiness inputs, set by the stages.
#[derive(Debug, Default)]
pub struct Health {
    /// Partitions currently assigned to this process's consumers.
    pub assigned: AtomicUsize,
    /// Whether the brokers answered recently.
    pub broker_up: AtomicBool,
    /// Set when the process is shutting down (readiness goes false first).
    pub stopping: AtomicBool,
    /// Set when the process runs only ingest: it has no consumer, so no partition to wait for.
    pub ingest_only: AtomicBool,
}

impl Health {
    /// A consumer was given partitions.
    pub fn partitions_assigned(&self, n: usize) {
        self.assigned.fetch_add(n, Ordering::Relaxed);
        self.broker_up.store(true, Ordering::Relaxed);
    }

    /// A consumer lost partitions.
    pub fn partitions_revoked(&self, n: usize) {
        let _ = self
            .assigned
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                Some(a.saturating_sub(n))
            });
    }

    /// Ready: not stopping, broker reachable, and some partition assigned (an ingest-only
    /// process: the broker reachable is enough).
    pub fn ready(&self) -> bool {
        !self.stopping.load(Ordering::Relaxed)
            && self.broker_up.load(Ordering::Relaxed)
            && (self.assigned.load(Ordering::Relaxed) > 0
                || self.ingest_only.load(Ordering::Relaxed))
    }
}

impl GroupObserver for Health {
    fn assigned(&self, partitions: usize) {
        self.partitions_assigned(partitions);
    }
    fn revoked(&self, partitions: usize) {
        self.partitions_revoked(partitions);
    }
    fn broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct OpsState {
    handle: PrometheusHandle,
    health: Arc<Health>,
    deliveries: Arc<deliveries::DeliveryLog>,
}

/// Serve `/metrics`, `/healthz`, `/readyz` and `/deliveries` on `listen`; returns the bound
/// address.
pub async fn serve(
    listen: &str,
    health: Arc<Health>,
    deliveries: Arc<deliveries::DeliveryLog>,
) -> Result<SocketAddr> {
    let handle = install_metrics()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<OpsState>| async move { s.handle.render() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<OpsState>| async move {
                if s.health.ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .route("/deliveries", get(deliveries_answer))
        .with_state(OpsState {
            handle,
            health,
            deliveries,
        });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding metrics.listen {listen}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz, /deliveries");
    Ok(addr)
}

/// `GET /deliveries?destination=D&failed=true&limit=N&after=SEQ`: the last attempts as JSON,
/// or `{"error": …}` with 400 (bad parameter) or 404 (a destination this process does not
/// send to).
async fn deliveries_answer(
    State(s): State<OpsState>,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match s.deliveries.answer(&params) {
        Ok(page) => axum::Json(page).into_response(),
        Err((code, error)) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
            axum::Json(serde_json::json!({ "error": error })),
        )
            .into_response(),
    }
}

/// Set up logging: human-readable by default, JSON lines with `--log-format json`.
/// Filter with `RUST_LOG` (default `info`).
pub fn init_logging(format: &str, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default_level},librdkafka=warn,rdkafka=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
