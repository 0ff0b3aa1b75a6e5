//! The embedded suite: the SBF program (target/deploy/tally.so) in LiteSVM.
//! One test binary; one module per area. Every transaction sent through a `World`
//! is followed by the solvency check of every vault it knows.

mod batch;
mod cli;
mod config;
mod cu;
mod disputes;
mod idl;
mod jobs;
mod layout;
mod lifecycle;
mod mints;
mod operators;
mod relayed;
mod settle;
mod smoke;
mod state_machine;
