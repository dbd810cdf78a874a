//! eventrelay: delivers raw Segment events from Kafka to Segment-style destinations.
//!
//! The crate is laid out by stage, as the data flows:
//! - [`event`]: the Segment event model and its validation;
//! - [`destinations`]: one module per destination (pure mapping and request building);
//! - [`record`]: the protobuf record written to `dest.<destination>` topics (`proto/`);
//! - [`pipeline`]: the map stage (consumer group → worker pool → destination topics);
//! - [`sender`]: the send stage (destination topics → HTTP, retries, dead letters);
//! - [`kafka`]: client settings, topics, the embedded cluster, offset tracking;
//! - [`ingest`]: Segment's HTTP Tracking API writing the input topic;
//! - [`ops`]: metrics, health, logging; [`service`]: `run`; [`stub`], [`demo`];
//! - [`config`], [`cli`]: the TOML configuration and the command line.

pub mod cli;
pub mod config;
pub mod demo;
pub mod destinations;
pub mod event;
pub mod ingest;
pub mod kafka;
pub mod ops;
pub mod pipeline;
pub mod sender;
pub mod service;
pub mod stub;
pub mod tester;

/// The destination-ready record schema, generated from `proto/record.proto`.
pub mod record {
    #![allow(missing_docs, clippy::module_inception)]
    include!(concat!(env!("OUT_DIR"), "/eventrelay.v1.rs"));
}
