//! Ingest (Segment's HTTP Tracking API) against librdkafka's mock cluster: what each answer
//! means (200 only after the broker has the events, 401, 400, 503) and what reaches the topic.

mod common;

use common::read_topic;
use eventrelay::config::Config;
use eventrelay::ingest::Ingest;
use eventrelay::Embedded;
use rdkafka::Message;
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const KEY: &str = "wk-test";

fn config(bootstrap: &str, extra_ingest: &str, kafka_props: &str) -> Config {
    Config::from_toml(&format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
[kafka.properties]
{kafka_props}
[metrics]
listen = "127.0.0.1:0"
[ingest]
listen = "127.0.0.1:0"
write_keys = ["{KEY}", "other-key"]
{extra_ingest}
"#
    ))
    .expect("config")
}

/// A running ingest server; dropping the sender stops it.
struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    http: reqwest::Client,
}

async fn start(cfg: &Config, bootstrap: &str) -> Server {
    eventrelay::ops::init_logging("human", "warn");
    let ingest = Ingest::bind(cfg, bootstrap).await.expect("bind");
    let addr = ingest.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(ingest.serve(async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        _stop: tx,
        http: reqwest::Client::new(),
    }
}

impl Server {
    async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        key: Option<&str>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.basic_auth(k, Some(""));
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v, headers)
    }
}

async fn read(bootstrap: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let b = bootstrap.to_string();
    tokio::task::spawn_blocking(move || {
        read_topic(
            &b,
            "segment.events",
            n,
            Duration::from_secs(3),
            Duration::from_secs(20),
        )
    })
    .await
    .expect("reader")
}

fn json_of(m: &rdkafka::message::OwnedMessage) -> Value {
    serde_json::from_slice(m.payload().expect("payload")).expect("json")
}

fn key_of(m: &rdkafka::message::OwnedMessage) -> String {
    String::from_utf8_lossy(m.key().expect("key")).into_owned()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_are_on_the_topic_with_fields_filled() {
    let metrics = eventrelay::ops::install_metrics().expect("metrics");
    let kafka = Embedded::start(&["segment.events".to_string()], 4).expect("kafka");
    let b = kafka.bootstrap();
    let srv = start(&config(b, "", ""), b).await;

    // One call, key in the Basic header, client clock 1 hour behind.
    let now = chrono::Utc::now();
    let skewed = now - chrono::Duration::hours(1);
    let iso =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let track = json!({"userId": "user-1", "event": "Order Completed", "messageId": "m-track",
        "properties": {"orderId": "o1", "total": 27.5},
        "timestamp": iso(skewed - chrono::Duration::seconds(30)), "sentAt": iso(skewed)});
    let (status, body, headers) = srv.post("/v1/track", track.to_string(), Some(KEY)).await;
    assert_eq!((status, &body), (200, &json!({"success": true})));
    assert_eq!(headers["access-control-allow-origin"], "*");

    // A batch, key in the body, batch-level context and sentAt; the browser's short path too.
    let batch = json!({"writeKey": KEY, "sentAt": iso(now), "context": {"ip": "10.1.2.3"},
    "batch": [
        {"type": "identify", "userId": "user-2", "traits": {"email": "a@example.com"}},
        {"type": "page", "anonymousId": "anon-3", "name": "Home", "context": {"ip": "own"}},
        {"type": "alias", "userId": "user-4", "previousId": "anon-4"}
    ]});
    assert_eq!(srv.post("/v1/batch", batch.to_string(), None).await.0, 200);
    let short = json!({"writeKey": "other-key", "anonymousId": "anon-5", "name": "Settings"});
    assert_eq!(srv.post("/v1/s", short.to_string(), None).await.0, 200);
    let import = json!({"batch": [{"type": "group", "userId": "user-6", "groupId": "g1"}]});
    assert_eq!(
        srv.post("/v1/import", import.to_string(), Some(KEY))
            .await
            .0,
        200
    );

    // 200 means acknowledged: every event is readable now.
    let msgs = read(b, 6).await;
    assert_eq!(msgs.len(), 6, "exactly the accepted events");
    let by_key: std::collections::HashMap<String, Value> =
        msgs.iter().map(|m| (key_of(m), json_of(m))).collect();
    let t = &by_key["user-1"];
    assert_eq!(t["type"], "track");
    assert_eq!(t["messageId"], "m-track");
    assert_eq!(t["properties"]["total"], 27.5);
    assert!(t.get("writeKey").is_none());
    // Skew corrected: timestamp ≈ receivedAt − 30 s, not an hour off.
    let ts = eventrelay::event::parse_timestamp(t["timestamp"].as_str().unwrap()).unwrap();
    let rec = eventrelay::event::parse_timestamp(t["receivedAt"].as_str().unwrap()).unwrap();
    assert!((rec - ts - 30_000).abs() < 2_000, "corrected timestamp {t}");
    assert_eq!(
        t["originalTimestamp"],
        iso(skewed - chrono::Duration::seconds(30))
    );

    let id = &by_key["user-2"];
    assert_eq!(id["type"], "identify");
    assert_eq!(id["context"]["ip"], "10.1.2.3");
    assert_eq!(id["sentAt"], iso(now));
    assert_eq!(
        id["messageId"].as_str().unwrap().len(),
        36,
        "messageId filled"
    );
    assert!(id["receivedAt"].is_string() && id["timestamp"].is_string());
    assert_eq!(
        by_key["anon-3"]["context"]["ip"], "own",
        "the event's own context wins"
    );
    assert_eq!(by_key["user-4"]["previousId"], "anon-4");
    assert_eq!(
        by_key["anon-5"]["type"], "screen",
        "the path gives the type"
    );
    assert_eq!(by_key["user-6"]["groupId"], "g1");

    let text = metrics.render();
    assert!(
        text.contains(r#"eventrelay_ingest_requests_total{path="/v1/track",status="200"} 1"#),
        "{text}"
    );
    assert!(text.contains("eventrelay_ingest_events_total 6"), "{text}");
    assert!(
        text.contains("eventrelay_ingest_request_duration_seconds"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_missing_keys_get_401_and_bad_bodies_400() {
    let kafka = Embedded::start(&["segment.events".to_string()], 4).expect("kafka");
    let b = kafka.bootstrap();
    let srv = start(&config(b, "", ""), b).await;
    let ev = json!({"userId": "u", "event": "E"}).to_string();

    let (s, body, _) = srv.post("/v1/track", ev.clone(), None).await;
    assert_eq!((s, body["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(body["success"], false);
    assert_eq!(srv.post("/v1/track", ev.clone(), Some("nope")).await.0, 401);
    let wrong_body_key = json!({"writeKey": "nope", "userId": "u", "event": "E"});
    assert_eq!(
        srv.post("/v1/track", wrong_body_key.to_string(), None)
            .await
            .0,
        401
    );

    let big = json!({"userId": "u", "event": "E", "properties": {"blob": "x".repeat(33 * 1024)}});
    let (s, body, _) = srv.post("/v1/track", big.to_string(), Some(KEY)).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("too_large")),
        "{body}"
    );
    let in_batch = json!({"batch": [{"type": "track", "userId": "u", "event": "E"},
        {"type": "track", "userId": "u", "event": "E", "properties": {"blob": "x".repeat(33 * 1024)}}]});
    let (s, body, _) = srv.post("/v1/batch", in_batch.to_string(), Some(KEY)).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("too_large")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("batch[1]"),
        "{body}"
    );

    let (s, body, _) = srv.post("/v1/batch", "{\"batch\": [", Some(KEY)).await;
    assert_eq!((s, body["code"].as_str()), (400, Some("invalid_json")));
    assert_eq!(srv.post("/v1/track", "[1,2]", Some(KEY)).await.0, 400);

    // 20 events of 30 KB: each within the event limit, together over 500 KB.
    let events: Vec<Value> = (0..20)
        .map(|i| {
            json!({"type": "track", "userId": format!("u{i}"), "event": "E",
            "properties": {"blob": "y".repeat(30 * 1024)}})
        })
        .collect();
    let over = json!({"batch": events}).to_string();
    assert!(over.len() > 500 * 1024);
    let (s, body, _) = srv.post("/v1/batch", over.clone(), Some(KEY)).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("too_large")),
        "{body}"
    );
    // Gzip does not get around it: the limit is on the decoded body.
    let resp = srv
        .http
        .post(format!("http://{}/v1/batch", srv.addr))
        .basic_auth(KEY, Some(""))
        .header("content-encoding", "gzip")
        .body(gzip(over.as_bytes()))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);

    assert_eq!(srv.post("/v1/nothing", "{}", Some(KEY)).await.0, 404);

    // Nothing of the above reached the topic.
    let msgs = read(b, 1).await;
    assert!(
        msgs.is_empty(),
        "rejected requests produced {} events",
        msgs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_are_accepted() {
    let kafka = Embedded::start(&["segment.events".to_string()], 4).expect("kafka");
    let b = kafka.bootstrap();
    let srv = start(&config(b, "", ""), b).await;
    let events: Vec<Value> = (0..100)
        .map(|i| {
            json!({"type": "track", "userId": format!("u{}", i % 7), "event": "Product Viewed",
            "messageId": format!("gz-{i}"), "properties": {"sku": format!("s{i}")}})
        })
        .collect();
    let body = json!({"writeKey": KEY, "batch": events}).to_string();
    let resp = srv
        .http
        .post(format!("http://{}/v1/batch", srv.addr))
        .header("content-encoding", "gzip")
        .header("content-type", "application/json")
        .body(gzip(body.as_bytes()))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let msgs = read(b, 100).await;
    let mut ids: Vec<String> = msgs
        .iter()
        .map(|m| json_of(m)["messageId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100);
    // Keyed by userId: one user's events share a partition.
    let mut part = std::collections::HashMap::new();
    for m in &msgs {
        let p = part.entry(key_of(m)).or_insert(m.partition());
        assert_eq!(*p, m.partition());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_gone_is_503_with_retry_after() {
    // Nothing listens on port 1: the producer never gets an acknowledgement.
    let cfg = config(
        "127.0.0.1:1",
        "ack_timeout_ms = 1500\nretry_after_secs = 7",
        "",
    );
    let srv = start(&cfg, "127.0.0.1:1").await;
    let ev = json!({"userId": "u", "event": "E"}).to_string();
    let t = Instant::now();
    let (s, body, headers) = srv.post("/v1/track", ev, Some(KEY)).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (503, Some("broker_unavailable")),
        "{body}"
    );
    assert_eq!(headers["retry-after"], "7");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "answered within the ack timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_producer_queue_is_503_at_once() {
    let cfg = config(
        "127.0.0.1:1",
        "ack_timeout_ms = 60000",
        "\"queue.buffering.max.messages\" = \"3\"",
    );
    let srv = start(&cfg, "127.0.0.1:1").await;
    let events: Vec<Value> = (0..10)
        .map(|i| json!({"type": "track", "userId": format!("u{i}"), "event": "E"}))
        .collect();
    let t = Instant::now();
    let (s, body, headers) = srv
        .post("/v1/batch", json!({"batch": events}).to_string(), Some(KEY))
        .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (503, Some("queue_full")),
        "{body}"
    );
    assert!(headers.contains_key("retry-after"));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "no wait for a full queue"
    );
}

/// `eventrelay run --role ingest` killed with SIGKILL while batches are being posted: every
/// event of every request answered 200 is on the topic (the 200 waited for the broker's ack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_that_was_answered_200() {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    // All topics: `run` checks that the ones it uses exist (the mock has no admin API).
    let kafka = common::cluster();
    let b = kafka.bootstrap().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ingest.toml");
    let log = dir.path().join("log");
    std::fs::write(
        &path,
        format!(
            "[kafka]\nbootstrap_servers = \"{b}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[ingest]\nlisten = \"127.0.0.1:0\"\nwrite_keys = [\"{KEY}\"]\n"
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_eventrelay"))
        .args([
            "--log-format",
            "json",
            "run",
            "--role",
            "ingest",
            "--config",
        ])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn eventrelay");
    // The bound address, from the JSON log (port 0: no race for a free port).
    let t = Instant::now();
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text.lines().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            let f = &v["fields"];
            f["message"]
                .as_str()?
                .contains("ingest: serving")
                .then(|| f["addr"].as_str().map(str::to_string))?
        });
        if let Some(a) = found {
            break a;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "ingest did not start: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/batch");
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut posters = Vec::new();
    for _ in 0..4 {
        let (http, url, acked, next) = (http.clone(), url.clone(), acked.clone(), next.clone());
        posters.push(tokio::spawn(async move {
            // Bounded: at most 2,000 requests in all; stops at the first failure (the kill).
            loop {
                let r = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if r >= 2000 {
                    break;
                }
                let events: Vec<Value> = (0..50)
                    .map(|j| {
                        json!({"type": "track", "userId": format!("u{}", j % 9), "event": "E",
                        "messageId": format!("k-{r}-{j}")})
                    })
                    .collect();
                let body = json!({"batch": events}).to_string();
                match http
                    .post(&url)
                    .basic_auth(KEY, Some(""))
                    .body(body)
                    .send()
                    .await
                {
                    Ok(resp) if resp.status().is_success() => acked.lock().unwrap().push(r),
                    _ => break,
                }
            }
        }));
    }
    // Kill once a fair number of requests were answered, with others in flight.
    let t = Instant::now();
    while acked.lock().unwrap().len() < 40 && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    for p in posters {
        let _ = p.await;
    }
    let acked: Vec<usize> = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 40,
        "only {} requests answered before the kill",
        acked.len()
    );
    let sent = next.load(std::sync::atomic::Ordering::Relaxed).min(2000);
    assert!(sent > acked.len(), "the kill landed after the last request");

    let msgs = tokio::task::spawn_blocking(move || {
        common::read_topic(
            &b,
            "segment.events",
            usize::MAX,
            Duration::from_secs(3),
            Duration::from_secs(30),
        )
    })
    .await
    .expect("reader");
    let on_topic: HashSet<String> = msgs
        .iter()
        .filter_map(|m| json_of(m)["messageId"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<String> = acked
        .iter()
        .flat_map(|r| (0..50).map(move |j| format!("k-{r}-{j}")))
        .filter(|id| !on_topic.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events answered 200 are not on the topic, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!(
        "sigkill: {} requests answered 200 ({} events), all on the topic; {} events on the topic in all",
        acked.len(),
        acked.len() * 50,
        on_topic.len()
    );
}
