//! The durable store: one SQLite file. A usage record is acknowledged only once it is
//! committed here; a settlement is written here (pending) before it is sent, so a
//! restart knows what may already have landed.
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::OracleError;

/// One completed unit of GPU work, as a source reported it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsageRecord {
    /// The job's account address (base58).
    pub job: String,
    /// Unique per job: a retried report of the same request is a duplicate.
    pub request_id: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub gpu_ms: u64,
    /// Unix seconds the work finished.
    pub finished_at: i64,
    /// Which source saw it (gateway, node-report…).
    pub source: String,
}

/// What [`Store::record`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Committed: it will be invoiced and settled.
    New,
    /// Already known (same job and request id): ignored, never counted twice.
    Duplicate,
}

/// A settlement written before it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub job: String,
    pub seq: u64,
    pub cumulative_units: u64,
    pub invoice_hash: [u8; 32],
    pub period_end: i64,
    /// Records up to this rowid are covered by this receipt.
    pub last_record: i64,
    pub confirmed: bool,
}

/// The SQLite store.
pub struct Store {
    db: Connection,
}

fn db_error(e: rusqlite::Error) -> OracleError {
    OracleError::Store(e.to_string())
}

impl Store {
    /// Opens (creating if needed) the store at `path`, with full durability:
    /// write-ahead logging and a sync on every commit.
    pub fn open(path: &Path) -> Result<Self, OracleError> {
        let db = Connection::open(path).map_err(db_error)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS records (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 job TEXT NOT NULL,
                 request_id TEXT NOT NULL,
                 model TEXT NOT NULL,
                 prompt_tokens INTEGER NOT NULL,
                 completion_tokens INTEGER NOT NULL,
                 gpu_ms INTEGER NOT NULL,
                 finished_at INTEGER NOT NULL,
                 source TEXT NOT NULL,
                 UNIQUE (job, request_id)
             );
             CREATE TABLE IF NOT EXISTS submissions (
                 job TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 cumulative_units INTEGER NOT NULL,
                 invoice_hash BLOB NOT NULL,
                 period_end INTEGER NOT NULL,
                 last_record INTEGER NOT NULL,
                 confirmed INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (job, seq)
             );",
        )
        .map_err(db_error)?;
        Ok(Self { db })
    }

    /// Commits a usage record (before the source is acknowledged).
    pub fn record(&self, r: &UsageRecord) -> Result<Recorded, OracleError> {
        let to_i64 = |v: u64| {
            i64::try_from(v).map_err(|_| OracleError::Invalid(format!("{v} is out of range")))
        };
        let inserted = self
            .db
            .execute(
                "INSERT OR IGNORE INTO records
                   (job, request_id, model, prompt_tokens, completion_tokens, gpu_ms, finished_at, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    r.job,
                    r.request_id,
                    r.model,
                    to_i64(r.prompt_tokens)?,
                    to_i64(r.completion_tokens)?,
                    to_i64(r.gpu_ms)?,
                    r.finished_at,
                    r.source
                ],
            )
            .map_err(db_error)?;
        Ok(if inserted == 1 {
            Recorded::New
        } else {
            Recorded::Duplicate
        })
    }

    /// Jobs with records not covered by any submission yet.
    pub fn jobs_with_new_records(&self) -> Result<Vec<String>, OracleError> {
        let mut stmt = self
            .db
            .prepare(
                "SELECT DISTINCT r.job FROM records r
                 WHERE r.id > COALESCE((SELECT MAX(s.last_record) FROM submissions s WHERE s.job = r.job), 0)
                 ORDER BY r.job",
            )
            .map_err(db_error)?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(db_error)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
    }

    /// The job's records after rowid `after`, oldest first, with their rowids.
    pub fn records_after(
        &self,
        job: &str,
        after: i64,
    ) -> Result<Vec<(i64, UsageRecord)>, OracleError> {
        let mut stmt = self
            .db
            .prepare(
                "SELECT id, job, request_id, model, prompt_tokens, completion_tokens, gpu_ms, finished_at, source
                 FROM records WHERE job = ?1 AND id > ?2 ORDER BY id",
            )
            .map_err(db_error)?;
        let rows = stmt
            .query_map(params![job, after], |row| {
                let u = |i: usize| row.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
                Ok((
                    row.get::<_, i64>(0)?,
                    UsageRecord {
                        job: row.get(1)?,
                        request_id: row.get(2)?,
                        model: row.get(3)?,
                        prompt_tokens: u(4)?,
                        completion_tokens: u(5)?,
                        gpu_ms: u(6)?,
                        finished_at: row.get(7)?,
                        source: row.get(8)?,
                    },
                ))
            })
            .map_err(db_error)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
    }

    /// Every record, oldest first.
    pub fn all_records(&self) -> Result<Vec<UsageRecord>, OracleError> {
        let mut stmt = self
            .db
            .prepare("SELECT DISTINCT job FROM records")
            .map_err(db_error)?;
        let jobs = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(db_error)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_error)?;
        let mut out = Vec::new();
        for job in jobs {
            out.extend(self.records_after(&job, 0)?.into_iter().map(|(_, r)| r));
        }
        Ok(out)
    }

    /// The job's latest submission, confirmed or not.
    pub fn last_submission(&self, job: &str) -> Result<Option<Submission>, OracleError> {
        self.db
            .query_row(
                "SELECT job, seq, cumulative_units, invoice_hash, period_end, last_record, confirmed
                 FROM submissions WHERE job = ?1 ORDER BY seq DESC LIMIT 1",
                params![job],
                row_to_submission,
            )
            .optional()
            .map_err(db_error)
    }

    /// Submissions written but not confirmed on chain (to resume after a restart).
    pub fn pending_submissions(&self) -> Result<Vec<Submission>, OracleError> {
        let mut stmt = self
            .db
            .prepare(
                "SELECT job, seq, cumulative_units, invoice_hash, period_end, last_record, confirmed
                 FROM submissions WHERE confirmed = 0 ORDER BY job, seq",
            )
            .map_err(db_error)?;
        let rows = stmt.query_map([], row_to_submission).map_err(db_error)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
    }

    /// Writes a submission before it is sent (the write-ahead record).
    pub fn write_submission(&self, s: &Submission) -> Result<(), OracleError> {
        self.db
            .execute(
                "INSERT INTO submissions (job, seq, cumulative_units, invoice_hash, period_end, last_record, confirmed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                params![
                    s.job,
                    i64::try_from(s.seq).unwrap_or(i64::MAX),
                    i64::try_from(s.cumulative_units).unwrap_or(i64::MAX),
                    s.invoice_hash.to_vec(),
                    s.period_end,
                    s.last_record
                ],
            )
            .map_err(db_error)?;
        Ok(())
    }

    /// Marks a submission as landed.
    pub fn confirm(&self, job: &str, seq: u64) -> Result<(), OracleError> {
        self.db
            .execute(
                "UPDATE submissions SET confirmed = 1 WHERE job = ?1 AND seq = ?2",
                params![job, i64::try_from(seq).unwrap_or(i64::MAX)],
            )
            .map_err(db_error)?;
        Ok(())
    }

    /// Records not yet covered by a confirmed receipt: how many, and when the oldest
    /// finished (unix seconds).
    pub fn unsettled(&self) -> Result<(u64, Option<i64>), OracleError> {
        self.db
            .query_row(
                "SELECT COUNT(*), MIN(r.finished_at) FROM records r
                 WHERE r.id > COALESCE((SELECT MAX(s.last_record) FROM submissions s
                                        WHERE s.job = r.job AND s.confirmed = 1), 0)",
                [],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?)),
            )
            .map(|(n, oldest)| (u64::try_from(n).unwrap_or(0), oldest))
            .map_err(db_error)
    }

    /// Number of records committed.
    pub fn record_count(&self) -> Result<u64, OracleError> {
        self.db
            .query_row("SELECT COUNT(*) FROM records", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(db_error)
    }
}

fn row_to_submission(row: &rusqlite::Row<'_>) -> rusqlite::Result<Submission> {
    let hash: Vec<u8> = row.get(3)?;
    let mut invoice_hash = [0u8; 32];
    if hash.len() == 32 {
        invoice_hash.copy_from_slice(&hash);
    }
    Ok(Submission {
        job: row.get(0)?,
        seq: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
        cumulative_units: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
        invoice_hash,
        period_end: row.get(4)?,
        last_record: row.get(5)?,
        confirmed: row.get::<_, i64>(6)? != 0,
    })
}
