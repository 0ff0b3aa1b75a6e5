use anchor_lang::prelude::*;

use crate::errors::TallyError;
use crate::receipt::SettleReceipt;
use crate::settlement::{Ledgers, SettleTotals};
use crate::state::{seeds, Config, Earnings, Job, Operator, Revenue, Vault};

#[derive(AnchorSerialize, AnchorDeserialize, Clone, Debug)]
pub struct SettleArgs {
    /// Oracle-set version the receipts were attested under.
    pub oracle_set_version: u32,
    /// Today's UTC day number (the revenue account's seed).
    pub day: u32,
    /// Oracle signers beyond `oracle`, passed first in the remaining accounts.
    pub extra_oracle_signers: u8,
    /// One receipt per job account, in the order of the remaining accounts.
    pub receipts: Vec<SettleReceipt>,
}

/// Remaining accounts: `extra_oracle_signers` oracle signers, then one writable job
/// account per receipt (all of `operator`, in `vault`'s mint).
#[derive(Accounts)]
#[instruction(args: SettleArgs)]
pub struct Settle<'info> {
    /// Pays rent for the earnings and revenue accounts when this creates them.
    #[account(mut)]
    pub payer: Signer<'info>,
    pub oracle: Signer<'info>,
    #[account(seeds = [seeds::CONFIG], bump = config.bump)]
    pub config: Box<Account<'info, Config>>,
    #[account(mut, seeds = [seeds::OPERATOR, operator.authority.as_ref()], bump = operator.bump)]
    pub operator: Box<Account<'info, Operator>>,
    #[account(mut, seeds = [seeds::VAULT, vault.mint.as_ref()], bump = vault.bump)]
    pub vault: Box<Account<'info, Vault>>,
    #[account(
        init_if_needed,
        payer = payer,
        space = 8 + Earnings::INIT_SPACE,
        seeds = [seeds::EARNINGS, operator.key().as_ref(), vault.mint.as_ref()],
        bump,
    )]
    pub earnings: Box<Account<'info, Earnings>>,
    #[account(
        init_if_needed,
        payer = payer,
        space = 8 + Revenue::INIT_SPACE,
        seeds = [seeds::REVENUE, vault.mint.as_ref(), &args.day.to_le_bytes()],
        bump,
    )]
    pub revenue: Box<Account<'info, Revenue>>,
    pub system_program: Program<'info, System>,
}

impl<'info> Settle<'info> {
    /// Settles oracle-attested cumulative usage receipts for several jobs of one
    /// operator and mint: pays `(cumulative − settled) × price` out of each escrow
    /// (capped by what is left) into the operator's earnings and the protocol fee.
    pub fn settle(ctx: Context<'info, Self>, args: SettleArgs) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        let (signers, jobs) =
            split_oracle_signers(ctx.remaining_accounts, args.extra_oracle_signers)?;
        let mut oracle_signers: Vec<&AccountInfo<'info>> =
            Vec::with_capacity(signers.len().saturating_add(1));
        oracle_signers.push(accounts.oracle.as_ref());
        oracle_signers.extend(signers.iter());
        check_attestation(&accounts.config, &oracle_signers, args.oracle_set_version)?;
        require!(
            jobs.len() == args.receipts.len(),
            TallyError::ReceiptCountMismatch
        );

        let now = Clock::get()?.unix_timestamp;
        let operator_key = accounts.operator.key();
        let mut ledgers = Ledgers {
            config: &accounts.config,
            operator: &mut accounts.operator,
            vault: &mut accounts.vault,
            earnings: &mut accounts.earnings,
            revenue: &mut accounts.revenue,
        };
        ledgers.prepare(
            operator_key,
            args.day,
            now,
            ctx.bumps.earnings,
            ctx.bumps.revenue,
        )?;
        let mut totals = SettleTotals::default();
        for (info, receipt) in jobs.iter().zip(args.receipts.iter()) {
            require!(info.is_writable, TallyError::InvalidJobAccount);
            let loader = AccountLoader::<Job>::try_from(info)
                .map_err(|_| error!(TallyError::InvalidJobAccount))?;
            let mut job = loader.load_mut()?;
            ledgers.apply(
                info.key(),
                &mut job,
                operator_key,
                receipt,
                now,
                &mut totals,
            )?;
        }
        ledgers.post(&totals, now)
    }
}

/// Splits the remaining accounts into extra oracle signers and the rest.
pub fn split_oracle_signers<'a, 'info>(
    remaining: &'a [AccountInfo<'info>],
    extra: u8,
) -> Result<(&'a [AccountInfo<'info>], &'a [AccountInfo<'info>])> {
    let extra = usize::from(extra);
    require!(
        extra <= remaining.len(),
        TallyError::NotEnoughOracleSignatures
    );
    Ok(remaining.split_at(extra))
}

/// The receipts' oracle-set version is the current one and enough distinct oracle
/// keys signed the transaction.
pub fn check_attestation(
    config: &Config,
    signers: &[&AccountInfo<'_>],
    oracle_set_version: u32,
) -> Result<()> {
    require!(
        oracle_set_version == config.oracle_set_version,
        TallyError::OracleSetVersionMismatch
    );
    config.check_oracle_quorum(signers)
}
