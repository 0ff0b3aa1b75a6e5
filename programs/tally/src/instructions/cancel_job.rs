use anchor_lang::prelude::*;
use anchor_spl::token_interface::{Mint, TokenAccount, TokenInterface};

use crate::errors::TallyError;
use crate::state::{Job, JobStatus, Vault};
use crate::vault_io;

#[derive(Accounts)]
pub struct CancelJob<'info> {
    #[account(mut)]
    pub client: Signer<'info>,
    #[account(mint::token_program = token_program)]
    pub mint: InterfaceAccount<'info, Mint>,
    #[account(mut, has_one = mint @ TallyError::WrongMint)]
    pub vault: Account<'info, Vault>,
    #[account(mut, address = vault.token_account)]
    pub vault_tokens: InterfaceAccount<'info, TokenAccount>,
    #[account(mut, token::mint = mint, token::authority = client, token::token_program = token_program)]
    pub client_tokens: InterfaceAccount<'info, TokenAccount>,
    #[account(mut, close = client, has_one = client @ TallyError::Unauthorized, has_one = mint @ TallyError::JobMismatch)]
    pub job: AccountLoader<'info, Job>,
    pub token_program: Interface<'info, TokenInterface>,
}

impl CancelJob<'_> {
    /// Cancels a job with no settled usage: the whole escrow goes back to the client
    /// and the job is closed. Works while paused.
    pub fn cancel_job(ctx: Context<Self>) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        let job_key = accounts.job.key();
        let mut job = accounts.job.load_mut()?;
        job.require_live()?;
        ensure!(
            job.status() == JobStatus::Open && job.last_seq == 0,
            TallyError::JobHasUsage
        );
        // No usage, so nothing to dispute: the account closes now (`close = client`).
        vault_io::end_job(
            job_key,
            &mut job,
            JobStatus::Cancelled,
            &mut accounts.vault,
            &mut accounts.vault_tokens,
            &accounts.mint,
            &accounts.client_tokens,
            &accounts.token_program,
        )
    }
}
