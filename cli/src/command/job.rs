//! `tally job …`: open, fund, inspect and end jobs.
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally_client::chain::{Chain, ChainError};
use tally_client::ops;

use anchor_lang::prelude::Pubkey;
use tally_client::OpenJobArgs;

use super::unix_now;
use crate::args::{JobCommand, OpenArgs, UnitKindArg};
use crate::money::{add_decimals, Money, Units, Wallet};
use crate::output::{job_table, table, Output};

pub(super) fn execute<C: Chain>(
    command: &JobCommand,
    chain: &mut C,
    signer: &Keypair,
    units: Units,
) -> Result<Output, ChainError> {
    let mut wallet = Wallet::new(units);
    match command {
        JobCommand::Open(args) => open(args, chain, signer, units),
        JobCommand::TopUp { job, amount } => {
            let money = wallet.money(chain, &ops::job(chain, job)?.mint)?;
            let amount = money.parse(amount, "amount")?;
            let view = ops::top_up(chain, signer, job, amount)?;
            Ok(job_output(&view, &money))
        }
        JobCommand::Cancel { job, sol } => {
            let paid = ops::cancel_job_with(chain, signer, job, sol.wrapped())?;
            let money = wallet.money(chain, &paid.mint)?;
            Ok(refund_output(job, "cancelled", &paid, &money))
        }
        JobCommand::Expire { job, sol } => {
            let paid = ops::expire_job_with(chain, signer, job, sol.wrapped())?;
            let money = wallet.money(chain, &paid.mint)?;
            Ok(refund_output(job, "expired", &paid, &money))
        }
        JobCommand::Key {
            job,
            expires_in,
            limit,
        } => {
            let money = wallet.money(chain, &ops::job(chain, job)?.mint)?;
            let limit = limit
                .as_deref()
                .map(|text| money.parse(text, "limit"))
                .transpose()?;
            let key = ops::job_key(chain, signer, job, *expires_in, limit)?;
            let mut json = serde_json::to_value(&key).unwrap_or_default();
            add_decimals(&mut json, money.decimals);
            Ok(Output::message(key_text(&key, &money), json))
        }
        JobCommand::Close { job } => {
            ops::close_job(chain, signer, job)?;
            Ok(Output::message(
                format!("job {job} closed: its rent went back to its client"),
                serde_json::json!({ "job": job.to_string(), "closed": true }),
            ))
        }
        // Here a snapshot; the binary follows it live over the websocket
        // (crate::watch).
        JobCommand::Status { job } | JobCommand::Watch { job, .. } => {
            let view = ops::JobView::new(job, &ops::job(chain, job)?);
            let money = wallet.money(chain, &view.job.mint)?;
            Ok(job_output(&view, &money))
        }
        JobCommand::List { all, operator } => {
            let me = signer.pubkey();
            let client = (!*all).then_some(&me);
            let jobs = ops::jobs(chain, client, operator.as_ref())?;
            let mut rows = Vec::with_capacity(jobs.len());
            let mut json = Vec::with_capacity(jobs.len());
            for view in &jobs {
                let money = wallet.money(chain, &view.job.mint)?;
                rows.push(job_row(view, &money));
                let mut value = serde_json::to_value(view).unwrap_or_default();
                add_decimals(&mut value, money.decimals);
                json.push(value);
            }
            let text = if rows.is_empty() {
                "no jobs".to_string()
            } else {
                table(
                    &["job", "id", "status", "escrow left", "units", "paid"],
                    &rows,
                )
            };
            Ok(Output::message(text, serde_json::Value::Array(json)))
        }
    }
}

/// A job as `job open`, `status` and `top-up` print it: JSON in base units with the
/// mint's decimals, the table in tokens.
fn job_output(view: &ops::JobView, money: &Money) -> Output {
    let mut json = serde_json::to_value(view).unwrap_or_default();
    add_decimals(&mut json, money.decimals);
    Output::message(job_table(view, money), json)
}

/// What `job cancel` and `job expire` print.
fn refund_output(job: &Pubkey, verb: &str, paid: &ops::Paid, money: &Money) -> Output {
    let to = if paid.unwrapped {
        " (unwrapped: it is SOL in the wallet)"
    } else {
        ""
    };
    Output::message(
        format!("job {job} {verb}: {} refunded{to}", money.show(paid.amount)),
        serde_json::json!({
            "job": job.to_string(),
            "refunded": paid.amount,
            "decimals": money.decimals,
            "unwrapped": paid.unwrapped,
        }),
    )
}

/// `job open`: the command line's terms as the program's, then `ops::open_job`.
fn open<C: Chain>(
    terms: &OpenArgs,
    chain: &mut C,
    signer: &Keypair,
    units: Units,
) -> Result<Output, ChainError> {
    let OpenArgs {
        operator,
        mint,
        input_price,
        output_price,
        model,
        units: max_units,
        budget,
        id,
        deadline_in,
        kind,
        spend_cap,
    } = terms;
    let money = Money::of(chain, mint, units)?;
    let input_price = money.parse(input_price, "input-price")?;
    let output_price = match (output_price, kind) {
        (Some(price), _) => money.parse(price, "output-price")?,
        (None, UnitKindArg::Tokens) => input_price,
        (None, _) => 0,
    };
    let max_units = match (max_units, budget) {
        (Some(units), _) => *units,
        (None, Some(budget)) => units_for_budget(
            money.parse(budget, "budget")?,
            input_price.max(output_price),
        ),
        // clap requires one of them.
        (None, None) => 0,
    };
    let spend_cap_per_hour = spend_cap
        .as_deref()
        .map(|text| money.parse(text, "spend-cap"))
        .transpose()?
        .unwrap_or(0);
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
        input_price,
        output_price,
        model: model.as_deref().map_or([0; 32], tally_client::model_hash),
        max_units,
        deadline: now.saturating_add(*deadline_in),
        spend_cap_per_hour,
    };
    let job = ops::open_job(chain, signer, operator, mint, args)?;
    Ok(job_output(&job, &money))
}

/// The most units `budget` base units buy at `price` per million (0 without a price:
/// the deposit check then says what is wrong).
fn units_for_budget(budget: u64, price: u64) -> u64 {
    if price == 0 {
        return 0;
    }
    let units = u128::from(budget) * u128::from(tally_client::PRICE_SCALE) / u128::from(price);
    u64::try_from(units).unwrap_or(u64::MAX)
}

/// `job key`: the key, what it allows, and how to use it.
fn key_text(key: &ops::JobKeyView, money: &Money) -> String {
    let limit = key
        .spend_limit
        .map_or_else(|| "up to the escrow".to_string(), |l| money.show(l));
    format!(
        "{}\n\njob          {}\nkey id       {}\nexpires at   {} (unix seconds, chain clock)\nspend limit  {limit}\n\nSend it as `Authorization: Bearer <key>` to the operator's gateway. Anyone holding it can spend the job: keep it secret.",
        key.key, key.job, key.key_id, key.expires_at
    )
}

/// `job list`: a job's row.
fn job_row(v: &ops::JobView, money: &Money) -> Vec<String> {
    vec![
        v.address.to_string(),
        v.job.job_id.to_string(),
        v.status_label().to_string(),
        money.show(v.job.escrow_left),
        v.job.settled_units.to_string(),
        money.show(v.job.settled_gross),
    ]
}
