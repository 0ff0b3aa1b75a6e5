use anchor_lang::prelude::*;

use crate::errors::TallyError;
use crate::payout::{compute_payout, Payout, Prices, Usage, PRICE_SCALE};
use crate::receipt::{SettleReceipt, MAX_UNITS_PER_RECEIPT};
use crate::state::{pending_total, take_matured, PendingEarnings};

/// What a job's units count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum UnitKind {
    /// Model tokens: input (prompt) and output (completion), priced apart.
    Tokens = 0,
    /// GPU-seconds.
    GpuSeconds = 1,
    /// Requests served.
    Requests = 2,
    /// Rendered frames.
    Frames = 3,
}

impl UnitKind {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Tokens),
            1 => Some(Self::GpuSeconds),
            2 => Some(Self::Requests),
            3 => Some(Self::Frames),
            _ => None,
        }
    }
}

/// Life of a job. A job ends Completed (final receipt), Cancelled (before any usage)
/// or Expired (after its deadline plus grace); its escrow left is refunded then.
/// The account is closed in the same instruction (rent back to the client) unless
/// the operator's share of it is still inside the challenge window: then it stays,
/// Completed or Expired with nothing in escrow, so that the client can still
/// dispute that share, until `close_job` (anyone) closes it once the share has
/// matured and no dispute is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum JobStatus {
    /// Funded, no usage settled yet: the client may cancel for a full refund.
    Open = 0,
    /// At least one receipt settled.
    Active = 1,
    /// Final receipt settled and escrow refunded; account kept while disputable.
    Completed = 2,
    /// Refunded before any usage (the account is always closed at once).
    Cancelled = 3,
    /// Refunded after the deadline plus grace; account kept while disputable.
    Expired = 4,
}

impl JobStatus {
    /// The status stored as `value` (an unknown value reads as Open).
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Active,
            2 => Self::Completed,
            3 => Self::Cancelled,
            4 => Self::Expired,
            _ => Self::Open,
        }
    }

    /// The job has ended: no money comes in and no receipt settles any more; only a
    /// dispute of its unmatured share, its resolution and `close_job` apply.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Expired)
    }
}

/// One job: a client's escrow for metered work by one operator, in one mint.
/// Zero-copy: settlement touches many jobs per transaction.
#[account(zero_copy)]
#[derive(Debug)]
pub struct Job {
    pub client: Pubkey,
    /// The operator PDA (not its authority).
    pub operator: Pubkey,
    pub mint: Pubkey,
    /// Invoice hash of the last settled receipt (each invoice file names its
    /// predecessor's hash, so the files form a chain ending here).
    pub invoice_hash: [u8; 32],
    pub job_id: u64,
    /// The job's number among its client's jobs (1 for the first): unique per
    /// client, so unique with the address. Relayed receipts commit to it. (Jobs
    /// opened before `ClientJobs` existed hold the slot they were opened in.)
    pub nonce: u64,
    /// Price per million input tokens (or per million units of a kind that is not
    /// tokens), in the mint's base units. (Layout v1 held a price per unit here.)
    pub input_price: u64,
    /// Units the deposit was sized for (`crate::payout::deposit_for`).
    pub max_units: u64,
    /// Everything the client put in (open + top-ups).
    pub deposited: u64,
    /// Escrow not yet paid out.
    pub escrow_left: u64,
    /// Cumulative units of the last settled receipt (input + output).
    pub settled_units: u64,
    /// Gross paid out of escrow so far (operator net + fees).
    pub settled_gross: u64,
    /// Protocol fees within `settled_gross`.
    pub fees: u64,
    /// Sequence number of the last settled receipt (receipts start at 1).
    pub last_seq: u64,
    /// Most the job may be billed per hour since it opened; 0 = no cap.
    pub spend_cap_per_hour: u64,
    pub opened_at: i64,
    /// Usage after this time is not billable.
    pub deadline: i64,
    /// `period_end` of the last settled receipt.
    pub last_period_end: i64,
    /// The job's share of the operator's unmatured earnings (what a dispute freezes),
    /// with the same maturity times as the operator's [`crate::state::Earnings`].
    pub pending: [PendingEarnings; 2],
    /// Operator earnings frozen by an open dispute; 0 = no dispute.
    pub disputed_amount: u64,
    /// When an unresolved dispute may be closed by anyone with the default outcome.
    pub dispute_deadline: i64,
    pub receipts: u32,
    pub unit_kind: u8,
    pub status: u8,
    pub bump: u8,
    pub reserved: [u8; 1],
    // Layout v2 (input and output prices, model binding) appends from here; a v1
    // account is brought up to date by `upgrade_account`.
    /// Price per million output tokens; 0 for kinds that are not tokens.
    pub output_price: u64,
    /// Cumulative output tokens of the last settled receipt (within `settled_units`).
    pub settled_output: u64,
    /// sha256 of the name of the model the job pays for (what the gateway routes
    /// and meters, e.g. `sha256("SmolLM2-135M-Instruct")`); all zero: any model.
    pub model: [u8; 32],
}

/// What one receipt did to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiptEffect {
    /// Units newly billed (cumulative − previously settled).
    pub units: u64,
    /// Output tokens within `units`.
    pub output: u64,
    pub payout: Payout,
    /// First usage ever settled on this job.
    pub first_usage: bool,
}

impl Job {
    /// Account size: discriminator + the zero-copy struct.
    pub const ACCOUNT_SIZE: usize = 8 + std::mem::size_of::<Job>();
    /// Size of a layout-v1 account (one price per unit, no model): everything up to
    /// `reserved`.
    pub const V1_ACCOUNT_SIZE: usize = Self::ACCOUNT_SIZE - 8 - 8 - 32;

    /// Reads a layout-v1 job's price (per unit, over prompt and completion alike) as
    /// v2's: per million units, and for tokens the same output price, so the job
    /// pays exactly what it did; the fields v2 appends (zero) leave the model
    /// unbound and the settled units counted as input. The one conversion:
    /// `upgrade_account` writes it, the SDK reads v1 accounts through it.
    pub fn convert_v1_prices(&mut self) -> Result<()> {
        self.input_price = self
            .input_price
            .checked_mul(PRICE_SCALE)
            .ok_or(TallyError::AmountOverflow)?;
        if self.unit_kind == UnitKind::Tokens as u8 {
            self.output_price = self.input_price;
        }
        Ok(())
    }

    /// The job's prices.
    pub fn prices(&self) -> Prices {
        Prices {
            input: self.input_price,
            output: self.output_price,
        }
    }

    /// Cumulative usage settled so far.
    pub fn settled_usage(&self) -> Usage {
        Usage {
            units: self.settled_units,
            output: self.settled_output,
        }
    }

    pub fn status(&self) -> JobStatus {
        JobStatus::from_u8(self.status)
    }

    /// Fails unless the job is still Open or Active.
    pub fn require_live(&self) -> Result<()> {
        ensure!(!self.status().is_finished(), TallyError::JobFinished);
        Ok(())
    }

    /// Drops the job's matured buckets; true while some of the operator's share of
    /// this job is still inside the challenge window (the client may dispute it).
    pub fn in_challenge_window(&mut self, now: i64) -> Result<bool> {
        take_matured(&mut self.pending, now)?;
        Ok(pending_total(&self.pending)? > 0)
    }

    /// Last moment a receipt may settle: the deadline plus the config's grace.
    pub fn settle_until(&self, expiry_grace_secs: u32) -> i64 {
        self.deadline.saturating_add(i64::from(expiry_grace_secs))
    }

    /// Applies a cumulative usage receipt. Returns `None` for a receipt whose `seq` was
    /// already settled (a retry after a crash): it is a no-op, so nothing is paid twice.
    pub fn apply_receipt(
        &mut self,
        receipt: &SettleReceipt,
        now: i64,
        fee_bps: u16,
    ) -> Result<Option<ReceiptEffect>> {
        if receipt.seq <= self.last_seq {
            msg!(
                "receipt seq {} already settled (last {}): skipped",
                receipt.seq,
                self.last_seq
            );
            return Ok(None);
        }
        ensure!(
            receipt.cumulative_units >= self.settled_units
                && receipt.cumulative_output >= self.settled_output,
            TallyError::NonIncreasingUsage
        );
        ensure!(
            receipt.cumulative_output <= receipt.cumulative_units
                && (receipt.cumulative_output == 0 || self.unit_kind == UnitKind::Tokens as u8),
            TallyError::OutputExceedsUnits
        );
        ensure!(
            receipt.period_end <= self.deadline,
            TallyError::UsageAfterDeadline
        );
        let units = receipt
            .cumulative_units
            .checked_sub(self.settled_units)
            .ok_or(TallyError::NonIncreasingUsage)?;
        ensure!(
            units <= MAX_UNITS_PER_RECEIPT,
            TallyError::TooManyUnitsInReceipt
        );
        let usage = Usage {
            units: receipt.cumulative_units,
            output: receipt.cumulative_output,
        };
        let payout = compute_payout(
            self.prices(),
            self.settled_usage(),
            usage,
            self.escrow_left,
            fee_bps,
        )?;
        let output = receipt
            .cumulative_output
            .checked_sub(self.settled_output)
            .ok_or(TallyError::NonIncreasingUsage)?;
        let settled_gross = self
            .settled_gross
            .checked_add(payout.gross)
            .ok_or(TallyError::AmountOverflow)?;
        self.check_spend_rate(settled_gross, now)?;

        let first_usage = self.settled_units == 0 && units > 0;
        self.settled_units = receipt.cumulative_units;
        self.settled_output = receipt.cumulative_output;
        self.settled_gross = settled_gross;
        self.fees = self
            .fees
            .checked_add(payout.fee)
            .ok_or(TallyError::AmountOverflow)?;
        self.escrow_left = self
            .escrow_left
            .checked_sub(payout.gross)
            .ok_or(TallyError::AmountOverflow)?;
        self.last_seq = receipt.seq;
        self.invoice_hash = receipt.invoice_hash;
        self.last_period_end = receipt.period_end;
        self.receipts = self.receipts.saturating_add(1);
        self.status = JobStatus::Active as u8;
        Ok(Some(ReceiptEffect {
            units,
            output,
            payout,
            first_usage,
        }))
    }

    /// The spend-rate cap bounds what a wrong or compromised oracle can take: in the
    /// first hour at most one hour's cap, then pro rata by elapsed time.
    fn check_spend_rate(&self, settled_gross: u64, now: i64) -> Result<()> {
        if self.spend_cap_per_hour == 0 {
            return Ok(());
        }
        let elapsed = u128::try_from(now.saturating_sub(self.opened_at).max(0)).unwrap_or(0);
        // cap × (elapsed + 1 h) / 1 h, in u128: cannot overflow.
        let allowed = u128::from(self.spend_cap_per_hour)
            .saturating_mul(elapsed.saturating_add(3_600))
            / 3_600;
        ensure!(
            u128::from(settled_gross) <= allowed,
            TallyError::SpendRateExceeded
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Revenue;

    /// Deployed accounts have these sizes: `upgrade_account` recognizes them by them.
    #[test]
    fn layout_sizes_of_both_versions() {
        assert_eq!(Job::V1_ACCOUNT_SIZE, 304);
        assert_eq!(Job::ACCOUNT_SIZE, 352);
        assert_eq!(
            std::mem::offset_of!(Job, output_price) + 8,
            Job::V1_ACCOUNT_SIZE
        );
        assert_eq!(Revenue::V1_ACCOUNT_SIZE, 85);
        assert_eq!(8 + Revenue::INIT_SPACE, 93);
    }
}
