//! `tally invoice verify` end to end on solana-test-validator: the oracle settles a
//! job's usage into its store; the binary proves the invoice from the store alone
//! (as any replica sharing it would), from an exported file linked through the
//! store, and catches a tampered file.
use std::process::Command;

use anchor_lang::prelude::Pubkey;
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally_client::chain::Chain;
use tally_client::migrate::{migrate, Deployment};
use tally_client::{ops, InitializeConfigArgs, OpenJobArgs, OperatorArgs};
use tally_oracle::batcher::Batcher;
use tally_oracle::store::{Store, UsageRecord};
use tally_tests::validator::LocalValidator;

fn tally(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .output()
        .expect("run tally");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn invoice_verify_proves_an_invoice_from_the_store_or_a_file_and_catches_tampering() {
    let Some(validator) =
        LocalValidator::start_private_or_skip(Some(&LocalValidator::default_program()))
    else {
        return;
    };
    let mut chain = validator.chain();
    let wallet = |sol: u64| {
        let keypair = Keypair::new();
        validator
            .fund(&keypair.pubkey(), sol * 1_000_000_000)
            .unwrap();
        keypair
    };
    let oracle = wallet(2);
    let admin = &validator.payer;
    migrate(
        &mut chain,
        admin,
        &Deployment {
            release: None,
            settings: InitializeConfigArgs {
                treasury: admin.pubkey(),
                arbiter: admin.pubkey(),
                fee_bps: 100,
                challenge_window_secs: 0,
                expiry_grace_secs: 3_600,
                dispute_timeout_secs: 3_600,
                oracles: vec![oracle.pubkey()],
                oracle_threshold: 1,
            },
            mints: vec![ops::NATIVE_MINT],
        },
    )
    .unwrap();
    let operator = wallet(1);
    ops::register_operator(
        &mut chain,
        &operator,
        OperatorArgs {
            payout_owner: operator.pubkey(),
            node_keys: Vec::new(),
        },
        false,
    )
    .unwrap();
    let client = wallet(2);
    ops::wrap_sol(&mut chain, &client, 100_000_000).unwrap();
    let now = chain.clock().unwrap().unix_timestamp;
    let job: Pubkey = ops::open_job(
        &mut chain,
        &client,
        &operator.pubkey(),
        &ops::NATIVE_MINT,
        OpenJobArgs {
            job_id: 1,
            unit_kind: 0,
            unit_price: 1,
            max_units: 1_000_000,
            deadline: now + 86_400,
            spend_cap_per_hour: 0,
        },
    )
    .unwrap()
    .address
    .parse()
    .unwrap();

    // The oracle meters and settles two receipts; the store keeps their invoices.
    let dir = std::env::temp_dir().join(format!("tally-cli-invoice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store_path = dir.join("oracle.db");
    let batcher = Batcher::new(
        Store::open(&store_path).unwrap(),
        oracle.insecure_clone(),
        tally_oracle::clock::ChainClock::synced(&chain).unwrap(),
    )
    .with_invoices_dir(dir.join("invoices"));
    for round in 0..2u64 {
        for i in 0..5u64 {
            batcher
                .store
                .record(&UsageRecord {
                    job: job.to_string(),
                    job_nonce: None,
                    request_id: format!("req-{round}-{i}"),
                    model: "m".into(),
                    prompt_tokens: 10 + i,
                    completion_tokens: 5,
                    gpu_ms: 1,
                    finished_at: chain.clock().unwrap().unix_timestamp,
                    source: "gateway".into(),
                    ..UsageRecord::default()
                })
                .unwrap();
        }
        let report = batcher.run_round(&mut chain).unwrap();
        assert_eq!((report.confirmed, report.failed), (1, 0), "{report:?}");
    }
    let state = ops::job(&chain, &job).unwrap();
    assert_eq!(state.last_seq, 2);
    drop(batcher);

    let url = validator.rpc_url.as_str();
    let store = store_path.to_string_lossy().into_owned();
    let job_text = job.to_string();
    // From the store alone: the latest receipt, then the first, linked through the
    // second.
    for seq in [None, Some("1")] {
        let mut args = vec![
            "invoice", "verify", "-u", url, "--store", &store, "--job", &job_text,
        ];
        if let Some(seq) = seq {
            args.extend(["--seq", seq]);
        }
        let (ok, out) = tally(&args);
        assert!(ok, "{out}");
        assert!(out.contains("verified"), "{out}");
        assert!(
            out.contains(&format!("{} units in all", state.settled_units)),
            "{out}"
        );
    }
    // An exported file: the first needs the second beside it, or the store.
    let first =
        tally_oracle::invoice::export_path(&dir.join("invoices"), &job_text, state.nonce, 1);
    let file = first.to_string_lossy().into_owned();
    let (ok, out) = tally(&["invoice", "verify", "-u", url, &file]);
    assert!(ok, "{out}");
    std::fs::remove_file(first.with_file_name("2.json")).unwrap();
    let (ok, out) = tally(&["invoice", "verify", "-u", url, &file]);
    assert!(!ok && out.contains("--store"), "{out}");
    let (ok, out) = tally(&["invoice", "verify", "-u", url, &file, "--store", &store]);
    assert!(ok, "{out}");
    // One token changed in the file: caught.
    let bytes = std::fs::read_to_string(&first).unwrap();
    std::fs::write(
        &first,
        bytes.replacen("\"prompt_tokens\":1", "\"prompt_tokens\":9", 1),
    )
    .unwrap();
    let (ok, out) = tally(&["invoice", "verify", "-u", url, &file, "--store", &store]);
    assert!(!ok, "{out}");
    assert!(out.contains("altered"), "{out}");
}
