use anchor_lang::prelude::*;
use solana_instructions_sysvar::{load_current_index_checked, load_instruction_at_checked};

use crate::ed25519::{parse_signatures, SignedMessage};
use crate::errors::TallyError;
use crate::receipt::UsageReceipt;
use crate::settlement::{load_job, Ledgers, SettleTotals};
use crate::state::{seeds, Config, Earnings, Revenue, Vault, MAX_ORACLES};

/// Remaining accounts: one writable job account per signed receipt, in order.
///
/// The instruction right before this one must be an Ed25519 program instruction
/// holding `threshold` signatures per receipt, grouped by receipt, each over the
/// receipt's [`UsageReceipt::message`] bytes (not final), with every offset pointing
/// into that instruction itself. The receipts are read from the signed bytes.
///
/// The ledger accounts and their constraints repeat `Settle`'s on purpose: sharing
/// them through a nested `#[derive(Accounts)]` struct was measured at about 3.8k CU
/// more per settlement; keep the two lists identical.
#[derive(Accounts)]
pub struct SettleRelayed<'info> {
    /// Anyone may relay (often the operator): the oracle signatures are the authority.
    pub relayer: Signer<'info>,
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
    /// CHECK: the instructions sysvar (address checked).
    #[account(address = solana_sdk_ids::sysvar::instructions::ID)]
    pub instructions: UncheckedAccount<'info>,
}

impl<'info> SettleRelayed<'info> {
    /// Settles usage receipts attested by Ed25519 signatures of the oracle set, posted
    /// by anyone. Same receipts, same payout rule, same exactly-once guarantees as
    /// `settle`; kept in its own instruction because precompiles may be deprecated.
    pub fn settle_relayed(ctx: Context<'info, Self>) -> Result<()> {
        let accounts = &mut *ctx.accounts;
        let sysvar = accounts.instructions.to_account_info();
        let current = load_current_index_checked(&sysvar)?;
        let ed25519_index = current
            .checked_sub(1)
            .ok_or(TallyError::MissingSignatureInstruction)?;
        let ed25519_ix = load_instruction_at_checked(usize::from(ed25519_index), &sysvar)
            .map_err(|_| TallyError::MissingSignatureInstruction.at_caller())?;
        require_keys_eq!(
            ed25519_ix.program_id,
            solana_sdk_ids::ed25519_program::ID,
            TallyError::MissingSignatureInstruction
        );
        let signatures = parse_signatures(&ed25519_ix.data, ed25519_index)?;

        let jobs = ctx.remaining_accounts;
        let threshold = usize::from(accounts.config.oracle_threshold);
        ensure!(
            jobs.len().checked_mul(threshold) == Some(signatures.len()) && !jobs.is_empty(),
            TallyError::SignatureCountMismatch
        );

        let now = Clock::get()?.unix_timestamp;
        let operator_key = accounts.earnings.operator;
        let version = accounts.config.oracle_set_version;
        let mut ledgers = Ledgers {
            config: &accounts.config,
            vault: &mut accounts.vault,
            earnings: &mut accounts.earnings,
            revenue: &mut accounts.revenue,
        };
        ledgers.check_day(now)?;
        let mut totals = SettleTotals::default();
        for (info, group) in jobs.iter().zip(signatures.chunks(threshold)) {
            let receipt = attested_receipt(ledgers.config, group, version)?;
            ensure!(
                !receipt.is_final && receipt.job == info.key(),
                TallyError::ReceiptMismatch
            );
            let mut job = load_job(info)?;
            ensure!(job.nonce == receipt.job_nonce, TallyError::ReceiptMismatch);
            ledgers.apply(
                info.key(),
                &mut job,
                operator_key,
                &receipt.receipt,
                now,
                &mut totals,
            )?;
        }
        ledgers.post(&totals, now)
    }
}

/// The receipt a group of signatures attests: all over the same receipt bytes, signed
/// under the current oracle-set `version`, each by a distinct member of the set.
fn attested_receipt(
    config: &Config,
    group: &[SignedMessage<'_>],
    version: u32,
) -> Result<UsageReceipt> {
    let first = group.first().ok_or(TallyError::SignatureCountMismatch)?;
    let receipt = UsageReceipt::from_message(&crate::ID, first.message)
        .ok_or(TallyError::WrongReceiptMessage)?;
    ensure!(
        receipt.oracle_set_version == version,
        TallyError::OracleSetVersionMismatch
    );
    let mut seen = [false; MAX_ORACLES];
    for signed in group {
        ensure!(
            signed.message == first.message,
            TallyError::WrongReceiptMessage
        );
        let index = config
            .oracles
            .iter()
            .position(|k| *k == signed.signer)
            .ok_or(TallyError::UnknownOracle)?;
        let slot = seen.get_mut(index).ok_or(TallyError::UnknownOracle)?;
        ensure!(!*slot, TallyError::DuplicateOracleSigner);
        *slot = true;
    }
    Ok(receipt)
}
