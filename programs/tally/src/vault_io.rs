//! Token movements in and out of a vault. Every transfer is `transfer_checked` through
//! the token interface, so SPL Token and Token-2022 mints take the same path, and every
//! movement ends with the vault's solvency check against its real token balance.
use anchor_lang::prelude::*;
use anchor_spl::token_interface::{self, Mint, TokenAccount, TokenInterface, TransferChecked};

use crate::errors::TallyError;
use crate::events::JobClosed;
use crate::state::{seeds, Job, JobStatus, Vault};

/// Moves `amount` from a client's token account (signed by `authority`) into the
/// vault and books it as escrow.
pub fn deposit<'info>(
    from: &InterfaceAccount<'info, TokenAccount>,
    authority: &Signer<'info>,
    vault: &mut Account<'info, Vault>,
    vault_tokens: &mut InterfaceAccount<'info, TokenAccount>,
    mint: &InterfaceAccount<'info, Mint>,
    token_program: &Interface<'info, TokenInterface>,
    amount: u64,
) -> Result<()> {
    let accounts = TransferChecked {
        from: from.to_account_info(),
        mint: mint.to_account_info(),
        to: vault_tokens.to_account_info(),
        authority: authority.to_account_info(),
    };
    token_interface::transfer_checked(
        CpiContext::new(token_program.key(), accounts),
        amount,
        mint.decimals,
    )?;
    vault.escrow_total = vault
        .escrow_total
        .checked_add(amount)
        .ok_or(TallyError::AmountOverflow)?;
    // A statistic: it saturates rather than ever refusing a deposit.
    vault.total_deposited = vault.total_deposited.saturating_add(amount);
    vault_tokens.reload()?;
    vault.invariant(vault_tokens.amount)
}

/// Moves `amount` out of the vault, signed by the vault PDA. The caller has already
/// taken `amount` off the vault's books.
pub fn pay_out<'info>(
    vault: &Account<'info, Vault>,
    vault_tokens: &mut InterfaceAccount<'info, TokenAccount>,
    mint: &InterfaceAccount<'info, Mint>,
    to: &InterfaceAccount<'info, TokenAccount>,
    token_program: &Interface<'info, TokenInterface>,
    amount: u64,
) -> Result<()> {
    let mint_key = mint.key();
    let signer_seeds: &[&[&[u8]]] = &[&[seeds::VAULT, mint_key.as_ref(), &[vault.bump]]];
    let accounts = TransferChecked {
        from: vault_tokens.to_account_info(),
        mint: mint.to_account_info(),
        to: to.to_account_info(),
        authority: vault.to_account_info(),
    };
    token_interface::transfer_checked(
        CpiContext::new_with_signer(token_program.key(), accounts, signer_seeds),
        amount,
        mint.decimals,
    )?;
    vault_tokens.reload()?;
    vault.invariant(vault_tokens.amount)
}

/// Ends a job: refunds what is left of its escrow to the client, books it, records
/// the terminal `status` and emits `JobClosed`. The instruction closes the account
/// (see [`crate::state::Job::in_challenge_window`]).
pub fn end_job<'info>(
    job_key: Pubkey,
    job: &mut Job,
    status: JobStatus,
    vault: &mut Account<'info, Vault>,
    vault_tokens: &mut InterfaceAccount<'info, TokenAccount>,
    mint: &InterfaceAccount<'info, Mint>,
    client_tokens: &InterfaceAccount<'info, TokenAccount>,
    token_program: &Interface<'info, TokenInterface>,
) -> Result<()> {
    let refunded = job.escrow_left;
    job.escrow_left = 0;
    job.status = status as u8;
    vault.escrow_total = vault
        .escrow_total
        .checked_sub(refunded)
        .ok_or(TallyError::VaultInsolvent)?;
    vault.total_refunded = vault.total_refunded.saturating_add(refunded);
    if refunded > 0 {
        pay_out(
            vault,
            vault_tokens,
            mint,
            client_tokens,
            token_program,
            refunded,
        )?;
    }
    emit!(JobClosed {
        job: job_key,
        client: job.client,
        status: status as u8,
        refunded,
        settled_units: job.settled_units,
        settled_output: job.settled_output,
        settled_gross: job.settled_gross,
    });
    Ok(())
}
