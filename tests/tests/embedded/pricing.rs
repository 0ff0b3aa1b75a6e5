//! Inference pricing: input and output tokens priced apart (per million, in base
//! units), on both settlement paths, to the base unit of the shared payout rule; the
//! output counter's rules; packed receipts; the model binding a job stores.
use anchor_lang::InstructionData;
use solana_signer::Signer;
use tally::errors::TallyError;
use tally::events::{JobOpened, ReceiptSettled};
use tally::instructions::SettleArgs;
use tally::state::Revenue;
use tally_client::{amount_owed, ix, model_hash, pda, Prices, Usage};
use tally_tests::{ed25519_over, events, expect_error, expect_ok, sign_usage, JobSpec, World};

/// $0.15 / 1M input tokens, $0.60 / 1M output tokens, in a 6-decimal mint.
const PRICES: (u64, u64) = (150_000, 600_000);

fn prices() -> Prices {
    Prices {
        input: PRICES.0,
        output: PRICES.1,
    }
}

fn token_job() -> JobSpec {
    JobSpec {
        prices: Some(PRICES),
        max_units: 100_000_000,
        model: model_hash("SmolLM2-135M-Instruct"),
        ..JobSpec::default()
    }
}

#[test]
fn input_and_output_tokens_are_priced_apart_on_both_paths() {
    let mut world = World::builder().fee_bps(250).build();
    let operator = world.operator();
    let client = world.client(1_000_000_000);
    let (signed_job, sent) = world.try_open_job(&client, &operator, 1, token_job());
    let opened: Vec<JobOpened> = events(&expect_ok(sent).logs);
    assert_eq!(
        (
            opened[0].input_price,
            opened[0].output_price,
            opened[0].model
        ),
        (PRICES.0, PRICES.1, model_hash("SmolLM2-135M-Instruct"))
    );
    // The deposit prices every unit at the higher (output) price.
    assert_eq!(world.env.job(&signed_job.address).deposited, 60_000_000);
    let relayed_job = world.open_job(&client, &operator, 2, token_job());
    world.env.advance(60);

    // Oracle-signed: 2M prompt + 1M completion tokens = $0.30 + $0.60.
    let sent = expect_ok(world.settle(
        &operator,
        &[(
            signed_job.address,
            world.receipt_split(1, 3_000_000, 1_000_000),
        )],
    ));
    let settled: Vec<ReceiptSettled> = events(&sent.logs);
    assert_eq!(
        (settled[0].gross, settled[0].units, settled[0].output_units),
        (900_000, 3_000_000, 1_000_000)
    );

    // Relayed: the same usage pays the same, to the base unit.
    let oracle = world.oracles[0].insecure_clone();
    let relayer = world.env.wallet(1_000_000_000);
    let signed = world.sign_receipt(
        &relayed_job,
        world.receipt_split(1, 3_000_000, 1_000_000),
        &[&oracle],
    );
    let sent = expect_ok(world.settle_relayed(&operator, &relayer, &[signed]));
    let from_relay: Vec<ReceiptSettled> = events(&sent.logs);
    assert_eq!(from_relay[0].gross, 900_000);

    // Odd amounts, one receipt at a time on one job and at once on the other: the
    // floors telescope, each job pays amount_owed(final usage) exactly.
    let mut seq = 1;
    for step in 1..=12u64 {
        seq += 1;
        let units = 3_000_000 + step * 1_234_567;
        let output = 1_000_000 + step * 333_331;
        expect_ok(world.settle(
            &operator,
            &[(signed_job.address, world.receipt_split(seq, units, output))],
        ));
    }
    let final_usage = Usage {
        units: 3_000_000 + 12 * 1_234_567,
        output: 1_000_000 + 12 * 333_331,
    };
    let signed = world.sign_receipt(
        &relayed_job,
        world.receipt_split(2, final_usage.units, final_usage.output),
        &[&oracle],
    );
    expect_ok(world.settle_relayed(&operator, &relayer, &[signed]));
    let owed = u64::try_from(amount_owed(prices(), final_usage).unwrap()).unwrap();
    for job in [&signed_job, &relayed_job] {
        let stored = world.env.job(&job.address);
        assert_eq!(stored.settled_gross, owed, "paid = owed(final usage)");
        assert_eq!(
            (stored.settled_units, stored.settled_output),
            (final_usage.units, final_usage.output)
        );
    }
    // The day's revenue keeps both counters.
    let day = world.attestation().day;
    let revenue: Revenue = world.env.account(&pda::revenue(&world.mint.mint, day));
    assert_eq!(
        (revenue.units, revenue.output_units),
        (2 * final_usage.units, 2 * final_usage.output)
    );
}

#[test]
fn the_output_counter_cannot_exceed_units_shrink_or_appear_on_other_kinds() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(1_000_000_000);
    let job = world.open_job(&client, &operator, 1, token_job());
    let gpu = world.open_job(
        &client,
        &operator,
        2,
        JobSpec {
            unit_kind: 1,
            ..JobSpec::default()
        },
    );
    world.env.advance(60);
    expect_error(
        world.settle(&operator, &[(job.address, world.receipt_split(1, 10, 11))]),
        TallyError::OutputExceedsUnits,
    );
    expect_error(
        world.settle(&operator, &[(gpu.address, world.receipt_split(1, 10, 1))]),
        TallyError::OutputExceedsUnits,
    );
    expect_ok(world.settle(
        &operator,
        &[(job.address, world.receipt_split(1, 1_000, 400))],
    ));
    // Fewer output tokens than settled.
    expect_error(
        world.settle(
            &operator,
            &[(job.address, world.receipt_split(2, 2_000, 399))],
        ),
        TallyError::NonIncreasingUsage,
    );
    // Same units, some output turned into cheaper input: owes less than settled.
    let relabelled = JobSpec {
        prices: Some((1_000_000, 4_000_000)),
        ..token_job()
    };
    let other = world.open_job(&client, &operator, 3, relabelled);
    world.env.advance(1);
    expect_ok(world.settle(
        &operator,
        &[(other.address, world.receipt_split(1, 100, 50))],
    ));
    expect_error(
        world.settle(
            &operator,
            &[(other.address, world.receipt_split(2, 100, 40))],
        ),
        TallyError::NonIncreasingUsage,
    );
}

#[test]
fn open_job_price_rules() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(1_000_000_000);
    let gpu_with_output_price = JobSpec {
        unit_kind: 1,
        prices: Some((1_000_000, 5)),
        ..JobSpec::default()
    };
    expect_error(
        world
            .try_open_job(&client, &operator, 1, gpu_with_output_price)
            .1,
        TallyError::OutputPriceWithoutTokens,
    );
    // One token at $0.60 / 1M rounds down to a deposit of 0.
    let nothing = JobSpec {
        prices: Some(PRICES),
        max_units: 1,
        ..JobSpec::default()
    };
    expect_error(
        world.try_open_job(&client, &operator, 2, nothing).1,
        TallyError::ZeroAmount,
    );
    // Free prompts, paid completions.
    let free_input = JobSpec {
        prices: Some((0, 600_000)),
        max_units: 1_000_000,
        ..JobSpec::default()
    };
    let job = world.open_job(&client, &operator, 3, free_input);
    world.env.advance(60);
    let sent = expect_ok(world.settle(
        &operator,
        &[(job.address, world.receipt_split(1, 900_000, 100_000))],
    ));
    let settled: Vec<ReceiptSettled> = events(&sent.logs);
    assert_eq!(settled[0].gross, 60_000);
}

#[test]
fn malformed_packed_receipts_are_refused() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(1_000_000_000);
    let jobs: Vec<_> = (0..2)
        .map(|id| world.open_job(&client, &operator, id, token_job()))
        .collect();
    world.env.advance(60);
    let attestation = world.attestation();
    // Open the ledgers with a valid settlement first.
    expect_ok(world.settle(&operator, &[(jobs[0].address, world.receipt(1, 10))]));
    let two = [
        (jobs[0].address, world.receipt_split(2, 100, 10)),
        (jobs[1].address, world.receipt_split(1, 100, 10)),
    ];
    let good = ix::settle(
        &attestation,
        operator.authority.pubkey(),
        world.mint.mint,
        &two,
    );
    let packed = tally_client::pack_receipts(&two.map(|(_, r)| r));
    let with = |receipts: Vec<u8>| {
        let mut ix = good.clone();
        ix.data = tally::instruction::Settle {
            args: SettleArgs {
                oracle_set_version: attestation.oracle_set_version,
                extra_oracle_signers: 0,
                receipts,
            },
        }
        .data();
        ix
    };
    let oracle = world.oracles[0].insecure_clone();
    let cases = [
        // Cut inside the second receipt's invoice hash.
        (
            packed[..packed.len() - 5].to_vec(),
            TallyError::MalformedReceipts,
        ),
        // Only the first receipt: two job accounts, one receipt.
        (
            tally_client::pack_receipts(&[two[0].1]),
            TallyError::ReceiptCountMismatch,
        ),
        // A third receipt with no job account for it.
        (
            tally_client::pack_receipts(&[two[0].1, two[1].1, two[1].1]),
            TallyError::ReceiptCountMismatch,
        ),
        // No base time at all.
        (vec![1, 2, 3], TallyError::MalformedReceipts),
    ];
    for (bytes, expected) in cases {
        expect_error(
            world.env.send_with_payer(&[with(bytes)], &oracle, &[]),
            expected,
        );
    }
    expect_ok(world.env.send_with_payer(&[with(packed)], &oracle, &[]));
}

#[test]
fn a_receipt_signed_in_the_v1_format_is_refused() {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(1_000_000_000);
    let job = world.open_job(&client, &operator, 1, token_job());
    world.env.advance(60);
    let oracle = world.oracles[0].insecure_clone();
    let relayer = world.env.wallet(1_000_000_000);
    // The v1 message: its own domain and one counter, 8 bytes shorter.
    let usage = tally_client::UsageReceipt {
        job: job.address,
        job_nonce: world.env.job(&job.address).nonce,
        receipt: world.receipt(1, 1_000),
        is_final: false,
        oracle_set_version: world.config().oracle_set_version,
    };
    let v2 = usage.message(&tally::ID);
    let mut v1 = b"tally/receipt/v1".to_vec();
    v1.extend_from_slice(&v2[16..16 + 32 + 32 + 8 + 8 + 8]);
    v1.extend_from_slice(&v2[16 + 32 + 32 + 8 + 8 + 8 + 8..]);
    let precompile = ed25519_over(&v1, &oracle);
    let signed = sign_usage(usage, &[&oracle]);
    let settle = tally_client::relay::settle_relayed(
        relayer.pubkey(),
        operator.authority.pubkey(),
        world.mint.mint,
        world.attestation().day,
        std::slice::from_ref(&signed),
    );
    if let Some(open) = world.ledgers_ix(&world.attestation(), &operator) {
        expect_ok(world.env.send(&[open], &[]));
    }
    expect_error(
        world
            .env
            .send_with_payer(&[precompile, settle], &relayer, &[]),
        TallyError::WrongReceiptMessage,
    );
}
