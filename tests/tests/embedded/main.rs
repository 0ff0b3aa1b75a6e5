//! The embedded suite: the SBF program (target/deploy/tally.so) in LiteSVM.
//! One test binary; one module per area.

mod idl;
mod smoke;
