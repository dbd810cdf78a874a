//! The send stage against the stub destinations, on librdkafka's mock cluster: byte-for-byte
//! equality with `eventrelay map`, retries through 500s, 429 with Retry-After, timeouts, dead
//! letters, isolation of a destination that is down, and SIGKILL of the sender.

mod common;

use common::*;
use eventrelay::app::Role;
use eventrelay::app::Running;
use eventrelay::config::Config;
use eventrelay::tester::map_ndjson;
use eventrelay::testkit::stub::{Fault, Recorded, Stub};
use eventrelay::SendCount;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The mock cluster, a fault-free stub and a config sending to it with `delivery` settings
/// (TOML lines for every destination's section): the set-up most tests here start from.
async fn rig(delivery: &str) -> (eventrelay::Embedded, Stub, Config) {
    let kafka = cluster();
    let stub = Stub::start("127.0.0.1:0", None).await.unwrap();
    let cfg = config(kafka.bootstrap(), &stub.url(), "", delivery);
    (kafka, stub, cfg)
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ok(reqs: &[Recorded]) -> Vec<&Recorded> {
    reqs.iter().filter(|r| r.status == 200).collect()
}

fn message_id(r: &Recorded) -> String {
    r.headers["idempotency-key"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// What `eventrelay map` prints for these lines with this config: (method, url, body) per request.
fn expected_requests(cfg: &Config, lines: &[Vec<u8>]) -> Vec<(String, String, String)> {
    let dests: Vec<_> = cfg
        .destinations()
        .unwrap()
        .into_iter()
        .map(|d| d.dest)
        .collect();
    let input = lines.join(&b'\n');
    let mut out = Vec::new();
    map_ndjson(&dests, input.as_slice(), &mut out).unwrap();
    let mut reqs: Vec<(String, String, String)> = String::from_utf8(out)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let r = v.get("request")?;
            let body = match &r["body"] {
                Value::Null => String::new(),
                b => b.to_string(),
            };
            Some((
                r["method"].as_str()?.to_string(),
                r["url"].as_str()?.to_string(),
                body,
            ))
        })
        .collect();
    reqs.sort();
    reqs
}

fn example_lines() -> Vec<Vec<u8>> {
    eventrelay::testkit::sample_events(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivered_requests_equal_what_map_prints_byte_for_byte() {
    let (kafka, stub, cfg) = rig("").await;
    let lines = example_lines();
    let want = expected_requests(&cfg, &lines);
    let running = Running::start(&cfg, Role::All).await.unwrap();
    produce(&cfg, kafka.bootstrap(), "segment.events", &lines);
    wait_for("all requests", Duration::from_secs(90), || {
        ok(&stub.requests()).len() >= want.len()
    })
    .await;
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    let mut got: Vec<(String, String, String)> = ok(&stub.requests())
        .into_iter()
        .map(|r| (r.method.clone(), r.url.clone(), r.body.clone()))
        .collect();
    got.sort();
    assert_eq!(got.len(), want.len());
    assert_eq!(
        got, want,
        "the stub saw exactly what `eventrelay map` prints"
    );
    for r in stub.requests() {
        assert!(
            !message_id(&r).is_empty(),
            "Idempotency-Key on every request"
        );
    }
}

/// Wait until the map stage and both send stages (topic and retry topic) hold partitions.
async fn wait_ready(running: &Running) {
    let h = running.health.clone();
    wait_for(
        "consumer groups to form",
        Duration::from_secs(60),
        move || h.assigned.load(std::sync::atomic::Ordering::Relaxed) >= 20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_500_window_is_retried_until_everything_is_delivered() {
    let (kafka, stub, cfg) = rig("backoff_min_ms = 50\nbackoff_max_ms = 500").await;
    let lines = events(400, 20);
    let want = expected_requests(&cfg, &lines).len();
    let running = Running::start(&cfg, Role::All).await.unwrap();
    wait_ready(&running).await;
    stub.inject(Fault {
        status: Some(500),
        for_secs: Some(3.0),
        ..Default::default()
    });
    produce(&cfg, kafka.bootstrap(), "segment.events", &lines);
    wait_for(
        "delivery after the 500 window",
        Duration::from_secs(90),
        || {
            let ids: std::collections::HashSet<String> = ok(&stub.requests())
                .iter()
                .map(|r| format!("{}{}", r.method, message_id(r)))
                .collect();
            ids.len() >= want
        },
    )
    .await;
    let retried = running.send_stats.get("seg", SendCount::Retried)
        + running.send_stats.get("owneriq", SendCount::Retried);
    let failed = stub.requests().iter().filter(|r| r.status == 500).count();
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    eprintln!(
        "500 window: {failed} answers were 500, {retried} in-place retries, all {want} delivered"
    );
    assert!(failed > 0 && retried > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_on_429_is_honoured() {
    let (kafka, stub, cfg) = rig("backoff_min_ms = 50\nbackoff_max_ms = 200").await;
    let lines = vec![br#"{"type":"page","userId":"u1","messageId":"ra-1"}"#.to_vec()];
    // The first Seg request gets 429 with Retry-After: 2; backoff alone would retry in 50 ms.
    stub.inject(Fault {
        status: Some(429),
        retry_after: Some(2),
        count: Some(1),
        path_prefix: Some("/v1/".into()),
        ..Default::default()
    });
    let running = Running::start(&cfg, Role::All).await.unwrap();
    produce(&cfg, kafka.bootstrap(), "segment.events", &lines);
    wait_for("delivery after 429", Duration::from_secs(60), || {
        ok(&stub.requests()).iter().any(|r| r.url.contains("/v1/"))
    })
    .await;
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    let seg: Vec<_> = stub
        .requests()
        .into_iter()
        .filter(|r| r.url.contains("/v1/"))
        .collect();
    assert_eq!(seg.len(), 2, "{seg:?}");
    assert_eq!((seg[0].status, seg[1].status), (429, 200));
    let waited = seg[1].at_ms - seg[0].at_ms;
    assert!(
        waited >= 2000,
        "retried after {waited} ms, before Retry-After: 2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_400_lands_in_the_dlq_with_its_status() {
    let (kafka, stub, cfg) = rig("").await;
    stub.inject(Fault {
        status: Some(400),
        path_prefix: Some("/j/".into()),
        ..Default::default()
    });
    let running = Running::start(&cfg, Role::All).await.unwrap();
    let lines: Vec<Vec<u8>> = (0..10)
        .map(|i| format!(r#"{{"type":"page","userId":"u{i}","messageId":"bad-{i}"}}"#).into_bytes())
        .collect();
    produce(&cfg, kafka.bootstrap(), "segment.events", &lines);
    let dlq = tokio::task::spawn_blocking({
        let b = kafka.bootstrap().to_string();
        move || {
            read_topic(
                &b,
                "dest.owneriq.dlq",
                10,
                Duration::from_secs(60),
                Duration::from_secs(90),
            )
        }
    })
    .await
    .unwrap();
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(dlq.len(), 10);
    for m in &dlq {
        assert_eq!(header(m, "eventrelay.error.stage").as_deref(), Some("send"));
        assert_eq!(
            header(m, "eventrelay.error.reason").as_deref(),
            Some("http_400")
        );
        assert_eq!(header(m, "eventrelay.error.status").as_deref(), Some("400"));
        assert_eq!(header(m, "eventrelay.error.attempts").as_deref(), Some("1"));
        assert_eq!(
            header(m, "eventrelay.error.topic").as_deref(),
            Some("dest.owneriq")
        );
        assert!(
            decode(m).message_id.starts_with("bad-"),
            "the record as read"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeouts_are_retried() {
    let (kafka, stub, cfg) =
        rig("timeout_ms = 300\nbackoff_min_ms = 50\nbackoff_max_ms = 300").await;
    let running = Running::start(&cfg, Role::All).await.unwrap();
    wait_ready(&running).await;
    stub.inject(Fault {
        latency_ms: Some(1000),
        for_secs: Some(1.5),
        ..Default::default()
    });
    let lines: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            format!(r#"{{"type":"page","userId":"u{i}","messageId":"slow-{i}"}}"#).into_bytes()
        })
        .collect();
    produce(&cfg, kafka.bootstrap(), "segment.events", &lines);
    wait_for("delivery after timeouts", Duration::from_secs(60), || {
        let ids: std::collections::HashSet<String> = ok(&stub.requests())
            .iter()
            .map(|r| format!("{}{}", r.method, message_id(r)))
            .collect();
        ids.len() >= 40
    })
    .await;
    let retried = running.send_stats.get("seg", SendCount::Retried)
        + running.send_stats.get("owneriq", SendCount::Retried);
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    assert!(retried > 0, "timed-out attempts were retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owneriq_down_for_20_s_does_not_slow_seg() {
    let kafka = cluster();
    let oiq = Stub::start("127.0.0.1:0", None).await.unwrap();
    let seg = Stub::start("127.0.0.1:0", None).await.unwrap();
    let text = config_toml(
        kafka.bootstrap(),
        &seg.url(),
        "",
        "backoff_min_ms = 100\nbackoff_max_ms = 1000",
    )
    .replacen(
        &format!("endpoint = \"{}\"", seg.url()),
        &format!("endpoint = \"{}\"", oiq.url()),
        1,
    );
    let cfg = Config::from_toml(&text).unwrap();
    let lines = events(1_000, 25);
    let want = expected_requests(&cfg, &lines);
    let want_seg = want.iter().filter(|r| r.1.contains("/v1/")).count();
    let want_oiq = want.len() - want_seg;
    oiq.inject(Fault {
        down_secs: Some(20.0),
        ..Default::default()
    });
    let running = Running::start(&cfg, Role::All).await.unwrap();
    let started = Instant::now();
    produce(&cfg, kafka.bootstrap(), "segment.events", &lines);
    wait_for(
        "Seg deliveries while OwnerIQ is down",
        Duration::from_secs(30),
        || ok(&seg.requests()).len() >= want_seg,
    )
    .await;
    let seg_done = started.elapsed();
    assert!(oiq.requests().is_empty(), "OwnerIQ was down");
    wait_for(
        "OwnerIQ deliveries after it came back",
        Duration::from_secs(120),
        || {
            let ids: std::collections::HashSet<String> =
                ok(&oiq.requests()).iter().map(|r| message_id(r)).collect();
            ids.len() >= want_oiq
        },
    )
    .await;
    let oiq_done = started.elapsed();
    let via_retry_topic = running.send_stats.get("owneriq", SendCount::RetryTopic);
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    eprintln!("OwnerIQ down 20 s: Seg's {want_seg} deliveries done after {seg_done:?}; OwnerIQ's {want_oiq} after {oiq_done:?} ({via_retry_topic} went through the retry topic)");
    // The breaker held OwnerIQ's records while it was down instead of moving them on.
    assert_eq!(
        via_retry_topic, 0,
        "nothing moves to the retry topic because a destination is down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sender_sigkill_and_restart_delivers_everything() {
    let kafka = cluster();
    let b = kafka.bootstrap().to_string();
    let stub = Stub::start("127.0.0.1:0", None).await.unwrap();
    stub.inject(Fault {
        latency_ms: Some(5),
        ..Default::default()
    });
    let cfg = config(&b, &stub.url(), "", "concurrency = 8");
    let lines = events(3_000, 30);
    let want_seg = expected_requests(&cfg, &lines)
        .iter()
        .filter(|r| r.1.contains("/v1/"))
        .count();
    // Fill the destination topics with the map stage.
    let mapper = Running::start(&cfg, Role::Map).await.unwrap();
    produce(&cfg, &b, "segment.events", &lines);
    let bb = b.clone();
    tokio::task::spawn_blocking(move || {
        read_topic(
            &bb,
            "dest.seg",
            want_seg,
            Duration::from_secs(30),
            Duration::from_secs(90),
        )
    })
    .await
    .unwrap();
    mapper.shutdown(Duration::from_secs(30)).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eventrelay.toml");
    std::fs::write(&path, config_toml(&b, &stub.url(), "", "concurrency = 8")).unwrap();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_eventrelay"))
            .args(["run", "--role", "send", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let seg_ok = |s: &Stub| -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in ok(&s.requests()) {
            if r.url.contains("/v1/") {
                *m.entry(message_id(r)).or_insert(0) += 1;
            }
        }
        m
    };
    let mut child = spawn();
    wait_for("some deliveries", Duration::from_secs(60), || {
        seg_ok(&stub).len() > 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(
        100 + u64::from(std::process::id() % 400),
    ))
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    let before = seg_ok(&stub).len();
    let mut child = spawn();
    wait_for(
        "every record delivered after restart",
        Duration::from_secs(120),
        || seg_ok(&stub).len() >= want_seg,
    )
    .await;
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(child.wait().unwrap().success(), "SIGTERM exits 0");
    let counts = seg_ok(&stub);
    let dups: usize = counts.values().map(|c| c - 1).sum();
    eprintln!("sender SIGKILL: {before} distinct deliveries before the kill, {} after restart, {dups} duplicates", counts.len());
    assert_eq!(counts.len(), want_seg);
}

async fn circuit_gauge(running: &Running, dest: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{}/metrics", running.metrics_addr))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("eventrelay_circuit_state{{destination=\"{dest}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destination_down_opens_its_circuit_and_is_probed_not_hammered() {
    let (kafka, stub, cfg) = rig("backoff_min_ms = 100\nbackoff_max_ms = 1000\nbreaker_failures = 5\nbreaker_open_ms = 500\nbreaker_open_max_ms = 1000\nbreaker_probe_interval_ms = 500").await;
    let lines = events(2_000, 50);
    let want = expected_requests(&cfg, &lines);
    let want_seg = want.iter().filter(|r| r.1.contains("/v1/")).count();
    let outage = Duration::from_secs(8);
    let running = Running::start(&cfg, Role::All).await.unwrap();
    stub.inject(Fault {
        status: Some(503),
        for_secs: Some(outage.as_secs_f64()),
        path_prefix: Some("/v1/".into()),
        ..Default::default()
    });
    let started = Instant::now();
    produce(&cfg, kafka.bootstrap(), "segment.events", &lines);
    let mut open_seen = false;
    while started.elapsed() < outage {
        open_seen |= circuit_gauge(&running, "seg").await == Some(2.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during = stub
        .requests()
        .iter()
        .filter(|r| r.url.contains("/v1/") && r.status == 503)
        .count();
    wait_for(
        "every Seg request after the outage",
        Duration::from_secs(60),
        || {
            let ids: std::collections::HashSet<String> = ok(&stub.requests())
                .iter()
                .filter(|r| r.url.contains("/v1/"))
                .map(|r| message_id(r))
                .collect();
            ids.len() >= want_seg
        },
    )
    .await;
    let recovered = started.elapsed().saturating_sub(outage);
    let closed = circuit_gauge(&running, "seg").await;
    let via_retry_topic = running.send_stats.get("seg", SendCount::RetryTopic);
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    eprintln!("Seg down {outage:?}: {during} requests reached it during the outage; all {want_seg} delivered {recovered:?} after it came back");
    assert!(open_seen, "the circuit gauge showed open during the outage");
    assert_eq!(closed, Some(0.0), "closed again after the outage");
    // Without the breaker 64 lanes retry in place, about 60 requests per second each.
    assert!(
        during <= 150,
        "{during} requests during an {outage:?} outage"
    );
    assert_eq!(
        via_retry_topic, 0,
        "nothing moved to the retry topic because Seg was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_slow_user_does_not_hold_up_the_others() {
    let (kafka, stub, cfg) = rig("").await;
    let running = Running::start(&cfg, Role::All).await.unwrap();
    let seg_ok = |stub: &Stub, skip: &str| {
        ok(&stub.requests())
            .iter()
            .filter(|r| r.url.contains("/v1/") && !r.body.contains(skip))
            .count()
    };
    // Healthy: 2,000 events of 50 users, every one a Seg request.
    let healthy = events(2_000, 50);
    let started = Instant::now();
    produce(&cfg, kafka.bootstrap(), "segment.events", &healthy);
    wait_for("healthy deliveries", Duration::from_secs(60), || {
        seg_ok(&stub, "\u{0}") >= healthy.len()
    })
    .await;
    let healthy_time = started.elapsed();
    // Now one user's requests take 5 s each, and that user sends 200 events (more than its
    // lane holds) among 2,000 of the other users.
    stub.clear_requests();
    stub.inject(Fault {
        latency_ms: Some(5_000),
        contains: Some("\"userId\":\"slow-user\"".into()),
        ..Default::default()
    });
    let mut lines = Vec::new();
    for (i, line) in events(2_000, 50).into_iter().enumerate() {
        let line = String::from_utf8(line).unwrap().replace("\"m-", "\"n-");
        lines.push(line.into_bytes());
        if i % 10 == 0 {
            lines.push(
                serde_json::json!({"type": "track", "event": "Viewed Product", "userId": "slow-user",
                    "messageId": format!("slow-{i}"), "properties": {"seq": i}})
                .to_string()
                .into_bytes(),
            );
        }
    }
    let others = 2_000;
    let started = Instant::now();
    produce(&cfg, kafka.bootstrap(), "segment.events", &lines);
    let half = Instant::now();
    wait_for(
        "half of the other users' deliveries",
        Duration::from_secs(60),
        || seg_ok(&stub, "slow-user") >= others / 2,
    )
    .await;
    let half_time = half.duration_since(started) + half.elapsed();
    stub.clear_faults();
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    eprintln!("healthy: {} deliveries in {healthy_time:?}; with one user at 5 s per request: half of the other users' {others} in {half_time:?}", healthy.len());
    // Half the deliveries in the time all of them took when healthy, i.e. at least half the
    // healthy rate (plus slack for a noisy machine).
    assert!(
        half_time <= healthy_time + Duration::from_secs(2),
        "other users slowed down: half took {half_time:?}, all took {healthy_time:?} when healthy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_due_retry_never_waits_behind_a_long_retry_after() {
    let (kafka, stub, cfg) = rig("backoff_min_ms = 100\nbackoff_max_ms = 400").await;
    // A's first Seg request gets 429 with a Retry-After of 20 s (longer than the longest tier,
    // 2 s here); B's first three (the attempt and both in-place retries) get 503.
    stub.inject(Fault {
        status: Some(429),
        retry_after: Some(20),
        count: Some(1),
        contains: Some("\"userId\":\"user-a\"".into()),
        ..Default::default()
    });
    stub.inject(Fault {
        status: Some(503),
        count: Some(3),
        contains: Some("\"userId\":\"user-b\"".into()),
        ..Default::default()
    });
    let running = Running::start(&cfg, Role::All).await.unwrap();
    let line = |user: &str, id: &str| {
        serde_json::json!({"type": "track", "event": "Viewed Product", "userId": user,
            "messageId": id, "properties": {"sku": "1"}})
        .to_string()
        .into_bytes()
    };
    let started = Instant::now();
    produce(
        &cfg,
        kafka.bootstrap(),
        "segment.events",
        &[line("user-a", "a-1")],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    produce(
        &cfg,
        kafka.bootstrap(),
        "segment.events",
        &[line("user-b", "b-1")],
    );
    let delivered = |stub: &Stub, id: &str| {
        ok(&stub.requests())
            .iter()
            .any(|r| r.url.contains("/v1/") && message_id(r) == id)
    };
    wait_for("B delivered", Duration::from_secs(15), || {
        delivered(&stub, "b-1")
    })
    .await;
    let b_time = started.elapsed();
    assert!(!delivered(&stub, "a-1"), "A waits for its Retry-After");
    wait_for("A delivered", Duration::from_secs(40), || {
        delivered(&stub, "a-1")
    })
    .await;
    let a_time = started.elapsed();
    let a_attempts = stub
        .requests()
        .iter()
        .filter(|r| r.url.contains("/v1/") && message_id(r) == "a-1")
        .count();
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    eprintln!("B (503 ×3) delivered after {b_time:?}; A (429, Retry-After 20 s) after {a_time:?} in {a_attempts} attempts");
    assert!(b_time < Duration::from_secs(10), "B waited {b_time:?}");
    assert!(
        a_time >= Duration::from_secs(20),
        "Retry-After honoured: {a_time:?}"
    );
    assert_eq!(
        a_attempts, 2,
        "no attempt while hopping through the longest tier"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_lanes_pause_and_resume_without_losing_or_repeating_a_record() {
    let kafka = cluster();
    let stub = Stub::start("127.0.0.1:0", None).await.unwrap();
    // Two lanes of 64: the consumer stashes and pauses partitions all the time.
    let cfg = config(kafka.bootstrap(), &stub.url(), "", "concurrency = 2");
    let lines = events(3_000, 40);
    let want = expected_requests(&cfg, &lines);
    stub.inject(Fault {
        latency_ms: Some(2),
        ..Default::default()
    });
    let running = Running::start(&cfg, Role::All).await.unwrap();
    produce(&cfg, kafka.bootstrap(), "segment.events", &lines);
    wait_for("every request", Duration::from_secs(120), || {
        stub.request_count() >= want.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    let reqs = stub.requests();
    let mut seen: HashMap<(bool, String), usize> = HashMap::new();
    for r in &reqs {
        *seen
            .entry((r.url.contains("/v1/"), message_id(r)))
            .or_default() += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(repeated.is_empty(), "delivered twice: {repeated:?}");
    assert_eq!(reqs.len(), want.len(), "every request once");
}

/// The broker down mid-run (connections dropped and refused, its data kept: a broker stopped
/// and restarted on the same storage), then back: every event is delivered to both
/// destinations, and the process rides it out without a restart. `EVENTRELAY_OUTAGE_SECS`
/// sets the outage (5 s here; `scripts/chaos.sh` runs it for minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_loses_nothing() {
    let outage = std::env::var("EVENTRELAY_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(5.0);
    let (kafka, stub, cfg) = rig("backoff_min_ms = 50\nbackoff_max_ms = 500").await;
    let lines = events(600, 40);
    let want: std::collections::HashSet<(String, String)> = expected_requests(&cfg, &lines)
        .into_iter()
        .map(|(method, url, body)| (method, format!("{url}{body}")))
        .collect();
    let running = Running::start(&cfg, Role::All).await.unwrap();
    wait_ready(&running).await;
    let (first, second) = lines.split_at(300);
    produce(&cfg, kafka.bootstrap(), "segment.events", first);
    wait_for("the first deliveries", Duration::from_secs(60), || {
        ok(&stub.requests()).len() >= 50
    })
    .await;
    kafka.broker_down().unwrap();
    let down_at = ok(&stub.requests()).len();
    tokio::time::sleep(Duration::from_secs_f64(outage)).await;
    kafka.broker_up().unwrap();
    let up = Instant::now();
    produce(&cfg, kafka.bootstrap(), "segment.events", second);
    let delivered = || -> std::collections::HashSet<(String, String)> {
        ok(&stub.requests())
            .into_iter()
            .map(|r| (r.method.clone(), format!("{}{}", r.url, r.body)))
            .collect()
    };
    wait_for(
        "every request after the broker came back",
        Duration::from_secs(180),
        || delivered().is_superset(&want),
    )
    .await;
    let after = up.elapsed();
    assert!(
        !running.stage_ended.is_cancelled(),
        "no stage stopped during the outage"
    );
    let total = ok(&stub.requests()).len();
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    eprintln!(
        "broker down {outage:.0} s after {down_at} deliveries: all {} requests delivered {:.1} s after it came back ({} deliveries, {} duplicates)",
        want.len(),
        after.as_secs_f64(),
        total,
        total - want.len()
    );
    // Where duplicates come from: copies in the destination topics (the map stage read its
    // input again) and how often each request reached the stub (the sender read again).
    for topic in ["dest.seg", "dest.owneriq"] {
        let m = read_topic(
            kafka.bootstrap(),
            topic,
            usize::MAX,
            Duration::from_secs(2),
            Duration::from_secs(20),
        );
        eprintln!(
            "broker outage: {topic} holds {} records, {} distinct",
            m.len(),
            message_counts(&m).len()
        );
    }
    let mut times: HashMap<String, usize> = HashMap::new();
    for r in ok(&stub.requests()) {
        *times
            .entry(format!("{}{}", r.method, message_id(r)))
            .or_default() += 1;
    }
    let mut spread = std::collections::BTreeMap::<usize, usize>::new();
    for n in times.values() {
        *spread.entry(*n).or_default() += 1;
    }
    eprintln!("broker outage: requests by times delivered {spread:?}");
}

/// A record in the shortest retry tier (500 ms) whose due-time header says six months from
/// now (hand-made, or written by an instance whose clock ran far ahead): it waits at most its
/// tier plus 5 s of clock slack after it was written, not six months, and is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_due_far_ahead_waits_no_longer_than_its_tier() {
    use eventrelay::destinations::Routed;
    use eventrelay::headers::{retry, Origin, RetryState};
    use prost::Message as _;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let (kafka, stub, cfg) = rig("").await;
    let seg = cfg
        .destinations()
        .unwrap()
        .into_iter()
        .find(|d| d.dest.name() == "seg")
        .unwrap();
    let tier = seg.delivery.retry_tiers[0];
    let line = serde_json::json!({"type": "track", "event": "Viewed Product", "userId": "user-far",
        "messageId": "far-1", "properties": {"sku": "1"}})
    .to_string()
    .into_bytes();
    let now = eventrelay::event::now_millis();
    let (_, routed) =
        eventrelay::map_input(std::slice::from_ref(&seg.dest), &line, None, now).unwrap();
    let Some(Routed::Records(records)) = routed.into_iter().next() else {
        panic!("Seg takes the event");
    };
    let running = Running::start(&cfg, Role::All).await.unwrap();
    wait_ready(&running).await;
    let origin = Origin {
        topic: "dest.seg".into(),
        partition: 0,
        offset: 0,
    };
    let headers = retry(&RetryState {
        due_ms: now + 180 * 24 * 3600 * 1000,
        attempts: 1,
        first_attempt_ms: now,
        not_before_ms: None,
        origin: &origin,
        last_error: "HTTP 503",
    });
    let payload = records[0].encode_to_vec();
    let topic = cfg.kafka.retry_topic("seg", tier);
    let p: BaseProducer = eventrelay::client_config(&cfg.kafka, kafka.bootstrap())
        .create()
        .unwrap();
    p.send(
        BaseRecord::to(&topic)
            .key("user-far")
            .payload(&payload)
            .headers(headers),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    wait_for("the record delivered", Duration::from_secs(60), || {
        ok(&stub.requests())
            .iter()
            .any(|r| message_id(r) == "far-1")
    })
    .await;
    let waited = started.elapsed();
    running.shutdown(Duration::from_secs(30)).await.unwrap();
    eprintln!("due six months ahead in the {tier:?} tier: delivered after {waited:?}");
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(20),
        "waited {waited:?}: the tier ({tier:?}) plus the 5 s slack, not the header's six months"
    );
}
