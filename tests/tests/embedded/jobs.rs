//! open_job, top_up, cancel_job and expire_job: money in and refunds.
use solana_signer::Signer;
use tally::errors::TallyError;
use tally::events::{JobClosed, JobOpened, JobToppedUp};
use tally::state::{ClientJobs, JobStatus, Operator};
use tally_client::{ix, pda, UpdateConfigArgs};
use tally_tests::{
    events, expect_error, expect_failure, expect_ok, AnchorErrorCode, JobHandle, JobSpec, World,
};

fn pause(world: &mut World, paused: bool) {
    let admin = world.admin.insecure_clone();
    expect_ok(world.send(
        &[ix::update_config(
            admin.pubkey(),
            UpdateConfigArgs {
                paused: Some(paused),
                ..Default::default()
            },
        )],
        &[&admin],
    ));
}

#[test]
fn client_opens_a_job_and_escrows_price_times_units() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(2_000_000);
    let spec = JobSpec {
        unit_price: 15,
        max_units: 100_000,
        spend_cap_per_hour: 500_000,
        ..JobSpec::default()
    };
    let (job, result) = world.try_open_job(&client, &operator, 7, spec);
    let sent = expect_ok(result);

    let stored = world.env.job(&job.address);
    assert_eq!(stored.client, client.wallet.pubkey());
    assert_eq!(stored.operator, operator.address());
    assert_eq!(stored.mint, world.mint.mint);
    assert_eq!(stored.job_id, 7);
    assert_eq!(
        (stored.input_price, stored.output_price),
        (15_000_000, 15_000_000)
    );
    assert_eq!(stored.model, [0; 32]);
    assert_eq!(stored.deposited, 1_500_000);
    assert_eq!(stored.escrow_left, 1_500_000);
    assert_eq!(stored.spend_cap_per_hour, 500_000);
    assert_eq!(stored.status(), JobStatus::Open);
    assert_eq!(stored.deadline, world.env.now() + 86_400);
    assert_eq!(world.env.token_balance(&client.tokens), 500_000);
    assert_eq!(
        world
            .env
            .token_balance(&pda::vault_tokens(&world.mint.mint)),
        1_500_000
    );
    assert_eq!(world.vault(&world.mint.mint).escrow_total, 1_500_000);
    let operator_state: Operator = world.env.account(&operator.address());
    assert_eq!(operator_state.jobs_opened, 1);
    let opened: Vec<JobOpened> = events(&sent.logs);
    assert_eq!(opened[0].deposit, 1_500_000);
    assert_eq!(opened[0].job, job.address);
}

#[test]
fn open_job_rejects_bad_input() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(1_000_000);

    let zero = JobSpec {
        unit_price: 0,
        ..JobSpec::default()
    };
    expect_error(
        world.try_open_job(&client, &operator, 1, zero).1,
        TallyError::ZeroAmount,
    );
    let past = JobSpec {
        deadline_in_secs: -1,
        ..JobSpec::default()
    };
    expect_error(
        world.try_open_job(&client, &operator, 2, past).1,
        TallyError::DeadlineInPast,
    );
    let kind = JobSpec {
        unit_kind: 9,
        ..JobSpec::default()
    };
    expect_error(
        world.try_open_job(&client, &operator, 3, kind).1,
        TallyError::InvalidUnitKind,
    );
    // price × units overflows u64.
    let huge = JobSpec {
        prices: Some((u64::MAX, 1)),
        max_units: u64::MAX,
        ..JobSpec::default()
    };
    expect_error(
        world.try_open_job(&client, &operator, 4, huge).1,
        TallyError::AmountOverflow,
    );
    // More than the client holds: the token program refuses, nothing moves.
    let rich = JobSpec {
        unit_price: 100,
        max_units: 1_000_000,
        ..JobSpec::default()
    };
    expect_failure(world.try_open_job(&client, &operator, 5, rich).1);
    assert_eq!(world.env.token_balance(&client.tokens), 1_000_000);
}

#[test]
fn open_job_attacks() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(1_000_000);
    let victim = world.client(1_000_000);

    // Reinitialization: the same job id twice.
    world.open_job(&client, &operator, 1, JobSpec::default());
    let failed = expect_failure(
        world
            .try_open_job(&client, &operator, 1, JobSpec::default())
            .1,
    );
    assert!(
        failed.logs.iter().any(|l| l.contains("already in use")),
        "{:?}",
        failed.logs
    );

    // Paying from someone else's token account (wrong owner).
    let mut steal = world.open_job_ix(&client, &operator, 2, JobSpec::default());
    steal.accounts[6].pubkey = victim.tokens;
    expect_error(
        world.send(&[steal], &[&client.wallet]),
        AnchorErrorCode::ConstraintTokenOwner,
    );

    // Client key without its signature.
    let mut unsigned = world.open_job_ix(&client, &operator, 3, JobSpec::default());
    unsigned.accounts[0].is_signer = false;
    expect_error(
        world.send(&[unsigned], &[]),
        AnchorErrorCode::AccountNotSigner,
    );

    // A substituted vault token account (the client's own) in the vault's place:
    // both mutable token accounts are the same account.
    let mut swap = world.open_job_ix(&client, &operator, 4, JobSpec::default());
    swap.accounts[5].pubkey = client.tokens;
    let failed = expect_failure(world.send(&[swap], &[&client.wallet]));
    assert!(failed.custom_code().is_some(), "{failed:?}");

    // A fake operator: a non-operator account at the operator's position.
    let mut fake = world.open_job_ix(&client, &operator, 5, JobSpec::default());
    fake.accounts[2].pubkey = pda::config();
    expect_failure(world.send(&[fake], &[&client.wallet]));
    assert_eq!(world.env.token_balance(&victim.tokens), 1_000_000);
}

#[test]
fn top_up_adds_escrow_and_only_the_client_can() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(2_000_000);
    let other = world.client(2_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());

    let sent = expect_ok(world.send(
        &[ix::top_up(
            client.wallet.pubkey(),
            job.address,
            world.mint,
            client.tokens,
            250_000,
        )],
        &[&client.wallet],
    ));
    let stored = world.env.job(&job.address);
    assert_eq!(stored.deposited, 1_250_000);
    assert_eq!(stored.escrow_left, 1_250_000);
    let topped: Vec<JobToppedUp> = events(&sent.logs);
    assert_eq!(topped[0].amount, 250_000);

    expect_error(
        world.send(
            &[ix::top_up(
                client.wallet.pubkey(),
                job.address,
                world.mint,
                client.tokens,
                0,
            )],
            &[&client.wallet],
        ),
        TallyError::ZeroAmount,
    );
    // Someone else topping up another's job is refused (the job is not theirs).
    expect_error(
        world.send(
            &[ix::top_up(
                other.wallet.pubkey(),
                job.address,
                world.mint,
                other.tokens,
                10,
            )],
            &[&other.wallet],
        ),
        TallyError::Unauthorized,
    );
    // Past the deadline no new money comes in.
    world.env.advance(86_401);
    expect_error(
        world.send(
            &[ix::top_up(
                client.wallet.pubkey(),
                job.address,
                world.mint,
                client.tokens,
                10,
            )],
            &[&client.wallet],
        ),
        TallyError::JobExpired,
    );
}

#[test]
fn pause_blocks_money_in_but_never_refunds() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(3_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    pause(&mut world, true);

    expect_error(
        world
            .try_open_job(&client, &operator, 2, JobSpec::default())
            .1,
        TallyError::Paused,
    );
    expect_error(
        world.send(
            &[ix::top_up(
                client.wallet.pubkey(),
                job.address,
                world.mint,
                client.tokens,
                10,
            )],
            &[&client.wallet],
        ),
        TallyError::Paused,
    );
    // Cancel (a refund) still works while paused.
    expect_ok(world.send(
        &[ix::cancel_job(
            client.wallet.pubkey(),
            job.address,
            world.mint,
            client.tokens,
        )],
        &[&client.wallet],
    ));
    assert_eq!(world.env.token_balance(&client.tokens), 3_000_000);
    pause(&mut world, false);
    world.open_job(&client, &operator, 2, JobSpec::default());
}

#[test]
fn cancel_before_usage_refunds_everything_and_closes_the_job() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(1_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    let lamports_before = world.env.lamports(&client.wallet.pubkey());
    let rent = world.env.lamports(&job.address);

    let sent = expect_ok(world.send(
        &[ix::cancel_job(
            client.wallet.pubkey(),
            job.address,
            world.mint,
            client.tokens,
        )],
        &[&client.wallet],
    ));
    assert_eq!(world.env.token_balance(&client.tokens), 1_000_000);
    assert!(!world.env.exists(&job.address), "job closed");
    // Rent came back (the test payer paid the fee).
    assert_eq!(
        world.env.lamports(&client.wallet.pubkey()),
        lamports_before + rent
    );
    let closed: Vec<JobClosed> = events(&sent.logs);
    assert_eq!(closed[0].status, JobStatus::Cancelled as u8);
    assert_eq!(closed[0].refunded, 1_000_000);

    // Revived closed account: cancelling again finds no job.
    let result = world.send(
        &[ix::cancel_job(
            client.wallet.pubkey(),
            job.address,
            world.mint,
            client.tokens,
        )],
        &[&client.wallet],
    );
    // A closed job is a system-owned empty account: refused as not the program's.
    expect_error(result, AnchorErrorCode::AccountOwnedByWrongProgram);
}

#[test]
fn cancel_attacks() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(1_000_000);
    let thief = world.client(0);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());

    // Another wallet cancelling into its own token account.
    expect_error(
        world.send(
            &[ix::cancel_job(
                thief.wallet.pubkey(),
                job.address,
                world.mint,
                thief.tokens,
            )],
            &[&thief.wallet],
        ),
        TallyError::Unauthorized,
    );
    // The client signing but refund directed to the thief's token account.
    expect_error(
        world.send(
            &[ix::cancel_job(
                client.wallet.pubkey(),
                job.address,
                world.mint,
                thief.tokens,
            )],
            &[&client.wallet],
        ),
        AnchorErrorCode::ConstraintTokenOwner,
    );
    // Type cosplay: a vault ledger in the job's place.
    let mut cosplay = ix::cancel_job(
        client.wallet.pubkey(),
        job.address,
        world.mint,
        client.tokens,
    );
    cosplay.accounts[5].pubkey = pda::vault(&world.mint.mint);
    let failed = expect_failure(world.send(&[cosplay], &[&client.wallet]));
    assert!(failed.custom_code().is_some(), "{failed:?}");

    // After usage, cancel is refused.
    world.env.advance(60);
    let receipt = world.receipt(1, 10);
    expect_ok(world.settle(&operator, &[(job.address, receipt)]));
    expect_error(
        world.send(
            &[ix::cancel_job(
                client.wallet.pubkey(),
                job.address,
                world.mint,
                client.tokens,
            )],
            &[&client.wallet],
        ),
        TallyError::JobHasUsage,
    );
    assert_eq!(world.env.token_balance(&thief.tokens), 0);
}

#[test]
fn anyone_expires_a_job_after_deadline_and_grace_refunding_the_client() {
    let mut world = World::builder().expiry_grace(3_600).build();
    let operator = world.operator();
    let client = world.client(1_000_000);
    let cranker = world.env.wallet(1_000_000_000);
    let spec = JobSpec {
        unit_price: 10,
        max_units: 100_000,
        deadline_in_secs: 7_200,
        ..JobSpec::default()
    };
    let job = world.open_job(&client, &operator, 1, spec);
    world.env.advance(600);
    let receipt = world.receipt(1, 1_000);
    expect_ok(world.settle(&operator, &[(job.address, receipt)]));

    let expire = ix::expire_job(
        cranker.pubkey(),
        job.address,
        world.mint,
        client.wallet.pubkey(),
        client.tokens,
    );
    world.env.advance(7_200 - 600 + 3_600); // exactly deadline + grace: not yet
    expect_error(
        world.send(std::slice::from_ref(&expire), &[&cranker]),
        TallyError::JobNotExpired,
    );

    world.env.advance(1);
    // The cranker cannot redirect the refund or the rent.
    let thief = world.client(0);
    let steal = ix::expire_job(
        cranker.pubkey(),
        job.address,
        world.mint,
        client.wallet.pubkey(),
        thief.tokens,
    );
    expect_error(
        world.send(&[steal], &[&cranker]),
        AnchorErrorCode::ConstraintTokenOwner,
    );
    let rent_thief = ix::expire_job(
        cranker.pubkey(),
        job.address,
        world.mint,
        cranker.pubkey(),
        client.tokens,
    );
    expect_error(
        world.send(&[rent_thief], &[&cranker]),
        TallyError::JobMismatch,
    );

    let sent = expect_ok(world.send(std::slice::from_ref(&expire), &[&cranker]));
    assert_eq!(world.env.token_balance(&client.tokens), 1_000_000 - 10_000);
    assert!(!world.env.exists(&job.address));
    let closed: Vec<JobClosed> = events(&sent.logs);
    assert_eq!(closed[0].status, JobStatus::Expired as u8);
    assert_eq!(closed[0].refunded, 990_000);

    // Revived closed account: expiring twice pays nothing more.
    expect_error(
        world.send(&[expire], &[&cranker]),
        AnchorErrorCode::AccountOwnedByWrongProgram,
    );

    // Settling usage on an expired (closed) job fails.
    let late = world.receipt(2, 2_000);
    expect_failure(world.settle(&operator, &[(job.address, late)]));
}

/// Job addresses are (client, job id): an id used once is never usable again, so a
/// closed job's address never holds another job and receipts naming it (the
/// oracle-signer path commits to nothing else) cannot settle a newer job.
#[test]
fn a_job_address_is_never_reused() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let job = world.open_job(&client, &operator, 5, JobSpec::default());
    expect_ok(world.send(
        &[ix::cancel_job(
            client.wallet.pubkey(),
            job.address,
            world.mint,
            client.tokens,
        )],
        &[&client.wallet],
    ));
    assert!(!world.env.exists(&job.address));
    // The same id again, and a lower one: refused by name.
    for id in [5, 4] {
        let (_, result) = world.try_open_job(&client, &operator, id, JobSpec::default());
        expect_error(result, TallyError::JobIdUsed);
    }
    assert!(!world.env.exists(&job.address), "the address stays empty");
    // A higher id works, and the next free id moves past it.
    world.open_job(&client, &operator, 9, JobSpec::default());
    let ids: ClientJobs = world
        .env
        .account(&pda::client_jobs(&client.wallet.pubkey()));
    assert_eq!(
        (ids.client, ids.next_job_id, ids.jobs_opened),
        (client.wallet.pubkey(), 10, 2)
    );
    // Ids are per client: another client may use 5.
    let other = world.client(1_000_000);
    world.open_job(&other, &operator, 5, JobSpec::default());
    // u64::MAX cannot be taken: the next id would not exist.
    let (_, result) = world.try_open_job(&client, &operator, u64::MAX, JobSpec::default());
    expect_error(result, TallyError::JobIdUsed);
}

/// The nonce (what relayed receipts commit to besides the address) is unique per
/// client, even for jobs opened in the same slot.
#[test]
fn jobs_opened_in_one_slot_get_different_nonces() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let first = world.open_job_ix(&client, &operator, 1, JobSpec::default());
    let second = world.open_job_ix(&client, &operator, 2, JobSpec::default());
    for id in [1, 2] {
        world.jobs.push(JobHandle {
            address: pda::job(&client.wallet.pubkey(), id),
            job_id: id,
            client: client.wallet.pubkey(),
            client_tokens: client.tokens,
            mint: world.mint,
        });
    }
    expect_ok(world.send(&[first, second], &[&client.wallet]));
    let nonce = |id| world.env.job(&pda::job(&client.wallet.pubkey(), id)).nonce;
    assert_ne!(nonce(1), nonce(2));
    assert_eq!((nonce(1), nonce(2)), (1, 2));
}

/// Upgrade path: jobs opened before `ClientJobs` existed have no counter (and a slot
/// as their nonce). They keep settling and completing; the client's next open
/// creates the counter.
#[test]
fn a_client_whose_jobs_predate_client_jobs_gets_a_counter_on_its_next_open() {
    let mut world = World::builder().challenge_window(0).build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let old = world.open_job(&client, &operator, 7, JobSpec::default());
    // The state an older program left: no counter, the opening slot as nonce.
    let counter = pda::client_jobs(&client.wallet.pubkey());
    world
        .env
        .svm
        .set_account(counter, solana_account::Account::default())
        .unwrap();
    let mut account = world.env.svm.get_account(&old.address).unwrap();
    let slot = world.env.svm.get_sysvar::<solana_clock::Clock>().slot;
    let nonce_at = 8 + std::mem::offset_of!(tally::state::Job, nonce);
    account.data[nonce_at..nonce_at + 8].copy_from_slice(&slot.to_le_bytes());
    world.env.svm.set_account(old.address, account).unwrap();
    assert!(!world.env.exists(&counter));

    world.env.advance(60);
    expect_ok(world.settle(&operator, &[(old.address, world.receipt(1, 100))]));
    let next = world.open_job(&client, &operator, 8, JobSpec::default());
    let ids: ClientJobs = world.env.account(&counter);
    assert_eq!((ids.next_job_id, ids.jobs_opened), (9, 1));
    assert_eq!(world.env.job(&next.address).nonce, 1);
    expect_ok(world.complete(&operator, &old, world.receipt(2, 200)));
    assert!(!world.env.exists(&old.address));
}
