//! A circuit breaker per destination: when a destination is down, stop sending to it (and stop
//! reading its topics) instead of failing every record one by one.
//!
//! Closed → **open** after `breaker_failures` consecutive retryable failures (5xx, 429,
//! timeouts, connection errors) → after `breaker_open_ms`, **half-open**: one probe request at a
//! time, at most one per `breaker_probe_interval_ms` → **closed** on a probe's success (or any
//! answer that shows the destination is up, such as a 400), open again on its failure, for twice
//! as long (up to `breaker_open_max_ms`). While it is not closed, lanes wait before each
//! attempt, the stage's consumers pause (lag grows, memory stays flat), and no record moves to
//! the retry topic just because the destination is down.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Thresholds (config keys `destinations.<d>.breaker_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive retryable failures that open the breaker (0: never open).
    pub failures: u32,
    /// How long it stays open before the first probe.
    pub open_for: Duration,
    /// Longest open period (it doubles after each failed probe).
    pub open_max: Duration,
    /// At most one probe per this interval while half-open.
    pub probe_interval: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 20,
            open_for: Duration::from_secs(5),
            open_max: Duration::from_secs(60),
            probe_interval: Duration::from_secs(1),
        }
    }
}

/// The breaker's state, as the gauge shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Sending normally.
    Closed,
    /// Probing.
    HalfOpen,
    /// Not sending.
    Open,
}

impl CircuitState {
    fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        open_for: Duration,
    },
    HalfOpen {
        probing: bool,
        next_probe: Instant,
        open_for: Duration,
    },
}

/// What a lane may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send as usual.
    Send,
    /// Send the one probe request.
    Probe,
    /// The stage is shutting down: give the record up (it is re-read after the restart).
    Shutdown,
}

/// How an attempt went, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The destination answered: success, or a permanent 4xx (it is up; the record is bad).
    Up,
    /// Retryable failure: 5xx, 408/423/429, timeout, connection error.
    Down,
}

/// One destination's breaker, shared by its lanes and its consumers.
pub struct Breaker {
    name: &'static str,
    cfg: BreakerConfig,
    state: Mutex<State>,
    changed: Notify,
    gauge: metrics::Gauge,
}

impl Breaker {
    /// A closed breaker for destination `name`.
    pub fn new(name: &'static str, cfg: BreakerConfig) -> Breaker {
        let gauge = metrics::gauge!("eventrelay_circuit_state", "destination" => name);
        gauge.set(0.0);
        Breaker {
            name,
            cfg,
            state: Mutex::new(State::Closed { failures: 0 }),
            changed: Notify::new(),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state now.
    pub fn state(&self) -> CircuitState {
        match *self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
        }
    }

    /// Whether sending is held back (open or half-open): lanes wait instead of retrying.
    pub fn is_holding(&self) -> bool {
        self.state() != CircuitState::Closed
    }

    /// Whether the destination's consumers should stay paused: while open (until a probe is
    /// due) and while a probe is out. Once a probe may go, they read again, so some lane has a
    /// record to probe with: an open circuit with empty lanes would otherwise never probe.
    pub fn holds_consumers(&self) -> bool {
        match *self.lock() {
            State::Closed { .. } => false,
            State::Open { until, .. } => Instant::now() < until,
            State::HalfOpen { probing, .. } => probing,
        }
    }

    fn transition(&self, to: CircuitState, why: &str) {
        self.gauge.set(to.gauge());
        match to {
            CircuitState::Closed => {
                tracing::info!(destination = self.name, "circuit closed: {why}")
            }
            CircuitState::HalfOpen => {
                tracing::info!(destination = self.name, "circuit half-open: {why}")
            }
            CircuitState::Open => {
                tracing::warn!(destination = self.name, "circuit open: {why}")
            }
        }
        self.changed.notify_waiters();
    }

    /// Wait until a lane may send (closed, or this lane holds the probe), or shutdown.
    pub async fn admit(&self, shutdown: &CancellationToken) -> Admit {
        loop {
            let notified = self.changed.notified();
            let wait = {
                let mut st = self.lock();
                let now = Instant::now();
                match &mut *st {
                    State::Closed { .. } => return Admit::Send,
                    State::Open { until, open_for } => {
                        if now >= *until {
                            let open_for = *open_for;
                            *st = State::HalfOpen {
                                probing: true,
                                next_probe: now + self.cfg.probe_interval,
                                open_for,
                            };
                            drop(st);
                            self.transition(CircuitState::HalfOpen, "probing");
                            return Admit::Probe;
                        }
                        *until - now
                    }
                    State::HalfOpen {
                        probing,
                        next_probe,
                        ..
                    } => {
                        if !*probing && now >= *next_probe {
                            *probing = true;
                            *next_probe = now + self.cfg.probe_interval;
                            return Admit::Probe;
                        }
                        next_probe
                            .saturating_duration_since(now)
                            .max(Duration::from_millis(20))
                    }
                }
            };
            if shutdown.is_cancelled() {
                return Admit::Shutdown;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return Admit::Shutdown,
            }
        }
    }

    /// Count how an attempt went.
    pub fn record(&self, admit: Admit, verdict: Verdict) {
        let mut st = self.lock();
        let now = Instant::now();
        match (&mut *st, verdict) {
            (State::Closed { failures }, Verdict::Up) => *failures = 0,
            (State::Closed { failures }, Verdict::Down) => {
                *failures += 1;
                if self.cfg.failures > 0 && *failures >= self.cfg.failures {
                    let n = *failures;
                    *st = State::Open {
                        until: now + self.cfg.open_for,
                        open_for: self.cfg.open_for,
                    };
                    drop(st);
                    self.transition(
                        CircuitState::Open,
                        &format!("{n} consecutive retryable failures"),
                    );
                }
            }
            (_, Verdict::Up) => {
                *st = State::Closed { failures: 0 };
                drop(st);
                self.transition(CircuitState::Closed, "the destination answered");
            }
            (State::HalfOpen { open_for, .. }, Verdict::Down) if admit == Admit::Probe => {
                let open_for = (*open_for * 2).min(self.cfg.open_max);
                *st = State::Open {
                    until: now + open_for,
                    open_for,
                };
                drop(st);
                self.transition(CircuitState::Open, "the probe failed");
            }
            // A failure of a request sent before the breaker opened changes nothing.
            (_, Verdict::Down) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> BreakerConfig {
        BreakerConfig {
            failures: 3,
            open_for: Duration::from_millis(50),
            open_max: Duration::from_millis(200),
            probe_interval: Duration::from_millis(30),
        }
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_probes_and_closes() {
        let b = Breaker::new("test", quick());
        let token = CancellationToken::new();
        for _ in 0..2 {
            b.record(Admit::Send, Verdict::Down);
        }
        b.record(Admit::Send, Verdict::Up);
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "a success resets the count"
        );
        for _ in 0..3 {
            b.record(Admit::Send, Verdict::Down);
        }
        assert_eq!(b.state(), CircuitState::Open);
        let started = Instant::now();
        assert_eq!(b.admit(&token).await, Admit::Probe);
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        // Another lane waits while the probe is out; the probe fails: open again, longer.
        b.record(Admit::Probe, Verdict::Down);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit(&token).await, Admit::Probe);
        b.record(Admit::Probe, Verdict::Up);
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.admit(&token).await, Admit::Send);
    }

    #[tokio::test]
    async fn consumers_read_again_once_a_probe_may_go() {
        // Without this, an open circuit whose lanes are empty (their records went to the retry
        // topic on a long Retry-After) would never get a record to probe with.
        let b = Breaker::new("test3", quick());
        assert!(!b.holds_consumers());
        for _ in 0..3 {
            b.record(Admit::Send, Verdict::Down);
        }
        assert!(b.holds_consumers(), "open: paused");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!b.holds_consumers(), "probe due: read so a lane can probe");
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit(&CancellationToken::new()).await, Admit::Probe);
        assert!(b.holds_consumers(), "a probe is out: paused again");
        b.record(Admit::Probe, Verdict::Up);
        assert!(!b.holds_consumers());
    }

    #[tokio::test]
    async fn probes_are_rate_bounded_and_shutdown_releases_waiters() {
        let b = std::sync::Arc::new(Breaker::new("test2", quick()));
        for _ in 0..3 {
            b.record(Admit::Send, Verdict::Down);
        }
        let token = CancellationToken::new();
        assert_eq!(b.admit(&token).await, Admit::Probe);
        // The probe is still out: nobody else may send until it answers.
        let waiter = {
            let (b, t) = (b.clone(), token.clone());
            tokio::spawn(async move { b.admit(&t).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        token.cancel();
        assert_eq!(waiter.await.unwrap(), Admit::Shutdown);
    }
}
