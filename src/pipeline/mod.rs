//! The map stage: every input record becomes per-destination records, skips, rejects, or one
//! invalid-input verdict.
//!
//! [`map_input`] is the pure heart shared by `eventrelay map` (offline) and the Kafka stage.

use crate::destinations::{route, route_encoded, Destination, RecordBuf, Routed};
use crate::event::{Event, InvalidEvent};
use crate::record::Source;
use std::sync::Arc;

/// The outcome of mapping one input record for every enabled destination, in order. The
/// event borrows from the input bytes.
pub type Mapped<'a> = Result<(Event<'a>, Vec<Routed>), InvalidEvent>;

/// Parse one input record and route it to every destination.
pub fn map_input<'a>(
    dests: &[Arc<dyn Destination>],
    bytes: &'a [u8],
    source: Option<&Source>,
    received_at_ms: i64,
) -> Mapped<'a> {
    let event = Event::parse(bytes)?;
    let routed = dests
        .iter()
        .map(|d| route(d.as_ref(), &event, source, received_at_ms))
        .collect();
    Ok((event, routed))
}

/// [`map_input`] for the map stage: the same verdicts, each record protobuf-encoded into
/// `buf` (cleared first, reused across events by the caller) instead of built as a `Record`.
/// `buf.get(i)` is destination `i`'s outcome. The bytes equal `Record::encode_to_vec()` of
/// what [`map_input`] returns for the same input.
pub fn map_input_encoded<'a>(
    dests: &[Arc<dyn Destination>],
    bytes: &'a [u8],
    source: Option<&Source>,
    received_at_ms: i64,
    buf: &mut RecordBuf,
) -> Result<Event<'a>, InvalidEvent> {
    buf.clear();
    let event = Event::parse(bytes)?;
    for d in dests {
        route_encoded(d.as_ref(), &event, source, received_at_ms, buf);
    }
    Ok(event)
}

pub mod dedup;
pub mod stage;
