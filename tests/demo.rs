//! The README's main command, run as a user runs it: `eventrelay demo` on the embedded
//! cluster exits 0 and its summary shows every mapped record delivered, with the fault window's
//! retries recovered and the sample's invalid events counted.

use std::process::Command;

/// The summary row of one destination: mapped, skipped, rejected, delivered, retries,
/// retry-topic, dead-lettered.
fn row(out: &str, dest: &str) -> Vec<u64> {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(dest))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn demo_exits_0_and_delivers_every_mapped_record() {
    let out = Command::new(env!("CARGO_BIN_EXE_eventrelay"))
        .args(["demo", "--repeat", "10"])
        .output()
        .expect("running eventrelay demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo exited {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("input: 200 events read, 20 invalid"),
        "{stdout}"
    );
    let mut retries = 0;
    for dest in ["owneriq", "seg"] {
        let r = row(&stdout, dest);
        assert_eq!(r.len(), 7, "no summary row for {dest}:\n{stdout}");
        let (mapped, delivered, dead) = (r[0], r[3], r[6]);
        assert!(mapped > 0, "{dest} mapped nothing:\n{stdout}");
        assert_eq!(
            delivered, mapped,
            "{dest}: every mapped record delivered:\n{stdout}"
        );
        assert_eq!(dead, 0, "{dest}: nothing dead-lettered:\n{stdout}");
        retries += r[4];
    }
    println!("demo summary:\n{stdout}\n(retries in the fault window: {retries})");
}
