use anchor_lang::prelude::*;
use anchor_spl::token_interface::{Mint, TokenAccount, TokenInterface};

use crate::errors::TallyError;
use crate::instructions::settle::attested;
use crate::receipt::SettleReceipt;
use crate::settlement::{Ledgers, SettleTotals};
use crate::state::{seeds, Config, Earnings, Job, JobStatus, Revenue, Vault};
use crate::vault_io;

#[derive(AnchorSerialize, AnchorDeserialize, Clone, Debug)]
pub struct CompleteJobArgs {
    pub oracle_set_version: u32,
    /// Oracle signers beyond `oracle`, passed as the remaining accounts.
    pub extra_oracle_signers: u8,
    /// The job's final cumulative receipt (may repeat the last settled one).
    pub receipt: SettleReceipt,
}

/// The earnings and revenue ledgers must exist (`open_ledgers`), as for `settle`.
#[derive(Accounts)]
pub struct CompleteJob<'info> {
    pub oracle: Signer<'info>,
    #[account(address = seeds::CONFIG_ADDRESS)]
    pub config: Box<Account<'info, Config>>,
    #[account(mint::token_program = token_program)]
    pub mint: Box<InterfaceAccount<'info, Mint>>,
    #[account(mut, has_one = mint @ TallyError::WrongMint)]
    pub vault: Box<Account<'info, Vault>>,
    #[account(mut, address = vault.token_account)]
    pub vault_tokens: Box<InterfaceAccount<'info, TokenAccount>>,
    #[account(
        mut,
        constraint = earnings.mint == mint.key() @ TallyError::WrongLedger,
    )]
    pub earnings: Box<Account<'info, Earnings>>,
    #[account(mut, constraint = revenue.mint == mint.key() @ TallyError::WrongLedger)]
    pub revenue: Box<Account<'info, Revenue>>,
    /// Closed here unless its share is still disputable (then by `close_job`).
    #[account(
        mut,
        has_one = client @ TallyError::JobMismatch,
        has_one = mint @ TallyError::JobMismatch,
    )]
    pub job: AccountLoader<'info, Job>,
    /// Receives the job's rent.
    /// CHECK: must be the job's client (has_one above).
    #[account(mut)]
    pub client: UncheckedAccount<'info>,
    #[account(mut, token::mint = mint, token::authority = client, token::token_program = token_program)]
    pub client_tokens: Box<InterfaceAccount<'info, TokenAccount>>,
    pub token_program: Interface<'info, TokenInterface>,
}

impl<'info> CompleteJob<'info> {
    /// Settles a job's final receipt, refunds the escrow left to the client and
    /// closes the job (rent back to the client).
    pub fn complete_job(ctx: Context<'info, Self>, args: CompleteJobArgs) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        let rest = attested(
            &accounts.config,
            accounts.oracle.as_ref(),
            ctx.remaining_accounts,
            args.extra_oracle_signers,
            args.oracle_set_version,
        )?;
        ensure!(rest.is_empty(), TallyError::ReceiptCountMismatch);

        let now = Clock::get()?.unix_timestamp;
        let operator_key = accounts.earnings.operator;
        let job_key = accounts.job.key();
        let mut job = accounts.job.load_mut()?;
        // Both branches below refund out of this vault and close the job: it must be
        // this operator's job in this mint even when there is nothing new to settle
        // (then `Ledgers::apply`, which checks it too, does not run).
        require_keys_eq!(job.operator, operator_key, TallyError::JobMismatch);
        job.require_live()?;
        ensure!(job.disputed_amount == 0, TallyError::DisputeActive);
        {
            let mut ledgers = Ledgers {
                config: &accounts.config,
                vault: &mut accounts.vault,
                earnings: &mut accounts.earnings,
                revenue: &mut accounts.revenue,
            };
            ledgers.check_day(now)?;
            let mut totals = SettleTotals::default();
            // The final receipt may repeat the last settled seq (nothing new to pay).
            if args.receipt.seq > job.last_seq {
                ledgers.apply(
                    job_key,
                    &mut job,
                    operator_key,
                    &args.receipt,
                    now,
                    &mut totals,
                )?;
            } else {
                ensure!(
                    args.receipt.seq == job.last_seq
                        && args.receipt.cumulative_units == job.settled_units
                        && args.receipt.cumulative_output == job.settled_output,
                    TallyError::NonIncreasingUsage
                );
                ensure!(
                    now <= job.settle_until(accounts.config.expiry_grace_secs),
                    TallyError::JobExpired
                );
            }
            ledgers.post(&totals, now)?;
        }
        vault_io::end_job(
            job_key,
            &mut job,
            JobStatus::Completed,
            &mut accounts.vault,
            &mut accounts.vault_tokens,
            &accounts.mint,
            &accounts.client_tokens,
            &accounts.token_program,
        )?;
        // Closing now would end the client's right to dispute what this job paid
        // and has not matured: the account then stays until `close_job`.
        let disputable = job.in_challenge_window(now)?;
        drop(job);
        if !disputable {
            accounts.job.close(accounts.client.to_account_info())?;
        }
        Ok(())
    }
}
