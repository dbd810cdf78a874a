//! `eventrelay map`: the Event Tester. NDJSON events in, one NDJSON verdict per (event,
//! enabled destination) out — the exact request the send stage would send, or the skip,
//! reject or invalid-input reason. It runs the same mapping and request-building code as the
//! service, and sends nothing.

use crate::config::Config;
use crate::destinations::{Destination, HttpRequest, Routed};
use crate::pipeline::map_input;
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufWriter, Write};
use std::sync::Arc;

/// `eventrelay map --config F [FILE]`: read `file` (stdin when absent), write to stdout.
pub fn run(config: &std::path::Path, file: Option<&std::path::Path>) -> Result<()> {
    let cfg = Config::load(Some(config))?;
    let dests: Vec<Arc<dyn Destination>> =
        cfg.destinations()?.into_iter().map(|d| d.dest).collect();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match file {
        Some(path) => {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            map_ndjson(&dests, std::io::BufReader::new(f), &mut out)?;
        }
        None => map_ndjson(&dests, std::io::stdin().lock(), &mut out)?,
    }
    out.flush()?;
    Ok(())
}

/// The JSON form of a request, as `eventrelay map` prints it.
pub fn request_json(req: &HttpRequest) -> Value {
    let headers: Map<String, Value> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(v.as_str())))
        .collect();
    let body = req
        .body
        .as_deref()
        .map(|b| {
            serde_json::from_slice(b).unwrap_or_else(|_| Value::from(String::from_utf8_lossy(b)))
        })
        .unwrap_or(Value::Null);
    json!({"method": req.method, "url": req.url, "headers": headers, "body": body})
}

/// Map NDJSON events to NDJSON verdicts, one line per (event, enabled destination).
/// Blank lines are ignored; line numbers are 1-based.
pub fn map_ndjson(
    dests: &[Arc<dyn Destination>],
    input: impl BufRead,
    out: &mut impl Write,
) -> Result<()> {
    for (i, line) in input.split(b'\n').enumerate() {
        let line = line.context("reading input")?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (event, routed) = match map_input(dests, line, None, 0) {
            Ok(ok) => ok,
            Err(invalid) => {
                writeln!(
                    out,
                    "{}",
                    json!({"line": i + 1, "invalid": invalid.reason, "message": invalid.message})
                )?;
                continue;
            }
        };
        for (dest, routed) in dests.iter().zip(routed) {
            let head = |k: &str, v: Value| json!({"destination": dest.name(), "messageId": event.message_id, k: v});
            match routed {
                Routed::Records(records) => {
                    for record in records {
                        let line = match dest.build_request(&record) {
                            Ok(req) => head("request", request_json(&req)),
                            Err(e) => head("rejected", Value::from(e.reason)),
                        };
                        writeln!(out, "{line}")?;
                    }
                }
                Routed::Skipped(r) => writeln!(out, "{}", head("skipped", Value::from(r)))?,
                Routed::Rejected(r) => writeln!(out, "{}", head("rejected", Value::from(r)))?,
            }
        }
    }
    Ok(())
}
