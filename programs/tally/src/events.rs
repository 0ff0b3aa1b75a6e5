//! One event per state change and money movement (logged with `emit!`).
use anchor_lang::prelude::*;

#[event]
pub struct ConfigInitialized {
    pub admin: Pubkey,
    pub treasury: Pubkey,
    pub fee_bps: u16,
    pub oracle_set_version: u32,
}

#[event]
pub struct ConfigUpdated {
    pub fee_bps: u16,
    pub treasury: Pubkey,
    pub arbiter: Pubkey,
    pub challenge_window_secs: u32,
    pub expiry_grace_secs: u32,
    pub dispute_timeout_secs: u32,
    pub paused: bool,
    pub oracle_set_version: u32,
}

#[event]
pub struct AdminTransferProposed {
    pub admin: Pubkey,
    pub pending_admin: Pubkey,
}

#[event]
pub struct AdminTransferAccepted {
    pub previous_admin: Pubkey,
    pub admin: Pubkey,
}

#[event]
pub struct MintAccepted {
    pub mint: Pubkey,
    pub vault: Pubkey,
    pub token_program: Pubkey,
}

#[event]
pub struct OperatorRegistered {
    pub operator: Pubkey,
    pub authority: Pubkey,
    pub payout_owner: Pubkey,
}

#[event]
pub struct OperatorUpdated {
    pub operator: Pubkey,
    pub payout_owner: Pubkey,
    pub node_keys: Vec<Pubkey>,
}

#[event]
pub struct JobOpened {
    pub job: Pubkey,
    pub client: Pubkey,
    pub operator: Pubkey,
    pub mint: Pubkey,
    pub job_id: u64,
    pub unit_kind: u8,
    /// Per million input tokens (or units), base units of the mint.
    pub input_price: u64,
    /// Per million output tokens.
    pub output_price: u64,
    /// sha256 of the model's name; zero: any model.
    pub model: [u8; 32],
    pub max_units: u64,
    pub deposit: u64,
    pub deadline: i64,
    pub spend_cap_per_hour: u64,
}

#[event]
pub struct JobToppedUp {
    pub job: Pubkey,
    pub amount: u64,
    pub escrow_left: u64,
}

/// `open_ledgers` created an operator's earnings ledger and/or a revenue day.
#[event]
pub struct LedgersOpened {
    pub operator: Pubkey,
    pub mint: Pubkey,
    pub day: u32,
    pub earnings_created: bool,
    pub revenue_created: bool,
}

#[event]
pub struct ReceiptSettled {
    pub job: Pubkey,
    pub seq: u64,
    pub cumulative_units: u64,
    pub cumulative_output: u64,
    pub units: u64,
    /// Output tokens within `units`.
    pub output_units: u64,
    pub gross: u64,
    pub fee: u64,
    pub net: u64,
    pub escrow_left: u64,
    pub capped: bool,
    pub invoice_hash: [u8; 32],
}

/// A job ended (completed, cancelled or expired) and its escrow left was refunded.
/// Its account is closed in the same instruction, unless the operator's share of it
/// is still inside the challenge window: then it stays, disputable, until
/// `close_job` ([`JobAccountClosed`]).
#[event]
pub struct JobClosed {
    pub job: Pubkey,
    pub client: Pubkey,
    /// 2 completed, 3 cancelled, 4 expired (see `JobStatus`).
    pub status: u8,
    pub refunded: u64,
    pub settled_units: u64,
    pub settled_output: u64,
    pub settled_gross: u64,
}

/// `close_job` closed an ended job's account (rent back to its client) once its
/// share had left the challenge window.
#[event]
pub struct JobAccountClosed {
    pub job: Pubkey,
    pub client: Pubkey,
    /// 2 completed, 4 expired.
    pub status: u8,
}

#[event]
pub struct EarningsClaimed {
    pub operator: Pubkey,
    pub mint: Pubkey,
    pub amount: u64,
    pub destination: Pubkey,
}

#[event]
pub struct FeesWithdrawn {
    pub mint: Pubkey,
    pub amount: u64,
    pub destination: Pubkey,
}

/// A client disputed a job's settled amounts still inside the challenge window.
#[event]
pub struct DisputeOpened {
    pub job: Pubkey,
    pub client: Pubkey,
    /// Operator earnings frozen.
    pub amount: u64,
    /// After this, anyone may close the dispute with the default outcome.
    pub deadline: i64,
}

/// A dispute ended: `to_client` refunded, `to_operator` released to its earnings.
#[event]
pub struct DisputeResolved {
    pub job: Pubkey,
    pub to_client: u64,
    pub to_operator: u64,
    /// False when closed after the timeout with the default outcome.
    pub by_arbiter: bool,
}

/// `upgrade_account` brought an account of an older layout up to date.
#[event]
pub struct AccountUpgraded {
    pub account: Pubkey,
    /// "job" or "revenue".
    pub kind: String,
    pub from_version: u8,
    pub to_version: u8,
}
