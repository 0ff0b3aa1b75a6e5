//! Account types. Sizes are pinned by layout tests (`tests/embedded/layout.rs`).
pub mod client_jobs;
pub mod config;
pub mod earnings;
pub mod job;
pub mod operator;
pub mod revenue;
pub mod seeds;
pub mod vault;

pub use client_jobs::*;
pub use config::*;
pub use earnings::*;
pub use job::*;
pub use operator::*;
pub use revenue::*;
pub use vault::*;

/// Seconds in a UTC day: [`Revenue`] accounts are keyed by `unix_timestamp / SECONDS_PER_DAY`.
pub const SECONDS_PER_DAY: i64 = 86_400;

/// The UTC day number (days since 1970-01-01) of a Unix timestamp (0 before 1970).
pub fn utc_day(unix_timestamp: i64) -> u32 {
    // Unsigned division: the SBPF backend has no signed division.
    let secs = u64::try_from(unix_timestamp).unwrap_or(0);
    let days = secs
        .checked_div(SECONDS_PER_DAY.unsigned_abs())
        .unwrap_or(0);
    u32::try_from(days).unwrap_or(u32::MAX)
}
