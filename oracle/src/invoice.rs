//! Invoices: one JSON file per receipt, listing the requests it bills. The sha256 of
//! the file's bytes is the receipt's invoice hash, and each invoice names the hash of
//! the one before it, so the files of a job form a chain that ends at the hash stored
//! on-chain. Anyone holding the files can prove what was paid for.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// An invoice: what one receipt bills.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub version: u32,
    pub program: String,
    pub job: String,
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

impl Invoice {
    /// The canonical bytes (the struct serialized as compact JSON, fields in order).
    pub fn to_bytes(&self) -> Result<Vec<u8>, OracleError> {
        serde_json::to_vec(self)
            .map_err(|e| OracleError::Invalid(format!("invoice does not serialize: {e}")))
    }

    /// Writes the invoice under `dir/<job>/<seq>.json`; returns the path and the hash.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, [u8; 32]), OracleError> {
        let bytes = self.to_bytes()?;
        let folder = dir.join(&self.job);
        let path = folder.join(format!("{}.json", self.seq));
        let fail = |e: std::io::Error| OracleError::Invoice {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(&folder).map_err(fail)?;
        // Write then rename, so a crash never leaves half an invoice under its name.
        let tmp = folder.join(format!("{}.json.tmp", self.seq));
        std::fs::write(&tmp, &bytes).map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok((path, sha256(&bytes)))
    }
}

/// sha256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
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

/// Proves that the invoice file at `path` is what the chain paid for: its sha256, or
/// that of the later invoices of the same job found beside it (each naming its
/// predecessor's hash), must end at the invoice hash the job holds on-chain, at the
/// job's cumulative units.
pub fn verify(
    chain: &impl tally_client::chain::Chain,
    path: &Path,
) -> Result<Verified, OracleError> {
    let read = |p: &Path| -> Result<(Vec<u8>, Invoice), OracleError> {
        let fail = |reason: String| OracleError::Invoice {
            path: p.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(p).map_err(|e| fail(e.to_string()))?;
        let invoice = serde_json::from_slice(&bytes)
            .map_err(|e| fail(format!("not a Tally invoice: {e}")))?;
        Ok((bytes, invoice))
    };
    let (bytes, invoice) = read(path)?;
    if invoice.program != tally::ID.to_string() {
        return Err(OracleError::Invalid(format!(
            "the invoice is for program {}, not {}",
            invoice.program,
            tally::ID
        )));
    }
    let job_key = invoice
        .job
        .parse()
        .map_err(|_| OracleError::Invalid(format!("{} is not a job address", invoice.job)))?;
    let job = tally_client::ops::job(chain, &job_key)?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let (mut hash, mut seq, mut cumulative) =
        (sha256(&bytes), invoice.seq, invoice.cumulative_units);
    while seq < job.last_seq {
        let next_path = dir.join(format!("{}.json", seq.saturating_add(1)));
        let (next_bytes, next) = read(&next_path).map_err(|_| {
            OracleError::Invalid(format!(
                "the chain has settled up to receipt {}; invoice {} is needed beside this one to link it",
                job.last_seq,
                seq.saturating_add(1)
            ))
        })?;
        if next.previous_hash != hex(&hash) {
            return Err(OracleError::Invalid(format!(
                "invoice {} does not follow invoice {seq}: the invoice files were altered",
                next.seq
            )));
        }
        (hash, seq, cumulative) = (sha256(&next_bytes), next.seq, next.cumulative_units);
    }
    if seq > job.last_seq {
        return Err(OracleError::Invalid(format!(
            "invoice {seq} is not settled yet: the chain is at receipt {}",
            job.last_seq
        )));
    }
    if hash != job.invoice_hash || cumulative != job.settled_units {
        return Err(OracleError::Invalid(format!(
            "does NOT match the chain: job {} paid for invoice hash {} at {} units; the files give {} at {cumulative}",
            invoice.job,
            hex(&job.invoice_hash),
            job.settled_units,
            hex(&hash)
        )));
    }
    Ok(Verified {
        job: invoice.job,
        seq: invoice.seq,
        units: invoice.units,
        settled_seq: seq,
        settled_units: cumulative,
    })
}
