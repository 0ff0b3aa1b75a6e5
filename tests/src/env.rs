//! [`TestEnv`]: the embedded chain (LiteSVM with `target/deploy/tally.so`) — wallets,
//! mints, token accounts, the clock, sending transactions, decoding accounts, state
//! injection for upgrade and limit tests.
use std::path::PathBuf;

use crate::*;
use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::Instruction;
use anchor_lang::solana_program::program_pack::Pack;
use anchor_lang::{AccountDeserialize, Discriminator};
use anchor_spl::token_2022::spl_token_2022;
use solana_keypair::Keypair;
use solana_message::Message;
use solana_signer::Signer;
use solana_transaction::Transaction;
use tally::state::{Job, Revenue};
use tally_client::chain::EmbeddedChain;
use tally_client::ix::MintRef;

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

    /// Bytes of the program file at [`Self::program_path`] (what deploying it costs).
    pub fn program_bytes() -> u64 {
        let path = Self::program_path();
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .len()
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
        let payer = self.payer.insecure_clone();
        expect_chain(tally_client::ops::ensure_token_account(
            &mut self.chain,
            &payer,
            owner,
            mint,
        ))
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

/// Keypair number `n` of a fixed sequence (SplitMix64 over `n` fills the secret).
pub(crate) fn deterministic_keypair(n: u64) -> Keypair {
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

impl TestEnv {
    /// The program's upgrade authority (the config's first admin).
    pub fn deployer_pubkey(&self) -> Pubkey {
        self.deployer.pubkey()
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
