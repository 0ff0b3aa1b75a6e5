//! A live deployment's upgrade to layout v2 (input and output prices, model binding,
//! the output counter): jobs and revenue days written by the previous program are
//! brought up to date in place by `upgrade_account` — by `tally admin migrate`, or by
//! the oracle before it settles them — pay exactly as before, and nothing else can be
//! "upgraded".
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::errors::TallyError;
use tally::events::AccountUpgraded;
use tally::state::{Job, Revenue};
use tally_client::migrate::{self, Deployment};
use tally_client::{ix, ops, pda, InitializeConfigArgs};
use tally_tests::{
    events, expect_error, expect_failure, expect_ok, AnchorErrorCode, JobSpec, World,
};

/// The config's settings as a migration manifest would state them: a plan with
/// them changes no setting.
fn same_settings(world: &World) -> InitializeConfigArgs {
    let config = world.config();
    InitializeConfigArgs {
        treasury: config.treasury,
        arbiter: config.arbiter,
        fee_bps: config.fee_bps,
        challenge_window_secs: config.challenge_window_secs,
        expiry_grace_secs: config.expiry_grace_secs,
        dispute_timeout_secs: config.dispute_timeout_secs,
        oracles: config.oracles.clone(),
        oracle_threshold: config.oracle_threshold,
    }
}

#[test]
fn v1_jobs_and_revenue_days_upgrade_in_place_and_pay_as_before() {
    let mut world = World::builder().fee_bps(0).build();
    let operator = world.operator();
    let client = world.client(100_000_000);
    let tokens = world.open_job(&client, &operator, 1, JobSpec::default());
    let gpu = world.open_job(
        &client,
        &operator,
        2,
        JobSpec {
            unit_kind: 1,
            unit_price: 7,
            ..JobSpec::default()
        },
    );
    world.env.advance(60);
    expect_ok(world.settle(
        &operator,
        &[
            (tokens.address, world.receipt(1, 1_000)),
            (gpu.address, world.receipt(1, 10)),
        ],
    ));
    let day = world.attestation().day;
    let revenue_day = pda::revenue(&world.mint.mint, day);
    let before = world.env.job(&tokens.address);

    // As the previous program left them: one price per unit, no output counter.
    for address in [tokens.address, gpu.address, revenue_day] {
        world.env.downgrade_to_v1(&address);
    }
    // Readers already see a v1 job as it will be.
    let read = ops::job(&*world.env, &tokens.address).unwrap();
    assert_eq!(
        (read.input_price, read.output_price),
        (10_000_000, 10_000_000)
    );
    let read = ops::job(&*world.env, &gpu.address).unwrap();
    assert_eq!((read.input_price, read.output_price), (7_000_000, 0));
    let days = ops::revenue(&*world.env, &world.mint.mint, 1).unwrap();
    assert_eq!((days[0].units, days[0].output_units), (1_010, 0));

    // The program refuses to settle them until they are upgraded.
    let outdated = ops::outdated_accounts(&*world.env).unwrap();
    assert_eq!(outdated.len(), 3, "{outdated:?}");
    expect_error(
        world.settle(&operator, &[(gpu.address, world.receipt(2, 20))]),
        AnchorErrorCode::AccountDidNotDeserialize,
    );

    // `tally admin migrate`'s plan has the step, and running it upgrades all three.
    let admin = world.admin.insecure_clone();
    let deployment = Deployment {
        release: None,
        settings: same_settings(&world),
        mints: vec![world.mint.mint],
    };
    let (steps, _) = migrate::plan(&*world.env, &admin.pubkey(), &deployment).unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(steps[0]
        .to_string()
        .starts_with("upgrade 2 job(s) and 1 revenue day(s)"));
    let lamports_before = world.env.lamports(&admin.pubkey());
    let report = migrate::migrate(&mut *world.env, &admin, &deployment).unwrap();
    assert_eq!(report.transactions, 1);
    assert!(
        world.env.lamports(&admin.pubkey()) < lamports_before,
        "the admin paid the rent"
    );
    assert_eq!(ops::outdated_accounts(&*world.env).unwrap(), Vec::new());
    let again = migrate::migrate(&mut *world.env, &admin, &deployment).unwrap();
    assert!(!again.changed(), "{again:?}");

    let after = world.env.job(&tokens.address);
    assert_eq!(
        (after.input_price, after.output_price, after.model),
        (10_000_000, 10_000_000, [0; 32])
    );
    assert_eq!(
        (
            after.settled_units,
            after.settled_output,
            after.settled_gross
        ),
        (before.settled_units, 0, before.settled_gross)
    );
    assert_eq!(world.env.job(&gpu.address).output_price, 0);
    for address in [tokens.address, gpu.address, revenue_day] {
        let rent = world.env.svm.minimum_balance_for_rent_exemption(
            world.env.svm.get_account(&address).unwrap().data.len(),
        );
        assert!(
            world.env.lamports(&address) >= rent,
            "rent-exempt at its new size"
        );
    }
    let revenue: Revenue = world.env.account(&revenue_day);
    assert_eq!((revenue.units, revenue.output_units), (1_010, 0));

    // They settle on: the token job's next receipt carries output tokens from 0 (its
    // settled units count as input), at the same price both ways.
    expect_ok(world.settle(
        &operator,
        &[
            (tokens.address, world.receipt_split(2, 1_500, 200)),
            (gpu.address, world.receipt(2, 20)),
        ],
    ));
    let job = world.env.job(&tokens.address);
    assert_eq!(
        job.settled_gross, 15_000,
        "1,500 tokens at 10 each, as before"
    );
    assert_eq!(world.env.job(&gpu.address).settled_gross, 140);
}

#[test]
fn the_oracle_path_upgrades_a_v1_job_before_settling_it() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(100_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    world.env.downgrade_to_v1(&job.address);
    expect_error(
        world.settle(&operator, &[(job.address, world.receipt(1, 100))]),
        TallyError::AccountNeedsUpgrade,
    );
    let oracle = world.oracles[0].insecure_clone();
    let sent = expect_ok(world.env.send_with_payer(
        &[ix::upgrade_account(oracle.pubkey(), job.address)],
        &oracle,
        &[],
    ));
    let upgraded: Vec<AccountUpgraded> = events(&sent.logs);
    assert_eq!(
        (
            upgraded[0].account,
            upgraded[0].kind.as_str(),
            upgraded[0].to_version
        ),
        (job.address, "job", 2)
    );
    assert_eq!(
        world.env.svm.get_account(&job.address).unwrap().data.len(),
        Job::ACCOUNT_SIZE
    );
    expect_ok(world.settle(&operator, &[(job.address, world.receipt(1, 100))]));
}

#[test]
fn upgrade_account_attacks() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(100_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    let stranger = world.env.wallet(1_000_000_000);
    let upgrade = |account| ix::upgrade_account(stranger.pubkey(), account);

    // Already current: refused (never converts a price twice).
    expect_error(
        world
            .env
            .send_with_payer(&[upgrade(job.address)], &stranger, &[]),
        TallyError::AccountUpToDate,
    );
    // Accounts of the program that are not jobs or revenue days.
    for account in [
        pda::config(),
        pda::vault(&world.mint.mint),
        operator.address(),
    ] {
        expect_error(
            world
                .env
                .send_with_payer(&[upgrade(account)], &stranger, &[]),
            TallyError::AccountUpToDate,
        );
    }
    // Not the program's: a wallet, a token account, a closed (empty) address.
    for account in [
        client.wallet.pubkey(),
        client.tokens,
        pda::job(&client.wallet.pubkey(), 99),
    ] {
        expect_failure(
            world
                .env
                .send_with_payer(&[upgrade(account)], &stranger, &[]),
        );
    }
    // A v1 job upgraded once; the second time it is current.
    world.env.downgrade_to_v1(&job.address);
    expect_ok(
        world
            .env
            .send_with_payer(&[upgrade(job.address)], &stranger, &[]),
    );
    expect_error(
        world
            .env
            .send_with_payer(&[upgrade(job.address)], &stranger, &[]),
        TallyError::AccountUpToDate,
    );
    // The payer must sign.
    world.env.downgrade_to_v1(&job.address);
    let mut unsigned = upgrade(job.address);
    unsigned.accounts[0].is_signer = false;
    let payer = Keypair::new();
    world
        .env
        .svm
        .airdrop(&payer.pubkey(), 1_000_000_000)
        .unwrap();
    expect_error(
        world.env.send_with_payer(&[unsigned], &payer, &[]),
        AnchorErrorCode::AccountNotSigner,
    );
}
