//! Measurements shared by the CU-ceiling test and `scripts/bench`: every instruction
//! run once on the SBF program with deterministic fixtures, and the settlement
//! capacity of one transaction.
use solana_keypair::Keypair;
use solana_message::Message;
use solana_signer::Signer;
use solana_transaction::Transaction;
use tally_client::{ix, OperatorArgs, Pubkey, SettleReceipt, UpdateConfigArgs};

use crate::{expect_ok, JobHandle, JobSpec, Sent, World};

/// The packet limit a transaction must fit in (the validator's RPC enforces it;
/// LiteSVM does not, so it is checked here).
pub const MAX_TX_BYTES: usize = 1_232;

/// The base fee of one signature, in lamports.
pub const LAMPORTS_PER_SIGNATURE: u64 = 5_000;

/// Runs every instruction once and returns its measured CU, in `CEILINGS` order.
pub fn measure_instructions() -> Vec<(&'static str, Sent)> {
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
    let mint = world
        .env
        .create_mint(crate::TokenKind::Token2022, &world.mint_authority.pubkey());
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
    out.push((
        "open_job (client's first: creates ClientJobs)",
        expect_ok(opened),
    ));
    let (_, opened) = world.try_open_job(&client, &operator, 101, JobSpec::default());
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
    // Ids only go up per client: after the measured job 100.
    for id in 102..110 {
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
    let oracle = world.oracles[0].insecure_clone();
    let relayer = world.env.wallet(1_000_000_000);
    let signed = world.sign_receipt(&batch[0], world.receipt(2, 60), &[&oracle]);
    out.push((
        "settle_relayed (1 receipt)",
        expect_ok(world.settle_relayed(&operator, &relayer, &[signed])),
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
    out.push(("close_job", measure_close_job()));
    out
}

/// `close_job` of a completed job whose share has just left the challenge window
/// (a world with one: in the main one everything is claimable at once).
fn measure_close_job() -> Sent {
    let mut world = World::builder().challenge_window(60).build();
    let operator = world.operator();
    let client = world.client(1_000_000);
    let job = world.open_job(&client, &operator, 1, JobSpec::default());
    world.env.advance(60);
    let r = world.receipt(1, 100);
    expect_ok(world.complete(&operator, &job, r));
    world.env.advance(120);
    let closer = world.env.payer.insecure_clone();
    expect_ok(world.send(
        &[ix::close_job(closer.pubkey(), job.address, job.client)],
        &[],
    ))
}

/// How many receipts one legacy settle transaction carries, and what they cost.
#[derive(Clone, Debug)]
pub struct SettleCapacity {
    /// Most receipts in one settle transaction within [`MAX_TX_BYTES`].
    pub receipts_per_tx: usize,
    pub tx_bytes: usize,
    /// CU of that transaction.
    pub cu: u64,
    /// CU each receipt adds beyond the first: (cu(n) − cu(1)) / (n − 1).
    pub cu_per_extra_receipt: u64,
    /// CU of the whole transaction divided by its receipts.
    pub cu_per_receipt: u64,
    /// Fee lamports of the transaction divided by its receipts.
    pub fee_lamports_per_receipt: u64,
    /// Bytes one receipt takes in the instruction data (packed; the relayed path's
    /// signed message), its account reference not included.
    pub receipt_data_bytes: usize,
}

impl SettleCapacity {
    /// Figures of a transaction of `n` receipts (`full`), given one of a single
    /// receipt (`single`) for the marginal cost.
    fn from_runs(n: usize, single: &Sent, full: &Sent, receipt_data_bytes: usize) -> Self {
        let count = n as u64;
        Self {
            receipt_data_bytes,
            receipts_per_tx: n,
            tx_bytes: full.size,
            cu: full.cu,
            cu_per_extra_receipt: (full.cu - single.cu) / (count - 1).max(1),
            cu_per_receipt: full.cu / count,
            fee_lamports_per_receipt: full.fee / count,
        }
    }
}

/// Fills a v0 settle transaction whose accounts resolve through an address lookup
/// table (created by the real lookup-table program) until the next receipt would
/// exceed [`MAX_TX_BYTES`]; checks every receipt settled.
/// A token job priced like inference ($0.15 / $0.60 per 1M tokens in a 6-decimal
/// mint), escrowed for 50M tokens.
fn realistic_job() -> JobSpec {
    JobSpec {
        prices: Some((150_000, 600_000)),
        max_units: 50_000_000,
        ..JobSpec::default()
    }
}

/// Receipt `seq` of each of `jobs` as a round of the oracle writes it: a few million
/// tokens in (a quarter of them output), one period end: the packed counters take
/// their real size.
fn realistic_receipts(world: &World, jobs: &[JobHandle], seq: u64) -> Vec<(Pubkey, SettleReceipt)> {
    jobs.iter()
        .enumerate()
        .map(|(i, j)| {
            let units = seq * 1_400_000 + i as u64 * 7_919;
            (j.address, world.receipt_split(seq, units, units / 4))
        })
        .collect()
}

/// Packed bytes per receipt of `receipts` (without the batch's 8-byte base time).
fn packed_bytes(receipts: &[(Pubkey, SettleReceipt)]) -> usize {
    let packed = tally_client::pack_receipts(&receipts.iter().map(|(_, r)| *r).collect::<Vec<_>>());
    (packed.len() - 8) / receipts.len().max(1)
}

pub fn alt_capacity() -> SettleCapacity {
    alt_capacity_in(World::builder().build())
}

/// [`alt_capacity`] with an `m`-of-`n` oracle set: `m` oracles sign each settle
/// transaction (the leader paying).
pub fn quorum_alt_capacity(n: usize, m: u8) -> SettleCapacity {
    alt_capacity_in(World::builder().oracles(n, m).build())
}

fn alt_capacity_in(mut world: World) -> SettleCapacity {
    let operator = world.operator();
    let client = world.client(1_000_000_000);
    let jobs: Vec<_> = (0..32)
        .map(|id| world.open_job(&client, &operator, id, realistic_job()))
        .collect();
    world.env.advance(60);
    let addresses: Vec<_> = jobs.iter().map(|j| j.address).collect();
    let table = world.settlement_table(&operator, &addresses);
    let receipts_for =
        |world: &World, n: usize, seq: u64| realistic_receipts(world, &jobs[..n], seq);
    let size_of = |world: &World, n: usize| {
        crate::tx_wire_size_versioned(&world.settle_v0_tx(
            &operator,
            &receipts_for(world, n, 2),
            &table,
        ))
    };
    let mut n = 1;
    while n < jobs.len() && size_of(&world, n + 1) <= MAX_TX_BYTES {
        n += 1;
    }
    let single = expect_ok(world.settle_v0(&operator, &receipts_for(&world, 1, 1), &table));
    world.env.advance(1);
    let receipts = receipts_for(&world, n, 2);
    let full = expect_ok(world.settle_v0(&operator, &receipts, &table));
    assert!(
        full.size <= MAX_TX_BYTES,
        "the measured transaction fits: {} bytes",
        full.size
    );
    for (job, (_, receipt)) in jobs[..n].iter().zip(&receipts) {
        let stored = world.env.job(&job.address);
        assert_eq!(
            (stored.settled_units, stored.settled_output),
            (receipt.cumulative_units, receipt.cumulative_output),
            "every receipt settled"
        );
    }
    SettleCapacity::from_runs(n, &single, &full, packed_bytes(&receipts))
}

/// Fills relayed settlements (one Ed25519 instruction + `settle_relayed`, a relayer
/// paying) with receipts for distinct jobs, one oracle signature each, until the next
/// one would exceed [`MAX_TX_BYTES`].
pub fn relayed_capacity() -> SettleCapacity {
    relayed_capacity_in(World::builder().build())
}

/// [`relayed_capacity`] with an `m`-of-`n` oracle set: each receipt carries `m`
/// oracle signatures.
pub fn quorum_relayed_capacity(n: usize, m: u8) -> SettleCapacity {
    relayed_capacity_in(World::builder().oracles(n, m).build())
}

fn relayed_capacity_in(mut world: World) -> SettleCapacity {
    let operator = world.operator();
    let client = world.client(1_000_000_000);
    let jobs: Vec<_> = (0..16)
        .map(|id| world.open_job(&client, &operator, id, JobSpec::default()))
        .collect();
    world.env.advance(60);
    let attestation = world.attestation();
    let oracles = world.oracle_signers(&attestation);
    let oracles: Vec<&Keypair> = oracles.iter().collect();
    let relayer = world.env.wallet(1_000_000_000);
    let signed: Vec<_> = jobs
        .iter()
        .map(|j| world.sign_receipt(j, world.receipt(1, 10), &oracles))
        .collect();
    let size_of = |world: &mut World, n: usize| {
        let ixs = world.relayed_ixs(&operator, &relayer, &signed[..n]);
        let tx = Transaction::new(
            &[&relayer],
            Message::new(&ixs, Some(&relayer.pubkey())),
            world.env.svm.latest_blockhash(),
        );
        crate::tx_wire_size(&tx)
    };
    let mut n = 1;
    while n < jobs.len() && size_of(&mut world, n + 1) <= MAX_TX_BYTES {
        n += 1;
    }
    let single = expect_ok(world.settle_relayed(&operator, &relayer, &signed[..1]));
    let full = expect_ok(world.settle_relayed(&operator, &relayer, &signed[1..=n]));
    assert!(
        full.size <= MAX_TX_BYTES,
        "the measured transaction fits: {} bytes",
        full.size
    );
    // Each receipt: its signed message plus, per oracle, a signature, key and
    // offsets entry.
    let per_receipt = tally::receipt::RECEIPT_MESSAGE_LEN + oracles.len() * (64 + 32 + 14);
    SettleCapacity::from_runs(n, &single, &full, per_receipt)
}

/// Fills legacy settle transactions (one oracle signature, its oracle paying the fee)
/// with receipts for distinct jobs until the next one would exceed [`MAX_TX_BYTES`].
pub fn settle_capacity() -> SettleCapacity {
    let mut world = World::builder().build();
    let operator = world.operator();
    let client = world.client(1_000_000_000);
    let jobs: Vec<_> = (0..32)
        .map(|id| world.open_job(&client, &operator, id, realistic_job()))
        .collect();
    world.env.advance(60);
    let attestation = world.attestation();
    if let Some(open) = world.ledgers_ix(&attestation, &operator) {
        expect_ok(world.send(&[open], &[]));
    }
    let oracle = world.oracles[0].insecure_clone();
    let size_of = |world: &World, n: usize| {
        let receipts = realistic_receipts(world, &jobs[1..=n], 1);
        let settle = ix::settle(
            &attestation,
            operator.authority.pubkey(),
            world.mint.mint,
            &receipts,
        );
        let tx = Transaction::new(
            &[&oracle],
            Message::new(&[settle], Some(&oracle.pubkey())),
            world.env.svm.latest_blockhash(),
        );
        crate::tx_wire_size(&tx)
    };
    let mut n = 1;
    while n < jobs.len() && size_of(&world, n + 1) <= MAX_TX_BYTES {
        n += 1;
    }
    let single = expect_ok(world.settle(&operator, &realistic_receipts(&world, &jobs[..1], 1)));
    let receipts = realistic_receipts(&world, &jobs[1..=n], 1);
    let full = expect_ok(world.settle(&operator, &receipts));
    assert!(
        full.size <= MAX_TX_BYTES,
        "the measured transaction fits: {} bytes",
        full.size
    );
    SettleCapacity::from_runs(n, &single, &full, packed_bytes(&receipts))
}
