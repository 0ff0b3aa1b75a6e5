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
pub use tally::payout::{
    amount_owed, compute_payout, deposit_for, Payout, Prices, Usage, PRICE_SCALE,
};
pub use tally::receipt::{
    pack_receipts, PackedReceipts, SettleReceipt, UsageReceipt, MAX_UNITS_PER_RECEIPT,
};
pub use tally::state;
pub use tally::ID as PROGRAM_ID;

pub mod alt;
pub mod amount;
pub mod bootstrap;
pub mod chain;
pub mod config;
pub mod deploy;
pub mod error;
pub mod event_log;
pub mod ix;
pub mod job_key;
pub mod migrate;
pub mod ops;
pub mod pda;
pub mod relay;

pub use anchor_lang::prelude::Pubkey;

/// The model binding a job stores: sha256 of the model's name, as the inference
/// server names it (the `model` of an OpenAI request and of its answer).
pub fn model_hash(name: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(name.as_bytes()).into()
}

/// How a job's model binding reads: `any` when unbound, else the hash in hex.
pub fn model_label(model: &[u8; 32]) -> String {
    if *model == [0; 32] {
        "any".to_string()
    } else {
        use std::fmt::Write as _;
        model.iter().fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
    }
}
pub use anchor_lang::solana_program::instruction::{AccountMeta, Instruction};
