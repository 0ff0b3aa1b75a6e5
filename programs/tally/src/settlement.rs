//! Booking settled receipts into the ledgers: shared by `settle` and `complete_job`.
use std::cell::RefMut;

use anchor_lang::prelude::*;

use crate::errors::TallyError;
use crate::events::ReceiptSettled;
use crate::receipt::SettleReceipt;
use crate::state::{
    maturity_time, place_job_share, take_matured, utc_day, Config, Earnings, Job, Revenue, Vault,
};

/// A writable job account of this program, borrowed for settlement. The checks of
/// `AccountLoader::try_from` and `load_mut` (owner, discriminator, size), made once
/// per receipt instead of twice.
pub fn load_job<'a>(info: &'a AccountInfo<'_>) -> Result<RefMut<'a, Job>> {
    ensure!(
        info.is_writable && info.owner == &crate::ID,
        TallyError::InvalidJobAccount
    );
    let data = info.try_borrow_mut_data()?;
    ensure!(
        data.len() != Job::V1_ACCOUNT_SIZE,
        TallyError::AccountNeedsUpgrade
    );
    ensure!(
        data.len() >= Job::ACCOUNT_SIZE && data.starts_with(Job::DISCRIMINATOR),
        TallyError::InvalidJobAccount
    );
    Ok(RefMut::map(data, |data| {
        let (_, fields) = data.split_at_mut(Job::DISCRIMINATOR.len());
        bytemuck::from_bytes_mut(fields.split_at_mut(std::mem::size_of::<Job>()).0)
    }))
}

/// Sums of what a batch of receipts did, posted to the ledgers once per instruction.
#[derive(Clone, Copy, Debug, Default)]
pub struct SettleTotals {
    pub gross: u64,
    pub fee: u64,
    pub net: u64,
    /// Part of `net` already put in the earnings' buckets by a folded placement.
    pub net_held: u64,
    pub units: u64,
    pub output_units: u64,
    pub receipts: u64,
    pub jobs_started: u64,
}

/// The ledgers one settlement instruction writes.
pub struct Ledgers<'a> {
    pub config: &'a Config,
    pub vault: &'a mut Vault,
    pub earnings: &'a mut Earnings,
    pub revenue: &'a mut Revenue,
}

impl Ledgers<'_> {
    /// The revenue ledger is today's (UTC, by the cluster clock).
    pub fn check_day(&self, now: i64) -> Result<()> {
        ensure!(
            self.revenue.day == utc_day(now),
            TallyError::WrongRevenueDay
        );
        Ok(())
    }

    /// Checks that `job` may be settled here and applies `receipt` to it.
    pub fn apply(
        &mut self,
        job_key: Pubkey,
        job: &mut Job,
        operator_key: Pubkey,
        receipt: &SettleReceipt,
        now: i64,
        totals: &mut SettleTotals,
    ) -> Result<()> {
        ensure!(
            job.operator == operator_key && job.mint == self.vault.mint,
            TallyError::JobMismatch
        );
        job.require_live()?;
        ensure!(
            now <= job.settle_until(self.config.expiry_grace_secs),
            TallyError::JobExpired
        );
        let Some(effect) = job.apply_receipt(receipt, now, self.config.fee_bps)? else {
            return Ok(());
        };
        let p = effect.payout;
        // The job's own share of the operator's unmatured earnings, same maturity.
        take_matured(&mut job.pending, now)?;
        let window = self.config.challenge_window_secs;
        if window > 0 && p.net > 0 {
            let matures_at = maturity_time(now, window)?;
            let placed = place_job_share(&mut job.pending, p.net, matures_at)?;
            if !placed.is_exact(matures_at) {
                // A changed window folded it: the earnings must hold it (and anything
                // of this job that moved later) at least as long as the job does.
                self.earnings.hold_job_share(p.net, &placed, now)?;
                totals.net_held = totals
                    .net_held
                    .checked_add(p.net)
                    .ok_or(TallyError::AmountOverflow)?;
            }
        }
        totals.gross = totals
            .gross
            .checked_add(p.gross)
            .ok_or(TallyError::AmountOverflow)?;
        totals.fee = totals
            .fee
            .checked_add(p.fee)
            .ok_or(TallyError::AmountOverflow)?;
        totals.net = totals
            .net
            .checked_add(p.net)
            .ok_or(TallyError::AmountOverflow)?;
        totals.units = totals
            .units
            .checked_add(effect.units)
            .ok_or(TallyError::AmountOverflow)?;
        totals.output_units = totals
            .output_units
            .checked_add(effect.output)
            .ok_or(TallyError::AmountOverflow)?;
        totals.receipts = totals.receipts.saturating_add(1);
        totals.jobs_started = totals
            .jobs_started
            .saturating_add(u64::from(effect.first_usage));
        ReceiptSettled {
            job: job_key,
            seq: receipt.seq,
            cumulative_units: receipt.cumulative_units,
            cumulative_output: receipt.cumulative_output,
            units: effect.units,
            output_units: effect.output,
            gross: p.gross,
            fee: p.fee,
            net: p.net,
            escrow_left: job.escrow_left,
            capped: p.capped,
            invoice_hash: receipt.invoice_hash,
        }
        .log();
        Ok(())
    }

    /// Moves the batch's gross out of escrow into operator earnings and fees, and adds
    /// it to the day's revenue.
    pub fn post(&mut self, totals: &SettleTotals, now: i64) -> Result<()> {
        if totals.receipts == 0 {
            return Ok(());
        }
        let vault = &mut *self.vault;
        vault.escrow_total = vault
            .escrow_total
            .checked_sub(totals.gross)
            .ok_or(TallyError::VaultInsolvent)?;
        vault.operator_owed = vault
            .operator_owed
            .checked_add(totals.net)
            .ok_or(TallyError::AmountOverflow)?;
        vault.fees_unclaimed = vault
            .fees_unclaimed
            .checked_add(totals.fee)
            .ok_or(TallyError::AmountOverflow)?;
        self.earnings.credit(
            totals.net,
            totals.net_held,
            now,
            self.config.challenge_window_secs,
        )?;
        // Statistics saturate: a full counter must never refuse a settlement.
        let revenue = &mut *self.revenue;
        revenue.gross = revenue.gross.saturating_add(totals.gross);
        revenue.fees = revenue.fees.saturating_add(totals.fee);
        revenue.units = revenue.units.saturating_add(totals.units);
        revenue.output_units = revenue.output_units.saturating_add(totals.output_units);
        revenue.receipts = revenue.receipts.saturating_add(totals.receipts);
        revenue.jobs_started = revenue.jobs_started.saturating_add(totals.jobs_started);
        let earnings = &mut *self.earnings;
        earnings.receipts_settled = earnings.receipts_settled.saturating_add(totals.receipts);
        earnings.units_settled = earnings.units_settled.saturating_add(totals.units);
        Ok(())
    }
}
