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

/// Most addresses one lookup table holds.
pub const TABLE_CAPACITY: usize = 256;

/// A lookup table account's state, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupTableState {
    /// `u64::MAX` while active; else the slot it was deactivated in.
    pub deactivation_slot: u64,
    /// The slot addresses were last added in: those added then are usable from the
    /// next slot on.
    pub last_extended_slot: u64,
    /// How many addresses the table held before that last extension.
    pub last_extended_slot_start_index: u8,
    /// `None` once frozen.
    pub authority: Option<Pubkey>,
    pub addresses: Vec<Pubkey>,
}

impl LookupTableState {
    /// Whether it is active (not deactivated).
    pub fn is_active(&self) -> bool {
        self.deactivation_slot == u64::MAX
    }

    /// The addresses a transaction executing at `slot` or later can look up (those
    /// added in the last extension only once the chain is past its slot).
    pub fn usable_at(&self, slot: u64) -> &[Pubkey] {
        let n = if slot > self.last_extended_slot {
            self.addresses.len()
        } else {
            usize::from(self.last_extended_slot_start_index).min(self.addresses.len())
        };
        &self.addresses[..n]
    }
}

/// Decodes a lookup-table account's data (the lookup-table program's layout: a u32
/// state tag, the metadata, then the addresses from byte 56).
pub fn decode_lookup_table(data: &[u8]) -> Option<LookupTableState> {
    let u64_at = |at: usize| -> Option<u64> {
        data.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let tag = u32::from_le_bytes(data.get(..4)?.try_into().ok()?);
    if tag != 1 {
        return None;
    }
    let authority = match *data.get(21)? {
        0 => None,
        1 => Some(Pubkey::new_from_array(data.get(22..54)?.try_into().ok()?)),
        _ => return None,
    };
    let raw = data.get(56..)?;
    if raw.len() % 32 != 0 {
        return None;
    }
    let addresses = raw
        .as_chunks::<32>()
        .0
        .iter()
        .map(|c| Pubkey::new_from_array(*c))
        .collect();
    Some(LookupTableState {
        deactivation_slot: u64_at(4)?,
        last_extended_slot: u64_at(12)?,
        last_extended_slot_start_index: *data.get(20)?,
        authority,
        addresses,
    })
}

/// `extend_lookup_table` transactions adding `addresses` to `table`, at most
/// [`ADDRESSES_PER_EXTEND`] each (send them one after the other: each writes the table).
pub fn extend_lookup_table(
    table: Pubkey,
    authority: Pubkey,
    payer: Pubkey,
    addresses: &[Pubkey],
) -> Vec<Instruction> {
    addresses
        .chunks(ADDRESSES_PER_EXTEND)
        .map(|chunk| alt_ix::extend_lookup_table(table, authority, Some(payer), chunk.to_vec()))
        .collect()
}

/// Deactivates `table` (the first step to closing it; it cannot be used after).
pub fn deactivate_lookup_table(table: Pubkey, authority: Pubkey) -> Instruction {
    alt_ix::deactivate_lookup_table(table, authority)
}

/// Closes a deactivated `table` once its deactivation slot has left the slot hashes,
/// sending its rent to `recipient`.
pub fn close_lookup_table(table: Pubkey, authority: Pubkey, recipient: Pubkey) -> Instruction {
    alt_ix::close_lookup_table(table, authority, recipient)
}

/// How many slots a deactivated table must wait before it can be closed (the length of
/// the SlotHashes history), plus one.
pub const DEACTIVATION_COOLDOWN_SLOTS: u64 = 513;

/// The wire size of a v0 transaction of `message` with one signature per required
/// signer: what the 1,232-byte packet limit applies to.
pub fn v0_wire_size(message: &VersionedMessage) -> usize {
    let signatures = usize::from(message.header().num_required_signatures);
    let count_len = if signatures < 0x80 { 1 } else { 2 };
    count_len + signatures * 64 + message.serialize().len()
}
