//! The canonical usage receipt: the message an oracle attests. One encoder, used by
//! the program, the oracle, the SDK and the tests.
//!
//! Receipts are cumulative: `cumulative_units` is everything metered on the job up to
//! `period_end`. Settling pays `(cumulative − already settled) × price`, so a retried,
//! replayed or reordered receipt can never pay twice.

use anchor_lang::prelude::*;

/// Domain separator: a receipt signature can never be mistaken for anything else.
pub const RECEIPT_DOMAIN: &[u8; 16] = b"tally/receipt/v1";
/// Length of [`UsageReceipt::message`].
pub const RECEIPT_MESSAGE_LEN: usize = 16 + 32 + 32 + 8 + 8 + 8 + 32 + 8 + 1 + 4;

/// The per-job part of a receipt as it travels in a settle instruction; the job
/// account, its nonce and the oracle-set version come from the accounts and args.
#[derive(AnchorSerialize, AnchorDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettleReceipt {
    /// Strictly increasing per job, starting at 1.
    pub seq: u64,
    /// Units metered on the job since it opened, through `period_end`.
    pub cumulative_units: u64,
    /// sha256 of the invoice file of this period.
    pub invoice_hash: [u8; 32],
    /// Unix time the metered period ended.
    pub period_end: i64,
}

/// A complete receipt: what oracles sign.
#[derive(AnchorSerialize, AnchorDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageReceipt {
    pub job: Pubkey,
    /// The job's `nonce` (slot it was opened in).
    pub job_nonce: u64,
    pub receipt: SettleReceipt,
    /// Last receipt of the job: settling it completes the job.
    pub is_final: bool,
    pub oracle_set_version: u32,
}

impl UsageReceipt {
    /// The exact bytes oracles sign: domain, program id, then the fields in order,
    /// integers little endian.
    pub fn message(&self, program_id: &Pubkey) -> [u8; RECEIPT_MESSAGE_LEN] {
        let mut out = [0u8; RECEIPT_MESSAGE_LEN];
        let parts: [&[u8]; 10] = [
            RECEIPT_DOMAIN,
            program_id.as_ref(),
            self.job.as_ref(),
            &self.job_nonce.to_le_bytes(),
            &self.receipt.seq.to_le_bytes(),
            &self.receipt.cumulative_units.to_le_bytes(),
            &self.receipt.invoice_hash,
            &self.receipt.period_end.to_le_bytes(),
            &[u8::from(self.is_final)],
            &self.oracle_set_version.to_le_bytes(),
        ];
        let mut at = 0usize;
        for part in parts {
            let end = at.saturating_add(part.len());
            if let Some(dst) = out.get_mut(at..end) {
                dst.copy_from_slice(part);
            }
            at = end;
        }
        out
    }
}
