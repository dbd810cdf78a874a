//! eventrelay: delivers raw Segment events from Kafka to Segment-style destinations.
//!
//! The crate is laid out by stage, in the order data flows:
//! - [`config`]: the TOML configuration, every key overridable from the environment;
//! - [`event`]: the Segment event model and its validation;
//! - [`destinations`]: one module per destination (pure mapping and request building);
//! - [`record`]: the protobuf record written to `dest.<destination>` topics (`proto/`);
//! - `pipeline`: the map stage (consumer group → worker pool → destination topics);
//! - `sender`: the send stage (destination topics → HTTP, retries, dead letters);
//! - `kafka`: client presets, topics, the embedded cluster, the offset tracker, the one stage
//!   consumer both stages run, and the `eventrelay.*` [`headers`];
//! - [`ingest`]: Segment's HTTP Tracking API writing the input topic;
//! - [`ops`]: metrics, health, and the offset tools `replay` and `redrive`;
//! - [`app`]: roles, the runtime and the shutdown token; [`tester`]: `eventrelay map`;
//! - `demo`, and [`testkit`] (the stub destination and sample events; never on the service
//!   path); `cli` parses the command line and dispatches, and nothing imports it.
#![warn(missing_docs)]

pub mod app;
pub mod cli;
pub mod config;
mod demo;
pub mod destinations;
pub mod event;
pub mod ingest;
mod kafka;
pub mod ops;
mod pipeline;
mod sender;
pub mod tester;
pub mod testkit;

pub use kafka::headers;
pub use kafka::{
    all_topics, client_config, consumer_config, ensure_topics, producer_config, Embedded,
};
pub use pipeline::stage::{run_map_stage, DestOutcome, MapStats};
pub use pipeline::{map_input, map_input_encoded};
pub use sender::{parse_retry_after, run_send_stage, SendCount, SendStats};

/// The destination-ready record schema, generated from `proto/record.proto`.
pub mod record {
    #![allow(missing_docs, clippy::module_inception)]
    include!(concat!(env!("OUT_DIR"), "/eventrelay.v1.rs"));

    /// The record a [`Delivery`] read: what a destination builds its request from, every other
    /// field empty.
    impl From<Delivery> for Record {
        fn from(d: Delivery) -> Record {
            Record {
                message_id: d.message_id,
                received_at_ms: d.received_at_ms,
                payload: d.payload.map(|p| match p {
                    delivery::Payload::Owneriq(hit) => record::Payload::Owneriq(hit),
                    delivery::Payload::Seg(ev) => record::Payload::Seg(ev),
                }),
                ..Record::default()
            }
        }
    }
}
