//! An m-of-n quorum of oracle daemons (issue 20). Every oracle of the on-chain set
//! keeps its own store, fed by evidence it verifies itself — node reports, signed by
//! the operator's node keys, which workers post to every oracle, and gateway records,
//! signed by the metering gateway's key (registered by the operator as a node key)
//! and sent by that oracle to every peer ([`evidence`]) — and signs a settlement only
//! when its own records bear it out.
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
//! cost (scripts/bench, 2-of-3): 20 receipts a transaction at ~1,850 CU and 500 fee
//! lamports each, against 2 receipts at ~5,900 CU and 12,500 lamports relayed.
//!
//! The parts: [`evidence`] carries gateway records between oracles,
//! [`settlement`] reads a settle transaction back from its message,
//! [`cosigner`] answers proposals, [`leader`] asks peers, [`catch_up`] adopts what
//! landed without this oracle; this module holds the wire types, the settings, the
//! leadership terms and what this oracle signed lately.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anchor_lang::prelude::Pubkey;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tally::state::{Config, Job};
use tally_client::chain::Chain;

use crate::OracleError;

pub mod catch_up;
pub mod cosigner;
pub mod evidence;
pub mod leader;
pub mod settlement;

pub use catch_up::{catch_up, CatchUpError};
pub use cosigner::{cosign_response, handle, Cosigner, Refusal};
pub use leader::{cosign, Cosigned, PeerError, Peers};
pub use settlement::{read_settlement, Settlement};

/// Where a co-signer takes proposals (on its admin listener).
pub const COSIGN_PATH: &str = "/quorum/v1/cosign";

/// Base64 (standard alphabet) for invoice bytes in JSON.
pub(super) fn b64() -> base64::engine::GeneralPurpose {
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
        crate::node_report::JobDirectory::job(self, job)
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
