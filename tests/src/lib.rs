//! Embedded test harness: the SBF build of the program (`target/deploy/tally.so`) in
//! LiteSVM, with fixtures that read as a story.
//!
//! - [`TestEnv`]: the chain — wallets, mints, token accounts, clock, sending
//!   transactions, decoding accounts and events.
//! - [`World`] / [`WorldBuilder`]: a deployed, configured Tally with an admin, a
//!   treasury, oracles and one accepted mint; operators, clients and jobs are added
//!   by name. Every transaction sent through a `World` is followed by the solvency
//!   check of every vault it knows.
//! - [`validator::LocalValidator`]: a real `solana-test-validator` on private loopback
//!   ports (the local-validator tier; reusable from other crates' tests).
#![allow(clippy::missing_panics_doc, clippy::return_self_not_must_use)]

pub mod bench;
mod env;
mod outcome;
mod signing;
pub mod validator;
mod world;

pub use anchor_lang::error::ErrorCode as AnchorErrorCode;
pub use env::*;
pub use outcome::*;
pub use signing::*;
pub use solana_keypair;
pub use solana_signer;
pub use world::*;

/// 2026-11-25 00:00:00 UTC: the embedded chain's clock starts here (see
/// [`genesis_unix_time`]).
pub const GENESIS_UNIX_TIME: i64 = 1_795_564_800;

/// Where the embedded chain's clock starts: [`GENESIS_UNIX_TIME`], shifted by
/// `TALLY_TEST_CLOCK_OFFSET_SECS` seconds when set. The chain's clock never follows
/// this machine's, so no test may depend on the day it runs; `scripts/test-shifted`
/// proves it by running the suites with the chain, and with the machine's clock
/// (faketime), a week and a year away.
pub fn genesis_unix_time() -> i64 {
    let offset = std::env::var("TALLY_TEST_CLOCK_OFFSET_SECS").map_or(0, |v| {
        v.parse::<i64>().unwrap_or_else(|_| {
            panic!("TALLY_TEST_CLOCK_OFFSET_SECS={v:?} is not a number of seconds")
        })
    });
    GENESIS_UNIX_TIME.saturating_add(offset)
}
