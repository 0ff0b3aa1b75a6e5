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
    assert!(n("units") > n("output_units") && n("output_units") > 0);
    // Input and output tokens at their prices per million; each job's total is
    // rounded down once, so the sum of the jobs is within a base unit per job.
    let prices = &summary["prices_per_million"];
    let (input, output) = (
        prices["input"].as_u64().unwrap(),
        prices["output"].as_u64().unwrap(),
    );
    assert_eq!((input, output), (150_000, 600_000));
    let owed = ((n("units") - n("output_units")) * input + n("output_units") * output) / 1_000_000;
    assert!(
        n("paid") <= owed && n("paid") + 3 >= owed,
        "paid {} for {owed} owed: {summary}",
        n("paid")
    );
    assert_eq!(n("claimed"), n("paid") - n("fees"));
    // 2.5%, rounded down per receipt (one receipt per job here).
    let fees = n("paid") * 250 / 10_000;
    assert!(n("fees") <= fees && n("fees") + 3 >= fees, "{summary}");
    assert_eq!(
        n("refunded"),
        4 * n("deposit_per_job") - n("paid"),
        "everything not paid went back"
    );
}
