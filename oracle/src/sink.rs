//! Where every source's records go: the store, committed before the source
//! acknowledges anything, with the telemetry of what came in. Commits past the batch
//! size wake the batcher early.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::clock::ChainClock;
use crate::store::{Recorded, Store, UsageRecord};
use crate::telemetry::{self, Telemetry};
use crate::OracleError;

/// The shared, durable record sink.
pub struct Sink {
    store: Mutex<Store>,
    pub telemetry: Arc<Telemetry>,
    /// The clock every source stamps its records with (the chain's; the batcher
    /// syncs it each round).
    pub clock: Arc<ChainClock>,
    /// Records committed since the batcher last took them.
    fresh: AtomicU64,
    /// Wake the batcher once this many records are waiting.
    batch_records: u64,
    wake: tokio::sync::Notify,
}

impl Sink {
    /// Opens the store at `location` (a file path or a `postgres://` URL). Blocking.
    /// Sources stamp records with `clock` (the chain's: see [`ChainClock`]).
    pub fn open(
        location: &str,
        telemetry: Arc<Telemetry>,
        clock: Arc<ChainClock>,
        batch_records: u64,
    ) -> Result<Arc<Self>, OracleError> {
        Ok(Arc::new(Self {
            store: Mutex::new(Store::connect(location)?),
            telemetry,
            clock,
            fresh: AtomicU64::new(0),
            batch_records: batch_records.max(1),
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// Commits `record` (durably: the caller may acknowledge once this returns Ok).
    pub fn commit(&self, record: &UsageRecord) -> Result<Recorded, OracleError> {
        let recorded = self
            .store
            .lock()
            .map_err(|_| OracleError::Store("the store lock is poisoned".into()))?
            .record(record)?;
        let labels = format!("source=\"{}\"", record.source);
        match recorded {
            Recorded::New => {
                self.telemetry.inc(telemetry::RECORDS_IN, &labels, 1);
                self.telemetry.inc(
                    telemetry::TOKENS_METERED,
                    &labels,
                    record
                        .prompt_tokens
                        .saturating_add(record.completion_tokens),
                );
                if self.fresh.fetch_add(1, Ordering::AcqRel) + 1 >= self.batch_records {
                    self.wake.notify_one();
                }
            }
            Recorded::Duplicate => self.telemetry.inc(telemetry::RECORDS_DUPLICATE, &labels, 1),
        }
        Ok(recorded)
    }

    /// Counts a refused report.
    pub fn rejected(&self, source: &str, reason: &str) {
        self.telemetry.inc(
            telemetry::RECORDS_REJECTED,
            &format!("source=\"{source}\",reason=\"{reason}\""),
            1,
        );
    }

    /// Waits until the batch size is reached (or a wake-up was already pending).
    pub async fn batch_ready(&self) {
        self.wake.notified().await;
    }

    /// The batcher took everything committed so far.
    pub fn taken(&self) {
        self.fresh.store(0, Ordering::Release);
    }
}
