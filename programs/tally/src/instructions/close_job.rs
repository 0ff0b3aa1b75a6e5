use anchor_lang::prelude::*;

use crate::errors::TallyError;
use crate::events::JobAccountClosed;
use crate::state::Job;

#[derive(Accounts)]
pub struct CloseJob<'info> {
    /// Anyone may close an ended job once it is no longer disputable: the rent goes
    /// to the job's client either way.
    pub closer: Signer<'info>,
    #[account(mut, has_one = client @ TallyError::JobMismatch)]
    pub job: AccountLoader<'info, Job>,
    /// Receives the job's rent.
    /// CHECK: must be the job's client (has_one above).
    #[account(mut)]
    pub client: UncheckedAccount<'info>,
}

impl CloseJob<'_> {
    /// Closes a completed or expired job whose operator share has left the challenge
    /// window (so the client can no longer dispute it) and which has no open
    /// dispute; the rent goes back to the client.
    pub fn close_job(ctx: Context<Self>) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        let now = Clock::get()?.unix_timestamp;
        let job_key = accounts.job.key();
        let mut job = accounts.job.load_mut()?;
        ensure!(job.status().is_finished(), TallyError::JobNotFinished);
        ensure!(job.disputed_amount == 0, TallyError::DisputeActive);
        ensure!(
            !job.in_challenge_window(now)?,
            TallyError::JobInChallengeWindow
        );
        emit!(JobAccountClosed {
            job: job_key,
            client: job.client,
            status: job.status,
        });
        drop(job);
        accounts.job.close(accounts.client.to_account_info())
    }
}
