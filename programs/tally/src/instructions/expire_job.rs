use anchor_lang::prelude::*;
use anchor_spl::token_interface::{Mint, TokenAccount, TokenInterface};

use crate::errors::TallyError;
use crate::state::{seeds, Config, Job, JobStatus, Vault};
use crate::vault_io;

#[derive(Accounts)]
pub struct ExpireJob<'info> {
    /// Anyone may expire a job once its deadline and grace have passed.
    pub cranker: Signer<'info>,
    #[account(address = seeds::CONFIG_ADDRESS)]
    pub config: Account<'info, Config>,
    #[account(mint::token_program = token_program)]
    pub mint: InterfaceAccount<'info, Mint>,
    #[account(mut, has_one = mint @ TallyError::WrongMint)]
    pub vault: Account<'info, Vault>,
    #[account(mut, address = vault.token_account)]
    pub vault_tokens: InterfaceAccount<'info, TokenAccount>,
    /// Closed here unless its share is still disputable (then by `close_job`).
    #[account(mut, has_one = client @ TallyError::JobMismatch, has_one = mint @ TallyError::JobMismatch)]
    pub job: AccountLoader<'info, Job>,
    /// Receives the job's rent.
    /// CHECK: must be the job's client (has_one above).
    #[account(mut)]
    pub client: UncheckedAccount<'info>,
    #[account(mut, token::mint = mint, token::authority = client, token::token_program = token_program)]
    pub client_tokens: InterfaceAccount<'info, TokenAccount>,
    pub token_program: Interface<'info, TokenInterface>,
}

impl ExpireJob<'_> {
    /// After a job's deadline plus grace, refunds its escrow left to the client and
    /// closes it. Works while paused.
    pub fn expire_job(ctx: Context<Self>) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        let now = Clock::get()?.unix_timestamp;
        let job_key = accounts.job.key();
        let mut job = accounts.job.load_mut()?;
        job.require_live()?;
        ensure!(
            now > job.settle_until(accounts.config.expiry_grace_secs),
            TallyError::JobNotExpired
        );
        ensure!(job.disputed_amount == 0, TallyError::DisputeActive);
        vault_io::end_job(
            job_key,
            &mut job,
            JobStatus::Expired,
            &mut accounts.vault,
            &mut accounts.vault_tokens,
            &accounts.mint,
            &accounts.client_tokens,
            &accounts.token_program,
        )?;
        // As in complete_job: a share still disputable keeps the account.
        let disputable = job.in_challenge_window(now)?;
        drop(job);
        if !disputable {
            accounts.job.close(accounts.client.to_account_info())?;
        }
        Ok(())
    }
}
