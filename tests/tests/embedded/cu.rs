//! Compute-unit ceilings per instruction, measured on the SBF program. A regression
//! in cost fails like a regression in behaviour. The table is printed with
//! `cargo test -p tally-tests --test embedded cu:: -- --nocapture`.
use tally_tests::bench::measure_instructions as measure;

/// (instruction, ceiling in CU): measured on this build plus about 10%.
const CEILINGS: &[(&str, u64)] = &[
    ("initialize_config", 18500),
    ("update_config", 6000),
    ("add_mint", 26000),
    ("register_operator", 11500),
    ("update_operator", 5500),
    ("open_job (client's first: creates ClientJobs)", 58500),
    ("open_job", 48000),
    ("top_up", 18000),
    ("open_ledgers (creates both)", 26000),
    ("settle (1 receipt)", 15500),
    ("settle (8 receipts)", 31500),
    ("settle_relayed (1 receipt)", 16500),
    ("complete_job", 27500),
    ("cancel_job", 16000),
    ("expire_job", 18500),
    ("claim", 22000),
    ("withdraw_fees", 17000),
    ("close_job", 3000),
];

#[test]
fn every_instruction_stays_within_its_cu_ceiling() {
    let measured = measure();
    println!("| instruction | CU | ceiling | tx bytes |");
    println!("|---|---:|---:|---:|");
    let mut over = Vec::new();
    for (name, sent) in &measured {
        let ceiling = CEILINGS
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
            .expect("every measured instruction has a ceiling");
        println!("| {name} | {} | {ceiling} | {} |", sent.cu, sent.size);
        if sent.cu > ceiling {
            over.push(format!("{name}: {} CU > {ceiling}", sent.cu));
        }
    }
    assert_eq!(measured.len(), CEILINGS.len(), "every ceiling is measured");
    assert!(over.is_empty(), "over their CU ceilings: {over:?}");
}

#[test]
#[ignore = "diagnostic: prints a settle transaction's logs"]
fn print_settle_logs() {
    let measured = measure();
    for (name, sent) in measured {
        if name == "settle (1 receipt)" || name == "open_job" {
            println!("{name}:\n{}", sent.logs.join("\n"));
        }
    }
}
