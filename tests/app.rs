//! The app layer's shutdown: `app::run` takes shutdown as a future (the way mini-redis's
//! `server::run` takes `ctrl_c()`), and when it resolves every stage drains, commits and
//! returns; a cancelled token stops a stage started on its own.

mod common;

use common::*;
use eventrelay::app::{run, Role, Running};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_returns_when_its_shutdown_future_resolves() {
    let kafka = cluster();
    let cfg = config(kafka.bootstrap(), "http://127.0.0.1:9", "", "");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let service = tokio::spawn(run(cfg, Role::All, async {
        let _ = rx.await;
    }));
    tokio::time::sleep(Duration::from_secs(3)).await;
    if service.is_finished() {
        let ended = service.await;
        panic!("runs until told to stop, but it ended: {ended:?}");
    }
    let _ = tx.send(());
    let result = tokio::time::timeout(Duration::from_secs(60), service)
        .await
        .expect("returns within the drain bound")
        .expect("no panic");
    assert!(result.is_ok(), "clean shutdown: {result:?}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_stops_every_stage_and_readiness_goes_first() {
    let kafka = cluster();
    let cfg = config(kafka.bootstrap(), "http://127.0.0.1:9", "", "");
    let running = Running::start(&cfg, Role::All).await.expect("start");
    let health = running.health.clone();
    // Ready first, so that readiness going false below is the shutdown's doing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health.ready() {
        assert!(Instant::now() < deadline, "ready within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = running.shutdown.clone();
    assert!(!token.is_cancelled());
    let stopping = tokio::spawn(running.shutdown(Duration::from_secs(60)));
    // Readiness flips before the stages have finished draining.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!health.ready(), "not ready while shutting down");
    assert!(token.is_cancelled(), "the one token is cancelled");
    stopping
        .await
        .expect("no panic")
        .expect("every stage stopped cleanly");
}
