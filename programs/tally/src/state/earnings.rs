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
/// such times are in the future, so two buckets suffice while the window stays the
/// same. When it changes, a third time can appear and must fold into a bucket.
///
/// The rule that keeps disputes working across such changes: the earnings hold
/// every job's share at least as long as the job says it is unmatured. (For every
/// time `T`, what the jobs hold maturing at or after `T` is at most what the
/// earnings hold maturing at or after `T`.) The earnings fold with [`add_pending`],
/// which only ever moves amounts later; a job folds with [`place_job_share`], which
/// never moves an amount later than the earnings hold it unless
/// [`Earnings::hold_job_share`] moves the earnings' copy along.
pub type MaturityBuckets = [PendingEarnings; 2];

/// Where [`place_job_share`] put a job's new unmatured amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobPlacement {
    /// The maturity time the job holds the new amount at (never earlier than its own).
    pub matures_at: i64,
    /// An amount the job already held, moved later to `matures_at` (0 if none)…
    pub moved: u64,
    /// …from this maturity time.
    pub moved_from: i64,
}

impl JobPlacement {
    /// True when the job holds the amount exactly at its own maturity time and moved
    /// nothing: the earnings then take it in the usual way ([`Earnings::credit`]).
    pub fn is_exact(&self, matures_at: i64) -> bool {
        self.matures_at == matures_at && self.moved == 0
    }
}

/// Adds a job's `amount` maturing at `matures_at` to the job's own buckets. With a
/// bucket at that time or a free one it goes there. Otherwise (a changed window made
/// a third time) it joins the earliest bucket maturing at or after `matures_at`, so
/// the client's dispute right only lengthens; if both mature earlier, the later
/// bucket moves to `matures_at` and takes it, and the caller must move the
/// earnings' copy of that bucket along ([`Earnings::hold_job_share`]).
pub fn place_job_share(
    buckets: &mut MaturityBuckets,
    amount: u64,
    matures_at: i64,
) -> Result<JobPlacement> {
    let exact = JobPlacement {
        matures_at,
        moved: 0,
        moved_from: 0,
    };
    let slot = buckets
        .iter()
        .position(|b| b.amount > 0 && b.matures_at == matures_at)
        .or_else(|| buckets.iter().position(|b| b.amount == 0));
    if slot.is_some() {
        // A bucket at that time or a free one: add_pending puts it there.
        add_pending(buckets, amount, matures_at)?;
        return Ok(exact);
    }
    let (early, late) = if buckets[0].matures_at <= buckets[1].matures_at {
        (0, 1)
    } else {
        (1, 0)
    };
    let target = if buckets[early].matures_at >= matures_at {
        Some(early)
    } else if buckets[late].matures_at >= matures_at {
        Some(late)
    } else {
        None
    };
    let placement = if let Some(index) = target {
        JobPlacement {
            matures_at: buckets[index].matures_at,
            moved: 0,
            moved_from: 0,
        }
    } else {
        let bucket = &mut buckets[late];
        let placement = JobPlacement {
            matures_at,
            moved: bucket.amount,
            moved_from: bucket.matures_at,
        };
        bucket.matures_at = matures_at;
        placement
    };
    let index = target.unwrap_or(late);
    buckets[index].amount = buckets[index]
        .amount
        .checked_add(amount)
        .ok_or(TallyError::AmountOverflow)?;
    Ok(placement)
}

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
        .ok_or_else(|| TallyError::AmountOverflow.at_caller())
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
        .ok_or_else(|| TallyError::AmountOverflow.at_caller())
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
            .ok_or_else(|| TallyError::AmountOverflow.at_caller())
    }

    /// Credits `amount` settled at `now` under a challenge window of `window_secs`,
    /// of which `held` was already put in the buckets by [`Earnings::hold_job_share`].
    pub fn credit(&mut self, amount: u64, held: u64, now: i64, window_secs: u32) -> Result<()> {
        self.total_earned = self.total_earned.saturating_add(amount);
        self.mature(now)?;
        let amount = amount.checked_sub(held).ok_or(TallyError::LedgerMismatch)?;
        if window_secs == 0 {
            self.claimable = self
                .claimable
                .checked_add(amount)
                .ok_or(TallyError::AmountOverflow)?;
            return Ok(());
        }
        if amount == 0 {
            return Ok(());
        }
        add_pending(&mut self.pending, amount, maturity_time(now, window_secs)?)
    }

    /// Holds a job's new `amount` as long as the job does after
    /// [`place_job_share`] folded it: takes the job's moved amount out of the buckets
    /// maturing at or after `moved_from` (earliest first, as [`Earnings::freeze`]
    /// does) and puts it, with `amount`, at the job's time (or later, if these
    /// buckets must fold too). Never fails for want of the moved amount: a ledger
    /// left inconsistent by an older program moves what it holds, so settlement is
    /// never blocked.
    pub fn hold_job_share(
        &mut self,
        amount: u64,
        placement: &JobPlacement,
        now: i64,
    ) -> Result<()> {
        self.mature(now)?;
        let taken = self.take_share(placement.moved_from, placement.moved)?;
        let total = amount
            .checked_add(taken)
            .ok_or(TallyError::AmountOverflow)?;
        add_pending(&mut self.pending, total, placement.matures_at)
    }

    /// Takes up to `amount` out of the buckets maturing at or after `matures_at`,
    /// earliest first; returns what it took.
    fn take_share(&mut self, matures_at: i64, amount: u64) -> Result<u64> {
        let mut order = [0usize, 1];
        if self.pending[1].matures_at < self.pending[0].matures_at {
            order = [1, 0];
        }
        let mut left = amount;
        for &i in &order {
            let bucket = &mut self.pending[i];
            if bucket.amount > 0 && bucket.matures_at >= matures_at && left > 0 {
                let take = left.min(bucket.amount);
                bucket.amount = bucket
                    .amount
                    .checked_sub(take)
                    .ok_or(TallyError::LedgerMismatch)?;
                left = left.checked_sub(take).ok_or(TallyError::LedgerMismatch)?;
            }
        }
        amount
            .checked_sub(left)
            .ok_or_else(|| TallyError::LedgerMismatch.at_caller())
    }

    /// Freezes a job's unmatured share, given as that job's own buckets (all in the
    /// future): each amount comes out of this ledger's bucket with the same maturity
    /// time, or a later one (a changed window only ever moves buckets later).
    pub fn freeze(&mut self, job_buckets: &MaturityBuckets) -> Result<u64> {
        let mut frozen: u64 = 0;
        for share in job_buckets.iter().filter(|b| b.amount > 0) {
            let taken = self.take_share(share.matures_at, share.amount)?;
            ensure!(taken == share.amount, TallyError::LedgerMismatch);
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
        e.credit(100, 0, 3_599, 3_600).unwrap();
        assert_eq!(
            e.pending[0].matures_at, 7_200,
            "1 s short of a window boundary: 1 window + 1 s"
        );
        e.credit(50, 0, 3_600, 3_600).unwrap();
        assert_eq!(e.pending[1].matures_at, 10_800, "on a boundary: 2 windows");
        e.mature(7_199).unwrap();
        assert_eq!(e.claimable, 0);
        e.mature(7_200).unwrap();
        assert_eq!((e.claimable, e.unmatured().unwrap()), (100, 50));
        // The freed bucket takes the next period.
        e.credit(10, 0, 7_300, 3_600).unwrap();
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
        e.credit(7, 0, 100, 0).unwrap();
        assert_eq!(e.claimable, 7);
        // Two buckets in use, then the window changes: a third maturity time folds
        // into the later bucket, which only moves later.
        e.credit(1, 0, 1_000, 600).unwrap(); // matures 1_800
        e.credit(1, 0, 1_300, 600).unwrap(); // matures 2_400
        e.credit(1, 0, 1_300, 3_600).unwrap(); // would mature 7_200
        assert_eq!(e.unmatured().unwrap(), 3);
        e.mature(2_400).unwrap();
        assert_eq!(e.claimable, 8, "only the 1_800 bucket matured");
        e.mature(7_200).unwrap();
        assert_eq!(e.claimable, 10);
    }

    /// A job's share placed after a window change is never held by the job later
    /// than by the earnings, and the client's dispute right never shortens.
    #[test]
    fn a_folded_job_share_never_outlives_the_earnings_copy() {
        // The job holds 1,000 at 10_800 and 1,000 at 14_400; the earnings hold the
        // same plus another job's 20 at 14_400.
        let mut job: MaturityBuckets = [
            PendingEarnings {
                matures_at: 10_800,
                amount: 1_000,
            },
            PendingEarnings {
                matures_at: 14_400,
                amount: 1_000,
            },
        ];
        let mut e = empty();
        e.pending = [
            PendingEarnings {
                matures_at: 10_800,
                amount: 1_000,
            },
            PendingEarnings {
                matures_at: 14_400,
                amount: 1_020,
            },
        ];
        // Earlier than both: joins the earliest bucket at or after it (10_800).
        let placed = place_job_share(&mut job, 500, 7_920).unwrap();
        assert_eq!((placed.matures_at, placed.moved), (10_800, 0));
        e.hold_job_share(500, &placed, 7_800).unwrap();
        assert_eq!(e.pending[0].amount, 1_500);
        // Later than both: the later bucket moves to it, and so does the earnings' copy.
        let placed = place_job_share(&mut job, 100, 21_600).unwrap();
        assert_eq!(
            (placed.matures_at, placed.moved, placed.moved_from),
            (21_600, 1_000, 14_400)
        );
        e.hold_job_share(100, &placed, 7_800).unwrap();
        assert_eq!(job[1].matures_at, 21_600);
        let frozen = e.freeze(&job).unwrap();
        assert_eq!(frozen, 2_600, "all of the job's share freezes");
        assert_eq!(e.unmatured().unwrap(), 20, "the other job's 20 is left");
    }

    /// The rule of [`MaturityBuckets`], checked over random settlements of several
    /// jobs, window changes and disputes (the program's own functions, as settlement
    /// calls them): for every time T, what the jobs hold maturing at or after T is at
    /// most what the earnings hold, so every dispute finds its share.
    const WINDOWS: [u32; 5] = [60, 600, 3_600, 7_200, 86_400];
    const STEPS: [i64; 7] = [1, 30, 100, 600, 1_000, 3_000, 5_000];

    #[test]
    fn random_window_changes_keep_every_job_share_covered() {
        let mut seed: u64 = 0x5eed_7a11;
        // xorshift64: a number below `n`.
        let mut below = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % 1_000_003).unwrap() % n
        };
        for _ in 0..3_000 {
            let mut e = empty();
            let mut jobs = [[PendingEarnings::default(); 2]; 4];
            let mut now: i64 = 100_000;
            let mut window = 3_600u32;
            for _ in 0..12 {
                now += STEPS[below(STEPS.len())];
                let roll = below(100);
                if roll < 40 {
                    window = WINDOWS[below(WINDOWS.len())];
                }
                if roll >= 85 {
                    let k = below(jobs.len());
                    e.mature(now).unwrap();
                    take_matured(&mut jobs[k], now).unwrap();
                    e.freeze(&jobs[k]).expect("a dispute finds the job's share");
                    jobs[k] = Default::default();
                } else {
                    // One settlement: some jobs, as Ledgers::apply then post do.
                    let (mut earned, mut held) = (0u64, 0u64);
                    let at = maturity_time(now, window).unwrap();
                    for (k, job) in jobs.iter_mut().enumerate() {
                        if below(2) == 0 && k > 0 {
                            continue;
                        }
                        let amount = 1 + u64::try_from(below(20)).unwrap();
                        take_matured(job, now).unwrap();
                        let placed = place_job_share(job, amount, at).unwrap();
                        assert!(placed.matures_at >= at || placed.moved == 0);
                        if !placed.is_exact(at) {
                            e.hold_job_share(amount, &placed, now).unwrap();
                            held += amount;
                        }
                        earned += amount;
                    }
                    e.credit(earned, held, now, window).unwrap();
                }
                e.mature(now).unwrap();
                for job in &mut jobs {
                    take_matured(job, now).unwrap();
                }
                let mut times: Vec<i64> = jobs
                    .iter()
                    .flatten()
                    .filter(|b| b.amount > 0)
                    .map(|b| b.matures_at)
                    .collect();
                times.sort_unstable();
                for t in times {
                    let held_by_jobs: u64 = jobs
                        .iter()
                        .flatten()
                        .filter(|b| b.amount > 0 && b.matures_at >= t)
                        .map(|b| b.amount)
                        .sum();
                    let held_by_earnings: u64 = e
                        .pending
                        .iter()
                        .filter(|b| b.amount > 0 && b.matures_at >= t)
                        .map(|b| b.amount)
                        .sum();
                    assert!(
                        held_by_jobs <= held_by_earnings,
                        "at {t}: jobs hold {held_by_jobs}, earnings only {held_by_earnings}"
                    );
                }
            }
        }
    }
}
