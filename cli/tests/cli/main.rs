//! The `tally` binary end to end, one test binary: the demo on the embedded chain,
//! and invoice verification and audits, and a wallet user's everyday commands, on
//! solana-test-validator.
mod demo;
mod invoice;
mod wallet;
