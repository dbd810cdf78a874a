//! Send stage benchmarks. `cargo bench --bench sender -- [--records N] [--rounds R]
//! [--latency-secs S] [--concurrency N] [--property KEY=VALUE]`
//! and `cargo bench --bench sender -- --bootstrap HOST:PORT --backlog N [--watch-secs S]`
//! (`scripts/bench_send.sh` runs both, the second on tansu).
//!
//! Throughput and latency (embedded mock cluster, 16 partitions because the mock keeps 5 MB per
//! partition): `dest.seg` is filled with N Seg records mapped from the benchmark corpus; the
//! stub runs as its own process (`eventrelay stub`), as a real destination would be elsewhere;
//! the Seg send stage (concurrency 64 or `--concurrency N`, no faults) starts and the time from
//! its first delivery to its N-th is measured (counted in this process, as the ceiling counts
//! its answers), against the HTTP ceiling measured just before on the same stub; that is done
//! R times (default 5; the stage stopped between rounds, N fresh records each time), and the
//! median of the rounds' ratios is the headline. The steady state (between the 10th and the 90th percent
//! of a round's requests) is printed beside the whole run: a lane holds one user's records in
//! order, so a finite backlog ends with the lanes that got the most records still working,
//! while the ceiling's requests share one counter and end together. Then records are produced at half that rate, each stamped
//! with its produce time and a unique messageId, and the produce-to-request latency of each is
//! read from the stub's recording (p50, p99). The CPU time of this process (sender, mock
//! broker) and of the stub process during the throughput run is printed too: on 2 cores the
//! stub's share is capacity the sender does not get.
//!
//! Backlog RSS (`--bootstrap`, `--backlog N`): N Seg records are produced to `dest.seg` on the
//! given broker, then `eventrelay run --role send` starts as a child process with Seg's
//! endpoint on a port where nothing listens (the destination is down). Its resident memory is
//! sampled every second for `--watch-secs` (default 60) while it works through the backlog,
//! handing records to `dest.seg.retry.<tier>`.

#[path = "corpus.rs"]
mod corpus;

use eventrelay::app::Role;
use eventrelay::app::Running;
use eventrelay::config::Config;
use eventrelay::destinations::Routed;
use eventrelay::map_input;
use eventrelay::record::Record;
use eventrelay::{client_config, ensure_topics, Embedded, SendCount};
use prost::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Counts heap allocations, so the bench can print how many each delivery and each ceiling
/// request makes (a count does not move with the machine's load, unlike CPU time).
struct Counting;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::alloc::System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::alloc::System.realloc(ptr, layout, size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

const WEBSITE: &str = "abc8fb18-7559-4324-9921-a4b5015b4a1c";
const TOPICS: [&str; 8] = [
    "segment.events",
    "segment.events.dlq",
    "dest.seg",
    "dest.seg.retry.10s",
    "dest.seg.retry.1m",
    "dest.seg.retry.5m",
    "dest.seg.retry.30m",
    "dest.seg.dlq",
];

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match arg::<String>(&args, "--bootstrap") {
        Some(b) => backlog_rss(
            &b,
            arg(&args, "--backlog").unwrap_or(1_000_000),
            arg(&args, "--watch-secs").unwrap_or(60),
        ),
        None => throughput_and_latency(
            arg(&args, "--records").unwrap_or(40_000),
            arg(&args, "--latency-secs").unwrap_or(10.0),
        ),
    }
}

/// Seg records (key, decoded record) mapped from the benchmark corpus.
fn seg_records() -> Vec<(String, Record)> {
    let cfg = Config::from_toml(&format!(
        "[destinations.seg]\nendpoint = \"http://x\"\nwebsite_id = \"{WEBSITE}\"\n"
    ))
    .expect("config");
    let dests: Vec<_> = cfg
        .destinations()
        .expect("dests")
        .into_iter()
        .map(|d| d.dest)
        .collect();
    corpus::corpus(5_000)
        .iter()
        .filter_map(
            |e| match map_input(&dests, e, None, eventrelay::event::now_millis()) {
                Ok((ev, routed)) => match routed.into_iter().next() {
                    Some(Routed::Records(mut r)) => Some((ev.user_key().to_string(), r.remove(0))),
                    _ => None,
                },
                Err(_) => None,
            },
        )
        .collect()
}

fn send(p: &BaseProducer, key: &str, value: &[u8]) {
    let mut rec = BaseRecord::<str, [u8]>::to("dest.seg")
        .key(key)
        .payload(value);
    while let Err((_, r)) = p.send(rec) {
        rec = r;
        p.poll(Duration::from_millis(5));
    }
    p.poll(Duration::ZERO);
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_eventrelay")
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat`.
fn cpu_secs(pid: u32) -> f64 {
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

/// User + system CPU seconds from a `stat` file of `/proc` (a process's or a thread's).
fn stat_cpu_secs(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / ticks
}

/// CPU seconds of this process's threads whose name starts with `prefix` (`rdk:mock`: the
/// in-process mock broker, which a real deployment does not run).
fn thread_cpu_secs(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok())
        .map(|tid| stat_cpu_secs(&format!("/proc/self/task/{tid}/stat")))
        .sum()
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// A plain blocking `GET` on loopback (the answer's body, or empty).
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_stub() -> (Kill, String) {
    let mut child = Command::new(bin())
        .args(["stub", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("eventrelay stub");
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout");
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("stub url");
    (Kill(child), line.trim().to_string())
}

/// One throughput round: the sender's rate and the ceiling's, with what each cost.
struct Round {
    rate: f64,
    ceiling: f64,
    /// Both between the 10th and the 90th percent of the round's requests.
    steady: f64,
    ceiling_steady: f64,
    attempt_ms: f64,
    cores: f64,
    stub_cores: f64,
    cpu_us: f64,
    mock_us: f64,
    ceiling_cpu_us: f64,
    ceiling_stub_us: f64,
    /// Heap allocations in this process per delivery (sender) and per request (ceiling).
    allocs: f64,
    ceiling_allocs: f64,
}

/// URL, headers and body of one request, for the ceiling.
type PlainRequest = (
    reqwest::Url,
    Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    bytes::Bytes,
);

/// Requests/s from reqwest alone: `n` of `reqs` (cycled) at the bench's concurrency; over the
/// whole run, and between the 10th and the 90th percent of answers (the steady state).
async fn http_ceiling(reqs: &[PlainRequest], n: usize) -> (f64, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let reqs = std::sync::Arc::new(reqs.to_vec());
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let marks = std::sync::Arc::new([std::sync::OnceLock::new(), std::sync::OnceLock::new()]);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency())
        .map(|_| {
            let (client, reqs, next) = (client.clone(), reqs.clone(), next.clone());
            let (done, marks) = (done.clone(), marks.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let (url, headers, body) = &reqs[i % reqs.len()];
                    // Parsed before the clock started, as the sender's lanes parse a URL once.
                    let mut rb = client.post(url.clone()).body(body.clone());
                    for (k, v) in headers {
                        rb = rb.header(k.clone(), v.clone());
                    }
                    if let Ok(r) = rb.send().await {
                        let _ = r.bytes().await;
                    }
                    let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    for (mark, at) in marks.iter().zip([n / 10, n * 9 / 10]) {
                        if d == at {
                            let _ = mark.set(Instant::now());
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let whole = n as f64 / started.elapsed().as_secs_f64();
    (
        whole,
        steady_rate(n, marks[0].get().copied(), marks[1].get().copied()),
    )
}

/// Requests/s between the 10th and the 90th percent of `n`, given when each was reached.
fn steady_rate(n: usize, p10: Option<Instant>, p90: Option<Instant>) -> f64 {
    match (p10, p90) {
        (Some(a), Some(b)) if b > a => (n * 9 / 10 - n / 10) as f64 / (b - a).as_secs_f64(),
        _ => f64::NAN,
    }
}

/// `--concurrency N` (default 64): the sender's lanes, and the ceiling's concurrent requests.
fn concurrency() -> usize {
    let args: Vec<String> = std::env::args().collect();
    arg(&args, "--concurrency").unwrap_or(64)
}

/// Mean duration of one HTTP attempt as the sender timed it (its histogram's sum / count).
async fn mean_attempt_ms(http: &reqwest::Client, metrics: std::net::SocketAddr) -> f64 {
    let text = match http.get(format!("http://{metrics}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return f64::NAN,
    };
    let samples = eventrelay::ops::status::parse_metrics(&text);
    let get = |name: &str| {
        samples
            .iter()
            .filter(|s| s.name == name && s.label("destination") == Some("seg"))
            .map(|s| s.value)
            .sum::<f64>()
    };
    get("eventrelay_delivery_duration_seconds_sum")
        / get("eventrelay_delivery_duration_seconds_count")
        * 1e3
}

fn throughput_and_latency(n: usize, latency_secs: f64) {
    let topics: Vec<String> = TOPICS.iter().map(|s| s.to_string()).collect();
    let kafka = Embedded::start(&topics, 16).expect("mock");
    let (stub, url) = start_stub();
    let stub_pid = stub.0.id();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let count = || async {
            let b = http
                .get(format!("{url}/requests/count"))
                .send()
                .await
                .expect("stub")
                .bytes()
                .await
                .expect("count");
            let v: serde_json::Value = serde_json::from_slice(&b).expect("count json");
            v["count"].as_u64().unwrap_or(0) as usize
        };
        let cfg = Config::from_toml(&format!(
            "[kafka]\nbootstrap_servers = \"{}\"\nfetch_wait_max_ms = 10\n[metrics]\nlisten = \"127.0.0.1:0\"\n[destinations.seg]\nendpoint = \"{url}\"\nwebsite_id = \"{WEBSITE}\"\nconcurrency = {}\n",
            kafka.bootstrap(),
            concurrency(),
        ))
        .expect("config");
        let mut cfg = cfg;
        // `--property KEY=VALUE` (repeatable): librdkafka settings for the send stage, e.g.
        // `fetch.queue.backoff.ms=1000` (librdkafka's default) to see the stage before its fix.
        let args: Vec<String> = std::env::args().collect();
        for kv in args.windows(2).filter(|w| w[0] == "--property").map(|w| &w[1]) {
            let (k, v) = kv.split_once('=').expect("--property KEY=VALUE");
            cfg.kafka.properties.insert(k.into(), v.into());
        }
        let records: Vec<(String, Vec<u8>)> = seg_records()
            .into_iter()
            .map(|(k, r)| (k, r.encode_to_vec()))
            .collect();
        let p: BaseProducer = client_config(&cfg.kafka, kafka.bootstrap())
            .create()
            .expect("producer");
        // The HTTP ceiling in the same run: the same requests to the same stub process at the
        // same concurrency, from reqwest alone (no Kafka, no records, no retries).
        let seg = cfg.destinations().expect("dests").remove(0).dest;
        let reqs: Vec<PlainRequest> = seg_records()
            .iter()
            .take(1000)
            .map(|(_, r)| {
                let q = seg.build_request(r).expect("request");
                let url = reqwest::Url::parse(&q.url).expect("url");
                // Headers made before the clock starts too, as the lanes make them once per
                // record.
                let headers = q
                    .headers
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                            reqwest::header::HeaderValue::from_str(&v).expect("value"),
                        )
                    })
                    .collect();
                (url, headers, q.body.unwrap_or_default())
            })
            .collect();
        // A fresh stub process pays for its first requests (memory, connections): warm it up
        // untimed, so the ceiling is not charged for that and the sender after it is not
        // spared it.
        http_ceiling(&reqs, n / 4).await;
        // `--rounds R` (default 5): ceiling then sender, R times on the same stub, each
        // sender round on N fresh records from a stopped stage (the same group, so it goes on
        // from its commits); the medians are the headline, because the two cores are shared.
        let rounds: usize = arg(&args, "--rounds").unwrap_or(5).max(1);
        let mut results: Vec<Round> = Vec::new();
        let mut last = None;
        for round in 0..rounds {
            for i in 0..n {
                let (k, v) = &records[i % records.len()];
                send(&p, k, v);
            }
            p.flush(Duration::from_secs(60)).expect("flush");
            let _ = http.delete(format!("{url}/requests")).send().await;
            let (cpu_before, stub_before) = (cpu_secs(std::process::id()), cpu_secs(stub_pid));
            let allocs_before = allocations();
            let (ceiling, ceiling_steady) = http_ceiling(&reqs, n).await;
            let ceiling_allocs = (allocations() - allocs_before) as f64 / n as f64;
            let ceiling_cpu_us = (cpu_secs(std::process::id()) - cpu_before) / n as f64 * 1e6;
            let ceiling_stub_us = (cpu_secs(stub_pid) - stub_before) / n as f64 * 1e6;
            let _ = http.delete(format!("{url}/requests")).send().await;
            let running = Running::start(&cfg, Role::Send).await.expect("send stage");
            // Deliveries are counted in this process, as the ceiling counts its answers (asking
            // the stub over HTTP every few ms charged the sender's side, and the stub, for the
            // bench's own requests).
            let stats = running.send_stats.clone();
            let delivered = || stats.get("seg", SendCount::Delivered) as usize;
            let give_up = Instant::now() + Duration::from_secs(600);
            while delivered() == 0 {
                assert!(Instant::now() < give_up, "no delivery in 600 s");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let first = Instant::now();
            let (cpu_self, cpu_stub) = (cpu_secs(std::process::id()), cpu_secs(stub_pid));
            let cpu_mock = thread_cpu_secs("rdk:mock");
            let allocs_first = allocations();
            let (mut p10, mut p90) = (None, None);
            loop {
                let c = delivered();
                let now = Instant::now();
                if c >= n / 10 && p10.is_none() {
                    p10 = Some(now);
                }
                if c >= n * 9 / 10 && p90.is_none() {
                    p90 = Some(now);
                }
                if c >= n {
                    break;
                }
                assert!(now < give_up, "fewer than {n} deliveries in 600 s");
                // Every 2 ms (±0.3 % of a round): each look wakes this thread.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let secs = first.elapsed().as_secs_f64();
            let r = Round {
                rate: n as f64 / secs,
                ceiling,
                steady: steady_rate(n, p10, p90),
                ceiling_steady,
                // The histogram is the process's: its mean covers the rounds so far.
                attempt_ms: mean_attempt_ms(&http, running.metrics_addr).await,
                cores: (cpu_secs(std::process::id()) - cpu_self) / secs,
                stub_cores: (cpu_secs(stub_pid) - cpu_stub) / secs,
                cpu_us: (cpu_secs(std::process::id()) - cpu_self) / n as f64 * 1e6,
                mock_us: (thread_cpu_secs("rdk:mock") - cpu_mock) / n as f64 * 1e6,
                ceiling_cpu_us,
                ceiling_stub_us,
                allocs: (allocations() - allocs_first) as f64 / n as f64,
                ceiling_allocs,
            };
            println!(
                "round {}: sender {:.0} deliveries/s, ceiling {:.0} requests/s, ratio {:.2}; steady state (10th to 90th percent) {:.0} vs {:.0}, ratio {:.2}; {:.1} µs of eventrelay CPU per delivery, reqwest alone {:.1} µs",
                round + 1,
                r.rate,
                r.ceiling,
                r.rate / r.ceiling,
                r.steady,
                r.ceiling_steady,
                r.steady / r.ceiling_steady,
                r.cpu_us,
                r.ceiling_cpu_us
            );
            results.push(r);
            if round + 1 < rounds {
                running
                    .shutdown(Duration::from_secs(30))
                    .await
                    .expect("shutdown");
            } else {
                last = Some(running);
            }
        }
        let running = last.expect("at least one round");
        let median = |f: &dyn Fn(&Round) -> f64| {
            let mut v: Vec<f64> = results.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let rate = median(&|r| r.rate);
        let ceiling = median(&|r| r.ceiling);
        println!("\nsender bench (mock cluster, stub process on loopback, concurrency {}, no faults, {rounds} rounds of {n}, medians)", concurrency());
        println!("throughput: {rate:.0} Seg deliveries/s");
        println!("HTTP ceiling, same run (reqwest → the same stub, concurrency {}, same requests, no Kafka): {ceiling:.0} requests/s", concurrency());
        // Each round's ratio compares two runs a second apart, so it cancels what the shared
        // machine does over minutes; the headline is the median of those.
        println!(
            "ratio sender/ceiling, median of the rounds: {:.2} (goal >= 0.8); ratio of each round: {}",
            median(&|r| r.rate / r.ceiling),
            results.iter().map(|r| format!("{:.2}", r.rate / r.ceiling)).collect::<Vec<_>>().join(", ")
        );
        println!(
            "steady state (10th to 90th percent of each round's requests): sender {:.0} vs ceiling {:.0}, median ratio {:.2}; ratio of each round: {}",
            median(&|r| r.steady),
            median(&|r| r.ceiling_steady),
            median(&|r| r.steady / r.ceiling_steady),
            results.iter().map(|r| format!("{:.2}", r.steady / r.ceiling_steady)).collect::<Vec<_>>().join(", ")
        );
        println!(
            "mean HTTP attempt inside the sender {:.2} ms; a lane's cycle (concurrency / rate) {:.2} ms; the ceiling's cycle {:.2} ms",
            median(&|r| r.attempt_ms),
            concurrency() as f64 / rate * 1e3,
            concurrency() as f64 / ceiling * 1e3
        );
        println!(
            "cpu during the run: eventrelay (sender + in-process mock broker) {:.2} cores, stub {:.2} cores; {:.1} µs of eventrelay CPU per delivery",
            median(&|r| r.cores),
            median(&|r| r.stub_cores),
            median(&|r| r.cpu_us)
        );
        println!(
            "of which the in-process mock broker's thread: {:.1} µs per delivery",
            median(&|r| r.mock_us)
        );
        println!(
            "cpu per request during the ceiling: this process (reqwest) {:.1} µs, stub {:.1} µs",
            median(&|r| r.ceiling_cpu_us),
            median(&|r| r.ceiling_stub_us)
        );
        println!(
            "heap allocations in this process: {:.1} per delivery (sender, consumer and mock broker), {:.1} per request (ceiling)",
            median(&|r| r.allocs),
            median(&|r| r.ceiling_allocs)
        );

        // Latency at half the measured rate: unique messageIds, stamped when produced.
        let _ = http.delete(format!("{url}/requests")).send().await;
        let half = rate / 2.0;
        let total = (half * latency_secs) as usize;
        let sent_at: HashMap<String, i64> = tokio::task::spawn_blocking({
            let base: Vec<(String, Record)> = seg_records();
            let p = p;
            move || {
                let mut sent = HashMap::with_capacity(total);
                let start = Instant::now();
                for i in 0..total {
                    let due = start + Duration::from_secs_f64(i as f64 / half);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let (k, r) = &base[i % base.len()];
                    let mut r = r.clone();
                    r.message_id = format!("lat-{i}");
                    let now = eventrelay::event::now_millis();
                    r.received_at_ms = now;
                    send(&p, k, &r.encode_to_vec());
                    sent.insert(r.message_id, now);
                }
                p.flush(Duration::from_secs(30)).expect("flush");
                sent
            }
        })
        .await
        .expect("producer thread");
        let deadline = Instant::now() + Duration::from_secs(60);
        while count().await < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let body = http
            .get(format!("{url}/requests"))
            .send()
            .await
            .expect("stub")
            .bytes()
            .await
            .expect("listing");
        let listing: Vec<eventrelay::testkit::stub::Recorded> =
            serde_json::from_slice(&body).expect("listing json");
        if std::env::var("BENCH_DEBUG").is_ok() {
            let t0 = sent_at.values().min().copied().unwrap_or(0);
            let mut by_sec: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
            for r in &listing {
                if let Some(t) = r.headers.get("idempotency-key").and_then(|v| v.as_str()).and_then(|id| sent_at.get(id)) {
                    by_sec.entry((t - t0) / 500).or_default().push(r.at_ms - t);
                }
            }
            for (s, mut v) in by_sec {
                v.sort_unstable();
                println!("  t={:.1}s n={} p50={} p99={}", s as f64 / 2.0, v.len(), v[v.len() / 2], v[v.len() * 99 / 100]);
            }
        }
        let mut lat: Vec<i64> = listing
            .iter()
            .filter_map(|r| {
                let id = r.headers.get("idempotency-key")?.as_str()?;
                Some(r.at_ms - sent_at.get(id)?)
            })
            .collect();
        lat.sort_unstable();
        let pct = |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(-1);
        println!(
            "latency at half rate ({half:.0}/s for {latency_secs} s, {} of {total} seen): produce-to-request p50 {} ms, p99 {} ms, max {} ms",
            lat.len(),
            pct(0.50),
            pct(0.99),
            lat.last().copied().unwrap_or(-1)
        );
        running
            .shutdown(Duration::from_secs(30))
            .await
            .expect("shutdown");
    });
    drop(stub);
}

fn backlog_rss(bootstrap: &str, n: usize, watch_secs: u64) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let group = format!("bench-backlog-{}", eventrelay::event::now_millis());
    let toml = format!(
        "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"{group}\"\npartitions = 16\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[destinations.seg]\nendpoint = \"http://127.0.0.1:{dead_port}\"\nwebsite_id = \"{WEBSITE}\"\nconcurrency = 64\n"
    );
    let cfg = Config::from_toml(&toml).expect("config");
    let topics: Vec<String> = TOPICS.iter().map(|s| s.to_string()).collect();
    rt.block_on(ensure_topics(&cfg.kafka, bootstrap, &topics))
        .expect("topics");
    let records = seg_records();
    let p: BaseProducer = client_config(&cfg.kafka, bootstrap)
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let started = Instant::now();
    for i in 0..n {
        let (k, r) = &records[i % records.len()];
        let mut r = r.clone();
        r.message_id = format!("backlog-{i}");
        send(&p, k, &r.encode_to_vec());
    }
    p.flush(Duration::from_secs(300)).expect("flush");
    println!(
        "\nbacklog: {n} Seg records produced to dest.seg on {bootstrap} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("send.toml");
    std::fs::write(&path, toml).expect("config file");
    let child = Command::new(bin())
        .args(["run", "--role", "send", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("eventrelay run");
    let child = Kill(child);
    let pid = child.0.id();
    let handed = || -> u64 {
        let text = http_get(metrics_port, "/metrics");
        text.lines()
            .filter(|l| {
                l.starts_with("eventrelay_deliveries_total") && l.contains("outcome=\"retry\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let mut samples = Vec::new();
    for s in 1..=watch_secs {
        std::thread::sleep(Duration::from_secs(1));
        let rss = rss_mb(pid);
        samples.push(rss);
        if s % 10 == 0 || s == 1 {
            println!(
                "  t={s:>3} s  RSS {rss:6.1} MB  handed to the retry topics so far: {}",
                handed()
            );
        }
    }
    let max = samples.iter().cloned().fold(0.0, f64::max);
    let tail = &samples[samples.len() / 2..];
    let (tmin, tmax) = tail
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), v| (a.min(*v), b.max(*v)));
    println!(
        "sender RSS with Seg down and a {n}-record backlog: max {max:.1} MB over {watch_secs} s; second half {tmin:.1}–{tmax:.1} MB; {} records handed to the retry topic",
        handed()
    );
}
