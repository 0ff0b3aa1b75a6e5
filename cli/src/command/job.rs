//! `tally job …`: open, fund, inspect and end jobs.
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally_client::chain::{Chain, ChainError};
use tally_client::ops;

use crate::args::{JobCommand, OpenArgs, UnitKindArg};
use tally_client::OpenJobArgs;

use super::unix_now;
use crate::output::{job_table, table, Output};

pub(super) fn execute<C: Chain>(
    command: &JobCommand,
    chain: &mut C,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    match command {
        JobCommand::Open(args) => open(args, chain, signer),
        JobCommand::TopUp { job, amount } => {
            let job = ops::top_up(chain, signer, job, *amount)?;
            Ok(Output::of(&job, job_table(&job)))
        }
        JobCommand::Cancel { job } => {
            let refunded = ops::cancel_job(chain, signer, job)?;
            Ok(Output::message(
                format!("job {job} cancelled: {refunded} refunded"),
                serde_json::json!({ "job": job.to_string(), "refunded": refunded }),
            ))
        }
        JobCommand::Expire { job } => {
            let refunded = ops::expire_job(chain, signer, job)?;
            Ok(Output::message(
                format!("job {job} expired: {refunded} refunded to its client"),
                serde_json::json!({ "job": job.to_string(), "refunded": refunded }),
            ))
        }
        JobCommand::Key {
            job,
            expires_in,
            limit,
        } => {
            let key = ops::job_key(chain, signer, job, *expires_in, *limit)?;
            Ok(Output::of(&key, key_text(&key)))
        }
        JobCommand::Close { job } => {
            ops::close_job(chain, signer, job)?;
            Ok(Output::message(
                format!("job {job} closed: its rent went back to its client"),
                serde_json::json!({ "job": job.to_string(), "closed": true }),
            ))
        }
        JobCommand::Status { job } => {
            let view = ops::JobView::new(job, &ops::job(chain, job)?);
            Ok(Output::of(&view, job_table(&view)))
        }
        JobCommand::List { all, operator } => {
            let me = signer.pubkey();
            let client = (!*all).then_some(&me);
            let jobs = ops::jobs(chain, client, operator.as_ref())?;
            Ok(Output::of(&jobs, jobs_table(&jobs)))
        }
    }
}

/// `job open`: the command line's terms as the program's, then `ops::open_job`.
fn open<C: Chain>(terms: &OpenArgs, chain: &mut C, signer: &Keypair) -> Result<Output, ChainError> {
    let OpenArgs {
        operator,
        mint,
        input_price,
        output_price,
        model,
        units,
        id,
        deadline_in,
        kind,
        spend_cap,
    } = terms;
    let now = chain.clock()?.unix_timestamp;
    // Default: the current Unix time, or the next free id if that is higher
    // (ids only go up; another tool may have used larger ones).
    let job_id = match id {
        Some(id) => *id,
        None => u64::try_from(unix_now())
            .unwrap_or(0)
            .max(ops::next_job_id(chain, &signer.pubkey())?),
    };
    let args = OpenJobArgs {
        job_id,
        unit_kind: *kind as u8,
        input_price: *input_price,
        output_price: match (output_price, kind) {
            (Some(price), _) => *price,
            (None, UnitKindArg::Tokens) => *input_price,
            (None, _) => 0,
        },
        model: model.as_deref().map_or([0; 32], tally_client::model_hash),
        max_units: *units,
        deadline: now.saturating_add(*deadline_in),
        spend_cap_per_hour: *spend_cap,
    };
    let job = ops::open_job(chain, signer, operator, mint, args)?;
    Ok(Output::of(&job, job_table(&job)))
}

/// `job key`: the key, what it allows, and how to use it.
fn key_text(key: &ops::JobKeyView) -> String {
    let limit = key
        .spend_limit
        .map_or_else(|| "up to the escrow".to_string(), |l| l.to_string());
    format!(
        "{}\n\njob          {}\nkey id       {}\nexpires at   {} (unix seconds, chain clock)\nspend limit  {limit}\n\nSend it as `Authorization: Bearer <key>` to the operator's gateway. Anyone holding it can spend the job: keep it secret.",
        key.key, key.job, key.key_id, key.expires_at
    )
}

/// `job list`: one row per job.
fn jobs_table(jobs: &[ops::JobView]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|v| {
            vec![
                v.address.to_string(),
                v.job.job_id.to_string(),
                v.status_label().to_string(),
                v.job.escrow_left.to_string(),
                v.job.settled_units.to_string(),
                v.job.settled_gross.to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        "no jobs".to_string()
    } else {
        table(
            &["job", "id", "status", "escrow left", "units", "paid"],
            &rows,
        )
    }
}
