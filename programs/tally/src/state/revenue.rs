use anchor_lang::prelude::*;

/// On-chain revenue of one mint on one UTC day: the sum of settled usage receipts.
/// This is the ledger `tally revenue` and the dashboard read — revenue from metered
/// work, never from emissions (the program mints nothing). Every field is a
/// statistic and saturates at `u64::MAX`: a full counter never blocks a settlement.
#[account]
#[derive(InitSpace, Debug)]
pub struct Revenue {
    pub mint: Pubkey,
    /// Days since 1970-01-01 (UTC).
    pub day: u32,
    /// Gross paid out of escrow for metered usage (operator net + protocol fee).
    pub gross: u64,
    /// Protocol fees within `gross`.
    pub fees: u64,
    /// Units metered (in each job's own unit kind; tokens: input + output).
    pub units: u64,
    /// Receipts that moved money or units.
    pub receipts: u64,
    /// Jobs whose first usage was settled this day.
    pub jobs_started: u64,
    pub bump: u8,
    // Layout v2 appends from here (`upgrade_account` brings a v1 day up to date).
    /// Output (completion) tokens within `units`.
    pub output_units: u64,
}

impl Revenue {
    /// Size of a layout-v1 account (no `output_units`).
    pub const V1_ACCOUNT_SIZE: usize = 8 + Self::INIT_SPACE - 8;
}
