//! librdkafka's mock cluster in the process: the embedded default of `eventrelay run` and
//! `demo` when no `kafka.bootstrap_servers` is set, and the fast harness of the tests.

use anyhow::{anyhow, Context, Result};
use rdkafka::mocking::MockCluster;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// librdkafka's mock cluster running in the process (real Kafka protocol on 127.0.0.1).
///
/// `MockCluster` is not `Send`, so it lives on its own thread for the life of this handle, and
/// [`Embedded::broker_down`] / [`Embedded::broker_up`] reach it through a channel.
pub struct Embedded {
    bootstrap: String,
    /// Dropping it ends the thread, which drops the cluster.
    ctl: Option<mpsc::Sender<Ctl>>,
    thread: Option<JoinHandle<()>>,
}

/// What the cluster's thread is asked to do; each answers on its own channel.
enum Ctl {
    Down(mpsc::Sender<Result<()>>),
    Up(mpsc::Sender<Result<()>>),
}

impl Embedded {
    /// Start a one-broker cluster and create `topics` with `partitions` partitions each.
    pub fn start(topics: &[String], partitions: i32) -> Result<Embedded> {
        let (boot_tx, boot_rx) = mpsc::channel();
        let (ctl_tx, ctl_rx) = mpsc::channel::<Ctl>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = boot_tx.send(Err(anyhow!("starting embedded Kafka: {e}")));
                        return;
                    }
                };
                for t in &topics {
                    if let Err(e) = cluster.create_topic(t, partitions, 1) {
                        let _ = boot_tx.send(Err(anyhow!("creating topic {t}: {e}")));
                        return;
                    }
                }
                let _ = boot_tx.send(Ok(cluster.bootstrap_servers()));
                // Keep the cluster until the handle is dropped.
                while let Ok(ctl) = ctl_rx.recv() {
                    let (result, reply) = match ctl {
                        Ctl::Down(reply) => (cluster.broker_down(1), reply),
                        Ctl::Up(reply) => (cluster.broker_up(1), reply),
                    };
                    let _ = reply.send(result.map_err(|e| anyhow!("mock broker: {e}")));
                }
                drop(cluster);
            })
            .context("spawning embedded Kafka thread")?;
        let bootstrap = boot_rx
            .recv()
            .map_err(|_| anyhow!("embedded Kafka thread died"))??;
        Ok(Embedded {
            bootstrap,
            ctl: Some(ctl_tx),
            thread: Some(thread),
        })
    }

    /// The `bootstrap.servers` string clients (ours and outside ones) connect to.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Take the broker down: connections are dropped and new ones refused, its logs and
    /// committed offsets are kept (a broker stopped and restarted on the same storage). For
    /// outage drills and tests.
    pub fn broker_down(&self) -> Result<()> {
        self.ask(Ctl::Down)
    }

    /// Bring the broker back after [`Embedded::broker_down`].
    pub fn broker_up(&self) -> Result<()> {
        self.ask(Ctl::Up)
    }

    fn ask(&self, ctl: fn(mpsc::Sender<Result<()>>) -> Ctl) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.ctl
            .as_ref()
            .ok_or_else(|| anyhow!("embedded Kafka is stopped"))?
            .send(ctl(tx))
            .map_err(|_| anyhow!("embedded Kafka thread died"))?;
        rx.recv()
            .map_err(|_| anyhow!("embedded Kafka thread died"))?
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        drop(self.ctl.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
