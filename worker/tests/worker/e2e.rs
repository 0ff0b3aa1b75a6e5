//! Real inference in the loop, end to end: a client funds jobs; its requests go
//! through the oracle gateway to a `tally-worker` process running all-MiniLM-L6-v2;
//! the oracle's invoice lines carry the token counts the model's tokenizer gave; the
//! oracle's metrics cross-check (the worker's vLLM counters) finds no drift; the
//! oracle's batcher settles cumulative receipts; each invoice file is proven to be
//! what the chain paid for; the jobs complete with their refunds; the operator
//! claims; and the sum on-chain equals the invoices, token for token.
//!
//! The same flow runs on the embedded chain (LiteSVM + the SBF program) and on
//! `solana-test-validator` (the SDK's RPC backend, real confirmations; skipped with
//! `local-validator suite skipped: <reason>` where none exists).
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::Instruction;
use anchor_lang::solana_program::program_pack::Pack;
use anchor_lang::solana_program::system_instruction;
use anchor_spl::token_2022::spl_token_2022;
use serde_json::{json, Value};
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::state::utc_day;
use tally_client::chain::{Chain, EmbeddedChain};
use tally_client::ix::{self, Attestation, MintRef};
use tally_client::{ops, pda, InitializeConfigArgs, OpenJobArgs, OperatorArgs, SettleReceipt};
use tally_oracle::batcher::{BatchSettings, Batcher};
use tally_oracle::clock::ChainClock;
use tally_oracle::gateway::Gateway;
use tally_oracle::invoice::Invoice;
use tally_oracle::scrape::{MetricsScrape, ScrapeConfig, VLLM_TOKEN_COUNTERS};
use tally_oracle::sink::Sink;
use tally_oracle::store::Store;
use tally_oracle::telemetry::Telemetry;

use crate::{model_or_skip, WorkerProcess};

const PRICE: u64 = 20; // base units of a 6-decimal stablecoin per token
const MAX_UNITS: u64 = 1_000_000;
const FEE_BPS: u16 = 250;
const JOBS: usize = 2;
const REQUESTS_PER_JOB: usize = 8;

/// Sentences of varied length, so the token counts are not a pattern.
fn corpus() -> Vec<String> {
    let subjects = [
        "The operator's GPU",
        "A client in Lisbon",
        "Tally's oracle",
        "An embedding model",
        "The settlement program on Solana",
        "Every metered request",
    ];
    let verbs = [
        "encodes",
        "pays for",
        "settles",
        "attests to",
        "refunds what is left of",
    ];
    let objects = [
        "a sentence.",
        "thousands of tokens of customer support tickets, one batch at a time.",
        "the cumulative usage receipt signed by the oracle's Ed25519 key",
        "what was actually computed — nothing more, nothing less!",
        "invoices whose sha256 lands on-chain, chained to the previous one",
        "données multilingues: naïve café, 東京, and emoji 🚀",
    ];
    let mut out = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        for (j, v) in verbs.iter().enumerate() {
            out.push(format!("{s} {v} {}", objects[(i + j) % objects.len()]));
        }
    }
    out
}

/// The texts of request `r` of job `j`: one string or a batch of up to 16.
fn request_inputs(corpus: &[String], j: usize, r: usize) -> Vec<String> {
    let n = [1, 3, 16, 1, 8, 2, 5, 12][r % 8];
    (0..n)
        .map(|k| corpus[(j * 7 + r * 5 + k * 3) % corpus.len()].clone())
        .collect()
}

/// The tokens all-MiniLM-L6-v2 reads for `text`, counted here with the model's
/// tokenizer.json directly (special tokens included, no padding).
fn tokenizer_count(tokenizer: &tokenizers::Tokenizer, text: &str) -> u64 {
    tokenizer.encode(text, true).unwrap().get_ids().len() as u64
}

/// How the chain under test passes time for the challenge window.
trait Clock {
    fn pass(&mut self, secs: i64);
}

impl Clock for EmbeddedChain {
    fn pass(&mut self, secs: i64) {
        self.advance(secs);
    }
}

impl Clock for tally_client::chain::RpcChain {
    fn pass(&mut self, _secs: i64) {
        // Real time: `claim` below retries until the validator's clock is past it.
    }
}

/// What a run settled, for the figures printed.
struct Settled {
    requests: usize,
    inputs: usize,
    tokens: u64,
    receipts: usize,
    settle_fee_lamports: u64,
}

/// The whole flow on `chain`, where `admin` is the program's upgrade authority and
/// holds SOL. `challenge_window` is waited for (embedded: advanced) before claiming.
fn run_flow<C: Chain + Clock>(
    chain: &mut C,
    admin: &Keypair,
    model: &Path,
    challenge_window: u32,
    label: &str,
) -> Settled {
    let t0 = Instant::now();
    let (oracle, operator, client, mint_authority, treasury) = (
        Keypair::new(),
        Keypair::new(),
        Keypair::new(),
        Keypair::new(),
        Keypair::new(),
    );
    let transfers: Vec<Instruction> = [&oracle, &operator, &client, &mint_authority]
        .iter()
        .map(|k| system_instruction::transfer(&admin.pubkey(), &k.pubkey(), 5_000_000_000))
        .collect();
    chain.send(&transfers, admin, &[]).unwrap();

    // A deployment: config, a 6-decimal stablecoin, an operator.
    let mint_key = Keypair::new();
    let space = spl_token_2022::state::Mint::LEN;
    let rent = chain.minimum_balance_for_rent_exemption(space).unwrap();
    chain
        .send(
            &[
                system_instruction::create_account(
                    &admin.pubkey(),
                    &mint_key.pubkey(),
                    rent,
                    space as u64,
                    &anchor_spl::token::ID,
                ),
                spl_token_2022::instruction::initialize_mint2(
                    &anchor_spl::token::ID,
                    &mint_key.pubkey(),
                    &mint_authority.pubkey(),
                    None,
                    6,
                )
                .unwrap(),
            ],
            admin,
            &[&mint_key],
        )
        .unwrap();
    let mint = MintRef {
        mint: mint_key.pubkey(),
        token_program: anchor_spl::token::ID,
    };
    ops::init(
        chain,
        admin,
        InitializeConfigArgs {
            treasury: treasury.pubkey(),
            arbiter: admin.pubkey(),
            fee_bps: FEE_BPS,
            challenge_window_secs: challenge_window,
            expiry_grace_secs: 600,
            dispute_timeout_secs: 86_400,
            oracles: vec![oracle.pubkey()],
            oracle_threshold: 1,
        },
    )
    .unwrap();
    ops::add_mint(chain, admin, &mint.mint).unwrap();
    ops::register_operator(
        chain,
        &operator,
        OperatorArgs {
            payout_owner: operator.pubkey(),
            node_keys: vec![],
        },
        false,
    )
    .unwrap();

    // The client funds its wallet and escrows two jobs.
    let client_tokens = ops::ensure_token_account(chain, &client, &client.pubkey(), mint).unwrap();
    let funded = PRICE * MAX_UNITS * JOBS as u64;
    chain
        .send(
            &[spl_token_2022::instruction::mint_to(
                &mint.token_program,
                &mint.mint,
                &client_tokens,
                &mint_authority.pubkey(),
                &[],
                funded,
            )
            .unwrap()],
            &mint_authority,
            &[],
        )
        .unwrap();
    let now = chain.clock().unwrap().unix_timestamp;
    let jobs: Vec<Pubkey> = (0..JOBS as u64)
        .map(|id| {
            let view = ops::open_job(
                chain,
                &client,
                &operator.pubkey(),
                &mint.mint,
                OpenJobArgs {
                    job_id: id,
                    unit_kind: 0,
                    unit_price: PRICE,
                    max_units: MAX_UNITS,
                    deadline: now + 3_600,
                    spend_cap_per_hour: 0,
                },
            )
            .unwrap();
            view.address.parse().unwrap()
        })
        .collect();
    assert_eq!(ops::token_balance(chain, &client_tokens).unwrap(), 0);

    // The operator's GPU worker (a real process with the real model) behind the
    // oracle's gateway; one API key per job.
    let worker = WorkerProcess::start(model);
    let mut tokenizer = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    tokenizer.with_padding(None).with_truncation(None).unwrap();
    let dir = std::env::temp_dir().join(format!("tally-real-model-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store_path = dir.join("oracle.db");
    let corpus = corpus();
    // Request id → (job, tokens the tokenizer counts for its inputs).
    let mut expected: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut upstream_ids: BTreeMap<String, String> = BTreeMap::new();
    let mut inputs = 0;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Records are stamped in the chain's time (the gateway's clock), whatever the
    // day this test runs on.
    let clock = ChainClock::synced(chain).unwrap();
    let drift = runtime.block_on(async {
        let api_keys: HashMap<String, String> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (format!("key-{i}"), j.to_string()))
            .collect();
        // The gateway commits into a sink whose telemetry the oracle's metrics
        // cross-check compares with the worker's own counters (vLLM's names).
        let telemetry = Arc::new(Telemetry::default());
        let sink = Sink::open(
            store_path.to_str().unwrap(),
            Arc::clone(&telemetry),
            Arc::clone(&clock),
            u64::MAX,
        )
        .unwrap();
        let gateway = Gateway::with_sink(worker.url.clone(), api_keys, sink);
        let mut cross_check = MetricsScrape::new(
            ScrapeConfig {
                url: format!("{}/metrics", worker.url),
                interval: Duration::from_secs(1),
                counters: VLLM_TOKEN_COUNTERS
                    .iter()
                    .map(|c| (*c).to_string())
                    .collect(),
                tolerance: 0.0,
            },
            telemetry,
        );
        let baseline = cross_check.scrape().await.unwrap();
        assert_eq!((baseline.upstream, baseline.metered), (0.0, 0.0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/embeddings", listener.local_addr().unwrap());
        tokio::spawn(gateway.serve(listener));
        let http = reqwest::Client::new();
        for r in 0..REQUESTS_PER_JOB {
            for (j, job) in jobs.iter().enumerate() {
                let texts = request_inputs(&corpus, j, r);
                let input = if texts.len() == 1 {
                    json!(texts[0])
                } else {
                    json!(texts)
                };
                let response = http
                    .post(&url)
                    .bearer_auth(format!("key-{j}"))
                    .body(json!({ "model": "all-MiniLM-L6-v2", "input": input }).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200);
                // The gateway's own request id (what the invoice lines are keyed on);
                // the worker's id is kept beside it.
                let request_id = response
                    .headers()
                    .get("x-tally-request-id")
                    .expect("the gateway names its request id")
                    .to_str()
                    .unwrap()
                    .to_string();
                let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
                assert_eq!(body["data"].as_array().unwrap().len(), texts.len());
                let counted: u64 = texts.iter().map(|t| tokenizer_count(&tokenizer, t)).sum();
                assert_eq!(
                    body["usage"]["prompt_tokens"], counted,
                    "usage = the tokenizer's count"
                );
                upstream_ids.insert(request_id.clone(), body["id"].as_str().unwrap().to_string());
                expected.insert(request_id, (job.to_string(), counted));
                inputs += texts.len();
            }
        }
        // Refused input is neither served nor metered; an unknown key gets nothing.
        let refused = http
            .post(&url)
            .bearer_auth("key-0")
            .body(json!({ "input": ["fine", ""] }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 400);
        let stranger = http
            .post(&url)
            .bearer_auth("not-a-key")
            .body(json!({ "input": "free lunch?" }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(stranger.status().as_u16(), 401);
        // The oracle's cross-check: what the worker says it served = what was metered.
        cross_check.scrape().await.unwrap()
    });
    drop(worker);
    let tokens: u64 = expected.values().map(|(_, t)| t).sum();
    #[allow(clippy::cast_precision_loss)]
    let tokens_f64 = tokens as f64;
    assert_eq!(
        (drift.upstream, drift.metered, drift.tokens()),
        (tokens_f64, tokens_f64, 0.0),
        "the worker served exactly what was metered"
    );

    // The oracle's store holds one record per request, with the real counts.
    // Without lookup tables: this test counts what settling costs per receipt, and a
    // table's rent (given back when it is closed) is not a settlement cost.
    let batcher = Batcher::new(
        Store::open(&store_path).unwrap(),
        oracle.insecure_clone(),
        clock,
    )
    .with_settings(BatchSettings {
        invoices_dir: Some(dir.join("invoices")),
        lookup_tables: false,
        ..BatchSettings::default()
    });
    let records = batcher.store.all_records().unwrap();
    assert_eq!(records.len(), expected.len());
    for record in &records {
        let (job, counted) = &expected[&record.request_id];
        assert_eq!(record.upstream_id, upstream_ids[&record.request_id]);
        assert_eq!(
            (&record.job, record.prompt_tokens, record.completion_tokens),
            (job, *counted, 0)
        );
        assert_eq!(record.model, "all-MiniLM-L6-v2");
    }

    // The oracle settles: one cumulative receipt per job.
    let oracle_before = chain.account(&oracle.pubkey()).unwrap().unwrap().lamports;
    let round = batcher.run_round(chain).unwrap();
    assert_eq!((round.confirmed, round.failed), (JOBS, 0), "{round:?}");
    assert_eq!(
        batcher.run_round(chain).unwrap().sent,
        0,
        "nothing new to settle"
    );
    // What the oracle paid: the round's fees plus the rent of the two ledgers it
    // opened (Earnings of the operator for the mint, Revenue of the day).
    let day = utc_day(chain.clock().unwrap().unix_timestamp);
    let earnings = pda::earnings(&pda::operator(&operator.pubkey()), &mint.mint);
    let ledger_rent: u64 = [earnings, pda::revenue(&mint.mint, day)]
        .iter()
        .map(|a| chain.account(a).unwrap().map_or(0, |a| a.lamports))
        .sum();
    let oracle_after = chain.account(&oracle.pubkey()).unwrap().unwrap().lamports;
    let settle_fee_lamports = oracle_before - oracle_after - ledger_rent;

    // Every invoice line is a request with its real token count; each job's invoice
    // file is what the chain paid for (its sha256 is the job's on-chain hash).
    let mut invoiced = 0;
    for job in &jobs {
        let nonce = ops::job(chain, job).unwrap().nonce;
        let folder = dir
            .join("invoices")
            .join(job.to_string())
            .join(nonce.to_string());
        let files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        assert_eq!(files.len(), 1, "one receipt per job in one round");
        let invoice: Invoice = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!(invoice.lines.len(), REQUESTS_PER_JOB);
        for line in &invoice.lines {
            let (owner, counted) = &expected[&line.request_id];
            assert_eq!(
                (owner, line.prompt_tokens, line.completion_tokens),
                (&job.to_string(), *counted, 0)
            );
        }
        let units: u64 = invoice.lines.iter().map(|l| l.prompt_tokens).sum();
        assert_eq!(invoice.units, units);
        let verified = tally_oracle::invoice::verify(chain, &files[0]).unwrap();
        assert_eq!(verified.settled_units, units);
        let state = ops::job(chain, job).unwrap();
        assert_eq!(
            (state.settled_units, state.settled_gross),
            (units, units * PRICE),
            "on-chain = invoice"
        );
        invoiced += units;
    }
    assert_eq!(invoiced, tokens);

    // The jobs complete with their final receipts: the rest goes back to the client.
    let config = ops::config(chain).unwrap();
    let attestation = Attestation {
        oracles: vec![oracle.pubkey()],
        oracle_set_version: config.oracle_set_version,
        day,
    };
    for job in &jobs {
        let state = ops::job(chain, job).unwrap();
        chain
            .send(
                &[ix::complete_job(
                    &attestation,
                    operator.pubkey(),
                    mint,
                    *job,
                    client.pubkey(),
                    client_tokens,
                    SettleReceipt {
                        seq: state.last_seq,
                        cumulative_units: state.settled_units,
                        invoice_hash: state.invoice_hash,
                        period_end: state.last_period_end,
                    },
                )],
                &oracle,
                &[],
            )
            .unwrap();
        // Completed and refunded. While its share is in the challenge window the
        // account stays (its client may still dispute it) and is closed below.
        if chain.account(job).unwrap().is_some() {
            assert_eq!(
                ops::job(chain, job).unwrap().status(),
                tally::state::JobStatus::Completed
            );
        }
    }
    let gross = tokens * PRICE;
    assert_eq!(
        ops::token_balance(chain, &client_tokens).unwrap(),
        funded - gross
    );

    // The operator claims once the challenge window has passed.
    chain.pass(2 * i64::from(challenge_window) + 1);
    let start = Instant::now();
    let claimed = loop {
        match ops::claim(chain, &operator, &mint.mint) {
            Ok(amount) => break amount,
            Err(e) if e.to_string().contains("challenge window") => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "never matured: {e}"
                );
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => panic!("claim failed: {e}"),
        }
    };
    let fee = gross * u64::from(FEE_BPS) / 10_000;
    assert_eq!(claimed, gross - fee);
    // Nothing is disputable any more: anyone may close the jobs (rent to the client).
    for job in &jobs {
        if chain.account(job).unwrap().is_some() {
            ops::close_job(chain, &operator, job).unwrap();
        }
        assert!(chain.account(job).unwrap().is_none(), "the job is closed");
    }
    let payout = pda::associated_token(&operator.pubkey(), &mint.mint, &mint.token_program);
    assert_eq!(ops::token_balance(chain, &payout).unwrap(), gross - fee);

    // On-chain revenue = the invoices: units, gross, and the vault keeps only the fee.
    let revenue = ops::revenue(chain, &mint.mint, 2).unwrap();
    assert_eq!(revenue.iter().map(|d| d.units).sum::<u64>(), invoiced);
    assert_eq!(
        revenue.iter().map(|d| d.gross).sum::<u64>(),
        invoiced * PRICE
    );
    assert_eq!(revenue.iter().map(|d| d.fees).sum::<u64>(), fee);
    assert_eq!(
        ops::token_balance(chain, &pda::vault_tokens(&mint.mint)).unwrap(),
        fee
    );
    let _ = std::fs::remove_dir_all(&dir);
    let settled = Settled {
        requests: expected.len(),
        inputs,
        tokens,
        receipts: round.confirmed,
        settle_fee_lamports,
    };
    #[allow(clippy::cast_precision_loss)]
    let per_1k = settled.settle_fee_lamports as f64 * 1_000.0 / settled.tokens as f64;
    eprintln!(
        "real model on {label}: {} requests ({} inputs) → {} tokens invoiced = {} tokens settled in {} receipts; paid {gross}, fee {fee}, claimed {claimed}; settlement fees {} lamports ({per_1k:.1} lamports per 1k tokens at {} tokens per receipt); {:.1} s",
        settled.requests,
        settled.inputs,
        settled.tokens,
        invoiced,
        settled.receipts,
        settled.settle_fee_lamports,
        settled.tokens / settled.receipts as u64,
        t0.elapsed().as_secs_f64()
    );
    settled
}

#[test]
fn real_model_usage_settles_on_the_embedded_chain() {
    let Some(model) = model_or_skip() else { return };
    let admin = Keypair::new();
    let mut chain =
        EmbeddedChain::new(&EmbeddedChain::default_program_path(), &admin.pubkey()).unwrap();
    chain.airdrop(&admin.pubkey(), 100_000_000_000).unwrap();
    // The chain keeps its own clock (far from today's): the gateway stamps records in
    // it, so nothing here depends on the day the test runs.
    chain.set_time(tally_tests::genesis_unix_time());
    let settled = run_flow(&mut chain, &admin, &model, 60, "the embedded chain");
    assert_eq!(settled.receipts, JOBS);
}

#[test]
fn real_model_usage_settles_on_a_local_validator() {
    let Some(model) = model_or_skip() else { return };
    // A private validator: the flow initializes a fresh deployment.
    let Some(validator) = tally_tests::validator::LocalValidator::start_private_or_skip(Some(
        &tally_tests::validator::LocalValidator::default_program(),
    )) else {
        return;
    };
    eprintln!(
        "solana-test-validator {} healthy at {} in {:.2} s",
        validator.version.as_deref().unwrap_or("?"),
        validator.rpc_url,
        validator.startup.as_secs_f64()
    );
    let mut chain = validator.chain();
    let admin = validator.payer.insecure_clone();
    // A 1-second challenge window, waited in real time.
    let settled = run_flow(&mut chain, &admin, &model, 1, "solana-test-validator");
    assert_eq!(settled.receipts, JOBS);
}
