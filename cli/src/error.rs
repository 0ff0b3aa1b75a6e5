//! What a `tally` command can fail on, typed: the chain's errors, the oracle's
//! (invoices, audits), and the command line's own.
use std::path::PathBuf;

use anchor_lang::prelude::Pubkey;
use tally_client::chain::ChainError;
use tally_client::error::Source;
use tally_oracle::OracleError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Oracle(#[from] OracleError),
    /// A file the command was pointed at cannot be read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--key is neither a job key (tally_k1_…) nor a readable file: {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the key is for job {key_job}, not {job}: make one for this job with `tally job key {job}`"
    )]
    KeyForOtherJob { key_job: Pubkey, job: Pubkey },
    #[error("give an invoice FILE, or --store LOCATION --job ADDRESS [--seq N]")]
    NothingToVerify,
    /// `tally demo --real-model` cannot load its model.
    #[error("--real-model: {0}")]
    RealModel(String),
    /// The demo's gateway refused one of its requests.
    #[error("the gateway answered {0}")]
    Gateway(reqwest::StatusCode),
    /// The demo cannot run as asked.
    #[error("demo: {0}")]
    Demo(String),
    /// `job watch` lost or was refused its subscription.
    #[error("job watch: {0}")]
    Watch(String),
    /// The demo's settlement round failed receipts.
    #[error("settlement failed: {0:?}")]
    Settlement(Vec<String>),
    /// A library the command drives failed (a socket, the async runtime, HTTP).
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: Source,
    },
}

impl CliError {
    /// `map_err(CliError::io("start the async runtime"))`.
    pub fn io<E: Into<Source>>(what: &'static str) -> impl FnOnce(E) -> CliError {
        move |e| CliError::Io {
            what,
            source: e.into(),
        }
    }

    /// The Anchor error message the program logged, if any.
    pub fn program_error_message(&self) -> Option<&str> {
        match self {
            CliError::Chain(e) => e.program_error_message(),
            _ => None,
        }
    }
}
