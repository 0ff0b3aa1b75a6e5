//! Batched settlement through an address lookup table: with the accounts in a table,
//! each receipt costs one account-index byte instead of a 32-byte key, so one
//! transaction carries many more receipts.
use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::Instruction;
use solana_address_lookup_table_interface::instruction as alt_ix;
pub use solana_message::{v0, AddressLookupTableAccount, CompileError, VersionedMessage};

use crate::pda;

/// Most addresses one `extend_lookup_table` instruction should carry to keep its
/// transaction under the packet limit.
pub const ADDRESSES_PER_EXTEND: usize = 20;

/// The accounts a settlement of `jobs` for `operator_authority` in `mint` on `day`
/// touches, for a lookup table (signers stay outside tables).
pub fn settlement_addresses(
    operator_authority: &Pubkey,
    mint: &Pubkey,
    day: u32,
    jobs: &[Pubkey],
) -> Vec<Pubkey> {
    let operator = pda::operator(operator_authority);
    let mut addresses = vec![
        tally::ID,
        pda::config(),
        pda::vault(mint),
        pda::earnings(&operator, mint),
        pda::revenue(mint, day),
    ];
    addresses.extend_from_slice(jobs);
    addresses
}

/// Instructions that create a lookup table of `authority` at `recent_slot` (a slot
/// in the cluster's SlotHashes) and fill it with `addresses`; returns the table's
/// address. Send them in order: the first creates and extends, each further one
/// extends (one transaction each).
pub fn create_lookup_table(
    authority: Pubkey,
    payer: Pubkey,
    recent_slot: u64,
    addresses: &[Pubkey],
) -> (Pubkey, Vec<Vec<Instruction>>) {
    let (create, table) = alt_ix::create_lookup_table(authority, payer, recent_slot);
    let mut transactions: Vec<Vec<Instruction>> = vec![vec![create]];
    for (i, chunk) in addresses.chunks(ADDRESSES_PER_EXTEND).enumerate() {
        let extend = alt_ix::extend_lookup_table(table, authority, Some(payer), chunk.to_vec());
        if i == 0 {
            if let Some(first) = transactions.first_mut() {
                first.push(extend);
            }
        } else {
            transactions.push(vec![extend]);
        }
    }
    (table, transactions)
}

/// A v0 message for `instructions`, resolving every non-signer account found in
/// `tables` through them.
pub fn v0_message(
    payer: &Pubkey,
    instructions: &[Instruction],
    tables: &[AddressLookupTableAccount],
    recent_blockhash: solana_hash::Hash,
) -> Result<VersionedMessage, CompileError> {
    v0::Message::try_compile(payer, instructions, tables, recent_blockhash)
        .map(VersionedMessage::V0)
}
