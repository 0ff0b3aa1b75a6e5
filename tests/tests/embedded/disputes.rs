//! dispute_job and resolve_dispute: a client freezes the operator's unmatured share of
//! its job; the arbiter splits it, or the timeout releases it to the operator.
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::errors::TallyError;
use tally::events::{DisputeOpened, DisputeResolved, JobAccountClosed};
use tally::state::JobStatus;
use tally_client::ix;
use tally_tests::{
    events, expect_error, expect_ok, ClientHandle, JobHandle, JobSpec, OperatorHandle, World,
};

const WINDOW: u32 = 3_600;

struct Story {
    world: World,
    operator: OperatorHandle,
    client: ClientHandle,
    job: JobHandle,
    other_job: JobHandle,
}

/// Two jobs of one operator; the disputed job has one matured and one unmatured
/// settlement, the other job an unmatured one.
fn story() -> Story {
    let mut world = World::builder().fee_bps(0).challenge_window(WINDOW).build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let other_client = world.client(10_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    let other_job = world.open_job(&other_client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let first = world.receipt(1, 1_000); // 10,000
    expect_ok(world.settle(&operator, &[(job.address, first)]));
    world.env.advance(3 * i64::from(WINDOW)); // the first settlement has matured
    let second = world.receipt(2, 1_500); // +5,000, unmatured
    let other = world.receipt(1, 700); // 7,000, unmatured, another client's job
    expect_ok(world.settle(
        &operator,
        &[(job.address, second), (other_job.address, other)],
    ));
    Story {
        world,
        operator,
        client,
        job,
        other_job,
    }
}

fn dispute(s: &mut Story) -> tally_tests::TxResult {
    let ixn = ix::dispute_job(
        s.client.wallet.pubkey(),
        s.job.address,
        s.operator.address(),
        s.world.mint.mint,
    );
    let client = s.client.wallet.insecure_clone();
    s.world.send(&[ixn], &[&client])
}

#[test]
fn a_dispute_freezes_exactly_the_jobs_unmatured_amount() {
    let mut s = story();
    let sent = expect_ok(dispute(&mut s));
    let opened: Vec<DisputeOpened> = events(&sent.logs);
    assert_eq!(
        opened[0].amount, 5_000,
        "only the unmatured 5,000 of this job"
    );
    let earnings = s.world.earnings(&s.operator);
    assert_eq!(earnings.frozen, 5_000);
    assert_eq!(
        earnings.claimable, 10_000,
        "the matured 10,000 stays claimable"
    );
    assert_eq!(
        earnings.unmatured().unwrap(),
        7_000,
        "the other job's share is untouched"
    );
    let job = s.world.env.job(&s.job.address);
    assert_eq!(job.disputed_amount, 5_000);
    assert_eq!(s.world.env.job(&s.other_job.address).disputed_amount, 0);

    // The operator can claim what matured, not what is frozen.
    expect_ok(s.world.claim(&s.operator));
    assert_eq!(s.world.env.token_balance(&s.operator.payout_tokens), 10_000);
}

#[test]
fn the_arbiter_splits_a_dispute() {
    let mut s = story();
    expect_ok(dispute(&mut s));
    let arbiter = s.world.arbiter.insecure_clone();
    let before = s.world.env.token_balance(&s.client.tokens);
    let resolve = ix::resolve_dispute(
        arbiter.pubkey(),
        s.job.address,
        s.operator.address(),
        s.world.mint,
        s.client.tokens,
        3_000,
    );
    let sent = expect_ok(s.world.send(&[resolve], &[&arbiter]));
    let resolved: Vec<DisputeResolved> = events(&sent.logs);
    assert_eq!(
        (
            resolved[0].to_client,
            resolved[0].to_operator,
            resolved[0].by_arbiter
        ),
        (3_000, 2_000, true)
    );
    assert_eq!(s.world.env.token_balance(&s.client.tokens), before + 3_000);
    let earnings = s.world.earnings(&s.operator);
    assert_eq!((earnings.frozen, earnings.claimable), (0, 12_000));
    assert_eq!(s.world.env.job(&s.job.address).disputed_amount, 0);
    // The job goes on and can complete.
    let last = s.world.receipt(3, 1_600);
    expect_ok(s.world.complete(&s.operator, &s.job, last));
}

#[test]
fn a_dispute_left_alone_releases_to_the_operator_after_the_timeout() {
    let mut s = story();
    expect_ok(dispute(&mut s));
    let anyone = s.world.env.wallet(1_000_000_000);
    let default_close = |s: &Story, share: u64| {
        ix::resolve_dispute(
            anyone.pubkey(),
            s.job.address,
            s.operator.address(),
            s.world.mint,
            s.client.tokens,
            share,
        )
    };
    expect_error(
        s.world.send(&[default_close(&s, 0)], &[&anyone]),
        TallyError::DisputeNotExpired,
    );
    s.world.env.advance(7 * 86_400 + 1);
    expect_error(
        s.world.send(&[default_close(&s, 1)], &[&anyone]),
        TallyError::InvalidSplit,
    );
    let sent = expect_ok(s.world.send(&[default_close(&s, 0)], &[&anyone]));
    let resolved: Vec<DisputeResolved> = events(&sent.logs);
    assert_eq!(
        (
            resolved[0].to_client,
            resolved[0].to_operator,
            resolved[0].by_arbiter
        ),
        (0, 5_000, false)
    );
    assert_eq!(s.world.earnings(&s.operator).frozen, 0);
}

#[test]
fn dispute_attacks() {
    let mut s = story();
    // Someone else's job.
    let stranger = s.world.client(10);
    let ixn = ix::dispute_job(
        stranger.wallet.pubkey(),
        s.job.address,
        s.operator.address(),
        s.world.mint.mint,
    );
    expect_error(
        s.world.send(&[ixn], &[&stranger.wallet]),
        TallyError::Unauthorized,
    );
    // Another operator's earnings ledger.
    let rival = s.world.operator();
    let rival_job = s.world.open_job(
        &stranger,
        &rival,
        5,
        JobSpec {
            unit_price: 1,
            max_units: 1,
            ..JobSpec::default()
        },
    );
    let _ = rival_job;
    let attestation = s.world.attestation();
    let open = ix::open_ledgers(
        s.world.env.payer.pubkey(),
        rival.authority.pubkey(),
        s.world.mint.mint,
        attestation.day,
    );
    expect_ok(s.world.send(&[open], &[]));
    let wrong = ix::dispute_job(
        s.client.wallet.pubkey(),
        s.job.address,
        rival.address(),
        s.world.mint.mint,
    );
    let client = s.client.wallet.insecure_clone();
    expect_error(s.world.send(&[wrong], &[&client]), TallyError::WrongLedger);
    // Resolving when nothing is disputed.
    let arbiter = s.world.arbiter.insecure_clone();
    let early = ix::resolve_dispute(
        arbiter.pubkey(),
        s.job.address,
        s.operator.address(),
        s.world.mint,
        s.client.tokens,
        0,
    );
    expect_error(s.world.send(&[early], &[&arbiter]), TallyError::NoDispute);

    expect_ok(dispute(&mut s));
    // Twice.
    expect_error(dispute(&mut s), TallyError::DisputeActive);
    // A disputed job cannot be completed or expired out from under the dispute.
    let last = s.world.receipt(3, 1_600);
    expect_error(
        s.world.complete(&s.operator, &s.job, last),
        TallyError::DisputeActive,
    );
    s.world.env.advance(3 * 86_400);
    let expire = ix::expire_job(
        client.pubkey(),
        s.job.address,
        s.world.mint,
        s.job.client,
        s.job.client_tokens,
    );
    expect_error(
        s.world.send(&[expire], &[&client]),
        TallyError::DisputeActive,
    );
    // The arbiter cannot give the client more than is frozen, nor pay a stranger.
    let greedy = ix::resolve_dispute(
        arbiter.pubkey(),
        s.job.address,
        s.operator.address(),
        s.world.mint,
        s.client.tokens,
        5_001,
    );
    expect_error(
        s.world.send(&[greedy], &[&arbiter]),
        TallyError::InvalidSplit,
    );
    let misdirected = ix::resolve_dispute(
        arbiter.pubkey(),
        s.job.address,
        s.operator.address(),
        s.world.mint,
        stranger.tokens,
        5_000,
    );
    expect_error(
        s.world.send(&[misdirected], &[&arbiter]),
        TallyError::WrongTokenAccount,
    );
    // A non-arbiter before the timeout.
    let impostor = ix::resolve_dispute(
        client.pubkey(),
        s.job.address,
        s.operator.address(),
        s.world.mint,
        s.client.tokens,
        5_000,
    );
    expect_error(
        s.world.send(&[impostor], &[&client]),
        TallyError::DisputeNotExpired,
    );
}

#[test]
fn nothing_to_dispute_once_everything_matured() {
    let mut s = story();
    s.world.env.advance(3 * i64::from(WINDOW));
    expect_error(dispute(&mut s), TallyError::NothingToDispute);
}

fn set_challenge_window(world: &mut World, secs: u32) {
    let admin = world.admin.insecure_clone();
    expect_ok(world.send(
        &[ix::update_config(
            admin.pubkey(),
            tally_client::UpdateConfigArgs {
                challenge_window_secs: Some(secs),
                ..Default::default()
            },
        )],
        &[&admin],
    ));
}

/// Maturity folding: a job keeps its unmatured share in two buckets, as the
/// operator's earnings do over all its jobs; when the window changes, a third
/// maturity time must fold into one of them. Folding each ledger on its own put a
/// job's share later than the earnings held it, so the earnings released it (and
/// the operator could claim it) while the client could still dispute, and the
/// dispute then failed with `LedgerMismatch`.
#[test]
fn a_dispute_after_three_challenge_window_changes_freezes_exactly_the_jobs_share() {
    let start = tally_tests::GENESIS_UNIX_TIME; // midnight: a multiple of every window
    let mut world = World::builder().fee_bps(0).challenge_window(3_600).build();
    let operator = world.operator();
    let a = world.client(10_000_000);
    let b = world.client(10_000_000);
    let job_a = world.open_job(&a, &operator, 1, JobSpec::default());
    let job_b = world.open_job(&b, &operator, 1, JobSpec::default());

    // Window 1 h: A earns 1,000 and B 10, maturing at start + 3 h.
    world.env.set_time(start + 3_600);
    let receipts = [
        (job_a.address, world.receipt(1, 100)),
        (job_b.address, world.receipt(1, 1)),
    ];
    expect_ok(world.settle(&operator, &receipts));
    // Change 1: 10 min. B earns 10 more, maturing at start + 1 h 50.
    set_challenge_window(&mut world, 600);
    world.env.set_time(start + 5_400);
    expect_ok(world.settle(&operator, &[(job_b.address, world.receipt(2, 2))]));
    // Change 2: 2 h. Both earn again, maturing at start + 4 h: a third maturity time
    // for B (and for the earnings), which must fold.
    set_challenge_window(&mut world, 7_200);
    world.env.set_time(start + 6_000);
    let receipts = [
        (job_a.address, world.receipt(2, 200)),
        (job_b.address, world.receipt(3, 3)),
    ];
    expect_ok(world.settle(&operator, &receipts));
    // Change 3: 1 min. A earns 1,000 more, maturing at start + 2 h 12: a third time
    // for A, earlier than both of its buckets.
    set_challenge_window(&mut world, 60);
    world.env.set_time(start + 7_800);
    expect_ok(world.settle(&operator, &[(job_a.address, world.receipt(3, 300))]));

    // Every amount A earned is still inside its challenge window: all of it freezes.
    let sent = expect_ok(dispute_by(&mut world, &a, &job_a, &operator));
    assert_eq!(events::<DisputeOpened>(&sent.logs)[0].amount, 3_000);
    // B's 10 of start + 1 h 50 has matured; its other 20 freeze.
    let sent = expect_ok(dispute_by(&mut world, &b, &job_b, &operator));
    assert_eq!(events::<DisputeOpened>(&sent.logs)[0].amount, 20);
    let earnings = world.earnings(&operator);
    assert_eq!(earnings.frozen, 3_020);
    assert_eq!(earnings.unmatured().unwrap(), 0);

    // Whenever the operator claims, it gets only what matured: B's 10.
    world.env.set_time(start + 8 * 3_600);
    expect_ok(world.claim(&operator));
    assert_eq!(world.env.token_balance(&operator.payout_tokens), 10);
    expect_error(world.claim(&operator), TallyError::NothingToClaim);
}

fn dispute_by(
    world: &mut World,
    client: &ClientHandle,
    job: &JobHandle,
    operator: &OperatorHandle,
) -> tally_tests::TxResult {
    let ixn = ix::dispute_job(
        client.wallet.pubkey(),
        job.address,
        operator.address(),
        world.mint.mint,
    );
    world.send(&[ixn], &[&client.wallet])
}

fn close_job(world: &mut World, closer: &Keypair, job: &JobHandle) -> tally_tests::TxResult {
    let ixn = ix::close_job(closer.pubkey(), job.address, job.client);
    world.send(&[ixn], &[closer])
}

/// Closing a job must not take away the client's right to dispute: a compromised
/// oracle bills the whole escrow through complete_job, which settles and ends the
/// job in one step; inside the challenge window the client still freezes all of it,
/// and the operator's claim cannot take it.
#[test]
fn a_completed_job_can_still_be_disputed_inside_the_challenge_window() {
    let mut world = World::builder().fee_bps(0).challenge_window(WINDOW).build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    expect_ok(world.settle(&operator, &[(job.address, world.receipt(1, 1_000))]));
    // All 100,000 escrowed units billed and the job completed at once.
    let last = world.receipt(2, 100_000);
    expect_ok(world.complete(&operator, &job, last));

    // Inside the window the client disputes: the whole unmatured share freezes.
    let sent = expect_ok(dispute_by(&mut world, &client, &job, &operator));
    assert_eq!(events::<DisputeOpened>(&sent.logs)[0].amount, 1_000_000);
    let ended = world.env.job(&job.address);
    assert_eq!(ended.status(), JobStatus::Completed);
    assert_eq!(ended.escrow_left, 0);
    assert_eq!(world.earnings(&operator).frozen, 1_000_000);
    // The operator's claim cannot take it, before or after the window.
    expect_error(world.claim(&operator), TallyError::NothingToClaim);
    world.env.advance(3 * i64::from(WINDOW));
    expect_error(world.claim(&operator), TallyError::NothingToClaim);

    // The arbiter refunds what was not worked; then anyone closes the job.
    let arbiter = world.arbiter.insecure_clone();
    world
        .env
        .airdrop(&arbiter.pubkey(), 1_000_000_000)
        .expect("airdrop");
    let resolve = ix::resolve_dispute(
        arbiter.pubkey(),
        job.address,
        operator.address(),
        world.mint,
        client.tokens,
        990_000,
    );
    expect_ok(world.send(&[resolve], &[&arbiter]));
    assert_eq!(world.env.token_balance(&client.tokens), 10_000_000 - 10_000);
    expect_ok(world.claim(&operator));
    assert_eq!(world.env.token_balance(&operator.payout_tokens), 10_000);
    let rent = world.env.lamports(&job.address);
    let before = world.env.lamports(&client.wallet.pubkey());
    let anyone = world.env.wallet(1_000_000_000);
    let sent = expect_ok(close_job(&mut world, &anyone, &job));
    assert_eq!(events::<JobAccountClosed>(&sent.logs)[0].job, job.address);
    assert!(!world.env.exists(&job.address));
    assert_eq!(world.env.lamports(&client.wallet.pubkey()), before + rent);
}

#[test]
fn an_expired_job_can_still_be_disputed_inside_the_challenge_window() {
    let mut world = World::builder()
        .fee_bps(0)
        .challenge_window(7_200)
        .expiry_grace(600)
        .build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let spec = JobSpec {
        deadline_in_secs: 1_000,
        ..JobSpec::default()
    };
    let job = world.open_job(&client, &operator, 1, spec);
    world.env.advance(900);
    expect_ok(world.settle(&operator, &[(job.address, world.receipt(1, 100))]));
    world.env.advance(701); // past the deadline and the grace
    let cranker = world.env.wallet(1_000_000_000);
    let expire = ix::expire_job(
        cranker.pubkey(),
        job.address,
        world.mint,
        client.wallet.pubkey(),
        client.tokens,
    );
    expect_ok(world.send(&[expire], &[&cranker]));
    let sent = expect_ok(dispute_by(&mut world, &client, &job, &operator));
    assert_eq!(events::<DisputeOpened>(&sent.logs)[0].amount, 1_000);
    assert_eq!(world.env.job(&job.address).status(), JobStatus::Expired);
}

#[test]
fn close_job_waits_until_nothing_is_disputable() {
    let mut world = World::builder().fee_bps(0).challenge_window(WINDOW).build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let anyone = world.env.wallet(1_000_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    // A job that has not ended.
    expect_error(
        close_job(&mut world, &anyone, &job),
        TallyError::JobNotFinished,
    );
    world.env.advance(60);
    expect_ok(world.settle(&operator, &[(job.address, world.receipt(1, 1_000))]));
    expect_ok(world.complete(&operator, &job, world.receipt(2, 1_500)));
    // Its share is still disputable.
    expect_error(
        close_job(&mut world, &anyone, &job),
        TallyError::JobInChallengeWindow,
    );
    // The rent cannot be sent elsewhere.
    let thief = ix::close_job(anyone.pubkey(), job.address, anyone.pubkey());
    expect_error(world.send(&[thief], &[&anyone]), TallyError::JobMismatch);
    // A dispute holds it open until resolved, even past the window.
    expect_ok(dispute_by(&mut world, &client, &job, &operator));
    world.env.advance(3 * i64::from(WINDOW));
    expect_error(
        close_job(&mut world, &anyone, &job),
        TallyError::DisputeActive,
    );
    world.env.advance(7 * 86_400 + 1);
    let default_close = ix::resolve_dispute(
        anyone.pubkey(),
        job.address,
        operator.address(),
        world.mint,
        client.tokens,
        0,
    );
    expect_ok(world.send(&[default_close], &[&anyone]));
    expect_ok(close_job(&mut world, &anyone, &job));
    // Closed: a second close finds no job.
    expect_error(
        close_job(&mut world, &anyone, &job),
        tally_tests::AnchorErrorCode::AccountOwnedByWrongProgram,
    );
}

#[test]
fn an_ended_job_takes_no_more_money_or_receipts() {
    let mut world = World::builder().challenge_window(WINDOW).build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    expect_ok(world.settle(&operator, &[(job.address, world.receipt(1, 1_000))]));
    expect_ok(world.complete(&operator, &job, world.receipt(2, 1_500)));
    assert!(world.env.exists(&job.address), "kept: still disputable");
    expect_error(
        world.settle(&operator, &[(job.address, world.receipt(3, 2_000))]),
        TallyError::JobFinished,
    );
    expect_error(
        world.complete(&operator, &job, world.receipt(3, 2_000)),
        TallyError::JobFinished,
    );
    let wallet = client.wallet.insecure_clone();
    let top_up = ix::top_up(
        wallet.pubkey(),
        job.address,
        world.mint,
        client.tokens,
        1_000,
    );
    expect_error(world.send(&[top_up], &[&wallet]), TallyError::JobFinished);
    let cancel = ix::cancel_job(wallet.pubkey(), job.address, world.mint, client.tokens);
    expect_error(world.send(&[cancel], &[&wallet]), TallyError::JobFinished);
    world.env.advance(2 * 86_400);
    let expire = ix::expire_job(
        wallet.pubkey(),
        job.address,
        world.mint,
        client.wallet.pubkey(),
        client.tokens,
    );
    expect_error(world.send(&[expire], &[&wallet]), TallyError::JobFinished);
    // Nothing left to dispute by now: anyone closes it.
    expect_error(
        dispute_by(&mut world, &client, &job, &operator),
        TallyError::NothingToDispute,
    );
    let anyone = world.env.wallet(1_000_000_000);
    expect_ok(close_job(&mut world, &anyone, &job));
}
