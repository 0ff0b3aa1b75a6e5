use anchor_lang::prelude::*;
use anchor_spl::token_interface::{Mint, TokenAccount, TokenInterface};

use crate::errors::TallyError;
use crate::events::{DisputeOpened, DisputeResolved};
use crate::state::{seeds, take_matured, Config, Earnings, Job, Vault};
use crate::vault_io;

#[derive(Accounts)]
pub struct DisputeJob<'info> {
    pub client: Signer<'info>,
    #[account(address = seeds::CONFIG_ADDRESS)]
    pub config: Account<'info, Config>,
    #[account(mut, has_one = client @ TallyError::Unauthorized)]
    pub job: AccountLoader<'info, Job>,
    #[account(mut)]
    pub earnings: Account<'info, Earnings>,
}

impl DisputeJob<'_> {
    /// The client disputes what was settled on its job within the challenge window:
    /// the operator's unmatured share of it is frozen until the arbiter splits it, or
    /// until the dispute timeout, after which it goes to the operator.
    pub fn dispute_job(ctx: Context<Self>) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        let now = Clock::get()?.unix_timestamp;
        let job_key = accounts.job.key();
        let mut job = accounts.job.load_mut()?;
        let earnings = &mut accounts.earnings;
        ensure!(
            earnings.operator == job.operator && earnings.mint == job.mint,
            TallyError::WrongLedger
        );
        ensure!(job.disputed_amount == 0, TallyError::DisputeActive);
        earnings.mature(now)?;
        take_matured(&mut job.pending, now)?;
        let amount = earnings.freeze(&job.pending)?;
        ensure!(amount > 0, TallyError::NothingToDispute);
        job.pending = Default::default();
        job.disputed_amount = amount;
        job.dispute_deadline = now
            .checked_add(i64::from(accounts.config.dispute_timeout_secs))
            .ok_or(TallyError::AmountOverflow)?;
        emit!(DisputeOpened {
            job: job_key,
            client: job.client,
            amount,
            deadline: job.dispute_deadline,
        });
        Ok(())
    }
}

#[derive(Accounts)]
pub struct ResolveDispute<'info> {
    /// The arbiter; or, after the dispute timeout, anyone (default outcome).
    pub resolver: Signer<'info>,
    #[account(address = seeds::CONFIG_ADDRESS)]
    pub config: Account<'info, Config>,
    #[account(mut)]
    pub job: AccountLoader<'info, Job>,
    #[account(mut)]
    pub earnings: Account<'info, Earnings>,
    #[account(mint::token_program = token_program)]
    pub mint: InterfaceAccount<'info, Mint>,
    #[account(mut, has_one = mint @ TallyError::WrongMint)]
    pub vault: Account<'info, Vault>,
    #[account(mut, address = vault.token_account)]
    pub vault_tokens: InterfaceAccount<'info, TokenAccount>,
    #[account(mut, token::mint = mint, token::token_program = token_program)]
    pub client_tokens: InterfaceAccount<'info, TokenAccount>,
    pub token_program: Interface<'info, TokenInterface>,
}

impl ResolveDispute<'_> {
    /// Ends a dispute: the arbiter refunds `client_share` of the frozen amount to the
    /// client and releases the rest to the operator (claimable at once). After the
    /// timeout anyone may close it with the default outcome: everything to the
    /// operator (`client_share` must then be 0).
    pub fn resolve_dispute(ctx: Context<Self>, client_share: u64) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        let now = Clock::get()?.unix_timestamp;
        let job_key = accounts.job.key();
        let mut job = accounts.job.load_mut()?;
        let earnings = &mut accounts.earnings;
        ensure!(
            earnings.operator == job.operator && earnings.mint == job.mint,
            TallyError::WrongLedger
        );
        require_keys_eq!(job.mint, accounts.mint.key(), TallyError::JobMismatch);
        require_keys_eq!(
            accounts.client_tokens.owner,
            job.client,
            TallyError::WrongTokenAccount
        );
        let disputed = job.disputed_amount;
        ensure!(disputed > 0, TallyError::NoDispute);
        let by_arbiter = accounts.resolver.key() == accounts.config.arbiter;
        ensure!(
            by_arbiter || now > job.dispute_deadline,
            TallyError::DisputeNotExpired
        );
        ensure!(
            client_share <= disputed && (by_arbiter || client_share == 0),
            TallyError::InvalidSplit
        );
        let to_operator = disputed
            .checked_sub(client_share)
            .ok_or(TallyError::InvalidSplit)?;
        earnings.frozen = earnings
            .frozen
            .checked_sub(disputed)
            .ok_or(TallyError::LedgerMismatch)?;
        earnings.claimable = earnings
            .claimable
            .checked_add(to_operator)
            .ok_or(TallyError::AmountOverflow)?;
        job.disputed_amount = 0;
        job.dispute_deadline = 0;
        let vault = &mut accounts.vault;
        vault.operator_owed = vault
            .operator_owed
            .checked_sub(client_share)
            .ok_or(TallyError::VaultInsolvent)?;
        vault.total_refunded = vault.total_refunded.saturating_add(client_share);
        if client_share > 0 {
            vault_io::pay_out(
                vault,
                &mut accounts.vault_tokens,
                &accounts.mint,
                &accounts.client_tokens,
                &accounts.token_program,
                client_share,
            )?;
        }
        emit!(DisputeResolved {
            job: job_key,
            to_client: client_share,
            to_operator,
            by_arbiter,
        });
        Ok(())
    }
}
