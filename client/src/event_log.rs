//! Decoding the program's events from transaction logs (`emit!` writes each as a
//! `Program data: <base64>` line: discriminator, then the Borsh-encoded event).
use anchor_lang::AnchorDeserialize;
use base64::Engine as _;

/// Every event of type `E` in `logs`, in order.
pub fn decode<E: anchor_lang::Event + AnchorDeserialize>(logs: &[String]) -> Vec<E> {
    logs.iter()
        .filter_map(|line| line.strip_prefix("Program data: "))
        .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .filter_map(|bytes| {
            let rest = bytes.strip_prefix(E::DISCRIMINATOR)?;
            E::deserialize(&mut &rest[..]).ok()
        })
        .collect()
}
