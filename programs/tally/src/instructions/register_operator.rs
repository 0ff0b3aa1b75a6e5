use anchor_lang::prelude::*;

use crate::errors::TallyError;
use crate::events::OperatorRegistered;
use crate::state::{seeds, Operator, MAX_NODE_KEYS};

#[derive(AnchorSerialize, AnchorDeserialize, Clone, Debug)]
pub struct OperatorArgs {
    /// Owner of the token accounts claims are paid to.
    pub payout_owner: Pubkey,
    /// Keys that sign the operator's node reports (at most 4).
    pub node_keys: Vec<Pubkey>,
}

impl OperatorArgs {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.node_keys.len() <= MAX_NODE_KEYS,
            TallyError::TooManyNodeKeys
        );
        Ok(())
    }
}

#[derive(Accounts)]
pub struct RegisterOperator<'info> {
    #[account(mut)]
    pub authority: Signer<'info>,
    #[account(init, payer = authority, space = 8 + Operator::INIT_SPACE, seeds = [seeds::OPERATOR, authority.key().as_ref()], bump)]
    pub operator: Account<'info, Operator>,
    pub system_program: Program<'info, System>,
}

impl RegisterOperator<'_> {
    /// Registers a GPU operator under its authority key.
    pub fn register_operator(ctx: Context<Self>, args: OperatorArgs) -> Result<()> {
        args.validate()?;
        let operator = &mut ctx.accounts.operator;
        operator.set_inner(Operator {
            authority: ctx.accounts.authority.key(),
            payout_owner: args.payout_owner,
            node_keys: args.node_keys,
            jobs_opened: 0,
            bump: ctx.bumps.operator,
        });
        emit!(OperatorRegistered {
            operator: operator.key(),
            authority: operator.authority,
            payout_owner: operator.payout_owner,
        });
        Ok(())
    }
}
