//! tally-oracle: watches GPU work complete, keeps invoices, and posts attested,
//! cumulative metering on-chain exactly once.
//!
//! This crate holds the durable core: the store (every record committed before it is
//! acknowledged), invoices (one file per receipt, its sha256 on-chain), and the
//! batcher (cumulative receipts written ahead of sending, resumed after a restart).
//! The sources (gateway, node reports, metrics) and the daemon come next.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod batcher;
pub mod gateway;
pub mod invoice;
pub mod sim_worker;
pub mod store;
pub mod units;

/// Everything that can go wrong in the oracle, with the context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum OracleError {
    #[error("store: {0}")]
    Store(String),
    #[error("chain: {0}")]
    Chain(#[from] tally_client::chain::ChainError),
    #[error("invoice {path}: {reason}")]
    Invoice { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}
