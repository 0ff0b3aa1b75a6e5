//! Embedded test harness: the SBF build of the program (`target/deploy/tally.so`) in
//! LiteSVM, with fixtures that read as a story.
//!
//! - [`TestEnv`]: the chain — wallets, mints, token accounts, clock, sending
//!   transactions, decoding accounts and events.
//! - [`World`] / [`WorldBuilder`]: a deployed, configured Tally with an admin, a
//!   treasury, oracles and one accepted mint; operators, clients and jobs are added
//!   by name. Every transaction sent through a `World` is followed by the solvency
//!   check of every vault it knows.
//! - [`validator::LocalValidator`]: a real `solana-test-validator` on private loopback
//!   ports (the local-validator tier; reusable from other crates' tests).
#![allow(clippy::missing_panics_doc, clippy::return_self_not_must_use)]

use std::path::PathBuf;

use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::Instruction;
use anchor_lang::solana_program::program_pack::Pack;
use anchor_lang::{AccountDeserialize, AnchorDeserialize, Discriminator};
use anchor_spl::associated_token::spl_associated_token_account;
use anchor_spl::token_2022::spl_token_2022;
use solana_keypair::Keypair;
use solana_message::Message;
use solana_signer::Signer;
use solana_transaction::Transaction;
use solana_transaction_error::TransactionError;
use tally::errors::TallyError;
use tally::state::{Config, Earnings, Job, Revenue, Vault};
use tally_client::chain::EmbeddedChain;
use tally_client::ix::{self, Attestation, MintRef};
use tally_client::{pda, InitializeConfigArgs, OpenJobArgs, OperatorArgs, SettleReceipt};

pub mod bench;
pub mod validator;

pub use anchor_lang::error::ErrorCode as AnchorErrorCode;
pub use solana_keypair;
pub use solana_signer;

/// 2026-11-25 00:00:00 UTC: the embedded chain's clock starts here (see
/// [`genesis_unix_time`]).
pub const GENESIS_UNIX_TIME: i64 = 1_795_564_800;

/// Where the embedded chain's clock starts: [`GENESIS_UNIX_TIME`], shifted by
/// `TALLY_TEST_CLOCK_OFFSET_SECS` seconds when set. The chain's clock never follows
/// this machine's, so no test may depend on the day it runs; `scripts/test-shifted`
/// proves it by running the suites with the chain, and with the machine's clock
/// (faketime), a week and a year away.
pub fn genesis_unix_time() -> i64 {
    let offset = std::env::var("TALLY_TEST_CLOCK_OFFSET_SECS").map_or(0, |v| {
        v.parse::<i64>().unwrap_or_else(|_| {
            panic!("TALLY_TEST_CLOCK_OFFSET_SECS={v:?} is not a number of seconds")
        })
    });
    GENESIS_UNIX_TIME.saturating_add(offset)
}

/// A confirmed transaction.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Compute units the whole transaction consumed.
    pub cu: u64,
    pub logs: Vec<String>,
    /// Serialized size of the transaction, in bytes (limit: 1,232).
    pub size: usize,
    pub fee: u64,
}

/// A rejected transaction.
#[derive(Debug, Clone)]
pub struct Failed {
    pub err: TransactionError,
    pub logs: Vec<String>,
}

impl Failed {
    /// The custom program error code, if the failure was one.
    pub fn custom_code(&self) -> Option<u32> {
        match &self.err {
            TransactionError::InstructionError(
                _,
                anchor_lang::solana_program::instruction::error::InstructionError::Custom(code),
            ) => Some(*code),
            _ => None,
        }
    }
}

pub type TxResult = Result<Sent, Failed>;

/// Error codes of both kinds a test may expect.
pub trait ExpectedError {
    fn code(&self) -> u32;
    fn name(&self) -> String;
}

impl ExpectedError for TallyError {
    fn code(&self) -> u32 {
        u32::from(*self)
    }
    fn name(&self) -> String {
        format!("TallyError::{self:?}")
    }
}

impl ExpectedError for AnchorErrorCode {
    fn code(&self) -> u32 {
        u32::from(*self)
    }
    fn name(&self) -> String {
        format!("anchor ErrorCode::{self:?}")
    }
}

/// Asserts the transaction failed with exactly `expected`.
#[track_caller]
pub fn expect_error(result: TxResult, expected: impl ExpectedError) -> Failed {
    match result {
        Ok(sent) => panic!(
            "expected {} but the transaction succeeded; logs:\n{}",
            expected.name(),
            sent.logs.join("\n")
        ),
        Err(failed) => {
            assert_eq!(
                failed.custom_code(),
                Some(expected.code()),
                "expected {} ({}), got {:?}; logs:\n{}",
                expected.name(),
                expected.code(),
                failed.err,
                failed.logs.join("\n")
            );
            failed
        }
    }
}

/// Asserts the transaction failed, with any error (for runtime-level refusals such as
/// a missing signature, where no program error code exists).
#[track_caller]
pub fn expect_failure(result: TxResult) -> Failed {
    match result {
        Ok(sent) => panic!(
            "expected a failure but the transaction succeeded; logs:\n{}",
            sent.logs.join("\n")
        ),
        Err(failed) => failed,
    }
}

/// Unwraps a successful transaction, printing its logs otherwise.
#[track_caller]
pub fn expect_ok(result: TxResult) -> Sent {
    match result {
        Ok(sent) => sent,
        Err(failed) => panic!(
            "transaction failed: {:?}\nlogs:\n{}",
            failed.err,
            failed.logs.join("\n")
        ),
    }
}

/// `ix` with every occurrence of account `from` replaced by `to`: an account
/// substitution attack.
pub fn substitute(mut ix: Instruction, from: Pubkey, to: Pubkey) -> Instruction {
    let mut found = false;
    for meta in &mut ix.accounts {
        if meta.pubkey == from {
            meta.pubkey = to;
            found = true;
        }
    }
    assert!(found, "{from} is not an account of this instruction");
    ix
}

/// Asserts a compute-unit ceiling: a regression in cost fails like one in behaviour.
#[track_caller]
pub fn assert_cu_at_most(sent: &Sent, ceiling: u64, what: &str) {
    assert!(
        sent.cu <= ceiling,
        "{what}: {} CU, above its ceiling of {ceiling} CU",
        sent.cu
    );
}

/// Decodes every event of type `E` that the program logged (the SDK's decoder).
pub fn events<E: anchor_lang::Event + AnchorDeserialize>(logs: &[String]) -> Vec<E> {
    tally_client::event_log::decode(logs)
}

/// Which token program a mint lives under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    SplToken,
    Token2022,
}

impl TokenKind {
    pub fn program_id(self) -> Pubkey {
        match self {
            TokenKind::SplToken => anchor_spl::token::ID,
            TokenKind::Token2022 => spl_token_2022::ID,
        }
    }
}

/// The embedded chain with the Tally program loaded.
///
/// It dereferences to the SDK's [`EmbeddedChain`], so commands and the oracle's code
/// run on it unchanged (`&mut *env`), and `env.svm` is LiteSVM itself.
pub struct TestEnv {
    pub chain: EmbeddedChain,
    /// Counter behind [`TestEnv::keypair`].
    next_key: u64,
    /// Pays fees and rent for fixtures.
    pub payer: Keypair,
    /// The program's upgrade authority.
    pub deployer: Keypair,
}

impl TestEnv {
    /// Where the SBF program is read from: `TALLY_PROGRAM_SO`, else
    /// `target/deploy/tally.so` (built by `scripts/build-program`).
    pub fn program_path() -> PathBuf {
        tally_client::chain::EmbeddedChain::default_program_path()
    }

    /// A fresh chain with the program deployed (upgradeable loader, `deployer` as its
    /// upgrade authority) and the clock at [`genesis_unix_time`].
    pub fn new() -> Self {
        let deployer = deterministic_keypair(0);
        let mut chain = EmbeddedChain::new(&Self::program_path(), &deployer.pubkey())
            .unwrap_or_else(|e| panic!("{e}"));
        let payer = deterministic_keypair(1);
        chain
            .airdrop(&payer.pubkey(), 1_000_000_000_000)
            .expect("airdrop");
        chain
            .airdrop(&deployer.pubkey(), 10_000_000_000)
            .expect("airdrop");
        let mut env = Self {
            chain,
            next_key: 2,
            payer,
            deployer,
        };
        env.set_time(genesis_unix_time());
        env
    }

    /// A new keypair, the same in every run: fixtures are deterministic, so PDA bumps
    /// and therefore compute units are too.
    pub fn keypair(&mut self) -> Keypair {
        let key = deterministic_keypair(self.next_key);
        self.next_key += 1;
        key
    }

    /// Signs with the fee payer plus `signers`, sends, and reports CU, logs and size.
    pub fn send(&mut self, ixs: &[Instruction], signers: &[&Keypair]) -> TxResult {
        self.send_with_payer(ixs, &self.payer.insecure_clone(), signers)
    }

    /// Like [`TestEnv::send`] with another fee payer.
    pub fn send_with_payer(
        &mut self,
        ixs: &[Instruction],
        payer: &Keypair,
        signers: &[&Keypair],
    ) -> TxResult {
        let mut all: Vec<&Keypair> = vec![payer];
        for s in signers {
            if s.pubkey() != payer.pubkey() && !all.iter().any(|k| k.pubkey() == s.pubkey()) {
                all.push(s);
            }
        }
        let message = Message::new(ixs, Some(&payer.pubkey()));
        let tx = Transaction::new(&all, message, self.svm.latest_blockhash());
        self.send_transaction(tx)
    }

    /// Sends a prepared transaction (e.g. with a signature deliberately missing).
    pub fn send_transaction(&mut self, tx: Transaction) -> TxResult {
        let size = tx_wire_size(&tx);
        self.send_sized(
            solana_transaction::versioned::VersionedTransaction::from(tx),
            size,
        )
    }

    /// Sends any transaction and reports it with its wire `size`.
    fn send_sized(
        &mut self,
        tx: solana_transaction::versioned::VersionedTransaction,
        size: usize,
    ) -> TxResult {
        let result = self.svm.send_transaction(tx);
        // A new blockhash per transaction: identical retries are new transactions.
        self.svm.expire_blockhash();
        match result {
            Ok(meta) => Ok(Sent {
                cu: meta.compute_units_consumed,
                logs: meta.logs,
                size,
                fee: meta.fee,
            }),
            Err(failed) => Err(Failed {
                err: failed.err,
                logs: failed.meta.logs,
            }),
        }
    }

    pub fn now(&self) -> i64 {
        self.svm.get_sysvar::<solana_clock::Clock>().unix_timestamp
    }

    /// A new funded wallet.
    pub fn wallet(&mut self, lamports: u64) -> Keypair {
        let wallet = self.keypair();
        self.svm
            .airdrop(&wallet.pubkey(), lamports)
            .expect("airdrop");
        wallet
    }

    /// A new mint (decimals 6) owned by `authority`.
    pub fn create_mint(&mut self, kind: TokenKind, authority: &Pubkey) -> MintRef {
        self.create_mint_with(kind, authority, &[], |_| Vec::new())
    }

    /// A new mint with Token-2022 extensions: `extra_ixs` runs between account creation
    /// and `initialize_mint2` (extension initializers), for a mint of `extensions`.
    pub fn create_mint_with(
        &mut self,
        kind: TokenKind,
        authority: &Pubkey,
        extensions: &[spl_token_2022::extension::ExtensionType],
        extra_ixs: impl FnOnce(&Pubkey) -> Vec<Instruction>,
    ) -> MintRef {
        self.create_mint_with_freeze(kind, authority, None, extensions, extra_ixs)
    }

    /// Like [`TestEnv::create_mint_with`], with a freeze authority.
    pub fn create_mint_with_freeze(
        &mut self,
        kind: TokenKind,
        authority: &Pubkey,
        freeze_authority: Option<&Pubkey>,
        extensions: &[spl_token_2022::extension::ExtensionType],
        extra_ixs: impl FnOnce(&Pubkey) -> Vec<Instruction>,
    ) -> MintRef {
        let mint = self.keypair();
        let program = kind.program_id();
        let space = if extensions.is_empty() {
            spl_token_2022::state::Mint::LEN
        } else {
            spl_token_2022::extension::ExtensionType::try_calculate_account_len::<
                spl_token_2022::state::Mint,
            >(extensions)
            .expect("mint size")
        };
        let rent = self.svm.minimum_balance_for_rent_exemption(space);
        let mut ixs = vec![
            anchor_lang::solana_program::system_instruction::create_account(
                &self.payer.pubkey(),
                &mint.pubkey(),
                rent,
                space as u64,
                &program,
            ),
        ];
        ixs.extend(extra_ixs(&mint.pubkey()));
        ixs.push(
            spl_token_2022::instruction::initialize_mint2(
                &program,
                &mint.pubkey(),
                authority,
                freeze_authority,
                6,
            )
            .expect("initialize_mint2"),
        );
        expect_ok(self.send(&ixs, &[&mint]));
        MintRef {
            mint: mint.pubkey(),
            token_program: program,
        }
    }

    /// The associated token account of `owner` for `mint`, created if missing.
    pub fn token_account(&mut self, owner: &Pubkey, mint: MintRef) -> Pubkey {
        let address = pda::associated_token(owner, &mint.mint, &mint.token_program);
        if self.svm.get_account(&address).is_none() {
            let ix = spl_associated_token_account::instruction::create_associated_token_account_idempotent(
                &self.payer.pubkey(),
                owner,
                &mint.mint,
                &mint.token_program,
            );
            expect_ok(self.send(&[ix], &[]));
        }
        address
    }

    /// Mints `amount` to `destination`.
    pub fn mint_to(
        &mut self,
        mint: MintRef,
        authority: &Keypair,
        destination: &Pubkey,
        amount: u64,
    ) {
        let ix = spl_token_2022::instruction::mint_to(
            &mint.token_program,
            &mint.mint,
            destination,
            &authority.pubkey(),
            &[],
            amount,
        )
        .expect("mint_to");
        expect_ok(self.send(&[ix], &[authority]));
    }

    /// Token balance of a token account (0 if it does not exist).
    pub fn token_balance(&self, address: &Pubkey) -> u64 {
        self.svm.get_account(address).map_or(0, |account| {
            spl_token_2022::extension::StateWithExtensions::<spl_token_2022::state::Account>::unpack(
                &account.data,
            )
            .map_or(0, |s| s.base.amount)
        })
    }

    pub fn lamports(&self, address: &Pubkey) -> u64 {
        self.svm.get_account(address).map_or(0, |a| a.lamports)
    }

    /// True if the account exists with data or lamports.
    pub fn exists(&self, address: &Pubkey) -> bool {
        self.svm
            .get_account(address)
            .is_some_and(|a| a.lamports > 0 || !a.data.is_empty())
    }

    /// Decodes an Anchor account (discriminator checked).
    pub fn account<T: AccountDeserialize>(&self, address: &Pubkey) -> T {
        let account = self
            .svm
            .get_account(address)
            .unwrap_or_else(|| panic!("account {address} does not exist"));
        T::try_deserialize(&mut account.data.as_slice())
            .unwrap_or_else(|e| panic!("account {address} does not decode: {e}"))
    }

    /// Decodes a zero-copy job.
    pub fn job(&self, address: &Pubkey) -> Job {
        let account = self
            .svm
            .get_account(address)
            .unwrap_or_else(|| panic!("job {address} does not exist"));
        assert_eq!(&account.data[..8], Job::DISCRIMINATOR, "not a job account");
        // A job of the previous layout reads as the program will upgrade it.
        tally_client::ops::decode_job(&account.data).expect("a job account decodes")
    }
}

impl TestEnv {
    /// Rewrites an Anchor account of the program in place: state injection, for tests
    /// that need a counter at its limit without billions of transactions.
    pub fn patch<T: anchor_lang::AccountSerialize + AccountDeserialize>(
        &mut self,
        address: &Pubkey,
        f: impl FnOnce(&mut T),
    ) {
        let mut account = self
            .svm
            .get_account(address)
            .unwrap_or_else(|| panic!("account {address} does not exist"));
        let mut value = T::try_deserialize(&mut account.data.as_slice())
            .unwrap_or_else(|e| panic!("account {address} does not decode: {e}"));
        f(&mut value);
        let mut data = Vec::new();
        value.try_serialize(&mut data).expect("encodes");
        account.data[..data.len()].copy_from_slice(&data);
        self.svm
            .set_account(*address, account)
            .expect("set_account");
    }
}

impl TestEnv {
    /// Rewrites a job or revenue day as the previous program version wrote it (layout
    /// v1): a job without the fields v2 appends and with its price per unit, a revenue
    /// day without `output_units`; rent as it was. For upgrade tests.
    pub fn downgrade_to_v1(&mut self, address: &Pubkey) {
        let mut account = self
            .svm
            .get_account(address)
            .unwrap_or_else(|| panic!("account {address} does not exist"));
        let len = if account.data[..8] == *Job::DISCRIMINATOR {
            let at = 8 + std::mem::offset_of!(Job, input_price);
            let price = u64::from_le_bytes(account.data[at..at + 8].try_into().expect("8 bytes"));
            assert_eq!(
                price % tally_client::PRICE_SCALE,
                0,
                "a v1 price is per unit"
            );
            account.data[at..at + 8]
                .copy_from_slice(&(price / tally_client::PRICE_SCALE).to_le_bytes());
            Job::V1_ACCOUNT_SIZE
        } else if account.data[..8] == *Revenue::DISCRIMINATOR {
            Revenue::V1_ACCOUNT_SIZE
        } else {
            panic!("{address} is neither a job nor a revenue day");
        };
        account.data.truncate(len);
        account.lamports = self.svm.minimum_balance_for_rent_exemption(len);
        self.svm
            .set_account(*address, account)
            .expect("set_account");
    }
}

impl std::ops::Deref for TestEnv {
    type Target = EmbeddedChain;
    fn deref(&self) -> &EmbeddedChain {
        &self.chain
    }
}

impl std::ops::DerefMut for TestEnv {
    fn deref_mut(&mut self) -> &mut EmbeddedChain {
        &mut self.chain
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Wire size of a transaction: the number the 1,232-byte packet limit applies to.
pub fn tx_wire_size(tx: &Transaction) -> usize {
    // Wire size: signatures (compact-u16 count + 64 each) + the serialized message.
    let message = tx.message.serialize();
    let n = tx.signatures.len();
    compact_u16_len(n) + n * 64 + message.len()
}

fn compact_u16_len(n: usize) -> usize {
    if n < 0x80 {
        1
    } else if n < 0x4000 {
        2
    } else {
        3
    }
}

/// Keypair number `n` of a fixed sequence (SplitMix64 over `n` fills the secret).
fn deterministic_keypair(n: u64) -> Keypair {
    let mut state = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x7461_6c6c_795f_6b65;
    let mut secret = [0u8; 32];
    for chunk in secret.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes());
    }
    Keypair::new_from_array(secret)
}

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
        let init = ix::initialize_config(
            admin.pubkey(),
            InitializeConfigArgs {
                treasury: treasury.pubkey(),
                arbiter: arbiter.pubkey(),
                fee_bps: self.fee_bps,
                challenge_window_secs: self.challenge_window_secs,
                expiry_grace_secs: self.expiry_grace_secs,
                dispute_timeout_secs: self.dispute_timeout_secs,
                oracles: oracles.iter().map(Signer::pubkey).collect(),
                oracle_threshold: self.threshold,
            },
        );
        let init_sent = expect_ok(env.send(&[init], &[&admin]));
        expect_ok(env.send(&[ix::add_mint(admin.pubkey(), mint)], &[&admin]));
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

    /// Registers an operator whose payout wallet has a token account for the mint.
    pub fn operator(&mut self) -> OperatorHandle {
        let authority = self.env.wallet(10_000_000_000);
        let payout = self.env.keypair();
        let node_key = self.env.keypair();
        let payout_tokens = self.env.token_account(&payout.pubkey(), self.mint);
        expect_ok(self.send(
            &[ix::register_operator(
                authority.pubkey(),
                OperatorArgs {
                    payout_owner: payout.pubkey(),
                    node_keys: vec![node_key.pubkey()],
                },
            )],
            &[&authority],
        ));
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
        let admin = self.admin.insecure_clone();
        expect_ok(self.send(&[ix::add_mint(admin.pubkey(), mint)], &[&admin]));
        self.mints.push(mint);
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
        let account = self.env.token_account(owner, mint);
        if amount > 0 {
            let authority = self.mint_authority.insecure_clone();
            self.env.mint_to(mint, &authority, &account, amount);
        }
        account
    }

    /// A client wallet holding `tokens` of the mint.
    pub fn client(&mut self, tokens: u64) -> ClientHandle {
        let wallet = self.env.wallet(10_000_000_000);
        let account = self.env.token_account(&wallet.pubkey(), self.mint);
        if tokens > 0 {
            let authority = self.mint_authority.insecure_clone();
            self.env.mint_to(self.mint, &authority, &account, tokens);
        }
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

impl TestEnv {
    /// The program's upgrade authority (the config's first admin).
    pub fn deployer_pubkey(&self) -> Pubkey {
        self.deployer.pubkey()
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

/// A self-contained Ed25519 precompile instruction: `signer` over `message`, any bytes
/// (for attacks on the relayed path: foreign, truncated or old-format messages).
pub fn ed25519_over(message: &[u8], signer: &Keypair) -> Instruction {
    let signature = <[u8; 64]>::from(signer.sign_message(message));
    let key_at: u16 = 2 + 14;
    let sig_at: u16 = key_at + 32;
    let msg_at: u16 = sig_at + 64;
    let len = u16::try_from(message.len()).expect("a message under 64 KiB");
    let mut data = vec![1u8, 0];
    for v in [sig_at, u16::MAX, key_at, u16::MAX, msg_at, len, u16::MAX] {
        data.extend_from_slice(&v.to_le_bytes());
    }
    data.extend_from_slice(signer.pubkey().as_ref());
    data.extend_from_slice(&signature);
    data.extend_from_slice(message);
    Instruction {
        program_id: tally_client::relay::ed25519_verify(&[], &tally::ID)
            .expect("an empty Ed25519 instruction")
            .program_id,
        accounts: vec![],
        data,
    }
}

/// Signs a usage receipt's message bytes with each of `oracles`.
pub fn sign_usage(
    usage: tally_client::UsageReceipt,
    oracles: &[&Keypair],
) -> tally_client::relay::SignedReceipt {
    let message = usage.message(&tally::ID);
    tally_client::relay::SignedReceipt {
        receipt: usage,
        signatures: oracles
            .iter()
            .map(|k| (k.pubkey(), <[u8; 64]>::from(k.sign_message(&message))))
            .collect(),
    }
}

impl TestEnv {
    /// Sends a versioned (v0) transaction.
    pub fn send_versioned(
        &mut self,
        tx: solana_transaction::versioned::VersionedTransaction,
    ) -> TxResult {
        let size = tx_wire_size_versioned(&tx);
        self.send_sized(tx, size)
    }

    /// Makes the current slot a recent one in SlotHashes (lookup tables name one).
    pub fn record_slot_hash(&mut self) -> u64 {
        let slot = self.svm.get_sysvar::<solana_clock::Clock>().slot;
        self.svm.set_sysvar(&solana_slot_hashes::SlotHashes::new(&[(
            slot,
            solana_hash::Hash::default(),
        )]));
        slot
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

    /// The signed v0 settle transaction (the first oracle signs and pays).
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
        let oracle = &self.oracles[0];
        let message = tally_client::alt::v0_message(
            &oracle.pubkey(),
            &[ix],
            std::slice::from_ref(table),
            self.env.svm.latest_blockhash(),
        )
        .expect("v0 message compiles");
        solana_transaction::versioned::VersionedTransaction::try_new(message, &[oracle])
            .expect("oracle signs")
    }
}

/// Wire size of a versioned transaction.
pub fn tx_wire_size_versioned(tx: &solana_transaction::versioned::VersionedTransaction) -> usize {
    compact_u16_len(tx.signatures.len()) + tx.signatures.len() * 64 + tx.message.serialize().len()
}
