//! The live delivery view on librdkafka's mock cluster: a destination answering 400 for one
//! user's requests shows them at `/deliveries?destination=seg&failed=true` with status 400 and
//! outcome `dead_letter`, with the endpoint's credentials masked; an unknown destination is a
//! JSON 404; `tail` (the function and the binary) prints each failed attempt once.

mod common;

use common::*;
use eventrelay::app::{Role, Running};
use eventrelay::ops::deliveries::{tail, TailArgs};
use eventrelay::ops::Output;
use eventrelay::testkit::stub::{Fault, Stub};
use eventrelay::SendCount;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.expect("GET");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"));
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_deliveries_are_shown_masked_and_tail_follows_them() {
    let kafka = cluster();
    let stub = Stub::start("127.0.0.1:0", None).await.unwrap();
    // Credentials in the endpoint: they must not appear in the view.
    let endpoint = stub.url().replacen("://", "://relay:s3cr3t-pw@", 1);
    let mut cfg = config(kafka.bootstrap(), &endpoint, "", "");
    cfg.metrics.deliveries_kept = 500;
    let running = Running::start(&cfg, Role::All).await.unwrap();
    let base = format!("http://{}", running.metrics_addr);
    let h = running.health.clone();
    wait_for(
        "consumer groups to form",
        Duration::from_secs(60),
        move || h.assigned.load(std::sync::atomic::Ordering::Relaxed) >= 20,
    )
    .await;
    // Seg answers 400 to user-3's requests only.
    stub.inject(Fault {
        status: Some(400),
        path_prefix: Some("/v1/".into()),
        contains: Some(r#""userId":"user-3""#.into()),
        ..Default::default()
    });
    let lines = events(40, 10);
    let user3: BTreeSet<String> = lines
        .iter()
        .map(|l| serde_json::from_slice::<Value>(l).unwrap())
        .filter(|v| v["userId"] == "user-3")
        .map(|v| v["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(user3.len(), 4);
    produce(&cfg, kafka.bootstrap(), "segment.events", &lines);
    let stats = running.send_stats.clone();
    wait_for("user-3's dead letters", Duration::from_secs(90), || {
        stats.get("seg", SendCount::DeadLettered) >= 4
            && stats.get("seg", SendCount::Delivered) >= 36
    })
    .await;

    let (code, page) = get(&format!("{base}/deliveries?destination=seg&failed=true")).await;
    assert_eq!(code, 200, "{page}");
    let attempts = page["attempts"].as_array().unwrap();
    let shown: BTreeSet<String> = attempts
        .iter()
        .map(|a| a["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(shown, user3, "exactly user-3's attempts failed: {page:#}");
    for a in attempts {
        assert_eq!(a["status"], 400, "{a}");
        assert_eq!(a["outcome"], "dead_letter", "{a}");
        assert_eq!(a["method"], "POST", "{a}");
        assert!(a["error"].as_str().unwrap().starts_with("HTTP 400"), "{a}");
        assert!(
            a["url"]
                .as_str()
                .unwrap()
                .starts_with("http://***@127.0.0.1:"),
            "{a}"
        );
    }
    let text = page.to_string();
    assert!(
        !text.contains("s3cr3t") && !text.contains("relay:"),
        "no credentials in the view: {text}"
    );
    let seqs: Vec<u64> = attempts
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );

    // Everything, and a limit.
    let (_, all) = get(&format!("{base}/deliveries?destination=seg&limit=10")).await;
    assert_eq!(all["attempts"].as_array().unwrap().len(), 10);
    assert!(all["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["outcome"] == "success"));
    let (_, oiq) = get(&format!(
        "{base}/deliveries?destination=owneriq&failed=true"
    ))
    .await;
    assert_eq!(oiq["attempts"].as_array().unwrap().len(), 0, "{oiq}");
    // An unknown destination.
    let (code, err) = get(&format!("{base}/deliveries?destination=nope")).await;
    assert_eq!(code, 404);
    assert!(err["error"].as_str().unwrap().contains("nope"), "{err}");

    // `tail` the function: prints each failed attempt once, oldest first, then follows new ones.
    let args = TailArgs {
        destination: "seg".into(),
        failed: true,
        output: Output::Json,
        interval: Duration::from_millis(200),
    };
    let mut out = Vec::new();
    let b = base.clone();
    let follow = async {
        tail(
            &b,
            &args,
            &mut out,
            tokio::time::sleep(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    };
    // While it follows, one more failed attempt arrives (a new user-3 event).
    let more = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let mut late: Value = lines
            .iter()
            .map(|l| serde_json::from_slice::<Value>(l).unwrap())
            .find(|v| v["userId"] == "user-3")
            .unwrap();
        late["messageId"] = "late-1".into();
        produce(
            &cfg,
            kafka.bootstrap(),
            "segment.events",
            &[late.to_string().into_bytes()],
        );
    };
    tokio::join!(follow, more);
    let printed: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    let ids: Vec<&str> = printed
        .iter()
        .map(|v| v["messageId"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = user3.iter().map(String::as_str).collect();
    want.push("late-1");
    let mut sorted = ids.clone();
    sorted.sort();
    want.sort();
    assert_eq!(sorted, want, "each failed attempt once: {ids:?}");
    assert_eq!(
        ids.last(),
        Some(&"late-1"),
        "oldest first, new ones followed"
    );
    let seqs: Vec<u64> = printed.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {seqs:?}"
    );

    // An unknown destination stops `tail` with the endpoint's error.
    let bad = TailArgs {
        destination: "nope".into(),
        ..args.clone()
    };
    let e = tail(&base, &bad, &mut Vec::new(), std::future::pending())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("404"), "{e:#}");

    // `eventrelay tail` the binary, stopped with Ctrl-C (SIGINT).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eventrelay.toml");
    let toml = config_toml(kafka.bootstrap(), &endpoint, "", "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", running.metrics_addr),
    );
    std::fs::write(&path, toml).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_eventrelay"))
        .args(["tail", "--config"])
        .arg(&path)
        .args(["--destination", "seg", "--failed"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // SAFETY: signalling the child this test started, by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tail exits 0 on Ctrl-C: {:?} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("eventrelay tail --failed printed:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "one line per failed attempt:\n{stdout}");
    for l in &lines {
        assert!(
            l.contains("dead_letter") && l.contains(" 400 ") && l.contains("http://***@"),
            "{l}"
        );
    }
    assert!(lines[4].contains("late-1"), "{stdout}");
    running.shutdown(Duration::from_secs(30)).await.unwrap();
}
