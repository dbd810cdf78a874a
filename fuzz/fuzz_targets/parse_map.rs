//! Fuzz parse + map + request building: no input may panic, and every request built must be
//! well-formed. Run: `cargo fuzz run parse_map --sanitizer none` (stable toolchain).
#![no_main]

use eventrelay::config::Config;
use eventrelay::destinations::{Destination, Routed};
use eventrelay::map_input;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn dests() -> &'static [Arc<dyn Destination>] {
    static D: OnceLock<Vec<Arc<dyn Destination>>> = OnceLock::new();
    D.get_or_init(|| {
        Config::from_toml(include_str!("../../examples/eventrelay.toml"))
            .expect("config")
            .destinations()
            .expect("destinations")
            .into_iter()
            .map(|d| d.dest)
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok((_, routed)) = map_input(dests(), data, None, 0) {
        for (d, r) in dests().iter().zip(routed) {
            if let Routed::Records(records) = r {
                for rec in records {
                    let req = d.build_request(&rec).expect("records from map always build");
                    assert!(req.url.starts_with("https://"));
                }
            }
        }
    }
});
