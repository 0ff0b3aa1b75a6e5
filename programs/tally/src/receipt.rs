//! The canonical usage receipt: the message an oracle attests. One encoder, used by
//! the program, the oracle, the SDK and the tests.
//!
//! Receipts are cumulative: `cumulative_units` is everything metered on the job up to
//! `period_end`, `cumulative_output` the output tokens within it. Settling pays what
//! the cumulative usage owes less what was already settled (`crate::payout`), so a
//! retried, replayed or reordered receipt can never pay twice.
//!
//! Format history: v1 (`tally/receipt/v1`) had one counter; v2 adds
//! `cumulative_output` (input and output tokens are priced apart). In `settle` the
//! receipts travel packed ([`pack_receipts`]), 40–50 bytes each instead of 64.

use anchor_lang::prelude::*;

use crate::errors::TallyError;

/// Domain separator: a receipt signature can never be mistaken for anything else.
pub const RECEIPT_DOMAIN: &[u8; 16] = b"tally/receipt/v2";
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
pub const RECEIPT_MESSAGE_LEN: usize = 16 + 32 + 32 + 8 + 8 + 8 + 8 + 32 + 8 + 1 + 4;

/// The per-job part of a receipt as it travels in a settle instruction; the job
/// account, its nonce and the oracle-set version come from the accounts and args.
#[derive(AnchorSerialize, AnchorDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettleReceipt {
    /// Strictly increasing per job, starting at 1.
    pub seq: u64,
    /// Units metered on the job since it opened, through `period_end`.
    pub cumulative_units: u64,
    /// Output (completion) tokens within `cumulative_units`; 0 unless the job's
    /// units are tokens.
    pub cumulative_output: u64,
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
        let parts: [&[u8]; 11] = [
            RECEIPT_DOMAIN,
            program_id.as_ref(),
            self.job.as_ref(),
            &self.job_nonce.to_le_bytes(),
            &self.receipt.seq.to_le_bytes(),
            &self.receipt.cumulative_units.to_le_bytes(),
            &self.receipt.cumulative_output.to_le_bytes(),
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
        let (output, rest) = rest.split_at(8);
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
                cumulative_output: u64_at(output)?,
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

/// Bytes of a packed batch before its receipts: the base `period_end`.
const PACKED_BASE_LEN: usize = 8;

/// Packs receipts for `settle`: the smallest `period_end` (i64 LE), then per receipt
/// `seq`, `cumulative_units`, `cumulative_output` and `period_end − base` as LEB128
/// varints, then the 32-byte invoice hash. Counters of a few million take 3–4 bytes
/// instead of 8, and the period ends of one round share the base: a receipt is about
/// 45 bytes instead of 64, so a v0 transaction holds 20 or more.
pub fn pack_receipts(receipts: &[SettleReceipt]) -> Vec<u8> {
    let base = receipts.iter().map(|r| r.period_end).min().unwrap_or(0);
    let mut out =
        Vec::with_capacity(PACKED_BASE_LEN.saturating_add(receipts.len().saturating_mul(48)));
    out.extend_from_slice(&base.to_le_bytes());
    for r in receipts {
        let offset = u64::try_from(i128::from(r.period_end).saturating_sub(i128::from(base)))
            .unwrap_or(u64::MAX);
        for value in [r.seq, r.cumulative_units, r.cumulative_output, offset] {
            put_varint(&mut out, value);
        }
        out.extend_from_slice(&r.invoice_hash);
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(u8::try_from(value & 0x7f).unwrap_or(0) | 0x80);
        value = value.checked_shr(7).unwrap_or(0);
    }
    out.push(u8::try_from(value).unwrap_or(u8::MAX));
}

/// Reads [`pack_receipts`] bytes back, one receipt at a time.
pub struct PackedReceipts<'a> {
    base: i64,
    rest: &'a [u8],
}

impl<'a> PackedReceipts<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self> {
        ensure!(
            bytes.len() >= PACKED_BASE_LEN,
            TallyError::MalformedReceipts
        );
        let (base, rest) = bytes.split_at(PACKED_BASE_LEN);
        let base = base
            .try_into()
            .map(i64::from_le_bytes)
            .map_err(|_| TallyError::MalformedReceipts.at_caller())?;
        Ok(Self { base, rest })
    }

    /// True once every receipt has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next receipt; an error if the bytes end inside one or a varint is malformed.
    pub fn next_receipt(&mut self) -> Result<SettleReceipt> {
        let seq = self.varint()?;
        let cumulative_units = self.varint()?;
        let cumulative_output = self.varint()?;
        let offset = self.varint()?;
        let period_end = i128::from(self.base)
            .checked_add(i128::from(offset))
            .and_then(|end| i64::try_from(end).ok())
            .ok_or(TallyError::MalformedReceipts)?;
        ensure!(self.rest.len() >= 32, TallyError::MalformedReceipts);
        let (hash, rest) = self.rest.split_at(32);
        self.rest = rest;
        Ok(SettleReceipt {
            seq,
            cumulative_units,
            cumulative_output,
            invoice_hash: hash.try_into().map_err(|_| TallyError::MalformedReceipts)?,
            period_end,
        })
    }

    /// LEB128, at most 10 bytes, no bits beyond 64.
    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        let mut shift = 0u32;
        for (i, &byte) in self.rest.iter().enumerate() {
            // The 10th byte (shift 63) may only carry the top bit of a u64.
            ensure!(
                shift < 63 || (shift == 63 && byte <= 1),
                TallyError::MalformedReceipts
            );
            value |= u64::from(byte & 0x7f).wrapping_shl(shift);
            if byte < 0x80 {
                self.rest = self.rest.get(i.wrapping_add(1)..).unwrap_or_default();
                return Ok(value);
            }
            shift = shift.wrapping_add(7);
        }
        Err(TallyError::MalformedReceipts.at_caller())
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]
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
                cumulative_output: 250,
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

    fn receipt(seq: u64, units: u64, output: u64, period_end: i64) -> SettleReceipt {
        SettleReceipt {
            seq,
            cumulative_units: units,
            cumulative_output: output,
            invoice_hash: [seq as u8; 32],
            period_end,
        }
    }

    #[test]
    fn packed_receipts_round_trip_and_are_small() {
        let batch = [
            receipt(3, 1_234_567, 400_000, 1_795_564_800),
            receipt(u64::MAX, u64::MAX, 0, 1_795_564_790),
            receipt(1, 0, 0, i64::MAX),
            receipt(9, 127, 128, i64::MIN),
            receipt(2, 1, 1, 0),
        ];
        let bytes = pack_receipts(&batch);
        let mut reader = PackedReceipts::new(&bytes).unwrap();
        for r in &batch {
            assert_eq!(&reader.next_receipt().unwrap(), r);
        }
        assert!(reader.is_empty());
        assert!(reader.next_receipt().is_err());
        // A typical round: seq in the hundreds, millions of tokens, one period end.
        let round: Vec<_> = (0..20)
            .map(|i| receipt(300 + i, 2_500_000 + i, 900_000, 1_795_564_800))
            .collect();
        let per_receipt = (pack_receipts(&round).len() - 8) / round.len();
        assert!(per_receipt <= 45, "{per_receipt} bytes per receipt");
    }

    #[test]
    fn malformed_packed_receipts_are_refused() {
        let bytes = pack_receipts(&[receipt(3, 1_000, 10, 100)]);
        for cut in 0..bytes.len() {
            let Ok(mut reader) = PackedReceipts::new(&bytes[..cut]) else {
                continue;
            };
            assert!(reader.next_receipt().is_err(), "cut at {cut}");
        }
        // An 11-byte varint, and a 10th byte with more than the top bit.
        let mut long = vec![0u8; 8];
        long.extend([0xff; 10]);
        long.push(0x01);
        assert!(PackedReceipts::new(&long).unwrap().next_receipt().is_err());
        let mut wide = vec![0u8; 8];
        wide.extend([0xff; 9]);
        wide.push(0x02);
        assert!(PackedReceipts::new(&wide).unwrap().next_receipt().is_err());
    }
}
