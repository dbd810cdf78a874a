//! Every `eventrelay.*` Kafka header, in one place: the names, how dead letters and retry
//! records are stamped with them, and how they are read back.
//!
//! Headers come back from topics anyone can write to, so reading them is validation: a value
//! that is not a number, or a time no broker could have stamped (a due time of `i64::MAX`, a
//! first attempt at `i64::MIN`), is treated as absent and counted in
//! `eventrelay_invalid_headers_total{header}`, never trusted into arithmetic.

use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Prefix of the dead-letter context headers (Kafka Connect's `__connect.errors.*`).
pub const ERROR_PREFIX: &str = "eventrelay.error.";
/// Prefix of the retry-topic headers.
pub const RETRY_PREFIX: &str = "eventrelay.retry.";

/// Stage that gave up on the record: `parse`, `map` or `send`.
pub const ERROR_STAGE: &str = "eventrelay.error.stage";
/// Stable reason code (`invalid_json`, `http_400`, `retries_exhausted`, …).
pub const ERROR_REASON: &str = "eventrelay.error.reason";
/// Human-readable detail.
pub const ERROR_MESSAGE: &str = "eventrelay.error.message";
/// Topic the record was first read from.
pub const ERROR_TOPIC: &str = "eventrelay.error.topic";
/// Partition it was first read from.
pub const ERROR_PARTITION: &str = "eventrelay.error.partition";
/// Offset it was first read from.
pub const ERROR_OFFSET: &str = "eventrelay.error.offset";
/// Destination that rejected or failed it.
pub const ERROR_DESTINATION: &str = "eventrelay.error.destination";
/// Last HTTP status (send stage; empty when there was none).
pub const ERROR_STATUS: &str = "eventrelay.error.status";
/// HTTP attempts made (send stage).
pub const ERROR_ATTEMPTS: &str = "eventrelay.error.attempts";
/// Set when the dead letter is written without its value (too large for the DLQ topic).
pub const ERROR_VALUE_DROPPED: &str = "eventrelay.error.value_dropped";

/// When a retry record is due again (ms since the epoch).
pub const RETRY_DUE: &str = "eventrelay.retry.due_ms";
/// Attempts made so far.
pub const RETRY_ATTEMPTS: &str = "eventrelay.retry.attempts";
/// When the first attempt was made (ms since the epoch); the retry window counts from it.
pub const RETRY_FIRST: &str = "eventrelay.retry.first_attempt_ms";
/// Not to be attempted before (ms since the epoch): a `Retry-After` longer than the longest
/// delay tier; the record hops through that tier until then without an attempt.
pub const RETRY_NOT_BEFORE: &str = "eventrelay.retry.not_before_ms";
/// The last error, for operators reading the retry topic.
pub const RETRY_LAST_ERROR: &str = "eventrelay.retry.last_error";

/// Where a retried record was first read from (topic, partition, offset).
pub const ORIGIN_TOPIC: &str = "eventrelay.origin.topic";
/// See [`ORIGIN_TOPIC`].
pub const ORIGIN_PARTITION: &str = "eventrelay.origin.partition";
/// See [`ORIGIN_TOPIC`].
pub const ORIGIN_OFFSET: &str = "eventrelay.origin.offset";

/// How many times `redrive` copied the record back.
pub const REDRIVE_COUNT: &str = "eventrelay.redrive.count";

/// Stage names written to [`ERROR_STAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStage {
    /// Not a valid Segment event.
    Parse,
    /// A destination's mapper rejected it.
    Map,
    /// Delivery failed for good.
    Send,
}

impl ErrorStage {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorStage::Parse => "parse",
            ErrorStage::Map => "map",
            ErrorStage::Send => "send",
        }
    }
}

/// Where a record came from: the coordinates dead letters and retry records carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Everything a dead letter says about why it is one.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// Which stage gave up.
    pub stage: ErrorStage,
    /// Stable reason code.
    pub reason: &'a str,
    /// Detail.
    pub message: &'a str,
    /// Where the record was first read.
    pub origin: &'a Origin,
    /// Destination concerned, if any.
    pub destination: Option<&'a str>,
    /// Send stage: last HTTP status and attempts.
    pub send: Option<(Option<u16>, u32)>,
}

/// Copy of `base` without the headers whose names start with one of `drop_prefixes`.
pub fn copy_except(base: Option<&OwnedHeaders>, drop_prefixes: &[&str]) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(base.map_or(0, |b| b.count()) + 10);
    if let Some(base) = base {
        for hd in base.iter() {
            if drop_prefixes.iter().any(|p| hd.key.starts_with(p)) {
                continue;
            }
            h = h.insert(Header {
                key: hd.key,
                value: hd.value,
            });
        }
    }
    h
}

fn add(h: OwnedHeaders, key: &str, value: &str) -> OwnedHeaders {
    h.insert(Header {
        key,
        value: Some(value.as_bytes()),
    })
}

/// The original headers plus the dead-letter context (earlier `eventrelay.error.*` and
/// `eventrelay.retry.*` headers are replaced, so the last verdict is the one a reader sees).
pub fn dead_letter(base: Option<&OwnedHeaders>, dl: &DeadLetter<'_>) -> OwnedHeaders {
    let mut h = copy_except(base, &[ERROR_PREFIX, RETRY_PREFIX]);
    h = add(h, ERROR_STAGE, dl.stage.as_str());
    h = add(h, ERROR_REASON, dl.reason);
    h = add(h, ERROR_MESSAGE, dl.message);
    h = add(h, ERROR_TOPIC, &dl.origin.topic);
    h = add(h, ERROR_PARTITION, &dl.origin.partition.to_string());
    h = add(h, ERROR_OFFSET, &dl.origin.offset.to_string());
    if let Some((status, attempts)) = dl.send {
        h = add(
            h,
            ERROR_STATUS,
            &status.map(|s| s.to_string()).unwrap_or_default(),
        );
        h = add(h, ERROR_ATTEMPTS, &attempts.to_string());
    }
    if let Some(d) = dl.destination {
        h = add(h, ERROR_DESTINATION, d);
    }
    h
}

/// Mark a dead letter as written without its value.
pub fn value_dropped(h: OwnedHeaders) -> OwnedHeaders {
    add(
        h,
        ERROR_VALUE_DROPPED,
        "too large for the dead-letter topic",
    )
}

/// What a retry record carries.
#[derive(Debug, Clone)]
pub struct RetryState<'a> {
    /// Due again at (ms since the epoch).
    pub due_ms: i64,
    /// Attempts so far.
    pub attempts: u32,
    /// First attempt at (ms since the epoch).
    pub first_attempt_ms: i64,
    /// Not to be attempted before (ms since the epoch), when later than `due_ms`.
    pub not_before_ms: Option<i64>,
    /// Where the record was first read.
    pub origin: &'a Origin,
    /// Last error, for people reading the topic.
    pub last_error: &'a str,
}

/// Headers of a record handed to the retry topic (the original ones are not kept: the record
/// itself is the destination record, and its origin is in [`ORIGIN_TOPIC`] and friends).
pub fn retry(r: &RetryState<'_>) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(8);
    h = add(h, RETRY_DUE, &r.due_ms.to_string());
    if let Some(nb) = r.not_before_ms.filter(|nb| *nb > r.due_ms) {
        h = add(h, RETRY_NOT_BEFORE, &nb.to_string());
    }
    h = add(h, RETRY_ATTEMPTS, &r.attempts.to_string());
    h = add(h, RETRY_FIRST, &r.first_attempt_ms.to_string());
    h = add(h, ORIGIN_TOPIC, &r.origin.topic);
    h = add(h, ORIGIN_PARTITION, &r.origin.partition.to_string());
    h = add(h, ORIGIN_OFFSET, &r.origin.offset.to_string());
    add(h, RETRY_LAST_ERROR, r.last_error)
}

/// The last value of header `name` as bytes (Kafka allows repeats; the last one wins).
pub fn bytes<'h, H: Headers>(h: Option<&'h H>, name: &str) -> Option<&'h [u8]> {
    h?.iter()
        .filter(|hd| hd.key == name)
        .last()
        .and_then(|hd| hd.value)
}

/// The last value of header `name` as UTF-8 text.
pub fn text<'h, H: Headers>(h: Option<&'h H>, name: &str) -> Option<&'h str> {
    bytes(h, name).and_then(|v| std::str::from_utf8(v).ok())
}

/// Earliest plausible time stamp in a header: 2000-01-01.
const MIN_TIME_MS: i64 = 946_684_800_000;
/// Latest plausible: a year ahead of now (due times are at most the retry window away).
const MAX_AHEAD_MS: i64 = 366 * 24 * 3600 * 1000;

/// Header `name` as a time (ms since the epoch) between 2000-01-01 and a year from `now_ms`;
/// `None` when absent, and `None` counted as invalid when present but unusable.
pub fn time_ms<H: Headers>(h: Option<&H>, name: &'static str, now_ms: i64) -> Option<i64> {
    let raw = bytes(h, name)?;
    let parsed = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|t| (MIN_TIME_MS..=now_ms.saturating_add(MAX_AHEAD_MS)).contains(t));
    if parsed.is_none() {
        invalid(name);
    }
    parsed
}

/// Header `name` as a count in `0..=max`; `None` when absent, and counted when unusable.
pub fn count<H: Headers>(h: Option<&H>, name: &'static str, max: u32) -> Option<u32> {
    let raw = bytes(h, name)?;
    let parsed = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|n| *n <= max);
    if parsed.is_none() {
        invalid(name);
    }
    parsed
}

/// The origin headers of a retried record, when all three are present and sane.
pub fn origin<H: Headers>(h: Option<&H>) -> Option<Origin> {
    let topic = text(h, ORIGIN_TOPIC)?;
    let partition = text(h, ORIGIN_PARTITION)?.parse::<i32>().ok();
    let offset = text(h, ORIGIN_OFFSET)?.parse::<i64>().ok();
    match (partition, offset) {
        (Some(partition), Some(offset)) if partition >= 0 && offset >= 0 && !topic.is_empty() => {
            Some(Origin {
                topic: topic.to_string(),
                partition,
                offset,
            })
        }
        _ => {
            invalid(ORIGIN_TOPIC);
            None
        }
    }
}

fn invalid(name: &'static str) {
    tracing::debug!(header = name, "ignoring an unusable header value");
    metrics::counter!("eventrelay_invalid_headers_total", "header" => name).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000;

    fn with(name: &str, value: &str) -> OwnedHeaders {
        add(OwnedHeaders::new(), name, value)
    }

    #[test]
    fn out_of_range_times_are_absent() {
        for bad in [
            i64::MAX.to_string(),
            i64::MIN.to_string(),
            "-1".into(),
            "12".into(),
            "soon".into(),
            (NOW + 400 * 24 * 3600 * 1000).to_string(),
        ] {
            let h = with(RETRY_DUE, &bad);
            assert_eq!(time_ms(Some(&h), RETRY_DUE, NOW), None, "{bad}");
        }
        let h = with(RETRY_FIRST, &(NOW - 1000).to_string());
        assert_eq!(time_ms(Some(&h), RETRY_FIRST, NOW), Some(NOW - 1000));
        assert_eq!(time_ms::<OwnedHeaders>(None, RETRY_FIRST, NOW), None);
    }

    #[test]
    fn counts_and_origins_are_validated() {
        assert_eq!(
            count(Some(&with(RETRY_ATTEMPTS, "3")), RETRY_ATTEMPTS, 1000),
            Some(3)
        );
        assert_eq!(
            count(Some(&with(RETRY_ATTEMPTS, "-3")), RETRY_ATTEMPTS, 1000),
            None
        );
        assert_eq!(
            count(
                Some(&with(RETRY_ATTEMPTS, "4294967295")),
                RETRY_ATTEMPTS,
                1000
            ),
            None
        );
        let h = add(
            add(with(ORIGIN_TOPIC, "dest.seg"), ORIGIN_PARTITION, "2"),
            ORIGIN_OFFSET,
            "-9",
        );
        assert_eq!(origin(Some(&h)), None);
        let h = add(
            add(with(ORIGIN_TOPIC, "dest.seg"), ORIGIN_PARTITION, "2"),
            ORIGIN_OFFSET,
            "9",
        );
        assert_eq!(
            origin(Some(&h)),
            Some(Origin {
                topic: "dest.seg".into(),
                partition: 2,
                offset: 9
            })
        );
    }

    #[test]
    fn dead_letters_keep_user_headers_and_replace_earlier_verdicts() {
        let base = add(
            add(with("trace", "t1"), ERROR_REASON, "http_503"),
            RETRY_DUE,
            "1",
        );
        let origin = Origin {
            topic: "dest.seg".into(),
            partition: 1,
            offset: 7,
        };
        let h = dead_letter(
            Some(&base),
            &DeadLetter {
                stage: ErrorStage::Send,
                reason: "http_400",
                message: "HTTP 400",
                origin: &origin,
                destination: Some("seg"),
                send: Some((Some(400), 3)),
            },
        );
        assert_eq!(text(Some(&h), "trace"), Some("t1"));
        assert_eq!(text(Some(&h), ERROR_REASON), Some("http_400"));
        assert_eq!(h.iter().filter(|x| x.key == ERROR_REASON).count(), 1);
        assert_eq!(text(Some(&h), RETRY_DUE), None);
        assert_eq!(text(Some(&h), ERROR_STATUS), Some("400"));
        assert_eq!(text(Some(&h), ERROR_OFFSET), Some("7"));
    }
}
