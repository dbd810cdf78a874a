//! The application layer: which stages a process runs ([`Role`]), the runtime, and one
//! shutdown token every task watches. `eventrelay run` is [`run`]; the demo and the tests start
//! the same [`Running`] set of stages.
//!
//! Like mini-redis's `server::run`, the library takes shutdown as a future: the binary passes
//! [`shutdown_signal`] (SIGINT/SIGTERM), tests pass whatever ends their scenario.

use crate::config::Config;
use crate::kafka::{all_topics, ensure_topics, Embedded, GroupObserver};
use crate::ops::deliveries::DeliveryLog;
use crate::ops::{self, Health};
use crate::pipeline::stage::{run_map_stage, MapStats};
use crate::sender::{run_send_stage, SendStats};
use anyhow::{anyhow, Context, Result};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which stages `run` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Input topic → destination topics.
    Map,
    /// Destination topics → destination HTTP APIs.
    Send,
    /// Segment's HTTP Tracking API → input topic (`[ingest]`).
    Ingest,
    /// Map and send, in one process; ingest too when `ingest.listen` is set.
    All,
}

/// The running stages of one process.
pub struct Running {
    /// `bootstrap.servers` in use (the embedded cluster's when there is one).
    pub bootstrap: String,
    /// The embedded cluster, kept alive while the stages run.
    pub embedded: Option<Embedded>,
    /// Cancelled to stop every stage; stages never stop on their own otherwise.
    pub shutdown: CancellationToken,
    /// Cancelled when some stage ended by itself (a failure): the process should stop.
    pub stage_ended: CancellationToken,
    /// Readiness inputs.
    pub health: Arc<Health>,
    /// Map stage counts.
    pub map_stats: Arc<MapStats>,
    /// Send stage counts.
    pub send_stats: Arc<SendStats>,
    /// The last delivery attempts per destination (`/deliveries`).
    pub deliveries: Arc<DeliveryLog>,
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    /// Where the ingest API listens, when this process runs it.
    pub ingest_addr: Option<SocketAddr>,
    stages: Vec<(&'static str, JoinHandle<Result<()>>)>,
    /// Tasks that serve the stages (the group lag export); they end with `shutdown`.
    helpers: Vec<JoinHandle<()>>,
}

impl Running {
    /// Connect to (or embed) Kafka, create topics, serve metrics, start the stages.
    pub async fn start(cfg: &Config, role: Role) -> Result<Running> {
        let (bootstrap, embedded) = connect(cfg).await?;
        let health = Arc::new(Health::default());
        let deliveries = Arc::new(if matches!(role, Role::Send | Role::All) {
            let dests = cfg.destinations()?;
            DeliveryLog::new(
                dests.iter().map(|d| d.dest.name()),
                cfg.metrics.deliveries_kept,
            )
        } else {
            DeliveryLog::default()
        });
        let metrics_addr =
            ops::serve(&cfg.metrics.listen, health.clone(), deliveries.clone()).await?;
        let mut running = Running {
            bootstrap,
            embedded,
            shutdown: CancellationToken::new(),
            stage_ended: CancellationToken::new(),
            health,
            map_stats: Arc::new(MapStats::default()),
            send_stats: Arc::new(SendStats::default()),
            deliveries,
            metrics_addr,
            ingest_addr: None,
            stages: Vec::new(),
            helpers: Vec::new(),
        };
        if let Err(e) = running.start_stages(cfg, role).await {
            // Stages already started must not outlive the failed start (a blocking map
            // thread would keep the runtime, and the process, from ending).
            running.shutdown.cancel();
            return Err(e);
        }
        Ok(running)
    }

    async fn start_stages(&mut self, cfg: &Config, role: Role) -> Result<()> {
        if role == Role::Ingest {
            self.health.ingest_only.store(true, Ordering::Relaxed);
        }
        // Ingest binds first: a port in use fails the start before any stage runs.
        if role == Role::Ingest || (role == Role::All && cfg.ingest.listen.is_some()) {
            self.start_ingest(cfg).await?;
        }
        if matches!(role, Role::Map | Role::All) {
            self.start_map(cfg);
        }
        if matches!(role, Role::Send | Role::All) {
            self.start_senders(cfg)?;
        }
        if self.stages.is_empty() {
            return Err(anyhow!("nothing to run: no destination is configured"));
        }
        self.start_lag_export(cfg);
        Ok(())
    }

    fn start_map(&mut self, cfg: &Config) {
        let (cfg, b, token, stats) = (
            cfg.clone(),
            self.bootstrap.clone(),
            self.shutdown.clone(),
            self.map_stats.clone(),
        );
        let observer: Arc<dyn GroupObserver> = self.health.clone();
        let ended = self.stage_ended.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let r = run_map_stage(&cfg, &b, token, stats, observer);
            ended.cancel();
            r
        });
        self.stages.push(("map", handle));
    }

    fn start_senders(&mut self, cfg: &Config) -> Result<()> {
        for d in cfg.destinations()? {
            let name = d.dest.name();
            let (cfg, b, token, stats) = (
                cfg.clone(),
                self.bootstrap.clone(),
                self.shutdown.clone(),
                self.send_stats.clone(),
            );
            let observer: Arc<dyn GroupObserver> = self.health.clone();
            let deliveries = self.deliveries.clone();
            let ended = self.stage_ended.clone();
            let handle = tokio::spawn(async move {
                let r = run_send_stage(&cfg, &b, d, token, stats, observer, deliveries).await;
                ended.cancel();
                r
            });
            self.stages.push((name, handle));
        }
        Ok(())
    }

    async fn start_ingest(&mut self, cfg: &Config) -> Result<()> {
        let observer: Arc<dyn GroupObserver> = self.health.clone();
        let ingest =
            crate::ingest::Ingest::bind_observed(cfg, &self.bootstrap, Some(observer)).await?;
        self.ingest_addr = Some(ingest.local_addr());
        let token = self.shutdown.clone();
        let ended = self.stage_ended.clone();
        let handle = tokio::spawn(async move {
            let r = ingest.serve(token.cancelled_owned()).await;
            ended.cancel();
            r
        });
        self.stages.push(("ingest", handle));
        Ok(())
    }

    /// `eventrelay_group_lag` for every eventrelay group, from this process whatever its role:
    /// a stage that is down cannot report its own lag.
    fn start_lag_export(&mut self, cfg: &Config) {
        let every = cfg.metrics.group_lag_interval_secs;
        if every <= 0.0 {
            return;
        }
        let task = ops::lag::export(
            cfg.clone(),
            self.bootstrap.clone(),
            Duration::from_secs_f64(every),
            self.shutdown.clone(),
        );
        self.helpers.push(tokio::spawn(task));
    }

    /// Stop every stage, wait for them to drain and commit, and report the first error.
    pub async fn shutdown(self, bound: Duration) -> Result<()> {
        self.health.stopping.store(true, Ordering::Relaxed);
        self.shutdown.cancel();
        let mut first_err = None;
        let deadline = tokio::time::Instant::now() + bound;
        for (name, h) in self.stages {
            match tokio::time::timeout_at(deadline, h).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::error!(stage = name, error = %format!("{e:#}"), "stage failed");
                    first_err.get_or_insert(e.context(format!("{name} stage")));
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(anyhow!("{name} stage panicked: {e}"));
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow!("{name} stage did not stop within {bound:?}"));
                }
            }
        }
        for h in self.helpers {
            // A round blocked on a broker request ends within its timeout; not worth failing for.
            let _ = tokio::time::timeout_at(deadline, h).await;
        }
        drop(self.embedded);
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The configured brokers (topics created when missing), or an embedded cluster.
async fn connect(cfg: &Config) -> Result<(String, Option<Embedded>)> {
    let topics = all_topics(cfg)?;
    match &cfg.kafka.bootstrap_servers {
        Some(b) => {
            ensure_topics(&cfg.kafka, b, &topics).await?;
            Ok((b.clone(), None))
        }
        None => {
            let e = Embedded::start(&topics, cfg.kafka.partitions)?;
            tracing::info!(bootstrap = e.bootstrap(),
                "embedded Kafka (librdkafka mock cluster) started; outside clients can connect to it");
            Ok((e.bootstrap().to_string(), Some(e)))
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The tokio runtime every async command uses.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `eventrelay run`: the chosen stages until `shutdown` resolves or a stage fails; then drain,
/// commit and return.
pub async fn run(cfg: Config, role: Role, shutdown: impl Future<Output = ()>) -> Result<()> {
    let running = Running::start(&cfg, role).await?;
    tracing::info!(role = ?role, bootstrap = %running.bootstrap, metrics = %running.metrics_addr, "eventrelay running");
    let ended = running.stage_ended.clone();
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down: draining and committing"),
        _ = ended.cancelled() => tracing::error!("a stage stopped unexpectedly; shutting down"),
    }
    running.shutdown(Duration::from_secs(60)).await
}
