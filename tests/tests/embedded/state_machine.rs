//! Property-based state machine: random sequences of every money-moving instruction
//! (valid and invalid), several clients, two operators and two mints (SPL Token and
//! Token-2022), time jumps, and cross-mint / cross-operator attempts on live jobs
//! (each must fail: [`Cross`]), against the SBF program. After every step:
//! - solvency per mint (the World fixture checks it after every transaction, the
//!   cross attempts included);
//! - no job has paid out more than was deposited, and escrow = deposited − paid
//!   (0 once it has ended);
//! - settled units never decrease;
//! - every client's balance is exactly its start − deposits + refunds to it;
//! - tokens are conserved: what the participants and vaults hold never changes.
//!
//! CI runs a short version. `scripts/soak` runs a long one (TALLY_SM_CASES ×
//! TALLY_SM_STEPS steps); proptest prints the failing sequence, shrunk, and stores its
//! seed under tests/proptest-regressions/.
use std::collections::HashMap;

use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::Instruction;
use proptest::prelude::*;
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::events::{DisputeResolved, JobClosed};
use tally_client::ix::{self, MintRef};
use tally_client::{pda, UpdateConfigArgs};
use tally_tests::{
    events, ClientHandle, JobHandle, JobSpec, OperatorHandle, TokenKind, TxResult, World,
};

const CLIENTS: usize = 3;
const OPERATORS: usize = 2;
const MINTS: usize = 2;
const START_TOKENS: u64 = 50_000_000;

#[derive(Clone, Debug)]
enum Action {
    Open {
        client: usize,
        operator: usize,
        mint: usize,
        price: u64,
        units: u64,
        deadline_in: i64,
        cap: u64,
    },
    TopUp {
        job: usize,
        amount: u64,
    },
    Cancel {
        job: usize,
    },
    /// Receipts for up to three jobs; `delta` may be 0 (no new usage) and `stale`
    /// replays the last seq.
    Settle {
        operator: usize,
        mint: usize,
        jobs: Vec<(usize, u64, bool)>,
    },
    Complete {
        job: usize,
        delta: u64,
    },
    Expire {
        job: usize,
    },
    /// close_job by anyone: only an ended job whose share has matured closes.
    Close {
        job: usize,
    },
    Claim {
        operator: usize,
        mint: usize,
    },
    WithdrawFees {
        mint: usize,
    },
    Dispute {
        job: usize,
    },
    Resolve {
        job: usize,
        share_pct: u64,
        by_arbiter: bool,
    },
    /// An attempt on a job through the other mint's accounts or the other
    /// operator's ledger (see [`Cross`]): it must fail and move nothing.
    Cross {
        job: usize,
        how: Cross,
    },
    Pause(bool),
    Wait {
        secs: i64,
    },
}

/// Cross-mint and cross-operator attempts on a job of mint M and operator P.
#[derive(Clone, Copy, Debug)]
enum Cross {
    /// complete_job with the final receipt repeating the last one, every account
    /// but the job of the other mint (the refund would come out of its vault).
    CompleteInOtherMint,
    /// complete_job against the other operator's ledger in M.
    CompleteForOtherOperator,
    /// settle in the other mint's vault, with P's ledgers of that mint.
    SettleInOtherMint,
    /// settle with the other operator's ledgers in M.
    SettleForOtherOperator,
    /// top_up, cancel_job and expire_job through the other mint's accounts.
    TopUpInOtherMint,
    CancelInOtherMint,
    ExpireInOtherMint,
    /// dispute_job with P's ledger of the other mint, or Q's ledger of M.
    DisputeOtherLedger,
    /// resolve_dispute (arbiter) with the other mint's accounts.
    ResolveInOtherMint,
    /// claim: P's ledger of the other mint paid out of M's vault.
    ClaimOtherMintLedger,
    /// withdraw_fees: M's mint and destination with the other mint's vault.
    WithdrawFeesOtherVault,
}

fn cross() -> impl Strategy<Value = Cross> {
    prop_oneof![
        3 => Just(Cross::CompleteInOtherMint),
        1 => Just(Cross::CompleteForOtherOperator),
        1 => Just(Cross::SettleInOtherMint),
        1 => Just(Cross::SettleForOtherOperator),
        1 => Just(Cross::TopUpInOtherMint),
        1 => Just(Cross::CancelInOtherMint),
        1 => Just(Cross::ExpireInOtherMint),
        1 => Just(Cross::DisputeOtherLedger),
        1 => Just(Cross::ResolveInOtherMint),
        1 => Just(Cross::ClaimOtherMintLedger),
        1 => Just(Cross::WithdrawFeesOtherVault),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..CLIENTS, 0..OPERATORS, 0..MINTS, 1u64..50, 1u64..200_000, 60i64..20_000, prop_oneof![Just(0u64), 1_000u64..2_000_000])
            .prop_map(|(client, operator, mint, price, units, deadline_in, cap)| Action::Open { client, operator, mint, price, units, deadline_in, cap }),
        1 => (0usize..16, 0u64..500_000).prop_map(|(job, amount)| Action::TopUp { job, amount }),
        1 => (0usize..16).prop_map(|job| Action::Cancel { job }),
        4 => (0..OPERATORS, 0..MINTS, proptest::collection::vec((0usize..16, 0u64..60_000, any::<bool>()), 1..4))
            .prop_map(|(operator, mint, jobs)| Action::Settle { operator, mint, jobs }),
        1 => (0usize..16, 0u64..30_000).prop_map(|(job, delta)| Action::Complete { job, delta }),
        1 => (0usize..16).prop_map(|job| Action::Expire { job }),
        1 => (0usize..16).prop_map(|job| Action::Close { job }),
        2 => (0..OPERATORS, 0..MINTS).prop_map(|(operator, mint)| Action::Claim { operator, mint }),
        1 => (0..MINTS).prop_map(|mint| Action::WithdrawFees { mint }),
        1 => (0usize..16).prop_map(|job| Action::Dispute { job }),
        1 => (0usize..16, 0u64..=100, any::<bool>()).prop_map(|(job, share_pct, by_arbiter)| Action::Resolve { job, share_pct, by_arbiter }),
        2 => (0usize..16, cross()).prop_map(|(job, how)| Action::Cross { job, how }),
        1 => any::<bool>().prop_map(Action::Pause),
        2 => prop_oneof![1i64..600, 600i64..8_000, 8_000i64..200_000].prop_map(|secs| Action::Wait { secs }),
    ]
}

/// The world and what the model expects of it.
struct Machine {
    world: World,
    mints: Vec<MintRef>,
    clients: Vec<Vec<ClientHandle>>,
    operators: Vec<Vec<OperatorHandle>>,
    jobs: Vec<JobHandle>,
    /// Next seq and cumulative units the oracle would sign, per job address.
    metered: HashMap<Pubkey, (u64, u64)>,
    /// Last seen settled units per job (monotonic).
    settled: HashMap<Pubkey, u64>,
    /// Expected token balance per client token account.
    expected_client: HashMap<Pubkey, u64>,
    /// Every token account the story created, per mint (for conservation).
    accounts: Vec<Vec<Pubkey>>,
    next_job_id: u64,
}

impl Machine {
    fn new() -> Self {
        let mut world = World::builder()
            .fee_bps(300)
            .challenge_window(3_600)
            .expiry_grace(1_800)
            .build();
        let admin = world.admin.insecure_clone();
        let second = world
            .env
            .create_mint(TokenKind::Token2022, &world.mint_authority.pubkey());
        tally_tests::expect_ok(world.send(&[ix::add_mint(admin.pubkey(), second)], &[&admin]));
        world.mints.push(second);
        let mints = vec![world.mint, second];
        let mut clients: Vec<Vec<ClientHandle>> = (0..MINTS).map(|_| Vec::new()).collect();
        let mut operators: Vec<Vec<OperatorHandle>> = (0..MINTS).map(|_| Vec::new()).collect();
        let mut expected_client = HashMap::new();
        let mut accounts = vec![Vec::new(); MINTS];
        // The same wallets in both mints: clients and operators are people, mints
        // are currencies.
        let base_clients: Vec<ClientHandle> =
            (0..CLIENTS).map(|_| world.client(START_TOKENS)).collect();
        let base_operators: Vec<OperatorHandle> =
            (0..OPERATORS).map(|_| world.operator()).collect();
        for (m, mint) in mints.iter().enumerate() {
            world.mint = *mint;
            for c in &base_clients {
                let tokens = world.env.token_account(&c.wallet.pubkey(), *mint);
                if m > 0 {
                    let authority = world.mint_authority.insecure_clone();
                    world.env.mint_to(*mint, &authority, &tokens, START_TOKENS);
                }
                expected_client.insert(tokens, START_TOKENS);
                accounts[m].push(tokens);
                clients[m].push(ClientHandle {
                    wallet: c.wallet.insecure_clone(),
                    tokens,
                });
            }
            for o in &base_operators {
                let payout_tokens = world.env.token_account(&o.payout_owner, *mint);
                accounts[m].push(payout_tokens);
                operators[m].push(OperatorHandle {
                    authority: o.authority.insecure_clone(),
                    payout_tokens,
                    payout_owner: o.payout_owner,
                });
            }
            let treasury = world.treasury.pubkey();
            accounts[m].push(world.env.token_account(&treasury, *mint));
            accounts[m].push(pda::vault_tokens(&mint.mint));
        }
        world.mint = mints[0];
        Self {
            world,
            mints,
            clients,
            operators,
            jobs: Vec::new(),
            metered: HashMap::new(),
            settled: HashMap::new(),
            expected_client,
            accounts,
            next_job_id: 0,
        }
    }

    fn mint_index(&self, job: &JobHandle) -> usize {
        self.mints
            .iter()
            .position(|m| m.mint == job.mint.mint)
            .unwrap_or(0)
    }

    fn job(&self, index: usize) -> Option<JobHandle> {
        (!self.jobs.is_empty()).then(|| self.jobs[index % self.jobs.len()])
    }

    fn live(&self, job: &JobHandle) -> bool {
        self.world
            .env
            .svm
            .get_account(&job.address)
            .is_some_and(|a| a.owner == tally::ID && a.data.len() > 8)
    }

    /// Books refunds the program reported to the clients they belong to.
    fn book_refunds(&mut self, result: &TxResult) {
        let Ok(sent) = result else { return };
        for closed in events::<JobClosed>(&sent.logs) {
            let job = self
                .jobs
                .iter()
                .find(|j| j.address == closed.job)
                .copied()
                .expect("known job");
            assert_eq!(
                closed.client, job.client,
                "a refund goes to the job's own client"
            );
            *self
                .expected_client
                .get_mut(&job.client_tokens)
                .expect("client account") += closed.refunded;
        }
        for resolved in events::<DisputeResolved>(&sent.logs) {
            let job = self
                .jobs
                .iter()
                .find(|j| j.address == resolved.job)
                .copied()
                .expect("known job");
            *self
                .expected_client
                .get_mut(&job.client_tokens)
                .expect("client account") += resolved.to_client;
        }
    }

    fn step(&mut self, action: &Action) {
        match action.clone() {
            Action::Open {
                client,
                operator,
                mint,
                price,
                units,
                deadline_in,
                cap,
            } => {
                let (c, o) = (&self.clients[mint][client], &self.operators[mint][operator]);
                let (c, o) = (
                    ClientHandle {
                        wallet: c.wallet.insecure_clone(),
                        tokens: c.tokens,
                    },
                    OperatorHandle {
                        authority: o.authority.insecure_clone(),
                        payout_tokens: o.payout_tokens,
                        payout_owner: o.payout_owner,
                    },
                );
                self.world.mint = self.mints[mint];
                let spec = JobSpec {
                    unit_price: price,
                    max_units: units,
                    deadline_in_secs: deadline_in,
                    spend_cap_per_hour: cap,
                    unit_kind: 0,
                    ..JobSpec::default()
                };
                let id = self.next_job_id;
                self.next_job_id += 1;
                let (job, result) = self.world.try_open_job(&c, &o, id, spec);
                if result.is_ok() {
                    *self.expected_client.get_mut(&c.tokens).expect("client") -= price * units;
                    self.jobs.push(job);
                    self.metered.insert(job.address, (1, 0));
                }
            }
            Action::TopUp { job, amount } => {
                let Some(job) = self.job(job) else { return };
                let m = self.mint_index(&job);
                let wallet = self.clients[m]
                    .iter()
                    .find(|c| c.tokens == job.client_tokens)
                    .expect("client")
                    .wallet
                    .insecure_clone();
                let result = self.world.send(
                    &[ix::top_up(
                        job.client,
                        job.address,
                        job.mint,
                        job.client_tokens,
                        amount,
                    )],
                    &[&wallet],
                );
                if result.is_ok() {
                    *self
                        .expected_client
                        .get_mut(&job.client_tokens)
                        .expect("client") -= amount;
                }
            }
            Action::Cancel { job } => {
                let Some(job) = self.job(job) else { return };
                let m = self.mint_index(&job);
                let wallet = self.clients[m]
                    .iter()
                    .find(|c| c.tokens == job.client_tokens)
                    .expect("client")
                    .wallet
                    .insecure_clone();
                let result = self.world.send(
                    &[ix::cancel_job(
                        job.client,
                        job.address,
                        job.mint,
                        job.client_tokens,
                    )],
                    &[&wallet],
                );
                self.book_refunds(&result);
            }
            Action::Settle {
                operator,
                mint,
                jobs,
            } => {
                let o = &self.operators[mint][operator];
                let o = OperatorHandle {
                    authority: o.authority.insecure_clone(),
                    payout_tokens: o.payout_tokens,
                    payout_owner: o.payout_owner,
                };
                let mut receipts: Vec<(Pubkey, tally_client::SettleReceipt, bool, u64)> =
                    Vec::new();
                for (index, delta, stale) in jobs {
                    let Some(job) = self.job(index) else { continue };
                    // Mostly this operator's live jobs in this mint, once each; now
                    // and then a foreign job, which must fail the whole batch.
                    let foreign = !self.live(&job)
                        || self.world.env.job(&job.address).operator != o.address()
                        || job.mint.mint != self.mints[mint].mint;
                    if (foreign && delta % 7 != 0)
                        || receipts.iter().any(|(a, ..)| *a == job.address)
                    {
                        continue;
                    }
                    let (seq, units) = self.metered.get(&job.address).copied().unwrap_or((1, 0));
                    let receipt = if stale && seq > 1 {
                        self.world.receipt(seq - 1, units)
                    } else {
                        self.world.receipt(seq, units + delta)
                    };
                    receipts.push((job.address, receipt, stale && seq > 1, delta));
                }
                if receipts.is_empty() {
                    return;
                }
                self.world.mint = self.mints[mint];
                let batch: Vec<_> = receipts.iter().map(|(a, r, _, _)| (*a, *r)).collect();
                if self.world.settle(&o, &batch).is_ok() {
                    for (address, receipt, stale, _) in receipts {
                        if !stale {
                            self.metered
                                .insert(address, (receipt.seq + 1, receipt.cumulative_units));
                        }
                    }
                }
            }
            Action::Complete { job, delta } => {
                let Some(job) = self.job(job) else { return };
                let m = self.mint_index(&job);
                let Some(o) = self.operators[m].iter().find(|o| {
                    self.live(&job) && self.world.env.job(&job.address).operator == o.address()
                }) else {
                    return;
                };
                let o = OperatorHandle {
                    authority: o.authority.insecure_clone(),
                    payout_tokens: o.payout_tokens,
                    payout_owner: o.payout_owner,
                };
                let (seq, units) = self.metered.get(&job.address).copied().unwrap_or((1, 0));
                let receipt = self.world.receipt(seq, units + delta);
                let result = self.world.complete(&o, &job, receipt);
                self.book_refunds(&result);
            }
            Action::Expire { job } => {
                let Some(job) = self.job(job) else { return };
                let cranker = self.world.env.payer.insecure_clone();
                let result = self.world.send(
                    &[ix::expire_job(
                        cranker.pubkey(),
                        job.address,
                        job.mint,
                        job.client,
                        job.client_tokens,
                    )],
                    &[],
                );
                self.book_refunds(&result);
            }
            Action::Close { job } => {
                let Some(job) = self.job(job) else { return };
                let cranker = self.world.env.payer.insecure_clone();
                let before = self.world.env.lamports(&job.client);
                let rent = self.world.env.lamports(&job.address);
                let result = self.world.send(
                    &[ix::close_job(cranker.pubkey(), job.address, job.client)],
                    &[],
                );
                if result.is_ok() {
                    assert!(!self.live(&job), "close_job closed the job");
                    assert_eq!(
                        self.world.env.lamports(&job.client),
                        before + rent,
                        "the rent went to the job's client"
                    );
                }
            }
            Action::Claim { operator, mint } => {
                self.world.mint = self.mints[mint];
                let o = &self.operators[mint][operator];
                let o = OperatorHandle {
                    authority: o.authority.insecure_clone(),
                    payout_tokens: o.payout_tokens,
                    payout_owner: o.payout_owner,
                };
                let _ = self.world.claim(&o);
            }
            Action::WithdrawFees { mint } => {
                let treasury = self.world.treasury.insecure_clone();
                let destination = pda::associated_token(
                    &treasury.pubkey(),
                    &self.mints[mint].mint,
                    &self.mints[mint].token_program,
                );
                let _ = self.world.send(
                    &[ix::withdraw_fees(
                        treasury.pubkey(),
                        self.mints[mint],
                        destination,
                    )],
                    &[&treasury],
                );
            }
            Action::Dispute { job } => {
                let Some(job) = self.job(job) else { return };
                if !self.live(&job) {
                    return;
                }
                let m = self.mint_index(&job);
                let wallet = self.clients[m]
                    .iter()
                    .find(|c| c.tokens == job.client_tokens)
                    .expect("client")
                    .wallet
                    .insecure_clone();
                let operator = self.world.env.job(&job.address).operator;
                let _ = self.world.send(
                    &[ix::dispute_job(
                        job.client,
                        job.address,
                        operator,
                        job.mint.mint,
                    )],
                    &[&wallet],
                );
            }
            Action::Resolve {
                job,
                share_pct,
                by_arbiter,
            } => {
                let Some(job) = self.job(job) else { return };
                if !self.live(&job) {
                    return;
                }
                let state = self.world.env.job(&job.address);
                let resolver = if by_arbiter {
                    self.world.arbiter.insecure_clone()
                } else {
                    self.world.env.payer.insecure_clone()
                };
                let share = if by_arbiter {
                    state.disputed_amount * share_pct / 100
                } else {
                    0
                };
                let resolve = ix::resolve_dispute(
                    resolver.pubkey(),
                    job.address,
                    state.operator,
                    job.mint,
                    job.client_tokens,
                    share,
                );
                if by_arbiter {
                    self.world
                        .env
                        .airdrop(&resolver.pubkey(), 1_000_000_000)
                        .expect("airdrop");
                }
                let result = self.world.send(&[resolve], &[&resolver]);
                self.book_refunds(&result);
            }
            Action::Cross { job, how } => {
                let Some(job) = self.job(job) else { return };
                if self.live(&job) {
                    self.cross(&job, how);
                }
            }
            Action::Pause(paused) => {
                let admin = self.world.admin.insecure_clone();
                let _ = self.world.send(
                    &[ix::update_config(
                        admin.pubkey(),
                        UpdateConfigArgs {
                            paused: Some(paused),
                            ..Default::default()
                        },
                    )],
                    &[&admin],
                );
            }
            Action::Wait { secs } => self.world.env.advance(secs),
        }
        self.world.mint = self.mints[0];
    }

    /// Runs a cross-mint or cross-operator attempt on `job` (live): it must fail.
    /// The ledgers it names are opened first, so only the program's own checks
    /// stand in the way. Solvency per mint is checked after it like after every
    /// transaction.
    fn cross(&mut self, job: &JobHandle, how: Cross) {
        let m = self.mint_index(job);
        let other_m = 1 - m;
        let (mint, other_mint) = (self.mints[m], self.mints[other_m]);
        let state = self.world.env.job(&job.address);
        let c = self.clients[m]
            .iter()
            .position(|c| c.tokens == job.client_tokens)
            .expect("client");
        let wallet = self.clients[m][c].wallet.insecure_clone();
        let other_tokens = self.clients[other_m][c].tokens;
        let o = self.operators[m]
            .iter()
            .position(|o| o.address() == state.operator)
            .expect("operator");
        let op = self.operators[m][o].authority.pubkey();
        let other_op = self.operators[m][1 - o].authority.pubkey();
        let attestation = self.world.attestation();
        let payer = self.world.env.payer.insecure_clone();
        for (authority, ledger_mint) in [(op, other_mint.mint), (other_op, mint.mint)] {
            let open = ix::open_ledgers(payer.pubkey(), authority, ledger_mint, attestation.day);
            tally_tests::expect_ok(self.world.env.send(&[open], &[]));
        }
        let (seq, units) = self.metered.get(&job.address).copied().unwrap_or((1, 0));
        let repeat = tally_client::ops::settled_receipt(&state);
        let next = self.world.receipt(seq, units + 1);
        let oracle = self.world.oracles[0].insecure_clone();
        let arbiter = self.world.arbiter.insecure_clone();
        let treasury = self.world.treasury.insecure_clone();
        let (ixs, signer): (Vec<Instruction>, Keypair) = match how {
            Cross::CompleteInOtherMint => (
                vec![ix::complete_job(
                    &attestation,
                    op,
                    other_mint,
                    job.address,
                    job.client,
                    other_tokens,
                    repeat,
                )],
                oracle,
            ),
            Cross::CompleteForOtherOperator => (
                vec![ix::complete_job(
                    &attestation,
                    other_op,
                    mint,
                    job.address,
                    job.client,
                    job.client_tokens,
                    repeat,
                )],
                oracle,
            ),
            Cross::SettleInOtherMint => (
                vec![ix::settle(
                    &attestation,
                    op,
                    other_mint.mint,
                    &[(job.address, next)],
                )],
                oracle,
            ),
            Cross::SettleForOtherOperator => (
                vec![ix::settle(
                    &attestation,
                    other_op,
                    mint.mint,
                    &[(job.address, next)],
                )],
                oracle,
            ),
            Cross::TopUpInOtherMint => (
                vec![ix::top_up(
                    job.client,
                    job.address,
                    other_mint,
                    other_tokens,
                    1_000,
                )],
                wallet,
            ),
            Cross::CancelInOtherMint => (
                vec![ix::cancel_job(
                    job.client,
                    job.address,
                    other_mint,
                    other_tokens,
                )],
                wallet,
            ),
            Cross::ExpireInOtherMint => (
                vec![ix::expire_job(
                    payer.pubkey(),
                    job.address,
                    other_mint,
                    job.client,
                    other_tokens,
                )],
                payer.insecure_clone(),
            ),
            Cross::DisputeOtherLedger => {
                let (ledger_owner, ledger_mint) = if seq % 2 == 0 {
                    (pda::operator(&op), other_mint.mint)
                } else {
                    (pda::operator(&other_op), mint.mint)
                };
                (
                    vec![ix::dispute_job(
                        job.client,
                        job.address,
                        ledger_owner,
                        ledger_mint,
                    )],
                    wallet,
                )
            }
            Cross::ResolveInOtherMint => (
                vec![ix::resolve_dispute(
                    arbiter.pubkey(),
                    job.address,
                    state.operator,
                    other_mint,
                    other_tokens,
                    state.disputed_amount,
                )],
                arbiter,
            ),
            Cross::ClaimOtherMintLedger => {
                let claim = ix::claim(op, mint, self.operators[m][o].payout_tokens);
                (
                    vec![tally_tests::substitute(
                        claim,
                        pda::earnings(&state.operator, &mint.mint),
                        pda::earnings(&state.operator, &other_mint.mint),
                    )],
                    self.operators[m][o].authority.insecure_clone(),
                )
            }
            Cross::WithdrawFeesOtherVault => {
                let destination =
                    pda::associated_token(&treasury.pubkey(), &mint.mint, &mint.token_program);
                let withdraw = ix::withdraw_fees(treasury.pubkey(), mint, destination);
                (
                    vec![tally_tests::substitute(
                        withdraw,
                        pda::vault(&mint.mint),
                        pda::vault(&other_mint.mint),
                    )],
                    treasury,
                )
            }
        };
        self.world
            .env
            .airdrop(&signer.pubkey(), 1_000_000_000)
            .expect("airdrop");
        let result = self.world.env.send_with_payer(&ixs, &signer, &[]);
        self.world.check_solvency();
        if let Ok(sent) = result {
            panic!(
                "cross attempt {how:?} on job {} succeeded; logs:\n{}",
                job.address,
                sent.logs.join("\n")
            );
        }
    }

    fn check(&mut self) {
        // Solvency was checked after every transaction by the World fixture.
        for job in &self.jobs {
            if !self.live(job) {
                continue;
            }
            let state = self.world.env.job(&job.address);
            assert!(
                state.settled_gross <= state.deposited,
                "a job paid more than was escrowed"
            );
            if state.status().is_finished() {
                // Ended and refunded, kept while its share can be disputed.
                assert_eq!(state.escrow_left, 0, "an ended job holds no escrow");
            } else {
                assert_eq!(
                    state.escrow_left,
                    state.deposited - state.settled_gross,
                    "escrow = deposited − paid"
                );
            }
            let before = self
                .settled
                .insert(job.address, state.settled_units)
                .unwrap_or(0);
            assert!(state.settled_units >= before, "settled units decreased");
        }
        for (account, expected) in &self.expected_client {
            assert_eq!(
                self.world.env.token_balance(account),
                *expected,
                "client balance = start − deposits + refunds"
            );
        }
        for (m, accounts) in self.accounts.iter().enumerate() {
            let held: u64 = accounts
                .iter()
                .map(|a| self.world.env.token_balance(a))
                .sum();
            assert_eq!(
                held,
                START_TOKENS * CLIENTS as u64,
                "tokens conserved in mint {m}"
            );
        }
    }
}

fn cases() -> u32 {
    std::env::var("TALLY_SM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

fn steps() -> usize {
    std::env::var("TALLY_SM_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_instruction_sequences_keep_every_invariant(actions in proptest::collection::vec(action(), steps())) {
        let mut machine = Machine::new();
        let before = machine.world.env.svm.get_sysvar::<solana_clock::Clock>().slot;
        for action in &actions {
            machine.step(action);
            machine.check();
        }
        if std::env::var_os("TALLY_SM_STATS").is_some() {
            let settled: u64 = machine.settled.values().sum();
            let closed = machine.jobs.iter().filter(|j| !machine.live(j)).count();
            eprintln!(
                "{} steps: {} jobs opened, {} closed, {settled} units settled, {} slots",
                actions.len(),
                machine.jobs.len(),
                closed,
                machine.world.env.svm.get_sysvar::<solana_clock::Clock>().slot - before
            );
        }
    }
}
