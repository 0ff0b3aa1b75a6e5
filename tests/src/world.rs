//! [`World`] / [`WorldBuilder`]: a deployed, configured Tally and the people in a
//! story (operators, clients, jobs), with the solvency check after every transaction.
//! The deployment is made by the SDK's chain-generic [`bootstrap`] (the same steps
//! `tally demo`, the worker e2e and the local-validator tier take), with the
//! deterministic keys of [`TestEnv`]; tests then send raw instructions to attack it.

use crate::*;
use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::Instruction;
use solana_keypair::Keypair;
use solana_signer::Signer;
use solana_transaction::Transaction;
use tally::state::{Config, Earnings, Vault};
use tally_client::ix::{self, Attestation, MintRef};
use tally_client::{bootstrap, ops};
use tally_client::{pda, InitializeConfigArgs, OpenJobArgs, OperatorArgs, SettleReceipt};

/// Deployment settings for a [`World`].
#[derive(Clone, Debug)]
pub struct WorldBuilder {
    pub fee_bps: u16,
    pub challenge_window_secs: u32,
    pub expiry_grace_secs: u32,
    pub dispute_timeout_secs: u32,
    pub oracles: usize,
    pub threshold: u8,
    pub token: TokenKind,
}

impl Default for WorldBuilder {
    fn default() -> Self {
        Self {
            fee_bps: 250,
            challenge_window_secs: 3_600,
            expiry_grace_secs: 3_600,
            dispute_timeout_secs: 7 * 86_400,
            oracles: 1,
            threshold: 1,
            token: TokenKind::SplToken,
        }
    }
}

impl WorldBuilder {
    pub fn fee_bps(mut self, bps: u16) -> Self {
        self.fee_bps = bps;
        self
    }
    pub fn challenge_window(mut self, secs: u32) -> Self {
        self.challenge_window_secs = secs;
        self
    }
    pub fn expiry_grace(mut self, secs: u32) -> Self {
        self.expiry_grace_secs = secs;
        self
    }
    pub fn oracles(mut self, n: usize, threshold: u8) -> Self {
        self.oracles = n;
        self.threshold = threshold;
        self
    }
    pub fn token(mut self, kind: TokenKind) -> Self {
        self.token = kind;
        self
    }

    /// Deploys, initializes the config and accepts one mint.
    pub fn build(self) -> World {
        let mut env = TestEnv::new();
        let admin = env.deployer.insecure_clone();
        let treasury = env.wallet(1_000_000_000);
        let arbiter = env.keypair();
        let oracles: Vec<Keypair> = (0..self.oracles)
            .map(|_| env.wallet(1_000_000_000))
            .collect();
        let mint_authority = env.keypair();
        let mint = env.create_mint(self.token, &mint_authority.pubkey());
        let settings = InitializeConfigArgs {
            treasury: treasury.pubkey(),
            arbiter: arbiter.pubkey(),
            fee_bps: self.fee_bps,
            challenge_window_secs: self.challenge_window_secs,
            expiry_grace_secs: self.expiry_grace_secs,
            dispute_timeout_secs: self.dispute_timeout_secs,
            oracles: oracles.iter().map(Signer::pubkey).collect(),
            oracle_threshold: self.threshold,
        };
        let size = tx_wire_size(&Transaction::new_with_payer(
            &[ix::initialize_config(admin.pubkey(), settings.clone())],
            Some(&admin.pubkey()),
        ));
        let initialized = bootstrap::initialize(&mut *env, &admin, settings, &[mint.mint]);
        let init_sent = Sent::landed(expect_chain(initialized), size);
        let world = World {
            env,
            admin,
            treasury,
            arbiter,
            oracles,
            mint,
            mint_authority,
            jobs: Vec::new(),
            operators: Vec::new(),
            mints: vec![mint],
            init_sent,
        };
        world.check_solvency();
        world
    }
}

/// A GPU operator in a test story.
pub struct OperatorHandle {
    pub authority: Keypair,
    /// Its payout wallet's token account for the world's mint.
    pub payout_tokens: Pubkey,
    pub payout_owner: Pubkey,
}

impl OperatorHandle {
    pub fn address(&self) -> Pubkey {
        pda::operator(&self.authority.pubkey())
    }
}

/// A paying client in a test story.
pub struct ClientHandle {
    pub wallet: Keypair,
    pub tokens: Pubkey,
}

/// An open job in a test story.
#[derive(Clone, Copy, Debug)]
pub struct JobHandle {
    pub address: Pubkey,
    pub job_id: u64,
    pub client: Pubkey,
    pub client_tokens: Pubkey,
    pub mint: MintRef,
}

/// What a test asks of a new job.
#[derive(Clone, Copy, Debug)]
pub struct JobSpec {
    /// One price per unit (input and output alike), in base units: a test's
    /// shorthand for prices of `unit_price × 10^6` per million.
    pub unit_price: u64,
    /// Per-million prices instead of `unit_price` (input, output).
    pub prices: Option<(u64, u64)>,
    /// The model binding (zero: any model).
    pub model: [u8; 32],
    pub max_units: u64,
    pub deadline_in_secs: i64,
    pub spend_cap_per_hour: u64,
    pub unit_kind: u8,
}

impl JobSpec {
    /// The per-million (input, output) prices the job opens with.
    pub fn per_million(&self) -> (u64, u64) {
        self.prices.unwrap_or_else(|| {
            let flat = self.unit_price.saturating_mul(tally_client::PRICE_SCALE);
            // Units that are not tokens have no output price.
            (flat, if self.unit_kind == 0 { flat } else { 0 })
        })
    }
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            unit_price: 10,
            prices: None,
            model: [0; 32],
            max_units: 100_000,
            deadline_in_secs: 86_400,
            spend_cap_per_hour: 0,
            unit_kind: 0,
        }
    }
}

/// A deployed, configured Tally and the people in the story.
pub struct World {
    pub env: TestEnv,
    pub admin: Keypair,
    pub treasury: Keypair,
    pub arbiter: Keypair,
    pub oracles: Vec<Keypair>,
    pub mint: MintRef,
    pub mint_authority: Keypair,
    /// Every job ever opened (closed ones are skipped by the solvency check).
    pub jobs: Vec<JobHandle>,
    /// Operator PDAs, for the solvency check.
    pub operators: Vec<Pubkey>,
    pub mints: Vec<MintRef>,
    /// The initialize_config transaction, for CU checks.
    pub init_sent: Sent,
}

impl World {
    pub fn builder() -> WorldBuilder {
        WorldBuilder::default()
    }

    /// Sends and then checks solvency of every known vault.
    pub fn send(&mut self, ixs: &[Instruction], signers: &[&Keypair]) -> TxResult {
        let result = self.env.send(ixs, signers);
        self.check_solvency();
        result
    }

    pub fn config(&self) -> Config {
        self.env.account(&pda::config())
    }

    pub fn vault(&self, mint: &Pubkey) -> Vault {
        self.env.account(&pda::vault(mint))
    }

    pub fn earnings(&self, operator: &OperatorHandle) -> Earnings {
        self.env
            .account(&pda::earnings(&operator.address(), &self.mint.mint))
    }

    /// Makes wrapped SOL (SPL Token's native mint, 9 decimals) the world's mint,
    /// accepted with a vault. Every cluster has the native mint; LiteSVM starts
    /// without it, so it is written here as the runtime holds it.
    pub fn use_wrapped_sol(&mut self) -> MintRef {
        use anchor_lang::solana_program::program_pack::Pack;
        use anchor_spl::token::spl_token;
        let native = MintRef {
            mint: spl_token::native_mint::ID,
            token_program: anchor_spl::token::ID,
        };
        let mut data = vec![0u8; spl_token::state::Mint::LEN];
        spl_token::state::Mint {
            decimals: 9,
            is_initialized: true,
            ..Default::default()
        }
        .pack_into_slice(&mut data);
        let lamports = self.env.svm.minimum_balance_for_rent_exemption(data.len());
        self.env
            .svm
            .set_account(
                native.mint,
                solana_account::Account {
                    lamports,
                    data,
                    owner: native.token_program,
                    executable: false,
                    rent_epoch: 0,
                },
            )
            .expect("write the native mint");
        let admin = self.admin.insecure_clone();
        expect_ok(self.send(&[ix::add_mint(admin.pubkey(), native)], &[&admin]));
        self.mints.push(native);
        self.mint = native;
        native
    }

    /// Registers an operator whose payout wallet has a token account for the mint.
    pub fn operator(&mut self) -> OperatorHandle {
        let authority = self.env.wallet(10_000_000_000);
        let payout = self.env.keypair();
        let node_key = self.env.keypair();
        let payout_tokens = self.env.token_account(&payout.pubkey(), self.mint);
        let args = OperatorArgs {
            payout_owner: payout.pubkey(),
            node_keys: vec![node_key.pubkey()],
        };
        expect_chain(ops::register_operator(
            &mut *self.env,
            &authority,
            args,
            false,
        ));
        self.check_solvency();
        self.operators.push(pda::operator(&authority.pubkey()));
        OperatorHandle {
            authority,
            payout_tokens,
            payout_owner: payout.pubkey(),
        }
    }

    /// Accepts a second (third…) mint of `kind`, minted by the world's mint authority,
    /// and adds it to the solvency check. `world.mint` stays as it was.
    pub fn accept_mint(&mut self, kind: TokenKind) -> MintRef {
        let mint = self.env.create_mint(kind, &self.mint_authority.pubkey());
        expect_chain(ops::add_mint(&mut *self.env, &self.admin, &mint.mint));
        self.mints.push(mint);
        self.check_solvency();
        mint
    }

    /// Runs `f` with `mint` as the world's mint (for fixtures that use it), then
    /// restores the previous one.
    pub fn in_mint<R>(&mut self, mint: MintRef, f: impl FnOnce(&mut World) -> R) -> R {
        let saved = self.mint;
        self.mint = mint;
        let out = f(self);
        self.mint = saved;
        out
    }

    /// `owner`'s associated token account of `mint`, created if missing, with
    /// `amount` more tokens minted to it.
    pub fn fund(&mut self, owner: &Pubkey, mint: MintRef, amount: u64) -> Pubkey {
        let payer = self.env.payer.insecure_clone();
        let funded = bootstrap::mint_tokens(
            &mut *self.env,
            mint,
            &self.mint_authority,
            &payer,
            owner,
            amount,
        );
        expect_chain(funded)
    }

    /// A client wallet holding `tokens` of the mint.
    pub fn client(&mut self, tokens: u64) -> ClientHandle {
        let wallet = self.env.wallet(10_000_000_000);
        let account = self.fund(&wallet.pubkey(), self.mint, tokens);
        ClientHandle {
            wallet,
            tokens: account,
        }
    }

    /// The `open_job` instruction for `spec`.
    pub fn open_job_ix(
        &self,
        client: &ClientHandle,
        operator: &OperatorHandle,
        job_id: u64,
        spec: JobSpec,
    ) -> Instruction {
        ix::open_job(
            client.wallet.pubkey(),
            operator.authority.pubkey(),
            self.mint,
            client.tokens,
            OpenJobArgs {
                job_id,
                unit_kind: spec.unit_kind,
                input_price: spec.per_million().0,
                output_price: spec.per_million().1,
                model: spec.model,
                max_units: spec.max_units,
                deadline: self.env.now() + spec.deadline_in_secs,
                spend_cap_per_hour: spec.spend_cap_per_hour,
            },
        )
    }

    /// Opens a job and remembers it for the solvency check.
    pub fn try_open_job(
        &mut self,
        client: &ClientHandle,
        operator: &OperatorHandle,
        job_id: u64,
        spec: JobSpec,
    ) -> (JobHandle, TxResult) {
        let ix = self.open_job_ix(client, operator, job_id, spec);
        let handle = JobHandle {
            address: pda::job(&client.wallet.pubkey(), job_id),
            job_id,
            client: client.wallet.pubkey(),
            client_tokens: client.tokens,
            mint: self.mint,
        };
        self.jobs.push(handle);
        let result = self.send(&[ix], &[&client.wallet]);
        (handle, result)
    }

    /// Opens a job that must succeed.
    pub fn open_job(
        &mut self,
        client: &ClientHandle,
        operator: &OperatorHandle,
        job_id: u64,
        spec: JobSpec,
    ) -> JobHandle {
        let (handle, result) = self.try_open_job(client, operator, job_id, spec);
        expect_ok(result);
        handle
    }

    /// The attestation of the first `threshold` oracles under the current set version.
    pub fn attestation(&self) -> Attestation {
        let config = self.config();
        Attestation {
            oracles: self
                .oracles
                .iter()
                .take(usize::from(config.oracle_threshold))
                .map(Signer::pubkey)
                .collect(),
            oracle_set_version: config.oracle_set_version,
            day: tally::state::utc_day(self.env.now()),
        }
    }

    /// Oracle keypairs that sign an attestation.
    pub fn oracle_signers(&self, attestation: &Attestation) -> Vec<Keypair> {
        attestation
            .oracles
            .iter()
            .filter_map(|k| self.oracles.iter().find(|o| o.pubkey() == *k))
            .map(Keypair::insecure_clone)
            .collect()
    }

    /// Settles receipts for jobs of `operator`, attested by the oracle quorum.
    pub fn settle(
        &mut self,
        operator: &OperatorHandle,
        receipts: &[(Pubkey, SettleReceipt)],
    ) -> TxResult {
        let attestation = self.attestation();
        self.settle_with(&attestation, operator, receipts)
    }

    /// `open_ledgers` for `operator` today, if its earnings or today's revenue is missing.
    pub fn ledgers_ix(
        &self,
        attestation: &Attestation,
        operator: &OperatorHandle,
    ) -> Option<Instruction> {
        let earnings = pda::earnings(&operator.address(), &self.mint.mint);
        let revenue = pda::revenue(&self.mint.mint, attestation.day);
        (!self.env.exists(&earnings) || !self.env.exists(&revenue)).then(|| {
            ix::open_ledgers(
                self.env.payer.pubkey(),
                operator.authority.pubkey(),
                self.mint.mint,
                attestation.day,
            )
        })
    }

    /// Settles with an explicit attestation (for attacks), opening the ledgers first
    /// when they are missing (as the SDK's callers do).
    pub fn settle_with(
        &mut self,
        attestation: &Attestation,
        operator: &OperatorHandle,
        receipts: &[(Pubkey, SettleReceipt)],
    ) -> TxResult {
        if let Some(open) = self.ledgers_ix(attestation, operator) {
            expect_ok(self.env.send(&[open], &[]));
        }
        let ix = ix::settle(
            attestation,
            operator.authority.pubkey(),
            self.mint.mint,
            receipts,
        );
        let signers = self.oracle_signers(attestation);
        let refs: Vec<&Keypair> = signers.iter().collect();
        let payer = signers
            .first()
            .map_or_else(|| self.env.payer.insecure_clone(), Keypair::insecure_clone);
        let result = self.env.send_with_payer(&[ix], &payer, &refs);
        self.check_solvency();
        result
    }

    /// Completes a job with its final receipt.
    pub fn complete(
        &mut self,
        operator: &OperatorHandle,
        job: &JobHandle,
        receipt: SettleReceipt,
    ) -> TxResult {
        let attestation = self.attestation();
        if let Some(open) = self.ledgers_ix(&attestation, operator) {
            expect_ok(self.env.send(&[open], &[]));
        }
        let ix = ix::complete_job(
            &attestation,
            operator.authority.pubkey(),
            job.mint,
            job.address,
            job.client,
            job.client_tokens,
            receipt,
        );
        let signers = self.oracle_signers(&attestation);
        let refs: Vec<&Keypair> = signers.iter().collect();
        let payer = signers[0].insecure_clone();
        let result = self.env.send_with_payer(&[ix], &payer, &refs);
        self.check_solvency();
        result
    }

    /// Claims an operator's matured earnings.
    pub fn claim(&mut self, operator: &OperatorHandle) -> TxResult {
        let ix = ix::claim(
            operator.authority.pubkey(),
            self.mint,
            operator.payout_tokens,
        );
        let authority = operator.authority.insecure_clone();
        self.send(&[ix], &[&authority])
    }

    /// A receipt with `cumulative_units` (no output tokens) at `seq`, period ending now.
    pub fn receipt(&self, seq: u64, cumulative_units: u64) -> SettleReceipt {
        self.receipt_split(seq, cumulative_units, 0)
    }

    /// A receipt with `cumulative_units`, `cumulative_output` of them output tokens.
    pub fn receipt_split(
        &self,
        seq: u64,
        cumulative_units: u64,
        cumulative_output: u64,
    ) -> SettleReceipt {
        SettleReceipt {
            seq,
            cumulative_units,
            cumulative_output,
            invoice_hash: [u8::try_from(seq % 251).unwrap_or(0); 32],
            period_end: self.env.now(),
        }
    }

    /// The solvency invariant, per mint: the vault's token balance equals the escrow
    /// left in live jobs + operators' unclaimed earnings + unclaimed fees, and the
    /// vault's own buckets equal those sums.
    pub fn check_solvency(&self) {
        for mint in &self.mints {
            let vault_address = pda::vault(&mint.mint);
            if !self.env.exists(&vault_address) {
                continue;
            }
            let vault: Vault = self.env.account(&vault_address);
            let balance = self.env.token_balance(&vault.token_account);
            let mut live: Vec<&JobHandle> = Vec::new();
            for job in &self.jobs {
                if !live.iter().any(|j| j.address == job.address) {
                    live.push(job);
                }
            }
            let escrow: u64 = live
                .iter()
                .filter(|j| j.mint.mint == mint.mint && self.env.exists(&j.address))
                .filter(|j| {
                    self.env
                        .svm
                        .get_account(&j.address)
                        .is_some_and(|a| a.owner == tally::ID && a.data.len() > 8)
                })
                .map(|j| self.env.job(&j.address).escrow_left)
                .sum();
            let owed: u64 = self
                .operators
                .iter()
                .map(|op| pda::earnings(op, &mint.mint))
                .filter(|e| self.env.exists(e))
                .map(|e| {
                    let earnings: Earnings = self.env.account(&e);
                    earnings.owed().expect("earnings add up")
                })
                .sum();
            assert_eq!(
                vault.escrow_total, escrow,
                "vault escrow_total != sum of job escrow left"
            );
            assert_eq!(
                vault.operator_owed, owed,
                "vault operator_owed != sum of operator earnings"
            );
            assert_eq!(
                balance,
                escrow + owed + vault.fees_unclaimed,
                "solvency: vault balance {balance} != escrow {escrow} + owed {owed} + fees {}",
                vault.fees_unclaimed
            );
        }
    }
}

impl World {
    /// Shorthand for the env's deployer.
    pub fn deployer_pubkey(&self) -> Pubkey {
        self.env.deployer.pubkey()
    }
}

impl World {
    /// Signs `receipt` for `job` with `oracles` under the current oracle-set version.
    pub fn sign_receipt(
        &self,
        job: &JobHandle,
        receipt: SettleReceipt,
        oracles: &[&Keypair],
    ) -> tally_client::relay::SignedReceipt {
        let usage = tally_client::UsageReceipt {
            job: job.address,
            job_nonce: self.env.job(&job.address).nonce,
            receipt,
            is_final: false,
            oracle_set_version: self.config().oracle_set_version,
        };
        sign_usage(usage, oracles)
    }

    /// Posts signed receipts through `settle_relayed`, `relayer` paying the fee.
    pub fn settle_relayed(
        &mut self,
        operator: &OperatorHandle,
        relayer: &Keypair,
        receipts: &[tally_client::relay::SignedReceipt],
    ) -> TxResult {
        let ixs = self.relayed_ixs(operator, relayer, receipts);
        let result = self.env.send_with_payer(&ixs, relayer, &[]);
        self.check_solvency();
        result
    }

    /// The instructions of a relayed settlement, ledgers opened first if missing.
    pub fn relayed_ixs(
        &mut self,
        operator: &OperatorHandle,
        relayer: &Keypair,
        receipts: &[tally_client::relay::SignedReceipt],
    ) -> Vec<Instruction> {
        let attestation = self.attestation();
        if let Some(open) = self.ledgers_ix(&attestation, operator) {
            expect_ok(self.env.send(&[open], &[]));
        }
        tally_client::relay::relayed_settlement(
            relayer.pubkey(),
            operator.authority.pubkey(),
            self.mint.mint,
            attestation.day,
            receipts,
        )
        .expect("relayed settlement fits")
        .to_vec()
    }
}

impl World {
    /// Creates and fills, through the real lookup-table program, a table holding the
    /// accounts of a settlement of `jobs` for `operator` today; returns it once active.
    pub fn settlement_table(
        &mut self,
        operator: &OperatorHandle,
        jobs: &[Pubkey],
    ) -> tally_client::alt::AddressLookupTableAccount {
        let attestation = self.attestation();
        if let Some(open) = self.ledgers_ix(&attestation, operator) {
            expect_ok(self.env.send(&[open], &[]));
        }
        let addresses = tally_client::alt::settlement_addresses(
            &operator.authority.pubkey(),
            &self.mint.mint,
            attestation.day,
            jobs,
        );
        let slot = self.env.record_slot_hash();
        let authority = self.env.payer.insecure_clone();
        let (table, transactions) = tally_client::alt::create_lookup_table(
            authority.pubkey(),
            authority.pubkey(),
            slot,
            &addresses,
        );
        for ixs in transactions {
            expect_ok(self.env.send(&ixs, &[]));
        }
        // Addresses become usable in the slot after they were added.
        self.env.advance(1);
        tally_client::alt::AddressLookupTableAccount {
            key: table,
            addresses,
        }
    }

    /// Settles `receipts` in one v0 transaction resolving accounts through `table`.
    pub fn settle_v0(
        &mut self,
        operator: &OperatorHandle,
        receipts: &[(Pubkey, SettleReceipt)],
        table: &tally_client::alt::AddressLookupTableAccount,
    ) -> TxResult {
        let tx = self.settle_v0_tx(operator, receipts, table);
        let result = self.env.send_versioned(tx);
        self.check_solvency();
        result
    }

    /// The signed v0 settle transaction (the attesting oracles sign, the first pays).
    pub fn settle_v0_tx(
        &self,
        operator: &OperatorHandle,
        receipts: &[(Pubkey, SettleReceipt)],
        table: &tally_client::alt::AddressLookupTableAccount,
    ) -> solana_transaction::versioned::VersionedTransaction {
        let attestation = self.attestation();
        let ix = ix::settle(
            &attestation,
            operator.authority.pubkey(),
            self.mint.mint,
            receipts,
        );
        let signers = self.oracle_signers(&attestation);
        let message = tally_client::alt::v0_message(
            &signers[0].pubkey(),
            &[ix],
            std::slice::from_ref(table),
            self.env.svm.latest_blockhash(),
        )
        .expect("v0 message compiles");
        let signers: Vec<&Keypair> = signers.iter().collect();
        solana_transaction::versioned::VersionedTransaction::try_new(message, &signers)
            .expect("the oracles sign")
    }
}
