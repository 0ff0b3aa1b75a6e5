//! What a sent transaction came to, and the assertions on it: expected errors by
//! code and name, CU ceilings, events, wire sizes.

use crate::*;
use anchor_lang::prelude::Pubkey;
use anchor_lang::solana_program::instruction::Instruction;
use anchor_lang::AnchorDeserialize;
use solana_transaction::Transaction;
use solana_transaction_error::TransactionError;
use tally::errors::TallyError;

/// A confirmed transaction.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Compute units the whole transaction consumed.
    pub cu: u64,
    pub logs: Vec<String>,
    /// Serialized size of the transaction, in bytes (limit: 1,232).
    pub size: usize,
    pub fee: u64,
}

/// A rejected transaction.
#[derive(Debug, Clone)]
pub struct Failed {
    pub err: TransactionError,
    pub logs: Vec<String>,
}

impl Failed {
    /// The custom program error code, if the failure was one.
    pub fn custom_code(&self) -> Option<u32> {
        match &self.err {
            TransactionError::InstructionError(
                _,
                anchor_lang::solana_program::instruction::error::InstructionError::Custom(code),
            ) => Some(*code),
            _ => None,
        }
    }
}

pub type TxResult = Result<Sent, Failed>;

/// Error codes of both kinds a test may expect.
pub trait ExpectedError {
    fn code(&self) -> u32;
    fn name(&self) -> String;
}

impl ExpectedError for TallyError {
    fn code(&self) -> u32 {
        u32::from(*self)
    }
    fn name(&self) -> String {
        format!("TallyError::{self:?}")
    }
}

impl ExpectedError for AnchorErrorCode {
    fn code(&self) -> u32 {
        u32::from(*self)
    }
    fn name(&self) -> String {
        format!("anchor ErrorCode::{self:?}")
    }
}

/// Asserts the transaction failed with exactly `expected`.
#[track_caller]
pub fn expect_error(result: TxResult, expected: impl ExpectedError) -> Failed {
    match result {
        Ok(sent) => panic!(
            "expected {} but the transaction succeeded; logs:\n{}",
            expected.name(),
            sent.logs.join("\n")
        ),
        Err(failed) => {
            assert_eq!(
                failed.custom_code(),
                Some(expected.code()),
                "expected {} ({}), got {:?}; logs:\n{}",
                expected.name(),
                expected.code(),
                failed.err,
                failed.logs.join("\n")
            );
            failed
        }
    }
}

/// Asserts the transaction failed, with any error (for runtime-level refusals such as
/// a missing signature, where no program error code exists).
#[track_caller]
pub fn expect_failure(result: TxResult) -> Failed {
    match result {
        Ok(sent) => panic!(
            "expected a failure but the transaction succeeded; logs:\n{}",
            sent.logs.join("\n")
        ),
        Err(failed) => failed,
    }
}

/// Unwraps a successful transaction, printing its logs otherwise.
#[track_caller]
/// The result of an SDK call (`ops`, `bootstrap`) that a fixture needs to succeed.
pub fn expect_chain<T>(result: Result<T, tally_client::chain::ChainError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

impl Sent {
    /// A transaction the SDK confirmed on the embedded chain (which reports its
    /// compute units and fee), of wire size `size`.
    pub fn landed(confirmed: tally_client::chain::Confirmed, size: usize) -> Self {
        Self {
            cu: confirmed.compute_units.unwrap_or_default(),
            logs: confirmed.logs,
            size,
            fee: confirmed.fee.unwrap_or_default(),
        }
    }
}

pub fn expect_ok(result: TxResult) -> Sent {
    match result {
        Ok(sent) => sent,
        Err(failed) => panic!(
            "transaction failed: {:?}\nlogs:\n{}",
            failed.err,
            failed.logs.join("\n")
        ),
    }
}

/// `ix` with every occurrence of account `from` replaced by `to`: an account
/// substitution attack.
pub fn substitute(mut ix: Instruction, from: Pubkey, to: Pubkey) -> Instruction {
    let mut found = false;
    for meta in &mut ix.accounts {
        if meta.pubkey == from {
            meta.pubkey = to;
            found = true;
        }
    }
    assert!(found, "{from} is not an account of this instruction");
    ix
}

/// Asserts a compute-unit ceiling: a regression in cost fails like one in behaviour.
#[track_caller]
pub fn assert_cu_at_most(sent: &Sent, ceiling: u64, what: &str) {
    assert!(
        sent.cu <= ceiling,
        "{what}: {} CU, above its ceiling of {ceiling} CU",
        sent.cu
    );
}

/// Decodes every event of type `E` that the program logged (the SDK's decoder).
pub fn events<E: anchor_lang::Event + AnchorDeserialize>(logs: &[String]) -> Vec<E> {
    tally_client::event_log::decode(logs)
}

/// Wire size of a transaction: the number the 1,232-byte packet limit applies to.
pub fn tx_wire_size(tx: &Transaction) -> usize {
    // Wire size: signatures (compact-u16 count + 64 each) + the serialized message.
    let message = tx.message.serialize();
    let n = tx.signatures.len();
    compact_u16_len(n) + n * 64 + message.len()
}

pub(crate) fn compact_u16_len(n: usize) -> usize {
    if n < 0x80 {
        1
    } else if n < 0x4000 {
        2
    } else {
        3
    }
}

/// Wire size of a versioned transaction.
pub fn tx_wire_size_versioned(tx: &solana_transaction::versioned::VersionedTransaction) -> usize {
    compact_u16_len(tx.signatures.len()) + tx.signatures.len() * 64 + tx.message.serialize().len()
}
