//! complete_job, claim and withdraw_fees: money out, exactly once.
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::errors::TallyError;
use tally::events::{EarningsClaimed, FeesWithdrawn, JobClosed};
use tally::state::JobStatus;
use tally_client::ix::{self, MintRef};
use tally_client::{pda, OperatorArgs, UpdateConfigArgs};
use tally_tests::{
    events, expect_error, expect_failure, expect_ok, AnchorErrorCode, JobSpec, World,
};

#[test]
fn completing_a_job_settles_the_final_receipt_refunds_and_closes() {
    let mut world = World::builder().fee_bps(100).build();
    let operator = world.operator();
    let client = world.client(2_000_000);
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
    let first = world.receipt(1, 40_000);
    expect_ok(world.settle(&operator, &[(job.address, first)]));
    let lamports_before = world.env.lamports(&client.wallet.pubkey());
    let rent = world.env.lamports(&job.address);

    let last = world.receipt(2, 45_000);
    let sent = expect_ok(world.complete(&operator, &job, last));
    // The job has ended but stays while its share can still be disputed.
    let ended = world.env.job(&job.address);
    assert_eq!(
        (ended.status(), ended.escrow_left),
        (JobStatus::Completed, 0)
    );
    // 45,000 units at 10 were paid; the rest of the 1,000,000 came back.
    assert_eq!(world.env.token_balance(&client.tokens), 2_000_000 - 450_000);
    let closed: Vec<JobClosed> = events(&sent.logs);
    assert_eq!(closed[0].status, JobStatus::Completed as u8);
    assert_eq!(
        (
            closed[0].refunded,
            closed[0].settled_units,
            closed[0].settled_gross
        ),
        (550_000, 45_000, 450_000)
    );
    let vault = world.vault(&world.mint.mint);
    assert_eq!(vault.escrow_total, 0);
    assert_eq!(
        vault.fees_unclaimed,
        4_000 + 500,
        "1% of 400,000 then of 50,000"
    );

    // Completing again: the job has ended.
    let again = world.receipt(3, 50_000);
    expect_error(
        world.complete(&operator, &job, again),
        TallyError::JobFinished,
    );

    // Once its share has matured anyone closes it: rent back to the client.
    world.env.advance(2 * 3_600 + 60);
    let anyone = world.env.wallet(1_000_000_000);
    expect_ok(world.send(
        &[ix::close_job(anyone.pubkey(), job.address, job.client)],
        &[&anyone],
    ));
    assert!(!world.env.exists(&job.address));
    assert_eq!(
        world.env.lamports(&client.wallet.pubkey()),
        lamports_before + rent,
        "rent back to the client"
    );
    // Revived closed account: completing again finds nothing.
    expect_error(
        world.complete(&operator, &job, again),
        AnchorErrorCode::AccountOwnedByWrongProgram,
    );
}

#[test]
fn a_job_with_nothing_left_to_dispute_closes_when_it_ends() {
    // Without a challenge window, earnings are claimable at once: nothing to dispute.
    let mut world = World::builder().challenge_window(0).build();
    let operator = world.operator();
    let client = world.client(2_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let lamports_before = world.env.lamports(&client.wallet.pubkey());
    let rent = world.env.lamports(&job.address);
    expect_ok(world.complete(&operator, &job, world.receipt(1, 100)));
    assert!(!world.env.exists(&job.address));
    assert_eq!(
        world.env.lamports(&client.wallet.pubkey()),
        lamports_before + rent
    );
}

#[test]
fn a_final_receipt_may_repeat_the_last_settled_one() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(1_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let receipt = world.receipt(1, 500);
    expect_ok(world.settle(&operator, &[(job.address, receipt)]));
    // Same seq, different units: refused.
    let forged = tally_client::SettleReceipt {
        cumulative_units: 900,
        ..receipt
    };
    expect_error(
        world.complete(&operator, &job, forged),
        TallyError::NonIncreasingUsage,
    );
    let sent = expect_ok(world.complete(&operator, &job, receipt));
    assert_eq!(
        events::<JobClosed>(&sent.logs)[0].refunded,
        1_000_000 - 5_000
    );
}

#[test]
fn complete_job_attacks() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(1_000_000);
    let thief = world.client(0);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let receipt = world.receipt(1, 500);
    let attestation = world.attestation();
    let oracle = world.oracles[0].insecure_clone();
    if let Some(open) = world.ledgers_ix(&attestation, &operator) {
        expect_ok(world.send(&[open], &[]));
    }

    // Refund to the thief's token account.
    let to_thief = ix::complete_job(
        &attestation,
        operator.authority.pubkey(),
        world.mint,
        job.address,
        client.wallet.pubkey(),
        thief.tokens,
        receipt,
    );
    expect_error(
        world.env.send_with_payer(&[to_thief], &oracle, &[]),
        AnchorErrorCode::ConstraintTokenOwner,
    );
    // Rent to the thief.
    let rent_thief = ix::complete_job(
        &attestation,
        operator.authority.pubkey(),
        world.mint,
        job.address,
        thief.wallet.pubkey(),
        client.tokens,
        receipt,
    );
    expect_error(
        world.env.send_with_payer(&[rent_thief], &oracle, &[]),
        TallyError::JobMismatch,
    );
    // A non-oracle completing.
    let mut forged = attestation.clone();
    let outsider = world.env.wallet(1_000_000_000);
    forged.oracles = vec![outsider.pubkey()];
    let ix = ix::complete_job(
        &forged,
        operator.authority.pubkey(),
        world.mint,
        job.address,
        client.wallet.pubkey(),
        client.tokens,
        receipt,
    );
    expect_error(
        world.env.send_with_payer(&[ix], &outsider, &[]),
        TallyError::UnknownOracle,
    );
    // The operator's earnings account of another mint (wrong mint for the vault).
    let mut wrong_mint = ix::complete_job(
        &attestation,
        operator.authority.pubkey(),
        world.mint,
        job.address,
        client.wallet.pubkey(),
        client.tokens,
        receipt,
    );
    wrong_mint.accounts[3].pubkey = pda::vault(&Keypair::new().pubkey());
    expect_failure(world.env.send_with_payer(&[wrong_mint], &oracle, &[]));
    assert!(world.env.exists(&job.address));
    assert_eq!(world.env.token_balance(&thief.tokens), 0);
}

#[test]
fn operator_claims_matured_earnings_across_jobs_after_the_challenge_window() {
    let mut world = World::builder()
        .fee_bps(250)
        .challenge_window(3_600)
        .build();
    let operator = world.operator();
    let a = world.client(1_000_000);
    let b = world.client(1_000_000);
    let job_a = world.open_job(&a, &operator, 1, JobSpec::default());
    let job_b = world.open_job(&b, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let receipts = [
        (job_a.address, world.receipt(1, 1_000)),
        (job_b.address, world.receipt(1, 3_000)),
    ];
    expect_ok(world.settle(&operator, &receipts));

    expect_error(world.claim(&operator), TallyError::NothingToClaim);
    let earnings = world.earnings(&operator);
    let matures_at = earnings.pending.iter().map(|b| b.matures_at).max().unwrap();
    assert!(
        matures_at - world.env.now() >= 3_600,
        "at least one window away"
    );
    world.env.set_time(matures_at - 1);
    expect_error(world.claim(&operator), TallyError::NothingToClaim);

    world.env.set_time(matures_at);
    let sent = expect_ok(world.claim(&operator));
    let net = 40_000 - 1_000; // 4,000 units at 10, minus 2.5%
    assert_eq!(world.env.token_balance(&operator.payout_tokens), net);
    let claimed: Vec<EarningsClaimed> = events(&sent.logs);
    assert_eq!(claimed[0].amount, net);
    assert_eq!(world.earnings(&operator).total_claimed, net);
    // Claiming twice pays nothing more.
    expect_error(world.claim(&operator), TallyError::NothingToClaim);
}

#[test]
fn claims_and_refunds_work_while_paused() {
    let mut world = World::builder().challenge_window(0).build();
    let operator = world.operator();
    let client = world.client(1_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let receipt = world.receipt(1, 100);
    expect_ok(world.settle(&operator, &[(job.address, receipt)]));
    let admin = world.admin.insecure_clone();
    expect_ok(world.send(
        &[ix::update_config(
            admin.pubkey(),
            UpdateConfigArgs {
                paused: Some(true),
                ..Default::default()
            },
        )],
        &[&admin],
    ));
    expect_ok(world.claim(&operator));
    let last = world.receipt(2, 200);
    expect_ok(world.complete(&operator, &job, last));
    assert_eq!(world.env.token_balance(&client.tokens), 1_000_000 - 2_000);
}

#[test]
fn claim_attacks() {
    let mut world = World::builder().challenge_window(0).build();
    let operator = world.operator();
    let client = world.client(1_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let receipt = world.receipt(1, 1_000);
    expect_ok(world.settle(&operator, &[(job.address, receipt)]));
    let intruder = world.env.wallet(1_000_000_000);
    let intruder_tokens = world.env.token_account(&intruder.pubkey(), world.mint);

    // The intruder signing for the operator.
    let mut hijack = ix::claim(intruder.pubkey(), world.mint, intruder_tokens);
    hijack.accounts[1].pubkey = operator.address();
    hijack.accounts[5].pubkey = pda::earnings(&operator.address(), &world.mint.mint);
    expect_error(
        world.send(&[hijack], &[&intruder]),
        TallyError::Unauthorized,
    );

    // The operator's authority, paying to a token account its payout owner does not own.
    let misdirected = ix::claim(operator.authority.pubkey(), world.mint, intruder_tokens);
    let authority = operator.authority.insecure_clone();
    expect_error(
        world.send(&[misdirected], &[&authority]),
        AnchorErrorCode::ConstraintTokenOwner,
    );

    // Without the authority's signature.
    let mut unsigned = ix::claim(
        operator.authority.pubkey(),
        world.mint,
        operator.payout_tokens,
    );
    unsigned.accounts[0].is_signer = false;
    expect_error(
        world.send(&[unsigned], &[]),
        AnchorErrorCode::AccountNotSigner,
    );

    // Duplicated mutable account: payout owner set to the vault PDA and the vault's
    // own token account passed as the payout account.
    let vault = pda::vault(&world.mint.mint);
    expect_ok(world.send(
        &[ix::update_operator(
            authority.pubkey(),
            OperatorArgs {
                payout_owner: vault,
                node_keys: vec![],
            },
        )],
        &[&authority],
    ));
    let looped = ix::claim(
        authority.pubkey(),
        world.mint,
        pda::vault_tokens(&world.mint.mint),
    );
    expect_error(
        world.send(&[looped], &[&authority]),
        AnchorErrorCode::ConstraintDuplicateMutableAccount,
    );
    assert_eq!(world.env.token_balance(&intruder_tokens), 0);
    assert_eq!(world.earnings(&operator).claimable, 9_750);
}

#[test]
fn treasury_withdraws_fees_and_nobody_else_can() {
    let mut world = World::builder().fee_bps(1_000).build();
    let operator = world.operator();
    let client = world.client(1_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let receipt = world.receipt(1, 1_000);
    expect_ok(world.settle(&operator, &[(job.address, receipt)]));
    let treasury = world.treasury.insecure_clone();
    let destination = world.env.token_account(&treasury.pubkey(), world.mint);
    let intruder = world.env.wallet(1_000_000_000);
    let intruder_tokens = world.env.token_account(&intruder.pubkey(), world.mint);

    expect_error(
        world.send(
            &[ix::withdraw_fees(
                intruder.pubkey(),
                world.mint,
                intruder_tokens,
            )],
            &[&intruder],
        ),
        TallyError::Unauthorized,
    );
    let mut unsigned = ix::withdraw_fees(treasury.pubkey(), world.mint, destination);
    unsigned.accounts[0].is_signer = false;
    expect_error(
        world.send(&[unsigned], &[]),
        AnchorErrorCode::AccountNotSigner,
    );
    // Fees of a mint without a vault.
    let stray = world
        .env
        .create_mint(tally_tests::TokenKind::SplToken, &Keypair::new().pubkey());
    let stray_ref = MintRef {
        mint: stray.mint,
        token_program: stray.token_program,
    };
    expect_failure(world.send(
        &[ix::withdraw_fees(treasury.pubkey(), stray_ref, destination)],
        &[&treasury],
    ));

    let sent = expect_ok(world.send(
        &[ix::withdraw_fees(
            treasury.pubkey(),
            world.mint,
            destination,
        )],
        &[&treasury],
    ));
    assert_eq!(world.env.token_balance(&destination), 1_000);
    assert_eq!(events::<FeesWithdrawn>(&sent.logs)[0].amount, 1_000);
    expect_error(
        world.send(
            &[ix::withdraw_fees(
                treasury.pubkey(),
                world.mint,
                destination,
            )],
            &[&treasury],
        ),
        TallyError::NothingToWithdraw,
    );
}
