//! `tally demo` end to end: the binary, on the embedded chain with the SBF program,
//! its reconciliation asserted from its JSON summary.
use std::process::Command;

#[test]
fn tally_demo_reconciles_every_balance() {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["demo", "--output", "json", "--jobs", "3", "--requests", "8"])
        .output()
        .expect("run tally demo");
    assert!(
        output.status.success(),
        "tally demo failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON summary on stdout");
    let n = |k: &str| {
        summary[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} missing: {summary}"))
    };
    assert_eq!(summary["reconciled"], true, "{summary}");
    assert_eq!(n("jobs"), 4, "three served jobs and one that stalls");
    assert_eq!(n("requests"), 24);
    assert!(n("units") > 0);
    assert_eq!(n("paid"), n("units") * 20, "paid = metered tokens × price");
    assert_eq!(n("claimed"), n("paid") - n("fees"));
    assert_eq!(n("fees"), n("paid") * 250 / 10_000);
    assert_eq!(
        n("refunded"),
        4 * 20 * 1_000_000 - n("paid"),
        "everything not paid went back"
    );
}
