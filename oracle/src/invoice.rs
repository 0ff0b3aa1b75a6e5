//! Invoices: one JSON document per receipt, listing the requests it bills. The sha256
//! of its bytes is the receipt's invoice hash, and each invoice names the hash of the
//! one before it, so the invoices of a job form a chain that ends at the hash stored
//! on-chain. Anyone holding them can prove what was paid for.
//!
//! The bytes live in the store, written in the transaction that writes the receipt's
//! submission (before it is sent), so any replica — the leader that made them or one
//! that took over — serves and verifies them. The files under `invoices_dir`
//! (`<job>/<nonce>/<seq>.json`) are an export of those bytes.
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::Store;
use crate::OracleError;

/// One billed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub request_id: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub gpu_ms: u64,
    pub finished_at: i64,
    pub source: String,
    /// The inference server's id of the answer (the gateway's own is `request_id`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub upstream_id: String,
    /// How the tokens were counted (`upstream`: the server's usage; `tokenizer`: the
    /// gateway counted with the server's tokenizer); absent for node reports.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub counted_by: String,
    /// The job key that spent it (its public id), when one did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_id: String,
}

impl From<&crate::store::UsageRecord> for InvoiceLine {
    fn from(record: &crate::store::UsageRecord) -> Self {
        Self {
            request_id: record.request_id.clone(),
            model: record.model.clone(),
            prompt_tokens: record.prompt_tokens,
            completion_tokens: record.completion_tokens,
            gpu_ms: record.gpu_ms,
            finished_at: record.finished_at,
            source: record.source.clone(),
            upstream_id: record.upstream_id.clone(),
            counted_by: record.counted_by.clone(),
            key_id: record.key_id.clone(),
        }
    }
}

/// The invoice format: 2 names the job's nonce.
pub const INVOICE_VERSION: u32 = 2;

/// An invoice: what one receipt bills.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub version: u32,
    pub program: String,
    pub job: String,
    /// The job incarnation (the slot it was opened in); absent in version-1 invoices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_nonce: Option<u64>,
    pub seq: u64,
    /// Hex sha256 of the previous invoice of the job (zeros for the first).
    pub previous_hash: String,
    pub unit_kind: String,
    /// Units of this invoice's lines and the job's total through them.
    pub units: u64,
    pub cumulative_units: u64,
    pub period_end: i64,
    pub lines: Vec<InvoiceLine>,
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Where the export of receipt `seq` of job incarnation (`job`, `nonce`) goes.
pub fn export_path(dir: &Path, job: &str, nonce: u64, seq: u64) -> PathBuf {
    dir.join(job)
        .join(nonce.to_string())
        .join(format!("{seq}.json"))
}

impl Invoice {
    /// The canonical bytes (the struct serialized as compact JSON, fields in order).
    pub fn to_bytes(&self) -> Result<Vec<u8>, OracleError> {
        serde_json::to_vec(self).map_err(OracleError::InvoiceEncode)
    }
}

/// Writes invoice `bytes` to `path`: a temporary file, synced, renamed into place, the
/// folder synced — a crash leaves the old file or the whole new one, never half.
pub fn export(path: &Path, bytes: &[u8]) -> Result<(), OracleError> {
    let fail = |source: std::io::Error| OracleError::InvoiceFile {
        path: path.display().to_string(),
        source,
    };
    let folder = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(folder).map_err(fail)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut file = std::fs::File::create(&tmp).map_err(fail)?;
        file.write_all(bytes).map_err(fail)?;
        file.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)?;
    std::fs::File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(fail)
}

/// sha256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Why an invoice is not proven to be what the chain paid for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    /// It names another program.
    #[error("the invoice is for program {program}, not {expected}")]
    OtherProgram { program: String, expected: String },
    /// Its job (or the one asked about) is not an address.
    #[error("{job} is not a job address")]
    NotAJob { job: String },
    /// The job it names was closed and another opened at its address.
    #[error("the invoice is for the job opened at {job} in slot {nonce}; the job there now was opened in slot {current}: that job was closed, and its invoices cannot be checked against the chain any more")]
    JobReopened {
        job: String,
        nonce: u64,
        current: u64,
    },
    /// The invoice linking it to the chain's is not at hand.
    #[error("the chain has settled up to receipt {settled}; invoice {wanted} is needed to link this one to it (export it, or verify against the store: --store)")]
    MissingLink { settled: u64, wanted: u64 },
    /// The store holds no such invoice.
    #[error("the store holds no invoice {seq} of job {job} (opened in slot {nonce}): is this the store of the oracle that settled it?")]
    NotInStore { job: String, nonce: u64, seq: u64 },
    /// A later invoice does not name this one's hash.
    #[error("invoice {following} does not follow invoice {seq}: the invoices were altered")]
    Altered { seq: u64, following: u64 },
    /// The chain has not settled it yet.
    #[error("invoice {seq} is not settled yet: the chain is at receipt {settled}")]
    NotSettled { seq: u64, settled: u64 },
    /// The chain of invoices ends elsewhere than the job's on-chain hash and units.
    #[error("does NOT match the chain: job {job} paid for invoice hash {paid_hash} at {paid_units} units; the invoices give {hash} at {units}")]
    Mismatch {
        job: String,
        paid_hash: String,
        paid_units: u64,
        hash: String,
        units: u64,
    },
}

/// What [`verify`] proved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub job: String,
    /// The invoice checked.
    pub seq: u64,
    pub units: u64,
    /// The receipt whose on-chain hash the chain of invoices reached.
    pub settled_seq: u64,
    pub settled_units: u64,
}

fn parse(bytes: &[u8], what: &str) -> Result<Invoice, OracleError> {
    serde_json::from_slice(bytes).map_err(|source| OracleError::NotAnInvoice {
        what: what.to_string(),
        source,
    })
}

/// Proves that the invoice `bytes` are what the chain paid for: their sha256, or that
/// of the later invoices of the same job (each naming its predecessor's hash, fetched
/// by `next(seq)`), must end at the invoice hash the job holds on-chain, at the job's
/// cumulative units — for the job incarnation the invoice names.
pub fn verify_bytes(
    chain: &impl tally_client::chain::Chain,
    bytes: &[u8],
    what: &str,
    mut next: impl FnMut(u64, u64) -> Result<Option<Vec<u8>>, OracleError>,
) -> Result<Verified, OracleError> {
    let invoice = parse(bytes, what)?;
    if invoice.program != tally::ID.to_string() {
        return Err(Unverified::OtherProgram {
            program: invoice.program,
            expected: tally::ID.to_string(),
        }
        .into());
    }
    let job_key = invoice.job.parse().map_err(|_| Unverified::NotAJob {
        job: invoice.job.clone(),
    })?;
    let job = tally_client::ops::job(chain, &job_key)?;
    if let Some(nonce) = invoice.job_nonce {
        if nonce != job.nonce {
            return Err(Unverified::JobReopened {
                job: invoice.job,
                nonce,
                current: job.nonce,
            }
            .into());
        }
    }
    let nonce = invoice.job_nonce.unwrap_or(job.nonce);
    let (mut hash, mut seq, mut cumulative) =
        (sha256(bytes), invoice.seq, invoice.cumulative_units);
    while seq < job.last_seq {
        let wanted = seq.saturating_add(1);
        let next_bytes = next(nonce, wanted)?.ok_or(Unverified::MissingLink {
            settled: job.last_seq,
            wanted,
        })?;
        let following = parse(&next_bytes, &format!("invoice {wanted}"))?;
        if following.previous_hash != hex(&hash) {
            return Err(Unverified::Altered {
                seq,
                following: following.seq,
            }
            .into());
        }
        (hash, seq, cumulative) = (
            sha256(&next_bytes),
            following.seq,
            following.cumulative_units,
        );
    }
    if seq > job.last_seq {
        return Err(Unverified::NotSettled {
            seq,
            settled: job.last_seq,
        }
        .into());
    }
    if hash != job.invoice_hash || cumulative != job.settled_units {
        return Err(Unverified::Mismatch {
            job: invoice.job,
            paid_hash: hex(&job.invoice_hash),
            paid_units: job.settled_units,
            hash: hex(&hash),
            units: cumulative,
        }
        .into());
    }
    Ok(Verified {
        job: invoice.job,
        seq: invoice.seq,
        units: invoice.units,
        settled_seq: seq,
        settled_units: cumulative,
    })
}

/// Proves that the invoice file at `path` is what the chain paid for, linking it to
/// the chain through the later invoices found beside it (`<seq>.json`), or, when
/// `store` is given, through the store's copies (any replica's store: they share it).
pub fn verify(
    chain: &impl tally_client::chain::Chain,
    path: &Path,
) -> Result<Verified, OracleError> {
    verify_with(chain, path, None)
}

/// [`verify`], reading the later invoices from `store` when it is given.
pub fn verify_with(
    chain: &impl tally_client::chain::Chain,
    path: &Path,
    store: Option<&Store>,
) -> Result<Verified, OracleError> {
    let bytes = std::fs::read(path).map_err(|source| OracleError::InvoiceFile {
        path: path.display().to_string(),
        source,
    })?;
    let job = parse(&bytes, &path.display().to_string())?.job;
    let dir = path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .to_path_buf();
    verify_bytes(chain, &bytes, &path.display().to_string(), |nonce, seq| {
        if let Some(store) = store {
            return store.invoice(&job, nonce, seq);
        }
        Ok(std::fs::read(dir.join(format!("{seq}.json"))).ok())
    })
}

/// Proves that receipt `seq` (default: the latest settled) of the job at `job` is what
/// the chain paid for, from the invoices in `store` alone.
pub fn verify_in_store(
    chain: &impl tally_client::chain::Chain,
    store: &Store,
    job: &str,
    seq: Option<u64>,
) -> Result<Verified, OracleError> {
    let key = job.parse().map_err(|_| Unverified::NotAJob {
        job: job.to_string(),
    })?;
    let state = tally_client::ops::job(chain, &key)?;
    let seq = seq.unwrap_or(state.last_seq);
    let bytes = store
        .invoice(job, state.nonce, seq)?
        .ok_or_else(|| Unverified::NotInStore {
            job: job.to_string(),
            nonce: state.nonce,
            seq,
        })?;
    verify_bytes(
        chain,
        &bytes,
        &format!("invoice {seq} of job {job}"),
        |nonce, seq| store.invoice(job, nonce, seq),
    )
}
