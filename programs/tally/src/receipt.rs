//! The canonical usage receipt: the message an oracle attests. One encoder, used by
//! the program, the oracle, the SDK and the tests.
//!
//! Receipts are cumulative: `cumulative_units` is everything metered on the job up to
//! `period_end`. Settling pays `(cumulative − already settled) × price`, so a retried,
//! replayed or reordered receipt can never pay twice.

use anchor_lang::prelude::*;

/// Domain separator: a receipt signature can never be mistaken for anything else.
pub const RECEIPT_DOMAIN: &[u8; 16] = b"tally/receipt/v1";
/// Most units one receipt may bill (cumulative − already settled): ten trillion,
/// whatever the unit kind. The oracle refuses usage beyond it too (it imports this
/// constant).
///
/// Why this number: it is physical with a wide margin. Tokens are the unit that
/// grows fastest; a thousand GPUs each generating 100,000 tokens/s for one job —
/// several times what an H200 serves with large batches — need 10^5 s (28 hours) of
/// unsettled work to reach it, while the oracle settles every few seconds. As
/// GPU-seconds it is about 317,000 GPU-years. A receipt beyond it is a meter fault
/// or an attack, and refusing it keeps the statistics meaningful: a revenue day's
/// unit counter needs 1.8 million maximal receipts to saturate.
pub const MAX_UNITS_PER_RECEIPT: u64 = 10_000_000_000_000;
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
    /// The job's `nonce` (its number among its client's jobs).
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

    /// Decodes [`UsageReceipt::message`] bytes signed for `program_id`; `None` if the
    /// bytes are not exactly such a message.
    pub fn from_message(program_id: &Pubkey, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != RECEIPT_MESSAGE_LEN {
            return None;
        }
        let (domain, rest) = bytes.split_at(RECEIPT_DOMAIN.len());
        let (program, rest) = rest.split_at(32);
        if domain != RECEIPT_DOMAIN || program != program_id.as_ref() {
            return None;
        }
        let (job, rest) = rest.split_at(32);
        let (nonce, rest) = rest.split_at(8);
        let (seq, rest) = rest.split_at(8);
        let (units, rest) = rest.split_at(8);
        let (invoice_hash, rest) = rest.split_at(32);
        let (period_end, rest) = rest.split_at(8);
        let (is_final, version) = rest.split_at(1);
        let u64_at = |b: &[u8]| b.try_into().ok().map(u64::from_le_bytes);
        Some(Self {
            job: Pubkey::try_from(job).ok()?,
            job_nonce: u64_at(nonce)?,
            receipt: SettleReceipt {
                seq: u64_at(seq)?,
                cumulative_units: u64_at(units)?,
                invoice_hash: invoice_hash.try_into().ok()?,
                period_end: period_end.try_into().ok().map(i64::from_le_bytes)?,
            },
            is_final: match is_final {
                [0] => false,
                [1] => true,
                _ => return None,
            },
            oracle_set_version: version.try_into().ok().map(u32::from_le_bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_and_binds_the_program() {
        let receipt = UsageReceipt {
            job: Pubkey::new_from_array([3; 32]),
            job_nonce: 77,
            receipt: SettleReceipt {
                seq: 5,
                cumulative_units: 1_000,
                invoice_hash: [4; 32],
                period_end: 1_795_564_800,
            },
            is_final: true,
            oracle_set_version: 2,
        };
        let program = Pubkey::new_from_array([1; 32]);
        let bytes = receipt.message(&program);
        assert_eq!(UsageReceipt::from_message(&program, &bytes), Some(receipt));
        let other_program = Pubkey::new_from_array([2; 32]);
        assert_eq!(UsageReceipt::from_message(&other_program, &bytes), None);
        assert_eq!(UsageReceipt::from_message(&program, &bytes[..100]), None);
        let mut bad_flag = bytes;
        bad_flag[RECEIPT_MESSAGE_LEN - 5] = 2;
        assert_eq!(UsageReceipt::from_message(&program, &bad_flag), None);
    }
}
