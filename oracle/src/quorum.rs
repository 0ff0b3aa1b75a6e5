//! An m-of-n quorum of oracle daemons (issue 20). Every oracle of the on-chain set
//! keeps its own store, fed by evidence it verifies itself (node reports, signed by
//! the operator's node keys, which workers post to every oracle), and signs a
//! settlement only when its own records bear it out.
//!
//! The leader builds the settle transaction as a lone oracle would, with the
//! co-signers' keys among its signers, and sends each co-signer the transaction's
//! message and the invoice behind each receipt (`POST /quorum/v1/cosign` on the
//! co-signer's admin listener). A co-signer signs the message bytes only if:
//!
//! - the message is the leader's, is nothing but one `settle` of this program (and
//!   compute-budget instructions), names only oracles of the current set version, and
//!   asks this oracle to sign;
//! - each receipt is the next of its job on chain, its invoice hashes to the
//!   receipt's invoice hash, names the job, its incarnation, the seq and the
//!   cumulative units, and follows the invoice hash on chain;
//! - every line of each invoice is a record this oracle holds for that job, identical
//!   and not billed yet (waiting in its store), and the units those records bill, on
//!   top of what the job settled, reach the receipt's cumulative units and output.
//!
//! Having signed, it writes the receipt into its own store as the leader's pending
//! submission, with those records attached: they are billed, and are never signed for
//! again (a second proposal of the same seq must carry the same invoice). Two oracles
//! that both hold the records are needed to settle them; a leader that inflates units,
//! invents requests or re-bills settled ones is refused, with the reason.
//!
//! Settling with `m` transaction signers, not relayed Ed25519 signatures, is chosen by
//! cost (scripts/bench, 2-of-3): 20 receipts a transaction at ~3,000 CU and 500 fee
//! lamports each, against 2 receipts at ~11,100 CU and 12,500 lamports relayed.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anchor_lang::prelude::Pubkey;
use anchor_lang::{AnchorDeserialize, Discriminator};
use base64::Engine as _;
use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::state::{Config, Job};
use tally_client::chain::Chain;
use tally_client::{SettleArgs, SettleReceipt};

use crate::batcher::{kind_of, pays_for_model};
use crate::http::Body;
use crate::invoice::{hex, sha256, Invoice, InvoiceLine};
use crate::store::{NewSubmission, Store, Submission, SubmissionState};
use crate::units::Totals;
use crate::OracleError;

/// Where a co-signer takes proposals (on its admin listener).
pub const COSIGN_PATH: &str = "/quorum/v1/cosign";

/// The compute-budget program: the only other program a settlement may call.
const COMPUTE_BUDGET: Pubkey =
    Pubkey::from_str_const("ComputeBudget111111111111111111111111111111");

/// Base64 (standard alphabet) for invoice bytes in JSON.
fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// What a leader asks a co-signer to sign.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proposal {
    /// The settle transaction's message, its blockhash set: the co-signer signs its
    /// serialized bytes.
    pub message: solana_message::VersionedMessage,
    /// The invoice behind each receipt, base64 of its exact bytes (any order).
    pub invoices: Vec<String>,
}

impl Proposal {
    pub fn new(message: solana_message::VersionedMessage, invoices: &[Vec<u8>]) -> Self {
        Self {
            message,
            invoices: invoices.iter().map(|i| b64().encode(i)).collect(),
        }
    }
}

/// A co-signer's answer: its signature of the message (base58), or why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub oracle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Why it refused (the [`Refusal`]'s label and message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why a co-signer does not sign: each has a metrics label ([`Refusal::label`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the proposal does not decode: {0}")]
    Malformed(String),
    #[error("the message is paid by {0}, which is not an oracle of the current set")]
    NotAMember(Pubkey),
    #[error("the message does not ask this oracle ({0}) to sign")]
    NotAsked(Pubkey),
    #[error("the message is not one `settle` of this program (with compute-budget instructions at most)")]
    NotASettlement,
    #[error("the receipts are attested under oracle-set version {proposed}; the set is at version {current}")]
    StaleOracleSet { proposed: u32, current: u32 },
    #[error("receipt {seq} of job {job} has no invoice in the proposal with its hash")]
    MissingInvoice { job: Pubkey, seq: u64 },
    #[error("the invoice of receipt {seq} of job {job} does not match it: {field}")]
    InvoiceMismatch {
        job: Pubkey,
        seq: u64,
        field: &'static str,
    },
    #[error("job {job} does not exist or has ended")]
    NoJob { job: Pubkey },
    #[error("job {job} is at receipt {on_chain} on chain: receipt {seq} is not the next")]
    NotNext {
        job: Pubkey,
        seq: u64,
        on_chain: u64,
    },
    #[error("job {job}: request {request_id} is not waiting in this oracle's store (never reported here, or billed already)")]
    Unseen { job: Pubkey, request_id: String },
    #[error("job {job}: request {request_id} differs from this oracle's record of it")]
    Differs { job: Pubkey, request_id: String },
    #[error("job {job}: receipt {seq} claims {proposed_units} units ({proposed_output} output); this oracle's records support {supported_units} ({supported_output} output)")]
    Inflated {
        job: Pubkey,
        seq: u64,
        proposed_units: u64,
        proposed_output: u64,
        supported_units: u64,
        supported_output: u64,
    },
    #[error("job {job}: receipt {seq} was co-signed here before with another invoice")]
    Conflicting { job: Pubkey, seq: u64 },
    #[error(
        "job {job}: this oracle cannot catch up with the receipts that landed without it: {reason}"
    )]
    Behind { job: Pubkey, reason: String },
    #[error("this oracle cannot check the proposal now: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::NotAMember(_) => "not_a_member",
            Refusal::NotAsked(_) => "not_asked",
            Refusal::NotASettlement => "not_a_settlement",
            Refusal::StaleOracleSet { .. } => "stale_oracle_set",
            Refusal::MissingInvoice { .. } => "missing_invoice",
            Refusal::InvoiceMismatch { .. } => "invoice_mismatch",
            Refusal::NoJob { .. } => "no_job",
            Refusal::NotNext { .. } => "not_next",
            Refusal::Unseen { .. } => "unseen_record",
            Refusal::Differs { .. } => "record_differs",
            Refusal::Inflated { .. } => "inflated",
            Refusal::Conflicting { .. } => "conflicting",
            Refusal::Behind { .. } => "behind",
            Refusal::Unavailable(_) => "unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::CONFLICT,
        }
    }
}

impl From<OracleError> for Refusal {
    fn from(e: OracleError) -> Self {
        Refusal::Unavailable(e.to_string())
    }
}

/// What a co-signer reads from the chain.
pub trait QuorumView: Send + Sync + 'static {
    fn config(&self) -> Result<Config, OracleError>;
    /// The job's account; `None` when it does not exist.
    fn job(&self, job: &Pubkey) -> Result<Option<Job>, OracleError>;
    /// A lookup table's addresses; `None` when there is no such table.
    fn lookup_table(&self, table: &Pubkey) -> Result<Option<Vec<Pubkey>>, OracleError>;
}

impl<C: Chain + Send + 'static> QuorumView for Mutex<C> {
    fn config(&self) -> Result<Config, OracleError> {
        Ok(tally_client::ops::config(&*lock_chain(self)?)?)
    }

    fn job(&self, job: &Pubkey) -> Result<Option<Job>, OracleError> {
        Ok(lock_chain(self)?
            .account(job)?
            .filter(|a| a.owner == tally::ID)
            .and_then(|a| tally_client::ops::decode_job(&a.data)))
    }

    fn lookup_table(&self, table: &Pubkey) -> Result<Option<Vec<Pubkey>>, OracleError> {
        Ok(lock_chain(self)?
            .account(table)?
            .and_then(|a| tally_client::alt::decode_lookup_table(&a.data))
            .map(|t| t.addresses))
    }
}

/// The chain, locked for one read.
fn lock_chain<C>(chain: &Mutex<C>) -> Result<std::sync::MutexGuard<'_, C>, OracleError> {
    chain
        .lock()
        .map_err(OracleError::poisoned("the chain lock"))
}

/// A settle instruction read back from a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// The fee payer: the leader.
    pub proposer: Pubkey,
    /// Every key that signs the message.
    pub signers: Vec<Pubkey>,
    pub oracle_set_version: u32,
    /// Each receipt with its job account.
    pub receipts: Vec<(Pubkey, SettleReceipt)>,
}

/// Reads the settlement a message carries: one `settle` of this program (and
/// compute-budget instructions at most), its accounts resolved through the lookup
/// tables `tables` returns.
pub fn read_settlement(
    message: &solana_message::VersionedMessage,
    tables: impl Fn(&Pubkey) -> Result<Option<Vec<Pubkey>>, OracleError>,
) -> Result<Settlement, Refusal> {
    let keys = resolved_keys(message, tables)?;
    let header = message.header();
    let signers: Vec<Pubkey> = keys
        .iter()
        .take(usize::from(header.num_required_signatures))
        .copied()
        .collect();
    let proposer = *signers.first().ok_or(Refusal::NotASettlement)?;
    let mut settle = None;
    for ix in message.instructions() {
        let program = keys
            .get(usize::from(ix.program_id_index))
            .ok_or(Refusal::NotASettlement)?;
        if *program == COMPUTE_BUDGET {
            continue;
        }
        if *program != tally::ID || settle.is_some() {
            return Err(Refusal::NotASettlement);
        }
        settle = Some(ix);
    }
    let ix = settle.ok_or(Refusal::NotASettlement)?;
    let data = ix
        .data
        .strip_prefix(tally::instruction::Settle::DISCRIMINATOR)
        .ok_or(Refusal::NotASettlement)?;
    let args = SettleArgs::deserialize(&mut &data[..])
        .map_err(|e| Refusal::Malformed(format!("settle arguments: {e}")))?;
    let accounts: Vec<Pubkey> = ix
        .accounts
        .iter()
        .map(|i| keys.get(usize::from(*i)).copied())
        .collect::<Option<_>>()
        .ok_or_else(|| Refusal::Malformed("an account index is out of range".into()))?;
    // settle's accounts: oracle, config, vault, earnings, revenue, the extra oracle
    // signers, then one job per receipt.
    let jobs = accounts
        .get(5 + usize::from(args.extra_oracle_signers)..)
        .ok_or_else(|| Refusal::Malformed("fewer accounts than settle takes".into()))?;
    let mut packed = tally::receipt::PackedReceipts::new(&args.receipts)
        .map_err(|e| Refusal::Malformed(format!("packed receipts: {e}")))?;
    let mut receipts = Vec::with_capacity(jobs.len());
    for job in jobs {
        let receipt = packed
            .next_receipt()
            .map_err(|e| Refusal::Malformed(format!("packed receipts: {e}")))?;
        receipts.push((*job, receipt));
    }
    if !packed.is_empty() {
        return Err(Refusal::Malformed("more receipts than job accounts".into()));
    }
    Ok(Settlement {
        proposer,
        signers,
        oracle_set_version: args.oracle_set_version,
        receipts,
    })
}

/// The message's account keys: its static keys, then those loaded from lookup
/// tables (every table's writable ones, then every table's read-only ones).
fn resolved_keys(
    message: &solana_message::VersionedMessage,
    tables: impl Fn(&Pubkey) -> Result<Option<Vec<Pubkey>>, OracleError>,
) -> Result<Vec<Pubkey>, Refusal> {
    let mut keys = message.static_account_keys().to_vec();
    let Some(lookups) = message.address_table_lookups() else {
        return Ok(keys);
    };
    let mut loaded = Vec::with_capacity(lookups.len());
    for lookup in lookups {
        let table = tables(&lookup.account_key)?.ok_or_else(|| {
            Refusal::Malformed(format!(
                "lookup table {} does not exist",
                lookup.account_key
            ))
        })?;
        loaded.push((lookup, table));
    }
    let pick = |table: &[Pubkey], indexes: &[u8]| -> Result<Vec<Pubkey>, Refusal> {
        indexes
            .iter()
            .map(|i| table.get(usize::from(*i)).copied())
            .collect::<Option<_>>()
            .ok_or_else(|| Refusal::Malformed("a lookup index is out of range".into()))
    };
    for (lookup, table) in &loaded {
        keys.extend(pick(table, &lookup.writable_indexes)?);
    }
    for (lookup, table) in &loaded {
        keys.extend(pick(table, &lookup.readonly_indexes)?);
    }
    Ok(keys)
}

/// An oracle of the set answering leaders' proposals.
pub struct Cosigner {
    /// Counts what it signs and refuses, when set.
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    oracle: Keypair,
    store: Arc<Mutex<Store>>,
    view: Arc<dyn QuorumView>,
    /// Where receipts this oracle did not sign are fetched from, to catch up.
    peers: Peers,
    /// What this oracle signed lately (shared with its batcher).
    signed: Signed,
}

impl Cosigner {
    pub fn new(
        oracle: Keypair,
        store: Arc<Mutex<Store>>,
        view: Arc<dyn QuorumView>,
        peers: Peers,
    ) -> Self {
        Self {
            telemetry: None,
            oracle,
            store,
            view,
            peers,
            signed: Signed::default(),
        }
    }

    /// Sharing `signed` with this oracle's batcher.
    #[must_use]
    pub fn with_signed(mut self, signed: Signed) -> Self {
        self.signed = signed;
        self
    }

    /// Counting its answers in `telemetry`.
    #[must_use]
    pub fn with_telemetry(mut self, telemetry: Arc<crate::telemetry::Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    fn count(&self, refusal: Option<&Refusal>) {
        let Some(telemetry) = &self.telemetry else {
            return;
        };
        match refusal {
            None => telemetry.inc(crate::telemetry::QUORUM_COSIGNED, "", 1),
            Some(r) => telemetry.inc(
                crate::telemetry::QUORUM_REFUSED,
                &format!("reason=\"{}\"", r.label()),
                1,
            ),
        }
    }

    pub fn oracle(&self) -> Pubkey {
        self.oracle.pubkey()
    }

    /// Checks `proposal` against this oracle's own view; on success records each
    /// receipt as pending in its store and returns its signature of the message.
    pub fn review(&self, proposal: &Proposal) -> Result<solana_signature::Signature, Refusal> {
        let me = self.oracle.pubkey();
        let settlement = read_settlement(&proposal.message, |t| self.view.lookup_table(t))?;
        let config = self.view.config()?;
        if !config.oracles.contains(&settlement.proposer) {
            return Err(Refusal::NotAMember(settlement.proposer));
        }
        if !settlement.signers.contains(&me) {
            return Err(Refusal::NotAsked(me));
        }
        if !config.oracles.contains(&me) {
            return Err(Refusal::NotAMember(me));
        }
        if settlement.oracle_set_version != config.oracle_set_version {
            return Err(Refusal::StaleOracleSet {
                proposed: settlement.oracle_set_version,
                current: config.oracle_set_version,
            });
        }
        let invoices = decode_invoices(&proposal.invoices)?;
        let mut accepted = Vec::with_capacity(settlement.receipts.len());
        for (job, receipt) in &settlement.receipts {
            accepted.extend(self.check_receipt(job, receipt, &invoices)?);
        }
        let store = self
            .store
            .lock()
            .map_err(|_| Refusal::Unavailable("the store lock is poisoned".into()))?;
        for submission in &accepted {
            store.write_submission(submission)?;
        }
        for (job, receipt) in &settlement.receipts {
            if let Some(nonce) = invoices
                .get(&receipt.invoice_hash)
                .and_then(|b| serde_json::from_slice::<Invoice>(b).ok())
                .and_then(|i| i.job_nonce)
            {
                self.signed.mark(&job.to_string(), nonce, receipt.seq);
            }
        }
        Ok(self.oracle.sign_message(&proposal.message.serialize()))
    }

    /// One receipt: its invoice, the chain and this oracle's records. Returns the
    /// submission to write (none when this oracle co-signed the same one before).
    fn check_receipt(
        &self,
        job: &Pubkey,
        receipt: &SettleReceipt,
        invoices: &HashMap<[u8; 32], Vec<u8>>,
    ) -> Result<Option<NewSubmission>, Refusal> {
        let seq = receipt.seq;
        let bytes = invoices
            .get(&receipt.invoice_hash)
            .ok_or(Refusal::MissingInvoice { job: *job, seq })?;
        let invoice: Invoice = serde_json::from_slice(bytes)
            .map_err(|e| Refusal::Malformed(format!("invoice {seq} of job {job}: {e}")))?;
        let state = self
            .view
            .job(job)?
            .filter(|j| !j.status().is_finished())
            .ok_or(Refusal::NoJob { job: *job })?;
        if state.last_seq.saturating_add(1) != seq {
            return Err(Refusal::NotNext {
                job: *job,
                seq,
                on_chain: state.last_seq,
            });
        }
        invoice_matches(job, receipt, &invoice, &state)?;
        let job_text = job.to_string();
        let store = self
            .store
            .lock()
            .map_err(|_| Refusal::Unavailable("the store lock is poisoned".into()))?;
        // Receipts that landed without this oracle are adopted first: their records
        // are billed, whoever co-signed them.
        catch_up(&store, &self.peers, job, &state).map_err(|e| Refusal::Behind {
            job: *job,
            reason: e.to_string(),
        })?;
        let earlier = store
            .submissions_of(&job_text)?
            .into_iter()
            .find(|s| s.job_nonce == state.nonce && s.seq == seq);
        if let Some(earlier) = earlier {
            if earlier.invoice_hash == receipt.invoice_hash {
                return Ok(None);
            }
            // Another receipt holds this seq here. While a signature of it may still
            // land, refuse; after that it never will (its seq is still free on
            // chain): give it up for this one.
            if !earlier.is_pending() || self.signed.fresh(&job_text, state.nonce, seq) {
                return Err(Refusal::Conflicting { job: *job, seq });
            }
            let mine: Vec<Submission> = store
                .submissions_of(&job_text)?
                .into_iter()
                .filter(|s| s.job_nonce == state.nonce)
                .collect();
            release_from(&store, &job_text, state.nonce, seq, &mine)?;
        }
        let waiting: HashMap<String, crate::store::WaitingRecord> = store
            .waiting_records(&job_text, usize::MAX)?
            .into_iter()
            .map(|w| (w.record.request_id.clone(), w))
            .collect();
        let before = store
            .last_submission(&job_text, state.nonce)?
            .map(|s| s.metered)
            .unwrap_or_default();
        drop(store);
        let (record_ids, added, oldest) = supported(job, &state, &invoice.lines, &waiting)?;
        let kind = kind_of(&state);
        let supported_units = state.settled_units.saturating_add(added.units(kind));
        let supported_output = state.settled_output.saturating_add(added.output(kind));
        if receipt.cumulative_units > supported_units
            || receipt.cumulative_output > supported_output
        {
            return Err(Refusal::Inflated {
                job: *job,
                seq,
                proposed_units: receipt.cumulative_units,
                proposed_output: receipt.cumulative_output,
                supported_units,
                supported_output,
            });
        }
        Ok(Some(NewSubmission {
            submission: Submission {
                job: job_text,
                job_nonce: state.nonce,
                seq,
                cumulative_units: receipt.cumulative_units,
                cumulative_output: receipt.cumulative_output,
                invoice_hash: receipt.invoice_hash,
                period_end: receipt.period_end,
                metered: {
                    let mut running = before;
                    running.merge(&added);
                    running
                },
                records: record_ids.len() as u64,
                oldest_finished_at: oldest,
                state: SubmissionState::Pending,
            },
            invoice: bytes.clone(),
            record_ids,
        }))
    }
}

/// The proposal's invoices by their sha256.
fn decode_invoices(encoded: &[String]) -> Result<HashMap<[u8; 32], Vec<u8>>, Refusal> {
    encoded
        .iter()
        .map(|text| {
            let bytes = b64()
                .decode(text)
                .map_err(|e| Refusal::Malformed(format!("an invoice is not base64: {e}")))?;
            Ok((sha256(&bytes), bytes))
        })
        .collect()
}

/// The invoice names the receipt's job, incarnation, seq, totals and period, and
/// follows the invoice hash on chain.
fn invoice_matches(
    job: &Pubkey,
    receipt: &SettleReceipt,
    invoice: &Invoice,
    state: &Job,
) -> Result<(), Refusal> {
    let mismatch = |field| Refusal::InvoiceMismatch {
        job: *job,
        seq: receipt.seq,
        field,
    };
    if invoice.program != tally::ID.to_string() {
        return Err(mismatch("program"));
    }
    if invoice.job != job.to_string() {
        return Err(mismatch("job"));
    }
    if invoice.job_nonce != Some(state.nonce) {
        return Err(mismatch("job_nonce"));
    }
    if invoice.seq != receipt.seq {
        return Err(mismatch("seq"));
    }
    if invoice.cumulative_units != receipt.cumulative_units {
        return Err(mismatch("cumulative_units"));
    }
    if invoice.period_end != receipt.period_end {
        return Err(mismatch("period_end"));
    }
    if invoice.previous_hash != hex(&state.invoice_hash) {
        return Err(mismatch("previous_hash"));
    }
    Ok(())
}

/// The records behind `lines`, each waiting in this oracle's store and identical to
/// its line; returns their ids, what they bill (the batcher's rules: the job's
/// model, finished by its deadline) and when the oldest finished.
fn supported(
    job: &Pubkey,
    state: &Job,
    lines: &[InvoiceLine],
    waiting: &HashMap<String, crate::store::WaitingRecord>,
) -> Result<(Vec<i64>, Totals, Option<i64>), Refusal> {
    let mut ids = Vec::with_capacity(lines.len());
    let mut added = Totals::default();
    let mut oldest: Option<i64> = None;
    for line in lines {
        let mine = waiting
            .get(&line.request_id)
            .filter(|w| w.record.job_nonce.is_none_or(|n| n == state.nonce))
            .ok_or_else(|| Refusal::Unseen {
                job: *job,
                request_id: line.request_id.clone(),
            })?;
        if InvoiceLine::from(&mine.record) != *line || ids.contains(&mine.id) {
            return Err(Refusal::Differs {
                job: *job,
                request_id: line.request_id.clone(),
            });
        }
        ids.push(mine.id);
        oldest = Some(oldest.map_or(mine.record.finished_at, |o| o.min(mine.record.finished_at)));
        if pays_for_model(state, &mine.record.model) && mine.record.finished_at <= state.deadline {
            added.add(&mine.record);
        }
    }
    Ok((ids, added, oldest))
}

/// Why this oracle's store could not be brought up to the chain for a job.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("no peer served invoice {seq} of job {job}: {reasons}")]
    Unavailable {
        job: Pubkey,
        seq: u64,
        reasons: String,
    },
    #[error("job {job}: the invoices peers serve do not chain to the invoice hash on chain (at receipt {seq})")]
    Broken { job: Pubkey, seq: u64 },
    #[error("job {job}: this oracle's receipt {seq} is not the one that landed (its store diverged from the quorum's)")]
    Diverged { job: Pubkey, seq: u64 },
    #[error(transparent)]
    Oracle(#[from] OracleError),
}

/// Brings this oracle's store up to the chain for `job`. Receipts `k` between its
/// last confirmed one and the chain's last seq are fetched from peers and checked
/// against the chain (they link, by their previous hashes, from its last confirmed
/// receipt to the invoice hash on chain); then for each: the same receipt pending
/// here is confirmed; another one pending here lost its seq and is released (its
/// records wait again), with every pending receipt after it; the landed one is
/// adopted: its records are bound to it, the ones this oracle never received
/// recorded from its lines, so a late report of them is a duplicate and nothing is
/// billed twice. The chain settles each seq once, so this is only bookkeeping: it
/// makes this oracle's store agree with what was paid. Returns how many receipts
/// were adopted.
pub fn catch_up(
    store: &Store,
    peers: &Peers,
    job: &Pubkey,
    state: &Job,
) -> Result<usize, CatchUpError> {
    let job_text = job.to_string();
    let mine: Vec<Submission> = store
        .submissions_of(&job_text)?
        .into_iter()
        .filter(|s| s.job_nonce == state.nonce)
        .collect();
    let confirmed = mine
        .iter()
        .filter(|s| s.state == SubmissionState::Confirmed)
        .max_by_key(|s| s.seq);
    let have = confirmed.map_or(0, |s| s.seq);
    if have >= state.last_seq || in_line(&mine, have, state) {
        return Ok(0);
    }
    let fetched = fetch_landed(peers, job, state, have)?;
    // The first fetched invoice follows this oracle's last confirmed receipt.
    let mut previous = confirmed.map_or([0; 32], |s| s.invoice_hash);
    for (seq, bytes, invoice) in &fetched {
        if invoice.previous_hash != hex(&previous) {
            return Err(if *seq == have + 1 {
                CatchUpError::Diverged {
                    job: *job,
                    seq: have,
                }
            } else {
                CatchUpError::Broken {
                    job: *job,
                    seq: *seq,
                }
            });
        }
        previous = sha256(bytes);
    }
    if previous != state.invoice_hash {
        return Err(CatchUpError::Broken {
            job: *job,
            seq: state.last_seq,
        });
    }
    let mut metered = confirmed.map(|s| s.metered).unwrap_or_default();
    let mut adopted = 0;
    for (seq, bytes, invoice) in fetched {
        let hash = sha256(&bytes);
        match mine.iter().find(|s| s.seq == seq) {
            Some(same) if same.invoice_hash == hash => {
                store.confirm(&job_text, state.nonce, seq)?;
                metered = same.metered;
                continue;
            }
            Some(_) => release_from(store, &job_text, state.nonce, seq, &mine)?,
            None => {}
        }
        adopt(store, job, state, seq, &bytes, &invoice, &mut metered)?;
        adopted += 1;
    }
    Ok(adopted)
}

/// Whether this oracle's own pending receipts from `have + 1` up to the chain's last
/// seq are the ones that landed (the last of them carries the chain's invoice hash;
/// each was built on the one before): the batcher confirms them itself.
fn in_line(mine: &[Submission], have: u64, state: &Job) -> bool {
    (have + 1..=state.last_seq).all(|k| mine.iter().any(|s| s.seq == k))
        && mine
            .iter()
            .any(|s| s.seq == state.last_seq && s.invoice_hash == state.invoice_hash)
}

/// Releases this oracle's pending receipt `seq` of the job and every pending one
/// after it (built on it): their records wait again.
fn release_from(
    store: &Store,
    job: &str,
    nonce: u64,
    seq: u64,
    mine: &[Submission],
) -> Result<(), OracleError> {
    for s in mine.iter().filter(|s| s.seq >= seq && s.is_pending()) {
        if store.release(job, nonce, s.seq)? {
            tracing::warn!(
                job,
                seq = s.seq,
                "this oracle's pending receipt lost its seq to another oracle's: released, its records wait again"
            );
        }
    }
    Ok(())
}

/// Invoices `have + 1 ..= state.last_seq` of the job's incarnation, from whichever
/// peer serves each.
fn fetch_landed(
    peers: &Peers,
    job: &Pubkey,
    state: &Job,
    have: u64,
) -> Result<Vec<(u64, Vec<u8>, Invoice)>, CatchUpError> {
    let mut fetched = Vec::new();
    for seq in have + 1..=state.last_seq {
        let bytes = block_on(peers.invoice(job, state.nonce, seq))?.map_err(|reasons| {
            CatchUpError::Unavailable {
                job: *job,
                seq,
                reasons,
            }
        })?;
        let invoice: Invoice =
            serde_json::from_slice(&bytes).map_err(|_| CatchUpError::Broken { job: *job, seq })?;
        if invoice.seq != seq || invoice.job_nonce != Some(state.nonce) {
            return Err(CatchUpError::Broken { job: *job, seq });
        }
        fetched.push((seq, bytes, invoice));
    }
    Ok(fetched)
}

/// Writes a landed receipt into this oracle's store, its records bound to it.
fn adopt(
    store: &Store,
    job: &Pubkey,
    state: &Job,
    seq: u64,
    bytes: &[u8],
    invoice: &Invoice,
    metered: &mut Totals,
) -> Result<(), OracleError> {
    let job_text = job.to_string();
    for line in &invoice.lines {
        store.record(&record_of(&job_text, state.nonce, line))?;
    }
    let waiting: HashMap<String, i64> = store
        .waiting_records(&job_text, usize::MAX)?
        .into_iter()
        .map(|w| (w.record.request_id, w.id))
        .collect();
    let mut record_ids = Vec::with_capacity(invoice.lines.len());
    let mut oldest: Option<i64> = None;
    for line in &invoice.lines {
        if let Some(id) = waiting.get(&line.request_id) {
            record_ids.push(*id);
        }
        oldest = Some(oldest.map_or(line.finished_at, |o| o.min(line.finished_at)));
        let record = record_of(&job_text, state.nonce, line);
        if pays_for_model(state, &record.model) && record.finished_at <= state.deadline {
            metered.add(&record);
        }
    }
    store.write_submission(&NewSubmission {
        submission: Submission {
            job: job_text.clone(),
            job_nonce: state.nonce,
            seq,
            cumulative_units: invoice.cumulative_units,
            // Invoices carry no output counter: the chain's for the receipt that
            // landed last, the records' running total before it.
            cumulative_output: if seq == state.last_seq {
                state.settled_output
            } else {
                metered.output(kind_of(state))
            },
            invoice_hash: sha256(bytes),
            period_end: invoice.period_end,
            metered: *metered,
            records: invoice.lines.len() as u64,
            oldest_finished_at: oldest,
            state: SubmissionState::Pending,
        },
        invoice: bytes.to_vec(),
        record_ids,
    })?;
    store.confirm(&job_text, state.nonce, seq)
}

/// The usage record an invoice line stands for.
fn record_of(job: &str, nonce: u64, line: &InvoiceLine) -> crate::store::UsageRecord {
    crate::store::UsageRecord {
        job: job.to_string(),
        job_nonce: Some(nonce),
        request_id: line.request_id.clone(),
        model: line.model.clone(),
        prompt_tokens: line.prompt_tokens,
        completion_tokens: line.completion_tokens,
        gpu_ms: line.gpu_ms,
        finished_at: line.finished_at,
        source: line.source.clone(),
        upstream_id: line.upstream_id.clone(),
        counted_by: line.counted_by.clone(),
        key_id: line.key_id.clone(),
    }
}

/// Answers a request for [`COSIGN_PATH`] on the admin listener: a proposal, POSTed.
pub async fn handle(
    request: hyper::Request<hyper::body::Incoming>,
    cosigner: Arc<Cosigner>,
) -> Response<Body> {
    if request.method() != hyper::Method::POST {
        return crate::http::error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "proposals are POSTed to /quorum/v1/cosign",
        );
    }
    let limits = crate::http::Limits::default();
    let (parts, body) = request.into_parts();
    match crate::http::read_body(&parts.headers, body, &limits).await {
        Ok(body) => cosign_response(cosigner, body).await,
        Err(e) => crate::http::error_response(e.status(), &e.to_string()),
    }
}

/// Serves `POST /quorum/v1/cosign`: the review runs on a blocking thread (the store
/// and the chain block).
pub async fn cosign_response(cosigner: Arc<Cosigner>, body: Bytes) -> Response<Body> {
    let oracle = cosigner.oracle().to_string();
    let proposal: Proposal = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            let refusal = Refusal::Malformed(e.to_string());
            return answer(refusal.status(), refused(&oracle, &refusal));
        }
    };
    let reviewed = tokio::task::spawn_blocking(move || {
        let reviewed = cosigner.review(&proposal);
        cosigner.count(reviewed.as_ref().err());
        reviewed
    })
    .await;
    match reviewed {
        Ok(Ok(signature)) => answer(
            StatusCode::OK,
            Answer {
                oracle,
                signature: Some(signature.to_string()),
                refused: None,
                reason: None,
            },
        ),
        Ok(Err(refusal)) => {
            tracing::warn!(refused = refusal.label(), "co-signing refused: {refusal}");
            answer(refusal.status(), refused(&oracle, &refusal))
        }
        Err(e) => {
            let refusal = Refusal::Unavailable(e.to_string());
            answer(refusal.status(), refused(&oracle, &refusal))
        }
    }
}

fn refused(oracle: &str, refusal: &Refusal) -> Answer {
    Answer {
        oracle: oracle.to_string(),
        signature: None,
        refused: Some(refusal.label().to_string()),
        reason: Some(refusal.to_string()),
    }
}

fn answer(status: StatusCode, answer: Answer) -> Response<Body> {
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    let mut response = Response::new(crate::http::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The `[quorum]` section: this oracle's peers in the on-chain oracle set, and how
/// leadership moves among them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumSettings {
    /// The other oracles: each one's key and the URL of its admin listener.
    pub peers: Vec<PeerSettings>,
    /// Leadership rotates through the oracle set (in its on-chain order) every
    /// `term_secs` of chain time; an oracle that is down loses its terms, the others
    /// settle in theirs.
    #[serde(default = "default_term_secs")]
    pub term_secs: u64,
    /// How long a settlement signature may still land (longer than the cluster's
    /// blockhash validity, ~60–90 s): a pending receipt no oracle signed for longer is
    /// given up for another proposal of its seq. Shorter only makes stores redo more
    /// bookkeeping; the chain settles each seq once whatever it is.
    #[serde(default = "default_signature_secs")]
    pub signature_secs: u64,
}

fn default_signature_secs() -> u64 {
    120
}

fn default_term_secs() -> u64 {
    30
}

/// One peer oracle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSettings {
    /// Its oracle public key (base58).
    pub key: String,
    /// Its admin listener, e.g. `http://10.0.0.2:9090`.
    pub url: String,
}

/// The oracle leading at chain time `now`: the set's member (in its on-chain order)
/// for the current term of `term_secs`.
pub fn leader(oracles: &[Pubkey], now: i64, term_secs: u64) -> Option<Pubkey> {
    let term = u64::try_from(now).unwrap_or(0) / term_secs.max(1);
    let index = usize::try_from(term % u64::try_from(oracles.len()).ok()?.max(1)).ok()?;
    oracles.get(index).copied()
}

/// A receipt: (job, nonce, seq).
type ReceiptId = (String, u64, u64);

/// When this oracle last signed each receipt (job, nonce, seq), as leader or
/// co-signer; shared by its batcher and its co-signer. A pending receipt no one here
/// signed for `lifetime` (longer than a blockhash lasts) can no longer land as
/// signed, so a co-signer may give it up for another; receipts signed before this
/// process started count as old.
#[derive(Clone, Debug)]
pub struct Signed {
    at: Arc<Mutex<HashMap<ReceiptId, std::time::Instant>>>,
    lifetime: std::time::Duration,
}

impl Default for Signed {
    fn default() -> Self {
        Self::new(std::time::Duration::from_secs(default_signature_secs()))
    }
}

impl Signed {
    pub fn new(lifetime: std::time::Duration) -> Self {
        Self {
            at: Arc::default(),
            lifetime,
        }
    }

    pub fn mark(&self, job: &str, nonce: u64, seq: u64) {
        if let Ok(mut signed) = self.at.lock() {
            let now = std::time::Instant::now();
            signed.retain(|_, at| now.duration_since(*at) < self.lifetime);
            signed.insert((job.to_string(), nonce, seq), now);
        }
    }

    /// Whether a signature of the receipt may still be in flight.
    pub fn fresh(&self, job: &str, nonce: u64, seq: u64) -> bool {
        self.at.lock().is_ok_and(|signed| {
            signed
                .get(&(job.to_string(), nonce, seq))
                .is_some_and(|at| at.elapsed() < self.lifetime)
        })
    }
}

/// This oracle's place in a quorum: its peers, and the leadership terms.
#[derive(Clone, Debug)]
pub struct Quorum {
    peers: Peers,
    term_secs: u64,
    signed: Signed,
}

impl Quorum {
    pub fn new(settings: &QuorumSettings) -> Result<Self, OracleError> {
        Ok(Self {
            peers: Peers::new(settings)?,
            term_secs: settings.term_secs,
            signed: Signed::new(std::time::Duration::from_secs(settings.signature_secs)),
        })
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// What this oracle signed lately (its co-signer shares it).
    pub fn signed(&self) -> &Signed {
        &self.signed
    }

    /// Who leads at `now` among `oracles` (the on-chain set).
    pub fn leader(&self, oracles: &[Pubkey], now: i64) -> Option<Pubkey> {
        leader(oracles, now, self.term_secs)
    }

    /// Whether the leader bills new receipts at `now`: not in the last fifth of its
    /// term, so that what it sends lands (and the next leader adopts it) before the
    /// next leader bills the same job. Resending what is pending goes on regardless.
    pub fn bills_at(&self, now: i64) -> bool {
        let term = self.term_secs.max(1);
        let into = u64::try_from(now).unwrap_or(0) % term;
        into < term - term / 5
    }
}

/// Why a peer gave no signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("{peer} refused ({label}): {reason}")]
    Refused {
        peer: Pubkey,
        label: String,
        reason: String,
    },
    #[error("{peer} did not answer: {reason}")]
    Unreachable { peer: Pubkey, reason: String },
    #[error("{peer} answered with a signature that does not verify")]
    BadSignature { peer: Pubkey },
}

impl PeerError {
    /// The peer, and a metrics label for what happened.
    pub fn peer_and_label(&self) -> (Pubkey, &str) {
        match self {
            PeerError::Refused { peer, label, .. } => (*peer, label.as_str()),
            PeerError::Unreachable { peer, .. } => (*peer, "unreachable"),
            PeerError::BadSignature { peer } => (*peer, "bad_signature"),
        }
    }
}

/// The leader's side: asks peers to co-sign.
#[derive(Clone, Debug)]
pub struct Peers {
    peers: Vec<(Pubkey, String)>,
    http: reqwest::Client,
}

impl Peers {
    pub fn new(settings: &QuorumSettings) -> Result<Self, OracleError> {
        let peers = settings
            .peers
            .iter()
            .map(|p| {
                p.key
                    .parse::<Pubkey>()
                    .map(|k| (k, p.url.trim_end_matches('/').to_string()))
                    .map_err(|_| {
                        OracleError::from(crate::config::ConfigError::Setting {
                            key: "quorum.peers",
                            reason: format!("`{}` is not a public key", p.key),
                        })
                    })
            })
            .collect::<Result<_, _>>()?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .map_err(|e| OracleError::Setup {
                what: "build the quorum's HTTP client",
                source: e.into(),
            })?;
        Ok(Self { peers, http })
    }

    /// The peers' keys, in the order they are asked.
    pub fn keys(&self) -> Vec<Pubkey> {
        self.peers.iter().map(|(k, _)| *k).collect()
    }

    /// The peers in the oracle set `members`, in order: one rotated out of the set
    /// (its co-signature would not count) is not asked.
    pub fn members<'a>(&'a self, members: &'a [Pubkey]) -> impl Iterator<Item = Pubkey> + 'a {
        self.peers
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| members.contains(k))
    }

    /// These peers less those outside the oracle set `members`.
    #[must_use]
    pub fn of_set(&self, members: &[Pubkey]) -> Self {
        Self {
            peers: self
                .peers
                .iter()
                .filter(|(k, _)| members.contains(k))
                .cloned()
                .collect(),
            http: self.http.clone(),
        }
    }

    /// Receipt `seq`'s invoice of the job's incarnation `nonce`, from the first peer
    /// that serves it (`GET /invoices/<job>/<nonce>/<seq>`); else every peer's reason.
    pub async fn invoice(&self, job: &Pubkey, nonce: u64, seq: u64) -> Result<Vec<u8>, String> {
        let mut reasons = Vec::new();
        for (key, url) in &self.peers {
            let got = self
                .http
                .get(format!("{url}/invoices/{job}/{nonce}/{seq}"))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            match got {
                Ok(response) => match response.bytes().await {
                    Ok(bytes) => return Ok(bytes.to_vec()),
                    Err(e) => reasons.push(format!("{key}: {e}")),
                },
                Err(e) => reasons.push(format!("{key}: {e}")),
            }
        }
        Err(reasons.join("; "))
    }

    /// Asks `peer` to co-sign `proposal`; checks the signature it returns.
    pub async fn ask(
        &self,
        peer: &Pubkey,
        proposal: &Proposal,
    ) -> Result<solana_signature::Signature, PeerError> {
        let unreachable = |reason: String| PeerError::Unreachable {
            peer: *peer,
            reason,
        };
        let url = self
            .peers
            .iter()
            .find(|(k, _)| k == peer)
            .map(|(_, u)| format!("{u}{COSIGN_PATH}"))
            .ok_or_else(|| unreachable("not a configured peer".into()))?;
        let response = self
            .http
            .post(url)
            .json(proposal)
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let answer: Answer = response
            .json()
            .await
            .map_err(|e| unreachable(format!("its answer does not decode: {e}")))?;
        if let Some(label) = answer.refused {
            return Err(PeerError::Refused {
                peer: *peer,
                label,
                reason: answer.reason.unwrap_or_default(),
            });
        }
        let signature: solana_signature::Signature = answer
            .signature
            .as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or(PeerError::BadSignature { peer: *peer })?;
        if !signature.verify(peer.as_ref(), &proposal.message.serialize()) {
            return Err(PeerError::BadSignature { peer: *peer });
        }
        Ok(signature)
    }
}

/// Runs `future` to its end from synchronous code: on the current runtime when
/// there is one (a blocking thread of it), else on a runtime of its own.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, OracleError> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => Ok(handle.block_on(future)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(future))
            .map_err(|e| OracleError::Setup {
                what: "start a runtime",
                source: e.into(),
            }),
    }
}

/// A settlement the quorum signed: the transaction to send, and who co-signed it.
pub struct Cosigned {
    pub transaction: solana_transaction::versioned::VersionedTransaction,
    pub cosigners: Vec<Pubkey>,
}

/// Gathers `threshold − 1` co-signatures for the message `build` makes with a given
/// list of attesting oracles (the leader first), trying peers in order: a peer that
/// refuses or does not answer is replaced by the next, and the message rebuilt for
/// the new set. Returns the signed transaction, or every peer's reason.
pub fn cosign(
    leader: &Keypair,
    peers: &Peers,
    threshold: usize,
    blockhash: solana_hash::Hash,
    invoices: &[Vec<u8>],
    build: impl Fn(&[Pubkey]) -> Result<solana_message::VersionedMessage, OracleError>,
) -> Result<Cosigned, Vec<PeerError>> {
    let needed = threshold.saturating_sub(1);
    let mut candidates = peers.keys().into_iter();
    let mut chosen: Vec<Pubkey> = candidates.by_ref().take(needed).collect();
    let mut refusals = Vec::new();
    loop {
        if chosen.len() < needed {
            return Err(refusals);
        }
        let mut oracles = vec![leader.pubkey()];
        oracles.extend(&chosen);
        let mut message = match build(&oracles) {
            Ok(m) => m,
            Err(e) => {
                refusals.push(PeerError::Unreachable {
                    peer: leader.pubkey(),
                    reason: e.to_string(),
                });
                return Err(refusals);
            }
        };
        message.set_recent_blockhash(blockhash);
        let proposal = Proposal::new(message, invoices);
        let answers = block_on(futures_util::future::join_all(
            chosen.iter().map(|peer| peers.ask(peer, &proposal)),
        ))
        .map_err(|e| {
            vec![PeerError::Unreachable {
                peer: leader.pubkey(),
                reason: e.to_string(),
            }]
        })?;
        let mut signatures = vec![(
            leader.pubkey(),
            leader.sign_message(&proposal.message.serialize()),
        )];
        let mut failed = Vec::new();
        for (peer, answer) in chosen.iter().zip(answers) {
            match answer {
                Ok(signature) => signatures.push((*peer, signature)),
                Err(e) => {
                    failed.push(*peer);
                    refusals.push(e);
                }
            }
        }
        if failed.is_empty() {
            let transaction = assemble(proposal.message, &signatures).map_err(|e| {
                vec![PeerError::Unreachable {
                    peer: leader.pubkey(),
                    reason: e,
                }]
            })?;
            return Ok(Cosigned {
                transaction,
                cosigners: chosen,
            });
        }
        chosen.retain(|k| !failed.contains(k));
        chosen.extend(candidates.by_ref().take(failed.len()));
    }
}

/// A transaction from its message and a signature of each of its signers.
fn assemble(
    message: solana_message::VersionedMessage,
    signatures: &[(Pubkey, solana_signature::Signature)],
) -> Result<solana_transaction::versioned::VersionedTransaction, String> {
    let signers = usize::from(message.header().num_required_signatures);
    let ordered = message
        .static_account_keys()
        .iter()
        .take(signers)
        .map(|key| {
            signatures
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, s)| *s)
                .ok_or_else(|| format!("no signature of {key}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(solana_transaction::versioned::VersionedTransaction {
        signatures: ordered,
        message,
    })
}
