//! The map stage: every input record becomes per-destination records, skips, rejects, or one
//! invalid-input verdict.
//!
//! [`map_input`] is the pure heart shared by `eventrelay map` (offline) and the Kafka stage.

use crate::destinations::{route, Destination, Routed};
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

pub mod dedup;
pub mod stage;
