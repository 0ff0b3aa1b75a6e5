//! `tally operator …`: register, update, earnings, claim.
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally_client::chain::{Chain, ChainError};
use tally_client::ops;

use crate::args::{OperatorCommand, OperatorFields};
use crate::money::{add_decimals, Money, Units, Wallet};
use tally_client::ops::WrappedSol;
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
    units: Units,
) -> Result<Output, ChainError> {
    let mut wallet = Wallet::new(units);
    match command {
        OperatorCommand::Register(fields) | OperatorCommand::Update(fields) => {
            let update = matches!(command, OperatorCommand::Update(_));
            register(fields, update, chain, signer)
        }
        OperatorCommand::Claim { sol } => claim(chain, signer, sol.wrapped(), &mut wallet),
        OperatorCommand::Earnings { operator } => {
            let authority = operator.unwrap_or_else(|| signer.pubkey());
            let views = ops::earnings(chain, &authority)?;
            let mut rows = Vec::with_capacity(views.len());
            let mut json = Vec::with_capacity(views.len());
            for view in &views {
                let money = wallet.money(chain, &view.mint)?;
                rows.push(earnings_row(view, &money));
                let mut value = serde_json::to_value(view).unwrap_or_default();
                add_decimals(&mut value, money.decimals);
                json.push(value);
            }
            let text = if rows.is_empty() {
                format!("no earnings yet for {authority}")
            } else {
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
            };
            Ok(Output::message(text, serde_json::Value::Array(json)))
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
fn claim<C: Chain>(
    chain: &mut C,
    signer: &Keypair,
    wrapped: WrappedSol,
    wallet: &mut Wallet,
) -> Result<Output, ChainError> {
    let mut lines = Vec::new();
    let mut json = Vec::new();
    for e in ops::earnings(chain, &signer.pubkey())? {
        if e.claimable == 0 {
            continue;
        }
        let paid = ops::claim_with(chain, signer, &e.mint, wrapped)?;
        let money = wallet.money(chain, &e.mint)?;
        let to = if paid.unwrapped {
            " (unwrapped: it is SOL in the wallet)"
        } else {
            ""
        };
        lines.push(format!(
            "claimed {} in {}{to}",
            money.show(paid.amount),
            e.mint
        ));
        json.push(serde_json::json!({
            "mint": e.mint.to_string(),
            "amount": paid.amount,
            "decimals": money.decimals,
            "unwrapped": paid.unwrapped,
        }));
    }
    let text = if lines.is_empty() {
        "nothing to claim yet: earnings mature after the challenge window (see `tally operator earnings`)".to_string()
    } else {
        lines.join("\n")
    };
    Ok(Output::message(text, serde_json::Value::Array(json)))
}

/// `operator earnings`: a mint's row.
fn earnings_row(e: &ops::EarningsView, money: &Money) -> Vec<String> {
    vec![
        e.mint.to_string(),
        money.show(e.claimable),
        money.show(e.pending),
        money.show(e.frozen),
        money.show(e.total_earned),
        money.show(e.total_claimed),
    ]
}
