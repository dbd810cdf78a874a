//! librdkafka's mock cluster in the process: the embedded default of `eventrelay run` and
//! `demo` when no `kafka.bootstrap_servers` is set, and the fast harness of the tests.

use anyhow::{anyhow, Context, Result};
use rdkafka::mocking::MockCluster;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// librdkafka's mock cluster running in the process (real Kafka protocol on 127.0.0.1).
///
/// `MockCluster` is not `Send`, so it lives on its own thread for the life of this handle.
pub struct Embedded {
    bootstrap: String,
    /// Dropping it ends the thread, which drops the cluster.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Embedded {
    /// Start a one-broker cluster and create `topics` with `partitions` partitions each.
    pub fn start(topics: &[String], partitions: i32) -> Result<Embedded> {
        let (boot_tx, boot_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
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
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .context("spawning embedded Kafka thread")?;
        let bootstrap = boot_rx
            .recv()
            .map_err(|_| anyhow!("embedded Kafka thread died"))??;
        Ok(Embedded {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The `bootstrap.servers` string clients (ours and outside ones) connect to.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
