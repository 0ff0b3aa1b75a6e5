//! Reading oracle signatures verified by the Ed25519 precompile, through the
//! instructions sysvar, for the relayed attestation path.
//!
//! The classic bug is trusting offsets that point into *another* instruction: the
//! precompile then verified a signature over bytes the program never looks at. Here
//! every offset must point into the Ed25519 instruction itself, every range must lie
//! inside its data, and the program compares the signed bytes with the receipt it
//! settles.
use anchor_lang::prelude::*;

use crate::errors::TallyError;

/// Bytes before the offsets table: signature count, padding.
const HEADER_LEN: usize = 2;
/// One `Ed25519SignatureOffsets` entry.
const OFFSETS_LEN: usize = 14;
const SIGNATURE_LEN: usize = 64;
const PUBKEY_LEN: usize = 32;
/// `instruction_index` meaning "this instruction".
const THIS_INSTRUCTION: u16 = u16::MAX;

/// One signature the precompile verified: who signed which bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedMessage<'a> {
    pub signer: Pubkey,
    pub message: &'a [u8],
}

fn read_u16(data: &[u8], at: usize) -> Result<u16> {
    let bytes = data
        .get(at..at.saturating_add(2))
        .ok_or(TallyError::MalformedSignatureData)?;
    Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn slice(data: &[u8], offset: u16, len: usize) -> Result<&[u8]> {
    let start = usize::from(offset);
    data.get(start..start.saturating_add(len))
        .ok_or_else(|| TallyError::MalformedSignatureData.at_caller())
}

/// Parses the data of the Ed25519 instruction at `own_index`, accepting only entries
/// whose signature, public key and message all lie in that same instruction.
pub fn parse_signatures(data: &[u8], own_index: u16) -> Result<Vec<SignedMessage<'_>>> {
    let count = usize::from(*data.first().ok_or(TallyError::MalformedSignatureData)?);
    let table_end = count
        .checked_mul(OFFSETS_LEN)
        .and_then(|n| n.checked_add(HEADER_LEN))
        .ok_or(TallyError::MalformedSignatureData)?;
    ensure!(data.len() >= table_end, TallyError::MalformedSignatureData);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = HEADER_LEN.saturating_add(i.saturating_mul(OFFSETS_LEN));
        let field = |k: usize| read_u16(data, at.saturating_add(k.saturating_mul(2)));
        let (sig_offset, sig_ix) = (field(0)?, field(1)?);
        let (key_offset, key_ix) = (field(2)?, field(3)?);
        let (msg_offset, msg_size, msg_ix) = (field(4)?, field(5)?, field(6)?);
        for index in [sig_ix, key_ix, msg_ix] {
            ensure!(
                index == THIS_INSTRUCTION || index == own_index,
                TallyError::SignatureInOtherInstruction
            );
        }
        slice(data, sig_offset, SIGNATURE_LEN)?;
        let key = slice(data, key_offset, PUBKEY_LEN)?;
        let message = slice(data, msg_offset, usize::from(msg_size))?;
        let signer =
            Pubkey::try_from(key).map_err(|_| TallyError::MalformedSignatureData.at_caller())?;
        out.push(SignedMessage { signer, message });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_entry(fields: [u16; 7], tail: &[u8]) -> Vec<u8> {
        let mut data = vec![1u8, 0];
        for f in fields {
            data.extend_from_slice(&f.to_le_bytes());
        }
        data.extend_from_slice(tail);
        data
    }

    #[test]
    fn self_contained_entries_parse() {
        let tail = [9u8; 32 + 64 + 10];
        let data = one_entry([48, u16::MAX, 16, u16::MAX, 112, 10, 3], &tail);
        let parsed = parse_signatures(&data, 3).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].message, &[9u8; 10]);
    }

    #[test]
    fn truncated_or_foreign_data_is_refused() {
        let tail = [9u8; 32 + 64 + 10];
        // Offsets table cut short.
        assert!(parse_signatures(&[2, 0, 1, 2, 3], 0).is_err());
        assert!(parse_signatures(&[], 0).is_err());
        // Message running past the data.
        let data = one_entry([48, u16::MAX, 16, u16::MAX, 112, 11, u16::MAX], &tail);
        assert!(parse_signatures(&data, 0).is_err());
        // Public key in instruction 0 while this is instruction 1.
        let data = one_entry([48, u16::MAX, 16, 0, 112, 10, u16::MAX], &tail);
        assert!(parse_signatures(&data, 1).is_err());
    }
}
