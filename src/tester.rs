//! `eventrelay map`: the Event Tester. NDJSON events in, one NDJSON verdict per (event,
//! enabled destination) out — the exact request the send stage would send, or the skip,
//! reject or invalid-input reason. It runs the same mapping and request-building code as the
//! service, and sends nothing.

use crate::config::Config;
use crate::destinations::{Destination, HttpRequest, Method, Routed};
use crate::event::MAX_EVENT_BYTES;
use crate::pipeline::map_input;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
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

/// The JSON form of a request, as `eventrelay map` prints it. The body is embedded as the
/// JSON text that would be sent (numbers exactly as sent), or as a string if it is not JSON.
pub fn request_json(req: &HttpRequest) -> Value {
    serde_json::to_value(RequestJson::new(req)).unwrap_or(Value::Null)
}

/// A request as printed: headers in order, the body as raw JSON when it is JSON.
#[derive(Serialize)]
struct RequestJson<'a> {
    method: Method,
    url: &'a str,
    headers: Headers<'a>,
    body: Body<'a>,
}

impl<'a> RequestJson<'a> {
    fn new(req: &'a HttpRequest) -> Self {
        let body = match req.body.as_deref() {
            None => Body::Null,
            Some(b) => match std::str::from_utf8(b)
                .ok()
                .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
            {
                Some(raw) => Body::Json(raw),
                None => Body::Text(String::from_utf8_lossy(b)),
            },
        };
        RequestJson {
            method: req.method,
            url: &req.url,
            headers: Headers(&req.headers),
            body,
        }
    }
}

struct Headers<'a>(&'a [(&'static str, std::borrow::Cow<'static, str>)]);

impl Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Null,
    Json(&'a RawValue),
    Text(std::borrow::Cow<'a, str>),
}

/// One output line for a (event, destination) pair.
#[derive(Serialize)]
struct Line<'a> {
    destination: &'a str,
    #[serde(rename = "messageId")]
    message_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<RequestJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<&'a str>,
}

/// What [`read_line`] found.
enum Read {
    /// A line (without its `\n`), at most [`MAX_EVENT_BYTES`] + 1 bytes (so an oversized one
    /// is still reported as `too_large` by the event parser without reading it all).
    Line,
    /// A line longer than that: its length; the bytes were skipped, not kept.
    TooLong(usize),
    /// End of input.
    Eof,
}

/// Read one line into `buf`, keeping at most `MAX_EVENT_BYTES + 2` bytes (room for `\r`):
/// a longer line is skipped to its end without being held in memory.
fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Read> {
    buf.clear();
    let keep = MAX_EVENT_BYTES + 2;
    let mut total = 0usize;
    let mut any = false;
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        total += part.len();
        if buf.len() < keep {
            let room = keep - buf.len();
            buf.extend_from_slice(&part[..part.len().min(room)]);
        }
        let used = done.unwrap_or(chunk.len());
        input.consume(used);
        if done.is_some() {
            break;
        }
    }
    if !any {
        return Ok(Read::Eof);
    }
    if total > keep {
        return Ok(Read::TooLong(total));
    }
    Ok(Read::Line)
}

/// Map NDJSON events to NDJSON verdicts, one line per (event, enabled destination).
///
/// Line numbers are 1-based and count every line. A blank line (only whitespace) gets no
/// output line. A line over the event size limit is reported `too_large` without being read
/// into memory whole.
pub fn map_ndjson(
    dests: &[Arc<dyn Destination>],
    mut input: impl BufRead,
    out: &mut impl Write,
) -> Result<()> {
    let mut buf = Vec::new();
    let mut n = 0usize;
    loop {
        n += 1;
        let line: &[u8] = match read_line(&mut input, &mut buf).context("reading input")? {
            Read::Eof => break,
            Read::TooLong(len) => {
                let message = format!("event is {len} bytes, the limit is {MAX_EVENT_BYTES}");
                writeln!(
                    out,
                    "{}",
                    json!({"line": n, "invalid": "too_large", "message": message})
                )?;
                continue;
            }
            Read::Line => buf.strip_suffix(b"\r").unwrap_or(&buf),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (event, routed) = match map_input(dests, line, None, 0) {
            Ok(ok) => ok,
            Err(invalid) => {
                writeln!(
                    out,
                    "{}",
                    json!({"line": n, "invalid": invalid.reason, "message": invalid.message})
                )?;
                continue;
            }
        };
        for (dest, routed) in dests.iter().zip(routed) {
            let head = || Line {
                destination: dest.name(),
                message_id: &event.message_id,
                request: None,
                skipped: None,
                rejected: None,
            };
            match routed {
                Routed::Records(records) => {
                    for record in records {
                        match dest.build_request(&record) {
                            Ok(req) => {
                                let line = Line {
                                    request: Some(RequestJson::new(&req)),
                                    ..head()
                                };
                                serde_json::to_writer(&mut *out, &line)?;
                            }
                            Err(e) => {
                                let line = Line {
                                    rejected: Some(e.reason),
                                    ..head()
                                };
                                serde_json::to_writer(&mut *out, &line)?;
                            }
                        }
                        writeln!(out)?;
                    }
                    continue;
                }
                Routed::Skipped(r) => serde_json::to_writer(
                    &mut *out,
                    &Line {
                        skipped: Some(r),
                        ..head()
                    },
                )?,
                Routed::Rejected(r) => serde_json::to_writer(
                    &mut *out,
                    &Line {
                        rejected: Some(r),
                        ..head()
                    },
                )?,
            }
            writeln!(out)?;
        }
    }
    Ok(())
}
