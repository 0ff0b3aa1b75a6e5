use anchor_lang::prelude::*;

use crate::errors::TallyError;
use crate::events::OperatorUpdated;
use crate::instructions::OperatorArgs;
use crate::state::Operator;

#[derive(Accounts)]
pub struct UpdateOperator<'info> {
    pub authority: Signer<'info>,
    #[account(mut, has_one = authority @ TallyError::Unauthorized)]
    pub operator: Account<'info, Operator>,
}

impl UpdateOperator<'_> {
    /// Changes an operator's payout owner and node keys.
    pub fn update_operator(ctx: Context<Self>, args: OperatorArgs) -> Result<()> {
        args.validate()?;
        let operator = &mut ctx.accounts.operator;
        operator.payout_owner = args.payout_owner;
        operator.node_keys = args.node_keys;
        emit!(OperatorUpdated {
            operator: operator.key(),
            payout_owner: operator.payout_owner,
            node_keys: operator.node_keys.clone(),
        });
        Ok(())
    }
}
