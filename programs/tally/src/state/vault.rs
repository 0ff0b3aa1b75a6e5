use anchor_lang::prelude::*;

use crate::errors::TallyError;

/// The ledger of one accepted mint. Its token account (`["vault_tokens", mint]`)
/// holds every token of that mint the program owes anyone. Settlement moves amounts
/// between the three buckets below; only deposits, refunds, claims and fee
/// withdrawals move tokens. Solvency: token balance == escrow + owed + fees.
#[account]
#[derive(InitSpace, Debug)]
pub struct Vault {
    pub mint: Pubkey,
    /// The vault's token account.
    pub token_account: Pubkey,
    /// Token program of the mint (SPL Token or Token-2022).
    pub token_program: Pubkey,
    /// Sum of `escrow_left` over open jobs of this mint.
    pub escrow_total: u64,
    /// Settled to operators and not yet claimed (matured or not).
    pub operator_owed: u64,
    /// Protocol fees not yet withdrawn.
    pub fees_unclaimed: u64,
    /// Lifetime totals, for audits. Statistics only: they saturate at `u64::MAX`
    /// (open + cancel in a loop would otherwise fill them and block every deposit).
    pub total_deposited: u64,
    pub total_refunded: u64,
    pub total_claimed: u64,
    pub total_fees_withdrawn: u64,
    pub bump: u8,
    pub token_bump: u8,
}

impl Vault {
    /// What the token account must hold.
    pub fn liabilities(&self) -> Result<u64> {
        self.escrow_total
            .checked_add(self.operator_owed)
            .and_then(|v| v.checked_add(self.fees_unclaimed))
            .ok_or_else(|| TallyError::AmountOverflow.at_caller())
    }

    /// Solvency check run by every handler that moves tokens or buckets: the token
    /// account holds at least what is owed (more only if someone sent tokens in directly).
    pub fn invariant(&self, token_balance: u64) -> Result<()> {
        ensure!(
            token_balance >= self.liabilities()?,
            TallyError::VaultInsolvent
        );
        Ok(())
    }
}
