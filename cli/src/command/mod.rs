//! The chain commands, a file per group: each a thin layer over `tally_client::ops`
//! and a [`Chain`].
use solana_keypair::Keypair;
use tally_client::chain::{Chain, ChainError};
use tally_client::ops;

use crate::args::ChainCommand;
use crate::money::{add_decimals, Money, Units};
use crate::output::{revenue_table, Output};

mod admin;
mod job;
mod operator;

/// Runs `command` against `chain`, signing with `signer`, amounts in tokens.
pub fn execute<C: Chain>(
    command: &ChainCommand,
    chain: &mut C,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    execute_in(command, Units::Tokens, chain, signer)
}

/// [`execute`], amounts typed and printed in `units` (`--base-units`).
pub fn execute_in<C: Chain>(
    command: &ChainCommand,
    units: Units,
    chain: &mut C,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    match command {
        ChainCommand::Job(job) => job::execute(job, chain, signer, units),
        ChainCommand::Operator(op) => operator::execute(op, chain, signer, units),
        ChainCommand::Admin(admin) => admin::execute(admin, chain, signer),
        ChainCommand::Revenue { mint, days } => {
            let money = Money::of(chain, mint, units)?;
            let days = ops::revenue(chain, mint, *days)?;
            let text = if days.is_empty() {
                format!("no settled revenue in {mint} in this period")
            } else {
                revenue_table(&days, &money)
            };
            let mut json = serde_json::to_value(&days).unwrap_or_default();
            if let Some(items) = json.as_array_mut() {
                for day in items {
                    add_decimals(day, money.decimals);
                }
            }
            Ok(Output::message(text, json))
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
