use anchor_lang::prelude::*;
use anchor_lang::system_program::{transfer, Transfer};
use anchor_lang::Discriminator;

use crate::errors::TallyError;
use crate::events::AccountUpgraded;
use crate::state::{Job, Revenue};

/// Brings one account written by an older program version up to date, in place:
///
/// - a layout-v1 [`Job`] (one price per unit over prompt + completion, no model):
///   grows by 48 bytes; `input_price` becomes the old unit price × 10^6 (prices are
///   now per million units), a token job's `output_price` the same (the old price
///   covered output tokens too, so the job pays exactly what it did), and the model
///   stays unbound (any). Its settled units count as input: later receipts carry the
///   output counter from 0, and with equal prices how units split cannot change what
///   is owed.
/// - a layout-v1 [`Revenue`] day: grows by 8 bytes (`output_units` = 0).
///
/// Permissionless and deterministic (anyone may run it; the payer funds the extra
/// rent); an up-to-date account is refused, so it never runs twice on one account.
#[derive(Accounts)]
pub struct UpgradeAccount<'info> {
    #[account(mut)]
    pub payer: Signer<'info>,
    /// CHECK: owned by this program; its discriminator and length are checked below.
    #[account(mut, owner = crate::ID @ TallyError::AccountUpToDate)]
    pub account: UncheckedAccount<'info>,
    pub system_program: Program<'info, System>,
}

impl UpgradeAccount<'_> {
    pub fn upgrade_account(ctx: Context<Self>) -> Result<()> {
        let info = ctx.accounts.account.to_account_info();
        let (kind, new_len) = {
            let data = info.try_borrow_data()?;
            let disc = data.get(..8).ok_or(TallyError::AccountUpToDate)?;
            if disc == Job::DISCRIMINATOR && data.len() == Job::V1_ACCOUNT_SIZE {
                ("job", Job::ACCOUNT_SIZE)
            } else if disc == Revenue::DISCRIMINATOR && data.len() == Revenue::V1_ACCOUNT_SIZE {
                ("revenue", 8usize.saturating_add(Revenue::INIT_SPACE))
            } else {
                return Err(TallyError::AccountUpToDate.at_caller());
            }
        };
        let rent = Rent::get()?.minimum_balance(new_len);
        let missing = rent.saturating_sub(info.lamports());
        if missing > 0 {
            transfer(
                CpiContext::new(
                    ctx.accounts.system_program.key(),
                    Transfer {
                        from: ctx.accounts.payer.to_account_info(),
                        to: info.clone(),
                    },
                ),
                missing,
            )?;
        }
        info.resize(new_len)?;
        if kind == "job" {
            let mut data = info.try_borrow_mut_data()?;
            let body = data
                .get_mut(8..Job::ACCOUNT_SIZE)
                .ok_or(TallyError::AccountUpToDate)?;
            bytemuck::try_from_bytes_mut::<Job>(body)
                .map_err(|_| TallyError::AccountUpToDate.at_caller())?
                .convert_v1_prices()?;
        }
        emit!(AccountUpgraded {
            account: info.key(),
            kind: kind.to_string(),
            from_version: 1,
            to_version: 2,
        });
        Ok(())
    }
}
