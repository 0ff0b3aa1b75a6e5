use anchor_lang::prelude::*;
use anchor_spl::token_2022::spl_token_2022::{
    self,
    extension::{
        default_account_state::DefaultAccountState, mint_close_authority::MintCloseAuthority,
        BaseStateWithExtensions, ExtensionType, StateWithExtensions,
    },
    state::AccountState,
};
use anchor_spl::token_interface::{Mint, TokenAccount, TokenInterface};

use crate::errors::TallyError;
use crate::events::MintAccepted;
use crate::state::{seeds, Config, Vault};

#[derive(Accounts)]
pub struct AddMint<'info> {
    #[account(mut)]
    pub admin: Signer<'info>,
    #[account(address = seeds::CONFIG_ADDRESS, has_one = admin @ TallyError::Unauthorized)]
    pub config: Account<'info, Config>,
    #[account(mint::token_program = token_program)]
    pub mint: InterfaceAccount<'info, Mint>,
    #[account(init, payer = admin, space = 8 + Vault::INIT_SPACE, seeds = [seeds::VAULT, mint.key().as_ref()], bump)]
    pub vault: Account<'info, Vault>,
    #[account(
        init,
        payer = admin,
        seeds = [seeds::VAULT_TOKENS, mint.key().as_ref()],
        bump,
        token::mint = mint,
        token::authority = vault,
        token::token_program = token_program,
    )]
    pub vault_tokens: InterfaceAccount<'info, TokenAccount>,
    pub token_program: Interface<'info, TokenInterface>,
    pub system_program: Program<'info, System>,
}

impl AddMint<'_> {
    /// Accepts a mint for payment: creates its vault. Token-2022 mints whose extensions
    /// change amounts in flight or let a third party move escrow are refused.
    pub fn add_mint(ctx: Context<Self>) -> Result<()> {
        check_mint_extensions(&ctx.accounts.mint.to_account_info())?;
        let vault = &mut ctx.accounts.vault;
        vault.set_inner(Vault {
            mint: ctx.accounts.mint.key(),
            token_account: ctx.accounts.vault_tokens.key(),
            token_program: ctx.accounts.token_program.key(),
            escrow_total: 0,
            operator_owed: 0,
            fees_unclaimed: 0,
            total_deposited: 0,
            total_refunded: 0,
            total_claimed: 0,
            total_fees_withdrawn: 0,
            bump: ctx.bumps.vault,
            token_bump: ctx.bumps.vault_tokens,
        });
        emit!(MintAccepted {
            mint: vault.mint,
            vault: vault.key(),
            token_program: vault.token_program,
        });
        Ok(())
    }
}

/// Refuses Token-2022 mints with extensions that break escrow accounting.
pub fn check_mint_extensions(mint: &AccountInfo<'_>) -> Result<()> {
    if *mint.owner != spl_token_2022::ID {
        return Ok(());
    }
    let data = mint.try_borrow_data()?;
    let state = StateWithExtensions::<spl_token_2022::state::Mint>::unpack(&data)?;
    for extension in state.get_extension_types()? {
        match extension {
            ExtensionType::TransferFeeConfig => {
                return Err(TallyError::MintHasTransferFee.at_caller())
            }
            ExtensionType::TransferHook => return Err(TallyError::MintHasTransferHook.at_caller()),
            ExtensionType::ConfidentialTransferMint
            | ExtensionType::ConfidentialTransferFeeConfig
            | ExtensionType::ConfidentialMintBurn => {
                return Err(TallyError::MintHasConfidentialTransfer.at_caller())
            }
            ExtensionType::PermanentDelegate => {
                return Err(TallyError::MintHasPermanentDelegate.at_caller())
            }
            // The close authority can close the mint once its supply is zero and
            // recreate it at the same address with a permanent delegate, which would
            // then drain later deposits. A mint without one (`None`) can never close.
            ExtensionType::MintCloseAuthority => {
                let close = state.get_extension::<MintCloseAuthority>()?;
                if Option::<Pubkey>::from(close.close_authority).is_some() {
                    return Err(TallyError::MintHasCloseAuthority.at_caller());
                }
            }
            // New token accounts, the vault's included, would start frozen.
            ExtensionType::DefaultAccountState => {
                let default = state.get_extension::<DefaultAccountState>()?;
                if default.state == AccountState::Frozen as u8 {
                    return Err(TallyError::MintDefaultAccountStateFrozen.at_caller());
                }
            }
            ExtensionType::NonTransferable
            | ExtensionType::Pausable
            | ExtensionType::ScaledUiAmount
            | ExtensionType::InterestBearingConfig => {
                return Err(TallyError::MintExtensionNotSupported.at_caller())
            }
            _ => {}
        }
    }
    Ok(())
}
