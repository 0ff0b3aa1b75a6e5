use anchor_lang::prelude::*;
use anchor_lang::solana_program::bpf_loader_upgradeable;

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

/// The upgradeable loader's states are bincode: a u32 variant tag, then the fields.
/// Read by hand, the few bytes needed here do not pull bincode's serde machinery
/// (and its float formatting, ~80 KB of code) into the program.
const LOADER_PROGRAM: u32 = 2;
const LOADER_PROGRAM_DATA: u32 = 3;

fn loader_tag(data: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(..4)?.try_into().ok()?))
}

fn pubkey_at(data: &[u8], at: usize) -> Option<Pubkey> {
    let bytes: [u8; 32] = data.get(at..)?.get(..32)?.try_into().ok()?;
    Some(Pubkey::new_from_array(bytes))
}

/// `Program { programdata_address }`: the address of the program's ProgramData.
fn programdata_address(program: &[u8]) -> Option<Pubkey> {
    (loader_tag(program)? == LOADER_PROGRAM).then(|| pubkey_at(program, 4))?
}

/// `ProgramData { slot: u64, upgrade_authority_address: Option<Pubkey> }`: the
/// authority, `None` when the program is immutable (or the data is not ProgramData).
fn upgrade_authority(program_data: &[u8]) -> Option<Pubkey> {
    if loader_tag(program_data)? != LOADER_PROGRAM_DATA || *program_data.get(12)? != 1 {
        return None;
    }
    pubkey_at(program_data, 13)
}

#[derive(Accounts)]
pub struct InitializeConfig<'info> {
    /// The program's upgrade authority: only the deployer may create the config, so
    /// nobody can front-run a fresh deployment.
    #[account(mut)]
    pub admin: Signer<'info>,
    #[account(init, payer = admin, space = 8 + Config::INIT_SPACE, seeds = [seeds::CONFIG], bump)]
    pub config: Account<'info, Config>,
    #[account(constraint = programdata_address(&program.try_borrow_data()?) == Some(program_data.key()) @ TallyError::NotUpgradeAuthority)]
    pub program: Program<'info, Tally>,
    /// This program's ProgramData, whose upgrade authority must be `admin`.
    /// CHECK: owned by the upgradeable loader, named by `program`, read by hand.
    #[account(
        owner = bpf_loader_upgradeable::ID @ TallyError::NotUpgradeAuthority,
        constraint = upgrade_authority(&program_data.try_borrow_data()?) == Some(admin.key()) @ TallyError::NotUpgradeAuthority,
    )]
    pub program_data: UncheckedAccount<'info>,
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
