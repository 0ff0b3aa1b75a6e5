//! Signing for the relayed path: oracle signatures over receipts, and raw Ed25519
//! precompile instructions for the attacks on it.

use crate::*;
use anchor_lang::solana_program::instruction::Instruction;
use solana_keypair::Keypair;
use solana_signer::Signer;

/// A self-contained Ed25519 precompile instruction: `signer` over `message`, any bytes
/// (for attacks on the relayed path: foreign, truncated or old-format messages).
pub fn ed25519_over(message: &[u8], signer: &Keypair) -> Instruction {
    let signature = <[u8; 64]>::from(signer.sign_message(message));
    let key_at: u16 = 2 + 14;
    let sig_at: u16 = key_at + 32;
    let msg_at: u16 = sig_at + 64;
    let len = u16::try_from(message.len()).expect("a message under 64 KiB");
    let mut data = vec![1u8, 0];
    for v in [sig_at, u16::MAX, key_at, u16::MAX, msg_at, len, u16::MAX] {
        data.extend_from_slice(&v.to_le_bytes());
    }
    data.extend_from_slice(signer.pubkey().as_ref());
    data.extend_from_slice(&signature);
    data.extend_from_slice(message);
    Instruction {
        program_id: tally_client::relay::ed25519_verify(&[], &tally::ID)
            .expect("an empty Ed25519 instruction")
            .program_id,
        accounts: vec![],
        data,
    }
}

/// Signs a usage receipt's message bytes with each of `oracles`.
pub fn sign_usage(
    usage: tally_client::UsageReceipt,
    oracles: &[&Keypair],
) -> tally_client::relay::SignedReceipt {
    let message = usage.message(&tally::ID);
    tally_client::relay::SignedReceipt {
        receipt: usage,
        signatures: oracles
            .iter()
            .map(|k| (k.pubkey(), <[u8; 64]>::from(k.sign_message(&message))))
            .collect(),
    }
}
