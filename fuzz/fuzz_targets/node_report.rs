//! The node-report parser never panics on any body, and accepts only what verifies:
//! whatever it returns re-verifies against the message it rebuilds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tally_oracle::node_report::SignedReport;

fuzz_target!(|body: &[u8]| {
    if let Ok((report, job, node_key)) = SignedReport::parse_and_verify(body, 1_800_000_000) {
        assert_eq!(report.record.job, job.to_string());
        assert_eq!(report.node_key, node_key.to_string());
        assert!(report.record.finished_at >= report.record.started_at);
    }
});
