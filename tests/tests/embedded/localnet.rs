//! The local-validator tier: the same program on a real `solana-test-validator`
//! (real slots, blockhashes, confirmations, rent and RPC errors), driven only through
//! the SDK's RPC backend. Each test starts its own validator on private ports and
//! ledger (or uses `anchor test`'s, see `tally_tests::validator`); where this machine
//! has no validator the tests print `local-validator suite skipped: <reason>` and pass
//! (CI sets TALLY_REQUIRE_VALIDATOR=1 so they must run).
//!
//! scripts/test runs this module as its own step with --nocapture, so the figures it
//! prints (start-up time, CU and fees per transaction) are in the output.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::Instruction;
use anchor_spl::token_2022::spl_token_2022;
use clap::Parser;
use solana_account::Account;
use solana_clock::Clock;
use solana_hash::Hash;
use solana_keypair::Keypair;
use solana_signer::Signer;
use solana_transaction::versioned::VersionedTransaction;
use tally::state::{Earnings, Vault};
use tally_client::chain::{Chain, ChainError, Confirmed, EmbeddedChain, Memcmp, RpcChain};
use tally_client::deploy::{self, ProgramState};
use tally_client::migrate::{self, Deployment, Release};
use tally_client::{ops, pda, InitializeConfigArgs, OpenJobArgs, OperatorArgs};
use tally_oracle::batcher::Batcher;
use tally_oracle::clock::ChainClock;
use tally_oracle::gateway::{Gateway, GatewaySettings};
use tally_oracle::sim_worker::SimWorker;
use tally_oracle::store::Store;
use tally_tests::validator::LocalValidator;

/// Per million input and output tokens: output 4× input, as inference APIs price.
const PRICES: tally_client::Prices = tally_client::Prices {
    input: 20_000_000,
    output: 80_000_000,
};
const MAX_UNITS: u64 = 100_000;
const FEE_BPS: u16 = 250;
/// A short challenge window, waited in real time.
const CHALLENGE_WINDOW: u32 = 1;
const REQUESTS: u64 = 6;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A chain that counts what is sent through it (to prove a migration sent nothing).
struct Counting<'a> {
    inner: &'a mut RpcChain,
    sent: usize,
}

impl Chain for Counting<'_> {
    fn account(&self, address: &Pubkey) -> Result<Option<Account>, ChainError> {
        self.inner.account(address)
    }
    fn program_accounts(
        &self,
        data_len: usize,
        filters: &[Memcmp],
    ) -> Result<Vec<(Pubkey, Account)>, ChainError> {
        self.inner.program_accounts(data_len, filters)
    }
    fn clock(&self) -> Result<Clock, ChainError> {
        self.inner.clock()
    }
    fn latest_blockhash(&self) -> Result<Hash, ChainError> {
        self.inner.latest_blockhash()
    }
    fn minimum_balance_for_rent_exemption(&self, data_len: usize) -> Result<u64, ChainError> {
        self.inner.minimum_balance_for_rent_exemption(data_len)
    }
    fn send_transaction(&mut self, tx: VersionedTransaction) -> Result<Confirmed, ChainError> {
        self.sent += 1;
        self.inner.send_transaction(tx)
    }
    fn send_all(
        &mut self,
        transactions: &[Vec<Instruction>],
        payer: &Keypair,
        signers: &[&Keypair],
    ) -> Result<usize, ChainError> {
        self.sent += transactions.len();
        self.inner.send_all(transactions, payer, signers)
    }
}

fn cu(confirmed: &Confirmed) -> String {
    format!(
        "{} CU, fee {} lamports",
        confirmed.compute_units.unwrap_or_default(),
        confirmed.fee.unwrap_or_default()
    )
}

/// Client → oracle → claim on a real validator: the deployment configured by the
/// migration (a second run sends nothing), an operator registered, a client's job
/// served through the oracle gateway, settled by the oracle's batcher over RPC,
/// completed with its final receipt, and claimed after the challenge window in real
/// time; every balance checked on chain.
#[test]
fn client_oracle_claim_flow_over_rpc() {
    let t0 = Instant::now();
    let Some(validator) = LocalValidator::start_or_skip(Some(&LocalValidator::default_program()))
    else {
        return;
    };
    match (&validator.version, validator.is_external()) {
        (Some(version), false) => eprintln!(
            "localnet: {version} healthy at {} in {:.2} s (program preloaded)",
            validator.rpc_url,
            validator.startup.as_secs_f64()
        ),
        _ => eprintln!("localnet: using the validator at {}", validator.rpc_url),
    }
    let mut chain = validator.chain();
    let admin = validator.payer.insecure_clone();
    let (oracle, operator, client, mint_authority, treasury) = (
        Keypair::new(),
        Keypair::new(),
        Keypair::new(),
        Keypair::new(),
        Keypair::new(),
    );
    let transfers: Vec<Instruction> = [&oracle, &operator, &client, &mint_authority]
        .iter()
        .map(|k| {
            anchor_lang::solana_program::system_instruction::transfer(
                &admin.pubkey(),
                &k.pubkey(),
                10_000_000_000,
            )
        })
        .collect();
    chain.send(&transfers, &admin, &[]).unwrap();
    let mint =
        tally_client::bootstrap::create_mint(&mut chain, &admin, &mint_authority.pubkey(), 6)
            .unwrap();

    // The migration configures the deployment: the program is preloaded, so it only
    // creates the config and accepts the mint; a second run changes nothing.
    let mut release = Release::read(
        &LocalValidator::default_program(),
        Some(&repo().join("keys/tally-program-keypair.json")),
    )
    .unwrap();
    release.upgrade = false;
    let deployment = Deployment {
        release: Some(release),
        settings: InitializeConfigArgs {
            treasury: treasury.pubkey(),
            arbiter: admin.pubkey(),
            fee_bps: FEE_BPS,
            challenge_window_secs: CHALLENGE_WINDOW,
            expiry_grace_secs: 600,
            dispute_timeout_secs: 86_400,
            oracles: vec![oracle.pubkey()],
            oracle_threshold: 1,
        },
        mints: vec![mint.mint],
    };
    let report = migrate::migrate(&mut chain, &admin, &deployment).unwrap();
    eprintln!("localnet: migration: {:?}", report.steps);
    assert!(report.changed());
    assert!(
        report.steps.iter().any(|s| s.starts_with("accept mint")),
        "{report:?}"
    );
    assert!(
        !report.steps.iter().any(|s| s.contains("deploy")),
        "the preloaded program is the build: nothing to deploy ({report:?})"
    );
    let mut counting = Counting {
        inner: &mut chain,
        sent: 0,
    };
    let again = migrate::migrate(&mut counting, &admin, &deployment).unwrap();
    assert!(!again.changed(), "{again:?}");
    assert_eq!((again.transactions, counting.sent), (0, 0));

    // An operator registers; a client funds its wallet and opens a job.
    let registered = ops::register_operator(
        &mut chain,
        &operator,
        OperatorArgs {
            payout_owner: operator.pubkey(),
            node_keys: vec![],
        },
        false,
    )
    .unwrap();
    // The same instruction with the same keys costs the same on the embedded chain.
    let mut embedded =
        EmbeddedChain::new(&LocalValidator::default_program(), &admin.pubkey()).unwrap();
    embedded.airdrop(&operator.pubkey(), 1_000_000_000).unwrap();
    let embedded_cu = ops::register_operator(
        &mut embedded,
        &operator,
        OperatorArgs {
            payout_owner: operator.pubkey(),
            node_keys: vec![],
        },
        false,
    )
    .unwrap()
    .compute_units;
    eprintln!(
        "localnet: register_operator {} (embedded: {} CU)",
        cu(&registered),
        embedded_cu.unwrap_or_default()
    );
    assert_eq!(
        registered.compute_units, embedded_cu,
        "validator vs LiteSVM"
    );
    let client_tokens =
        ops::ensure_token_account(&mut chain, &client, &client.pubkey(), mint).unwrap();
    let funded = tally_client::deposit_for(PRICES, MAX_UNITS).unwrap();
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
    let job = ops::open_job(
        &mut chain,
        &client,
        &operator.pubkey(),
        &mint.mint,
        OpenJobArgs {
            job_id: 1,
            unit_kind: 0,
            input_price: PRICES.input,
            output_price: PRICES.output,
            model: tally_client::model_hash("llama-3-8b"),
            max_units: MAX_UNITS,
            deadline: now + 3_600,
            spend_cap_per_hour: 0,
        },
    )
    .unwrap();
    let job_address: Pubkey = job.address;
    assert_eq!(job.job.deposited, funded);
    assert_eq!(ops::token_balance(&chain, &client_tokens).unwrap(), 0);

    // The client's requests go through the oracle gateway to a GPU worker; the
    // gateway meters each one into the oracle's store.
    let dir = std::env::temp_dir().join(format!("tally-localnet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store_path = dir.join("oracle.db");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clock = ChainClock::synced(&chain).unwrap();
    runtime.block_on(async {
        let worker = Arc::new(SimWorker::default());
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
        tokio::spawn(Arc::clone(&worker).serve(upstream));
        let gateway = Gateway::new(
            GatewaySettings::new(upstream_url)
                .with_api_keys([("client-key".to_string(), job.address.to_string())]),
            &store_path,
            Arc::clone(&clock),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(gateway.serve(listener));
        let http = reqwest::Client::new();
        for r in 0..REQUESTS {
            let body = format!(
                r#"{{"model":"llama-3-8b","messages":[{{"role":"user","content":"request {r}"}}],"max_tokens":{},"stream":{}}}"#,
                16 + r * 4,
                r % 2 == 1
            );
            let response = http
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth("client-key")
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.bytes().await.unwrap();
        }
        for _ in 0..200 {
            if Store::open(&store_path).unwrap().record_count().unwrap() >= REQUESTS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    // The oracle's batcher settles the cumulative receipt over RPC.
    let batcher = Batcher::new(
        Store::open(&store_path).unwrap(),
        oracle.insecure_clone(),
        clock,
    )
    .with_invoices_dir(dir.join("invoices"));
    assert_eq!(batcher.store.record_count().unwrap(), REQUESTS);
    // One answer the server says came from another model than the job pays for:
    // listed, never billed.
    batcher
        .store
        .record(&tally_oracle::store::UsageRecord {
            job: job_address.to_string(),
            request_id: "swapped-model".into(),
            model: "llama-3-70b".into(),
            prompt_tokens: 1_000,
            completion_tokens: 1_000,
            finished_at: chain.clock().unwrap().unix_timestamp,
            source: "gateway".into(),
            ..tally_oracle::store::UsageRecord::default()
        })
        .unwrap();
    let round = batcher.run_round(&mut chain).unwrap();
    assert_eq!((round.confirmed, round.failed), (1, 0), "{round:?}");
    assert_eq!(
        round
            .unbillable
            .iter()
            .map(|u| (u.reason.label(), u.units))
            .collect::<Vec<_>>(),
        [("wrong_model", 2_000)],
        "{round:?}"
    );
    let settle_signature = chain.recent_signatures(&oracle.pubkey(), 1).unwrap()[0];
    let settled_tx = chain.transaction_details(settle_signature).unwrap();
    eprintln!(
        "localnet: open_ledgers + settle (1 receipt) {}",
        cu(&settled_tx)
    );
    assert_eq!(
        batcher.run_round(&mut chain).unwrap().sent,
        0,
        "nothing new"
    );
    let billed: Vec<_> = batcher
        .store
        .all_records()
        .unwrap()
        .into_iter()
        .filter(|r| r.model == "llama-3-8b")
        .collect();
    let usage = tally_client::Usage {
        units: billed
            .iter()
            .map(|r| r.prompt_tokens + r.completion_tokens)
            .sum(),
        output: billed.iter().map(|r| r.completion_tokens).sum(),
    };
    let state = ops::job(&chain, &job_address).unwrap();
    assert_eq!(
        (state.settled_units, state.settled_output),
        (usage.units, usage.output)
    );
    // Program and oracle agree to the base unit: input and output at their prices.
    let gross = u64::try_from(tally_client::amount_owed(PRICES, usage).unwrap()).unwrap();
    let fee = gross * u64::from(FEE_BPS) / 10_000;
    assert_eq!(
        (state.settled_gross, state.escrow_left),
        (gross, funded - gross)
    );

    // The job completes with its final receipt: the rest goes back to the client.
    let (_, completed) = tally_client::bootstrap::complete_settled(
        &mut chain,
        &[&oracle],
        &operator.pubkey(),
        mint,
        client_tokens,
        &job_address,
    )
    .unwrap();
    eprintln!("localnet: complete_job {}", cu(&completed));
    // Ended and refunded. The account stays while its client may still dispute; with
    // a 1 s window on a real validator the share may have matured before this
    // transaction landed, and then the program closed the job at once.
    let kept = chain.account(&job_address).unwrap().is_some();
    if kept {
        let ended = ops::job(&chain, &job_address).unwrap();
        assert_eq!(
            (ended.status(), ended.escrow_left),
            (tally::state::JobStatus::Completed, 0)
        );
    }
    eprintln!(
        "localnet: after complete_job the job is {}",
        if kept {
            "kept (still disputable)"
        } else {
            "closed (share already matured)"
        }
    );
    assert_eq!(
        ops::token_balance(&chain, &client_tokens).unwrap(),
        funded - gross,
        "the client got back everything not metered"
    );

    // Claiming before the window has passed is refused with the reason; after it
    // (real time on the validator's clock) the operator is paid exactly net.
    let earnings_address = pda::earnings(&pda::operator(&operator.pubkey()), &mint.mint);
    let start = Instant::now();
    let claimed = loop {
        match ops::claim(&mut chain, &operator, &mint.mint) {
            Ok(amount) => break amount,
            Err(e) if e.to_string().contains("challenge window") => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "earnings never matured: {e}"
                );
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => panic!("claim failed: {e}"),
        }
    };
    eprintln!(
        "localnet: claimed {claimed} after {:.1} s of challenge window",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(claimed, gross - fee);
    // The share has matured: anyone closes the job, rent back to the client.
    if kept {
        ops::close_job(&mut chain, &oracle, &job_address).unwrap();
    }
    assert!(
        chain.account(&job_address).unwrap().is_none(),
        "the job is closed"
    );
    let payout = pda::associated_token(&operator.pubkey(), &mint.mint, &mint.token_program);
    assert_eq!(ops::token_balance(&chain, &payout).unwrap(), gross - fee);

    // Solvency on chain: the vault holds exactly the unwithdrawn fee.
    let vault: Vault = chain
        .anchor_account(&pda::vault(&mint.mint))
        .unwrap()
        .unwrap();
    let earnings: Earnings = chain.anchor_account(&earnings_address).unwrap().unwrap();
    let vault_balance = ops::token_balance(&chain, &pda::vault_tokens(&mint.mint)).unwrap();
    assert_eq!(
        (
            vault.escrow_total,
            vault.operator_owed,
            vault.fees_unclaimed
        ),
        (0, 0, fee)
    );
    assert_eq!(earnings.owed().unwrap(), 0);
    assert_eq!(
        vault_balance,
        vault.escrow_total + vault.operator_owed + vault.fees_unclaimed
    );
    assert_eq!(earnings.total_claimed, gross - fee);
    let revenue = ops::revenue(&chain, &mint.mint, 2).unwrap();
    assert_eq!(revenue.iter().map(|d| d.gross).sum::<u64>(), gross);
    assert_eq!(
        (
            revenue.iter().map(|d| d.units).sum::<u64>(),
            revenue.iter().map(|d| d.output_units).sum::<u64>()
        ),
        (usage.units, usage.output)
    );
    let units = usage.units;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "localnet: {REQUESTS} requests, {units} tokens, paid {gross} (fee {fee}), refunded {}, flow done in {:.1} s",
        funded - gross,
        t0.elapsed().as_secs_f64()
    );
}

/// Migrations on a bare validator: `tally admin migrate migrations/localnet.toml`
/// deploys the program through the upgradeable loader from the SDK (buffer written
/// in chunks, deployed with room to grow), creates the config and accepts wrapped
/// SOL; a second run sends nothing; an upgrade through the SDK keeps it working.
#[test]
fn migrations_deploy_through_the_loader_and_rerun_changes_nothing() {
    let Some(validator) = LocalValidator::start_private_or_skip(None) else {
        return;
    };
    // What a progress bar is told as the deploy's writes land (`tally admin migrate`
    // draws it on stderr).
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(usize, usize)>::new()));
    let record = Arc::clone(&seen);
    let mut chain = validator
        .chain()
        .with_progress(Arc::new(move |landed, total| {
            record.lock().unwrap().push((landed, total));
        }));
    let admin = validator.payer.insecure_clone();
    let so = std::fs::read(LocalValidator::default_program()).unwrap();
    assert_eq!(
        deploy::program_state(&chain, &tally::ID).unwrap(),
        ProgramState::Missing
    );
    let manifest = repo().join("migrations/localnet.toml");
    let line = ["tally", "admin", "migrate", manifest.to_str().unwrap()];

    // Dry run: the plan, nothing sent.
    let dry = tally_cli::Cli::try_parse_from(line.iter().copied().chain(["--dry-run"])).unwrap();
    let mut counting = Counting {
        inner: &mut chain,
        sent: 0,
    };
    let planned = tally_cli::execute(dry.chain_command().unwrap(), &mut counting, &admin).unwrap();
    assert_eq!(counting.sent, 0);
    assert_eq!(
        planned.json["steps"].as_array().unwrap().len(),
        3,
        "{}",
        planned.table
    );

    let cli = tally_cli::Cli::try_parse_from(line).unwrap();
    let start = Instant::now();
    let out = tally_cli::execute(cli.chain_command().unwrap(), &mut chain, &admin)
        .unwrap_or_else(|e| panic!("migrate failed: {e}"));
    let sent = out.json["transactions"].as_u64().unwrap();
    eprintln!(
        "localnet: migrate on a bare validator in {:.1} s ({sent} transactions):\n{}",
        start.elapsed().as_secs_f64(),
        out.table
    );
    assert_eq!(out.json["changed"], true);
    // The buffer's writes reported as they landed (a report per status poll: how many
    // depends on the validator's pace): counts only go up, to the whole.
    let writes = so
        .len()
        .div_ceil(deploy::write_chunk_size(&chain, &admin, &admin).unwrap());
    let seen: Vec<usize> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, total)| *total == writes)
        .map(|(landed, _)| *landed)
        .collect();
    assert_eq!(seen.last(), Some(&writes), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    match deploy::program_state(&chain, &tally::ID).unwrap() {
        ProgramState::Upgradeable {
            authority, max_len, ..
        } => {
            assert_eq!(authority, Some(admin.pubkey()));
            assert_eq!(max_len, 2 * so.len(), "room to grow");
        }
        other => panic!("not deployed: {other:?}"),
    }
    assert!(deploy::program_state(&chain, &tally::ID).unwrap().runs(&so));
    let config = ops::config(&chain).unwrap();
    assert_eq!(
        (config.admin, config.oracles.clone(), config.fee_bps),
        (admin.pubkey(), vec![admin.pubkey()], 250)
    );
    let wsol: Pubkey = "So11111111111111111111111111111111111111112"
        .parse()
        .unwrap();
    assert!(chain.account(&pda::vault(&wsol)).unwrap().is_some());

    // The second run: nothing to change, no transaction.
    let mut counting = Counting {
        inner: &mut chain,
        sent: 0,
    };
    let again = tally_cli::execute(cli.chain_command().unwrap(), &mut counting, &admin).unwrap();
    assert_eq!(counting.sent, 0, "{}", again.table);
    assert_eq!(again.json["changed"], false);
    assert!(
        again.table.starts_with("nothing to change"),
        "{}",
        again.table
    );

    // The deployed program runs, before and after an upgrade through the SDK.
    let operator = Keypair::new();
    validator.fund(&operator.pubkey(), 1_000_000_000).unwrap();
    let args = OperatorArgs {
        payout_owner: operator.pubkey(),
        node_keys: vec![],
    };
    ops::register_operator(&mut chain, &operator, args.clone(), false).unwrap();
    let before = deploy::program_state(&chain, &tally::ID).unwrap();
    let start = Instant::now();
    let upgraded = deploy::upgrade(&mut chain, &admin, &tally::ID, &admin, &so).unwrap();
    eprintln!(
        "localnet: upgrade through the loader in {:.1} s ({} transactions of {} bytes)",
        start.elapsed().as_secs_f64(),
        upgraded.transactions,
        upgraded.chunk
    );
    let after = deploy::program_state(&chain, &tally::ID).unwrap();
    match (&before, &after) {
        (
            ProgramState::Upgradeable { slot: s0, .. },
            ProgramState::Upgradeable { slot: s1, .. },
        ) => {
            assert!(s1 > s0, "redeployed in a later slot");
        }
        _ => panic!("{before:?} / {after:?}"),
    }
    assert!(
        chain.account(&upgraded.buffer).unwrap().is_none(),
        "buffer closed"
    );
    // (deploy::upgrade returns once the cluster is past the upgrade's slot, from
    // which the new program runs.)
    ops::register_operator(&mut chain, &operator, args, true).unwrap();
}
