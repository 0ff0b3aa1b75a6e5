//! The oracle's one clock: the chain's.
//!
//! A job's deadline, its spend cap and a receipt's `period_end` are all in the chain's
//! time (the Clock sysvar), so usage records are stamped in it too — never in this
//! machine's wall clock, which can be minutes (a validator's clock), days (a test
//! chain, a paused cluster) or a time zone's worth of misconfiguration away.
//!
//! Reading the chain per request would cost an RPC call each, so the clock keeps the
//! offset between the chain and this machine: every settlement round re-reads the
//! Clock sysvar ([`ChainClock::sync`]), and between reads the chain's time advances
//! with the machine's. The offset is exported (`tally_oracle_chain_clock_offset_seconds`)
//! and a large one is logged, so the two clocks are never mixed without saying so.
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use tally_client::chain::{Chain, ChainError};

/// Offsets beyond this many seconds are logged when first seen.
pub const LOGGED_OFFSET_SECS: i64 = 60;

/// This machine's wall clock in unix seconds. Only [`ChainClock`] reads it.
fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The chain's time, as last read, carried forward by the machine's clock.
#[derive(Debug, Default)]
pub struct ChainClock {
    /// Chain time minus machine time at the last sync, in seconds.
    offset: AtomicI64,
    synced: AtomicBool,
}

impl ChainClock {
    /// A clock that has not read the chain yet: machine time until the first sync.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The chain's unix time now (estimated between syncs).
    pub fn now(&self) -> i64 {
        system_now().saturating_add(self.offset.load(Ordering::Acquire))
    }

    /// Chain time minus machine time, in seconds, at the last sync.
    pub fn offset(&self) -> i64 {
        self.offset.load(Ordering::Acquire)
    }

    /// Whether the chain's clock has been read at least once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Takes the chain's unix time `chain_unix` as now; returns the new offset.
    pub fn set_chain_time(&self, chain_unix: i64) -> i64 {
        let offset = chain_unix.saturating_sub(system_now());
        let previous = self.offset.swap(offset, Ordering::AcqRel);
        let first = !self.synced.swap(true, Ordering::AcqRel);
        if offset.abs() > LOGGED_OFFSET_SECS
            && (first || (offset - previous).abs() > LOGGED_OFFSET_SECS)
        {
            tracing::warn!(
                offset_secs = offset,
                "the chain's clock is {} s {} this machine's: usage is stamped, and deadlines \
                 judged, in the chain's time",
                offset.abs(),
                if offset < 0 { "behind" } else { "ahead of" }
            );
        }
        offset
    }

    /// A clock synced to `chain` now.
    pub fn synced(chain: &impl Chain) -> Result<Arc<Self>, ChainError> {
        let clock = Self::new();
        clock.sync(chain)?;
        Ok(clock)
    }

    /// Reads the chain's Clock sysvar and syncs to it.
    pub fn sync(&self, chain: &impl Chain) -> Result<i64, ChainError> {
        Ok(self.set_chain_time(chain.clock()?.unix_timestamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_follows_the_chain_not_the_machine() {
        let clock = ChainClock::new();
        assert!(!clock.is_synced());
        assert!((clock.now() - system_now()).abs() <= 1);
        // A chain five days behind the machine (a test chain, a paused cluster).
        let chain_time = system_now() - 5 * 86_400;
        let offset = clock.set_chain_time(chain_time);
        assert!(clock.is_synced());
        assert!((offset + 5 * 86_400).abs() <= 1, "{offset}");
        assert!((clock.now() - chain_time).abs() <= 1);
        // And one a year ahead.
        clock.set_chain_time(system_now() + 365 * 86_400);
        assert!((clock.now() - system_now() - 365 * 86_400).abs() <= 1);
    }
}
