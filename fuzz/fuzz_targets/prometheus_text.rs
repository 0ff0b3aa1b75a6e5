//! The metrics cross-check's Prometheus text parser never panics and never yields a
//! non-finite total.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tally_oracle::telemetry::parse_prometheus;

fuzz_target!(|text: &str| {
    for (name, total) in parse_prometheus(text) {
        assert!(!name.is_empty());
        assert!(!total.is_nan());
    }
});
