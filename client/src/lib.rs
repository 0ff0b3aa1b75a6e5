//! Rust SDK for the Tally program.
//!
//! Typed instruction builders and PDA derivations, built from the program crate itself
//! (its `accounts::*` and `instruction::*` types), so no account layout or
//! discriminator is ever copied by hand. Account and event types are re-exported
//! from the program crate.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub use tally;
pub use tally::errors::TallyError;
pub use tally::events;
pub use tally::instructions::{
    CompleteJobArgs, InitializeConfigArgs, OpenJobArgs, OperatorArgs, OracleSetArgs, SettleArgs,
    UpdateConfigArgs,
};
pub use tally::payout::{compute_payout, deposit_for, Payout};
pub use tally::receipt::{SettleReceipt, UsageReceipt, MAX_UNITS_PER_RECEIPT};
pub use tally::state;
pub use tally::ID as PROGRAM_ID;

pub mod alt;
pub mod chain;
pub mod cli;
pub mod deploy;
pub mod event_log;
pub mod ix;
pub mod job_key;
pub mod migrate;
pub mod ops;
pub mod pda;
pub mod relay;

pub use anchor_lang::prelude::Pubkey;
pub use anchor_lang::solana_program::instruction::{AccountMeta, Instruction};
