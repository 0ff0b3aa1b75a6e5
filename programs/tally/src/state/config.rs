use anchor_lang::prelude::*;

use crate::errors::TallyError;

/// Most oracle keys a config can hold.
pub const MAX_ORACLES: usize = 7;
/// Hard cap on the protocol fee: 10% (1,000 basis points). `update_config` refuses more.
pub const MAX_FEE_BPS: u16 = 1_000;
/// Basis points in one whole.
pub const BPS_DENOMINATOR: u16 = 10_000;
/// Longest challenge window the admin may set (30 days).
pub const MAX_CHALLENGE_WINDOW_SECS: u32 = 30 * 86_400;
/// Longest grace after a job (and longest dispute timeout)'s deadline before anyone may expire it (30 days).
pub const MAX_EXPIRY_GRACE_SECS: u32 = 30 * 86_400;

/// Deployment-wide settings: who administers, what the protocol charges, which oracle
/// keys attest usage, and whether new money may come in.
#[account]
#[derive(InitSpace, Debug)]
pub struct Config {
    /// May change settings, accept mints and propose a new admin.
    pub admin: Pubkey,
    /// Proposed admin; becomes `admin` when it signs `accept_admin`. Default = none.
    pub pending_admin: Pubkey,
    /// Wallet that owns the protocol fee; signs `withdraw_fees`.
    pub treasury: Pubkey,
    /// Resolves disputes (attestation issue); default = none yet.
    pub arbiter: Pubkey,
    /// Protocol fee on settled gross, in basis points (≤ [`MAX_FEE_BPS`]).
    pub fee_bps: u16,
    /// Seconds a settled amount waits before the operator may claim it.
    pub challenge_window_secs: u32,
    /// Seconds after a job's deadline during which receipts still settle; after it,
    /// anyone may expire the job and refund the client.
    pub expiry_grace_secs: u32,
    /// Seconds an unresolved dispute waits for the arbiter before anyone may close it
    /// with the default outcome (the attested receipts stand: the operator is paid).
    pub dispute_timeout_secs: u32,
    /// When set, no new money comes in (open_job, top_up). Refunds, settlement of
    /// usage already done, and claims are never blocked.
    pub paused: bool,
    /// Bumped whenever the oracle set changes; receipts name the version they were
    /// signed under, so a rotated-out key cannot settle anything.
    pub oracle_set_version: u32,
    /// Distinct oracle signatures a receipt needs.
    pub oracle_threshold: u8,
    /// Oracle keys (at most [`MAX_ORACLES`]).
    #[max_len(MAX_ORACLES)]
    pub oracles: Vec<Pubkey>,
    pub bump: u8,
}

impl Config {
    /// Checks the oracle set: 1..=7 distinct keys, threshold in 1..=len.
    pub fn validate_oracle_set(oracles: &[Pubkey], threshold: u8) -> Result<()> {
        ensure!(
            !oracles.is_empty() && oracles.len() <= MAX_ORACLES,
            TallyError::InvalidOracleSet
        );
        ensure!(
            threshold >= 1 && usize::from(threshold) <= oracles.len(),
            TallyError::InvalidOracleSet
        );
        for (i, key) in oracles.iter().enumerate() {
            ensure!(
                *key != Pubkey::default() && !oracles[..i].contains(key),
                TallyError::InvalidOracleSet
            );
        }
        Ok(())
    }

    /// Settings every handler may rely on.
    pub fn invariant(&self) -> Result<()> {
        ensure!(self.fee_bps <= MAX_FEE_BPS, TallyError::FeeTooHigh);
        ensure!(
            self.challenge_window_secs <= MAX_CHALLENGE_WINDOW_SECS
                && self.expiry_grace_secs <= MAX_EXPIRY_GRACE_SECS
                && self.dispute_timeout_secs <= MAX_EXPIRY_GRACE_SECS,
            TallyError::InvalidWindow
        );
        Self::validate_oracle_set(&self.oracles, self.oracle_threshold)
    }

    /// Counts the distinct members of the oracle set among `signers` and fails unless
    /// they reach the threshold.
    pub fn check_oracle_quorum(&self, signers: &[&AccountInfo<'_>]) -> Result<()> {
        let mut seen: [bool; MAX_ORACLES] = [false; MAX_ORACLES];
        let mut count: u8 = 0;
        for signer in signers {
            ensure!(signer.is_signer, TallyError::NotEnoughOracleSignatures);
            let Some(index) = self.oracles.iter().position(|k| k == signer.key) else {
                return Err(TallyError::UnknownOracle.at_caller());
            };
            ensure!(!seen[index], TallyError::DuplicateOracleSigner);
            seen[index] = true;
            count = count.saturating_add(1);
        }
        ensure!(
            count >= self.oracle_threshold,
            TallyError::NotEnoughOracleSignatures
        );
        Ok(())
    }
}
