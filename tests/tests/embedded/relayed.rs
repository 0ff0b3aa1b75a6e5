//! settle_relayed: receipts carrying Ed25519 oracle signatures, verified by the
//! precompile, posted by anyone — and each attack on that path.
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::errors::TallyError;
use tally::events::ReceiptSettled;
use tally_client::relay::{ed25519_verify, settle_relayed};
use tally_client::{ix, OracleSetArgs, UpdateConfigArgs};
use tally_tests::{
    ed25519_over, events, expect_error, expect_failure, expect_ok, sign_usage, JobHandle, JobSpec,
    OperatorHandle, World,
};

fn setup(oracles: usize, threshold: u8) -> (World, OperatorHandle, JobHandle, Keypair) {
    let mut world = World::builder().oracles(oracles, threshold).build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let relayer = world.env.wallet(1_000_000_000);
    (world, operator, job, relayer)
}

fn oracle_refs(world: &World, n: usize) -> Vec<Keypair> {
    world
        .oracles
        .iter()
        .take(n)
        .map(Keypair::insecure_clone)
        .collect()
}

#[test]
fn anyone_relays_oracle_signed_receipts_and_they_pay_exactly_once() {
    let (mut world, operator, job, relayer) = setup(1, 1);
    let oracles = oracle_refs(&world, 1);
    let signed = world.sign_receipt(&job, world.receipt(1, 1_000), &[&oracles[0]]);
    let sent = expect_ok(world.settle_relayed(&operator, &relayer, std::slice::from_ref(&signed)));
    let settled: Vec<ReceiptSettled> = events(&sent.logs);
    assert_eq!((settled[0].units, settled[0].gross), (1_000, 10_000));
    assert_eq!(world.env.job(&job.address).settled_units, 1_000);

    // Replayed by someone else: a no-op.
    let other = world.env.wallet(1_000_000_000);
    let sent = expect_ok(world.settle_relayed(&operator, &other, &[signed]));
    assert!(events::<ReceiptSettled>(&sent.logs).is_empty());
    assert_eq!(world.env.job(&job.address).settled_gross, 10_000);
}

#[test]
fn a_quorum_of_distinct_oracles_is_needed() {
    let (mut world, operator, job, relayer) = setup(3, 2);
    let oracles = oracle_refs(&world, 3);
    let lone = world.sign_receipt(&job, world.receipt(1, 100), &[&oracles[0]]);
    expect_error(
        world.settle_relayed(&operator, &relayer, &[lone]),
        TallyError::SignatureCountMismatch,
    );
    let twice = world.sign_receipt(&job, world.receipt(1, 100), &[&oracles[0], &oracles[0]]);
    expect_error(
        world.settle_relayed(&operator, &relayer, &[twice]),
        TallyError::DuplicateOracleSigner,
    );
    let quorum = world.sign_receipt(&job, world.receipt(1, 100), &[&oracles[2], &oracles[0]]);
    expect_ok(world.settle_relayed(&operator, &relayer, &[quorum]));
    assert_eq!(world.env.job(&job.address).settled_units, 100);
}

#[test]
fn relayed_attacks() {
    let (mut world, operator, job, relayer) = setup(1, 1);
    let oracle = oracle_refs(&world, 1).remove(0);
    let receipt = world.receipt(1, 500);

    // Wrong key: a valid signature by a key outside the oracle set.
    let stranger = Keypair::new();
    let forged = world.sign_receipt(&job, receipt, &[&stranger]);
    expect_error(
        world.settle_relayed(&operator, &relayer, &[forged]),
        TallyError::UnknownOracle,
    );

    // Wrong message: the signature is over other bytes than the receipt posted; the
    // precompile (instruction 0) refuses the transaction.
    let mut tampered = world.sign_receipt(&job, receipt, &[&oracle]);
    tampered.receipt.receipt.cumulative_units = 50_000;
    let failed = expect_failure(world.settle_relayed(&operator, &relayer, &[tampered]));
    assert!(
        matches!(
            failed.err,
            solana_transaction_error::TransactionError::InstructionError(0, _)
        ),
        "the Ed25519 instruction failed: {failed:?}"
    );

    // Valid signatures over bytes that are not a receipt of this program.
    let not_a_receipt = [7u8; tally::receipt::RECEIPT_MESSAGE_LEN];
    let mut junk = world.sign_receipt(&job, receipt, &[&oracle]);
    let ix_junk = ed25519_over(&not_a_receipt, &oracle);
    let settle_ix = settle_relayed(
        relayer.pubkey(),
        operator.authority.pubkey(),
        world.mint.mint,
        world.attestation().day,
        std::slice::from_ref(&junk),
    );
    expect_error(
        world
            .env
            .send_with_payer(&[ix_junk, settle_ix], &relayer, &[]),
        TallyError::WrongReceiptMessage,
    );

    // Truncated data: a valid signature over the first 100 bytes of the receipt.
    let message = junk.receipt.message(&tally::ID);
    let ix_short = ed25519_over(&message[..100], &oracle);
    let settle_ix = settle_relayed(
        relayer.pubkey(),
        operator.authority.pubkey(),
        world.mint.mint,
        world.attestation().day,
        std::slice::from_ref(&junk),
    );
    expect_error(
        world
            .env
            .send_with_payer(&[ix_short, settle_ix], &relayer, &[]),
        TallyError::WrongReceiptMessage,
    );

    // Signature in another instruction: instruction 0 verifies the real receipt;
    // instruction 1 points all its offsets into instruction 0, so the precompile
    // passes, but the program must refuse to trust bytes it does not settle from.
    let good = world.sign_receipt(&job, receipt, &[&oracle]);
    let first = ed25519_verify(std::slice::from_ref(&good), &tally::ID).unwrap();
    let mut pointing = first.clone();
    for entry in 0..usize::from(pointing.data[0]) {
        let at = 2 + entry * 14;
        for field in [1usize, 3, 6] {
            pointing.data[at + 2 * field..at + 2 * field + 2].copy_from_slice(&0u16.to_le_bytes());
        }
    }
    let settle_ix = settle_relayed(
        relayer.pubkey(),
        operator.authority.pubkey(),
        world.mint.mint,
        world.attestation().day,
        std::slice::from_ref(&good),
    );
    expect_error(
        world
            .env
            .send_with_payer(&[first, pointing, settle_ix.clone()], &relayer, &[]),
        TallyError::SignatureInOtherInstruction,
    );

    // No signature instruction at all.
    expect_error(
        world.env.send_with_payer(&[settle_ix], &relayer, &[]),
        TallyError::MissingSignatureInstruction,
    );

    // A receipt signed for another job, posted against this one.
    junk.receipt.job = Keypair::new().pubkey();
    let other_job = sign_usage(junk.receipt, &[&oracle]);
    let mut ixs = world.relayed_ixs(&operator, &relayer, std::slice::from_ref(&other_job));
    ixs[1].accounts.last_mut().unwrap().pubkey = job.address;
    expect_error(
        world.env.send_with_payer(&ixs, &relayer, &[]),
        TallyError::ReceiptMismatch,
    );

    // A final receipt cannot be relayed (completion refunds and closes: signer path).
    let mut final_receipt = world.sign_receipt(&job, receipt, &[&oracle]).receipt;
    final_receipt.is_final = true;
    let signed_final = sign_usage(final_receipt, &[&oracle]);
    expect_error(
        world.settle_relayed(&operator, &relayer, &[signed_final]),
        TallyError::ReceiptMismatch,
    );

    // Old set version: rotate, then post a receipt signed under version 1.
    let old = world.sign_receipt(&job, receipt, &[&oracle]);
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
    expect_error(
        world.settle_relayed(&operator, &relayer, &[old]),
        TallyError::OracleSetVersionMismatch,
    );
    // The rotated-out key signing under the new version.
    let rotated_out = world.sign_receipt(&job, receipt, &[&oracle]);
    expect_error(
        world.settle_relayed(&operator, &relayer, &[rotated_out]),
        TallyError::UnknownOracle,
    );
    let fresh = world.sign_receipt(&job, receipt, &[&new_oracle]);
    expect_ok(world.settle_relayed(&operator, &relayer, &[fresh]));
    assert_eq!(world.env.job(&job.address).settled_units, 500);
}

#[test]
fn receipts_of_a_closed_job_cannot_settle_a_job_reopened_at_the_same_address() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(10_000_000);
    let relayer = world.env.wallet(1_000_000_000);
    let oracle = world.oracles[0].insecure_clone();
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let old = world.sign_receipt(&job, world.receipt(1, 900), &[&oracle]);
    expect_ok(world.send(
        &[ix::cancel_job(
            client.wallet.pubkey(),
            job.address,
            world.mint,
            client.tokens,
        )],
        &[&client.wallet],
    ));
    world.env.advance(60);
    // The address cannot hold another job: the id is used for good.
    let (_, reopened) = world.try_open_job(&client, &operator, 1, JobSpec::default());
    expect_error(reopened, TallyError::JobIdUsed);
    // The closed job's receipt finds no job.
    expect_error(
        world.settle_relayed(&operator, &relayer, std::slice::from_ref(&old)),
        TallyError::InvalidJobAccount,
    );
    // Another id opens a job at another address, with another nonce.
    let next = world.open_job(&client, &operator, 2, JobSpec::default());
    assert_ne!(next.address, job.address);
    assert_ne!(world.env.job(&next.address).nonce, old.receipt.job_nonce);
}
