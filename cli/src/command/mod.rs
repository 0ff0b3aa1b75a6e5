//! The chain commands, a file per group: each a thin layer over `tally_client::ops`
//! and a [`Chain`].
use solana_keypair::Keypair;
use tally_client::chain::{Chain, ChainError};
use tally_client::ops;

use crate::args::ChainCommand;
use crate::output::{revenue_table, Output};

mod admin;
mod job;
mod operator;

/// Runs `command` against `chain`, signing with `signer`.
pub fn execute<C: Chain>(
    command: &ChainCommand,
    chain: &mut C,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    match command {
        ChainCommand::Job(job) => job::execute(job, chain, signer),
        ChainCommand::Operator(op) => operator::execute(op, chain, signer),
        ChainCommand::Admin(admin) => admin::execute(admin, chain, signer),
        ChainCommand::Revenue { mint, days } => {
            let days = ops::revenue(chain, mint, *days)?;
            let text = if days.is_empty() {
                format!("no settled revenue in {mint} in this period")
            } else {
                revenue_table(&days)
            };
            Ok(Output::of(&days, text))
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
