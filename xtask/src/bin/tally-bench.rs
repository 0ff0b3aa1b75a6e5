//! `scripts/bench`: compute units, transaction bytes and fees of the SBF program in
//! the embedded SVM, printed as a markdown table and written as JSON to
//! target/bench/results.json. Every figure is measured in this run.
use std::fmt::Write as _;
use std::path::PathBuf;

use tally_tests::bench::{
    alt_capacity, measure_instructions, quorum_alt_capacity, quorum_relayed_capacity,
    relayed_capacity, settle_capacity, SettleCapacity, MAX_TX_BYTES,
};

/// Peers' published figures, for context.
const HELIUM_CLAIMS_PER_TX: u64 = 5;
const NOSANA_JOBS_PER_TX: u64 = 1;
const GOAL_RECEIPTS_PER_TX: u64 = 20;
const GOAL_CU_PER_RECEIPT: u64 = 2_000;
const GOAL_CU_PER_EXTRA_RECEIPT: u64 = 1_500;
const GOAL_PROGRAM_BYTES: u64 = 400_000;

fn settlement_table(md: &mut String, title: &str, c: &SettleCapacity) {
    // One oracle; the first settle of the batch already had its ledgers.
    let _ = writeln!(md);
    let _ = writeln!(md, "| settlement: {title} | measured | goal | peer |");
    let _ = writeln!(md, "|---|---:|---:|---|");
    let _ = writeln!(
        md,
        "| receipts per transaction (≤ {MAX_TX_BYTES} bytes) | {} ({} bytes) | ≥ {GOAL_RECEIPTS_PER_TX} | Helium: {HELIUM_CLAIMS_PER_TX} claims/tx; Nosana: {NOSANA_JOBS_PER_TX} job/tx |",
        c.receipts_per_tx, c.tx_bytes
    );
    let _ = writeln!(
        md,
        "| CU per receipt (whole tx / receipts) | {} | ≤ {GOAL_CU_PER_RECEIPT} | |",
        c.cu_per_receipt
    );
    let _ = writeln!(
        md,
        "| CU per extra receipt | {} | ≤ {GOAL_CU_PER_EXTRA_RECEIPT} | |",
        c.cu_per_extra_receipt
    );
    let _ = writeln!(
        md,
        "| fee lamports per receipt | {} | | |",
        c.fee_lamports_per_receipt
    );
    let _ = writeln!(
        md,
        "| receipt bytes in the instruction (+ its account reference) | {} | | |",
        c.receipt_data_bytes
    );
}

fn capacity_json(c: &SettleCapacity) -> String {
    format!(
        "{{\"receipts_per_tx\": {}, \"tx_bytes\": {}, \"cu\": {}, \"cu_per_receipt\": {}, \"cu_per_extra_receipt\": {}, \"fee_lamports_per_receipt\": {}, \"receipt_data_bytes\": {}}}",
        c.receipts_per_tx, c.tx_bytes, c.cu, c.cu_per_receipt, c.cu_per_extra_receipt, c.fee_lamports_per_receipt, c.receipt_data_bytes
    )
}

/// `cu_per_receipt` and `fee_lamports_per_receipt` at the top of the JSON are the
/// batched path's (lookup table); each path's own figures follow.
/// The program's size and what deploying it locks in rent: its ProgramData account
/// (loader metadata + the bytes) and its 36-byte program account. An upgrade needs a
/// buffer of the same size again for the duration (refunded).
fn program_cost() -> (u64, u64) {
    use anchor_lang::solana_program::bpf_loader_upgradeable::UpgradeableLoaderState;
    use tally_client::chain::Chain;
    let bytes = tally_tests::TestEnv::program_bytes();
    let env = tally_tests::TestEnv::new();
    let rent = |len: usize| {
        env.chain
            .minimum_balance_for_rent_exemption(len)
            .expect("rent")
    };
    let program_data = UpgradeableLoaderState::size_of_programdata_metadata()
        + usize::try_from(bytes).expect("size");
    let lamports = rent(program_data) + rent(UpgradeableLoaderState::size_of_program());
    (bytes, lamports)
}

fn main() {
    let (program_bytes, deploy_rent_lamports) = program_cost();
    let instructions = measure_instructions();
    let signer = settle_capacity();
    let relayed = relayed_capacity();
    let alt = alt_capacity();
    // A 2-of-3 oracle set: two oracles attest each receipt (issue 20).
    let quorum_alt = quorum_alt_capacity(3, 2);
    let quorum_relayed = quorum_relayed_capacity(3, 2);

    let mut md = String::new();
    let _ = writeln!(md, "| program | measured | goal |");
    let _ = writeln!(md, "|---|---:|---:|");
    let _ = writeln!(
        md,
        "| `program_bytes` (target/deploy/tally.so) | {program_bytes} | ≤ {GOAL_PROGRAM_BYTES} |"
    );
    let _ = writeln!(
        md,
        "| `deploy_rent_lamports` (ProgramData + program account) | {deploy_rent_lamports} ({}.{:02} SOL) | |",
        deploy_rent_lamports / 1_000_000_000,
        deploy_rent_lamports % 1_000_000_000 / 10_000_000
    );
    let _ = writeln!(md);
    let _ = writeln!(md, "| instruction | CU | tx bytes | fee (lamports) |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (name, sent) in &instructions {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} |",
            sent.cu, sent.size, sent.fee
        );
    }
    settlement_table(&mut md, "oracle signs, legacy transaction", &signer);
    settlement_table(
        &mut md,
        "oracle signs, v0 transaction + lookup table (batched)",
        &alt,
    );
    settlement_table(
        &mut md,
        "relayed, Ed25519 signatures, legacy transaction",
        &relayed,
    );
    settlement_table(
        &mut md,
        "2-of-3 quorum, two oracles sign, v0 transaction + lookup table",
        &quorum_alt,
    );
    settlement_table(
        &mut md,
        "2-of-3 quorum, relayed, two Ed25519 signatures per receipt",
        &quorum_relayed,
    );
    print!("{md}");

    let mut json = format!(
        "{{\n  \"program_bytes\": {program_bytes},\n  \"deploy_rent_lamports\": {deploy_rent_lamports},\n  \"instructions\": {{"
    );
    for (i, (name, sent)) in instructions.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(json, "{sep}\n    \"{name}\": {}", sent.cu);
    }
    json.push_str("\n  },\n  \"tx_bytes\": {");
    for (i, (name, sent)) in instructions.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(json, "{sep}\n    \"{name}\": {}", sent.size);
    }
    let _ = write!(
        json,
        "\n  }},\n  \"receipts_per_tx\": {},\n  \"receipts_per_tx_alt\": {},\n  \"cu_per_receipt\": {},\n  \"fee_lamports_per_receipt\": {},\n  \"signer_path\": {},\n  \"signer_path_alt\": {},\n  \"relayed_path\": {},\n  \"quorum_receipts_per_tx\": {},\n  \"quorum_cu_per_receipt\": {},\n  \"quorum_fee_lamports_per_receipt\": {},\n  \"quorum_signer_path_alt\": {},\n  \"quorum_relayed_path\": {}\n}}\n",
        signer.receipts_per_tx,
        alt.receipts_per_tx,
        alt.cu_per_receipt,
        alt.fee_lamports_per_receipt,
        capacity_json(&signer),
        capacity_json(&alt),
        capacity_json(&relayed),
        quorum_alt.receipts_per_tx,
        quorum_alt.cu_per_receipt,
        quorum_alt.fee_lamports_per_receipt,
        capacity_json(&quorum_alt),
        capacity_json(&quorum_relayed)
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("results.json"), &json))
        .and_then(|()| std::fs::write(dir.join("results.md"), &md));
    match written {
        Ok(()) => eprintln!("wrote target/bench/results.json and results.md"),
        Err(e) => {
            eprintln!("tally-bench: cannot write target/bench: {e}");
            std::process::exit(1);
        }
    }
}
