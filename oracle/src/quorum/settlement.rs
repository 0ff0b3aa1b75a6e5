//! Reading a settle transaction back from its message: the program, the oracle-set
//! version, the signers, and each receipt with its job account (lookup tables
//! resolved on chain).
use anchor_lang::prelude::Pubkey;
use anchor_lang::AnchorDeserialize;
use anchor_lang::Discriminator;
use tally_client::{SettleArgs, SettleReceipt};

use super::Refusal;
use crate::OracleError;

/// The compute-budget program: the only other program a settlement may call.
const COMPUTE_BUDGET: Pubkey =
    Pubkey::from_str_const("ComputeBudget111111111111111111111111111111");

/// A settle instruction read back from a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// The fee payer: the leader.
    pub proposer: Pubkey,
    /// Every key that signs the message.
    pub signers: Vec<Pubkey>,
    pub oracle_set_version: u32,
    /// Each receipt with its job account.
    pub receipts: Vec<(Pubkey, SettleReceipt)>,
}

/// Reads the settlement a message carries: one `settle` of this program (and
/// compute-budget instructions at most), its accounts resolved through the lookup
/// tables `tables` returns.
pub fn read_settlement(
    message: &solana_message::VersionedMessage,
    tables: impl Fn(&Pubkey) -> Result<Option<Vec<Pubkey>>, OracleError>,
) -> Result<Settlement, Refusal> {
    let keys = resolved_keys(message, tables)?;
    let header = message.header();
    let signers: Vec<Pubkey> = keys
        .iter()
        .take(usize::from(header.num_required_signatures))
        .copied()
        .collect();
    let proposer = *signers.first().ok_or(Refusal::NotASettlement)?;
    let mut settle = None;
    for ix in message.instructions() {
        let program = keys
            .get(usize::from(ix.program_id_index))
            .ok_or(Refusal::NotASettlement)?;
        if *program == COMPUTE_BUDGET {
            continue;
        }
        if *program != tally::ID || settle.is_some() {
            return Err(Refusal::NotASettlement);
        }
        settle = Some(ix);
    }
    let ix = settle.ok_or(Refusal::NotASettlement)?;
    let data = ix
        .data
        .strip_prefix(tally::instruction::Settle::DISCRIMINATOR)
        .ok_or(Refusal::NotASettlement)?;
    let args = SettleArgs::deserialize(&mut &data[..])
        .map_err(|e| Refusal::Malformed(format!("settle arguments: {e}")))?;
    let accounts: Vec<Pubkey> = ix
        .accounts
        .iter()
        .map(|i| keys.get(usize::from(*i)).copied())
        .collect::<Option<_>>()
        .ok_or_else(|| Refusal::Malformed("an account index is out of range".into()))?;
    // settle's accounts: oracle, config, vault, earnings, revenue, the extra oracle
    // signers, then one job per receipt.
    let jobs = accounts
        .get(5 + usize::from(args.extra_oracle_signers)..)
        .ok_or_else(|| Refusal::Malformed("fewer accounts than settle takes".into()))?;
    let mut packed = tally::receipt::PackedReceipts::new(&args.receipts)
        .map_err(|e| Refusal::Malformed(format!("packed receipts: {e}")))?;
    let mut receipts = Vec::with_capacity(jobs.len());
    for job in jobs {
        let receipt = packed
            .next_receipt()
            .map_err(|e| Refusal::Malformed(format!("packed receipts: {e}")))?;
        receipts.push((*job, receipt));
    }
    if !packed.is_empty() {
        return Err(Refusal::Malformed("more receipts than job accounts".into()));
    }
    Ok(Settlement {
        proposer,
        signers,
        oracle_set_version: args.oracle_set_version,
        receipts,
    })
}

/// The message's account keys: its static keys, then those loaded from lookup
/// tables (every table's writable ones, then every table's read-only ones).
fn resolved_keys(
    message: &solana_message::VersionedMessage,
    tables: impl Fn(&Pubkey) -> Result<Option<Vec<Pubkey>>, OracleError>,
) -> Result<Vec<Pubkey>, Refusal> {
    let mut keys = message.static_account_keys().to_vec();
    let Some(lookups) = message.address_table_lookups() else {
        return Ok(keys);
    };
    let mut loaded = Vec::with_capacity(lookups.len());
    for lookup in lookups {
        let table = tables(&lookup.account_key)?.ok_or_else(|| {
            Refusal::Malformed(format!(
                "lookup table {} does not exist",
                lookup.account_key
            ))
        })?;
        loaded.push((lookup, table));
    }
    let pick = |table: &[Pubkey], indexes: &[u8]| -> Result<Vec<Pubkey>, Refusal> {
        indexes
            .iter()
            .map(|i| table.get(usize::from(*i)).copied())
            .collect::<Option<_>>()
            .ok_or_else(|| Refusal::Malformed("a lookup index is out of range".into()))
    };
    for (lookup, table) in &loaded {
        keys.extend(pick(table, &lookup.writable_indexes)?);
    }
    for (lookup, table) in &loaded {
        keys.extend(pick(table, &lookup.readonly_indexes)?);
    }
    Ok(keys)
}
