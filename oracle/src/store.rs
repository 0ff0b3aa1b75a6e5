//! The durable store. A usage record is acknowledged only once it is committed here; a
//! settlement is written here (pending) before it is sent, so a restart knows what
//! may already have landed.
//!
//! Two backends, same tables and semantics: an embedded SQLite file (the default:
//! write-ahead log, a full sync per commit) and PostgreSQL, for operators who run
//! several oracle replicas over one database. With PostgreSQL only the replica
//! holding the settlement lock (a session advisory lock) runs the batcher; every
//! replica takes records.
use std::cell::RefCell;
use std::path::Path;

use rusqlite::{params, Connection};

use crate::units::Totals;
use crate::OracleError;

/// One completed unit of GPU work, as a source reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The id the inference server gave the answer (the gateway keys records on its
    /// own `request_id`; this is kept beside it). Empty when there is none.
    #[serde(default)]
    pub upstream_id: String,
    /// How the tokens were counted: [`COUNTED_BY_UPSTREAM`] (the server's `usage`),
    /// [`COUNTED_BY_TOKENIZER`] (the gateway counted with the server's tokenizer), or
    /// empty (a signed node report: the node's own count).
    #[serde(default)]
    pub counted_by: String,
    /// The job key that spent it ([`tally_client::job_key::JobKey::id`]); empty for
    /// static API keys and node reports.
    #[serde(default)]
    pub key_id: String,
}

/// `counted_by`: the inference server reported the usage.
pub const COUNTED_BY_UPSTREAM: &str = "upstream";
/// `counted_by`: the server reported none; the gateway counted the prompt and the
/// answer with the server's own tokenizer endpoint.
pub const COUNTED_BY_TOKENIZER: &str = "tokenizer";

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
    /// Records up to this id are covered by this receipt.
    pub last_record: i64,
    pub confirmed: bool,
}

/// The advisory lock key PostgreSQL replicas contend for ("tally" in ASCII).
pub const SETTLEMENT_LOCK: i64 = 0x0074_616c_6c79;

enum Backend {
    Sqlite(Connection),
    Postgres(PgClient),
}

/// PostgreSQL's blocking client, which must not be dropped on an async runtime's
/// thread (its drop blocks on a runtime of its own): dropped there, it is handed to a
/// plain thread.
struct PgClient(RefCell<Option<postgres::Client>>);

impl PgClient {
    fn get(&self) -> Result<std::cell::RefMut<'_, postgres::Client>, OracleError> {
        std::cell::RefMut::filter_map(self.0.borrow_mut(), Option::as_mut)
            .map_err(|_| OracleError::Store("the PostgreSQL connection is closed".into()))
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        if let Some(client) = self.0.get_mut().take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                std::thread::spawn(move || drop(client));
            }
        }
    }
}

/// The store.
pub struct Store {
    db: Backend,
}

fn db_error(e: rusqlite::Error) -> OracleError {
    OracleError::Store(e.to_string())
}

fn pg_error(e: postgres::Error) -> OracleError {
    OracleError::Store(format!("postgres: {}", pg_detail(&e)))
}

/// The server's own message where there is one ("db error" alone says nothing).
fn pg_detail(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn to_i64(v: u64) -> Result<i64, OracleError> {
    i64::try_from(v).map_err(|_| OracleError::Invalid(format!("{v} is out of range")))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Whether `location` names a PostgreSQL database rather than a file.
pub fn is_postgres(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// `location` with any password replaced, for logs.
pub fn redact_location(location: &str) -> String {
    if !is_postgres(location) {
        return location.to_string();
    }
    let Some((scheme, rest)) = location.split_once("://") else {
        return location.to_string();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:<secret>@{host}"),
            None => location.to_string(),
        },
        None => location.to_string(),
    }
}

const POSTGRES_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS records (
        id BIGSERIAL PRIMARY KEY,
        job TEXT NOT NULL,
        request_id TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        gpu_ms BIGINT NOT NULL,
        finished_at BIGINT NOT NULL,
        source TEXT NOT NULL,
        UNIQUE (job, request_id)
    );
    CREATE TABLE IF NOT EXISTS submissions (
        job TEXT NOT NULL,
        seq BIGINT NOT NULL,
        cumulative_units BIGINT NOT NULL,
        invoice_hash BYTEA NOT NULL,
        period_end BIGINT NOT NULL,
        last_record BIGINT NOT NULL,
        confirmed BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (job, seq)
    );";

const RECORD_COLUMNS: &str =
    "id, job, request_id, model, prompt_tokens, completion_tokens, gpu_ms, finished_at, source, upstream_id, counted_by, key_id";
const SUBMISSION_COLUMNS: &str =
    "job, seq, cumulative_units, invoice_hash, period_end, last_record, confirmed";

fn pg_record(row: &postgres::Row) -> Result<(i64, UsageRecord), OracleError> {
    let get = |i: usize| row.try_get::<_, i64>(i).map_err(pg_error);
    Ok((
        get(0)?,
        UsageRecord {
            job: row.try_get(1).map_err(pg_error)?,
            request_id: row.try_get(2).map_err(pg_error)?,
            model: row.try_get(3).map_err(pg_error)?,
            prompt_tokens: to_u64(get(4)?),
            completion_tokens: to_u64(get(5)?),
            gpu_ms: to_u64(get(6)?),
            finished_at: get(7)?,
            source: row.try_get(8).map_err(pg_error)?,
            upstream_id: row.try_get(9).map_err(pg_error)?,
            counted_by: row.try_get(10).map_err(pg_error)?,
            key_id: row.try_get(11).map_err(pg_error)?,
        },
    ))
}

fn pg_submission(row: &postgres::Row) -> Result<Submission, OracleError> {
    let hash: Vec<u8> = row.try_get(3).map_err(pg_error)?;
    Ok(Submission {
        job: row.try_get(0).map_err(pg_error)?,
        seq: to_u64(row.try_get(1).map_err(pg_error)?),
        cumulative_units: to_u64(row.try_get(2).map_err(pg_error)?),
        invoice_hash: hash_of(&hash),
        period_end: row.try_get(4).map_err(pg_error)?,
        last_record: row.try_get(5).map_err(pg_error)?,
        confirmed: row.try_get(6).map_err(pg_error)?,
    })
}

fn hash_of(bytes: &[u8]) -> [u8; 32] {
    let mut hash = [0u8; 32];
    if bytes.len() == 32 {
        hash.copy_from_slice(bytes);
    }
    hash
}

impl Store {
    /// Opens (creating if needed) the SQLite store at `path`, with full durability:
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
        let store = Self {
            db: Backend::Sqlite(db),
        };
        store.add_gateway_schema()?;
        Ok(store)
    }

    /// Opens the store `location` names: a `postgres://` URL, or a SQLite file path.
    /// Blocking: from async code, call it on a blocking thread.
    pub fn connect(location: &str) -> Result<Self, OracleError> {
        if !is_postgres(location) {
            return Self::open(Path::new(location));
        }
        let mut client = postgres::Client::connect(location, postgres::NoTls).map_err(|e| {
            OracleError::Store(format!(
                "cannot connect to {}: {}",
                redact_location(location),
                pg_detail(&e)
            ))
        })?;
        // Replicas starting together race on CREATE TABLE IF NOT EXISTS: serialize.
        let mut tx = client.transaction().map_err(pg_error)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&(SETTLEMENT_LOCK + 1)],
        )
        .map_err(pg_error)?;
        tx.batch_execute(POSTGRES_SCHEMA).map_err(pg_error)?;
        tx.batch_execute(POSTGRES_GATEWAY_SCHEMA)
            .map_err(pg_error)?;
        tx.commit().map_err(pg_error)?;
        Ok(Self {
            db: Backend::Postgres(PgClient(RefCell::new(Some(client)))),
        })
    }

    /// Whether this store may run the batcher: always for SQLite (one process owns
    /// the file); for PostgreSQL, whether this connection holds the settlement lock
    /// (taken here if free, kept until the connection ends).
    pub fn try_lead(&self) -> Result<bool, OracleError> {
        match &self.db {
            Backend::Sqlite(_) => Ok(true),
            Backend::Postgres(client) => client
                .get()?
                .query_one("SELECT pg_try_advisory_lock($1)", &[&SETTLEMENT_LOCK])
                .and_then(|row| row.try_get::<_, bool>(0))
                .map_err(pg_error),
        }
    }

    /// Commits a usage record (before the source is acknowledged).
    pub fn record(&self, r: &UsageRecord) -> Result<Recorded, OracleError> {
        let (prompt, completion, gpu_ms) = (
            to_i64(r.prompt_tokens)?,
            to_i64(r.completion_tokens)?,
            to_i64(r.gpu_ms)?,
        );
        let inserted = match &self.db {
            Backend::Sqlite(db) => db
                .execute(
                    "INSERT OR IGNORE INTO records
                       (job, request_id, model, prompt_tokens, completion_tokens, gpu_ms, finished_at, source, upstream_id, counted_by, key_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![r.job, r.request_id, r.model, prompt, completion, gpu_ms, r.finished_at, r.source, r.upstream_id, r.counted_by, r.key_id],
                )
                .map_err(db_error)? as u64,
            Backend::Postgres(client) => client
                .get()?
                .execute(
                    "INSERT INTO records
                       (job, request_id, model, prompt_tokens, completion_tokens, gpu_ms, finished_at, source, upstream_id, counted_by, key_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (job, request_id) DO NOTHING",
                    &[&r.job, &r.request_id, &r.model, &prompt, &completion, &gpu_ms, &r.finished_at, &r.source, &r.upstream_id, &r.counted_by, &r.key_id],
                )
                .map_err(pg_error)?,
        };
        Ok(if inserted == 1 {
            Recorded::New
        } else {
            Recorded::Duplicate
        })
    }

    /// Runs a query returning one text column.
    fn strings(&self, sql: &str) -> Result<Vec<String>, OracleError> {
        match &self.db {
            Backend::Sqlite(db) => {
                let mut stmt = db.prepare(sql).map_err(db_error)?;
                let rows = stmt
                    .query_map([], |row| row.get::<_, String>(0))
                    .map_err(db_error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
            }
            Backend::Postgres(client) => client
                .get()?
                .query(sql, &[])
                .map_err(pg_error)?
                .iter()
                .map(|row| row.try_get::<_, String>(0).map_err(pg_error))
                .collect(),
        }
    }

    /// Jobs with records not covered by any submission yet.
    pub fn jobs_with_new_records(&self) -> Result<Vec<String>, OracleError> {
        self.strings(
            "SELECT DISTINCT r.job FROM records r
             WHERE r.id > COALESCE((SELECT MAX(s.last_record) FROM submissions s WHERE s.job = r.job), 0)
             ORDER BY r.job",
        )
    }

    /// The job's records after id `after`, oldest first, with their ids.
    pub fn records_after(
        &self,
        job: &str,
        after: i64,
    ) -> Result<Vec<(i64, UsageRecord)>, OracleError> {
        match &self.db {
            Backend::Sqlite(db) => {
                let mut stmt = db
                    .prepare(&format!(
                        "SELECT {RECORD_COLUMNS} FROM records WHERE job = ?1 AND id > ?2 ORDER BY id"
                    ))
                    .map_err(db_error)?;
                let rows = stmt
                    .query_map(params![job, after], |row| {
                        let u = |i: usize| row.get::<_, i64>(i).map(to_u64);
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
                                upstream_id: row.get(9)?,
                                counted_by: row.get(10)?,
                                key_id: row.get(11)?,
                            },
                        ))
                    })
                    .map_err(db_error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
            }
            Backend::Postgres(client) => client
                .get()?
                .query(
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM records WHERE job = $1 AND id > $2 ORDER BY id"
                    ),
                    &[&job, &after],
                )
                .map_err(pg_error)?
                .iter()
                .map(pg_record)
                .collect(),
        }
    }

    /// Every record, oldest first.
    pub fn all_records(&self) -> Result<Vec<UsageRecord>, OracleError> {
        let mut out = Vec::new();
        for job in self.strings("SELECT DISTINCT job FROM records")? {
            out.extend(self.records_after(&job, 0)?.into_iter().map(|(_, r)| r));
        }
        Ok(out)
    }

    fn submissions(&self, filter: &str, job: Option<&str>) -> Result<Vec<Submission>, OracleError> {
        match &self.db {
            Backend::Sqlite(db) => {
                let sql = format!(
                    "SELECT {SUBMISSION_COLUMNS} FROM submissions {}",
                    filter.replace("$1", "?1")
                );
                let mut stmt = db.prepare(&sql).map_err(db_error)?;
                let rows = match job {
                    Some(job) => stmt.query_map(params![job], row_to_submission),
                    None => stmt.query_map([], row_to_submission),
                }
                .map_err(db_error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
            }
            Backend::Postgres(client) => {
                let sql = format!(
                    "SELECT {SUBMISSION_COLUMNS} FROM submissions {}",
                    filter.replace("confirmed = 0", "NOT confirmed")
                );
                let rows = match job {
                    Some(job) => client.get()?.query(&sql, &[&job]),
                    None => client.get()?.query(&sql, &[]),
                }
                .map_err(pg_error)?;
                rows.iter().map(pg_submission).collect()
            }
        }
    }

    /// The job's latest submission, confirmed or not.
    pub fn last_submission(&self, job: &str) -> Result<Option<Submission>, OracleError> {
        Ok(self
            .submissions("WHERE job = $1 ORDER BY seq DESC LIMIT 1", Some(job))?
            .pop())
    }

    /// Submissions written but not confirmed on chain (to resume after a restart).
    pub fn pending_submissions(&self) -> Result<Vec<Submission>, OracleError> {
        self.submissions("WHERE confirmed = 0 ORDER BY job, seq", None)
    }

    /// Writes a submission before it is sent (the write-ahead record).
    pub fn write_submission(&self, s: &Submission) -> Result<(), OracleError> {
        let (seq, units) = (to_i64(s.seq)?, to_i64(s.cumulative_units)?);
        let hash = s.invoice_hash.to_vec();
        match &self.db {
            Backend::Sqlite(db) => db
                .execute(
                    "INSERT INTO submissions (job, seq, cumulative_units, invoice_hash, period_end, last_record, confirmed)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                    params![s.job, seq, units, hash, s.period_end, s.last_record],
                )
                .map(|_| ())
                .map_err(db_error),
            Backend::Postgres(client) => client
                .get()?
                .execute(
                    "INSERT INTO submissions (job, seq, cumulative_units, invoice_hash, period_end, last_record, confirmed)
                     VALUES ($1, $2, $3, $4, $5, $6, FALSE)",
                    &[&s.job, &seq, &units, &hash, &s.period_end, &s.last_record],
                )
                .map(|_| ())
                .map_err(pg_error),
        }
    }

    /// Marks a submission as landed.
    pub fn confirm(&self, job: &str, seq: u64) -> Result<(), OracleError> {
        let seq = to_i64(seq)?;
        match &self.db {
            Backend::Sqlite(db) => db
                .execute(
                    "UPDATE submissions SET confirmed = 1 WHERE job = ?1 AND seq = ?2",
                    params![job, seq],
                )
                .map(|_| ())
                .map_err(db_error),
            Backend::Postgres(client) => client
                .get()?
                .execute(
                    "UPDATE submissions SET confirmed = TRUE WHERE job = $1 AND seq = $2",
                    &[&job, &seq],
                )
                .map(|_| ())
                .map_err(pg_error),
        }
    }

    /// Records not yet covered by a confirmed receipt: how many, and when the oldest
    /// finished (unix seconds).
    pub fn unsettled(&self) -> Result<(u64, Option<i64>), OracleError> {
        let sql = "SELECT COUNT(*), MIN(r.finished_at) FROM records r
                   WHERE r.id > COALESCE((SELECT MAX(s.last_record) FROM submissions s
                                          WHERE s.job = r.job AND s.confirmed = CONFIRMED), 0)";
        match &self.db {
            Backend::Sqlite(db) => db
                .query_row(&sql.replace("CONFIRMED", "1"), [], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?))
                })
                .map(|(n, oldest)| (to_u64(n), oldest))
                .map_err(db_error),
            Backend::Postgres(client) => {
                let row = client
                    .get()?
                    .query_one(&sql.replace("CONFIRMED", "TRUE"), &[])
                    .map_err(pg_error)?;
                Ok((
                    to_u64(row.try_get(0).map_err(pg_error)?),
                    row.try_get(1).map_err(pg_error)?,
                ))
            }
        }
    }

    /// Number of records committed.
    pub fn record_count(&self) -> Result<u64, OracleError> {
        match &self.db {
            Backend::Sqlite(db) => db
                .query_row("SELECT COUNT(*) FROM records", [], |row| {
                    row.get::<_, i64>(0)
                })
                .map(to_u64)
                .map_err(db_error),
            Backend::Postgres(client) => client
                .get()?
                .query_one("SELECT COUNT(*) FROM records", &[])
                .and_then(|row| row.try_get::<_, i64>(0))
                .map(to_u64)
                .map_err(pg_error),
        }
    }
}

// ---------------------------------------------------------------------------------
// The gateway's additions (issue 18), kept apart from the records/submissions core:
// - records carry `upstream_id`, `counted_by` and `key_id` (columns added with
//   defaults, so stores written before them open unchanged);
// - `meters`: which source meters each job (the first to record it), so the gateway
//   and node reports never both bill one job;
// - `revoked_keys`: job keys refused before their expiry;
// - usage totals per job and per key, and per job what no confirmed receipt covers
//   yet (metered but not yet settled).
// ---------------------------------------------------------------------------------

const SQLITE_GATEWAY_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS meters (
        job TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        claimed_at INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS revoked_keys (
        key_id TEXT PRIMARY KEY,
        job TEXT NOT NULL,
        revoked_at INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS records_by_key ON records (key_id) WHERE key_id <> '';";

const POSTGRES_GATEWAY_SCHEMA: &str = "
    ALTER TABLE records ADD COLUMN IF NOT EXISTS upstream_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE records ADD COLUMN IF NOT EXISTS counted_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE records ADD COLUMN IF NOT EXISTS key_id TEXT NOT NULL DEFAULT '';
    CREATE TABLE IF NOT EXISTS meters (
        job TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        claimed_at BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS revoked_keys (
        key_id TEXT PRIMARY KEY,
        job TEXT NOT NULL,
        revoked_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS records_by_key ON records (key_id) WHERE key_id <> '';";

impl Store {
    /// Adds the gateway's columns and tables to a SQLite store (idempotent).
    fn add_gateway_schema(&self) -> Result<(), OracleError> {
        let Backend::Sqlite(db) = &self.db else {
            return Ok(());
        };
        let mut stmt = db
            .prepare("SELECT name FROM pragma_table_info('records')")
            .map_err(db_error)?;
        let columns: Vec<String> = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        for column in ["upstream_id", "counted_by", "key_id"] {
            if !columns.iter().any(|c| c == column) {
                db.execute_batch(&format!(
                    "ALTER TABLE records ADD COLUMN {column} TEXT NOT NULL DEFAULT ''"
                ))
                .map_err(db_error)?;
            }
        }
        db.execute_batch(SQLITE_GATEWAY_SCHEMA).map_err(db_error)
    }

    /// Claims metering of `job` for `source` unless another source already meters it.
    /// Returns the source that meters the job (`source` itself when the claim won).
    /// Atomic in the database: of two sources racing, exactly one wins.
    pub fn claim_meter(&self, job: &str, source: &str, now: i64) -> Result<String, OracleError> {
        match &self.db {
            Backend::Sqlite(db) => {
                db.execute(
                    "INSERT OR IGNORE INTO meters (job, source, claimed_at) VALUES (?1, ?2, ?3)",
                    params![job, source, now],
                )
                .map_err(db_error)?;
                db.query_row(
                    "SELECT source FROM meters WHERE job = ?1",
                    params![job],
                    |row| row.get::<_, String>(0),
                )
                .map_err(db_error)
            }
            Backend::Postgres(client) => {
                let mut client = client.get()?;
                client
                    .execute(
                        "INSERT INTO meters (job, source, claimed_at) VALUES ($1, $2, $3)
                         ON CONFLICT (job) DO NOTHING",
                        &[&job, &source, &now],
                    )
                    .map_err(pg_error)?;
                client
                    .query_one("SELECT source FROM meters WHERE job = $1", &[&job])
                    .and_then(|row| row.try_get::<_, String>(0))
                    .map_err(pg_error)
            }
        }
    }

    /// Records that the job key `key_id` (of `job`) is refused from now on. Returns
    /// whether it was not revoked before.
    pub fn revoke_key(&self, key_id: &str, job: &str, now: i64) -> Result<bool, OracleError> {
        let inserted = match &self.db {
            Backend::Sqlite(db) => db
                .execute(
                    "INSERT OR IGNORE INTO revoked_keys (key_id, job, revoked_at) VALUES (?1, ?2, ?3)",
                    params![key_id, job, now],
                )
                .map_err(db_error)? as u64,
            Backend::Postgres(client) => client
                .get()?
                .execute(
                    "INSERT INTO revoked_keys (key_id, job, revoked_at) VALUES ($1, $2, $3)
                     ON CONFLICT (key_id) DO NOTHING",
                    &[&key_id, &job, &now],
                )
                .map_err(pg_error)?,
        };
        Ok(inserted == 1)
    }

    /// Every revoked job key id.
    pub fn revoked_keys(&self) -> Result<Vec<String>, OracleError> {
        self.strings("SELECT key_id FROM revoked_keys")
    }

    fn totals(&self, sql: &str, key: &str, until: i64) -> Result<Totals, OracleError> {
        let (requests, tokens, gpu_ms) = match &self.db {
            Backend::Sqlite(db) => db
                .query_row(&sql.replace('$', "?"), params![key, until], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .map_err(db_error)?,
            Backend::Postgres(client) => {
                let row = client
                    .get()?
                    .query_one(sql, &[&key, &until])
                    .map_err(pg_error)?;
                (
                    row.try_get(0).map_err(pg_error)?,
                    row.try_get(1).map_err(pg_error)?,
                    row.try_get(2).map_err(pg_error)?,
                )
            }
        };
        Ok(Totals {
            requests: to_u64(requests),
            tokens: to_u64(tokens),
            gpu_ms: to_u64(gpu_ms),
        })
    }

    /// Everything recorded for `job` that finished by `until` (its deadline): with the
    /// job's settled units on chain, what is metered but not yet settled.
    pub fn job_usage(&self, job: &str, until: i64) -> Result<Totals, OracleError> {
        self.totals(
            "SELECT COUNT(*), CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT),
                    CAST(COALESCE(SUM(gpu_ms), 0) AS BIGINT)
             FROM records WHERE job = $1 AND finished_at <= $2",
            job,
            until,
        )
    }

    /// What this store metered for `job` (finished by `until`, its deadline) that no
    /// confirmed receipt covers yet: with the job's escrow left on chain, what the job
    /// can still pay. Scans only the records after the job's last confirmed receipt.
    pub fn unsettled_usage(&self, job: &str, until: i64) -> Result<Totals, OracleError> {
        let confirmed = match &self.db {
            Backend::Sqlite(_) => "1",
            Backend::Postgres(_) => "TRUE",
        };
        self.totals(
            &format!(
                "SELECT COUNT(*), CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT),
                        CAST(COALESCE(SUM(gpu_ms), 0) AS BIGINT)
                 FROM records WHERE job = $1 AND finished_at <= $2
                   AND id > COALESCE((SELECT MAX(s.last_record) FROM submissions s
                                      WHERE s.job = $1 AND s.confirmed = {confirmed}), 0)"
            ),
            job,
            until,
        )
    }

    /// Everything spent through the job key `key_id` that finished by `until`.
    pub fn key_usage(&self, key_id: &str, until: i64) -> Result<Totals, OracleError> {
        self.totals(
            "SELECT COUNT(*), CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT),
                    CAST(COALESCE(SUM(gpu_ms), 0) AS BIGINT)
             FROM records WHERE key_id = $1 AND finished_at <= $2",
            key_id,
            until,
        )
    }
}

fn row_to_submission(row: &rusqlite::Row<'_>) -> rusqlite::Result<Submission> {
    let hash: Vec<u8> = row.get(3)?;
    Ok(Submission {
        job: row.get(0)?,
        seq: to_u64(row.get(1)?),
        cumulative_units: to_u64(row.get(2)?),
        invoice_hash: hash_of(&hash),
        period_end: row.get(4)?,
        last_record: row.get(5)?,
        confirmed: row.get::<_, i64>(6)? != 0,
    })
}
