//! The embedded suite: the SBF program (target/deploy/tally.so) in LiteSVM.
//! One test binary; one module per area. Every transaction sent through a `World`
//! is followed by the solvency check of every vault it knows.
//!
//! `localnet` is the local-validator tier: the same program on a real
//! solana-test-validator through the RPC backend (skipped, with a printed line,
//! where no validator exists). It lives in this binary to share its one link;
//! run it alone with `cargo test -p tally-tests --test embedded localnet::`.

mod batch;
mod cli;
mod config;
mod cross_mint;
mod cu;
mod disputes;
mod idl;
mod jobs;
mod layout;
mod lifecycle;
mod localnet;
mod mints;
mod operators;
mod pricing;
mod relayed;
mod settle;
mod smoke;
mod state_machine;
mod statistics;
mod upgrade;
