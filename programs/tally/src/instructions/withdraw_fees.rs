use anchor_lang::prelude::*;
use anchor_spl::token_interface::{Mint, TokenAccount, TokenInterface};

use crate::errors::TallyError;
use crate::events::FeesWithdrawn;
use crate::state::{seeds, Config, Vault};
use crate::vault_io;

#[derive(Accounts)]
pub struct WithdrawFees<'info> {
    pub treasury: Signer<'info>,
    #[account(address = seeds::CONFIG_ADDRESS, has_one = treasury @ TallyError::Unauthorized)]
    pub config: Account<'info, Config>,
    #[account(mint::token_program = token_program)]
    pub mint: InterfaceAccount<'info, Mint>,
    #[account(mut, has_one = mint @ TallyError::WrongMint)]
    pub vault: Account<'info, Vault>,
    #[account(mut, address = vault.token_account)]
    pub vault_tokens: InterfaceAccount<'info, TokenAccount>,
    #[account(mut, token::mint = mint, token::token_program = token_program)]
    pub destination: InterfaceAccount<'info, TokenAccount>,
    pub token_program: Interface<'info, TokenInterface>,
}

impl WithdrawFees<'_> {
    /// Sends all unclaimed protocol fees of a mint to a token account of the treasury's
    /// choosing.
    pub fn withdraw_fees(ctx: Context<Self>) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        let vault = &mut accounts.vault;
        let amount = vault.fees_unclaimed;
        ensure!(amount > 0, TallyError::NothingToWithdraw);
        vault.fees_unclaimed = 0;
        vault.total_fees_withdrawn = vault.total_fees_withdrawn.saturating_add(amount);
        vault_io::pay_out(
            vault,
            &mut accounts.vault_tokens,
            &accounts.mint,
            &accounts.destination,
            &accounts.token_program,
            amount,
        )?;
        emit!(FeesWithdrawn {
            mint: accounts.mint.key(),
            amount,
            destination: accounts.destination.key(),
        });
        Ok(())
    }
}
