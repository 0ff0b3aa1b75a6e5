//! tally-oracle: watches GPU work complete, keeps invoices, and posts attested,
//! cumulative metering on-chain exactly once.
//!
//! - Sources behind one trait ([`source::Source`]): the OpenAI-compatible
//!   [`gateway`] (job keys, pre-authorization against each job's [`job_view`], a meter
//!   callers cannot turn off), signed [`node_report`]s, and the [`scrape`] of the
//!   inference server's metrics as a cross-check. One source meters each job
//!   ([`meter`]).
//! - The durable core: the [`store`] (every record committed before it is
//!   acknowledged, through the [`sink`]), [`invoice`]s (one file per receipt, its
//!   sha256 on-chain), and the [`batcher`] (cumulative receipts written ahead of
//!   sending, resumed after a restart).
//! - One clock, the chain's ([`clock`]): records are stamped, and deadlines judged,
//!   in the chain's time.
//! - The [`daemon`] (`tally-oracle`): [`config`], [`telemetry`] (/metrics, /health),
//!   graceful stop.
//! - `sim_worker`, with the `sim-worker` feature only: a simulated GPU worker (an
//!   OpenAI-compatible server) for `tally demo`, tests and `tally-oracle-bench`; the
//!   daemon is built without it.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod audit;
pub mod batcher;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod gateway;
pub mod http;
pub mod invoice;
pub mod job_view;
pub mod meter;
pub mod node_report;
pub mod scrape;
#[cfg(feature = "sim-worker")]
pub mod sim_worker;
pub mod sink;
pub mod source;
pub mod store;
pub mod telemetry;
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
