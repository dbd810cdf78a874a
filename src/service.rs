//! `eventrelay run`: start Kafka (or connect to it), the ops endpoint and the chosen stages; stop
//! them cleanly on SIGTERM/SIGINT.

use crate::cli::Role;
use crate::config::Config;
use crate::kafka::{all_topics, ensure_topics, Embedded};
use crate::ops::{self, Health};
use crate::pipeline::stage::{run_map_stage, MapStats};
use crate::sender::{run_send_stage, SendStats};
use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The running stages of one process.
pub struct Running {
    /// `bootstrap.servers` in use (the embedded cluster's when there is one).
    pub bootstrap: String,
    /// The embedded cluster, kept alive while the stages run.
    pub embedded: Option<Embedded>,
    /// Set to stop every stage.
    pub stop: Arc<AtomicBool>,
    /// Readiness inputs.
    pub health: Arc<Health>,
    /// Map stage counts.
    pub map_stats: Arc<MapStats>,
    /// Send stage counts.
    pub send_stats: Arc<SendStats>,
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    stages: Vec<(&'static str, JoinHandle<Result<()>>)>,
}

impl Running {
    /// Connect to (or embed) Kafka, create topics, serve metrics, start the stages.
    pub async fn start(cfg: &Config, role: Role) -> Result<Running> {
        let topics = all_topics(cfg)?;
        let (bootstrap, embedded) = match &cfg.kafka.bootstrap_servers {
            Some(b) => {
                ensure_topics(&cfg.kafka, b, &topics).await?;
                (b.clone(), None)
            }
            None => {
                let e = Embedded::start(&topics, cfg.kafka.partitions)?;
                tracing::info!(bootstrap = e.bootstrap(),
                    "embedded Kafka (librdkafka mock cluster) started; outside clients can connect to it");
                (e.bootstrap().to_string(), Some(e))
            }
        };
        let health = Arc::new(Health::default());
        let metrics_addr = ops::serve(&cfg.metrics.listen, health.clone()).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let map_stats = Arc::new(MapStats::default());
        let send_stats = Arc::new(SendStats::default());
        let mut stages = Vec::new();
        if matches!(role, Role::Map | Role::All) {
            let (cfg, b, stop, stats, health) = (
                cfg.clone(),
                bootstrap.clone(),
                stop.clone(),
                map_stats.clone(),
                health.clone(),
            );
            stages.push((
                "map",
                tokio::task::spawn_blocking(move || run_map_stage(&cfg, &b, stop, stats, health)),
            ));
        }
        if matches!(role, Role::Send | Role::All) {
            for d in cfg.destinations()? {
                let (cfg, b, stop, stats, health) = (
                    cfg.clone(),
                    bootstrap.clone(),
                    stop.clone(),
                    send_stats.clone(),
                    health.clone(),
                );
                stages.push((
                    d.dest.name(),
                    tokio::spawn(
                        async move { run_send_stage(&cfg, &b, d, stop, stats, health).await },
                    ),
                ));
            }
        }
        if role == Role::Ingest || (role == Role::All && cfg.ingest.listen.is_some()) {
            let ingest = crate::ingest::Ingest::bind(cfg, &bootstrap).await?;
            let stop = crate::ingest::until_set(stop.clone());
            stages.push(("ingest", tokio::spawn(ingest.serve(stop))));
        }
        if stages.is_empty() {
            return Err(anyhow!("nothing to run: no destination is configured"));
        }
        Ok(Running {
            bootstrap,
            embedded,
            stop,
            health,
            map_stats,
            send_stats,
            metrics_addr,
            stages,
        })
    }

    /// Whether some stage has ended on its own (an error, since stages run until stopped).
    pub fn stage_ended(&self) -> bool {
        self.stages.iter().any(|(_, h)| h.is_finished())
    }

    /// Stop every stage, wait for them to drain and commit, and report the first error.
    pub async fn shutdown(self, bound: Duration) -> Result<()> {
        self.health.stopping.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
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
        drop(self.embedded);
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
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

/// `eventrelay run`: until a signal, or until a stage fails.
pub fn run(cfg: Config, role: Role) -> Result<()> {
    runtime()?.block_on(async move {
        let running = Running::start(&cfg, role).await?;
        tracing::info!(role = ?role, bootstrap = %running.bootstrap, metrics = %running.metrics_addr, "eventrelay running");
        let poll_stages = async {
            while !running.stage_ended() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("signal received: draining and committing"),
            _ = poll_stages => tracing::error!("a stage stopped unexpectedly; shutting down"),
        }
        running.shutdown(Duration::from_secs(60)).await
    })
}
