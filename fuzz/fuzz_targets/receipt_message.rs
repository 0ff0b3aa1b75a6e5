//! The receipt decoder never panics, and whatever it accepts re-encodes to the same
//! bytes (so two different byte strings can never mean the same receipt).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tally::receipt::UsageReceipt;

fuzz_target!(|data: &[u8]| {
    if let Some(receipt) = UsageReceipt::from_message(&tally::ID, data) {
        assert_eq!(receipt.message(&tally::ID).as_slice(), data);
    }
});
