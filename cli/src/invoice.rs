//! `tally invoice verify`: an invoice proven against the chain, from a file or the
//! oracle's store. (`tally invoice audit` is [`crate::audit`].)
use std::path::Path;

use tally_client::chain::{ChainError, RpcChain};
use tally_oracle::invoice::{verify_in_store, verify_with};
use tally_oracle::store::Store;
use tally_oracle::OracleError;

use crate::args::OutputFormat;

/// Verifies invoice `file` (linked to the chain through the invoices beside it or in
/// `store`), or receipt `seq` (default: the latest) of `job` from `store`.
pub(crate) fn verify(
    url: &str,
    file: Option<&Path>,
    store: Option<&str>,
    job: Option<&str>,
    seq: Option<u64>,
    format: OutputFormat,
) -> Result<bool, ChainError> {
    let chain = RpcChain::new(url);
    let failed = |e: OracleError| ChainError::Other(e.to_string());
    let store = store.map(Store::connect).transpose().map_err(failed)?;
    let verified = match (file, job, &store) {
        (Some(file), _, store) => verify_with(&chain, file, store.as_ref()),
        (None, Some(job), Some(store)) => verify_in_store(&chain, store, job, seq),
        _ => {
            return Err(ChainError::Other(
                "give an invoice FILE, or --store LOCATION --job ADDRESS [--seq N]".into(),
            ))
        }
    }
    .map_err(failed)?;
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string(&verified).unwrap_or_default()
        ),
        OutputFormat::Table => println!(
            "verified: invoice {} of job {} ({} units) is what the chain paid for (receipt {}, {} units in all)",
            verified.seq, verified.job, verified.units, verified.settled_seq, verified.settled_units
        ),
    }
    Ok(true)
}
