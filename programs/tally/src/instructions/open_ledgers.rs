use anchor_lang::prelude::*;

use crate::events::LedgersOpened;
use crate::state::{seeds, Earnings, Operator, Revenue, Vault};

#[derive(Accounts)]
#[instruction(day: u32)]
pub struct OpenLedgers<'info> {
    /// Pays rent for whichever ledger does not exist yet (usually the oracle).
    #[account(mut)]
    pub payer: Signer<'info>,
    pub operator: Account<'info, Operator>,
    pub vault: Account<'info, Vault>,
    #[account(
        init_if_needed,
        payer = payer,
        space = 8 + Earnings::INIT_SPACE,
        seeds = [seeds::EARNINGS, operator.key().as_ref(), vault.mint.as_ref()],
        bump,
    )]
    pub earnings: Account<'info, Earnings>,
    #[account(
        init_if_needed,
        payer = payer,
        space = 8 + Revenue::INIT_SPACE,
        seeds = [seeds::REVENUE, vault.mint.as_ref(), &day.to_le_bytes()],
        bump,
    )]
    pub revenue: Account<'info, Revenue>,
    pub system_program: Program<'info, System>,
}

impl OpenLedgers<'_> {
    /// Creates, if missing, the ledgers a settlement writes: the operator's earnings
    /// in the vault's mint and the mint's revenue for UTC day `day`. Permissionless
    /// and idempotent; settlement itself then derives no PDA.
    pub fn open_ledgers(ctx: Context<Self>, day: u32) -> Result<()> {
        let mint = ctx.accounts.vault.mint;
        let earnings = &mut ctx.accounts.earnings;
        let earnings_created = earnings.operator == Pubkey::default();
        if earnings_created {
            earnings.operator = ctx.accounts.operator.key();
            earnings.mint = mint;
            earnings.bump = ctx.bumps.earnings;
        }
        let revenue = &mut ctx.accounts.revenue;
        let revenue_created = revenue.mint == Pubkey::default();
        if revenue_created {
            revenue.mint = mint;
            revenue.day = day;
            revenue.bump = ctx.bumps.revenue;
        }
        if earnings_created || revenue_created {
            emit!(LedgersOpened {
                operator: ctx.accounts.operator.key(),
                mint,
                day,
                earnings_created,
                revenue_created,
            });
        }
        Ok(())
    }
}
