//! settle: oracle-attested cumulative receipts, exactly-once payment, and the attacks
//! a settlement instruction invites.
use solana_signer::Signer;
use tally::errors::TallyError;
use tally::events::ReceiptSettled;
use tally::receipt::MAX_UNITS_PER_RECEIPT;
use tally::state::{utc_day, JobStatus, Revenue};
use tally_client::ix::{self, Attestation};
use tally_client::{compute_payout, pda, OracleSetArgs, Prices, UpdateConfigArgs, Usage};
use tally_tests::{
    events, expect_error, expect_ok, AnchorErrorCode, JobHandle, JobSpec, OperatorHandle, World,
};

fn setup(fee_bps: u16) -> (World, OperatorHandle, JobHandle) {
    let mut world = World::builder().fee_bps(fee_bps).build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let job = world.open_job(
        &client,
        &operator,
        1,
        JobSpec {
            unit_price: 10,
            max_units: 100_000,
            ..JobSpec::default()
        },
    );
    world.env.advance(60);
    (world, operator, job)
}

#[test]
fn a_receipt_pays_metered_units_into_earnings_and_fees() {
    let (mut world, operator, job) = setup(250);
    let receipt = world.receipt(1, 1_234);
    let sent = expect_ok(world.settle(&operator, &[(job.address, receipt)]));

    let flat = Prices {
        input: 10_000_000,
        output: 10_000_000,
    };
    let used = Usage {
        units: 1_234,
        output: 0,
    };
    let expected = compute_payout(flat, Usage::default(), used, 1_000_000, 250).unwrap();
    assert_eq!(expected.gross, 12_340);
    assert_eq!(expected.fee, 308, "fee rounds down: 12,340 × 2.5% = 308.5");
    let stored = world.env.job(&job.address);
    assert_eq!(stored.settled_units, 1_234);
    assert_eq!(stored.settled_gross, 12_340);
    assert_eq!(stored.fees, 308);
    assert_eq!(stored.escrow_left, 1_000_000 - 12_340);
    assert_eq!(stored.last_seq, 1);
    assert_eq!(stored.invoice_hash, receipt.invoice_hash);
    assert_eq!(stored.status(), JobStatus::Active);

    let earnings = world.earnings(&operator);
    assert_eq!(earnings.claimable, 0, "not matured yet");
    assert_eq!(
        earnings.pending[0].amount + earnings.pending[1].amount,
        12_032
    );
    let vault = world.vault(&world.mint.mint);
    assert_eq!(vault.fees_unclaimed, 308);
    assert_eq!(vault.operator_owed, 12_032);

    let revenue: Revenue = world
        .env
        .account(&pda::revenue(&world.mint.mint, utc_day(world.env.now())));
    assert_eq!(
        (
            revenue.gross,
            revenue.fees,
            revenue.units,
            revenue.receipts,
            revenue.jobs_started
        ),
        (12_340, 308, 1_234, 1, 1)
    );

    let settled: Vec<ReceiptSettled> = events(&sent.logs);
    assert_eq!(settled.len(), 1);
    assert_eq!(
        (
            settled[0].units,
            settled[0].gross,
            settled[0].fee,
            settled[0].net
        ),
        (1_234, 12_340, 308, 12_032)
    );
}

#[test]
fn replayed_stale_and_decreasing_receipts_never_pay_twice() {
    let (mut world, operator, job) = setup(250);
    let first = world.receipt(1, 1_000);
    expect_ok(world.settle(&operator, &[(job.address, first)]));
    let after_first = world.env.job(&job.address);

    // The same receipt again (an oracle retrying after a crash): a no-op.
    let sent = expect_ok(world.settle(&operator, &[(job.address, first)]));
    assert!(events::<ReceiptSettled>(&sent.logs).is_empty());
    assert_eq!(
        world.env.job(&job.address).settled_gross,
        after_first.settled_gross
    );

    let second = world.receipt(2, 3_000);
    expect_ok(world.settle(&operator, &[(job.address, second)]));
    // A stale seq, even with more units, is a no-op.
    let stale = tally_client::SettleReceipt {
        cumulative_units: 9_000,
        ..world.receipt(1, 9_000)
    };
    expect_ok(world.settle(&operator, &[(job.address, stale)]));
    let stored = world.env.job(&job.address);
    assert_eq!(stored.settled_units, 3_000);
    assert_eq!(stored.settled_gross, 30_000);

    // A newer seq with fewer cumulative units is refused.
    let decreasing = world.receipt(3, 2_999);
    expect_error(
        world.settle(&operator, &[(job.address, decreasing)]),
        TallyError::NonIncreasingUsage,
    );
    // Equal units under a newer seq: accepted, nothing paid.
    let flat = world.receipt(3, 3_000);
    expect_ok(world.settle(&operator, &[(job.address, flat)]));
    let stored = world.env.job(&job.address);
    assert_eq!((stored.last_seq, stored.settled_gross), (3, 30_000));
}

#[test]
fn several_jobs_settle_in_one_instruction() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let mut jobs = Vec::new();
    for id in 0..4 {
        let client = world.client(1_000_000);
        jobs.push(world.open_job(&client, &operator, id, JobSpec::default()));
    }
    world.env.advance(60);
    let receipts: Vec<_> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.address, world.receipt(1, 100 * (i as u64 + 1))))
        .collect();
    let sent = expect_ok(world.settle(&operator, &receipts));
    assert_eq!(events::<ReceiptSettled>(&sent.logs).len(), 4);
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(
            world.env.job(&job.address).settled_units,
            100 * (i as u64 + 1)
        );
    }
    let revenue: Revenue = world
        .env
        .account(&pda::revenue(&world.mint.mint, utc_day(world.env.now())));
    assert_eq!(
        (revenue.units, revenue.receipts, revenue.jobs_started),
        (1_000, 4, 4)
    );
}

#[test]
fn usage_beyond_the_escrow_pays_only_the_escrow() {
    let (mut world, operator, job) = setup(0);
    // 100,000 units escrowed at 10; the oracle reports the most one receipt may bill.
    let receipt = world.receipt(1, MAX_UNITS_PER_RECEIPT);
    let sent = expect_ok(world.settle(&operator, &[(job.address, receipt)]));
    let settled: Vec<ReceiptSettled> = events(&sent.logs);
    assert!(settled[0].capped);
    assert_eq!(settled[0].gross, 1_000_000);
    let stored = world.env.job(&job.address);
    assert_eq!(stored.escrow_left, 0);
    assert_eq!(stored.settled_gross, 1_000_000);
    // Nothing more can be paid out of an empty escrow.
    let next = world.receipt(2, 2 * MAX_UNITS_PER_RECEIPT);
    let sent = expect_ok(world.settle(&operator, &[(job.address, next)]));
    assert_eq!(events::<ReceiptSettled>(&sent.logs)[0].gross, 0);
}

#[test]
fn spend_rate_cap_refuses_a_receipt_that_bills_too_fast() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    // At most 50,000 per hour: in the first hour, 5,000 units at 10.
    let spec = JobSpec {
        unit_price: 10,
        max_units: 1_000_000,
        spend_cap_per_hour: 50_000,
        ..JobSpec::default()
    };
    let job = world.open_job(&client, &operator, 1, spec);
    world.env.advance(60);
    let greedy = world.receipt(1, 5_100);
    expect_error(
        world.settle(&operator, &[(job.address, greedy)]),
        TallyError::SpendRateExceeded,
    );
    let fair = world.receipt(1, 5_000);
    expect_ok(world.settle(&operator, &[(job.address, fair)]));
    // An hour later the allowance has doubled.
    world.env.advance(3_600);
    let later = world.receipt(2, 10_000);
    expect_ok(world.settle(&operator, &[(job.address, later)]));
}

#[test]
fn receipts_for_usage_after_the_deadline_or_past_grace_are_refused() {
    let mut world = World::builder().expiry_grace(600).build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let job = world.open_job(
        &client,
        &operator,
        1,
        JobSpec {
            deadline_in_secs: 1_000,
            ..JobSpec::default()
        },
    );
    let deadline = world.env.job(&job.address).deadline;
    world.env.advance(1_100);
    let late_period = tally_client::SettleReceipt {
        period_end: deadline + 1,
        ..world.receipt(1, 10)
    };
    expect_error(
        world.settle(&operator, &[(job.address, late_period)]),
        TallyError::UsageAfterDeadline,
    );
    // Usage up to the deadline still settles within the grace.
    let in_time = tally_client::SettleReceipt {
        period_end: deadline,
        ..world.receipt(1, 10)
    };
    expect_ok(world.settle(&operator, &[(job.address, in_time)]));
    world.env.advance(600);
    let after_grace = tally_client::SettleReceipt {
        period_end: deadline,
        ..world.receipt(2, 20)
    };
    expect_error(
        world.settle(&operator, &[(job.address, after_grace)]),
        TallyError::JobExpired,
    );
}

#[test]
fn attestation_attacks() {
    let mut world = World::builder().oracles(3, 2).build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let receipt = world.receipt(1, 100);
    let good = world.attestation();
    assert_eq!(good.oracles.len(), 2);

    // Below the threshold: one oracle of a 2-of-3 set.
    let lone = Attestation {
        oracles: good.oracles[..1].to_vec(),
        ..good.clone()
    };
    expect_error(
        world.settle_with(&lone, &operator, &[(job.address, receipt)]),
        TallyError::NotEnoughOracleSignatures,
    );

    // The same oracle twice does not make a quorum.
    let twice = Attestation {
        oracles: vec![good.oracles[0], good.oracles[0]],
        ..good.clone()
    };
    expect_error(
        world.settle_with(&twice, &operator, &[(job.address, receipt)]),
        TallyError::DuplicateOracleSigner,
    );

    // A key outside the set.
    let outsider = world.env.wallet(1_000_000_000);
    world.oracles.push(outsider.insecure_clone());
    let forged = Attestation {
        oracles: vec![good.oracles[0], outsider.pubkey()],
        ..good.clone()
    };
    expect_error(
        world.settle_with(&forged, &operator, &[(job.address, receipt)]),
        TallyError::UnknownOracle,
    );

    // An oracle listed but not signing.
    // (The fee payer is someone else, so the first oracle's key signs nothing.)
    let mut unsigned = ix::settle(
        &good,
        operator.authority.pubkey(),
        world.mint.mint,
        &[(job.address, receipt)],
    );
    unsigned.accounts[0].is_signer = false;
    let second = world.oracles[1].insecure_clone();
    expect_error(
        world.env.send(&[unsigned], &[&second]),
        AnchorErrorCode::AccountNotSigner,
    );

    // Receipts naming another oracle-set version.
    let stale_version = Attestation {
        oracle_set_version: 7,
        ..good.clone()
    };
    expect_error(
        world.settle_with(&stale_version, &operator, &[(job.address, receipt)]),
        TallyError::OracleSetVersionMismatch,
    );

    // Rotation: the old keys no longer settle, even under the new version.
    let admin = world.admin.insecure_clone();
    let new_oracle = world.env.wallet(1_000_000_000);
    expect_ok(world.send(
        &[ix::update_config(
            admin.pubkey(),
            UpdateConfigArgs {
                oracle_set: Some(OracleSetArgs {
                    oracles: vec![new_oracle.pubkey()],
                    threshold: 1,
                }),
                ..Default::default()
            },
        )],
        &[&admin],
    ));
    let old_keys_new_version = Attestation {
        oracle_set_version: 2,
        oracles: good.oracles[..1].to_vec(),
        ..good.clone()
    };
    expect_error(
        world.settle_with(&old_keys_new_version, &operator, &[(job.address, receipt)]),
        TallyError::UnknownOracle,
    );
    expect_error(
        world.settle_with(&good, &operator, &[(job.address, receipt)]),
        TallyError::OracleSetVersionMismatch,
    );

    world.oracles.insert(0, new_oracle.insecure_clone());
    let rotated = Attestation {
        oracles: vec![new_oracle.pubkey()],
        oracle_set_version: 2,
        ..good
    };
    expect_ok(world.settle_with(&rotated, &operator, &[(job.address, receipt)]));
    assert_eq!(world.env.job(&job.address).settled_units, 100);
}

#[test]
fn account_substitution_attacks() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let rival = world.operator();
    let client = world.client(10_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let receipt = world.receipt(1, 100);

    // Another operator's settlement cannot bill this operator's job.
    expect_error(
        world.settle(&rival, &[(job.address, receipt)]),
        TallyError::JobMismatch,
    );

    // Type cosplay: an Operator, the Config and a system account as "jobs".
    for fake in [operator.address(), pda::config(), client.wallet.pubkey()] {
        expect_error(
            world.settle(&operator, &[(fake, receipt)]),
            TallyError::InvalidJobAccount,
        );
    }

    // A job passed read-only.
    let attestation = world.attestation();
    let mut readonly = ix::settle(
        &attestation,
        operator.authority.pubkey(),
        world.mint.mint,
        &[(job.address, receipt)],
    );
    readonly.accounts.last_mut().unwrap().is_writable = false;
    let oracle = world.oracles[0].insecure_clone();
    expect_error(
        world.env.send_with_payer(&[readonly], &oracle, &[]),
        TallyError::InvalidJobAccount,
    );

    // More receipts than jobs.
    let mut short = ix::settle(
        &attestation,
        operator.authority.pubkey(),
        world.mint.mint,
        &[(job.address, receipt)],
    );
    short.accounts.pop();
    expect_error(
        world.env.send_with_payer(&[short], &oracle, &[]),
        TallyError::ReceiptCountMismatch,
    );

    // Another operator's earnings ledger, to collect this operator's job: the ledger
    // names the operator, and the job is not that operator's.
    let mut fake_earnings = ix::settle(
        &attestation,
        operator.authority.pubkey(),
        world.mint.mint,
        &[(job.address, receipt)],
    );
    fake_earnings.accounts[3].pubkey = pda::earnings(&rival.address(), &world.mint.mint);
    expect_error(
        world.env.send_with_payer(&[fake_earnings], &oracle, &[]),
        TallyError::JobMismatch,
    );
    // Another mint's revenue ledger.
    let mut fake_revenue = ix::settle(
        &attestation,
        operator.authority.pubkey(),
        world.mint.mint,
        &[(job.address, receipt)],
    );
    fake_revenue.accounts[4].pubkey = pda::earnings(&operator.address(), &world.mint.mint);
    expect_error(
        world.env.send_with_payer(&[fake_revenue], &oracle, &[]),
        AnchorErrorCode::AccountDiscriminatorMismatch,
    );

    // A revenue account of another day.
    let yesterday = Attestation {
        day: attestation.day - 1,
        ..attestation.clone()
    };
    expect_error(
        world.settle_with(&yesterday, &operator, &[(job.address, receipt)]),
        TallyError::WrongRevenueDay,
    );

    // A job in another mint, against this mint's vault.
    let other_mint = world.env.create_mint(
        tally_tests::TokenKind::Token2022,
        &world.mint_authority.pubkey(),
    );
    let admin = world.admin.insecure_clone();
    expect_ok(world.send(&[ix::add_mint(admin.pubkey(), other_mint)], &[&admin]));
    world.mints.push(other_mint);
    let saved = world.mint;
    world.mint = other_mint;
    let other_client = world.client(1_000_000);
    let other_job = world.open_job(&other_client, &operator, 9, JobSpec::default());
    world.mint = saved;
    expect_error(
        world.settle(&operator, &[(other_job.address, receipt)]),
        TallyError::JobMismatch,
    );
    // This operator's earnings ledger of the other mint, against this mint's vault.
    let open_other = ix::open_ledgers(
        world.env.payer.pubkey(),
        operator.authority.pubkey(),
        other_mint.mint,
        attestation.day,
    );
    expect_ok(world.send(&[open_other], &[]));
    let mut other_ledger = ix::settle(
        &attestation,
        operator.authority.pubkey(),
        world.mint.mint,
        &[(job.address, receipt)],
    );
    other_ledger.accounts[3].pubkey = pda::earnings(&operator.address(), &other_mint.mint);
    expect_error(
        world.env.send_with_payer(&[other_ledger], &oracle, &[]),
        TallyError::WrongLedger,
    );

    assert_eq!(
        world.env.job(&job.address).settled_units,
        0,
        "nothing was settled"
    );
}

/// Receipts on the oracle-signer path commit to the job's address only (not its
/// nonce): that is enough because an address never holds a second job. An oracle
/// resending, after a crash, a receipt written for a job the client has since
/// cancelled cannot bill a new job at that address.
#[test]
fn a_receipt_for_a_closed_job_cannot_settle_a_job_reopened_at_its_address() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    // Written by the oracle before a crash, not landed yet.
    let late = world.receipt(1, 900);
    expect_ok(world.send(
        &[ix::cancel_job(
            client.wallet.pubkey(),
            job.address,
            world.mint,
            client.tokens,
        )],
        &[&client.wallet],
    ));
    let (_, reopened) = world.try_open_job(&client, &operator, 1, JobSpec::default());
    expect_error(reopened, TallyError::JobIdUsed);
    expect_error(
        world.settle(&operator, &[(job.address, late)]),
        TallyError::InvalidJobAccount,
    );
    assert_eq!(world.env.token_balance(&client.tokens), 10_000_000);
}
