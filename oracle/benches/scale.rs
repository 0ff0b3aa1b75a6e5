//! The oracle at scale, measured (`scripts/bench` runs it; results merged into
//! target/bench/results.json, each with the command that produced it):
//!
//! - `ingest`: usage records committed durably (SQLite, `synchronous = FULL`) by 64
//!   concurrent writers through the sink's group commit, and one writer alone (each
//!   commit waits for its own sync: the latency a lone request sees).
//! - `round`: one job with 500,000 records over 2,000 settled rounds (LiteSVM with the
//!   SBF program), then the time of a settlement round with 250 new records, and of
//!   one with nothing new; the query plans at that size.
//! - `settle`: thousands of active jobs on solana-test-validator, each with new usage,
//!   settled by the batcher (getMultipleAccounts, v0 transactions through the lookup
//!   tables it makes, all in flight at once): jobs settled per minute, once the tables
//!   exist (and the first round, which makes them, apart).
//!
//! `cargo bench -p tally-oracle --bench scale [-- ingest|round|settle ...]`; sizes:
//! `TALLY_BENCH_JOBS` (settle, default 2,000), `TALLY_BENCH_RECORDS` (round, default
//! 500,000).
// Statistics over timings: float conversions of counts are intended.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anchor_lang::prelude::Pubkey;
use serde_json::{json, Map, Value};
use solana_keypair::Keypair;
use tally_client::chain::Chain;
use tally_oracle::batcher::Batcher;
use tally_oracle::clock::ChainClock;
use tally_oracle::sink::Sink;
use tally_oracle::store::{Store, UsageRecord};
use tally_oracle::telemetry::{self, Telemetry};
use tally_tests::solana_signer::Signer;
use tally_tests::{JobSpec, World};

const WRITERS: u64 = 64;
const INGEST_PER_WRITER: u64 = 3_000;
const LONE_COMMITS: u64 = 500;
const ROUNDS: u64 = 2_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-scale-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn record(job: &str, i: u64, finished_at: i64) -> UsageRecord {
    UsageRecord {
        job: job.to_string(),
        job_nonce: None,
        request_id: format!("req-{i}"),
        model: "llama-3-8b".into(),
        prompt_tokens: 20 + i % 13,
        completion_tokens: 40 + i % 29,
        gpu_ms: 150,
        finished_at,
        source: "bench".into(),
        ..UsageRecord::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn ingest(out: &mut Map<String, Value>) {
    let dir = scratch("ingest");
    let path = dir.join("oracle.db");
    let telemetry = Arc::new(Telemetry::default());
    let sink = Sink::open(
        &path.to_string_lossy(),
        Arc::clone(&telemetry),
        ChainClock::new(),
        u64::MAX,
    )
    .expect("sink");
    // One writer: each commit is its own transaction and sync.
    let mut lone = Vec::new();
    for i in 0..LONE_COMMITS {
        let started = Instant::now();
        sink.commit(&record("lone", i, 1)).expect("commit");
        lone.push(started.elapsed().as_secs_f64() * 1_000.0);
    }
    let lone_ms = median(lone.clone());
    let one_writer = LONE_COMMITS as f64 / (lone.iter().sum::<f64>() / 1_000.0);
    // 64 writers at once: their records share transactions.
    let commits_before = telemetry.get(telemetry::STORE_COMMITS, "");
    let started = Instant::now();
    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let sink = Arc::clone(&sink);
            scope.spawn(move || {
                for i in 0..INGEST_PER_WRITER {
                    sink.commit(&record(&format!("job-{}", w % 16), w * 1_000_000 + i, 1))
                        .expect("commit");
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let records = (WRITERS * INGEST_PER_WRITER) as f64;
    let commits = telemetry.get(telemetry::STORE_COMMITS, "") - commits_before;
    let rate = records / elapsed;
    drop(sink);
    let count = Store::open(&path)
        .and_then(|s| s.record_count())
        .expect("count");
    assert_eq!(
        count,
        WRITERS * INGEST_PER_WRITER + LONE_COMMITS,
        "every record durable"
    );
    println!("| durable ingest, {WRITERS} concurrent writers (group commit, SQLite synchronous=FULL) | {rate:.0} records/s ({:.0} records per commit) |", records / commits);
    println!("| durable ingest, one writer (a sync per record) | {one_writer:.0} records/s, {lone_ms:.2} ms per commit (p50) |");
    let command = "cargo bench --profile host-release -p tally-oracle --bench scale -- ingest";
    out.insert("ingest_records_per_s".into(), json!(rate.round()));
    out.insert("ingest_records_per_s_command".into(), json!(command));
    out.insert("ingest_writers".into(), json!(WRITERS));
    out.insert(
        "ingest_records_per_commit".into(),
        json!((records / commits * 10.0).round() / 10.0),
    );
    out.insert(
        "ingest_records_per_s_one_writer".into(),
        json!(one_writer.round()),
    );
    out.insert("ingest_commit_ms_p50_one_writer".into(), json!(lone_ms));
    let _ = std::fs::remove_dir_all(&dir);
}

fn round(out: &mut Map<String, Value>) {
    let total = env_u64("TALLY_BENCH_RECORDS", 500_000);
    let per_round = total / ROUNDS;
    let dir = scratch("round");
    let mut world = World::builder().fee_bps(100).challenge_window(0).build();
    let operator = world.operator();
    let client = world.client(u64::MAX / 4);
    let job = world.open_job(
        &client,
        &operator,
        0,
        JobSpec {
            unit_price: 1,
            max_units: 1_000_000_000,
            deadline_in_secs: 30 * 86_400,
            ..JobSpec::default()
        },
    );
    world.env.advance(60);
    let job_text = job.address.to_string();
    let batcher = Batcher::new(
        Store::open(&dir.join("oracle.db")).expect("store"),
        world.oracles[0].insecure_clone(),
        ChainClock::new(),
    );
    let started = Instant::now();
    let mut i = 0u64;
    for r in 0..ROUNDS {
        let now = world.env.now();
        let batch: Vec<UsageRecord> = (0..per_round)
            .map(|k| record(&job_text, i + k, now))
            .collect();
        i += per_round;
        batcher.store.record_batch(&batch).expect("records");
        let report = batcher.run_round(&mut *world.env).expect("round");
        assert_eq!(
            (report.confirmed, report.failed),
            (1, 0),
            "round {r}: {report:?}"
        );
        if r % 500 == 499 {
            eprintln!(
                "  {} rounds, {i} records, {:.0} s",
                r + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let state = world.env.job(&job.address);
    assert_eq!(state.last_seq, ROUNDS);
    // Now time rounds at that size: with 250 new records, and with nothing new.
    let mut busy = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..30 {
        let now = world.env.now();
        let batch: Vec<UsageRecord> = (0..per_round)
            .map(|k| record(&job_text, i + k, now))
            .collect();
        i += per_round;
        batcher.store.record_batch(&batch).expect("records");
        let t = Instant::now();
        let report = batcher.run_round(&mut *world.env).expect("round");
        busy.push(t.elapsed().as_secs_f64() * 1_000.0);
        assert_eq!(report.confirmed, 1);
        let t = Instant::now();
        let report = batcher.run_round(&mut *world.env).expect("round");
        idle.push(t.elapsed().as_secs_f64() * 1_000.0);
        assert_eq!(report.sent, 0);
    }
    let (busy, idle) = (median(busy), median(idle));
    println!(
        "| settlement round, one job with {total} records and {ROUNDS} settled rounds (LiteSVM) | {busy:.1} ms with {per_round} new records, {idle:.1} ms with none |"
    );
    for plan in batcher.store.query_plans().expect("plans") {
        println!("  plan {}: {}", plan.name, plan.plan.replace('\n', " / "));
    }
    let command = "cargo bench --profile host-release -p tally-oracle --bench scale -- round";
    out.insert(
        "round_ms_500k_records".into(),
        json!((busy * 100.0).round() / 100.0),
    );
    out.insert("round_ms_500k_records_command".into(), json!(command));
    out.insert(
        "round_ms_500k_records_idle".into(),
        json!((idle * 100.0).round() / 100.0),
    );
    out.insert("round_records_history".into(), json!(total));
    let _ = std::fs::remove_dir_all(&dir);
}

fn settle(out: &mut Map<String, Value>) {
    use tally_client::migrate::migrate;
    use tally_client::{ix, ops, pda, OpenJobArgs, OperatorArgs};
    use tally_tests::validator::LocalValidator;
    let jobs = env_u64("TALLY_BENCH_JOBS", 2_000);
    let Some(validator) =
        LocalValidator::start_private_or_skip(Some(&LocalValidator::default_program()))
    else {
        eprintln!("settle bench skipped: no solana-test-validator");
        return;
    };
    let mut chain = validator.chain();
    let wallet = |sol: u64| {
        let keypair = Keypair::new();
        validator
            .fund(&keypair.pubkey(), sol * 1_000_000_000)
            .expect("fund");
        keypair
    };
    let oracle = wallet(20);
    let admin = &validator.payer;
    migrate(
        &mut chain,
        admin,
        &tally_tests::validator::test_deployment(&admin.pubkey(), &oracle.pubkey()),
    )
    .expect("deployment");
    let operator = wallet(2);
    ops::register_operator(
        &mut chain,
        &operator,
        OperatorArgs {
            payout_owner: operator.pubkey(),
            node_keys: Vec::new(),
        },
        false,
    )
    .expect("operator");
    let client = wallet(jobs / 100 + 10);
    let client_tokens = ops::wrap_sol(&mut chain, &client, jobs * 1_000_000).expect("wrap");
    let now = chain.clock().expect("clock").unix_timestamp;
    let mint = ops::mint_ref(&chain, &ops::NATIVE_MINT).expect("mint");
    // Open the jobs, four per transaction, all in flight.
    let opened = Instant::now();
    let transactions: Vec<Vec<_>> = (0..jobs)
        .collect::<Vec<_>>()
        .chunks(4)
        .map(|ids| {
            ids.iter()
                .map(|&job_id| {
                    ix::open_job(
                        client.pubkey(),
                        operator.pubkey(),
                        mint,
                        client_tokens,
                        OpenJobArgs {
                            job_id,
                            unit_kind: 0,
                            input_price: tally_client::PRICE_SCALE,
                            output_price: tally_client::PRICE_SCALE,
                            model: [0; 32],
                            max_units: 1_000_000,
                            deadline: now + 86_400,
                            spend_cap_per_hour: 0,
                        },
                    )
                })
                .collect()
        })
        .collect();
    for chunk in transactions.chunks(200) {
        chain.send_all(chunk, &client, &[]).expect("open jobs");
    }
    let addresses: Vec<Pubkey> = (0..jobs).map(|id| pda::job(&client.pubkey(), id)).collect();
    eprintln!(
        "  {jobs} jobs opened in {:.0} s",
        opened.elapsed().as_secs_f64()
    );

    let dir = scratch("settle");
    let batcher = Batcher::new(
        Store::open(&dir.join("oracle.db")).expect("store"),
        oracle.insecure_clone(),
        ChainClock::synced(&chain).expect("clock"),
    );
    let mut i = 0u64;
    let mut usage = |batcher: &Batcher, chain: &tally_client::chain::RpcChain| {
        let now = chain.clock().expect("clock").unix_timestamp;
        let records: Vec<UsageRecord> = addresses
            .iter()
            .map(|a| {
                i += 1;
                record(&a.to_string(), i, now)
            })
            .collect();
        batcher.store.record_batch(&records).expect("records");
    };
    // A freshly started test validator lands its first versioned transaction only
    // after 10-20 s (later ones in a slot or two): warm it up before measuring.
    let warm = Instant::now();
    let probe = tally_client::alt::v0_message(
        &oracle.pubkey(),
        &[anchor_lang::solana_program::system_instruction::transfer(
            &oracle.pubkey(),
            &admin.pubkey(),
            1,
        )],
        &[],
        solana_hash::Hash::default(),
    )
    .expect("probe");
    chain
        .send_messages(vec![probe], &[&oracle])
        .remove(0)
        .expect("warm-up");
    eprintln!(
        "  validator warmed up in {:.1} s",
        warm.elapsed().as_secs_f64()
    );
    // The first round makes the lookup tables.
    usage(&batcher, &chain);
    let t = Instant::now();
    let report = batcher.run_round(&mut chain).expect("round");
    let cold = t.elapsed().as_secs_f64();
    assert_eq!(
        (report.confirmed, report.failed),
        (jobs as usize, 0),
        "{:?}",
        report.errors
    );
    eprintln!(
        "  cold round: {jobs} jobs in {cold:.1} s ({} transactions, tables {:?})",
        report.transactions, report.tables
    );
    // Then every job has new usage each round; the tables are there.
    let mut rates = Vec::new();
    let mut per_tx = Vec::new();
    for _ in 0..3 {
        usage(&batcher, &chain);
        let t = Instant::now();
        let report = batcher.run_round(&mut chain).expect("round");
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(
            (report.confirmed, report.failed),
            (jobs as usize, 0),
            "{:?}",
            report.errors
        );
        per_tx.extend(report.receipts_per_transaction.iter().copied());
        rates.push(jobs as f64 / secs * 60.0);
        eprintln!(
            "  round: {jobs} jobs in {secs:.2} s, {} settle transactions",
            report.receipts_per_transaction.len()
        );
    }
    let settled = ops::job(&chain, &addresses[0]).expect("job").last_seq;
    assert_eq!(settled, 4);
    let rate = median(rates);
    let cold_rate = jobs as f64 / cold * 60.0;
    let mean_per_tx = per_tx.iter().sum::<usize>() as f64 / per_tx.len().max(1) as f64;
    println!(
        "| active jobs settled per minute, solana-test-validator, {jobs} jobs with new usage each round | {rate:.0} ({cold_rate:.0} in the first round, which makes the lookup tables); {mean_per_tx:.1} receipts per transaction |"
    );
    let command = "cargo bench --profile host-release -p tally-oracle --bench scale -- settle";
    out.insert("settle_jobs_per_min_localnet".into(), json!(rate.round()));
    out.insert(
        "settle_jobs_per_min_localnet_command".into(),
        json!(command),
    );
    out.insert(
        "settle_jobs_per_min_localnet_first_round".into(),
        json!(cold_rate.round()),
    );
    out.insert("settle_active_jobs".into(), json!(jobs));
    out.insert(
        "settle_receipts_per_tx".into(),
        json!((mean_per_tx * 10.0).round() / 10.0),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn merge(values: Map<String, Value>, path: &Path) {
    let mut merged: Value = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({}));
    if let Some(target) = merged.as_object_mut() {
        target.extend(values);
    }
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(
        path,
        serde_json::to_string_pretty(&merged).unwrap_or_default(),
    )
    .expect("write results.json");
    eprintln!("merged into {}", path.display());
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    let mut out = Map::new();
    println!("| oracle at scale | measured |\n|---|---|");
    if wants("ingest") {
        ingest(&mut out);
    }
    if wants("round") {
        round(&mut out);
    }
    if wants("settle") {
        settle(&mut out);
    }
    merge(
        out,
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/results.json"),
    );
}
