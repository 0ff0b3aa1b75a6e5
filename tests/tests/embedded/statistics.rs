//! Statistics never block money: lifetime totals and revenue counters saturate, and
//! a receipt may bill at most `MAX_UNITS_PER_RECEIPT` units.
use solana_signer::Signer;
use tally::errors::TallyError;
use tally::receipt::MAX_UNITS_PER_RECEIPT;
use tally::state::{utc_day, Earnings, Revenue, Vault};
use tally_client::{ix, pda};
use tally_tests::{expect_error, expect_ok, JobSpec, TokenKind, World};

#[test]
fn open_and_cancel_in_a_loop_cannot_fill_the_deposit_counter() {
    let mut world = World::builder().build();
    let operator = world.operator();
    // A high-supply, low-value mint the admin accepted.
    let cheap = world.accept_mint(TokenKind::SplToken);
    let half = u64::MAX / 2 + 1;
    let attacker = world.in_mint(cheap, |w| {
        let c = w.client(0);
        let tokens = w.fund(&c.wallet.pubkey(), cheap, half);
        tally_tests::ClientHandle {
            wallet: c.wallet,
            tokens,
        }
    });
    let whole = JobSpec {
        unit_price: 1,
        max_units: half,
        ..JobSpec::default()
    };
    // Each round trip costs the attacker only fees: the deposit comes back.
    for id in 1..=3 {
        let job = world.in_mint(cheap, |w| w.open_job(&attacker, &operator, id, whole));
        expect_ok(world.send(
            &[ix::cancel_job(
                attacker.wallet.pubkey(),
                job.address,
                cheap,
                attacker.tokens,
            )],
            &[&attacker.wallet],
        ));
    }
    let vault: Vault = world.vault(&cheap.mint);
    assert_eq!(vault.total_deposited, u64::MAX, "saturated, not overflowed");
    assert_eq!(vault.total_refunded, u64::MAX);
    // An honest client can still deposit in that mint.
    let honest = world.in_mint(cheap, |w| w.client(1_000_000));
    world.in_mint(cheap, |w| {
        w.open_job(&honest, &operator, 1, JobSpec::default())
    });
    assert_eq!(world.vault(&cheap.mint).escrow_total, 1_000_000);
}

#[test]
fn a_receipt_of_near_u64_max_units_cannot_block_the_mints_later_settlements() {
    let mut world = World::builder().fee_bps(0).build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let penny = JobSpec {
        unit_price: 1,
        max_units: 1_000,
        ..JobSpec::default()
    };
    let cheap_job = world.open_job(&client, &operator, 1, penny);
    let job = world.open_job(&client, &operator, 2, JobSpec::default());
    world.env.advance(60);
    // The oracle passes on a saturated token count for a job priced at 1.
    let huge = world.settle(
        &operator,
        &[(cheap_job.address, world.receipt(1, u64::MAX - 5))],
    );
    // Every later settlement in the mint that day must still work.
    expect_ok(world.settle(&operator, &[(job.address, world.receipt(1, 100))]));
    expect_error(huge, TallyError::TooManyUnitsInReceipt);
    let revenue: Revenue = world
        .env
        .account(&pda::revenue(&world.mint.mint, utc_day(world.env.now())));
    assert_eq!((revenue.units, revenue.gross), (100, 1_000));
}

#[test]
fn units_per_receipt_are_bounded_by_a_physical_maximum() {
    let mut world = World::builder().fee_bps(0).build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    // Exactly the bound, then the bound again on top: accepted (capped by escrow).
    expect_ok(world.settle(
        &operator,
        &[(job.address, world.receipt(1, MAX_UNITS_PER_RECEIPT))],
    ));
    expect_ok(world.settle(
        &operator,
        &[(job.address, world.receipt(2, 2 * MAX_UNITS_PER_RECEIPT))],
    ));
    // One unit more than the bound in one receipt: refused by name.
    let over = world.receipt(3, 3 * MAX_UNITS_PER_RECEIPT + 1);
    expect_error(
        world.settle(&operator, &[(job.address, over)]),
        TallyError::TooManyUnitsInReceipt,
    );
    // complete_job too.
    expect_error(
        world.complete(&operator, &job, over),
        TallyError::TooManyUnitsInReceipt,
    );
    assert_eq!(
        world.env.job(&job.address).settled_units,
        2 * MAX_UNITS_PER_RECEIPT
    );
}

#[test]
fn full_statistics_saturate_and_never_block_settlement_refunds_claims_or_fees() {
    let mut world = World::builder().fee_bps(100).challenge_window(0).build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    expect_ok(world.settle(&operator, &[(job.address, world.receipt(1, 100))]));
    let mint = world.mint.mint;
    let near = u64::MAX - 1;
    let revenue_address = pda::revenue(&mint, utc_day(world.env.now()));
    world.env.patch::<Revenue>(&revenue_address, |r| {
        (r.gross, r.fees, r.units, r.receipts, r.jobs_started) = (near, near, near, near, near);
    });
    world.env.patch::<Vault>(&pda::vault(&mint), |v| {
        v.total_deposited = near;
        v.total_refunded = near;
        v.total_claimed = near;
        v.total_fees_withdrawn = near;
    });
    let earnings_address = pda::earnings(&operator.address(), &mint);
    world.env.patch::<Earnings>(&earnings_address, |e| {
        e.total_earned = near;
        e.total_claimed = near;
        e.receipts_settled = near;
        e.units_settled = near;
    });

    // Money keeps moving: settle, open, complete (refund), claim, withdraw fees.
    expect_ok(world.settle(&operator, &[(job.address, world.receipt(2, 300))]));
    let second = world.open_job(&client, &operator, 2, JobSpec::default());
    expect_ok(world.complete(&operator, &second, world.receipt(1, 10)));
    expect_ok(world.claim(&operator));
    let treasury = world.treasury.insecure_clone();
    let destination = world.env.token_account(&treasury.pubkey(), world.mint);
    expect_ok(world.send(
        &[ix::withdraw_fees(
            treasury.pubkey(),
            world.mint,
            destination,
        )],
        &[&treasury],
    ));

    let revenue: Revenue = world.env.account(&revenue_address);
    assert_eq!(
        (revenue.gross, revenue.fees, revenue.units, revenue.receipts),
        (u64::MAX, u64::MAX, u64::MAX, u64::MAX)
    );
    let vault = world.vault(&mint);
    assert_eq!(
        (
            vault.total_deposited,
            vault.total_refunded,
            vault.total_claimed,
            vault.total_fees_withdrawn
        ),
        (u64::MAX, u64::MAX, u64::MAX, u64::MAX)
    );
    let earnings: Earnings = world.env.account(&earnings_address);
    assert_eq!(
        (earnings.total_earned, earnings.total_claimed),
        (u64::MAX, u64::MAX)
    );
    assert_eq!(world.env.token_balance(&operator.payout_tokens), 2_970 + 99);
}
