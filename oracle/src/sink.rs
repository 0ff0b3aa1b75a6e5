//! Where every source's records go: the store, committed before the source
//! acknowledges anything, with the telemetry of what came in. Commits past the batch
//! size wake the batcher early.
//!
//! Group commit: one writer thread owns the store's ingest connection. It takes the
//! first record waiting, then every record that arrived meanwhile (up to
//! [`MAX_GROUP`]), commits them in one transaction — one sync to disk (SQLite,
//! `synchronous = FULL`) or one round trip and commit (PostgreSQL) — and only then
//! answers each caller. Acknowledged still means durable; a lone record never waits
//! for others: the writer commits whatever it has as soon as it is free.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use crate::clock::ChainClock;
use crate::store::{Recorded, Store, UsageRecord};
use crate::telemetry::{self, Telemetry};
use crate::OracleError;

/// Most records one transaction commits.
pub const MAX_GROUP: usize = 2_048;

/// The writer's answer to one record: shared by every record of a group that
/// failed together.
type Answer = Result<Recorded, Arc<OracleError>>;

/// How a caller waits for its answer.
enum Reply {
    Blocking(mpsc::SyncSender<Answer>),
    Async(tokio::sync::oneshot::Sender<Answer>),
}

impl Reply {
    fn send(self, result: Answer) {
        // A caller that stopped waiting (its request was dropped) needs no answer:
        // what was committed stays committed.
        match self {
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

struct Job {
    record: UsageRecord,
    reply: Reply,
}

/// The shared, durable record sink.
pub struct Sink {
    queue: mpsc::Sender<Job>,
    pub telemetry: Arc<Telemetry>,
    /// The clock every source stamps its records with (the chain's; the batcher
    /// syncs it each round).
    pub clock: Arc<ChainClock>,
    shared: Arc<Shared>,
}

/// What the writer thread and the sink's handles share.
struct Shared {
    /// Records committed since the batcher last took them.
    fresh: AtomicU64,
    /// Wake the batcher once this many records are waiting.
    batch_records: u64,
    wake: tokio::sync::Notify,
}

impl Sink {
    /// Opens the store at `location` (a file path or a `postgres://` URL) for ingest
    /// and starts its writer. Blocking. Sources stamp records with `clock` (the
    /// chain's: see [`ChainClock`]).
    pub fn open(
        location: &str,
        telemetry: Arc<Telemetry>,
        clock: Arc<ChainClock>,
        batch_records: u64,
    ) -> Result<Arc<Self>, OracleError> {
        let store = Store::connect(location)?;
        let shared = Arc::new(Shared {
            fresh: AtomicU64::new(0),
            batch_records: batch_records.max(1),
            wake: tokio::sync::Notify::new(),
        });
        let (queue, jobs) = mpsc::channel::<Job>();
        {
            let (telemetry, shared) = (Arc::clone(&telemetry), Arc::clone(&shared));
            std::thread::Builder::new()
                .name("tally-ingest".into())
                .spawn(move || write_groups(&store, &jobs, &telemetry, &shared))
                .map_err(|e| OracleError::Setup {
                    what: "start the ingest writer",
                    source: e.into(),
                })?;
        }
        Ok(Arc::new(Self {
            queue,
            telemetry,
            clock,
            shared,
        }))
    }

    fn enqueue(&self, record: &UsageRecord, reply: Reply) -> Result<(), OracleError> {
        self.queue
            .send(Job {
                record: record.clone(),
                reply,
            })
            .map_err(|_| OracleError::IngestStopped {
                state: "has stopped",
            })
    }

    /// Commits `record` durably: the caller may acknowledge once this returns Ok.
    /// Blocks until the group it joined is committed (call it from a blocking thread,
    /// or use [`Sink::commit_async`]).
    pub fn commit(&self, record: &UsageRecord) -> Result<Recorded, OracleError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.enqueue(record, Reply::Blocking(tx))?;
        rx.recv()
            .map_err(|_| OracleError::IngestStopped {
                state: "stopped before answering",
            })?
            .map_err(|source| OracleError::Ingest { source })
    }

    /// [`Sink::commit`] for async callers: waits without holding a thread.
    pub async fn commit_async(&self, record: &UsageRecord) -> Result<Recorded, OracleError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(record, Reply::Async(tx))?;
        rx.await
            .map_err(|_| OracleError::IngestStopped {
                state: "stopped before answering",
            })?
            .map_err(|source| OracleError::Ingest { source })
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
        self.shared.wake.notified().await;
    }

    /// The batcher took everything committed so far.
    pub fn taken(&self) {
        self.shared.fresh.store(0, Ordering::Release);
    }
}

/// The writer: one transaction per group of waiting records, then every answer.
fn write_groups(store: &Store, jobs: &mpsc::Receiver<Job>, telemetry: &Telemetry, shared: &Shared) {
    // Ends when every sender (the sink) is gone.
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let records: Vec<UsageRecord> = group.iter().map(|j| j.record.clone()).collect();
        match store.record_batch(&records) {
            Ok(outcomes) => {
                telemetry.inc(telemetry::STORE_COMMITS, "", 1);
                for (job, recorded) in group.into_iter().zip(outcomes) {
                    count(telemetry, shared, &job.record, recorded);
                    job.reply.send(Ok(recorded));
                }
            }
            Err(reason @ OracleError::OutOfRange { .. }) if group.len() > 1 => {
                // One record out of range fails the whole group: commit each alone so
                // only that one is refused.
                for job in group {
                    let outcome = store.record(&job.record).map_err(Arc::new);
                    if let Ok(recorded) = outcome {
                        telemetry.inc(telemetry::STORE_COMMITS, "", 1);
                        count(telemetry, shared, &job.record, recorded);
                    }
                    job.reply.send(outcome);
                }
                tracing::warn!("a record was refused by the store: {reason}");
            }
            Err(e) => {
                tracing::error!("committing {} record(s) failed: {e}", group.len());
                let e = Arc::new(e);
                for job in group {
                    job.reply.send(Err(Arc::clone(&e)));
                }
            }
        }
    }
}

/// Counts one committed record, waking the batcher once enough are waiting.
fn count(telemetry: &Telemetry, shared: &Shared, record: &UsageRecord, recorded: Recorded) {
    telemetry.inc(telemetry::STORE_COMMITTED_RECORDS, "", 1);
    let labels = format!("source=\"{}\"", record.source);
    match recorded {
        Recorded::New => {
            telemetry.inc(telemetry::RECORDS_IN, &labels, 1);
            telemetry.inc(
                telemetry::TOKENS_METERED,
                &labels,
                record
                    .prompt_tokens
                    .saturating_add(record.completion_tokens),
            );
            if shared.fresh.fetch_add(1, Ordering::AcqRel) + 1 >= shared.batch_records {
                shared.wake.notify_one();
            }
        }
        Recorded::Duplicate => telemetry.inc(telemetry::RECORDS_DUPLICATE, &labels, 1),
    }
}
