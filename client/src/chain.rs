//! The chain behind a trait: an RPC backend for any cluster or local validator, and
//! an embedded backend (LiteSVM running the SBF program in process) for the demo and
//! tests. Everything above this module — commands, the oracle's submitter — is written
//! against [`Chain`].
use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::{AccountMeta, Instruction};
use solana_account::Account;
use solana_clock::Clock;
use solana_hash::Hash;
use solana_keypair::Keypair;
use solana_message::{Message, VersionedMessage};
use solana_signature::Signature;
use solana_signer::Signer;
use solana_transaction::versioned::VersionedTransaction;
use solana_transaction::Transaction;
use solana_transaction_error::TransactionError;

pub use crate::error::{ChainError, Missing, NotLanded};

/// A confirmed transaction.
#[derive(Debug, Clone)]
pub struct Confirmed {
    pub signature: Signature,
    /// Compute units consumed, where the backend reports them.
    pub compute_units: Option<u64>,
    /// Fee paid in lamports, where the backend reports it.
    pub fee: Option<u64>,
    pub logs: Vec<String>,
}

/// A byte-compare filter on account data (RPC `memcmp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memcmp {
    pub offset: usize,
    pub bytes: Vec<u8>,
}

/// Accounts read together (`getMultipleAccounts`) and the slot the read saw.
#[derive(Debug, Clone, Default)]
pub struct AccountsAt {
    /// The slot the accounts were read at (the lowest, when the read took several
    /// requests): an account absent here did not exist at that slot.
    pub slot: u64,
    /// One entry per address asked for, in order; `None` where there is no account.
    pub accounts: Vec<Option<Account>>,
}

/// How long [`Chain::wait_past_slot`]'s default waits before giving up.
pub const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Parses the SlotHashes sysvar's data: its slots, newest first.
pub fn slot_hashes_slots(data: &[u8]) -> Result<Vec<u64>, ChainError> {
    let bad = || ChainError::decode("the SlotHashes sysvar", None, "");
    let len = data
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(bad)?;
    (0..usize::try_from(len).map_err(|_| bad())?)
        .map(|i| {
            let at = 8 + i * 40;
            data.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(bad)
        })
        .collect()
}

/// A Solana cluster, remote or embedded.
pub trait Chain {
    /// The account at `address`, if it exists.
    fn account(&self, address: &Pubkey) -> Result<Option<Account>, ChainError>;

    /// Accounts owned by the Tally program with `data_len` bytes matching `filters`.
    fn program_accounts(
        &self,
        data_len: usize,
        filters: &[Memcmp],
    ) -> Result<Vec<(Pubkey, Account)>, ChainError>;

    /// The cluster clock.
    fn clock(&self) -> Result<Clock, ChainError>;

    /// A blockhash to sign with.
    fn latest_blockhash(&self) -> Result<Hash, ChainError>;

    /// Sends a signed transaction and waits until it is confirmed.
    fn send_transaction(&mut self, tx: VersionedTransaction) -> Result<Confirmed, ChainError>;

    /// The rent-exempt minimum balance of an account holding `data_len` bytes.
    fn minimum_balance_for_rent_exemption(&self, data_len: usize) -> Result<u64, ChainError> {
        Err(ChainError::RentUnknown { data_len })
    }

    /// Sends independent transactions, one per entry of `transactions`, each signed by
    /// `payer` and `signers`, and returns once every one is confirmed. Backends may
    /// have several in flight at once, so they must not depend on each other's order
    /// (e.g. program-buffer writes at distinct offsets). Returns how many were sent.
    fn send_all(
        &mut self,
        transactions: &[Vec<Instruction>],
        payer: &Keypair,
        signers: &[&Keypair],
    ) -> Result<usize, ChainError> {
        for instructions in transactions {
            self.send(instructions, payer, signers)?;
        }
        Ok(transactions.len())
    }

    /// Extra instructions put in front of every transaction [`Chain::send`] builds
    /// (e.g. a priority fee).
    fn preamble(&self) -> Vec<Instruction> {
        Vec::new()
    }

    /// Signs `instructions` with `payer` and `signers` on a fresh blockhash, sends and
    /// confirms (a legacy transaction).
    fn send(
        &mut self,
        instructions: &[Instruction],
        payer: &Keypair,
        signers: &[&Keypair],
    ) -> Result<Confirmed, ChainError> {
        let tx = sign_legacy(
            &self.preamble(),
            instructions,
            payer,
            signers,
            self.latest_blockhash()?,
        )?;
        self.send_transaction(VersionedTransaction::from(tx))
    }

    /// Signs a v0 message (built with a placeholder blockhash, e.g. by
    /// [`crate::alt::v0_message`]) on a fresh blockhash, sends and confirms.
    fn send_v0(
        &mut self,
        mut message: VersionedMessage,
        signers: &[&Keypair],
    ) -> Result<Confirmed, ChainError> {
        message.set_recent_blockhash(self.latest_blockhash()?);
        let tx = VersionedTransaction::try_new(message, signers)?;
        self.send_transaction(tx)
    }

    /// The accounts at `addresses`, read together (the RPC backend asks
    /// `getMultipleAccounts`, 100 addresses per request), with the slot they were read
    /// at.
    fn accounts(&self, addresses: &[Pubkey]) -> Result<AccountsAt, ChainError> {
        let slot = self.clock()?.slot;
        let accounts = addresses
            .iter()
            .map(|address| self.account(address))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AccountsAt { slot, accounts })
    }

    /// Sends v0 `messages` (compiled with any blockhash; this signs them on a fresh
    /// one), each signed by `signers` (the first is the fee payer), without waiting for
    /// one before sending the next, then waits until each has confirmed, failed, or
    /// can no longer land (its blockhash expired). The outcome of each, in order:
    /// independent transactions, so one failing does not stop the others. Backends may
    /// have all of them in flight at once: they must not depend on each other's order.
    fn send_messages(
        &mut self,
        messages: Vec<VersionedMessage>,
        signers: &[&Keypair],
    ) -> Vec<Result<Confirmed, ChainError>> {
        messages
            .into_iter()
            .map(|message| self.send_v0(message, signers))
            .collect()
    }

    /// `count` distinct slots in the cluster's SlotHashes, newest first: the recent
    /// slots new lookup tables can be derived from (one table per slot and authority).
    fn lookup_table_slots(&mut self, count: usize) -> Result<Vec<u64>, ChainError> {
        let account = self
            .account(&solana_sdk_ids::sysvar::slot_hashes::ID)?
            .ok_or(Missing::Sysvar("SlotHashes"))?;
        let mut slots = slot_hashes_slots(&account.data)?;
        slots.truncate(count);
        Ok(slots)
    }

    /// Waits until the cluster is past `slot` (addresses added to a lookup table in
    /// `slot` can be used from the next one). Returns the slot reached.
    fn wait_past_slot(&mut self, slot: u64) -> Result<u64, ChainError> {
        let started = std::time::Instant::now();
        loop {
            let now = self.clock()?.slot;
            if now > slot {
                return Ok(now);
            }
            if started.elapsed() > SLOT_WAIT {
                return Err(NotLanded::Stalled {
                    now,
                    slot,
                    waited_secs: SLOT_WAIT.as_secs(),
                }
                .into());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Decodes the Anchor account of type `T` at `address`, if it exists.
    fn anchor_account<T: anchor_lang::AccountDeserialize>(
        &self,
        address: &Pubkey,
    ) -> Result<Option<T>, ChainError>
    where
        Self: Sized,
    {
        self.account(address)?
            .map(|account| {
                T::try_deserialize(&mut account.data.as_slice())
                    .map_err(|e| ChainError::decode("account", Some(*address), e))
            })
            .transpose()
    }
}

/// A chain shared between threads: every call takes the lock for itself alone, so
/// one thread (an oracle's settlement round) never holds it while another (the same
/// oracle answering a quorum peer) waits to read. Clones share the chain.
pub struct Shared<C>(pub std::sync::Arc<std::sync::Mutex<C>>);

impl<C> Clone for Shared<C> {
    fn clone(&self) -> Self {
        Self(std::sync::Arc::clone(&self.0))
    }
}

impl<C> Shared<C> {
    pub fn new(chain: C) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(chain)))
    }

    /// The chain, locked (a poisoned lock is taken over: chain state lives in the
    /// cluster, not in the guard).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, C> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<C: Chain> Chain for Shared<C> {
    fn account(&self, address: &Pubkey) -> Result<Option<Account>, ChainError> {
        self.lock().account(address)
    }
    fn program_accounts(
        &self,
        data_len: usize,
        filters: &[Memcmp],
    ) -> Result<Vec<(Pubkey, Account)>, ChainError> {
        self.lock().program_accounts(data_len, filters)
    }
    fn clock(&self) -> Result<Clock, ChainError> {
        self.lock().clock()
    }
    fn latest_blockhash(&self) -> Result<Hash, ChainError> {
        self.lock().latest_blockhash()
    }
    fn send_transaction(&mut self, tx: VersionedTransaction) -> Result<Confirmed, ChainError> {
        self.lock().send_transaction(tx)
    }
    fn minimum_balance_for_rent_exemption(&self, data_len: usize) -> Result<u64, ChainError> {
        self.lock().minimum_balance_for_rent_exemption(data_len)
    }
    fn send_all(
        &mut self,
        transactions: &[Vec<Instruction>],
        payer: &Keypair,
        signers: &[&Keypair],
    ) -> Result<usize, ChainError> {
        self.lock().send_all(transactions, payer, signers)
    }
    fn preamble(&self) -> Vec<Instruction> {
        self.lock().preamble()
    }
    fn accounts(&self, addresses: &[Pubkey]) -> Result<AccountsAt, ChainError> {
        self.lock().accounts(addresses)
    }
    fn send_messages(
        &mut self,
        messages: Vec<VersionedMessage>,
        signers: &[&Keypair],
    ) -> Vec<Result<Confirmed, ChainError>> {
        self.lock().send_messages(messages, signers)
    }
    fn lookup_table_slots(&mut self, count: usize) -> Result<Vec<u64>, ChainError> {
        self.lock().lookup_table_slots(count)
    }
    fn wait_past_slot(&mut self, slot: u64) -> Result<u64, ChainError> {
        self.lock().wait_past_slot(slot)
    }
}

/// A legacy transaction of `preamble` + `instructions`, paid by `payer` and signed by
/// it and `signers` (each once) on `blockhash`.
pub fn sign_legacy(
    preamble: &[Instruction],
    instructions: &[Instruction],
    payer: &Keypair,
    signers: &[&Keypair],
    blockhash: Hash,
) -> Result<Transaction, ChainError> {
    let mut all = preamble.to_vec();
    all.extend_from_slice(instructions);
    let mut keys: Vec<&Keypair> = vec![payer];
    for signer in signers {
        if !keys.iter().any(|k| k.pubkey() == signer.pubkey()) {
            keys.push(signer);
        }
    }
    let message = Message::new(&all, Some(&payer.pubkey()));
    let mut tx = Transaction::new_unsigned(message);
    tx.try_sign(&keys, blockhash)?;
    Ok(tx)
}

/// Wire size of a legacy transaction: the number the 1,232-byte packet limit applies
/// to (compact-u16 signature count, 64 bytes per signature, the serialized message).
pub fn wire_size(tx: &Transaction) -> usize {
    let n = tx.signatures.len();
    let count_len = if n < 0x80 {
        1
    } else if n < 0x4000 {
        2
    } else {
        3
    };
    count_len + n * 64 + tx.message.serialize().len()
}

/// The most bytes one transaction may carry on the wire.
pub const PACKET_DATA_SIZE: usize = 1_232;

/// The `SetComputeUnitPrice` instruction of the compute-budget program.
pub fn compute_unit_price(micro_lamports: u64) -> Instruction {
    let mut data = vec![3u8];
    data.extend_from_slice(&micro_lamports.to_le_bytes());
    Instruction {
        program_id: solana_sdk_ids::compute_budget::ID,
        accounts: Vec::<AccountMeta>::new(),
        data,
    }
}

#[cfg(feature = "rpc")]
pub use rpc::RpcChain;

/// Told, as a batch of transactions lands, how many have (`landed`, `total`): what a
/// progress bar needs ([`RpcChain::with_progress`]).
pub type Progress = std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>;

#[cfg(feature = "rpc")]
mod rpc {
    use super::*;
    use solana_commitment_config::CommitmentConfig;
    use solana_rpc_client::rpc_client::RpcClient;
    use solana_rpc_client_api::client_error::{Error as ClientError, ErrorKind};
    use solana_rpc_client_api::config::{RpcAccountInfoConfig, RpcProgramAccountsConfig};
    use solana_rpc_client_api::filter::{Memcmp as RpcMemcmp, RpcFilterType};
    use solana_rpc_client_api::request::{RpcError, RpcResponseErrorData};

    /// A cluster over JSON-RPC, confirming at `confirmed` commitment.
    pub struct RpcChain {
        client: RpcClient,
        url: String,
        priority_fee_micro_lamports: Option<u64>,
        details: bool,
        progress: Option<Progress>,
    }

    /// How long [`Chain::send_all`] waits between status polls.
    const POLL: std::time::Duration = std::time::Duration::from_millis(250);
    /// Signatures per `getSignatureStatuses` request (the RPC limit).
    const STATUS_BATCH: usize = 256;
    /// Rounds of re-signing and resending what did not land before its blockhash
    /// expired.
    const SEND_ALL_ROUNDS: usize = 5;
    /// Addresses per `getMultipleAccounts` request (the RPC limit).
    const MULTIPLE_ACCOUNTS: usize = 100;

    impl RpcChain {
        pub fn new(url: &str) -> Self {
            Self {
                client: RpcClient::new_with_commitment(
                    url.to_string(),
                    CommitmentConfig::confirmed(),
                ),
                url: url.to_string(),
                priority_fee_micro_lamports: None,
                details: false,
                progress: None,
            }
        }

        /// Reports how many transactions of each [`Chain::send_all`] batch (a program
        /// deploy's writes, account upgrades) have landed, as they land.
        #[must_use]
        pub fn with_progress(mut self, progress: Progress) -> Self {
            self.progress = Some(progress);
            self
        }

        /// After each confirmation, also fetches the transaction's compute units, fee
        /// and logs (one more RPC call per transaction), so [`Confirmed`] carries them
        /// as it does on the embedded chain.
        #[must_use]
        pub fn with_transaction_details(mut self, details: bool) -> Self {
            self.details = details;
            self
        }

        /// Adds a compute-unit price (priority fee) to every transaction sent.
        #[must_use]
        pub fn with_priority_fee(mut self, micro_lamports: u64) -> Self {
            self.priority_fee_micro_lamports = Some(micro_lamports).filter(|p| *p > 0);
            self
        }

        pub fn url(&self) -> &str {
            &self.url
        }

        /// The underlying RPC client.
        pub fn rpc(&self) -> &RpcClient {
            &self.client
        }

        /// Waits for `in_flight` to confirm; returns the indices still unconfirmed
        /// when the blockhash they were signed on expired. A failed one is an error.
        fn await_all(
            &self,
            mut in_flight: Vec<(usize, Signature)>,
            last_valid_block_height: u64,
            total: usize,
        ) -> Result<Vec<usize>, ChainError> {
            // Those of the batch not in flight this round landed in an earlier one.
            let (round, earlier) = (in_flight.len(), total - in_flight.len());
            loop {
                let mut still = Vec::with_capacity(in_flight.len());
                for chunk in in_flight.chunks(STATUS_BATCH) {
                    let signatures: Vec<Signature> = chunk.iter().map(|(_, s)| *s).collect();
                    let statuses = self
                        .client
                        .get_signature_statuses(&signatures)
                        .map_err(|e| self.rpc_error(&e))?
                        .value;
                    for (&(i, signature), status) in chunk.iter().zip(statuses) {
                        let Some(status) = status else {
                            still.push((i, signature));
                            continue;
                        };
                        if let Some(error) = status.err.clone() {
                            return Err(ChainError::Transaction {
                                error,
                                logs: vec![format!("transaction {signature} failed")],
                            });
                        }
                        if !status.satisfies_commitment(CommitmentConfig::confirmed()) {
                            still.push((i, signature));
                        }
                    }
                }
                if let Some(progress) = &self.progress {
                    progress(earlier + (round - still.len()), total);
                }
                if still.is_empty() {
                    return Ok(Vec::new());
                }
                in_flight = still;
                let height = self
                    .client
                    .get_block_height_with_commitment(CommitmentConfig::confirmed())
                    .map_err(|e| self.rpc_error(&e))?;
                if height > last_valid_block_height {
                    return Ok(in_flight.into_iter().map(|(i, _)| i).collect());
                }
                std::thread::sleep(POLL);
            }
        }

        /// Polls the statuses of `in_flight` (index, signature) until each is
        /// confirmed or failed, or the blockhash they were signed on expired (block
        /// height past `last_valid_block_height`): each outcome goes to its index.
        fn track(
            &self,
            mut in_flight: Vec<(usize, Signature)>,
            last_valid_block_height: u64,
            outcomes: &mut [Option<Result<Confirmed, ChainError>>],
        ) {
            let landed = |signature: Signature| Confirmed {
                signature,
                compute_units: None,
                fee: None,
                logs: Vec::new(),
            };
            while !in_flight.is_empty() {
                let mut still = Vec::with_capacity(in_flight.len());
                for chunk in in_flight.chunks(STATUS_BATCH) {
                    let signatures: Vec<Signature> = chunk.iter().map(|(_, s)| *s).collect();
                    let statuses = match self.client.get_signature_statuses(&signatures) {
                        Ok(response) => response.value,
                        // Asked again on the next poll.
                        Err(_) => vec![None; chunk.len()],
                    };
                    for (&(i, signature), status) in chunk.iter().zip(statuses) {
                        match status {
                            Some(status) if status.err.is_some() => {
                                outcomes[i] = Some(Err(ChainError::Transaction {
                                    error: status
                                        .err
                                        .clone()
                                        .unwrap_or(TransactionError::AccountNotFound),
                                    logs: vec![format!("transaction {signature} failed")],
                                }));
                            }
                            Some(status)
                                if status.satisfies_commitment(CommitmentConfig::confirmed()) =>
                            {
                                outcomes[i] = Some(Ok(if self.details {
                                    self.transaction_details(signature)
                                        .unwrap_or_else(|_| landed(signature))
                                } else {
                                    landed(signature)
                                }));
                            }
                            _ => still.push((i, signature)),
                        }
                    }
                }
                in_flight = still;
                if in_flight.is_empty() {
                    break;
                }
                let height = self
                    .client
                    .get_block_height_with_commitment(CommitmentConfig::confirmed());
                if matches!(height, Ok(h) if h > last_valid_block_height) {
                    for (i, signature) in in_flight.drain(..) {
                        outcomes[i] = Some(Err(NotLanded::Expired {
                            signature,
                            last_valid_block_height,
                        }
                        .into()));
                    }
                    break;
                }
                std::thread::sleep(POLL);
            }
        }

        /// The newest confirmed transactions that touch `address`, newest first.
        pub fn recent_signatures(
            &self,
            address: &Pubkey,
            limit: usize,
        ) -> Result<Vec<Signature>, ChainError> {
            let config = solana_rpc_client::rpc_client::GetConfirmedSignaturesForAddress2Config {
                limit: Some(limit),
                commitment: Some(CommitmentConfig::confirmed()),
                ..Default::default()
            };
            self.client
                .get_signatures_for_address_with_config(address, config)
                .map_err(|e| self.rpc_error(&e))?
                .iter()
                .map(|s| {
                    s.signature
                        .parse()
                        .map_err(|_| ChainError::decode("the signature", None, &s.signature))
                })
                .collect()
        }

        /// A confirmed transaction's compute units, fee and logs (`getTransaction`).
        pub fn transaction_details(&self, signature: Signature) -> Result<Confirmed, ChainError> {
            let params = serde_json::json!([
                signature.to_string(),
                {
                    "encoding": "base64",
                    "commitment": "confirmed",
                    "maxSupportedTransactionVersion": 0
                }
            ]);
            let response: serde_json::Value = self
                .client
                .send(
                    solana_rpc_client_api::request::RpcRequest::GetTransaction,
                    params,
                )
                .map_err(|e| self.rpc_error(&e))?;
            let meta = &response["meta"];
            Ok(Confirmed {
                signature,
                compute_units: meta["computeUnitsConsumed"].as_u64(),
                fee: meta["fee"].as_u64(),
                logs: meta["logMessages"]
                    .as_array()
                    .map(|lines| {
                        lines
                            .iter()
                            .filter_map(|l| l.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }

        fn rpc_error(&self, error: &ClientError) -> ChainError {
            if let Some(tx_error) = error.get_transaction_error() {
                let logs = match error.kind() {
                    ErrorKind::RpcError(RpcError::RpcResponseError {
                        data: RpcResponseErrorData::SendTransactionPreflightFailure(result),
                        ..
                    }) => result.logs.clone().unwrap_or_default(),
                    _ => Vec::new(),
                };
                return ChainError::Transaction {
                    error: tx_error,
                    logs,
                };
            }
            ChainError::Rpc {
                url: self.url.clone(),
                message: error.to_string(),
            }
        }
    }

    impl Chain for RpcChain {
        fn account(&self, address: &Pubkey) -> Result<Option<Account>, ChainError> {
            self.client
                .get_account_with_commitment(address, CommitmentConfig::confirmed())
                .map(|response| response.value)
                .map_err(|e| self.rpc_error(&e))
        }

        fn program_accounts(
            &self,
            data_len: usize,
            filters: &[Memcmp],
        ) -> Result<Vec<(Pubkey, Account)>, ChainError> {
            let mut rpc_filters = vec![RpcFilterType::DataSize(data_len as u64)];
            rpc_filters.extend(filters.iter().map(|f| {
                RpcFilterType::Memcmp(RpcMemcmp::new_raw_bytes(f.offset, f.bytes.clone()))
            }));
            self.client
                .get_program_ui_accounts_with_config(
                    &tally::ID,
                    RpcProgramAccountsConfig {
                        filters: Some(rpc_filters),
                        account_config: RpcAccountInfoConfig {
                            encoding: Some(
                                solana_account_decoder_client_types::UiAccountEncoding::Base64,
                            ),
                            commitment: Some(CommitmentConfig::confirmed()),
                            ..RpcAccountInfoConfig::default()
                        },
                        ..RpcProgramAccountsConfig::default()
                    },
                )
                .map_err(|e| self.rpc_error(&e))?
                .into_iter()
                .map(|(key, ui)| {
                    ui.to_account()
                        .map(|account| (key, account))
                        .ok_or_else(|| ChainError::decode("account", Some(key), "not base64"))
                })
                .collect()
        }

        fn clock(&self) -> Result<Clock, ChainError> {
            let account = self
                .account(&solana_sdk_ids::sysvar::clock::ID)?
                .ok_or(Missing::Sysvar("clock"))?;
            bincode_clock(&account.data)
        }

        fn latest_blockhash(&self) -> Result<Hash, ChainError> {
            self.client
                .get_latest_blockhash()
                .map_err(|e| self.rpc_error(&e))
        }

        fn send_transaction(&mut self, tx: VersionedTransaction) -> Result<Confirmed, ChainError> {
            let signature = self
                .client
                .send_and_confirm_transaction(&tx)
                .map_err(|e| self.rpc_error(&e))?;
            if self.details {
                return self.transaction_details(signature);
            }
            Ok(Confirmed {
                signature,
                compute_units: None,
                fee: None,
                logs: Vec::new(),
            })
        }

        fn minimum_balance_for_rent_exemption(&self, data_len: usize) -> Result<u64, ChainError> {
            self.client
                .get_minimum_balance_for_rent_exemption(data_len)
                .map_err(|e| self.rpc_error(&e))
        }

        fn send_all(
            &mut self,
            transactions: &[Vec<Instruction>],
            payer: &Keypair,
            signers: &[&Keypair],
        ) -> Result<usize, ChainError> {
            let preamble = self.preamble();
            let mut pending: Vec<usize> = (0..transactions.len()).collect();
            for _ in 0..SEND_ALL_ROUNDS {
                if pending.is_empty() {
                    break;
                }
                let (blockhash, last_valid) = self
                    .client
                    .get_latest_blockhash_with_commitment(CommitmentConfig::confirmed())
                    .map_err(|e| self.rpc_error(&e))?;
                // Send every pending transaction without waiting…
                let mut in_flight = Vec::with_capacity(pending.len());
                for &i in &pending {
                    let tx = sign_legacy(&preamble, &transactions[i], payer, signers, blockhash)?;
                    let config = solana_rpc_client_api::config::RpcSendTransactionConfig {
                        skip_preflight: true,
                        ..Default::default()
                    };
                    let signature = self
                        .client
                        .send_transaction_with_config(&tx, config)
                        .map_err(|e| self.rpc_error(&e))?;
                    in_flight.push((i, signature));
                }
                // …then poll their statuses until all land or the blockhash expires.
                pending = self.await_all(in_flight, last_valid, transactions.len())?;
            }
            if pending.is_empty() {
                Ok(transactions.len())
            } else {
                Err(NotLanded::GaveUp {
                    pending: pending.len(),
                    total: transactions.len(),
                    rounds: SEND_ALL_ROUNDS,
                }
                .into())
            }
        }

        fn preamble(&self) -> Vec<Instruction> {
            self.priority_fee_micro_lamports
                .map(compute_unit_price)
                .into_iter()
                .collect()
        }

        fn accounts(&self, addresses: &[Pubkey]) -> Result<AccountsAt, ChainError> {
            let mut out = AccountsAt {
                slot: u64::MAX,
                accounts: Vec::with_capacity(addresses.len()),
            };
            for chunk in addresses.chunks(MULTIPLE_ACCOUNTS) {
                let response = self
                    .client
                    .get_multiple_accounts_with_commitment(chunk, CommitmentConfig::confirmed())
                    .map_err(|e| self.rpc_error(&e))?;
                out.slot = out.slot.min(response.context.slot);
                out.accounts.extend(response.value);
            }
            if out.slot == u64::MAX {
                out.slot = self
                    .client
                    .get_slot_with_commitment(CommitmentConfig::confirmed())
                    .map_err(|e| self.rpc_error(&e))?;
            }
            Ok(out)
        }

        fn send_messages(
            &mut self,
            messages: Vec<VersionedMessage>,
            signers: &[&Keypair],
        ) -> Vec<Result<Confirmed, ChainError>> {
            let mut outcomes: Vec<Option<Result<Confirmed, ChainError>>> =
                (0..messages.len()).map(|_| None).collect();
            let (blockhash, last_valid) = match self
                .client
                .get_latest_blockhash_with_commitment(CommitmentConfig::confirmed())
            {
                Ok(pair) => pair,
                Err(e) => {
                    return messages.iter().map(|_| Err(self.rpc_error(&e))).collect();
                }
            };
            // Send every one (preflight on: a receipt the program refuses comes back
            // at once, with its logs)…
            let mut in_flight = Vec::with_capacity(messages.len());
            for (i, mut message) in messages.into_iter().enumerate() {
                message.set_recent_blockhash(blockhash);
                let sent = VersionedTransaction::try_new(message, signers)
                    .map_err(ChainError::from)
                    .and_then(|tx| {
                        self.client
                            .send_transaction_with_config(
                                &tx,
                                solana_rpc_client_api::config::RpcSendTransactionConfig {
                                    preflight_commitment: Some(
                                        solana_commitment_config::CommitmentLevel::Confirmed,
                                    ),
                                    ..Default::default()
                                },
                            )
                            .map_err(|e| self.rpc_error(&e))
                    });
                match sent {
                    Ok(signature) => in_flight.push((i, signature)),
                    Err(e) => outcomes[i] = Some(Err(e)),
                }
            }
            // …then track their confirmations together.
            self.track(in_flight, last_valid, &mut outcomes);
            outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| Err(NotLanded::Untracked.into())))
                .collect()
        }

        /// Waits for the *confirmed* slot: preflight simulates at confirmed
        /// commitment, so a lookup table's new addresses must be usable there.
        fn wait_past_slot(&mut self, slot: u64) -> Result<u64, ChainError> {
            let started = std::time::Instant::now();
            loop {
                let now = self
                    .client
                    .get_slot_with_commitment(CommitmentConfig::confirmed())
                    .map_err(|e| self.rpc_error(&e))?;
                if now > slot {
                    return Ok(now);
                }
                if started.elapsed() > SLOT_WAIT {
                    return Err(ChainError::Rpc {
                        url: self.url.clone(),
                        message: format!(
                            "the cluster stayed at slot {now} for {} s waiting to pass slot {slot}",
                            SLOT_WAIT.as_secs()
                        ),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

#[cfg(feature = "rpc")]
/// Decodes the Clock sysvar's account data (five little-endian 8-byte fields).
fn bincode_clock(data: &[u8]) -> Result<Clock, ChainError> {
    let field = |i: usize| -> Result<[u8; 8], ChainError> {
        data.get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ChainError::decode("the clock sysvar", None, "too short"))
    };
    Ok(Clock {
        slot: u64::from_le_bytes(field(0)?),
        epoch_start_timestamp: i64::from_le_bytes(field(1)?),
        epoch: u64::from_le_bytes(field(2)?),
        leader_schedule_epoch: u64::from_le_bytes(field(3)?),
        unix_timestamp: i64::from_le_bytes(field(4)?),
    })
}

#[cfg(feature = "embedded")]
pub use embedded::EmbeddedChain;

#[cfg(feature = "embedded")]
mod embedded {
    use std::path::{Path, PathBuf};

    use litesvm::LiteSVM;

    use super::*;

    /// LiteSVM with the Tally SBF program deployed: a whole cluster in process.
    pub struct EmbeddedChain {
        pub svm: LiteSVM,
    }

    impl EmbeddedChain {
        /// Where the SBF program is read from: `TALLY_PROGRAM_SO`, else
        /// `target/deploy/tally.so` of this workspace (built by scripts/build-program).
        pub fn default_program_path() -> PathBuf {
            std::env::var_os("TALLY_PROGRAM_SO").map_or_else(
                || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/deploy/tally.so"),
                PathBuf::from,
            )
        }

        /// A fresh chain with the program at `program_so` deployed through the
        /// upgradeable loader, `upgrade_authority` as its upgrade authority.
        pub fn new(program_so: &Path, upgrade_authority: &Pubkey) -> Result<Self, ChainError> {
            let bytes = std::fs::read(program_so).map_err(|source| ChainError::File {
                path: program_so.to_path_buf(),
                source,
                hint: crate::error::BUILD_THE_PROGRAM,
            })?;
            let mut svm = LiteSVM::new();
            svm.add_program(tally::ID, &bytes)
                .map_err(|e| ChainError::Embedded {
                    what: "load the program",
                    reason: format!("{}: {e:?}", program_so.display()),
                })?;
            let program_data = crate::pda::program_data();
            let mut account = svm.get_account(&program_data).ok_or_else(|| {
                ChainError::from(Missing::ProgramData {
                    program: tally::ID,
                    program_data,
                })
            })?;
            // UpgradeableLoaderState::ProgramData: u32 tag, u64 slot, Option<Pubkey>.
            if account.data.len() < 45 {
                return Err(ChainError::decode(
                    "the ProgramData account",
                    Some(program_data),
                    "too short",
                ));
            }
            account.data[12] = 1;
            account.data[13..45].copy_from_slice(upgrade_authority.as_ref());
            svm.set_account(program_data, account)
                .map_err(|e| ChainError::Embedded {
                    what: "set the upgrade authority",
                    reason: format!("{e:?}"),
                })?;
            Ok(Self { svm })
        }

        /// Gives `address` `lamports` out of thin air (the embedded faucet).
        pub fn airdrop(&mut self, address: &Pubkey, lamports: u64) -> Result<(), ChainError> {
            self.svm
                .airdrop(address, lamports)
                .map(|_| ())
                .map_err(|e| ChainError::Transaction {
                    error: e.err,
                    logs: e.meta.logs,
                })
        }

        /// Sets the cluster clock's Unix time and moves to the next slot.
        pub fn set_time(&mut self, unix_timestamp: i64) {
            let mut clock = self.svm.get_sysvar::<Clock>();
            clock.unix_timestamp = unix_timestamp;
            clock.slot = clock.slot.saturating_add(1);
            self.svm.set_sysvar(&clock);
        }

        /// Moves the cluster clock forward.
        pub fn advance(&mut self, secs: i64) {
            let now = self.svm.get_sysvar::<Clock>().unix_timestamp;
            self.set_time(now.saturating_add(secs));
        }
    }

    impl Chain for EmbeddedChain {
        fn account(&self, address: &Pubkey) -> Result<Option<Account>, ChainError> {
            Ok(self
                .svm
                .get_account(address)
                .filter(|a| a.lamports > 0 || !a.data.is_empty()))
        }

        fn program_accounts(
            &self,
            data_len: usize,
            filters: &[Memcmp],
        ) -> Result<Vec<(Pubkey, Account)>, ChainError> {
            let mut out: Vec<(Pubkey, Account)> = self
                .svm
                .accounts_db()
                .inner
                .iter()
                .filter(|(_, a)| {
                    use solana_account::ReadableAccount;
                    *a.owner() == tally::ID
                        && a.data().len() == data_len
                        && filters.iter().all(|f| {
                            a.data().get(f.offset..f.offset + f.bytes.len())
                                == Some(f.bytes.as_slice())
                        })
                })
                .map(|(k, a)| (*k, Account::from(a.clone())))
                .collect();
            out.sort_by_key(|(k, _)| *k);
            Ok(out)
        }

        fn clock(&self) -> Result<Clock, ChainError> {
            Ok(self.svm.get_sysvar::<Clock>())
        }

        fn latest_blockhash(&self) -> Result<Hash, ChainError> {
            Ok(self.svm.latest_blockhash())
        }

        fn minimum_balance_for_rent_exemption(&self, data_len: usize) -> Result<u64, ChainError> {
            Ok(self.svm.minimum_balance_for_rent_exemption(data_len))
        }

        /// LiteSVM keeps no slot history: each slot asked for is a new slot, recorded in
        /// the SlotHashes sysvar (with the ones recorded before).
        fn lookup_table_slots(&mut self, count: usize) -> Result<Vec<u64>, ChainError> {
            use solana_slot_hashes::SlotHashes;
            let mut entries: Vec<(u64, Hash)> = self
                .svm
                .get_sysvar::<SlotHashes>()
                .iter()
                .copied()
                .collect();
            let mut slots = Vec::with_capacity(count);
            for _ in 0..count {
                let mut clock = self.svm.get_sysvar::<Clock>();
                clock.slot = clock.slot.saturating_add(1);
                self.svm.set_sysvar(&clock);
                entries.push((clock.slot, Hash::default()));
                slots.push(clock.slot);
            }
            entries.sort_by_key(|e| std::cmp::Reverse(e.0));
            entries.truncate(solana_slot_hashes::MAX_ENTRIES);
            self.svm.set_sysvar(&SlotHashes::new(&entries));
            slots.reverse();
            Ok(slots)
        }

        /// The embedded chain moves to the slot after `slot` at once.
        fn wait_past_slot(&mut self, slot: u64) -> Result<u64, ChainError> {
            let mut clock = self.svm.get_sysvar::<Clock>();
            if clock.slot <= slot {
                clock.slot = slot.saturating_add(1);
                self.svm.set_sysvar(&clock);
            }
            Ok(clock.slot)
        }

        fn send_transaction(&mut self, tx: VersionedTransaction) -> Result<Confirmed, ChainError> {
            let signature = tx.signatures.first().copied().unwrap_or_default();
            let result = self.svm.send_transaction(tx);
            // Every transaction gets a new blockhash: retries are new transactions.
            self.svm.expire_blockhash();
            match result {
                Ok(meta) => Ok(Confirmed {
                    signature,
                    compute_units: Some(meta.compute_units_consumed),
                    fee: Some(meta.fee),
                    logs: meta.logs,
                }),
                Err(failed) => Err(ChainError::Transaction {
                    error: failed.err,
                    logs: failed.meta.logs,
                }),
            }
        }
    }
}
