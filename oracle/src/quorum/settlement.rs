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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use anchor_lang::solana_program::system_instruction;
    use solana_message::{Message, VersionedMessage};
    use tally_client::ix::{self, Attestation};

    use super::*;

    fn attestation(oracles: &[Pubkey]) -> Attestation {
        Attestation {
            oracles: oracles.to_vec(),
            oracle_set_version: 3,
            day: 20_000,
        }
    }

    fn receipt(seq: u64) -> SettleReceipt {
        SettleReceipt {
            seq,
            cumulative_units: 1_000 * seq,
            cumulative_output: 100 * seq,
            invoice_hash: [7; 32],
            period_end: 1_800_000_000,
        }
    }

    fn message(
        payer: &Pubkey,
        instructions: &[anchor_lang::solana_program::instruction::Instruction],
    ) -> VersionedMessage {
        VersionedMessage::Legacy(Message::new(instructions, Some(payer)))
    }

    /// A legacy message resolves no lookup table (the signature read_settlement takes).
    #[allow(clippy::unnecessary_wraps)]
    fn no_tables(_: &Pubkey) -> Result<Option<Vec<Pubkey>>, OracleError> {
        Ok(None)
    }

    #[test]
    fn a_settle_is_read_back_with_its_signers_version_and_receipts() {
        let (leader, peer, operator, mint) = (
            Pubkey::new_unique(),
            Pubkey::new_unique(),
            Pubkey::new_unique(),
            Pubkey::new_unique(),
        );
        let jobs = [Pubkey::new_unique(), Pubkey::new_unique()];
        let receipts = vec![(jobs[0], receipt(1)), (jobs[1], receipt(4))];
        let settle = ix::settle(&attestation(&[leader, peer]), operator, mint, &receipts);
        let read = read_settlement(&message(&leader, &[settle]), no_tables).unwrap();
        assert_eq!(read.proposer, leader);
        assert!(read.signers.contains(&peer));
        assert_eq!(read.oracle_set_version, 3);
        assert_eq!(read.receipts, receipts);
    }

    /// A co-signer signs the whole message: anything besides one settle (a transfer
    /// out of its account, a second settle, another program) is refused.
    #[test]
    fn anything_but_one_settle_is_refused() {
        let (leader, peer) = (Pubkey::new_unique(), Pubkey::new_unique());
        let settle = ix::settle(
            &attestation(&[leader, peer]),
            Pubkey::new_unique(),
            Pubkey::new_unique(),
            &[(Pubkey::new_unique(), receipt(1))],
        );
        let drain = system_instruction::transfer(&peer, &leader, 1_000_000_000);
        for instructions in [
            vec![settle.clone(), drain.clone()],
            vec![drain, settle.clone()],
            vec![settle.clone(), settle.clone()],
            vec![ix::close_job(
                leader,
                Pubkey::new_unique(),
                Pubkey::new_unique(),
            )],
        ] {
            assert_eq!(
                read_settlement(&message(&leader, &instructions), no_tables),
                Err(Refusal::NotASettlement)
            );
        }
    }

    #[test]
    fn receipts_that_do_not_match_the_job_accounts_are_malformed() {
        let leader = Pubkey::new_unique();
        let mut settle = ix::settle(
            &attestation(&[leader]),
            Pubkey::new_unique(),
            Pubkey::new_unique(),
            &[
                (Pubkey::new_unique(), receipt(1)),
                (Pubkey::new_unique(), receipt(1)),
            ],
        );
        // One job account fewer than receipts.
        settle.accounts.pop();
        assert!(matches!(
            read_settlement(&message(&leader, &[settle]), no_tables),
            Err(Refusal::Malformed(_))
        ));
    }
}
