use anchor_lang::prelude::*;

use crate::errors::TallyError;
use crate::events::{AdminTransferAccepted, AdminTransferProposed};
use crate::state::{seeds, Config};

#[derive(Accounts)]
pub struct ProposeAdmin<'info> {
    pub admin: Signer<'info>,
    #[account(mut, address = seeds::CONFIG_ADDRESS, has_one = admin @ TallyError::Unauthorized)]
    pub config: Account<'info, Config>,
}

impl ProposeAdmin<'_> {
    /// Step one of an admin transfer: name the next admin (default key cancels).
    pub fn propose_admin(ctx: Context<Self>, new_admin: Pubkey) -> Result<()> {
        let config = &mut ctx.accounts.config;
        config.pending_admin = new_admin;
        emit!(AdminTransferProposed {
            admin: config.admin,
            pending_admin: new_admin,
        });
        Ok(())
    }
}

#[derive(Accounts)]
pub struct AcceptAdmin<'info> {
    pub new_admin: Signer<'info>,
    #[account(mut, address = seeds::CONFIG_ADDRESS)]
    pub config: Account<'info, Config>,
}

impl AcceptAdmin<'_> {
    /// Step two: the proposed admin signs and takes over.
    pub fn accept_admin(ctx: Context<Self>) -> Result<()> {
        let config = &mut ctx.accounts.config;
        ensure!(
            config.pending_admin != Pubkey::default(),
            TallyError::NoPendingAdmin
        );
        require_keys_eq!(
            config.pending_admin,
            ctx.accounts.new_admin.key(),
            TallyError::Unauthorized
        );
        let previous_admin = config.admin;
        config.admin = config.pending_admin;
        config.pending_admin = Pubkey::default();
        emit!(AdminTransferAccepted {
            previous_admin,
            admin: config.admin,
        });
        Ok(())
    }
}
