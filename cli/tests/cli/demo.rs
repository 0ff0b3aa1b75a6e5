//! `tally demo` end to end: the binary, on the embedded chain with the SBF program,
//! its reconciliation asserted from its JSON summary.
use std::process::Command;

/// `tally demo --output json` with `args`: its summary, the run having succeeded.
fn demo(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["demo", "--output", "json"])
        .args(args)
        .output()
        .expect("run tally demo");
    assert!(
        output.status.success(),
        "tally demo failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON summary on stdout")
}

#[test]
fn tally_demo_reconciles_every_balance() {
    let summary = demo(&["--jobs", "3", "--requests", "8"]);
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

/// `--oracles 3 --threshold 2`: the gateway's records reach the other two oracles'
/// own stores, settlements carry two oracles' signatures, and it all reconciles.
#[test]
fn tally_demo_settles_through_a_two_of_three_quorum() {
    let summary = demo(&[
        "--jobs",
        "2",
        "--requests",
        "5",
        "--oracles",
        "3",
        "--threshold",
        "2",
    ]);
    assert_eq!(summary["reconciled"], true, "{summary}");
    assert_eq!(
        summary["quorum"],
        serde_json::json!({ "oracles": 3, "threshold": 2, "records_held_by_the_others": [10, 10] }),
        "{summary}"
    );
    assert!(summary["paid"].as_u64().unwrap() > 0, "{summary}");

    // A threshold the set cannot meet is refused before anything runs.
    let refused = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["demo", "--oracles", "3", "--threshold", "4"])
        .output()
        .expect("run tally demo");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--threshold 4 of --oracles 3"), "{stderr}");
}
