//! Catching up: adopting the receipts that landed without this oracle (another
//! leader and another peer signed them), so its store agrees with what the chain paid.
use std::collections::HashMap;

use anchor_lang::prelude::Pubkey;
use tally::state::Job;

use super::{block_on, Peers};
use crate::batcher::{billable, kind_of};
use crate::invoice::{hex, sha256, Invoice, InvoiceLine};
use crate::store::{NewSubmission, Store, Submission, SubmissionState, UsageRecord};
use crate::units::Totals;
use crate::OracleError;

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
    // The usual case, one indexed read: this oracle's last receipt is the chain's.
    let last = store.last_submission(&job_text, state.nonce)?;
    let in_sync = match &last {
        Some(last) => last.seq == state.last_seq && last.invoice_hash == state.invoice_hash,
        None => state.last_seq == 0,
    };
    if in_sync {
        return Ok(0);
    }
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
pub(super) fn release_from(
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
    let records: Vec<UsageRecord> = invoice
        .lines
        .iter()
        .map(|line| record_of(&job_text, state.nonce, line))
        .collect();
    for record in &records {
        store.record(record)?;
    }
    let waiting: HashMap<String, i64> = store
        .waiting_records(&job_text, usize::MAX)?
        .into_iter()
        .map(|w| (w.record.request_id, w.id))
        .collect();
    let mut record_ids = Vec::with_capacity(records.len());
    for record in &records {
        if let Some(id) = waiting.get(&record.request_id) {
            record_ids.push(*id);
        }
        if billable(state, record) {
            metered.add(record);
        }
    }
    let oldest = records.iter().map(|r| r.finished_at).min();
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
fn record_of(job: &str, nonce: u64, line: &InvoiceLine) -> UsageRecord {
    UsageRecord {
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
