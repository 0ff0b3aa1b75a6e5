//! Every PDA seed of the program, in one place. Clients derive addresses with the
//! same constants (re-exported by `tally-client`).

/// `["config"]`: the singleton [`crate::state::Config`].
pub const CONFIG: &[u8] = b"config";

/// The config's address and bump, derived at compile time: instructions check the
/// config by address instead of paying for a PDA derivation at run time.
pub const CONFIG_PDA: ([u8; 32], u8) =
    anchor_lang::derive_program_address(&[CONFIG], crate::ID.as_array());
/// The config's address.
pub const CONFIG_ADDRESS: anchor_lang::prelude::Pubkey =
    anchor_lang::prelude::Pubkey::new_from_array(CONFIG_PDA.0);
/// `["vault", mint]`: the [`crate::state::Vault`] ledger of one accepted mint.
pub const VAULT: &[u8] = b"vault";
/// `["vault_tokens", mint]`: the token account holding every escrowed token of a mint;
/// its token authority is the vault PDA.
pub const VAULT_TOKENS: &[u8] = b"vault_tokens";
/// `["operator", authority]`: an [`crate::state::Operator`].
pub const OPERATOR: &[u8] = b"operator";
/// `["earnings", operator, mint]`: an operator's [`crate::state::Earnings`] in one mint.
pub const EARNINGS: &[u8] = b"earnings";
/// `["client_jobs", client]`: a client's [`crate::state::ClientJobs`] (its job ids).
pub const CLIENT_JOBS: &[u8] = b"client_jobs";
/// `["job", client, job_id (u64 LE)]`: a [`crate::state::Job`]. Ids are never reused
/// ([`crate::state::ClientJobs`]), so neither is the address.
pub const JOB: &[u8] = b"job";
/// `["revenue", mint, day (u32 LE, days since the Unix epoch, UTC)]`: a
/// [`crate::state::Revenue`] day.
pub const REVENUE: &[u8] = b"revenue";
