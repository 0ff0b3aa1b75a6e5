use anchor_lang::prelude::*;

use crate::errors::TallyError;
use crate::events::ConfigUpdated;
use crate::state::{seeds, Config};

/// Fields left `None` stay as they are.
#[derive(AnchorSerialize, AnchorDeserialize, Clone, Debug, Default)]
pub struct UpdateConfigArgs {
    pub fee_bps: Option<u16>,
    pub treasury: Option<Pubkey>,
    pub arbiter: Option<Pubkey>,
    pub challenge_window_secs: Option<u32>,
    pub expiry_grace_secs: Option<u32>,
    pub dispute_timeout_secs: Option<u32>,
    pub paused: Option<bool>,
    /// Replaces the oracle set and bumps its version: receipts signed under the old
    /// set no longer settle.
    pub oracle_set: Option<OracleSetArgs>,
}

#[derive(AnchorSerialize, AnchorDeserialize, Clone, Debug)]
pub struct OracleSetArgs {
    pub oracles: Vec<Pubkey>,
    pub threshold: u8,
}

#[derive(Accounts)]
pub struct UpdateConfig<'info> {
    pub admin: Signer<'info>,
    #[account(mut, address = seeds::CONFIG_ADDRESS, has_one = admin @ TallyError::Unauthorized)]
    pub config: Account<'info, Config>,
}

impl UpdateConfig<'_> {
    /// Changes fee, treasury, arbiter, windows, pause or the oracle set (admin only).
    pub fn update_config(ctx: Context<Self>, args: UpdateConfigArgs) -> Result<()> {
        let config = &mut ctx.accounts.config;
        if let Some(fee_bps) = args.fee_bps {
            config.fee_bps = fee_bps;
        }
        if let Some(treasury) = args.treasury {
            config.treasury = treasury;
        }
        if let Some(arbiter) = args.arbiter {
            config.arbiter = arbiter;
        }
        if let Some(secs) = args.challenge_window_secs {
            config.challenge_window_secs = secs;
        }
        if let Some(secs) = args.expiry_grace_secs {
            config.expiry_grace_secs = secs;
        }
        if let Some(secs) = args.dispute_timeout_secs {
            config.dispute_timeout_secs = secs;
        }
        if let Some(paused) = args.paused {
            config.paused = paused;
        }
        if let Some(set) = args.oracle_set {
            config.oracles = set.oracles;
            config.oracle_threshold = set.threshold;
            config.oracle_set_version = config
                .oracle_set_version
                .checked_add(1)
                .ok_or(TallyError::AmountOverflow)?;
        }
        config.invariant()?;
        emit!(ConfigUpdated {
            fee_bps: config.fee_bps,
            treasury: config.treasury,
            arbiter: config.arbiter,
            challenge_window_secs: config.challenge_window_secs,
            expiry_grace_secs: config.expiry_grace_secs,
            dispute_timeout_secs: config.dispute_timeout_secs,
            paused: config.paused,
            oracle_set_version: config.oracle_set_version,
        });
        Ok(())
    }
}
