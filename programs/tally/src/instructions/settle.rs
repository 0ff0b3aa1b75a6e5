use anchor_lang::prelude::*;

use crate::errors::TallyError;
use crate::receipt::PackedReceipts;
use crate::settlement::{load_job, Ledgers, SettleTotals};
use crate::state::{seeds, Config, Earnings, Revenue, Vault};

#[derive(AnchorSerialize, AnchorDeserialize, Clone, Debug)]
pub struct SettleArgs {
    /// Oracle-set version the receipts were attested under.
    pub oracle_set_version: u32,
    /// Oracle signers beyond `oracle`, passed first in the remaining accounts.
    pub extra_oracle_signers: u8,
    /// One receipt per job account, in the order of the remaining accounts, packed
    /// by `receipt::pack_receipts` (varints: about 45 bytes a receipt).
    pub receipts: Vec<u8>,
}

/// Remaining accounts: `extra_oracle_signers` oracle signers, then one writable job
/// account per receipt, all of the operator the `earnings` ledger belongs to, in
/// `vault`'s mint. The earnings and revenue ledgers must exist: `open_ledgers` creates
/// them (the SDK adds it when needed). The operator account itself is not needed:
/// only `open_ledgers`, which checks it is a registered operator, creates earnings.
///
/// No PDA is derived here: every account is the program's own type (owner and
/// discriminator checked), and their relations are checked field by field.
#[derive(Accounts)]
pub struct Settle<'info> {
    pub oracle: Signer<'info>,
    #[account(address = seeds::CONFIG_ADDRESS)]
    pub config: Box<Account<'info, Config>>,
    #[account(mut)]
    pub vault: Box<Account<'info, Vault>>,
    #[account(
        mut,
        constraint = earnings.mint == vault.mint @ TallyError::WrongLedger,
    )]
    pub earnings: Box<Account<'info, Earnings>>,
    #[account(mut, constraint = revenue.mint == vault.mint @ TallyError::WrongLedger)]
    pub revenue: Box<Account<'info, Revenue>>,
}

impl<'info> Settle<'info> {
    /// Settles oracle-attested cumulative usage receipts for several jobs of one
    /// operator and mint: pays what the cumulative usage owes beyond what was settled
    /// out of each escrow
    /// (capped by what is left) into the operator's earnings and the protocol fee.
    pub fn settle(ctx: Context<'info, Self>, args: SettleArgs) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        let jobs = attested(
            &accounts.config,
            accounts.oracle.as_ref(),
            ctx.remaining_accounts,
            args.extra_oracle_signers,
            args.oracle_set_version,
        )?;
        let mut receipts = PackedReceipts::new(&args.receipts)?;

        let now = Clock::get()?.unix_timestamp;
        let operator_key = accounts.earnings.operator;
        let mut ledgers = Ledgers {
            config: &accounts.config,
            vault: &mut accounts.vault,
            earnings: &mut accounts.earnings,
            revenue: &mut accounts.revenue,
        };
        ledgers.check_day(now)?;
        let mut totals = SettleTotals::default();
        for info in jobs {
            ensure!(!receipts.is_empty(), TallyError::ReceiptCountMismatch);
            let receipt = receipts.next_receipt()?;
            let mut job = load_job(info)?;
            ledgers.apply(
                info.key(),
                &mut job,
                operator_key,
                &receipt,
                now,
                &mut totals,
            )?;
        }
        ensure!(receipts.is_empty(), TallyError::ReceiptCountMismatch);
        ledgers.post(&totals, now)
    }
}

/// Checks a signer-path attestation: `oracle` plus the first `extra` remaining
/// accounts must be distinct members of the current oracle set reaching its
/// threshold, and the receipts must name the current set version. Returns the
/// remaining accounts after the extra signers.
pub fn attested<'a, 'info>(
    config: &Config,
    oracle: &'a AccountInfo<'info>,
    remaining: &'a [AccountInfo<'info>],
    extra: u8,
    oracle_set_version: u32,
) -> Result<&'a [AccountInfo<'info>]> {
    let extra = usize::from(extra);
    ensure!(
        extra <= remaining.len(),
        TallyError::NotEnoughOracleSignatures
    );
    let (signers, rest) = remaining.split_at(extra);
    ensure!(
        oracle_set_version == config.oracle_set_version,
        TallyError::OracleSetVersionMismatch
    );
    let mut all: Vec<&AccountInfo<'info>> = Vec::with_capacity(extra.saturating_add(1));
    all.push(oracle);
    all.extend(signers.iter());
    config.check_oracle_quorum(&all)?;
    Ok(rest)
}
