//! Account substitution across mints and operators. Every instruction that takes a
//! job, a vault, a ledger or a token account is tried with the accounts of a second,
//! fully set-up mint (its own vault holding escrow, earnings and fees; Token-2022, so
//! the token program differs too) and of a second operator. Each attempt must fail
//! with its named error and move no token; the World fixture checks solvency per
//! mint after every transaction, and each test ends with the honest instruction.
//! The same story also checks that every signed instruction needs its signature.
use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::Instruction;
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::errors::TallyError;
use tally::events::JobClosed;
use tally::state::{utc_day, Earnings};
use tally_client::ix::{self, MintRef};
use tally_client::relay::relayed_settlement;
use tally_client::{pda, SettleReceipt};
use tally_tests::{
    events, expect_error, expect_ok, substitute, AnchorErrorCode, ClientHandle, ExpectedError,
    JobHandle, JobSpec, OperatorHandle, TokenKind, World,
};

const WINDOW: u32 = 3_600;

/// A wallet with a token account in each mint.
struct Person {
    wallet: Keypair,
    a: Pubkey,
    b: Pubkey,
}

impl Person {
    fn in_a(&self) -> ClientHandle {
        ClientHandle {
            wallet: self.wallet.insecure_clone(),
            tokens: self.a,
        }
    }
    fn in_b(&self) -> ClientHandle {
        ClientHandle {
            wallet: self.wallet.insecure_clone(),
            tokens: self.b,
        }
    }
}

/// Two accepted mints (A: SPL Token, B: Token-2022), two operators (P, Q), two
/// clients (C works with P, D with Q), a job per client and mint, each settled once
/// long enough ago to have matured and once inside the challenge window; a job of C
/// with no usage yet (`open_a`) and one of C past its deadline and grace
/// (`expired_a`), both with P in mint A.
struct Two {
    world: World,
    a: MintRef,
    b: MintRef,
    p: OperatorHandle,
    q: OperatorHandle,
    p_payout_b: Pubkey,
    c: Person,
    d: Person,
    a_p: JobHandle,
    b_p: JobHandle,
    a_q: JobHandle,
    open_a: JobHandle,
    expired_a: JobHandle,
    /// Last settled receipt of `a_p`.
    last_a_p: SettleReceipt,
    /// Every token account of the story, vaults included.
    token_accounts: Vec<Pubkey>,
}

fn story() -> Two {
    let mut world = World::builder()
        .fee_bps(250)
        .challenge_window(WINDOW)
        .build();
    let mint_a = world.mint;
    let mint_b = world.accept_mint(TokenKind::Token2022);
    let op_p = world.operator();
    let op_q = world.operator();
    let p_payout_b = world.env.token_account(&op_p.payout_owner, mint_b);
    let q_payout_b = world.env.token_account(&op_q.payout_owner, mint_b);
    let person = |world: &mut World| {
        let wallet = world.env.wallet(10_000_000_000);
        let a_tokens = world.fund(&wallet.pubkey(), mint_a, 10_000_000);
        let b_tokens = world.fund(&wallet.pubkey(), mint_b, 10_000_000);
        Person {
            wallet,
            a: a_tokens,
            b: b_tokens,
        }
    };
    let client_c = person(&mut world);
    let client_d = person(&mut world);
    let spec = JobSpec::default();
    let a_p = world.in_mint(mint_a, |w| w.open_job(&client_c.in_a(), &op_p, 1, spec));
    let b_p = world.in_mint(mint_b, |w| w.open_job(&client_c.in_b(), &op_p, 2, spec));
    let a_q = world.in_mint(mint_a, |w| w.open_job(&client_d.in_a(), &op_q, 1, spec));
    let b_q = world.in_mint(mint_b, |w| w.open_job(&client_d.in_b(), &op_q, 2, spec));
    let open_a = world.in_mint(mint_a, |w| w.open_job(&client_c.in_a(), &op_p, 3, spec));
    let short = JobSpec {
        deadline_in_secs: 600,
        ..spec
    };
    let expired_a = world.in_mint(mint_a, |w| w.open_job(&client_c.in_a(), &op_p, 4, short));
    world.env.advance(60);
    for (mint, operator, job) in [
        (mint_a, &op_p, &a_p),
        (mint_b, &op_p, &b_p),
        (mint_a, &op_q, &a_q),
        (mint_b, &op_q, &b_q),
    ] {
        world.in_mint(mint, |w| {
            let receipt = w.receipt(1, 1_000);
            expect_ok(w.settle(operator, &[(job.address, receipt)]));
        });
    }
    world.env.advance(2 * i64::from(WINDOW) + 60);
    let mut last_a_p = world.receipt(2, 2_000);
    for (mint, operator, job) in [
        (mint_a, &op_p, &a_p),
        (mint_b, &op_p, &b_p),
        (mint_a, &op_q, &a_q),
        (mint_b, &op_q, &b_q),
    ] {
        world.in_mint(mint, |w| {
            let receipt = w.receipt(2, 2_000);
            if job.address == a_p.address {
                last_a_p = receipt;
            }
            expect_ok(w.settle(operator, &[(job.address, receipt)]));
        });
    }
    let token_accounts = vec![
        client_c.a,
        client_c.b,
        client_d.a,
        client_d.b,
        op_p.payout_tokens,
        p_payout_b,
        op_q.payout_tokens,
        q_payout_b,
        pda::vault_tokens(&mint_a.mint),
        pda::vault_tokens(&mint_b.mint),
    ];
    Two {
        world,
        a: mint_a,
        b: mint_b,
        p: op_p,
        q: op_q,
        p_payout_b,
        c: client_c,
        d: client_d,
        a_p,
        b_p,
        a_q,
        open_a,
        expired_a,
        last_a_p,
        token_accounts,
    }
}

impl Two {
    fn balances(&self) -> Vec<u64> {
        self.token_accounts
            .iter()
            .map(|a| self.world.env.token_balance(a))
            .collect()
    }

    /// Sends an attack (fees paid by `payer`), expects `expected`, and checks that no
    /// token moved and every vault is still solvent.
    fn refused_as(
        &mut self,
        payer: &Keypair,
        ixs: &[Instruction],
        signers: &[&Keypair],
        expected: impl ExpectedError,
    ) {
        let before = self.balances();
        expect_error(
            self.world.env.send_with_payer(ixs, payer, signers),
            expected,
        );
        assert_eq!(self.balances(), before, "an attack moved tokens");
        self.world.check_solvency();
    }

    fn refused(&mut self, ixs: &[Instruction], signers: &[&Keypair], expected: impl ExpectedError) {
        let payer = self.world.env.payer.insecure_clone();
        self.refused_as(&payer, ixs, signers, expected);
    }

    fn oracle(&self) -> Keypair {
        self.world.oracles[0].insecure_clone()
    }

    fn day(&self) -> u32 {
        utc_day(self.world.env.now())
    }
}

#[test]
fn complete_job_cannot_refund_a_job_out_of_another_mints_vault() {
    let mut s = story();
    let oracle = s.oracle();
    let attestation = s.world.attestation();
    let job_before = s.world.env.job(&s.a_p.address);
    assert!(job_before.escrow_left > 0);
    // The final receipt repeats the last settled one (nothing new to settle), and
    // every account but the job is mint B's: B's vault would pay the client B tokens
    // for escrow it never received.
    let drain = ix::complete_job(
        &attestation,
        s.p.authority.pubkey(),
        s.b,
        s.a_p.address,
        s.c.wallet.pubkey(),
        s.c.b,
        s.last_a_p,
    );
    s.refused_as(&oracle, &[drain], &[], TallyError::JobMismatch);
    // The same with a new receipt.
    let newer = SettleReceipt {
        seq: 3,
        cumulative_units: 2_500,
        ..s.last_a_p
    };
    let drain_new = ix::complete_job(
        &attestation,
        s.p.authority.pubkey(),
        s.b,
        s.a_p.address,
        s.c.wallet.pubkey(),
        s.c.b,
        newer,
    );
    s.refused_as(&oracle, &[drain_new], &[], TallyError::JobMismatch);
    // Only B's vault with A's mint: the vault names its mint.
    let honest = ix::complete_job(
        &attestation,
        s.p.authority.pubkey(),
        s.a,
        s.a_p.address,
        s.c.wallet.pubkey(),
        s.c.a,
        s.last_a_p,
    );
    let b_vault = substitute(honest.clone(), pda::vault(&s.a.mint), pda::vault(&s.b.mint));
    s.refused_as(&oracle, &[b_vault], &[], TallyError::WrongMint);
    // A's accounts but the client's token account in B.
    let b_tokens = substitute(honest.clone(), s.c.a, s.c.b);
    s.refused_as(
        &oracle,
        &[b_tokens],
        &[],
        AnchorErrorCode::ConstraintTokenMint,
    );

    // Honest: refunded in A, out of A's vault.
    let before_a = s.world.env.token_balance(&s.c.a);
    let before_b = s.world.env.token_balance(&s.c.b);
    let sent = expect_ok(s.world.env.send_with_payer(&[honest], &oracle, &[]));
    s.world.check_solvency();
    let closed: Vec<JobClosed> = events(&sent.logs);
    assert_eq!(closed[0].refunded, job_before.escrow_left);
    assert_eq!(
        s.world.env.token_balance(&s.c.a),
        before_a + job_before.escrow_left
    );
    assert_eq!(s.world.env.token_balance(&s.c.b), before_b);
}

#[test]
fn complete_job_cannot_close_a_job_through_another_operators_ledger() {
    let mut s = story();
    let oracle = s.oracle();
    let attestation = s.world.attestation();
    // P's job, completed with a repeated final receipt against Q's earnings ledger.
    let wrong_operator = ix::complete_job(
        &attestation,
        s.q.authority.pubkey(),
        s.a,
        s.a_p.address,
        s.c.wallet.pubkey(),
        s.c.a,
        s.last_a_p,
    );
    s.refused_as(&oracle, &[wrong_operator], &[], TallyError::JobMismatch);
    assert!(s.world.env.exists(&s.a_p.address), "the job is still open");
}

#[test]
fn top_up_refuses_another_mints_accounts() {
    let mut s = story();
    let client = s.c.wallet.insecure_clone();
    let honest = ix::top_up(client.pubkey(), s.a_p.address, s.a, s.c.a, 1_000);
    // Mint B's mint, vault, vault tokens and the client's B tokens, for a job in A.
    let all_b = ix::top_up(client.pubkey(), s.a_p.address, s.b, s.c.b, 1_000);
    s.refused(&[all_b], &[&client], TallyError::JobMismatch);
    let b_vault = substitute(honest.clone(), pda::vault(&s.a.mint), pda::vault(&s.b.mint));
    s.refused(&[b_vault], &[&client], TallyError::WrongMint);
    let b_vault_tokens = substitute(
        honest.clone(),
        pda::vault_tokens(&s.a.mint),
        pda::vault_tokens(&s.b.mint),
    );
    s.refused(
        &[b_vault_tokens],
        &[&client],
        AnchorErrorCode::ConstraintAddress,
    );
    let b_tokens = substitute(honest.clone(), s.c.a, s.c.b);
    s.refused(
        &[b_tokens],
        &[&client],
        AnchorErrorCode::ConstraintTokenMint,
    );
    // Another operator's job (of another client).
    let other = ix::top_up(client.pubkey(), s.a_q.address, s.a, s.c.a, 1_000);
    s.refused(&[other], &[&client], TallyError::Unauthorized);

    let before = s.world.env.job(&s.a_p.address).escrow_left;
    expect_ok(s.world.send(&[honest], &[&client]));
    assert_eq!(s.world.env.job(&s.a_p.address).escrow_left, before + 1_000);
}

#[test]
fn cancel_job_refuses_another_mints_accounts() {
    let mut s = story();
    let client = s.c.wallet.insecure_clone();
    let job = s.open_a;
    let honest = ix::cancel_job(client.pubkey(), job.address, s.a, s.c.a);
    let all_b = ix::cancel_job(client.pubkey(), job.address, s.b, s.c.b);
    s.refused(&[all_b], &[&client], TallyError::JobMismatch);
    let b_vault = substitute(honest.clone(), pda::vault(&s.a.mint), pda::vault(&s.b.mint));
    s.refused(&[b_vault], &[&client], TallyError::WrongMint);
    let b_tokens = substitute(honest.clone(), s.c.a, s.c.b);
    s.refused(
        &[b_tokens],
        &[&client],
        AnchorErrorCode::ConstraintTokenMint,
    );

    let deposited = s.world.env.job(&job.address).deposited;
    let before = s.world.env.token_balance(&s.c.a);
    expect_ok(s.world.send(&[honest], &[&client]));
    assert_eq!(s.world.env.token_balance(&s.c.a), before + deposited);
}

#[test]
fn settle_refuses_another_mints_and_operators_jobs_and_ledgers() {
    let mut s = story();
    let oracle = s.oracle();
    let receipt = s.world.receipt(3, 3_000);
    let (a, b) = (s.a, s.b);
    // A job of mint B in a settlement against mint A's vault, and the reverse.
    let b_job = s.b_p.address;
    let a_job = s.a_p.address;
    expect_error(
        s.world.in_mint(a, |w| w.settle(&s.p, &[(b_job, receipt)])),
        TallyError::JobMismatch,
    );
    expect_error(
        s.world.in_mint(b, |w| w.settle(&s.p, &[(a_job, receipt)])),
        TallyError::JobMismatch,
    );
    // P's job in Q's settlement.
    expect_error(
        s.world.in_mint(a, |w| w.settle(&s.q, &[(a_job, receipt)])),
        TallyError::JobMismatch,
    );
    // One foreign job fails the whole batch.
    let good = s.world.receipt(3, 3_000);
    expect_error(
        s.world
            .in_mint(a, |w| w.settle(&s.p, &[(a_job, good), (b_job, receipt)])),
        TallyError::JobMismatch,
    );

    let attestation = s.world.attestation();
    let honest = ix::settle(
        &attestation,
        s.p.authority.pubkey(),
        a.mint,
        &[(a_job, good)],
    );
    let p_ledger_a = pda::earnings(&s.p.address(), &a.mint);
    // P's earnings ledger of mint B, against A's vault.
    let b_earnings = substitute(
        honest.clone(),
        p_ledger_a,
        pda::earnings(&s.p.address(), &b.mint),
    );
    s.refused_as(&oracle, &[b_earnings], &[], TallyError::WrongLedger);
    // Mint B's revenue day, against A's vault.
    let b_revenue = substitute(
        honest.clone(),
        pda::revenue(&a.mint, attestation.day),
        pda::revenue(&b.mint, attestation.day),
    );
    s.refused_as(&oracle, &[b_revenue], &[], TallyError::WrongLedger);
    // Mint B's vault with A's ledgers.
    let b_vault = substitute(honest.clone(), pda::vault(&a.mint), pda::vault(&b.mint));
    s.refused_as(&oracle, &[b_vault], &[], TallyError::WrongLedger);
    // Q's earnings ledger collecting P's job.
    let q_earnings = substitute(
        honest.clone(),
        p_ledger_a,
        pda::earnings(&s.q.address(), &a.mint),
    );
    s.refused_as(&oracle, &[q_earnings], &[], TallyError::JobMismatch);

    expect_ok(s.world.env.send_with_payer(&[honest], &oracle, &[]));
    s.world.check_solvency();
    assert_eq!(s.world.env.job(&a_job).settled_units, 3_000);
    assert_eq!(s.world.env.job(&b_job).settled_units, 2_000);
}

#[test]
fn settle_relayed_refuses_another_mints_and_operators_jobs_and_ledgers() {
    let mut s = story();
    let relayer = s.world.env.wallet(1_000_000_000);
    let oracle = s.oracle();
    let day = s.day();
    let receipt = s.world.receipt(3, 3_000);
    let signed_a = s.world.sign_receipt(&s.a_p, receipt, &[&oracle]);
    let signed_b = s.world.sign_receipt(&s.b_p, receipt, &[&oracle]);
    let p_authority = s.p.authority.pubkey();
    let relay_ixs =
        |operator: Pubkey, mint: Pubkey, signed: &tally_client::relay::SignedReceipt| {
            relayed_settlement(
                relayer.pubkey(),
                operator,
                mint,
                day,
                std::slice::from_ref(signed),
            )
            .expect("fits")
            .to_vec()
        };
    // A job of mint A posted against mint B's vault and ledgers, and the reverse.
    let a_in_b = relay_ixs(p_authority, s.b.mint, &signed_a);
    s.refused_as(&relayer, &a_in_b, &[], TallyError::JobMismatch);
    let b_in_a = relay_ixs(p_authority, s.a.mint, &signed_b);
    s.refused_as(&relayer, &b_in_a, &[], TallyError::JobMismatch);
    // P's job against Q's earnings.
    let in_q = relay_ixs(s.q.authority.pubkey(), s.a.mint, &signed_a);
    s.refused_as(&relayer, &in_q, &[], TallyError::JobMismatch);
    // P's earnings of mint B against A's vault.
    let mut b_earnings = relay_ixs(p_authority, s.a.mint, &signed_a);
    b_earnings[1] = substitute(
        b_earnings[1].clone(),
        pda::earnings(&s.p.address(), &s.a.mint),
        pda::earnings(&s.p.address(), &s.b.mint),
    );
    s.refused_as(&relayer, &b_earnings, &[], TallyError::WrongLedger);
    // Mint B's vault with A's ledgers.
    let mut b_vault = relay_ixs(p_authority, s.a.mint, &signed_a);
    b_vault[1] = substitute(
        b_vault[1].clone(),
        pda::vault(&s.a.mint),
        pda::vault(&s.b.mint),
    );
    s.refused_as(&relayer, &b_vault, &[], TallyError::WrongLedger);

    let honest = relay_ixs(p_authority, s.a.mint, &signed_a);
    expect_ok(s.world.env.send_with_payer(&honest, &relayer, &[]));
    s.world.check_solvency();
    assert_eq!(s.world.env.job(&s.a_p.address).settled_units, 3_000);
}

#[test]
fn expire_job_refuses_another_mints_accounts() {
    let mut s = story();
    let cranker = s.world.env.wallet(1_000_000_000);
    let job = s.expired_a;
    let honest = ix::expire_job(cranker.pubkey(), job.address, s.a, job.client, s.c.a);
    let all_b = ix::expire_job(cranker.pubkey(), job.address, s.b, job.client, s.c.b);
    s.refused(&[all_b], &[&cranker], TallyError::JobMismatch);
    let b_vault = substitute(honest.clone(), pda::vault(&s.a.mint), pda::vault(&s.b.mint));
    s.refused(&[b_vault], &[&cranker], TallyError::WrongMint);
    let b_tokens = substitute(honest.clone(), s.c.a, s.c.b);
    s.refused(
        &[b_tokens],
        &[&cranker],
        AnchorErrorCode::ConstraintTokenMint,
    );

    let escrow = s.world.env.job(&job.address).escrow_left;
    let before = s.world.env.token_balance(&s.c.a);
    expect_ok(s.world.send(&[honest], &[&cranker]));
    assert_eq!(s.world.env.token_balance(&s.c.a), before + escrow);
}

#[test]
fn dispute_job_refuses_another_mints_or_operators_ledger() {
    let mut s = story();
    let client = s.c.wallet.insecure_clone();
    let job = s.a_p.address;
    let b_ledger = ix::dispute_job(client.pubkey(), job, s.p.address(), s.b.mint);
    s.refused(&[b_ledger], &[&client], TallyError::WrongLedger);
    let q_ledger = ix::dispute_job(client.pubkey(), job, s.q.address(), s.a.mint);
    s.refused(&[q_ledger], &[&client], TallyError::WrongLedger);
    // D cannot dispute C's job, even through its own operator's ledger.
    let d = s.d.wallet.insecure_clone();
    let stranger = ix::dispute_job(d.pubkey(), job, s.q.address(), s.a.mint);
    s.refused(&[stranger], &[&d], TallyError::Unauthorized);

    let frozen_b_before = s
        .world
        .env
        .account::<Earnings>(&pda::earnings(&s.p.address(), &s.b.mint))
        .frozen;
    let honest = ix::dispute_job(client.pubkey(), job, s.p.address(), s.a.mint);
    expect_ok(s.world.send(&[honest], &[&client]));
    assert!(s.world.env.job(&job).disputed_amount > 0);
    let earnings_b: Earnings = s
        .world
        .env
        .account(&pda::earnings(&s.p.address(), &s.b.mint));
    assert_eq!(
        earnings_b.frozen, frozen_b_before,
        "mint B's ledger untouched"
    );
}

#[test]
fn resolve_dispute_refuses_another_mints_or_operators_accounts() {
    let mut s = story();
    let client = s.c.wallet.insecure_clone();
    let job = s.a_p.address;
    expect_ok(s.world.send(
        &[ix::dispute_job(
            client.pubkey(),
            job,
            s.p.address(),
            s.a.mint,
        )],
        &[&client],
    ));
    let disputed = s.world.env.job(&job).disputed_amount;
    let arbiter = s.world.arbiter.insecure_clone();
    s.world
        .env
        .airdrop(&arbiter.pubkey(), 1_000_000_000)
        .expect("airdrop");
    let honest = ix::resolve_dispute(arbiter.pubkey(), job, s.p.address(), s.a, s.c.a, disputed);
    // Everything of mint B: the refund would come out of B's vault.
    let all_b = ix::resolve_dispute(arbiter.pubkey(), job, s.p.address(), s.b, s.c.b, disputed);
    s.refused(
        std::slice::from_ref(&all_b),
        &[&arbiter],
        TallyError::WrongLedger,
    );
    // Mint B's mint, vault and tokens, with the job's own ledger.
    let b_money = substitute(
        all_b,
        pda::earnings(&s.p.address(), &s.b.mint),
        pda::earnings(&s.p.address(), &s.a.mint),
    );
    s.refused(&[b_money], &[&arbiter], TallyError::JobMismatch);
    let b_vault = substitute(honest.clone(), pda::vault(&s.a.mint), pda::vault(&s.b.mint));
    s.refused(&[b_vault], &[&arbiter], TallyError::WrongMint);
    let b_tokens = substitute(honest.clone(), s.c.a, s.c.b);
    s.refused(
        &[b_tokens],
        &[&arbiter],
        AnchorErrorCode::ConstraintTokenMint,
    );
    let q_ledger = substitute(
        honest.clone(),
        pda::earnings(&s.p.address(), &s.a.mint),
        pda::earnings(&s.q.address(), &s.a.mint),
    );
    s.refused(&[q_ledger], &[&arbiter], TallyError::WrongLedger);
    // The refund to another client's token account in the job's mint.
    let d_tokens = substitute(honest.clone(), s.c.a, s.d.a);
    s.refused(&[d_tokens], &[&arbiter], TallyError::WrongTokenAccount);

    let before = s.world.env.token_balance(&s.c.a);
    expect_ok(s.world.send(&[honest], &[&arbiter]));
    assert_eq!(s.world.env.token_balance(&s.c.a), before + disputed);
}

#[test]
fn claim_refuses_another_mints_or_operators_ledger() {
    let mut s = story();
    let authority = s.p.authority.insecure_clone();
    let honest = ix::claim(authority.pubkey(), s.a, s.p.payout_tokens);
    let p_ledger_a = pda::earnings(&s.p.address(), &s.a.mint);
    // P's ledger of mint B, paid out of A's vault.
    let b_ledger = substitute(
        honest.clone(),
        p_ledger_a,
        pda::earnings(&s.p.address(), &s.b.mint),
    );
    s.refused(&[b_ledger], &[&authority], TallyError::WrongLedger);
    // Q's ledger, claimed by P.
    let q_ledger = substitute(
        honest.clone(),
        p_ledger_a,
        pda::earnings(&s.q.address(), &s.a.mint),
    );
    s.refused(&[q_ledger], &[&authority], TallyError::WrongLedger);
    // Q's operator account signed by P's authority.
    let q_operator = substitute(
        substitute(honest.clone(), s.p.address(), s.q.address()),
        p_ledger_a,
        pda::earnings(&s.q.address(), &s.a.mint),
    );
    s.refused(&[q_operator], &[&authority], TallyError::Unauthorized);
    let b_vault = substitute(honest.clone(), pda::vault(&s.a.mint), pda::vault(&s.b.mint));
    s.refused(&[b_vault], &[&authority], TallyError::WrongMint);
    let b_vault_tokens = substitute(
        honest.clone(),
        pda::vault_tokens(&s.a.mint),
        pda::vault_tokens(&s.b.mint),
    );
    s.refused(
        &[b_vault_tokens],
        &[&authority],
        AnchorErrorCode::ConstraintAddress,
    );
    let b_payout = substitute(honest.clone(), s.p.payout_tokens, s.p_payout_b);
    s.refused(
        &[b_payout],
        &[&authority],
        AnchorErrorCode::ConstraintTokenMint,
    );

    // Honest claims pay each mint's matured earnings out of its own vault.
    let claimable_a = {
        let e: Earnings = s.world.env.account(&p_ledger_a);
        e.claimable + matured(&e, s.world.env.now())
    };
    let p_ledger_b = pda::earnings(&s.p.address(), &s.b.mint);
    let claimable_b = {
        let e: Earnings = s.world.env.account(&p_ledger_b);
        e.claimable + matured(&e, s.world.env.now())
    };
    assert!(claimable_a > 0 && claimable_b > 0);
    expect_ok(s.world.send(&[honest], &[&authority]));
    let in_b = ix::claim(authority.pubkey(), s.b, s.p_payout_b);
    expect_ok(s.world.send(&[in_b], &[&authority]));
    assert_eq!(s.world.env.token_balance(&s.p.payout_tokens), claimable_a);
    assert_eq!(s.world.env.token_balance(&s.p_payout_b), claimable_b);
}

fn matured(earnings: &Earnings, now: i64) -> u64 {
    earnings
        .pending
        .iter()
        .filter(|b| b.amount > 0 && b.matures_at <= now)
        .map(|b| b.amount)
        .sum()
}

#[test]
fn withdraw_fees_refuses_another_mints_accounts() {
    let mut s = story();
    let treasury = s.world.treasury.insecure_clone();
    let dest_a = s.world.env.token_account(&treasury.pubkey(), s.a);
    let dest_b = s.world.env.token_account(&treasury.pubkey(), s.b);
    s.token_accounts.extend([dest_a, dest_b]);
    let honest = ix::withdraw_fees(treasury.pubkey(), s.a, dest_a);
    let b_vault = substitute(honest.clone(), pda::vault(&s.a.mint), pda::vault(&s.b.mint));
    s.refused(&[b_vault], &[&treasury], TallyError::WrongMint);
    let b_vault_tokens = substitute(
        honest.clone(),
        pda::vault_tokens(&s.a.mint),
        pda::vault_tokens(&s.b.mint),
    );
    s.refused(
        &[b_vault_tokens],
        &[&treasury],
        AnchorErrorCode::ConstraintAddress,
    );
    let b_destination = substitute(honest.clone(), dest_a, dest_b);
    s.refused(
        &[b_destination],
        &[&treasury],
        AnchorErrorCode::ConstraintTokenMint,
    );

    let fees_a = s.world.vault(&s.a.mint).fees_unclaimed;
    let fees_b = s.world.vault(&s.b.mint).fees_unclaimed;
    assert!(fees_a > 0 && fees_b > 0);
    expect_ok(s.world.send(&[honest], &[&treasury]));
    expect_ok(s.world.send(
        &[ix::withdraw_fees(treasury.pubkey(), s.b, dest_b)],
        &[&treasury],
    ));
    assert_eq!(s.world.env.token_balance(&dest_a), fees_a);
    assert_eq!(s.world.env.token_balance(&dest_b), fees_b);
}

#[test]
fn open_ledgers_attacks() {
    let mut s = story();
    // A new day: no revenue ledger yet for either mint.
    s.world.env.advance(86_400);
    let day = s.day();
    let payer = s.world.env.payer.insecure_clone();
    let honest = ix::open_ledgers(payer.pubkey(), s.p.authority.pubkey(), s.a.mint, day);
    let p_ledger_a = pda::earnings(&s.p.address(), &s.a.mint);
    // Ledgers of mint B created under mint A's vault (or the reverse): the addresses
    // are derived from the vault's mint, so any other address is refused.
    let b_earnings = substitute(
        honest.clone(),
        p_ledger_a,
        pda::earnings(&s.p.address(), &s.b.mint),
    );
    s.refused(&[b_earnings], &[], AnchorErrorCode::ConstraintSeeds);
    let b_revenue = substitute(
        honest.clone(),
        pda::revenue(&s.a.mint, day),
        pda::revenue(&s.b.mint, day),
    );
    s.refused(&[b_revenue], &[], AnchorErrorCode::ConstraintSeeds);
    let b_vault = substitute(honest.clone(), pda::vault(&s.a.mint), pda::vault(&s.b.mint));
    s.refused(&[b_vault], &[], AnchorErrorCode::ConstraintSeeds);
    // Q as the operator of P's ledger.
    let q_operator = substitute(honest.clone(), s.p.address(), s.q.address());
    s.refused(&[q_operator], &[], AnchorErrorCode::ConstraintSeeds);
    // Type cosplay: a vault as the operator, an operator as the vault.
    let vault_as_operator = substitute(honest.clone(), s.p.address(), pda::vault(&s.a.mint));
    s.refused(
        &[vault_as_operator],
        &[],
        AnchorErrorCode::AccountDiscriminatorMismatch,
    );
    let operator_as_vault = substitute(honest.clone(), pda::vault(&s.a.mint), s.q.address());
    s.refused(
        &[operator_as_vault],
        &[],
        AnchorErrorCode::AccountDiscriminatorMismatch,
    );
    // A mint with no vault.
    let stray = s
        .world
        .env
        .create_mint(TokenKind::SplToken, &Keypair::new().pubkey());
    let no_vault = ix::open_ledgers(payer.pubkey(), s.p.authority.pubkey(), stray.mint, day);
    s.refused(&[no_vault], &[], AnchorErrorCode::AccountNotInitialized);

    // Honest: creates today's revenue, leaves the existing earnings as they are, and
    // a second call changes nothing.
    let earnings_before = s.world.env.svm.get_account(&p_ledger_a).expect("exists");
    expect_ok(s.world.send(std::slice::from_ref(&honest), &[]));
    assert!(s.world.env.exists(&pda::revenue(&s.a.mint, day)));
    assert!(!s.world.env.exists(&pda::revenue(&s.b.mint, day)));
    let earnings_after = s.world.env.svm.get_account(&p_ledger_a).expect("exists");
    assert_eq!(earnings_before.data, earnings_after.data);
    let revenue_before = s
        .world
        .env
        .svm
        .get_account(&pda::revenue(&s.a.mint, day))
        .expect("exists");
    expect_ok(s.world.send(&[honest], &[]));
    let revenue_after = s
        .world
        .env
        .svm
        .get_account(&pda::revenue(&s.a.mint, day))
        .expect("exists");
    assert_eq!(revenue_before.data, revenue_after.data);
}

#[test]
fn open_job_refuses_another_mints_accounts() {
    let mut s = story();
    let client = s.c.wallet.insecure_clone();
    let honest = s.world.in_mint(s.a, |w| {
        w.open_job_ix(&s.c.in_a(), &s.p, 10, JobSpec::default())
    });
    // Mint B's vault (holding B's escrow) for a deposit in A.
    let b_vault = substitute(honest.clone(), pda::vault(&s.a.mint), pda::vault(&s.b.mint));
    s.refused(&[b_vault], &[&client], TallyError::WrongMint);
    let b_vault_tokens = substitute(
        honest.clone(),
        pda::vault_tokens(&s.a.mint),
        pda::vault_tokens(&s.b.mint),
    );
    s.refused(
        &[b_vault_tokens],
        &[&client],
        AnchorErrorCode::ConstraintAddress,
    );
    // Paying in B tokens for a job booked in A.
    let b_tokens = substitute(honest.clone(), s.c.a, s.c.b);
    s.refused(
        &[b_tokens],
        &[&client],
        AnchorErrorCode::ConstraintTokenMint,
    );
    // Another client's counter of job ids.
    let d_ids = substitute(
        honest.clone(),
        pda::client_jobs(&client.pubkey()),
        pda::client_jobs(&s.d.wallet.pubkey()),
    );
    s.refused(&[d_ids], &[&client], AnchorErrorCode::ConstraintSeeds);

    let job = pda::job(&client.pubkey(), 10);
    s.world.jobs.push(tally_tests::JobHandle {
        address: job,
        job_id: 10,
        client: client.pubkey(),
        client_tokens: s.c.a,
        mint: s.a,
    });
    expect_ok(s.world.send(&[honest], &[&client]));
    assert_eq!(s.world.env.job(&job).mint, s.a.mint);
}

#[test]
fn add_mint_refuses_another_mints_vault_addresses() {
    let mut s = story();
    let admin = s.world.admin.insecure_clone();
    let mint_c = s
        .world
        .env
        .create_mint(TokenKind::SplToken, &Keypair::new().pubkey());
    let honest = ix::add_mint(admin.pubkey(), mint_c);
    // A's vault ledger or vault token account address for mint C.
    let a_vault = substitute(
        honest.clone(),
        pda::vault(&mint_c.mint),
        pda::vault(&s.a.mint),
    );
    s.refused(&[a_vault], &[&admin], AnchorErrorCode::ConstraintSeeds);
    let a_vault_tokens = substitute(
        honest.clone(),
        pda::vault_tokens(&mint_c.mint),
        pda::vault_tokens(&s.a.mint),
    );
    s.refused(
        &[a_vault_tokens],
        &[&admin],
        AnchorErrorCode::ConstraintSeeds,
    );
    expect_ok(s.world.send(&[honest], &[&admin]));
}

/// Every instruction with a signer refuses the key without its signature (the fee
/// payer being someone else).
#[test]
fn every_signer_must_sign() {
    let mut s = story();
    let arbiter = s.world.arbiter.insecure_clone();
    let treasury = s.world.treasury.insecure_clone();
    let client = s.c.wallet.pubkey();
    let attestation = s.world.attestation();
    let day = s.day();
    let unsigned: Vec<(&str, Instruction)> = vec![
        ("top_up", ix::top_up(client, s.a_p.address, s.a, s.c.a, 1)),
        (
            "cancel_job",
            ix::cancel_job(client, s.open_a.address, s.a, s.c.a),
        ),
        (
            "expire_job",
            ix::expire_job(client, s.expired_a.address, s.a, client, s.c.a),
        ),
        (
            "dispute_job",
            ix::dispute_job(client, s.a_p.address, s.p.address(), s.a.mint),
        ),
        (
            "resolve_dispute",
            ix::resolve_dispute(
                arbiter.pubkey(),
                s.a_p.address,
                s.p.address(),
                s.a,
                s.c.a,
                0,
            ),
        ),
        ("close_job", ix::close_job(client, s.a_p.address, client)),
        (
            "open_ledgers",
            ix::open_ledgers(client, s.p.authority.pubkey(), s.a.mint, day),
        ),
        (
            "settle",
            ix::settle(
                &attestation,
                s.p.authority.pubkey(),
                s.a.mint,
                &[(s.a_p.address, s.last_a_p)],
            ),
        ),
        (
            "complete_job",
            ix::complete_job(
                &attestation,
                s.p.authority.pubkey(),
                s.a,
                s.a_p.address,
                client,
                s.c.a,
                s.last_a_p,
            ),
        ),
        (
            "withdraw_fees",
            ix::withdraw_fees(
                treasury.pubkey(),
                s.a,
                pda::associated_token(&treasury.pubkey(), &s.a.mint, &s.a.token_program),
            ),
        ),
    ];
    for (name, mut instruction) in unsigned {
        instruction.accounts[0].is_signer = false;
        let before = s.balances();
        let result = s.world.env.send(&[instruction], &[]);
        let failed = tally_tests::expect_failure(result);
        assert_eq!(
            failed.custom_code(),
            Some(u32::from(AnchorErrorCode::AccountNotSigner)),
            "{name}: {failed:?}"
        );
        assert_eq!(s.balances(), before, "{name} moved tokens");
    }
}
