//! The batcher: turns committed usage records into cumulative receipts and settles
//! them, exactly once.
//!
//! Each round:
//! 1. Resume: every submission written but not confirmed is checked against the
//!    chain. If the job's `last_seq` already reached it, it landed (the answer was
//!    lost): confirm it. Otherwise send the same receipt again — settling a seq twice
//!    is a no-op on-chain, so a retry can never pay twice.
//! 2. New usage: for each job with records not yet covered, write the invoice file,
//!    then the submission (the write-ahead record: seq, cumulative units, invoice
//!    hash), and only then send. Receipts are grouped per operator and mint, up to
//!    `max_receipts_per_tx` per transaction.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anchor_lang::prelude::Pubkey;
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::state::{utc_day, Job, Operator, UnitKind};
use tally_client::chain::Chain;
use tally_client::ix::{self, Attestation};
use tally_client::{ops, pda, SettleReceipt};

use crate::clock::ChainClock;
use crate::invoice::{hex, Invoice, InvoiceLine};
use crate::store::{Store, Submission};
use crate::units::Totals;
use crate::OracleError;

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Pending submissions found already landed.
    pub recovered: usize,
    /// Receipts sent (new or resent).
    pub sent: usize,
    /// Receipts confirmed this round.
    pub confirmed: usize,
    /// Receipts left pending after an error (retried next round).
    pub failed: usize,
    /// The errors, for logs.
    pub errors: Vec<String>,
    /// Usage the oracle holds but cannot bill, per job and reason. Never silent: it
    /// is counted in the metrics and shown by `/health`.
    pub unbillable: Vec<Unbillable>,
}

/// Why held usage cannot be billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnbillableReason {
    /// The records finished after the job's deadline (in the chain's time).
    AfterDeadline,
    /// The receipt's units cost more than the job's escrow has left.
    OverEscrow,
}

impl UnbillableReason {
    /// The `reason` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::AfterDeadline => "after_deadline",
            Self::OverEscrow => "over_escrow",
        }
    }
}

/// Usage of one job that a round could not bill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unbillable {
    pub job: String,
    pub reason: UnbillableReason,
    /// Records concerned (for `OverEscrow`, those of the receipt that ran over).
    pub records: u64,
    /// Units not billed.
    pub units: u64,
    /// What happened and what to do, for logs and `/health`.
    pub detail: String,
}

/// The settlement side of the oracle.
pub struct Batcher {
    pub store: Store,
    /// Signs settlements (and pays their fees).
    pub oracle: Keypair,
    pub invoices_dir: PathBuf,
    pub max_receipts_per_tx: usize,
    /// The clock the sources stamp records with: synced to the chain's each round.
    pub clock: Arc<ChainClock>,
}

struct Pending {
    submission: Submission,
    operator_authority: Pubkey,
    mint: Pubkey,
    job: Pubkey,
}

fn parse_key(s: &str) -> Result<Pubkey, OracleError> {
    s.parse()
        .map_err(|_| OracleError::Invalid(format!("{s} is not a public key")))
}

fn unit_kind_name(kind: UnitKind) -> &'static str {
    match kind {
        UnitKind::Tokens => "tokens",
        UnitKind::GpuSeconds => "gpu-seconds",
        UnitKind::Requests => "requests",
        UnitKind::Frames => "frames",
    }
}

impl Batcher {
    /// One round: resume what is pending, then settle new usage.
    pub fn run_round(&self, chain: &mut impl Chain) -> Result<RoundReport, OracleError> {
        let mut report = RoundReport::default();
        // Records are stamped in the chain's time: keep the sources' clock on it.
        self.clock.sync(chain)?;
        let mut to_send = Vec::new();
        for submission in self.store.pending_submissions()? {
            let job_key = parse_key(&submission.job)?;
            let Some(job) = ops::job(chain, &job_key).ok() else {
                report.errors.push(format!(
                    "job {} is closed; receipt {} cannot land",
                    submission.job, submission.seq
                ));
                continue;
            };
            if job.last_seq >= submission.seq {
                self.store.confirm(&submission.job, submission.seq)?;
                report.recovered += 1;
                continue;
            }
            to_send.push(Self::pending_for(chain, submission, job_key, &job)?);
        }
        for job_text in self.store.jobs_with_new_records()? {
            let job_key = parse_key(&job_text)?;
            let last = self.store.last_submission(&job_text)?;
            if last.as_ref().is_some_and(|s| !s.confirmed) {
                continue; // resumed above
            }
            let Ok(job) = ops::job(chain, &job_key) else {
                report.errors.push(format!(
                    "job {job_text} does not exist: its records cannot be settled"
                ));
                continue;
            };
            // An ended job stays on chain while its share is disputable; it settles
            // nothing more.
            if job.status().is_finished() {
                report.errors.push(format!(
                    "job {job_text} has ended: its records cannot be settled"
                ));
                continue;
            }
            let submission = self.prepare(&job_text, &job, last.as_ref(), &mut report)?;
            to_send.push(Self::pending_for(chain, submission, job_key, &job)?);
        }
        self.send(chain, to_send, &mut report)?;
        Ok(report)
    }

    fn pending_for(
        chain: &impl Chain,
        submission: Submission,
        job_key: Pubkey,
        job: &Job,
    ) -> Result<Pending, OracleError> {
        let operator: Operator = chain.anchor_account(&job.operator)?.ok_or_else(|| {
            OracleError::Invalid(format!(
                "operator {} of job {job_key} does not exist",
                job.operator
            ))
        })?;
        Ok(Pending {
            submission,
            operator_authority: operator.authority,
            mint: job.mint,
            job: job_key,
        })
    }

    /// Writes the invoice and the write-ahead submission for a job's new records.
    fn prepare(
        &self,
        job_text: &str,
        job: &Job,
        last: Option<&Submission>,
        report: &mut RoundReport,
    ) -> Result<Submission, OracleError> {
        let after = last.map_or(0, |s| s.last_record);
        let kind = UnitKind::from_u8(job.unit_kind).unwrap_or(UnitKind::Requests);
        // Totals through the previous receipt, then through the new records.
        let mut totals = Totals::default();
        for (_, record) in self
            .store
            .records_after(job_text, 0)?
            .iter()
            .filter(|(id, _)| *id <= after)
        {
            if record.finished_at <= job.deadline {
                totals.add(record);
            }
        }
        let before = totals.units(kind);
        let new = self.store.records_after(job_text, after)?;
        let mut lines = Vec::with_capacity(new.len());
        let mut period_end = last.map_or(0, |s| s.period_end);
        let mut late = Totals::default();
        let mut latest = 0;
        for (_, record) in &new {
            // Usage after the deadline is not billable: listed, not counted.
            if record.finished_at <= job.deadline {
                totals.add(record);
                period_end = period_end.max(record.finished_at);
            } else {
                late.add(record);
                latest = latest.max(record.finished_at);
            }
            lines.push(InvoiceLine::from(record));
        }
        if late.requests > 0 {
            report.unbillable.push(Unbillable {
                job: job_text.to_string(),
                reason: UnbillableReason::AfterDeadline,
                records: late.requests,
                units: late.units(kind),
                detail: format!(
                    "job {job_text}: {} record(s), {} unit(s), finished after the job's deadline \
                     {} (latest {latest}, chain time): listed in the invoice, not billed",
                    late.requests,
                    late.units(kind),
                    job.deadline
                ),
            });
        }
        let cumulative_units = totals.units(kind).max(job.settled_units);
        let added = cumulative_units.saturating_sub(job.settled_units);
        let payable = job
            .escrow_left
            .checked_div(job.unit_price)
            .unwrap_or(u64::MAX);
        if added > payable {
            report.unbillable.push(Unbillable {
                job: job_text.to_string(),
                reason: UnbillableReason::OverEscrow,
                records: u64::try_from(new.len()).unwrap_or(u64::MAX),
                units: added - payable,
                detail: format!(
                    "job {job_text}: {} of the {added} new unit(s) exceed the escrow left \
                     ({} base units at {} per unit): the client must top the job up \
                     (`tally job top-up {job_text} <AMOUNT>`) for them to be paid",
                    added - payable,
                    job.escrow_left,
                    job.unit_price
                ),
            });
        }
        let seq = last
            .map_or(1, |s| s.seq.saturating_add(1))
            .max(job.last_seq.saturating_add(1));
        let invoice = Invoice {
            version: 1,
            program: tally::ID.to_string(),
            job: job_text.to_string(),
            seq,
            previous_hash: hex(&last.map_or([0; 32], |s| s.invoice_hash)),
            unit_kind: unit_kind_name(kind).to_string(),
            units: cumulative_units.saturating_sub(before),
            cumulative_units,
            period_end: period_end.min(job.deadline),
            lines,
        };
        let (_, invoice_hash) = invoice.write(&self.invoices_dir)?;
        let submission = Submission {
            job: job_text.to_string(),
            seq,
            cumulative_units,
            invoice_hash,
            period_end: invoice.period_end,
            last_record: new.last().map_or(after, |(id, _)| *id),
            confirmed: false,
        };
        self.store.write_submission(&submission)?;
        Ok(submission)
    }

    /// Sends pending receipts grouped by operator and mint; confirms what lands.
    fn send(
        &self,
        chain: &mut impl Chain,
        pending: Vec<Pending>,
        report: &mut RoundReport,
    ) -> Result<(), OracleError> {
        let mut groups: BTreeMap<(Pubkey, Pubkey), Vec<Pending>> = BTreeMap::new();
        for p in pending {
            groups
                .entry((p.operator_authority, p.mint))
                .or_default()
                .push(p);
        }
        let config = ops::config(chain)?;
        let day = utc_day(chain.clock()?.unix_timestamp);
        let attestation = Attestation {
            oracles: vec![self.oracle.pubkey()],
            oracle_set_version: config.oracle_set_version,
            day,
        };
        for ((operator_authority, mint), items) in groups {
            let operator = pda::operator(&operator_authority);
            let needs_ledgers = chain.account(&pda::earnings(&operator, &mint))?.is_none()
                || chain.account(&pda::revenue(&mint, day))?.is_none();
            // open_ledgers is idempotent: it rides along until a send lands.
            let mut ledgers_open = !needs_ledgers;
            for chunk in items.chunks(self.max_receipts_per_tx.max(1)) {
                let receipts: Vec<(Pubkey, SettleReceipt)> = chunk
                    .iter()
                    .map(|p| {
                        (
                            p.job,
                            SettleReceipt {
                                seq: p.submission.seq,
                                cumulative_units: p.submission.cumulative_units,
                                invoice_hash: p.submission.invoice_hash,
                                period_end: p.submission.period_end,
                            },
                        )
                    })
                    .collect();
                let open_ledgers = (!ledgers_open)
                    .then(|| ix::open_ledgers(self.oracle.pubkey(), operator_authority, mint, day));
                report.sent += chunk.len();
                let settle = |receipts: &[(Pubkey, SettleReceipt)]| {
                    let mut instructions: Vec<_> = open_ledgers.iter().cloned().collect();
                    instructions.push(ix::settle(&attestation, operator_authority, mint, receipts));
                    instructions
                };
                match chain.send(&settle(&receipts), &self.oracle, &[]) {
                    Ok(_) => {
                        ledgers_open = true;
                        for p in chunk {
                            self.store.confirm(&p.submission.job, p.submission.seq)?;
                            report.confirmed += 1;
                        }
                    }
                    // One receipt the program refuses (a job over its spend cap, say)
                    // must not hold back the others: send each alone.
                    Err(e) if chunk.len() > 1 && e.program_error_code().is_some() => {
                        report.errors.push(format!(
                            "a batch of {} receipts was refused ({e}): sending each alone",
                            chunk.len()
                        ));
                        for (p, receipt) in chunk.iter().zip(&receipts) {
                            match chain.send(
                                &settle(std::slice::from_ref(receipt)),
                                &self.oracle,
                                &[],
                            ) {
                                Ok(_) => {
                                    self.store.confirm(&p.submission.job, p.submission.seq)?;
                                    report.confirmed += 1;
                                }
                                Err(e) => {
                                    report.failed += 1;
                                    report.errors.push(format!("job {}: {e}", p.job));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        report.failed += chunk.len();
                        report.errors.push(e.to_string());
                    }
                }
            }
        }
        Ok(())
    }
}
