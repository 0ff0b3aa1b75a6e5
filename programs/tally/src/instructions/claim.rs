use anchor_lang::prelude::*;
use anchor_spl::token_interface::{Mint, TokenAccount, TokenInterface};

use crate::errors::TallyError;
use crate::events::EarningsClaimed;
use crate::state::{Earnings, Operator, Vault};
use crate::vault_io;

#[derive(Accounts)]
pub struct Claim<'info> {
    pub authority: Signer<'info>,
    #[account(has_one = authority @ TallyError::Unauthorized)]
    pub operator: Account<'info, Operator>,
    #[account(mint::token_program = token_program)]
    pub mint: InterfaceAccount<'info, Mint>,
    #[account(mut, has_one = mint @ TallyError::WrongMint)]
    pub vault: Account<'info, Vault>,
    #[account(mut, address = vault.token_account)]
    pub vault_tokens: InterfaceAccount<'info, TokenAccount>,
    #[account(mut, has_one = operator @ TallyError::WrongLedger, has_one = mint @ TallyError::WrongLedger)]
    pub earnings: Account<'info, Earnings>,
    #[account(mut, token::mint = mint, token::authority = operator.payout_owner, token::token_program = token_program)]
    pub payout_tokens: InterfaceAccount<'info, TokenAccount>,
    pub token_program: Interface<'info, TokenInterface>,
}

impl Claim<'_> {
    /// Pays an operator everything that has matured in one mint, over all its jobs,
    /// to a token account of its payout owner. Works while paused.
    pub fn claim(ctx: Context<Self>) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        let now = Clock::get()?.unix_timestamp;
        let earnings = &mut accounts.earnings;
        earnings.mature(now)?;
        let amount = earnings.claimable;
        ensure!(amount > 0, TallyError::NothingToClaim);
        earnings.claimable = 0;
        earnings.total_claimed = earnings.total_claimed.saturating_add(amount);
        let vault = &mut accounts.vault;
        vault.operator_owed = vault
            .operator_owed
            .checked_sub(amount)
            .ok_or(TallyError::VaultInsolvent)?;
        vault.total_claimed = vault.total_claimed.saturating_add(amount);
        vault_io::pay_out(
            vault,
            &mut accounts.vault_tokens,
            &accounts.mint,
            &accounts.payout_tokens,
            &accounts.token_program,
            amount,
        )?;
        emit!(EarningsClaimed {
            operator: accounts.operator.key(),
            mint: accounts.mint.key(),
            amount,
            destination: accounts.payout_tokens.key(),
        });
        Ok(())
    }
}
