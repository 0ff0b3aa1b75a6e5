use anchor_lang::prelude::*;

use crate::errors::TallyError;
use crate::events::ConfigInitialized;
use crate::program::Tally;
use crate::state::{seeds, Config};

#[derive(AnchorSerialize, AnchorDeserialize, Clone, Debug)]
pub struct InitializeConfigArgs {
    pub treasury: Pubkey,
    pub arbiter: Pubkey,
    pub fee_bps: u16,
    pub challenge_window_secs: u32,
    pub expiry_grace_secs: u32,
    pub dispute_timeout_secs: u32,
    pub oracles: Vec<Pubkey>,
    pub oracle_threshold: u8,
}

#[derive(Accounts)]
pub struct InitializeConfig<'info> {
    /// The program's upgrade authority: only the deployer may create the config, so
    /// nobody can front-run a fresh deployment.
    #[account(mut)]
    pub admin: Signer<'info>,
    #[account(init, payer = admin, space = 8 + Config::INIT_SPACE, seeds = [seeds::CONFIG], bump)]
    pub config: Account<'info, Config>,
    #[account(constraint = program.programdata_address()? == Some(program_data.key()) @ TallyError::NotUpgradeAuthority)]
    pub program: Program<'info, Tally>,
    #[account(constraint = program_data.upgrade_authority_address == Some(admin.key()) @ TallyError::NotUpgradeAuthority)]
    pub program_data: Account<'info, ProgramData>,
    pub system_program: Program<'info, System>,
}

impl InitializeConfig<'_> {
    /// Creates the deployment's config: admin, fee, treasury, windows and oracle set.
    pub fn initialize_config(ctx: Context<Self>, args: InitializeConfigArgs) -> Result<()> {
        let config = &mut ctx.accounts.config;
        config.set_inner(Config {
            admin: ctx.accounts.admin.key(),
            pending_admin: Pubkey::default(),
            treasury: args.treasury,
            arbiter: args.arbiter,
            fee_bps: args.fee_bps,
            challenge_window_secs: args.challenge_window_secs,
            expiry_grace_secs: args.expiry_grace_secs,
            dispute_timeout_secs: args.dispute_timeout_secs,
            paused: false,
            oracle_set_version: 1,
            oracle_threshold: args.oracle_threshold,
            oracles: args.oracles,
            bump: ctx.bumps.config,
        });
        config.invariant()?;
        emit!(ConfigInitialized {
            admin: config.admin,
            treasury: config.treasury,
            fee_bps: config.fee_bps,
            oracle_set_version: config.oracle_set_version,
        });
        Ok(())
    }
}
