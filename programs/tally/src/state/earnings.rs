use anchor_lang::prelude::*;

use crate::errors::TallyError;

/// Settled amount waiting out the challenge window until `matures_at`.
/// (Plain-old-data as well as Borsh: zero-copy jobs hold these too; two u64-sized
/// fields, so both encodings are the same bytes.)
#[derive(
    AnchorSerialize,
    AnchorDeserialize,
    Clone,
    Copy,
    Debug,
    Default,
    InitSpace,
    PartialEq,
    Eq,
    bytemuck::Pod,
    bytemuck::Zeroable,
)]
#[repr(C)]
pub struct PendingEarnings {
    pub matures_at: i64,
    pub amount: u64,
}

/// Two maturity buckets, as kept by [`Earnings`] (per operator and mint) and by each
/// [`crate::state::Job`] (its own share, which a dispute freezes).
///
/// An amount settled at `t` under a challenge window `w` matures at
/// `(floor(t / w) + 2) * w`, between `w` and `2w` after `t`. At any time at most two
/// such times are in the future, so two buckets suffice; if the window changes and a
/// third appears, it merges into the later bucket, which only moves later.
pub type MaturityBuckets = [PendingEarnings; 2];

/// When an amount settled at `now` under a window of `window_secs` matures.
pub fn maturity_time(now: i64, window_secs: u32) -> Result<i64> {
    // Unsigned arithmetic: the SBPF backend has no signed division.
    let window = u64::from(window_secs);
    u64::try_from(now)
        .unwrap_or(0)
        .checked_div(window)
        .and_then(|k| k.checked_add(2))
        .and_then(|k| k.checked_mul(window))
        .and_then(|t| i64::try_from(t).ok())
        .ok_or_else(|| error!(TallyError::AmountOverflow))
}

/// Adds `amount` maturing at `matures_at` to `buckets`.
pub fn add_pending(buckets: &mut MaturityBuckets, amount: u64, matures_at: i64) -> Result<()> {
    let slot = buckets
        .iter()
        .position(|b| b.amount > 0 && b.matures_at == matures_at)
        .or_else(|| buckets.iter().position(|b| b.amount == 0));
    let index = if let Some(index) = slot {
        index
    } else {
        // Window changed: fold into the later bucket, moving it later if needed.
        let later = usize::from(buckets[1].matures_at > buckets[0].matures_at);
        buckets[later].matures_at = buckets[later].matures_at.max(matures_at);
        later
    };
    let bucket = &mut buckets[index];
    if bucket.amount == 0 {
        bucket.matures_at = matures_at;
    }
    bucket.amount = bucket
        .amount
        .checked_add(amount)
        .ok_or(TallyError::AmountOverflow)?;
    Ok(())
}

/// Empties the buckets whose time has come; returns what they held.
pub fn take_matured(buckets: &mut MaturityBuckets, now: i64) -> Result<u64> {
    let mut matured: u64 = 0;
    for bucket in buckets.iter_mut() {
        if bucket.amount > 0 && bucket.matures_at <= now {
            matured = matured
                .checked_add(bucket.amount)
                .ok_or(TallyError::AmountOverflow)?;
            *bucket = PendingEarnings::default();
        }
    }
    Ok(matured)
}

/// Sum of the buckets.
pub fn pending_total(buckets: &MaturityBuckets) -> Result<u64> {
    buckets[0]
        .amount
        .checked_add(buckets[1].amount)
        .ok_or_else(|| error!(TallyError::AmountOverflow))
}

/// An operator's earnings in one mint, over all its jobs. Settlement credits it;
/// amounts mature once older than the challenge window ([`MaturityBuckets`]); `claim`
/// pays what matured. A client's dispute moves a job's unmatured share to `frozen`
/// until the arbiter (or the dispute timeout) resolves it.
#[account]
#[derive(InitSpace, Debug)]
pub struct Earnings {
    pub operator: Pubkey,
    pub mint: Pubkey,
    /// Matured, claimable now.
    pub claimable: u64,
    /// (InitSpace needs the array written out rather than the `MaturityBuckets` alias.)
    pub pending: [PendingEarnings; 2],
    /// Under dispute.
    pub frozen: u64,
    /// Lifetime totals (statistics: saturating).
    pub total_earned: u64,
    pub total_claimed: u64,
    /// Receipts and units settled for this operator in this mint (saturating).
    pub receipts_settled: u64,
    pub units_settled: u64,
    pub bump: u8,
}

impl Earnings {
    /// Moves every bucket whose time has come into `claimable`.
    pub fn mature(&mut self, now: i64) -> Result<()> {
        let matured = take_matured(&mut self.pending, now)?;
        self.claimable = self
            .claimable
            .checked_add(matured)
            .ok_or(TallyError::AmountOverflow)?;
        Ok(())
    }

    /// Not yet matured (excluding frozen).
    pub fn unmatured(&self) -> Result<u64> {
        pending_total(&self.pending)
    }

    /// Everything owed to the operator: claimable, pending and frozen.
    pub fn owed(&self) -> Result<u64> {
        self.unmatured()?
            .checked_add(self.claimable)
            .and_then(|v| v.checked_add(self.frozen))
            .ok_or_else(|| error!(TallyError::AmountOverflow))
    }

    /// Credits `amount` settled at `now` under a challenge window of `window_secs`.
    pub fn credit(&mut self, amount: u64, now: i64, window_secs: u32) -> Result<()> {
        self.total_earned = self.total_earned.saturating_add(amount);
        self.mature(now)?;
        if window_secs == 0 {
            self.claimable = self
                .claimable
                .checked_add(amount)
                .ok_or(TallyError::AmountOverflow)?;
            return Ok(());
        }
        add_pending(&mut self.pending, amount, maturity_time(now, window_secs)?)
    }

    /// Freezes a job's unmatured share, given as that job's own buckets (all in the
    /// future): each amount comes out of this ledger's bucket with the same maturity
    /// time, or a later one (a changed window only ever moves buckets later).
    pub fn freeze(&mut self, job_buckets: &MaturityBuckets) -> Result<u64> {
        let mut frozen: u64 = 0;
        let mut order = [0usize, 1];
        if self.pending[1].matures_at < self.pending[0].matures_at {
            order = [1, 0];
        }
        for share in job_buckets.iter().filter(|b| b.amount > 0) {
            let mut left = share.amount;
            for &i in &order {
                let bucket = &mut self.pending[i];
                if bucket.matures_at >= share.matures_at && left > 0 {
                    let take = left.min(bucket.amount);
                    bucket.amount = bucket
                        .amount
                        .checked_sub(take)
                        .ok_or(TallyError::LedgerMismatch)?;
                    left = left.checked_sub(take).ok_or(TallyError::LedgerMismatch)?;
                }
            }
            require!(left == 0, TallyError::LedgerMismatch);
            frozen = frozen
                .checked_add(share.amount)
                .ok_or(TallyError::AmountOverflow)?;
        }
        self.frozen = self
            .frozen
            .checked_add(frozen)
            .ok_or(TallyError::AmountOverflow)?;
        Ok(frozen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> Earnings {
        Earnings {
            operator: Pubkey::default(),
            mint: Pubkey::default(),
            claimable: 0,
            pending: [PendingEarnings::default(); 2],
            frozen: 0,
            total_earned: 0,
            total_claimed: 0,
            receipts_settled: 0,
            units_settled: 0,
            bump: 0,
        }
    }

    #[test]
    fn amounts_mature_between_one_and_two_windows_later() {
        let mut e = empty();
        e.credit(100, 3_599, 3_600).unwrap();
        assert_eq!(
            e.pending[0].matures_at, 7_200,
            "1 s short of a window boundary: 1 window + 1 s"
        );
        e.credit(50, 3_600, 3_600).unwrap();
        assert_eq!(e.pending[1].matures_at, 10_800, "on a boundary: 2 windows");
        e.mature(7_199).unwrap();
        assert_eq!(e.claimable, 0);
        e.mature(7_200).unwrap();
        assert_eq!((e.claimable, e.unmatured().unwrap()), (100, 50));
        // The freed bucket takes the next period.
        e.credit(10, 7_300, 3_600).unwrap();
        assert_eq!(e.unmatured().unwrap(), 60);
        e.mature(14_400).unwrap();
        assert_eq!(
            (e.claimable, e.unmatured().unwrap(), e.total_earned),
            (160, 0, 160)
        );
    }

    #[test]
    fn zero_window_pays_at_once_and_a_changed_window_never_matures_early() {
        let mut e = empty();
        e.credit(7, 100, 0).unwrap();
        assert_eq!(e.claimable, 7);
        // Two buckets in use, then the window changes: a third maturity time folds
        // into the later bucket, which only moves later.
        e.credit(1, 1_000, 600).unwrap(); // matures 1_800
        e.credit(1, 1_300, 600).unwrap(); // matures 2_400
        e.credit(1, 1_300, 3_600).unwrap(); // would mature 7_200
        assert_eq!(e.unmatured().unwrap(), 3);
        e.mature(2_400).unwrap();
        assert_eq!(e.claimable, 8, "only the 1_800 bucket matured");
        e.mature(7_200).unwrap();
        assert_eq!(e.claimable, 10);
    }
}
