use anchor_lang::prelude::*;

/// Most node signing keys an operator may register.
pub const MAX_NODE_KEYS: usize = 4;

/// A GPU operator: who it is paid to, which node keys sign its workers' reports, and
/// lifetime totals.
#[account]
#[derive(InitSpace, Debug)]
pub struct Operator {
    /// Signs operator instructions (update, claim).
    pub authority: Pubkey,
    /// Owner of the token accounts claims are paid to.
    pub payout_owner: Pubkey,
    /// Keys that sign the operator's node reports (checked off-chain by the oracle).
    #[max_len(MAX_NODE_KEYS)]
    pub node_keys: Vec<Pubkey>,
    pub jobs_opened: u64,
    pub bump: u8,
}
