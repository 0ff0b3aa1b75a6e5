//! `tally operator …`: register, update, earnings, claim.
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally_client::chain::{Chain, ChainError};
use tally_client::ops;

use crate::args::{OperatorCommand, OperatorFields};
use tally_client::OperatorArgs;

use crate::output::{table, Output};

fn operator_args(fields: &OperatorFields, signer: &Keypair) -> OperatorArgs {
    OperatorArgs {
        payout_owner: fields.payout.unwrap_or_else(|| signer.pubkey()),
        node_keys: fields.node_keys.clone(),
    }
}

pub(super) fn execute<C: Chain>(
    command: &OperatorCommand,
    chain: &mut C,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    match command {
        OperatorCommand::Register(fields) | OperatorCommand::Update(fields) => {
            let update = matches!(command, OperatorCommand::Update(_));
            register(fields, update, chain, signer)
        }
        OperatorCommand::Claim => claim(chain, signer),
        OperatorCommand::Earnings { operator } => {
            let authority = operator.unwrap_or_else(|| signer.pubkey());
            let views = ops::earnings(chain, &authority)?;
            let text = if views.is_empty() {
                format!("no earnings yet for {authority}")
            } else {
                earnings_table(&views)
            };
            Ok(Output::of(&views, text))
        }
    }
}

/// `operator register` / `operator update`.
fn register<C: Chain>(
    fields: &OperatorFields,
    update: bool,
    chain: &mut C,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    let args = operator_args(fields, signer);
    ops::register_operator(chain, signer, args.clone(), update)?;
    let verb = if update { "updated" } else { "registered" };
    let operator = tally_client::pda::operator(&signer.pubkey());
    Ok(Output::message(
        format!(
            "operator {operator} {verb}: payouts to {}, {} node key(s)",
            args.payout_owner,
            args.node_keys.len()
        ),
        serde_json::json!({
            "operator": operator.to_string(),
            "payout_owner": args.payout_owner.to_string(),
        }),
    ))
}

/// `operator claim`: every mint with something matured.
fn claim<C: Chain>(chain: &mut C, signer: &Keypair) -> Result<Output, ChainError> {
    let mut claimed = Vec::new();
    for e in ops::earnings(chain, &signer.pubkey())? {
        if e.claimable > 0 {
            claimed.push((e.mint, ops::claim(chain, signer, &e.mint)?));
        }
    }
    let text = if claimed.is_empty() {
        "nothing to claim yet: earnings mature after the challenge window".to_string()
    } else {
        claimed
            .iter()
            .map(|(mint, amount)| format!("claimed {amount} in {mint}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let json = claimed
        .iter()
        .map(|(mint, amount)| serde_json::json!({ "mint": mint.to_string(), "amount": amount }))
        .collect();
    Ok(Output::message(text, serde_json::Value::Array(json)))
}

/// `operator earnings`: one row per mint.
fn earnings_table(views: &[ops::EarningsView]) -> String {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|e| {
            vec![
                e.mint.to_string(),
                e.claimable.to_string(),
                e.pending.to_string(),
                e.frozen.to_string(),
                e.total_earned.to_string(),
                e.total_claimed.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "mint",
            "claimable",
            "in window",
            "disputed",
            "earned",
            "claimed",
        ],
        &rows,
    )
}
