//! The `tally` commands against the embedded chain: each test parses real command
//! lines and runs them through the same code as the binary, then checks balances and
//! decoded accounts.
use clap::Parser;
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::state::{Config, Operator};
use tally_cli::{execute, Cli, Output};
use tally_client::chain::ChainError;
use tally_client::config::resolve_url;
use tally_client::error::{Invalid, Missing, Refused};
use tally_client::pda;
use tally_tests::{expect_ok, JobSpec, TestEnv, World};

fn run(world: &mut World, signer: &Keypair, line: &str) -> Result<Output, ChainError> {
    run_env(&mut world.env, signer, line)
}

fn run_env(env: &mut TestEnv, signer: &Keypair, line: &str) -> Result<Output, ChainError> {
    let args = std::iter::once("tally").chain(line.split_whitespace());
    let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("`{line}` does not parse: {e}"));
    execute(
        cli.chain_command().expect("a chain command"),
        &mut **env,
        signer,
    )
}

#[test]
fn admin_init_configures_a_fresh_deployment() {
    let mut env = TestEnv::new();
    let deployer = env.deployer.insecure_clone();
    let (treasury, arbiter, oracle) = (
        Keypair::new().pubkey(),
        Keypair::new().pubkey(),
        Keypair::new().pubkey(),
    );
    let line = format!(
        "admin init --treasury {treasury} --arbiter {arbiter} --fee-bps 150 --oracle {oracle}"
    );
    if let Err(ChainError::Transaction { logs, .. }) = run_env(&mut env, &deployer, &line) {
        panic!("{}", logs.join("\n"));
    }
    let config: Config = env.account(&pda::config());
    assert_eq!(
        (config.admin, config.treasury, config.fee_bps),
        (deployer.pubkey(), treasury, 150)
    );
    assert_eq!(config.oracles, vec![oracle]);
    // Someone who is not the upgrade authority gets the program's reason.
    let squatter = env.wallet(1_000_000_000);
    let err = run_env(&mut env, &squatter, &line).unwrap_err();
    assert!(
        err.to_string().contains("already in use") || err.program_error_message().is_some(),
        "{err}"
    );
}

#[test]
fn admin_commands_change_the_config() {
    let mut world = World::builder().build();
    let admin = world.admin.insecure_clone();
    run(&mut world, &admin, "admin pause").unwrap();
    assert!(world.config().paused);
    run(&mut world, &admin, "admin unpause").unwrap();
    assert!(!world.config().paused);
    run(
        &mut world,
        &admin,
        "admin config set --fee-bps 300 --challenge-window 60",
    )
    .unwrap();
    let config = world.config();
    assert_eq!((config.fee_bps, config.challenge_window_secs), (300, 60));

    let (a, b) = (Keypair::new().pubkey(), Keypair::new().pubkey());
    run(
        &mut world,
        &admin,
        &format!("admin oracle add {a} --threshold 2"),
    )
    .unwrap();
    let config = world.config();
    assert_eq!(
        (
            config.oracles.len(),
            config.oracle_threshold,
            config.oracle_set_version
        ),
        (2, 2, 2)
    );
    run(&mut world, &admin, &format!("admin oracle rotate {a} {b}")).unwrap();
    assert_eq!(world.config().oracles[1], b);
    run(&mut world, &admin, &format!("admin oracle remove {b}")).unwrap();
    let config = world.config();
    assert_eq!(
        (
            config.oracles.len(),
            config.oracle_threshold,
            config.oracle_set_version
        ),
        (1, 1, 4)
    );
    let err = run(&mut world, &admin, &format!("admin oracle remove {b}")).unwrap_err();
    assert!(
        matches!(err, ChainError::Refused(Refused::NotOracle(k)) if k == b),
        "{err}"
    );

    let shown = run(&mut world, &admin, "admin config show").unwrap();
    assert_eq!(shown.json["fee_bps"], 300);
    assert!(
        shown.table.contains("1-of-1 (version 4)"),
        "{}",
        shown.table
    );

    let mint = world
        .env
        .create_mint(tally_tests::TokenKind::Token2022, &Keypair::new().pubkey());
    run(&mut world, &admin, &format!("admin mint add {}", mint.mint)).unwrap();
    assert!(world.env.exists(&pda::vault(&mint.mint)));

    // A non-admin is refused with the program's message.
    let intruder = world.env.wallet(1_000_000_000);
    let err = run(&mut world, &intruder, "admin pause").unwrap_err();
    assert_eq!(
        err.program_error_message(),
        Some("Signer is not allowed to do this: check --keypair")
    );
}

#[test]
fn a_client_opens_tops_up_lists_and_cancels_a_job() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(5_000_000);
    let wallet = client.wallet.insecure_clone();
    let mint = world.mint.mint;
    let op = operator.authority.pubkey();

    // $2.50 / 1M input and $10 / 1M output tokens: 100,000 tokens escrowed at the
    // output price.
    let opened = run(&mut world, &wallet, &format!("job open --operator {op} --mint {mint} --input-price 2.5 --output-price 10 --model llama-3-8b --units 100000 --id 7 --spend-cap 0.5")).unwrap();
    let address = pda::job(&wallet.pubkey(), 7);
    assert_eq!(opened.json["address"], address.to_string());
    assert_eq!(world.env.token_balance(&client.tokens), 4_000_000);
    let stored = world.env.job(&address);
    assert_eq!(stored.spend_cap_per_hour, 500_000);
    assert_eq!(
        (stored.input_price, stored.output_price),
        (2_500_000, 10_000_000)
    );
    assert_eq!(stored.model, tally_client::model_hash("llama-3-8b"));
    assert_eq!(
        opened.json["model"],
        tally_client::model_label(&tally_client::model_hash("llama-3-8b"))
    );
    assert!(opened.table.contains("2.500000 "), "{}", opened.table);
    assert!(
        opened.table.contains(" per 1M input tokens, 10.000000 ")
            && opened.table.contains("escrow left    1.000000 "),
        "{}",
        opened.table
    );
    // Units that are not tokens have one price.
    let err = run(&mut world, &wallet, &format!("job open --operator {op} --mint {mint} --kind gpu-seconds --input-price 1 --output-price 0.000005 --units 10 --id 9")).unwrap_err();
    assert!(
        matches!(err, ChainError::Invalid(Invalid::OutputPriceWithoutTokens)),
        "{err}"
    );

    run(&mut world, &wallet, &format!("job top-up {address} 0.25")).unwrap();
    assert_eq!(world.env.job(&address).escrow_left, 1_250_000);
    let status = run(&mut world, &wallet, &format!("job status {address}")).unwrap();
    assert_eq!(
        (
            status.json["status"].as_str(),
            status.json["escrow_left"].as_u64()
        ),
        (Some("open"), Some(1_250_000))
    );
    assert_eq!(
        status.json["decimals"], 6,
        "JSON: base units and the decimals"
    );
    assert!(
        status.table.contains("escrow left    1.250000 "),
        "{}",
        status.table
    );

    let listed = run(&mut world, &wallet, "job list").unwrap();
    assert_eq!(listed.json.as_array().map(Vec::len), Some(1));
    let other = world.client(0);
    let theirs = run(&mut world, &other.wallet.insecure_clone(), "job list").unwrap();
    assert_eq!(theirs.json.as_array().map(Vec::len), Some(0));
    let everyone = run(
        &mut world,
        &other.wallet.insecure_clone(),
        &format!("job list --all --operator {op}"),
    )
    .unwrap();
    assert_eq!(everyone.json.as_array().map(Vec::len), Some(1));

    // Errors say what to do.
    let err = run(
        &mut world,
        &wallet,
        &format!(
            "job open --operator {op} --mint {mint} --input-price 0.00001 --units 100000 --id 7"
        ),
    )
    .unwrap_err();
    assert!(
        matches!(err, ChainError::Refused(Refused::JobIdTaken(7))),
        "{err}"
    );
    assert!(err.to_string().contains("pick another --id"), "{err}");
    let err = run(
        &mut world,
        &wallet,
        &format!("job open --operator {op} --mint {mint} --input-price 1000 --units 100000 --id 8"),
    )
    .unwrap_err();
    assert!(
        matches!(err, ChainError::Refused(Refused::InsufficientFunds { holds, needs, .. }) if holds < needs),
        "{err}"
    );
    assert!(err.to_string().starts_with("insufficient funds"), "{err}");
    assert!(
        err.to_string().contains("holds 3.750000 of mint")
            && err
                .to_string()
                .contains("less than the 100.000000 this needs"),
        "amounts in tokens: {err}"
    );
    // Amounts that cannot be read, or are finer than the mint, are refused before
    // anything is sent.
    for (price, says) in [
        ("0.0000001", "smallest unit is 0.000001"),
        ("1e3", "is not an amount"),
    ] {
        let err = run(
            &mut world,
            &wallet,
            &format!(
                "job open --operator {op} --mint {mint} --input-price {price} --units 10 --id 8"
            ),
        )
        .unwrap_err();
        assert!(
            matches!(
                &err,
                ChainError::Invalid(Invalid::Amount {
                    what: "input-price",
                    ..
                })
            ) && err.to_string().contains(says),
            "{err}"
        );
    }
    // --base-units: typed and printed as the chain stores them.
    let args = "tally --base-units job status"
        .split_whitespace()
        .chain([address.to_string().as_str()])
        .map(str::to_string)
        .collect::<Vec<_>>();
    let cli = Cli::try_parse_from(args).unwrap();
    let base = tally_cli::execute_in(
        cli.chain_command().unwrap(),
        cli.global.units(),
        &mut *world.env,
        &wallet,
    )
    .unwrap();
    assert!(
        base.table.contains("escrow left    1250000\n"),
        "{}",
        base.table
    );

    let cancelled = run(&mut world, &wallet, &format!("job cancel {address}")).unwrap();
    assert_eq!(cancelled.json["refunded"], 1_250_000);
    assert_eq!(world.env.token_balance(&client.tokens), 5_000_000);
    assert!(!world.env.exists(&address));
    let err = run(&mut world, &wallet, &format!("job status {address}")).unwrap_err();
    assert!(
        matches!(err, ChainError::Missing(Missing::Job(a)) if a == address),
        "{err}"
    );
}

#[test]
fn anyone_expires_a_stalled_job_and_the_client_is_refunded() {
    let mut world = World::builder().expiry_grace(600).build();
    let operator = world.operator();
    let client = world.client(1_000_000);
    let job = world.open_job(
        &client,
        &operator,
        1,
        JobSpec {
            deadline_in_secs: 3_600,
            ..JobSpec::default()
        },
    );
    let cranker = world.env.wallet(1_000_000_000);
    let err = run(&mut world, &cranker, &format!("job expire {}", job.address)).unwrap_err();
    assert!(
        matches!(err, ChainError::Refused(Refused::NotExpired { expires_at, now, .. }) if now <= expires_at),
        "{err}"
    );
    assert!(err.to_string().contains("has not expired"), "{err}");
    world.env.advance(3_600 + 601);
    let out = run(&mut world, &cranker, &format!("job expire {}", job.address)).unwrap();
    assert_eq!(out.json["refunded"], 1_000_000);
    assert_eq!(world.env.token_balance(&client.tokens), 1_000_000);
}

#[test]
fn an_operator_registers_sees_earnings_and_claims_and_revenue_shows_the_day() {
    let mut world = World::builder()
        .fee_bps(250)
        .challenge_window(3_600)
        .build();
    let authority = world.env.wallet(1_000_000_000);
    let payout = Keypair::new().pubkey();
    let node = Keypair::new().pubkey();
    run(
        &mut world,
        &authority,
        &format!("operator register --payout {payout} --node-key {node}"),
    )
    .unwrap();
    let stored: Operator = world.env.account(&pda::operator(&authority.pubkey()));
    assert_eq!(
        (stored.payout_owner, stored.node_keys.clone()),
        (payout, vec![node])
    );
    let err = run(&mut world, &authority, "operator register").unwrap_err();
    assert!(
        matches!(err, ChainError::Refused(Refused::OperatorRegistered(k)) if k == authority.pubkey()),
        "{err}"
    );
    world.operators.push(pda::operator(&authority.pubkey()));

    // The World fixture settles through its own operator handle.
    let operator = tally_tests::OperatorHandle {
        authority: authority.insecure_clone(),
        payout_tokens: world.env.token_account(&payout, world.mint),
        payout_owner: payout,
    };
    let client = world.client(1_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let receipt = world.receipt(1, 4_000);
    expect_ok(world.settle(&operator, &[(job.address, receipt)]));

    let early = run(&mut world, &authority, "operator claim").unwrap();
    assert!(
        early.table.contains("nothing to claim yet"),
        "{}",
        early.table
    );
    let earnings = run(&mut world, &authority, "operator earnings").unwrap();
    assert_eq!(
        (
            earnings.json[0]["claimable"].as_u64(),
            earnings.json[0]["pending"].as_u64()
        ),
        (Some(0), Some(39_000))
    );

    world.env.advance(2 * 3_600);
    let claimed = run(&mut world, &authority, "operator claim").unwrap();
    assert_eq!(claimed.json[0]["amount"], 39_000);
    assert!(
        claimed.table.starts_with("claimed 0.039000 "),
        "{}",
        claimed.table
    );
    assert_eq!(world.env.token_balance(&operator.payout_tokens), 39_000);

    let line = format!("revenue --mint {} --days 3", world.mint.mint);
    let revenue = run(&mut world, &authority, &line).unwrap();
    let day = &revenue.json[0];
    assert_eq!(
        (
            day["gross"].as_u64(),
            day["fees"].as_u64(),
            day["units"].as_u64(),
            day["receipts"].as_u64()
        ),
        (Some(40_000), Some(1_000), Some(4_000), Some(1))
    );
    // The day the chain settled it (its clock, not this machine's).
    let date = tally_client::ops::civil_date(tally::state::utc_day(world.env.now()));
    assert_eq!(day["date"], date.as_str());
    assert!(revenue.table.contains(&date), "{}", revenue.table);
}

#[test]
fn cluster_monikers_follow_the_solana_cli() {
    assert_eq!(resolve_url("l"), "http://127.0.0.1:8899");
    assert_eq!(resolve_url("devnet"), "https://api.devnet.solana.com");
    assert_eq!(resolve_url("m"), "https://api.mainnet-beta.solana.com");
    assert_eq!(resolve_url("http://10.0.0.1:8899"), "http://10.0.0.1:8899");
}

#[test]
fn a_client_makes_a_job_key_and_a_stranger_cannot() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(5_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    let wallet = client.wallet.insecure_clone();
    let line = format!(
        "--output json job key {} --expires-in 1h --limit 0.05",
        job.address
    );
    let made = run(&mut world, &wallet, &line).unwrap();
    let key = made.json["key"].as_str().unwrap();
    assert!(key.starts_with("tally_k1_"), "{key}");
    assert_eq!(
        (
            made.json["spend_limit"].as_u64(),
            made.json["decimals"].as_u64()
        ),
        (Some(50_000), Some(6))
    );
    let claims = tally_client::job_key::JobKey::parse(key).unwrap().claims;
    assert_eq!(
        (claims.job, claims.expires_at - world.env.now()),
        (job.address, 3_600)
    );
    let stranger = world.env.wallet(1_000_000_000);
    let err = run(&mut world, &stranger, &line).unwrap_err();
    assert!(
        matches!(err, ChainError::Refused(Refused::NotTheClient { signer, .. }) if signer == stranger.pubkey()),
        "{err}"
    );
    assert!(err.to_string().contains("was opened by"), "{err}");
}

/// SOL in and out as a wallet user expects: `job open` and `top-up` in wrapped SOL
/// wrap what the wSOL account lacks from the wallet in the same transaction; refunds
/// and claims come back unwrapped as SOL unless `--no-unwrap`; amounts read in SOL.
#[test]
fn sol_is_wrapped_on_the_way_in_and_unwrapped_on_the_way_out() {
    const SOL: u64 = 1_000_000_000;
    let mut world = World::builder()
        .fee_bps(0)
        .challenge_window(0)
        .expiry_grace(0)
        .build();
    let native = world.use_wrapped_sol();
    let wsol = native.mint;
    // An operator paid to itself (its claims can be unwrapped by its own signature).
    let authority = world.env.wallet(SOL);
    run(&mut world, &authority, "operator register").unwrap();
    world.operators.push(pda::operator(&authority.pubkey()));
    let op = authority.pubkey();
    let client = world.env.wallet(3 * SOL);
    let client_wsol = tally_client::ops::wsol_account(&client.pubkey());
    assert!(!world.env.exists(&client_wsol), "the client holds only SOL");

    // 1 SOL budget at 0.001 SOL per 1M tokens (1 lamport a token): a billion tokens.
    let opened = run(
        &mut world,
        &client,
        &format!("job open --operator {op} --mint {wsol} --price 0.001 --budget 1 --deadline-in 600 --id 1"),
    )
    .unwrap();
    let job = pda::job(&client.pubkey(), 1);
    // The World checks solvency over the jobs it knows.
    let track = |world: &mut World, id: u64| {
        world.jobs.push(tally_tests::JobHandle {
            address: pda::job(&client.pubkey(), id),
            job_id: id,
            client: client.pubkey(),
            client_tokens: client_wsol,
            mint: native,
        });
    };
    track(&mut world, 1);
    let stored = world.env.job(&job);
    assert_eq!((stored.max_units, stored.escrow_left), (1_000_000_000, SOL));
    assert_eq!(
        world.env.token_balance(&client_wsol),
        0,
        "wrapped and escrowed"
    );
    assert!(
        opened.table.contains("escrow left    1.000000000 SOL"),
        "{}",
        opened.table
    );
    assert_eq!(
        (
            opened.json["escrow_left"].as_u64(),
            opened.json["decimals"].as_u64()
        ),
        (Some(SOL), Some(9))
    );
    let lamports = world.env.lamports(&client.pubkey());
    assert!(lamports < 2 * SOL, "1 SOL left the wallet: {lamports}");

    run(&mut world, &client, &format!("job top-up {job} 0.5")).unwrap();
    assert_eq!(world.env.job(&job).escrow_left, 3 * SOL / 2);
    // More than the wallet holds: refused before sending, saying how to fund it.
    let err = run(&mut world, &client, &format!("job top-up {job} 100")).unwrap_err();
    assert!(
        matches!(err, ChainError::Refused(Refused::InsufficientSol { wallet, .. }) if wallet == client.pubkey()),
        "{err}"
    );
    assert!(err.to_string().contains("solana transfer"), "{err}");
    assert_eq!(
        world.env.job(&job).escrow_left,
        3 * SOL / 2,
        "nothing moved"
    );

    // 0.25 SOL of usage settles; the operator claims it as SOL.
    let operator = tally_tests::OperatorHandle {
        authority: authority.insecure_clone(),
        payout_tokens: tally_client::ops::wsol_account(&op),
        payout_owner: op,
    };
    world.env.advance(60);
    let receipt = world.receipt(1, 250_000_000);
    expect_ok(world.settle(&operator, &[(job, receipt)]));
    world.env.advance(1);
    let before = world.env.lamports(&op);
    let claimed = run(&mut world, &authority, "operator claim").unwrap();
    assert_eq!(
        (
            claimed.json[0]["amount"].as_u64(),
            claimed.json[0]["unwrapped"].as_bool()
        ),
        (Some(SOL / 4), Some(true))
    );
    assert!(
        claimed.table.contains("claimed 0.250000000 SOL"),
        "{}",
        claimed.table
    );
    assert!(
        !world.env.exists(&operator.payout_tokens),
        "unwrapped: the wSOL account is closed"
    );
    assert!(
        world.env.lamports(&op) == before + SOL / 4 - 5_000,
        "the claim is SOL in the wallet"
    );

    // Past its deadline the client expires the job: 1.25 SOL back as SOL.
    world.env.advance(600);
    let before = world.env.lamports(&client.pubkey());
    let expired = run(&mut world, &client, &format!("job expire {job}")).unwrap();
    assert_eq!(
        (
            expired.json["refunded"].as_u64(),
            expired.json["unwrapped"].as_bool()
        ),
        (Some(5 * SOL / 4), Some(true))
    );
    assert!(
        expired.table.contains("1.250000000 SOL refunded"),
        "{}",
        expired.table
    );
    assert!(!world.env.exists(&client_wsol));
    assert!(
        world.env.lamports(&client.pubkey()) > before + 5 * SOL / 4,
        "the refund, the job's rent, less one fee"
    );

    // --no-unwrap keeps a refund wrapped.
    run(
        &mut world,
        &client,
        &format!("job open --operator {op} --mint {wsol} --price 0.001 --budget 0.2 --id 2"),
    )
    .unwrap();
    track(&mut world, 2);
    let kept = run(
        &mut world,
        &client,
        &format!("job cancel {} --no-unwrap", pda::job(&client.pubkey(), 2)),
    )
    .unwrap();
    assert_eq!(kept.json["unwrapped"], false);
    assert_eq!(world.env.token_balance(&client_wsol), SOL / 5, "still wSOL");
    // …and the next job spends that wSOL first, wrapping only the rest.
    run(
        &mut world,
        &client,
        &format!("job open --operator {op} --mint {wsol} --price 0.001 --budget 0.3 --id 3"),
    )
    .unwrap();
    track(&mut world, 3);
    assert_eq!(world.env.token_balance(&client_wsol), 0);
    assert_eq!(
        world.env.job(&pda::job(&client.pubkey(), 3)).escrow_left,
        3 * SOL / 10
    );
}
