use anchor_lang::prelude::*;

use crate::errors::TallyError;

/// A client's job ids. Job addresses are derived from (client, job id), so an id is
/// never reused: `open_job` takes only ids at or above `next_job_id` and moves it
/// past the one opened. A closed job's address therefore never holds another job,
/// and a receipt naming a job address (the oracle-signer path commits to nothing
/// else) can only ever settle that job. Created by the client's first `open_job`
/// and never closed, since closing it would let ids be reused.
#[account]
#[derive(InitSpace, Debug)]
pub struct ClientJobs {
    pub client: Pubkey,
    /// Lowest job id the client may still open (ids only go up).
    pub next_job_id: u64,
    /// Jobs the client has opened; the n-th job's nonce is n.
    pub jobs_opened: u64,
    pub bump: u8,
}

impl ClientJobs {
    /// Takes `job_id` for a new job and returns the job's nonce (unique among the
    /// client's jobs, so two jobs opened in one slot never share it).
    pub fn take(&mut self, job_id: u64) -> Result<u64> {
        ensure!(
            job_id >= self.next_job_id && job_id < u64::MAX,
            TallyError::JobIdUsed
        );
        self.next_job_id = job_id.checked_add(1).ok_or(TallyError::JobIdUsed)?;
        self.jobs_opened = self
            .jobs_opened
            .checked_add(1)
            .ok_or(TallyError::AmountOverflow)?;
        Ok(self.jobs_opened)
    }
}
