//! The relayed attestation path: receipts signed by oracle keys, verified on-chain by
//! the Ed25519 precompile, posted by anyone with `settle_relayed`.
use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::{AccountMeta, Instruction};
use anchor_lang::InstructionData;
use tally::receipt::{UsageReceipt, RECEIPT_MESSAGE_LEN};

use crate::pda;

/// A receipt and the oracle signatures over its [`UsageReceipt::message`] bytes.
#[derive(Clone, Debug)]
pub struct SignedReceipt {
    pub receipt: UsageReceipt,
    /// (oracle key, ed25519 signature), one per oracle, at least the threshold.
    pub signatures: Vec<(Pubkey, [u8; 64])>,
}

const HEADER_LEN: usize = 2;
const OFFSETS_LEN: usize = 14;
/// `instruction_index` meaning "this instruction".
const THIS_INSTRUCTION: u16 = u16::MAX;

/// Error building an Ed25519 instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// More than 255 signatures, or data past 65,535 bytes.
    TooLarge,
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::TooLarge => {
                write!(
                    f,
                    "too many signatures for one Ed25519 instruction: split the batch"
                )
            }
        }
    }
}

impl std::error::Error for RelayError {}

/// The Ed25519 precompile instruction verifying every signature of `receipts`, grouped
/// by receipt in order. Every offset points into the instruction itself; each oracle
/// key and each receipt message is stored once and shared by its signatures.
pub fn ed25519_verify(
    receipts: &[SignedReceipt],
    program_id: &Pubkey,
) -> Result<Instruction, RelayError> {
    let count: usize = receipts.iter().map(|r| r.signatures.len()).sum();
    let count_u8 = u8::try_from(count).map_err(|_| RelayError::TooLarge)?;
    let mut keys: Vec<Pubkey> = Vec::new();
    for r in receipts {
        for (key, _) in &r.signatures {
            if !keys.contains(key) {
                keys.push(*key);
            }
        }
    }
    let table_end = HEADER_LEN + count * OFFSETS_LEN;
    let keys_start = table_end;
    let mut data = vec![count_u8, 0];
    data.resize(table_end, 0);
    for key in &keys {
        data.extend_from_slice(key.as_ref());
    }
    let mut entries: Vec<[u16; 7]> = Vec::with_capacity(count);
    let to_u16 = |n: usize| u16::try_from(n).map_err(|_| RelayError::TooLarge);
    for r in receipts {
        let message_at = data.len();
        data.extend_from_slice(&r.receipt.message(program_id));
        for (key, signature) in &r.signatures {
            let key_index = keys.iter().position(|k| k == key).unwrap_or_default();
            let signature_at = data.len();
            data.extend_from_slice(signature);
            entries.push([
                to_u16(signature_at)?,
                THIS_INSTRUCTION,
                to_u16(keys_start + key_index * 32)?,
                THIS_INSTRUCTION,
                to_u16(message_at)?,
                to_u16(RECEIPT_MESSAGE_LEN)?,
                THIS_INSTRUCTION,
            ]);
        }
    }
    to_u16(data.len())?;
    for (i, entry) in entries.iter().enumerate() {
        let at = HEADER_LEN + i * OFFSETS_LEN;
        for (k, value) in entry.iter().enumerate() {
            data[at + 2 * k..at + 2 * k + 2].copy_from_slice(&value.to_le_bytes());
        }
    }
    Ok(Instruction {
        program_id: solana_sdk_ids::ed25519_program::ID,
        accounts: vec![],
        data,
    })
}

/// `settle_relayed` for the jobs of `receipts` (operator `operator_authority`, `mint`,
/// revenue day `day`). It must directly follow [`ed25519_verify`] of the same receipts.
pub fn settle_relayed(
    relayer: Pubkey,
    operator_authority: Pubkey,
    mint: Pubkey,
    day: u32,
    receipts: &[SignedReceipt],
) -> Instruction {
    let operator = pda::operator(&operator_authority);
    let mut accounts = anchor_lang::ToAccountMetas::to_account_metas(
        &tally::accounts::SettleRelayed {
            relayer,
            config: pda::config(),
            vault: pda::vault(&mint),
            earnings: pda::earnings(&operator, &mint),
            revenue: pda::revenue(&mint, day),
            instructions: solana_sdk_ids::sysvar::instructions::ID,
        },
        None,
    );
    accounts.extend(
        receipts
            .iter()
            .map(|r| AccountMeta::new(r.receipt.job, false)),
    );
    Instruction {
        program_id: tally::ID,
        accounts,
        data: tally::instruction::SettleRelayed {}.data(),
    }
}

/// The two instructions of a relayed settlement, in order.
pub fn relayed_settlement(
    relayer: Pubkey,
    operator_authority: Pubkey,
    mint: Pubkey,
    day: u32,
    receipts: &[SignedReceipt],
) -> Result<[Instruction; 2], RelayError> {
    Ok([
        ed25519_verify(receipts, &tally::ID)?,
        settle_relayed(relayer, operator_authority, mint, day, receipts),
    ])
}
