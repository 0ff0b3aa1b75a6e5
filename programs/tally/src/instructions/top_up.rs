use anchor_lang::prelude::*;
use anchor_spl::token_interface::{Mint, TokenAccount, TokenInterface};

use crate::errors::TallyError;
use crate::events::JobToppedUp;
use crate::state::{seeds, Config, Job, Vault};
use crate::vault_io;

#[derive(Accounts)]
pub struct TopUp<'info> {
    pub client: Signer<'info>,
    #[account(address = seeds::CONFIG_ADDRESS)]
    pub config: Account<'info, Config>,
    #[account(mint::token_program = token_program)]
    pub mint: InterfaceAccount<'info, Mint>,
    #[account(mut, has_one = mint @ TallyError::WrongMint)]
    pub vault: Account<'info, Vault>,
    #[account(mut, address = vault.token_account)]
    pub vault_tokens: InterfaceAccount<'info, TokenAccount>,
    #[account(mut, token::mint = mint, token::authority = client, token::token_program = token_program)]
    pub client_tokens: InterfaceAccount<'info, TokenAccount>,
    #[account(mut, has_one = client @ TallyError::Unauthorized, has_one = mint @ TallyError::JobMismatch)]
    pub job: AccountLoader<'info, Job>,
    pub token_program: Interface<'info, TokenInterface>,
}

impl TopUp<'_> {
    /// Adds `amount` to a job's escrow (before its deadline).
    pub fn top_up(ctx: Context<Self>, amount: u64) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        ensure!(!accounts.config.paused, TallyError::Paused);
        ensure!(amount > 0, TallyError::ZeroAmount);
        let now = Clock::get()?.unix_timestamp;
        let mut job = accounts.job.load_mut()?;
        job.require_live()?;
        ensure!(now <= job.deadline, TallyError::JobExpired);

        vault_io::deposit(
            &accounts.client_tokens,
            &accounts.client,
            &mut accounts.vault,
            &mut accounts.vault_tokens,
            &accounts.mint,
            &accounts.token_program,
            amount,
        )?;
        job.deposited = job
            .deposited
            .checked_add(amount)
            .ok_or(TallyError::AmountOverflow)?;
        job.escrow_left = job
            .escrow_left
            .checked_add(amount)
            .ok_or(TallyError::AmountOverflow)?;
        emit!(JobToppedUp {
            job: accounts.job.key(),
            amount,
            escrow_left: job.escrow_left,
        });
        Ok(())
    }
}
