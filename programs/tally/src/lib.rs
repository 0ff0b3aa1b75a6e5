//! Tally: per-job escrow and metered settlement for GPU inference.
//!
//! A client escrows payment per job; oracles attest cumulative usage receipts; the
//! program pays exactly the metered amount to the operator (never more than the
//! escrow) and refunds the rest. See README.md for accounts and flows.
#![deny(clippy::arithmetic_side_effects)]
#![allow(clippy::result_large_err)]

#[cfg(target_arch = "bpf")]
use solana_compiler_builtins as _;

use anchor_lang::prelude::*;

/// `require!` for [`errors::TallyError`], the error built out of line
/// ([`errors::TallyError::at_caller`]): same error, code, message and origin.
macro_rules! ensure {
    ($invariant:expr, $error:expr $(,)?) => {
        if !($invariant) {
            return Err($error.at_caller());
        }
    };
}

pub mod ed25519;
pub mod errors;
pub mod events;
pub mod instructions;
pub mod payout;
pub mod receipt;
pub mod settlement;
pub mod state;
pub mod vault_io;

use instructions::*;

/// The program's heap: the default bump allocator (`BumpAllocator` over the same
/// 32 KiB at the same address, so the same pointers), reached through one call
/// instead of being inlined into every allocation (~20 instructions at each of
/// hundreds of sites: every error name is a `String`). Replaces the allocator
/// `entrypoint!` defines unless the `custom-heap` feature is on (a default feature).
#[cfg(all(
    target_os = "solana",
    feature = "custom-heap",
    not(feature = "no-entrypoint")
))]
mod heap {
    use anchor_lang::solana_program::entrypoint::{BumpAllocator, HEAP_LENGTH, HEAP_START_ADDRESS};
    use std::alloc::{GlobalAlloc, Layout};

    static BUMP: BumpAllocator = unsafe {
        BumpAllocator::with_fixed_address_range(HEAP_START_ADDRESS as usize, HEAP_LENGTH)
    };

    struct OutOfLine;

    unsafe impl GlobalAlloc for OutOfLine {
        #[inline(never)]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { BUMP.alloc(layout) }
        }

        #[inline]
        unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
    }

    #[global_allocator]
    static A: OutOfLine = OutOfLine;
}

declare_id!("9dF2zMwvV5mCiEXKHmG38gZmPfBMTTDD3yfeYzn3W39Q");

// Who to tell about a vulnerability, readable from the deployed binary (explorers,
// `solana-verify`, query-security-txt). Only in the program itself, not in the
// crates that link it as a library.
#[cfg(not(feature = "no-entrypoint"))]
solana_security_txt::security_txt! {
    name: "Tally",
    project_url: "https://github.com/tally-network/tally",
    contacts: "link:https://github.com/tally-network/tally/security/advisories/new",
    policy: "https://github.com/tally-network/tally/blob/main/SECURITY.md",
    source_code: "https://github.com/tally-network/tally",
    auditors: "None"
}

#[program]
pub mod tally {
    use super::*;

    /// Creates the deployment's config (program upgrade authority only).
    pub fn initialize_config(
        ctx: Context<InitializeConfig>,
        args: InitializeConfigArgs,
    ) -> Result<()> {
        InitializeConfig::initialize_config(ctx, args)
    }

    /// Changes fee, treasury, arbiter, windows, pause or the oracle set (admin).
    pub fn update_config(ctx: Context<UpdateConfig>, args: UpdateConfigArgs) -> Result<()> {
        UpdateConfig::update_config(ctx, args)
    }

    /// Names the next admin (step one of two).
    pub fn propose_admin(ctx: Context<ProposeAdmin>, new_admin: Pubkey) -> Result<()> {
        ProposeAdmin::propose_admin(ctx, new_admin)
    }

    /// The proposed admin takes over (step two of two).
    pub fn accept_admin(ctx: Context<AcceptAdmin>) -> Result<()> {
        AcceptAdmin::accept_admin(ctx)
    }

    /// Accepts a mint for payment and creates its vault (admin).
    pub fn add_mint(ctx: Context<AddMint>) -> Result<()> {
        AddMint::add_mint(ctx)
    }

    /// Registers a GPU operator.
    pub fn register_operator(ctx: Context<RegisterOperator>, args: OperatorArgs) -> Result<()> {
        RegisterOperator::register_operator(ctx, args)
    }

    /// Changes an operator's payout owner and node keys.
    pub fn update_operator(ctx: Context<UpdateOperator>, args: OperatorArgs) -> Result<()> {
        UpdateOperator::update_operator(ctx, args)
    }

    /// Opens a job and escrows what `max_units` cost at the higher of its prices.
    pub fn open_job(ctx: Context<OpenJob>, args: OpenJobArgs) -> Result<()> {
        OpenJob::open_job(ctx, args)
    }

    /// Adds to a job's escrow.
    pub fn top_up(ctx: Context<TopUp>, amount: u64) -> Result<()> {
        TopUp::top_up(ctx, amount)
    }

    /// Cancels a job with no usage: full refund, job closed.
    pub fn cancel_job(ctx: Context<CancelJob>) -> Result<()> {
        CancelJob::cancel_job(ctx)
    }

    /// Creates, if missing, an operator's earnings and a mint's revenue day.
    pub fn open_ledgers(ctx: Context<OpenLedgers>, day: u32) -> Result<()> {
        OpenLedgers::open_ledgers(ctx, day)
    }

    /// Settles oracle-attested cumulative receipts for several jobs.
    pub fn settle<'info>(ctx: Context<'info, Settle<'info>>, args: SettleArgs) -> Result<()> {
        Settle::settle(ctx, args)
    }

    /// Settles receipts carrying Ed25519 oracle signatures, posted by anyone.
    pub fn settle_relayed<'info>(ctx: Context<'info, SettleRelayed<'info>>) -> Result<()> {
        SettleRelayed::settle_relayed(ctx)
    }

    /// Settles a job's final receipt, refunds the rest and closes the job.
    pub fn complete_job<'info>(
        ctx: Context<'info, CompleteJob<'info>>,
        args: CompleteJobArgs,
    ) -> Result<()> {
        CompleteJob::complete_job(ctx, args)
    }

    /// The client disputes settled amounts still inside the challenge window.
    pub fn dispute_job(ctx: Context<DisputeJob>) -> Result<()> {
        DisputeJob::dispute_job(ctx)
    }

    /// The arbiter splits a disputed amount; after the timeout anyone closes it.
    pub fn resolve_dispute(ctx: Context<ResolveDispute>, client_share: u64) -> Result<()> {
        ResolveDispute::resolve_dispute(ctx, client_share)
    }

    /// Refunds and closes a job after its deadline plus grace (anyone).
    pub fn expire_job(ctx: Context<ExpireJob>) -> Result<()> {
        ExpireJob::expire_job(ctx)
    }

    /// Closes an ended job once its share is out of the challenge window (anyone).
    pub fn close_job(ctx: Context<CloseJob>) -> Result<()> {
        CloseJob::close_job(ctx)
    }

    /// Pays an operator its matured earnings in one mint.
    pub fn claim(ctx: Context<Claim>) -> Result<()> {
        Claim::claim(ctx)
    }

    /// Sends unclaimed protocol fees to the treasury's token account.
    pub fn withdraw_fees(ctx: Context<WithdrawFees>) -> Result<()> {
        WithdrawFees::withdraw_fees(ctx)
    }

    /// Brings a job or revenue day of an older layout up to date (anyone; the payer
    /// funds the extra rent). `tally admin migrate` runs it after an upgrade.
    pub fn upgrade_account(ctx: Context<UpgradeAccount>) -> Result<()> {
        UpgradeAccount::upgrade_account(ctx)
    }
}
