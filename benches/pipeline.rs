//! Map stage vs a plain pass-through on the same broker, in one go.
//!
//! `cargo bench --bench pipeline -- [--bootstrap HOST:PORT] [--events N] [--rounds R]
//! [--latency-rate R] [--skip-ceilings]`
//! (`scripts/bench_map.sh` runs it on the mock cluster and on tansu). Without `--bootstrap` it
//! uses an embedded mock cluster, whose partitions keep at most 5 MB each, so the default there
//! is 24 k events over 16 partitions (1.5 k of ~2.4 KB each). More partitions do not help:
//! the mock finds a fetch offset by a linear scan of the partition's batches
//! (`rd_kafka_mock_msgset_find`), so smaller batches over more partitions slow every consumer
//! down (seen: 48 partitions and 72 k events halved the map stage's rate). The runs are short
//! (a fraction of a second), so run it several times and read the range.
//!
//! 1. Throughput: N events are produced to an input topic first; then the pass-through, the
//!    fan-out pass-through (each input copied to two topics: at least the map stage's Kafka work)
//!    (consume → produce the same bytes, same client settings, no parsing, commits the same
//!    way) and the map stage each drain it with a fresh consumer group. Events/s is measured
//!    from the first record read to the last output acknowledged.
//! 2. Latency at half the peak: events are produced at half the map stage's peak rate (or
//!    `--latency-rate`) for a few seconds while the stage runs; p50/p99 from an input record's
//!    timestamp to when a reader sees its output record. Then the same for the fan-out
//!    pass-through at the same rate: the broker's own floor.

#[path = "corpus.rs"]
mod corpus;

use eventrelay::config::Config;
use eventrelay::ops::Health;
use eventrelay::record::Record;
use eventrelay::{client_config, consumer_config, ensure_topics, Embedded};
use eventrelay::{run_map_stage, MapStats};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The mock keeps at most 5 MB per partition (librdkafka's rdkafka_mock.c), so the mock run
/// spreads its events over more partitions than usual.
const MOCK_PARTITIONS: i32 = 16;

const TOPICS: &[&str] = &[
    "segment.events",
    "segment.events.dlq",
    "dest.owneriq",
    "dest.owneriq.retry.10s",
    "dest.owneriq.retry.1m",
    "dest.owneriq.retry.5m",
    "dest.owneriq.retry.30m",
    "dest.owneriq.dlq",
    "dest.seg",
    "dest.seg.retry.10s",
    "dest.seg.retry.1m",
    "dest.seg.retry.5m",
    "dest.seg.retry.30m",
    "dest.seg.dlq",
    "bench.passthrough.0",
    "bench.passthrough.1",
];

fn now_ms() -> i64 {
    eventrelay::event::now_millis()
}

/// Set when the bench runs on the embedded mock cluster.
static ON_MOCK: AtomicBool = AtomicBool::new(false);

fn cfg(bootstrap: &str, group: &str) -> Config {
    let mut c = Config::from_toml(&format!(
        "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"{group}\"\n{}",
        include_str!("../examples/eventrelay.toml")
            .split_once("[metrics]")
            .map(|(_, r)| format!("[metrics]{r}"))
            .unwrap_or_default()
    ))
    .expect("config");
    c.metrics.listen = "127.0.0.1:0".into();
    if ON_MOCK.load(Ordering::Relaxed) {
        // What `run` uses on the embedded mock cluster (see `kafka::consumer_config`).
        c.kafka.fetch_wait_max_ms = Some(10);
    }
    if let Ok(v) = std::env::var("BENCH_FETCH_WAIT_MS") {
        c.kafka.fetch_wait_max_ms = Some(v.parse().expect("number"));
    }
    if let Ok(v) = std::env::var("BENCH_MAX_IN_FLIGHT") {
        c.map.max_in_flight = v.parse().expect("number");
    }
    if let Ok(v) = std::env::var("BENCH_WORKERS") {
        c.map.workers = v.parse().expect("number");
    }
    c
}

/// The pool's event with a messageId unique to this lap through the pool (`bench-7` becomes
/// `bench-7.2` on the third lap): the map stage skips a repeated messageId as a duplicate.
fn unique(v: &[u8], lap: usize) -> std::borrow::Cow<'_, [u8]> {
    const ID: &[u8] = b"\"messageId\":\"bench-";
    if lap == 0 {
        return std::borrow::Cow::Borrowed(v);
    }
    let Some(at) = v.windows(ID.len()).position(|w| w == ID) else {
        return std::borrow::Cow::Borrowed(v);
    };
    let end = at
        + ID.len()
        + v[at + ID.len()..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
    let mut out = Vec::with_capacity(v.len() + 8);
    out.extend_from_slice(&v[..end]);
    out.extend_from_slice(format!(".{lap}").as_bytes());
    out.extend_from_slice(&v[end..]);
    std::borrow::Cow::Owned(out)
}

/// Produce `n` events cycling through `pool`, each with the current time as its timestamp;
/// at most `rate` per second when given.
fn produce(bootstrap: &str, pool: &[Vec<u8>], n: usize, rate: Option<f64>) {
    let c = cfg(bootstrap, "x");
    let p: BaseProducer = client_config(&c.kafka, bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    let start = Instant::now();
    for i in 0..n {
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(i as f64 / r);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let v = unique(&pool[i % pool.len()], i / pool.len());
        let v = v.as_ref();
        let key = format!("user-{}", i % 5000);
        let mut rec = BaseRecord::<str, [u8]>::to("segment.events")
            .key(&key)
            .payload(v)
            .timestamp(now_ms());
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(120)).expect("flush");
}

struct Counting(Arc<AtomicU64>);
impl ClientContext for Counting {}
impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if r.is_ok() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Consume the input and produce the same bytes to `fanout` topics (1: a plain pass-through;
/// 2: one copy per destination topic, at least the map stage's Kafka work), with the map
/// stage's client settings. Returns events/s from the first record read to the last
/// acknowledged.
fn pass_through(bootstrap: &str, n: u64, fanout: usize) -> f64 {
    let group = format!("bench-pt{fanout}-{}", now_ms());
    let never = AtomicBool::new(false);
    copy_loop(bootstrap, &group, fanout, Some(n), &never)
}

/// The pass-through's loop: consume `segment.events` in `group` (from its committed offsets,
/// else the earliest) and produce each record's bytes, key and timestamp to `fanout` topics,
/// committing every 500 ms, until `n` inputs are acknowledged in every copy (events/s from
/// the first read), or until `stop` (`n` = None; returns 0).
fn copy_loop(
    bootstrap: &str,
    group: &str,
    fanout: usize,
    n: Option<u64>,
    stop: &AtomicBool,
) -> f64 {
    let outputs: Vec<String> = (0..fanout)
        .map(|i| format!("bench.passthrough.{i}"))
        .collect();
    let c = cfg(bootstrap, "bench-pt");
    let acked = Arc::new(AtomicU64::new(0));
    let producer: ThreadedProducer<Counting> = client_config(&c.kafka, bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .create_with_context(Counting(acked.clone()))
        .expect("producer");
    let consumer: BaseConsumer = consumer_config(&c.kafka, bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["segment.events"]).expect("subscribe");
    let mut first = None;
    let mut read = 0u64;
    let mut last_commit = Instant::now();
    let mut stall = Stall::new("pass-through", n.unwrap_or(u64::MAX));
    let want = n.map(|n| n * fanout as u64);
    while !stop.load(Ordering::Relaxed) && want.is_none_or(|w| acked.load(Ordering::Relaxed) < w) {
        if n.is_some() {
            stall.check(acked.load(Ordering::Relaxed) / fanout as u64);
        }
        if last_commit.elapsed() > Duration::from_millis(500) {
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            last_commit = Instant::now();
        }
        if n.is_some_and(|n| read >= n) {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        first.get_or_insert_with(Instant::now);
        read += 1;
        for topic in &outputs {
            let mut rec = BaseRecord::<[u8], [u8]>::to(topic);
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            if let Some(v) = m.payload() {
                rec = rec.payload(v);
            }
            if let Some(t) = m.timestamp().to_millis() {
                rec = rec.timestamp(t);
            }
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }
    match n {
        Some(n) => n as f64 / first.map_or(1.0, |f| f.elapsed().as_secs_f64()),
        None => 0.0,
    }
}

/// Gives up with a clear message when a run stops making progress for a minute (tansu's
/// memory storage can stop returning records at some fetch offsets), instead of hanging.
struct Stall {
    what: &'static str,
    want: u64,
    seen: u64,
    since: Instant,
}

impl Stall {
    fn new(what: &'static str, want: u64) -> Stall {
        Stall {
            what,
            want,
            seen: 0,
            since: Instant::now(),
        }
    }

    fn check(&mut self, now: u64) {
        if now != self.seen {
            self.seen = now;
            self.since = Instant::now();
        } else if self.since.elapsed() > Duration::from_secs(60) {
            panic!(
                "{}: no progress for 60 s at {} of {}; the broker stopped returning records",
                self.what, self.seen, self.want
            );
        }
    }
}

struct Stage {
    stop: CancellationToken,
    stats: Arc<MapStats>,
    handle: std::thread::JoinHandle<anyhow::Result<()>>,
}

fn start_map(bootstrap: &str, group: &str) -> Stage {
    let c = cfg(bootstrap, group);
    let stop = CancellationToken::new();
    let stats = Arc::new(MapStats::default());
    let (b, s, st) = (bootstrap.to_string(), stop.clone(), stats.clone());
    let handle =
        std::thread::spawn(move || run_map_stage(&c, &b, s, st, Arc::new(Health::default())));
    Stage {
        stop,
        stats,
        handle,
    }
}

impl Stage {
    fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.join();
    }
}

/// Outputs the map stage produces for `pool` cycled to `n` events.
fn expected_outputs(pool: &[Vec<u8>], n: usize) -> u64 {
    let c = cfg("127.0.0.1:1", "x");
    let dests: Vec<_> = c
        .destinations()
        .expect("dests")
        .into_iter()
        .map(|d| d.dest)
        .collect();
    let per: Vec<u64> = pool
        .iter()
        .map(|e| match eventrelay::map_input(&dests, e, None, 0) {
            Err(_) => 1,
            Ok((_, routed)) => routed
                .iter()
                .map(|r| match r {
                    eventrelay::destinations::Routed::Records(v) => v.len() as u64,
                    eventrelay::destinations::Routed::Rejected(_) => 1,
                    eventrelay::destinations::Routed::Skipped(_) => 0,
                })
                .sum(),
        })
        .collect();
    (0..n).map(|i| per[i % pool.len()]).sum()
}

/// Map stage events/s from the first record read to the last output acknowledged.
fn map_throughput(bootstrap: &str, pool: &[Vec<u8>], n: u64) -> f64 {
    let want = expected_outputs(pool, n as usize);
    let stage = start_map(bootstrap, &format!("bench-map-{}", now_ms()));
    while stage.stats.consumed.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_micros(200));
    }
    let first = Instant::now();
    let mut stall = Stall::new("map stage", want);
    while stage.stats.acked.load(Ordering::Relaxed) < want {
        stall.check(stage.stats.acked.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_micros(500));
    }
    let rate = n as f64 / first.elapsed().as_secs_f64();
    stage.stop();
    rate
}

fn percentile(v: &mut [i64], q: f64) -> i64 {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(-1)
}

/// A fresh consumer group whose committed offsets are the input's log ends, so a stage started
/// in it skips the throughput run's backlog.
fn group_at_end(bootstrap: &str, what: &str) -> String {
    let group = format!("bench-lat-{what}-{}", now_ms());
    let at_end: BaseConsumer = client_config(&cfg(bootstrap, "x").kafka, bootstrap)
        .set("group.id", &group)
        .create()
        .expect("consumer");
    let imd = at_end
        .fetch_metadata(Some("segment.events"), Duration::from_secs(10))
        .expect("md");
    let mut ends = TopicPartitionList::new();
    for p in imd.topics()[0].partitions() {
        let (_, high) = at_end
            .fetch_watermarks("segment.events", p.id(), Duration::from_secs(10))
            .expect("watermarks");
        ends.add_partition_offset("segment.events", p.id(), Offset::Offset(high))
            .expect("tpl");
    }
    at_end
        .commit(&ends, CommitMode::Sync)
        .expect("commit end offsets");
    group
}

/// A reader of `topic` from its log end.
fn reader_at_end(bootstrap: &str, topic: &str) -> BaseConsumer {
    let reader: BaseConsumer = consumer_config(&cfg(bootstrap, "x").kafka, bootstrap)
        .set("group.id", "bench-latency")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let md = reader
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("md");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::End)
            .expect("tpl");
    }
    reader.assign(&tpl).expect("assign");
    reader
}

/// Produce at `rate` for `secs` and collect, per output record `reader` sees, the time from
/// its input's timestamp (`sent_ms` of the message) to when it was read: p50, p99.
fn measure(
    bootstrap: &str,
    pool: &[Vec<u8>],
    rate: f64,
    secs: f64,
    reader: &BaseConsumer,
    sent_ms: impl Fn(&rdkafka::message::BorrowedMessage<'_>) -> i64,
) -> (i64, i64) {
    let n = (rate * secs) as usize;
    let (b, p) = (bootstrap.to_string(), pool.to_vec());
    let started = now_ms();
    let producer = std::thread::spawn(move || produce(&b, &p, n, Some(rate)));
    let mut lat = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs_f64(secs + 10.0);
    while Instant::now() < deadline {
        let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) else {
            if producer.is_finished() && lat.len() > n / 2 {
                break;
            }
            continue;
        };
        let seen = now_ms();
        let sent = sent_ms(&m);
        if sent >= started {
            lat.push(seen - sent);
        }
    }
    let _ = producer.join();
    (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99))
}

/// Map stage p50/p99 from an input record's timestamp to its dest.seg record being readable,
/// at `rate` events/s for `secs`.
fn latency(bootstrap: &str, pool: &[Vec<u8>], rate: f64, secs: f64) -> (i64, i64) {
    let reader = reader_at_end(bootstrap, "dest.seg");
    let group = group_at_end(bootstrap, "map");
    let stage = start_map(bootstrap, &group);
    // Let the group form before the paced load starts.
    std::thread::sleep(Duration::from_secs(6));
    let got = measure(bootstrap, pool, rate, secs, &reader, |m| {
        Record::decode(m.payload().unwrap_or_default())
            .map(|r| r.received_at_ms)
            .unwrap_or(0)
    });
    stage.stop();
    got
}

/// The same for the fan-out pass-through (its output keeps the input's timestamp): the
/// latency floor of consume → produce → read on this broker, with no work in between.
fn pass_through_latency(bootstrap: &str, pool: &[Vec<u8>], rate: f64, secs: f64) -> (i64, i64) {
    let reader = reader_at_end(bootstrap, "bench.passthrough.0");
    let group = group_at_end(bootstrap, "pt");
    let stop = Arc::new(AtomicBool::new(false));
    let (b, s) = (bootstrap.to_string(), stop.clone());
    let copier = std::thread::spawn(move || copy_loop(&b, &group, 2, None, &s));
    std::thread::sleep(Duration::from_secs(6));
    let got = measure(bootstrap, pool, rate, secs, &reader, |m| {
        m.timestamp().to_millis().unwrap_or(0)
    });
    stop.store(true, Ordering::Relaxed);
    let _ = copier.join();
    got
}

fn main() {
    eventrelay::ops::init_logging("human", "warn");
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let external = arg("--bootstrap");
    let n: usize = arg("--events")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if external.is_some() {
            1_000_000
        } else {
            24_000
        });
    let embedded;
    let bootstrap = match &external {
        Some(b) => {
            let c = cfg(b, "x");
            let topics: Vec<String> = TOPICS.iter().map(|s| s.to_string()).collect();
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(ensure_topics(&c.kafka, b, &topics))
                .expect("topics");
            b.clone()
        }
        None => {
            ON_MOCK.store(true, Ordering::Relaxed);
            embedded = Embedded::start(
                &TOPICS.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                MOCK_PARTITIONS,
            )
            .expect("mock");
            embedded.bootstrap().to_string()
        }
    };
    let broker = if external.is_some() {
        "tansu/external"
    } else {
        "mock cluster"
    };
    let pool = corpus::corpus(10_000);
    let avg = pool.iter().map(Vec::len).sum::<usize>() / pool.len();
    eprintln!("producing {n} events (~{avg} bytes) to {bootstrap} ({broker})...");
    produce(&bootstrap, &pool, n, None);
    // `--skip-ceilings` measures the map stage alone (when chasing a problem in it).
    let skip = args.iter().any(|a| a == "--skip-ceilings");
    // The map stage first: brokers slow down as their logs grow (tansu's memory storage did,
    // by half, after the two pass-throughs had written 300 k records), and going last would
    // charge that to the map stage.
    // `--rounds R` (default 3 on the mock, where one run lasts a fraction of a second, 1 on an
    // external broker): each round runs the three in turn on the same input; the medians are
    // compared.
    let rounds: usize = arg("--rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if external.is_some() { 1 } else { 3 });
    let (mut mps, mut fans, mut pts) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let mp = map_throughput(&bootstrap, &pool, n as u64);
        let fan = if skip {
            f64::NAN
        } else {
            pass_through(&bootstrap, n as u64, 2)
        };
        let pt = if skip {
            f64::NAN
        } else {
            pass_through(&bootstrap, n as u64, 1)
        };
        if rounds > 1 {
            eprintln!("round {}: map {mp:.0}, fan-out {fan:.0}, pass-through {pt:.0} events/s: ratio map/fan-out {:.2}", r + 1, mp / fan);
        }
        mps.push(mp);
        fans.push(fan);
        pts.push(pt);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mp, fan, pt) = (median(&mut mps), median(&mut fans), median(&mut pts));
    let outs = expected_outputs(&pool, n);
    println!(
        "\npipeline bench on {broker}: {n} events, ~{avg} bytes each; median of {rounds} round(s)"
    );
    println!("pass-through (consume → produce same bytes once): {pt:.0} events/s");
    println!("fan-out pass-through (consume → produce same bytes to 2 topics): {fan:.0} events/s");
    println!("map stage (parse, map both destinations, produce protobuf; {outs} outputs): {mp:.0} events/s");
    println!("ratio map/fan-out: {:.2} (goal >= 0.9)", mp / fan);
    println!("ratio map/pass-through: {:.2}", mp / pt);
    // `--latency-rate R` instead of half the peak (a broker that slows as its log grows may not
    // sustain half of what it did at first).
    let rate = arg("--latency-rate")
        .and_then(|v| v.parse().ok())
        .unwrap_or(mp / 2.0);
    let secs = if external.is_some() { 10.0 } else { 4.0 };
    let (p50, p99) = latency(&bootstrap, &pool, rate, secs);
    println!("map stage latency at {rate:.0} events/s (half its peak unless --latency-rate): p50 {p50} ms, p99 {p99} ms (input timestamp → output readable)");
    if !skip {
        let (f50, f99) = pass_through_latency(&bootstrap, &pool, rate, secs);
        println!("fan-out pass-through latency at the same rate (the broker's floor): p50 {f50} ms, p99 {f99} ms");
    }
}
