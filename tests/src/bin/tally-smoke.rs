//! The smoke run behind `scripts/demo` until the `tally` CLI lands: one job's whole
//! life on the embedded chain (LiteSVM running target/deploy/tally.so), with the
//! balances printed and reconciled at the end.
use tally_client::pda;
use tally_tests::{expect_ok, JobSpec, World};

fn main() {
    let mut world = World::builder()
        .fee_bps(250)
        .challenge_window(3_600)
        .build();
    println!(
        "deployed tally {} on the embedded chain; config initialized",
        tally::ID
    );

    let operator = world.operator();
    let client = world.client(5_000_000);
    println!(
        "operator {} registered; client funded with 5,000,000 tokens",
        operator.address()
    );

    let spec = JobSpec {
        unit_price: 20,
        max_units: 100_000,
        ..JobSpec::default()
    };
    let job = world.open_job(&client, &operator, 1, spec);
    println!(
        "job {} opened: 100,000 tokens max at 20 per token = 2,000,000 escrowed",
        job.address
    );

    let mut cumulative = 0;
    for seq in 1..=3 {
        cumulative += 12_345;
        world.env.advance(600);
        let receipt = world.receipt(seq, cumulative);
        let sent = expect_ok(world.settle(&operator, &[(job.address, receipt)]));
        println!(
            "receipt {seq}: cumulative {cumulative} tokens settled ({} CU)",
            sent.cu
        );
    }
    let final_receipt = world.receipt(4, cumulative + 1_000);
    expect_ok(world.complete(&operator, &job, final_receipt));
    println!(
        "job completed: {} tokens metered in all; the rest refunded",
        cumulative + 1_000
    );

    world.env.advance(2 * 3_600 + 1);
    expect_ok(world.claim(&operator));
    let vault = world.vault(&world.mint.mint);
    let paid = world.env.token_balance(&operator.payout_tokens);
    let client_left = world.env.token_balance(&client.tokens);
    println!(
        "operator claimed {paid}; protocol fees {}; client holds {client_left}",
        vault.fees_unclaimed
    );

    let gross = (cumulative + 1_000) * 20;
    let reconciled = paid + vault.fees_unclaimed == gross
        && client_left == 5_000_000 - gross
        && world
            .env
            .token_balance(&pda::vault_tokens(&world.mint.mint))
            == vault.fees_unclaimed;
    println!("reconciled: {reconciled}");
    if !reconciled {
        std::process::exit(1);
    }
}
