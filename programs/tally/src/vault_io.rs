//! Token movements in and out of a vault. Every transfer is `transfer_checked` through
//! the token interface, so SPL Token and Token-2022 mints take the same path.
use anchor_lang::prelude::*;
use anchor_spl::token_interface::{self, Mint, TokenAccount, TokenInterface, TransferChecked};

use crate::state::{seeds, Vault};

/// Moves `amount` from a user's token account (signed by `authority`) into the vault.
pub fn deposit<'info>(
    from: &InterfaceAccount<'info, TokenAccount>,
    authority: &Signer<'info>,
    vault_tokens: &InterfaceAccount<'info, TokenAccount>,
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
    )
}

/// Moves `amount` out of the vault, signed by the vault PDA.
pub fn pay_out<'info>(
    vault: &Account<'info, Vault>,
    vault_tokens: &InterfaceAccount<'info, TokenAccount>,
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
    )
}

/// Refunds what is left of a closing job's escrow to the client and books it.
/// Returns the amount refunded.
pub fn refund_escrow<'info>(
    job: &mut crate::state::Job,
    vault: &mut Account<'info, Vault>,
    vault_tokens: &mut InterfaceAccount<'info, TokenAccount>,
    mint: &InterfaceAccount<'info, Mint>,
    client_tokens: &InterfaceAccount<'info, TokenAccount>,
    token_program: &Interface<'info, TokenInterface>,
) -> Result<u64> {
    let refund = job.escrow_left;
    if refund > 0 {
        pay_out(
            vault,
            vault_tokens,
            mint,
            client_tokens,
            token_program,
            refund,
        )?;
    }
    job.escrow_left = 0;
    vault.escrow_total = vault
        .escrow_total
        .checked_sub(refund)
        .ok_or(crate::errors::TallyError::VaultInsolvent)?;
    vault.total_refunded = vault
        .total_refunded
        .checked_add(refund)
        .ok_or(crate::errors::TallyError::AmountOverflow)?;
    vault_tokens.reload()?;
    vault.invariant(vault_tokens.amount)?;
    Ok(refund)
}
