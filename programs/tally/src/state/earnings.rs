use anchor_lang::prelude::*;

use crate::errors::TallyError;

/// Settled amount waiting out the challenge window until `matures_at`.
#[derive(
    AnchorSerialize, AnchorDeserialize, Clone, Copy, Debug, Default, InitSpace, PartialEq, Eq,
)]
pub struct PendingEarnings {
    pub matures_at: i64,
    pub amount: u64,
}

/// An operator's earnings in one mint, over all its jobs. Settlement credits it;
/// amounts mature once older than the challenge window; `claim` pays what matured.
///
/// Maturity is kept in two buckets keyed by window-aligned times: an amount settled at
/// `t` matures at `(floor(t / w) + 2) * w`, between `w` and `2w` after `t`. At any time
/// at most two such times are in the future, so two buckets suffice; if the window
/// changes and a third appears, it merges into the later bucket (never earlier).
#[account]
#[derive(InitSpace, Debug)]
pub struct Earnings {
    pub operator: Pubkey,
    pub mint: Pubkey,
    /// Matured, claimable now.
    pub claimable: u64,
    pub pending: [PendingEarnings; 2],
    pub total_earned: u64,
    pub total_claimed: u64,
    pub bump: u8,
}

impl Earnings {
    /// Moves every bucket whose time has come into `claimable`.
    pub fn mature(&mut self, now: i64) -> Result<()> {
        for bucket in &mut self.pending {
            if bucket.amount > 0 && bucket.matures_at <= now {
                self.claimable = self
                    .claimable
                    .checked_add(bucket.amount)
                    .ok_or(TallyError::AmountOverflow)?;
                *bucket = PendingEarnings::default();
            }
        }
        Ok(())
    }

    /// Not yet matured.
    pub fn unmatured(&self) -> Result<u64> {
        self.pending[0]
            .amount
            .checked_add(self.pending[1].amount)
            .ok_or_else(|| error!(TallyError::AmountOverflow))
    }

    /// Credits `amount` settled at `now` under a challenge window of `window_secs`.
    pub fn credit(&mut self, amount: u64, now: i64, window_secs: u32) -> Result<()> {
        self.total_earned = self
            .total_earned
            .checked_add(amount)
            .ok_or(TallyError::AmountOverflow)?;
        self.mature(now)?;
        if window_secs == 0 {
            self.claimable = self
                .claimable
                .checked_add(amount)
                .ok_or(TallyError::AmountOverflow)?;
            return Ok(());
        }
        // Unsigned arithmetic: the SBPF backend has no signed division.
        let window = u64::from(window_secs);
        let matures_at = u64::try_from(now)
            .unwrap_or(0)
            .checked_div(window)
            .and_then(|k| k.checked_add(2))
            .and_then(|k| k.checked_mul(window))
            .and_then(|t| i64::try_from(t).ok())
            .ok_or(TallyError::AmountOverflow)?;
        let slot = self
            .pending
            .iter()
            .position(|b| b.amount > 0 && b.matures_at == matures_at)
            .or_else(|| self.pending.iter().position(|b| b.amount == 0));
        let index = if let Some(index) = slot {
            index
        } else {
            // Window changed: fold into the later bucket, moving it later if needed.
            let later = usize::from(self.pending[1].matures_at > self.pending[0].matures_at);
            self.pending[later].matures_at = self.pending[later].matures_at.max(matures_at);
            later
        };
        let bucket = &mut self.pending[index];
        if bucket.amount == 0 {
            bucket.matures_at = matures_at;
        }
        bucket.amount = bucket
            .amount
            .checked_add(amount)
            .ok_or(TallyError::AmountOverflow)?;
        Ok(())
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
            total_earned: 0,
            total_claimed: 0,
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
