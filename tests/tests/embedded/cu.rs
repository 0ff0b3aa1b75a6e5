//! Compute-unit ceilings per instruction, measured on the SBF program. A regression
//! in cost fails like a regression in behaviour. The table is printed with
//! `cargo test -p tally-tests --test embedded cu:: -- --nocapture`.
use solana_signer::Signer;
use tally_client::{ix, OperatorArgs, UpdateConfigArgs};
use tally_tests::{expect_ok, JobSpec, Sent, World};

/// (instruction, ceiling in CU): measured on this build plus about 10%.
const CEILINGS: &[(&str, u64)] = &[
    ("initialize_config", 18000),
    ("update_config", 5500),
    ("add_mint", 26000),
    ("register_operator", 11500),
    ("update_operator", 5500),
    ("open_job", 45000),
    ("top_up", 18000),
    ("open_ledgers (creates both)", 25500),
    ("settle (1 receipt)", 19500),
    ("settle (8 receipts)", 34000),
    ("complete_job", 31000),
    ("cancel_job", 16000),
    ("expire_job", 18500),
    ("claim", 21500),
    ("withdraw_fees", 17000),
];

/// Runs every instruction once and returns its measured CU, in `CEILINGS` order.
pub fn measure() -> Vec<(&'static str, Sent)> {
    let mut world = World::builder().challenge_window(0).build();
    let mut out: Vec<(&'static str, Sent)> = vec![("initialize_config", world.init_sent.clone())];
    let admin = world.admin.insecure_clone();
    out.push((
        "update_config",
        expect_ok(world.send(
            &[ix::update_config(
                admin.pubkey(),
                UpdateConfigArgs {
                    fee_bps: Some(250),
                    ..Default::default()
                },
            )],
            &[&admin],
        )),
    ));
    let mint = world.env.create_mint(
        tally_tests::TokenKind::Token2022,
        &world.mint_authority.pubkey(),
    );
    out.push((
        "add_mint",
        expect_ok(world.send(&[ix::add_mint(admin.pubkey(), mint)], &[&admin])),
    ));
    world.mints.push(mint);

    let authority = world.env.wallet(1_000_000_000);
    let args = OperatorArgs {
        payout_owner: authority.pubkey(),
        node_keys: vec![authority.pubkey()],
    };
    out.push((
        "register_operator",
        expect_ok(world.send(
            &[ix::register_operator(authority.pubkey(), args.clone())],
            &[&authority],
        )),
    ));
    out.push((
        "update_operator",
        expect_ok(world.send(
            &[ix::update_operator(authority.pubkey(), args)],
            &[&authority],
        )),
    ));

    let operator = world.operator();
    let client = world.client(100_000_000);
    let (job, opened) = world.try_open_job(&client, &operator, 100, JobSpec::default());
    out.push(("open_job", expect_ok(opened)));
    out.push((
        "top_up",
        expect_ok(world.send(
            &[ix::top_up(
                client.wallet.pubkey(),
                job.address,
                world.mint,
                client.tokens,
                1_000,
            )],
            &[&client.wallet],
        )),
    ));

    let mut batch = Vec::new();
    for id in 0..8 {
        batch.push(world.open_job(&client, &operator, id, JobSpec::default()));
    }
    world.env.advance(60);
    let attestation = world.attestation();
    let open = world
        .ledgers_ix(&attestation, &operator)
        .expect("ledgers missing");
    out.push((
        "open_ledgers (creates both)",
        expect_ok(world.send(&[open], &[])),
    ));
    let r = world.receipt(1, 100);
    expect_ok(world.settle(&operator, &[(job.address, r)]));
    let r = world.receipt(2, 200);
    out.push((
        "settle (1 receipt)",
        expect_ok(world.settle(&operator, &[(job.address, r)])),
    ));
    let receipts: Vec<_> = batch
        .iter()
        .map(|j| (j.address, world.receipt(1, 50)))
        .collect();
    out.push((
        "settle (8 receipts)",
        expect_ok(world.settle(&operator, &receipts)),
    ));
    let r = world.receipt(3, 300);
    out.push((
        "complete_job",
        expect_ok(world.complete(&operator, &job, r)),
    ));

    let fresh = world.open_job(&client, &operator, 200, JobSpec::default());
    out.push((
        "cancel_job",
        expect_ok(world.send(
            &[ix::cancel_job(
                client.wallet.pubkey(),
                fresh.address,
                world.mint,
                client.tokens,
            )],
            &[&client.wallet],
        )),
    ));
    world.env.advance(2 * 86_400);
    let cranker = world.env.wallet(1_000_000_000);
    let victim = batch[0];
    out.push((
        "expire_job",
        expect_ok(world.send(
            &[ix::expire_job(
                cranker.pubkey(),
                victim.address,
                world.mint,
                victim.client,
                victim.client_tokens,
            )],
            &[&cranker],
        )),
    ));
    out.push(("claim", expect_ok(world.claim(&operator))));
    let treasury = world.treasury.insecure_clone();
    let destination = world.env.token_account(&treasury.pubkey(), world.mint);
    out.push((
        "withdraw_fees",
        expect_ok(world.send(
            &[ix::withdraw_fees(
                treasury.pubkey(),
                world.mint,
                destination,
            )],
            &[&treasury],
        )),
    ));
    out
}

#[test]
fn every_instruction_stays_within_its_cu_ceiling() {
    let measured = measure();
    println!("| instruction | CU | ceiling | tx bytes |");
    println!("|---|---:|---:|---:|");
    let mut over = Vec::new();
    for (name, sent) in &measured {
        let ceiling = CEILINGS
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
            .expect("every measured instruction has a ceiling");
        println!("| {name} | {} | {ceiling} | {} |", sent.cu, sent.size);
        if sent.cu > ceiling {
            over.push(format!("{name}: {} CU > {ceiling}", sent.cu));
        }
    }
    assert_eq!(measured.len(), CEILINGS.len(), "every ceiling is measured");
    assert!(over.is_empty(), "over their CU ceilings: {over:?}");
}

#[test]
#[ignore = "diagnostic: prints a settle transaction's logs"]
fn print_settle_logs() {
    let measured = measure();
    for (name, sent) in measured {
        if name == "settle (1 receipt)" || name == "open_job" {
            println!("{name}:\n{}", sent.logs.join("\n"));
        }
    }
}
