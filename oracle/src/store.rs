//! The durable store. A usage record is acknowledged only once it is committed here; a
//! settlement is written here (pending) before it is sent, so a restart knows what
//! may already have landed; the invoice bytes live here, so any replica can serve and
//! verify them.
//!
//! Two backends, same tables and semantics: an embedded SQLite file (the default:
//! write-ahead log, a full sync per commit) and PostgreSQL, for operators who run
//! several oracle replicas over one database (an async pool that reconnects with
//! backoff, TCP keepalives, a statement timeout). With PostgreSQL only the replica
//! holding the settlement lock (a session advisory lock on a connection of its own)
//! runs the batcher, and every batcher write checks, in its transaction, that the lock
//! is still held; every replica takes records.
//!
//! Work per settlement round is proportional to what is new, not to history:
//! - a record is attached to the submission that bills it, explicitly, in the
//!   transaction that writes the submission (no id watermark: ids of concurrent
//!   replicas commit out of order); records waiting for a submission sit in a partial
//!   index of their own;
//! - a submission row carries the job's running totals and invoice chain head, so the
//!   next receipt adds only the new records to them;
//! - pending submissions have a partial index of their own.
//!
//! Records and submissions belong to a job *incarnation*: its address and its nonce
//! (the job's number among its client's jobs). The program never opens a second job
//! at an address (job ids only go up), but jobs opened before that rule held a slot
//! as their nonce and their addresses could be reopened, so the store still keeps
//! incarnations apart and a reopened address would start clean. A source that read
//! the job from the chain (the gateway, node reports) names the nonce; otherwise the
//! batcher binds the record to the job at the address when it takes it (see
//! `batcher.rs`). Request ids are unique per job address across incarnations: a
//! signed report replayed later is a duplicate, never a second charge.
//!
//! The gateway's tables live here too: `meters` (which source meters each job, so a
//! request is never billed by two sources), `revoked_keys`, and per record the
//! upstream id, how its tokens were counted and the job key that spent it.
use std::future::Future;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::units::Totals;
use crate::OracleError;

/// One completed unit of GPU work, as a source reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsageRecord {
    /// The job's account address (base58).
    pub job: String,
    /// The job's nonce, when the source read the job from the chain; `None`: the
    /// batcher binds the record to the job open at the address when it takes it.
    #[serde(default)]
    pub job_nonce: Option<u64>,
    /// Unique per job address: a retried report of the same request is a duplicate.
    pub request_id: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub gpu_ms: u64,
    /// Unix seconds (chain time) the work finished.
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

/// The signature behind a record this oracle received from another oracle's
/// gateway (`quorum::evidence`): whose key signed it, and the signature (base58).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub job: String,
    pub request_id: String,
    pub signer: String,
    pub signature: String,
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

/// Where a submission stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmissionState {
    /// Written ahead of its send; not known to have landed.
    Pending,
    /// Landed on chain.
    Confirmed,
    /// Can never land (the job closed, expired…): the reason. Its records are not
    /// billed; the write-off is counted in the metrics and logged.
    WrittenOff(String),
}

/// The nonce of submissions migrated from a store that did not key them by nonce:
/// the batcher adopts them into the job open at the address (the old behaviour) the
/// first time it reads that job.
pub const LEGACY_NONCE: u64 = u64::MAX;

/// A settlement, written before it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub job: String,
    /// The job incarnation it settles ([`LEGACY_NONCE`] until adopted).
    pub job_nonce: u64,
    pub seq: u64,
    pub cumulative_units: u64,
    /// Output tokens within `cumulative_units` (receipts v2).
    pub cumulative_output: u64,
    pub invoice_hash: [u8; 32],
    pub period_end: i64,
    /// Billable totals of the job's records through this receipt: the running totals
    /// the next receipt adds its new records to.
    pub metered: Totals,
    /// Lines of this receipt's invoice.
    pub records: u64,
    /// When the oldest of them finished (for the settlement lag).
    pub oldest_finished_at: Option<i64>,
    pub state: SubmissionState,
}

impl Submission {
    pub fn is_pending(&self) -> bool {
        self.state == SubmissionState::Pending
    }
}

/// A submission to write ahead of its send, with its invoice and the records it bills.
#[derive(Clone, Debug)]
pub struct NewSubmission {
    /// Pending.
    pub submission: Submission,
    /// The invoice's bytes (their sha256 is the receipt's invoice hash).
    pub invoice: Vec<u8>,
    /// The records it attaches (ids from [`Store::waiting_records`]), bound to its
    /// job nonce in the same transaction.
    pub record_ids: Vec<i64>,
}

/// Records that can never be billed (their job incarnation is gone), retired so no
/// round looks at them again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordWriteOff {
    pub job: String,
    /// The incarnation they were bound to, if any.
    pub job_nonce: Option<u64>,
    pub record_ids: Vec<i64>,
    pub reason: String,
    /// Units they would have billed (for the log).
    pub units: u64,
}

/// What one settlement round writes, in one transaction.
#[derive(Clone, Debug, Default)]
pub struct RoundWrite {
    pub submissions: Vec<NewSubmission>,
    pub record_write_offs: Vec<RecordWriteOff>,
    /// Pending submissions that can never land: (job, nonce, seq, reason).
    pub submission_write_offs: Vec<(String, u64, u64, String)>,
}

impl RoundWrite {
    pub fn is_empty(&self) -> bool {
        self.submissions.is_empty()
            && self.record_write_offs.is_empty()
            && self.submission_write_offs.is_empty()
    }
}

/// A logged write-off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOff {
    pub job: String,
    pub job_nonce: Option<u64>,
    /// The submission written off, or `None` for records never submitted.
    pub seq: Option<u64>,
    pub reason: String,
    pub records: u64,
    pub units: u64,
}

/// A record waiting for a submission, with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingRecord {
    pub id: i64,
    pub record: UsageRecord,
}

/// Where a record stands, for audits and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Billing {
    /// Not attached to a submission yet.
    Waiting,
    /// Attached to submission (nonce, seq).
    Submitted { job_nonce: u64, seq: u64 },
    /// Retired without being billed.
    WrittenOff,
}

/// A lookup table the daemon manages, as the store remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupTableRow {
    pub address: String,
    /// Its authority (the oracle key that made it; only it can extend or close it).
    pub authority: String,
    /// The settlement group it serves: operator authority and mint.
    pub operator: String,
    pub mint: String,
    /// The recent slot it was derived from.
    pub recent_slot: u64,
    pub state: TableState,
}

/// A managed lookup table's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableState {
    /// Written ahead of its create transaction: it may or may not exist on chain.
    Creating,
    Active,
    /// Deactivated at this slot; closable once the slot leaves the slot hashes.
    Deactivated(u64),
    /// Closed, rent reclaimed.
    Closed,
}

/// One query's plan, as the database explains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryPlan {
    pub name: &'static str,
    pub sql: String,
    pub plan: String,
}

/// The advisory lock key PostgreSQL replicas contend for ("tally" in ASCII).
pub const SETTLEMENT_LOCK: i64 = 0x0074_616c_6c79;
/// Serializes schema creation and migration across replicas starting together.
const SCHEMA_LOCK: i64 = SETTLEMENT_LOCK + 1;

/// The schema this code reads and writes. Version 1 (no version table): records and
/// submissions keyed by job address only, attached by an id watermark, invoices only
/// on the leader's disk; later version-1 stores also carry the gateway's columns and
/// tables. Version 2: job incarnations, records attached to their submission,
/// running totals, invoices, write-offs and lookup tables in the store. Version 3:
/// version 2 with the gateway's columns and tables (`upstream_id`, `counted_by`,
/// `key_id`; `meters`, `revoked_keys`), whichever of the two a store had before.
/// Version 4: submissions carry `cumulative_output` and `metered_output` (output
/// tokens, priced apart from input tokens since receipts v2); older submissions
/// read 0 there, which the program's upgrade of their jobs matches (their settled
/// units count as input, at the same price).
/// Version 5: a quorum member's tables (issue 20): `evidence` (the gateway signature
/// behind each record received from another oracle's gateway) and `forwarded` (how
/// far each peer has been sent this oracle's own gateway records). New tables only:
/// a version-4 store is upgraded in place, its rows untouched.
pub const SCHEMA_VERSION: i64 = 5;

/// `seq` of records written off (never attached to a real submission).
const WRITTEN_OFF_SEQ: i64 = 0;
/// The stored form of [`LEGACY_NONCE`].
const LEGACY_NONCE_SQL: i64 = -1;

const STATE_PENDING: i64 = 0;
const STATE_CONFIRMED: i64 = 1;
const STATE_WRITTEN_OFF: i64 = 2;

/// How long a PostgreSQL operation keeps retrying a lost connection (with backoff)
/// before it reports the store unavailable.
pub const PG_RETRY_FOR: Duration = Duration::from_secs(20);
/// Server-side limit on any one statement.
pub const PG_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections in a replica's pool.
pub const PG_POOL_SIZE: usize = 8;

fn to_i64(v: u64) -> Result<i64, OracleError> {
    i64::try_from(v).map_err(|_| OracleError::OutOfRange { value: v })
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn nonce_to_sql(nonce: u64) -> Result<i64, OracleError> {
    if nonce == LEGACY_NONCE {
        Ok(LEGACY_NONCE_SQL)
    } else {
        to_i64(nonce)
    }
}

fn nonce_from_sql(nonce: i64) -> u64 {
    if nonce == LEGACY_NONCE_SQL {
        LEGACY_NONCE
    } else {
        to_u64(nonce)
    }
}

fn hash_of(bytes: &[u8]) -> [u8; 32] {
    let mut hash = [0u8; 32];
    if bytes.len() == 32 {
        hash.copy_from_slice(bytes);
    }
    hash
}

fn state_from_sql(state: i64, reason: Option<String>) -> SubmissionState {
    match state {
        STATE_PENDING => SubmissionState::Pending,
        STATE_CONFIRMED => SubmissionState::Confirmed,
        STATE_WRITTEN_OFF => SubmissionState::WrittenOff(reason.unwrap_or_default()),
        other => SubmissionState::WrittenOff(format!("unknown state {other} in the store")),
    }
}

fn table_state_to_sql(state: TableState) -> (i64, Option<i64>) {
    match state {
        TableState::Creating => (0, None),
        TableState::Active => (1, None),
        TableState::Deactivated(slot) => (2, i64::try_from(slot).ok()),
        TableState::Closed => (3, None),
    }
}

fn table_state_from_sql(state: i64, slot: Option<i64>) -> TableState {
    match state {
        0 => TableState::Creating,
        1 => TableState::Active,
        2 => TableState::Deactivated(to_u64(slot.unwrap_or(0))),
        _ => TableState::Closed,
    }
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

// ---------------------------------------------------------------------------------
// Schema. The same tables on both backends; `INTEGER`/`BIGINT`, `BLOB`/`BYTEA`.

/// Version 3, with `{int}`, `{blob}`, `{serial}` filled per backend.
const SCHEMA_V3: &str = "
    CREATE TABLE IF NOT EXISTS tally_schema (version {int} NOT NULL);
    CREATE TABLE IF NOT EXISTS records (
        id {serial},
        job TEXT NOT NULL,
        request_id TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_tokens {int} NOT NULL,
        completion_tokens {int} NOT NULL,
        gpu_ms {int} NOT NULL,
        finished_at {int} NOT NULL,
        source TEXT NOT NULL,
        job_nonce {int},
        submission_seq {int},
        upstream_id TEXT NOT NULL DEFAULT '',
        counted_by TEXT NOT NULL DEFAULT '',
        key_id TEXT NOT NULL DEFAULT '',
        UNIQUE (job, request_id)
    );
    CREATE INDEX IF NOT EXISTS records_waiting ON records (job, id) WHERE submission_seq IS NULL;
    CREATE INDEX IF NOT EXISTS records_by_key ON records (key_id) WHERE key_id <> '';
    CREATE TABLE IF NOT EXISTS submissions (
        job TEXT NOT NULL,
        job_nonce {int} NOT NULL,
        seq {int} NOT NULL,
        cumulative_units {int} NOT NULL,
        invoice_hash {blob} NOT NULL,
        period_end {int} NOT NULL,
        metered_tokens {int} NOT NULL,
        metered_requests {int} NOT NULL,
        metered_gpu_ms {int} NOT NULL,
        records {int} NOT NULL,
        oldest_finished_at {int},
        state {int} NOT NULL,
        reason TEXT,
        cumulative_output {int} NOT NULL DEFAULT 0,
        metered_output {int} NOT NULL DEFAULT 0,
        PRIMARY KEY (job, job_nonce, seq)
    );
    CREATE INDEX IF NOT EXISTS submissions_pending ON submissions (job, job_nonce, seq) WHERE state = 0;
    CREATE INDEX IF NOT EXISTS submissions_legacy ON submissions (job, seq) WHERE job_nonce = -1;
    CREATE TABLE IF NOT EXISTS invoices (
        job TEXT NOT NULL,
        job_nonce {int} NOT NULL,
        seq {int} NOT NULL,
        bytes {blob} NOT NULL,
        PRIMARY KEY (job, job_nonce, seq)
    );
    CREATE TABLE IF NOT EXISTS write_offs (
        job TEXT NOT NULL,
        job_nonce {int},
        seq {int},
        reason TEXT NOT NULL,
        records {int} NOT NULL,
        units {int} NOT NULL
    );
    CREATE TABLE IF NOT EXISTS lookup_tables (
        address TEXT PRIMARY KEY,
        authority TEXT NOT NULL,
        operator TEXT NOT NULL,
        mint TEXT NOT NULL,
        recent_slot {int} NOT NULL,
        state {int} NOT NULL,
        deactivated_slot {int}
    );
    CREATE TABLE IF NOT EXISTS meters (
        job TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        claimed_at {int} NOT NULL
    );
    CREATE TABLE IF NOT EXISTS revoked_keys (
        key_id TEXT PRIMARY KEY,
        job TEXT NOT NULL,
        revoked_at {int} NOT NULL
    );
    CREATE TABLE IF NOT EXISTS evidence (
        job TEXT NOT NULL,
        request_id TEXT NOT NULL,
        signer TEXT NOT NULL,
        signature TEXT NOT NULL,
        PRIMARY KEY (job, request_id)
    );
    CREATE TABLE IF NOT EXISTS forwarded (
        peer TEXT PRIMARY KEY,
        after_id {int} NOT NULL
    );";

fn schema_v3(postgres: bool) -> String {
    let (int, blob, serial) = if postgres {
        ("BIGINT", "BYTEA", "BIGSERIAL PRIMARY KEY")
    } else {
        ("INTEGER", "BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT")
    };
    SCHEMA_V3
        .replace("{int}", int)
        .replace("{blob}", blob)
        .replace("{serial}", serial)
}

/// Version 1 → 2, after the version-1 tables were found (and before the current
/// schema is created, which then only adds what is missing). Records are attached to
/// the submission whose watermark first covered them; submissions keep their seq,
/// units, hash and state under [`LEGACY_NONCE`], with totals summed from their records
/// (the batcher recomputes them against the job's deadline when it adopts them).
const MIGRATE_V1_V2: &str = "
    ALTER TABLE records ADD COLUMN job_nonce {int};
    ALTER TABLE records ADD COLUMN submission_seq {int};
    CREATE INDEX submissions_v1_watermark ON submissions (job, last_record);
    UPDATE records SET submission_seq = (
        SELECT MIN(s.seq) FROM submissions s WHERE s.job = records.job AND s.last_record >= records.id
    );
    CREATE TABLE submissions_v1 AS SELECT * FROM submissions;
    DROP TABLE submissions;";

/// Fills the version-2 submissions from `submissions_v1` (after the current tables
/// exist): each one's lines, and running totals summed over its job's submissions in
/// seq order (one pass over the records, one over the submissions).
const COPY_V1_SUBMISSIONS: &str = "
    INSERT INTO submissions (job, job_nonce, seq, cumulative_units, invoice_hash, period_end,
                             metered_tokens, metered_requests, metered_gpu_ms, records,
                             oldest_finished_at, state, reason)
    SELECT s.job, -1, s.seq, s.cumulative_units, s.invoice_hash, s.period_end,
           SUM(COALESCE(a.tokens, 0)) OVER w, SUM(COALESCE(a.requests, 0)) OVER w,
           SUM(COALESCE(a.gpu_ms, 0)) OVER w, COALESCE(a.requests, 0), a.oldest,
           CASE WHEN s.confirmed THEN 1 ELSE 0 END, NULL
    FROM submissions_v1 s
    LEFT JOIN (SELECT job, submission_seq AS seq, SUM(prompt_tokens + completion_tokens) AS tokens,
                      COUNT(*) AS requests, SUM(gpu_ms) AS gpu_ms, MIN(finished_at) AS oldest
               FROM records WHERE submission_seq IS NOT NULL GROUP BY job, submission_seq) a
      ON a.job = s.job AND a.seq = s.seq
    WINDOW w AS (PARTITION BY s.job ORDER BY s.seq ROWS UNBOUNDED PRECEDING);
    DROP TABLE submissions_v1;";

/// The gateway's record columns, added to a version-1 or version-2 store that lacks
/// them (stores of the previous oracle may have them already), before the current
/// schema is created (its `records_by_key` index needs `key_id`).
const GATEWAY_COLUMNS: [&str; 3] = ["upstream_id", "counted_by", "key_id"];

/// Version 4's submission columns, added to a version-2 or version-3 store.
const OUTPUT_COLUMNS: [&str; 2] = ["cumulative_output", "metered_output"];

// ---------------------------------------------------------------------------------
// The store.

enum Backend {
    Sqlite(Connection),
    Postgres(Box<Pg>),
}

/// The store: a SQLite file or a PostgreSQL database.
pub struct Store {
    db: Backend,
}

const RECORD_COLUMNS: &str = "id, job, job_nonce, request_id, model, prompt_tokens, \
                              completion_tokens, gpu_ms, finished_at, source, upstream_id, \
                              counted_by, key_id";
const SUBMISSION_COLUMNS: &str = "job, job_nonce, seq, cumulative_units, invoice_hash, \
     period_end, metered_tokens, metered_requests, metered_gpu_ms, records, \
     oldest_finished_at, state, reason, cumulative_output, metered_output";

/// The store's queries, named (their plans are shown by [`Store::query_plans`]).
mod sql {
    pub const INSERT_RECORD: &str = "INSERT INTO records
        (job, job_nonce, request_id, model, prompt_tokens, completion_tokens, gpu_ms, finished_at,
         source, upstream_id, counted_by, key_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        ON CONFLICT (job, request_id) DO NOTHING";
    pub const JOBS_WAITING: &str =
        "SELECT DISTINCT job FROM records WHERE submission_seq IS NULL ORDER BY job";
    pub const WAITING_OF_JOB: &str =
        "SELECT id, job, job_nonce, request_id, model, prompt_tokens, \
        completion_tokens, gpu_ms, finished_at, source, upstream_id, counted_by, key_id \
        FROM records WHERE job = $1 AND submission_seq IS NULL ORDER BY id LIMIT $2";
    pub const LAST_SUBMISSION: &str =
        "SELECT job, job_nonce, seq, cumulative_units, invoice_hash, \
        period_end, metered_tokens, metered_requests, metered_gpu_ms, records, \
        oldest_finished_at, state, reason, cumulative_output, metered_output FROM submissions \
        WHERE job = $1 AND job_nonce = $2 ORDER BY seq DESC LIMIT 1";
    pub const PENDING: &str = "SELECT job, job_nonce, seq, cumulative_units, invoice_hash, \
        period_end, metered_tokens, metered_requests, metered_gpu_ms, records, \
        oldest_finished_at, state, reason, cumulative_output, metered_output FROM submissions \
        WHERE state = 0 \
        ORDER BY job, job_nonce, seq";
    pub const LEGACY_JOBS: &str =
        "SELECT DISTINCT job FROM submissions WHERE job_nonce = -1 ORDER BY job";
    pub const UNSETTLED_WAITING: &str =
        "SELECT COUNT(*), MIN(finished_at) FROM records WHERE submission_seq IS NULL";
    pub const UNSETTLED_PENDING: &str =
        "SELECT CAST(COALESCE(SUM(records), 0) AS BIGINT), MIN(oldest_finished_at) FROM submissions WHERE state = 0";
    pub const ATTACH: &str = "UPDATE records SET job_nonce = $1, submission_seq = $2 \
        WHERE id = $3 AND submission_seq IS NULL";
    pub const CONFIRM: &str =
        "UPDATE submissions SET state = 1 WHERE job = $1 AND job_nonce = $2 AND seq = $3 AND state = 0";
    /// A pending submission given up (quorum: another receipt took its seq, or it
    /// can no longer land): its records wait again, it and its invoice are gone.
    pub const RELEASE_RECORDS: &str =
        "UPDATE records SET submission_seq = NULL WHERE job = $1 AND job_nonce = $2 AND submission_seq = $3";
    pub const RELEASE_INVOICE: &str =
        "DELETE FROM invoices WHERE job = $1 AND job_nonce = $2 AND seq = $3";
    pub const RELEASE_SUBMISSION: &str =
        "DELETE FROM submissions WHERE job = $1 AND job_nonce = $2 AND seq = $3 AND state = 0";
    pub const INVOICE: &str =
        "SELECT bytes FROM invoices WHERE job = $1 AND job_nonce = $2 AND seq = $3";
    /// A job incarnation's invoices after receipt `$3`, in order (the gateway serves
    /// them to the job's client, a page at a time).
    pub const INVOICES_AFTER: &str = "SELECT seq, bytes FROM invoices \
        WHERE job = $1 AND job_nonce = $2 AND seq > $3 ORDER BY seq LIMIT $4";

    // The gateway's: meters, revocations, and usage for pre-authorization. The usage
    // queries read only what is unsettled (the waiting records' index, the pending
    // submissions' index and one row before them) or one key's records.
    pub const CLAIM_METER: &str =
        "INSERT INTO meters (job, source, claimed_at) VALUES ($1, $2, $3) \
        ON CONFLICT (job) DO NOTHING";
    pub const METER_OF: &str = "SELECT source FROM meters WHERE job = $1";
    pub const REVOKE_KEY: &str = "INSERT INTO revoked_keys (key_id, job, revoked_at) \
        VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING";
    pub const REVOKED_KEYS: &str = "SELECT key_id FROM revoked_keys ORDER BY key_id";

    // A quorum member's: the evidence behind records from other oracles' gateways,
    // and how far each peer has been sent this oracle's own (its outbox: the records
    // themselves, after a cursor, less those that came from elsewhere).
    pub const SAVE_EVIDENCE: &str = "INSERT INTO evidence (job, request_id, signer, signature) \
        VALUES ($1, $2, $3, $4) ON CONFLICT (job, request_id) DO NOTHING";
    pub const OUTBOX: &str = "SELECT id, job, job_nonce, request_id, model, prompt_tokens, \
        completion_tokens, gpu_ms, finished_at, source, upstream_id, counted_by, key_id \
        FROM records r WHERE r.source = $1 \
        AND r.id > COALESCE((SELECT after_id FROM forwarded WHERE peer = $2), 0) \
        AND NOT EXISTS (SELECT 1 FROM evidence e WHERE e.job = r.job AND e.request_id = r.request_id) \
        ORDER BY r.id LIMIT $3";
    pub const FORWARDED: &str = "INSERT INTO forwarded (peer, after_id) VALUES ($1, $2) \
        ON CONFLICT (peer) DO UPDATE SET after_id = excluded.after_id \
        WHERE excluded.after_id > forwarded.after_id";
    /// Records of `job` waiting for a receipt, finished by `$2`, of incarnation `$3`
    /// or not bound to one (`$3` NULL: any).
    pub const WAITING_USAGE: &str = "SELECT COUNT(*), \
        CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT), \
        CAST(COALESCE(SUM(gpu_ms), 0) AS BIGINT) FROM records \
        WHERE job = $1 AND submission_seq IS NULL AND finished_at <= $2 \
        AND (CAST($3 AS BIGINT) IS NULL OR job_nonce IS NULL OR job_nonce = $3)";
    /// Pending receipts of `job` with their running totals, per incarnation.
    pub const PENDING_USAGE: &str = "SELECT job_nonce, seq, metered_tokens, metered_requests, \
        metered_gpu_ms FROM submissions WHERE job = $1 AND state = 0 ORDER BY job_nonce, seq";
    /// The running totals of the last receipt of an incarnation before seq `$3` that is
    /// no longer pending (landed, or written off): where its pending ones start.
    pub const SETTLED_BEFORE: &str = "SELECT metered_tokens, metered_requests, metered_gpu_ms \
        FROM submissions WHERE job = $1 AND job_nonce = $2 AND seq < $3 AND state <> 0 \
        ORDER BY seq DESC LIMIT 1";
    pub const KEY_USAGE: &str = "SELECT COUNT(*), \
        CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT), \
        CAST(COALESCE(SUM(gpu_ms), 0) AS BIGINT) FROM records \
        WHERE key_id = $1 AND key_id <> '' AND finished_at <= $2";
    pub const JOB_USAGE: &str = "SELECT COUNT(*), \
        CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT), \
        CAST(COALESCE(SUM(gpu_ms), 0) AS BIGINT) FROM records \
        WHERE job = $1 AND finished_at <= $2";
}

/// SQLite takes `?N` where PostgreSQL takes `$N`; `ON CONFLICT … DO NOTHING` works on both.
fn sqlite_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn sqlite_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<WaitingRecord> {
    let u = |i: usize| row.get::<_, i64>(i).map(to_u64);
    Ok(WaitingRecord {
        id: row.get(0)?,
        record: UsageRecord {
            job: row.get(1)?,
            job_nonce: row.get::<_, Option<i64>>(2)?.map(to_u64),
            request_id: row.get(3)?,
            model: row.get(4)?,
            prompt_tokens: u(5)?,
            completion_tokens: u(6)?,
            gpu_ms: u(7)?,
            finished_at: row.get(8)?,
            source: row.get(9)?,
            upstream_id: row.get(10)?,
            counted_by: row.get(11)?,
            key_id: row.get(12)?,
        },
    })
}

fn sqlite_submission(row: &rusqlite::Row<'_>) -> rusqlite::Result<Submission> {
    let u = |i: usize| row.get::<_, i64>(i).map(to_u64);
    let hash: Vec<u8> = row.get(4)?;
    Ok(Submission {
        job: row.get(0)?,
        job_nonce: nonce_from_sql(row.get(1)?),
        seq: u(2)?,
        cumulative_units: u(3)?,
        invoice_hash: hash_of(&hash),
        period_end: row.get(5)?,
        cumulative_output: u(13)?,
        metered: Totals {
            tokens: u(6)?,
            requests: u(7)?,
            gpu_ms: u(8)?,
            output_tokens: u(14)?,
        },
        records: u(9)?,
        oldest_finished_at: row.get(10)?,
        state: state_from_sql(row.get(11)?, row.get(12)?),
    })
}

/// A record's values as stored (checked before any transaction starts).
struct RecordValues {
    nonce: Option<i64>,
    prompt: i64,
    completion: i64,
    gpu_ms: i64,
}

impl RecordValues {
    fn of(r: &UsageRecord) -> Result<Self, OracleError> {
        Ok(Self {
            nonce: r.job_nonce.map(to_i64).transpose()?,
            prompt: to_i64(r.prompt_tokens)?,
            completion: to_i64(r.completion_tokens)?,
            gpu_ms: to_i64(r.gpu_ms)?,
        })
    }
}

impl Store {
    /// Opens (creating or migrating if needed) the SQLite store at `path`, with full
    /// durability: write-ahead logging and a sync on every commit.
    pub fn open(path: &Path) -> Result<Self, OracleError> {
        let location = || path.display().to_string();
        let db = Connection::open(path).map_err(|e| OracleError::Open {
            action: "open the store",
            location: location(),
            source: e.into(),
        })?;
        db.busy_timeout(Duration::from_secs(10))
            .map_err(OracleError::sqlite("open"))?;
        db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(OracleError::sqlite("open"))?;
        let version = sqlite_migrate(&db).map_err(|e| OracleError::Migrate {
            location: location(),
            supported: SCHEMA_VERSION,
            detail: e.to_string(),
            source: e.into(),
        })?;
        if version > SCHEMA_VERSION {
            return Err(OracleError::Schema {
                location: location(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Self {
            db: Backend::Sqlite(db),
        })
    }

    /// Opens the store `location` names: a `postgres://` URL, or a SQLite file path.
    /// Blocking: from async code, call it on a blocking thread.
    pub fn connect(location: &str) -> Result<Self, OracleError> {
        if !is_postgres(location) {
            return Self::open(Path::new(location));
        }
        Ok(Self {
            db: Backend::Postgres(Box::new(Pg::connect(location)?)),
        })
    }

    /// Whether this is a PostgreSQL store (replicas) rather than a SQLite file.
    pub fn is_shared(&self) -> bool {
        matches!(self.db, Backend::Postgres(_))
    }

    /// Whether this store may run the batcher, checked afresh (call it every round):
    /// always for SQLite (one process owns the file); for PostgreSQL, whether this
    /// replica's lock session is alive and holds the settlement lock (taken here if
    /// free). A lock session that died — the server restarted, the network cut it —
    /// is reconnected and must win the lock again.
    pub fn try_lead(&self) -> Result<bool, OracleError> {
        match &self.db {
            Backend::Sqlite(_) => Ok(true),
            Backend::Postgres(pg) => pg.try_lead(),
        }
    }

    /// Commits a usage record (before the source is acknowledged).
    pub fn record(&self, r: &UsageRecord) -> Result<Recorded, OracleError> {
        self.record_batch(std::slice::from_ref(r))?
            .pop()
            .ok_or(OracleError::NoAnswer { op: "record" })
    }

    /// Commits `records` in one transaction (one sync); what each one was. A record
    /// repeated within the batch is new once, then a duplicate.
    pub fn record_batch(&self, records: &[UsageRecord]) -> Result<Vec<Recorded>, OracleError> {
        let values = records
            .iter()
            .map(RecordValues::of)
            .collect::<Result<Vec<_>, _>>()?;
        match &self.db {
            Backend::Sqlite(db) => {
                let tx = rusqlite::Transaction::new_unchecked(db, TransactionBehavior::Immediate)
                    .map_err(OracleError::sqlite("record_batch"))?;
                let mut out = Vec::with_capacity(records.len());
                {
                    let mut insert = tx
                        .prepare_cached(&sqlite_sql(sql::INSERT_RECORD))
                        .map_err(OracleError::sqlite("record_batch"))?;
                    for (r, v) in records.iter().zip(&values) {
                        let n = insert
                            .execute(params![
                                r.job,
                                v.nonce,
                                r.request_id,
                                r.model,
                                v.prompt,
                                v.completion,
                                v.gpu_ms,
                                r.finished_at,
                                r.source,
                                r.upstream_id,
                                r.counted_by,
                                r.key_id
                            ])
                            .map_err(OracleError::sqlite("record_batch"))?;
                        out.push(if n == 1 {
                            Recorded::New
                        } else {
                            Recorded::Duplicate
                        });
                    }
                }
                tx.commit().map_err(OracleError::sqlite("record_batch"))?;
                Ok(out)
            }
            Backend::Postgres(pg) => pg.record_batch(records, &values),
        }
    }

    /// Jobs with records waiting for a submission.
    pub fn jobs_with_new_records(&self) -> Result<Vec<String>, OracleError> {
        match &self.db {
            Backend::Sqlite(db) => sqlite_strings(db, "jobs_with_new_records", sql::JOBS_WAITING),
            Backend::Postgres(pg) => pg.strings(sql::JOBS_WAITING),
        }
    }

    /// The job's records waiting for a submission, oldest first, at most `limit`.
    pub fn waiting_records(
        &self,
        job: &str,
        limit: usize,
    ) -> Result<Vec<WaitingRecord>, OracleError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.db {
            Backend::Sqlite(db) => {
                let mut stmt = db
                    .prepare_cached(&sqlite_sql(sql::WAITING_OF_JOB))
                    .map_err(OracleError::sqlite("waiting_records"))?;
                let rows = stmt
                    .query_map(params![job, limit], sqlite_record)
                    .map_err(OracleError::sqlite("waiting_records"))?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map_err(OracleError::sqlite("waiting_records"))
            }
            Backend::Postgres(pg) => pg.waiting_records(job, limit),
        }
    }

    /// Every record of `job` (all incarnations) after id `after`, oldest first.
    pub fn records_after(
        &self,
        job: &str,
        after: i64,
    ) -> Result<Vec<(i64, UsageRecord)>, OracleError> {
        let query =
            format!("SELECT {RECORD_COLUMNS} FROM records WHERE job = $1 AND id > $2 ORDER BY id");
        match &self.db {
            Backend::Sqlite(db) => {
                let mut stmt = db
                    .prepare(&sqlite_sql(&query))
                    .map_err(OracleError::sqlite("records_after"))?;
                let rows = stmt
                    .query_map(params![job, after], sqlite_record)
                    .map_err(OracleError::sqlite("records_after"))?;
                rows.map(|r| r.map(|w| (w.id, w.record)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(OracleError::sqlite("records_after"))
            }
            Backend::Postgres(pg) => pg.records_after(&query, job, after),
        }
    }

    /// Every record, oldest first.
    pub fn all_records(&self) -> Result<Vec<UsageRecord>, OracleError> {
        Ok(self.billing()?.into_iter().map(|(r, _)| r).collect())
    }

    /// Every record with where it stands (audits, tests), oldest first.
    pub fn billing(&self) -> Result<Vec<(UsageRecord, Billing)>, OracleError> {
        let query = format!("SELECT {RECORD_COLUMNS}, submission_seq FROM records ORDER BY id");
        let billing = |nonce: Option<u64>, seq: Option<i64>| match seq {
            None => Billing::Waiting,
            Some(WRITTEN_OFF_SEQ) => Billing::WrittenOff,
            Some(seq) => Billing::Submitted {
                job_nonce: nonce.unwrap_or(LEGACY_NONCE),
                seq: to_u64(seq),
            },
        };
        match &self.db {
            Backend::Sqlite(db) => {
                let mut stmt = db.prepare(&query).map_err(OracleError::sqlite("billing"))?;
                let rows = stmt
                    .query_map([], |row| {
                        let w = sqlite_record(row)?;
                        let seq: Option<i64> = row.get(13)?;
                        Ok((w.record, seq))
                    })
                    .map_err(OracleError::sqlite("billing"))?;
                rows.map(|r| {
                    r.map(|(record, seq)| {
                        let b = billing(record.job_nonce, seq);
                        (record, b)
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(OracleError::sqlite("billing"))
            }
            Backend::Postgres(pg) => Ok(pg
                .billing(&query)?
                .into_iter()
                .map(|(record, seq)| {
                    let b = billing(record.job_nonce, seq);
                    (record, b)
                })
                .collect()),
        }
    }

    /// Records attached to submissions of `job` in incarnation `job_nonce` (`None`:
    /// migrated ones not adopted yet), with their submission's seq, oldest first.
    pub fn submitted_records(
        &self,
        job: &str,
        job_nonce: Option<u64>,
    ) -> Result<Vec<(u64, UsageRecord)>, OracleError> {
        let nonce = job_nonce.map(to_i64).transpose()?;
        let query = format!(
            "SELECT {RECORD_COLUMNS}, submission_seq FROM records WHERE job = $1 AND submission_seq > 0 \
             AND (job_nonce = $2 OR ($2 IS NULL AND job_nonce IS NULL)) ORDER BY id"
        );
        match &self.db {
            Backend::Sqlite(db) => {
                let mut stmt = db
                    .prepare(&sqlite_sql(&query))
                    .map_err(OracleError::sqlite("submitted_records"))?;
                let rows = stmt
                    .query_map(params![job, nonce], |row| {
                        Ok((to_u64(row.get(13)?), sqlite_record(row)?.record))
                    })
                    .map_err(OracleError::sqlite("submitted_records"))?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map_err(OracleError::sqlite("submitted_records"))
            }
            Backend::Postgres(pg) => pg.submitted_records(&query, job, nonce),
        }
    }

    /// The latest submission of a job incarnation, whatever its state.
    pub fn last_submission(
        &self,
        job: &str,
        job_nonce: u64,
    ) -> Result<Option<Submission>, OracleError> {
        let nonce = nonce_to_sql(job_nonce)?;
        match &self.db {
            Backend::Sqlite(db) => db
                .prepare_cached(&sqlite_sql(sql::LAST_SUBMISSION))
                .map_err(OracleError::sqlite("last_submission"))?
                .query_row(params![job, nonce], sqlite_submission)
                .optional()
                .map_err(OracleError::sqlite("last_submission")),
            Backend::Postgres(pg) => pg.last_submission(job, nonce),
        }
    }

    /// Every submission of `job` (all incarnations), oldest first.
    pub fn submissions_of(&self, job: &str) -> Result<Vec<Submission>, OracleError> {
        let query = format!(
            "SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE job = $1 ORDER BY job_nonce, seq"
        );
        match &self.db {
            Backend::Sqlite(db) => {
                let mut stmt = db
                    .prepare(&sqlite_sql(&query))
                    .map_err(OracleError::sqlite("submissions_of"))?;
                let rows = stmt
                    .query_map(params![job], sqlite_submission)
                    .map_err(OracleError::sqlite("submissions_of"))?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map_err(OracleError::sqlite("submissions_of"))
            }
            Backend::Postgres(pg) => pg.submissions(&query, Some(job)),
        }
    }

    /// Submissions written but not confirmed on chain (to resume after a restart).
    pub fn pending_submissions(&self) -> Result<Vec<Submission>, OracleError> {
        match &self.db {
            Backend::Sqlite(db) => {
                let mut stmt = db
                    .prepare_cached(sql::PENDING)
                    .map_err(OracleError::sqlite("pending_submissions"))?;
                let rows = stmt
                    .query_map([], sqlite_submission)
                    .map_err(OracleError::sqlite("pending_submissions"))?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map_err(OracleError::sqlite("pending_submissions"))
            }
            Backend::Postgres(pg) => pg.submissions(sql::PENDING, None),
        }
    }

    /// Jobs whose submissions were migrated from schema version 1 and not adopted yet.
    pub fn legacy_jobs(&self) -> Result<Vec<String>, OracleError> {
        match &self.db {
            Backend::Sqlite(db) => sqlite_strings(db, "legacy_jobs", sql::LEGACY_JOBS),
            Backend::Postgres(pg) => pg.strings(sql::LEGACY_JOBS),
        }
    }

    /// Adopts `job`'s migrated submissions and their records into incarnation
    /// `job_nonce` (the job open at the address: what schema 1 assumed), with the
    /// latest one's running totals set to `metered`, and files `invoices` (seq →
    /// bytes found in the old invoice folder) under it.
    pub fn adopt_legacy(
        &self,
        job: &str,
        job_nonce: u64,
        metered: Totals,
        invoices: &[(u64, Vec<u8>)],
    ) -> Result<(), OracleError> {
        let nonce = to_i64(job_nonce)?;
        let totals = [
            to_i64(metered.tokens)?,
            to_i64(metered.requests)?,
            to_i64(metered.gpu_ms)?,
        ];
        let invoices = invoices
            .iter()
            .map(|(seq, bytes)| Ok((to_i64(*seq)?, bytes.clone())))
            .collect::<Result<Vec<_>, OracleError>>()?;
        match &self.db {
            Backend::Sqlite(db) => {
                let tx = rusqlite::Transaction::new_unchecked(db, TransactionBehavior::Immediate)
                    .map_err(OracleError::sqlite("adopt_legacy"))?;
                tx.execute(
                    "UPDATE submissions SET metered_tokens = ?3, metered_requests = ?4, metered_gpu_ms = ?5
                     WHERE job = ?1 AND job_nonce = -1
                       AND seq = (SELECT MAX(seq) FROM submissions WHERE job = ?1 AND job_nonce = -1)",
                    params![job, Option::<i64>::None, totals[0], totals[1], totals[2]],
                )
                .map_err(OracleError::sqlite("adopt_legacy"))?;
                tx.execute(
                    "UPDATE submissions SET job_nonce = ?2 WHERE job = ?1 AND job_nonce = -1",
                    params![job, nonce],
                )
                .map_err(OracleError::sqlite("adopt_legacy"))?;
                tx.execute(
                    "UPDATE records SET job_nonce = ?2 WHERE job = ?1 AND job_nonce IS NULL AND submission_seq > 0",
                    params![job, nonce],
                )
                .map_err(OracleError::sqlite("adopt_legacy"))?;
                for (seq, bytes) in &invoices {
                    tx.execute(
                        "INSERT INTO invoices (job, job_nonce, seq, bytes) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (job, job_nonce, seq) DO NOTHING",
                        params![job, nonce, seq, bytes],
                    )
                    .map_err(OracleError::sqlite("adopt_legacy"))?;
                }
                tx.commit().map_err(OracleError::sqlite("adopt_legacy"))
            }
            Backend::Postgres(pg) => pg.adopt_legacy(job, nonce, totals, &invoices),
        }
    }

    /// Writes what a settlement round decided, in one transaction: new submissions
    /// (each with its invoice bytes, its records attached and bound to its nonce),
    /// write-offs. Fails — writing nothing — if any record to attach is already
    /// attached or gone (another batcher got there first), or, with PostgreSQL, if
    /// this replica no longer holds the settlement lock.
    pub fn write_round(&self, round: &RoundWrite) -> Result<(), OracleError> {
        if round.is_empty() {
            return Ok(());
        }
        let prepared = PreparedRound::of(round)?;
        match &self.db {
            Backend::Sqlite(db) => sqlite_write_round(db, &prepared),
            Backend::Postgres(pg) => pg.write_round(&prepared),
        }
    }

    /// Writes one submission (with its invoice and records): [`Store::write_round`]
    /// of one.
    pub fn write_submission(&self, submission: &NewSubmission) -> Result<(), OracleError> {
        self.write_round(&RoundWrite {
            submissions: vec![submission.clone()],
            ..RoundWrite::default()
        })
    }

    /// Marks submissions as landed, in one transaction. Returns how many were pending.
    pub fn confirm_all(&self, landed: &[(String, u64, u64)]) -> Result<u64, OracleError> {
        if landed.is_empty() {
            return Ok(0);
        }
        let rows = landed
            .iter()
            .map(|(job, nonce, seq)| Ok((job.clone(), nonce_to_sql(*nonce)?, to_i64(*seq)?)))
            .collect::<Result<Vec<_>, OracleError>>()?;
        match &self.db {
            Backend::Sqlite(db) => {
                let tx = rusqlite::Transaction::new_unchecked(db, TransactionBehavior::Immediate)
                    .map_err(OracleError::sqlite("confirm_all"))?;
                let mut n = 0u64;
                {
                    let mut confirm = tx
                        .prepare_cached(&sqlite_sql(sql::CONFIRM))
                        .map_err(OracleError::sqlite("confirm_all"))?;
                    for (job, nonce, seq) in &rows {
                        n += confirm
                            .execute(params![job, nonce, seq])
                            .map_err(OracleError::sqlite("confirm_all"))?
                            as u64;
                    }
                }
                tx.commit().map_err(OracleError::sqlite("confirm_all"))?;
                Ok(n)
            }
            Backend::Postgres(pg) => pg.confirm_all(&rows),
        }
    }

    /// Gives up a *pending* submission (in a quorum: another oracle's receipt took its
    /// seq, or it can no longer land and a peer's is taken instead): its records wait
    /// again and it is gone, in one transaction. Returns whether there was one.
    pub fn release(&self, job: &str, job_nonce: u64, seq: u64) -> Result<bool, OracleError> {
        let (nonce, seq) = (nonce_to_sql(job_nonce)?, to_i64(seq)?);
        match &self.db {
            Backend::Sqlite(db) => {
                let fail = OracleError::sqlite("release");
                let tx = rusqlite::Transaction::new_unchecked(db, TransactionBehavior::Immediate)
                    .map_err(&fail)?;
                let released = tx
                    .execute(
                        &sqlite_sql(sql::RELEASE_SUBMISSION),
                        params![job, nonce, seq],
                    )
                    .map_err(&fail)?;
                if released > 0 {
                    tx.execute(&sqlite_sql(sql::RELEASE_RECORDS), params![job, nonce, seq])
                        .map_err(&fail)?;
                    tx.execute(&sqlite_sql(sql::RELEASE_INVOICE), params![job, nonce, seq])
                        .map_err(&fail)?;
                }
                tx.commit().map_err(&fail)?;
                Ok(released > 0)
            }
            Backend::Postgres(pg) => pg.release(job, nonce, seq),
        }
    }

    /// Marks one submission as landed.
    pub fn confirm(&self, job: &str, job_nonce: u64, seq: u64) -> Result<(), OracleError> {
        self.confirm_all(&[(job.to_string(), job_nonce, seq)])
            .map(|_| ())
    }

    /// Records not yet covered by a confirmed receipt (waiting for a submission, or
    /// on a pending one): how many, and when the oldest finished (chain unix seconds).
    /// Reads only the waiting records' and the pending submissions' indexes.
    pub fn unsettled(&self) -> Result<(u64, Option<i64>), OracleError> {
        let (waiting, pending) = match &self.db {
            Backend::Sqlite(db) => {
                let pair = |query: &str| {
                    db.query_row(query, [], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?))
                    })
                    .map_err(OracleError::sqlite("unsettled"))
                };
                (pair(sql::UNSETTLED_WAITING)?, pair(sql::UNSETTLED_PENDING)?)
            }
            Backend::Postgres(pg) => pg.unsettled()?,
        };
        let oldest = match (waiting.1, pending.1) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok((to_u64(waiting.0).saturating_add(to_u64(pending.0)), oldest))
    }

    /// Number of records committed.
    pub fn record_count(&self) -> Result<u64, OracleError> {
        match &self.db {
            Backend::Sqlite(db) => db
                .query_row("SELECT COUNT(*) FROM records", [], |row| {
                    row.get::<_, i64>(0)
                })
                .map(to_u64)
                .map_err(OracleError::sqlite("record_count")),
            Backend::Postgres(pg) => pg.count("SELECT COUNT(*) FROM records"),
        }
    }

    /// The invoice bytes of receipt `seq` of a job incarnation.
    pub fn invoice(
        &self,
        job: &str,
        job_nonce: u64,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, OracleError> {
        let (nonce, seq) = (nonce_to_sql(job_nonce)?, to_i64(seq)?);
        match &self.db {
            Backend::Sqlite(db) => db
                .prepare_cached(&sqlite_sql(sql::INVOICE))
                .map_err(OracleError::sqlite("invoice"))?
                .query_row(params![job, nonce, seq], |row| row.get::<_, Vec<u8>>(0))
                .optional()
                .map_err(OracleError::sqlite("invoice")),
            Backend::Postgres(pg) => pg.invoice(job, nonce, seq),
        }
    }

    /// Up to `limit` invoices of a job incarnation after receipt `after`, in order:
    /// `(seq, bytes)`.
    pub fn invoices_after(
        &self,
        job: &str,
        job_nonce: u64,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, OracleError> {
        let (nonce, after, limit) = (nonce_to_sql(job_nonce)?, to_i64(after)?, to_i64(limit)?);
        match &self.db {
            Backend::Sqlite(db) => {
                let mut stmt = db
                    .prepare_cached(&sqlite_sql(sql::INVOICES_AFTER))
                    .map_err(OracleError::sqlite("invoices_after"))?;
                let rows = stmt
                    .query_map(params![job, nonce, after, limit], |row| {
                        Ok((to_u64(row.get::<_, i64>(0)?), row.get::<_, Vec<u8>>(1)?))
                    })
                    .map_err(OracleError::sqlite("invoices_after"))?;
                rows.collect::<Result<_, _>>()
                    .map_err(OracleError::sqlite("invoices_after"))
            }
            Backend::Postgres(pg) => pg.invoices_after(job, nonce, after, limit),
        }
    }

    /// Write-offs logged, oldest first.
    pub fn write_offs(&self) -> Result<Vec<WriteOff>, OracleError> {
        let query = "SELECT job, job_nonce, seq, reason, records, units FROM write_offs";
        match &self.db {
            Backend::Sqlite(db) => {
                let mut stmt = db
                    .prepare(query)
                    .map_err(OracleError::sqlite("write_offs"))?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok(WriteOff {
                            job: row.get(0)?,
                            job_nonce: row.get::<_, Option<i64>>(1)?.map(nonce_from_sql),
                            seq: row.get::<_, Option<i64>>(2)?.map(to_u64),
                            reason: row.get(3)?,
                            records: to_u64(row.get(4)?),
                            units: to_u64(row.get(5)?),
                        })
                    })
                    .map_err(OracleError::sqlite("write_offs"))?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map_err(OracleError::sqlite("write_offs"))
            }
            Backend::Postgres(pg) => pg.write_offs(query),
        }
    }

    /// The lookup tables the daemon manages that are not closed yet.
    pub fn lookup_tables(&self) -> Result<Vec<LookupTableRow>, OracleError> {
        let query =
            "SELECT address, authority, operator, mint, recent_slot, state, deactivated_slot \
                     FROM lookup_tables WHERE state <> 3 ORDER BY address";
        match &self.db {
            Backend::Sqlite(db) => {
                let mut stmt = db
                    .prepare(query)
                    .map_err(OracleError::sqlite("lookup_tables"))?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok(LookupTableRow {
                            address: row.get(0)?,
                            authority: row.get(1)?,
                            operator: row.get(2)?,
                            mint: row.get(3)?,
                            recent_slot: to_u64(row.get(4)?),
                            state: table_state_from_sql(row.get(5)?, row.get(6)?),
                        })
                    })
                    .map_err(OracleError::sqlite("lookup_tables"))?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map_err(OracleError::sqlite("lookup_tables"))
            }
            Backend::Postgres(pg) => pg.lookup_tables(query),
        }
    }

    /// Writes (or updates) a managed lookup table: before its create transaction is
    /// sent (as `Creating`), and at each change of state.
    pub fn save_lookup_table(&self, table: &LookupTableRow) -> Result<(), OracleError> {
        let (state, slot) = table_state_to_sql(table.state);
        let recent = to_i64(table.recent_slot)?;
        let query = "INSERT INTO lookup_tables (address, authority, operator, mint, recent_slot, state, deactivated_slot)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (address) DO UPDATE SET state = $6, deactivated_slot = $7";
        match &self.db {
            Backend::Sqlite(db) => db
                .execute(
                    &sqlite_sql(query),
                    params![
                        table.address,
                        table.authority,
                        table.operator,
                        table.mint,
                        recent,
                        state,
                        slot
                    ],
                )
                .map(|_| ())
                .map_err(OracleError::sqlite("save_lookup_table")),
            Backend::Postgres(pg) => pg.save_lookup_table(query, table, recent, state, slot),
        }
    }

    /// The plans of the queries a settlement round, ingest and pre-authorization run, as the database
    /// explains them (`EXPLAIN QUERY PLAN` on SQLite; `EXPLAIN` on PostgreSQL, with
    /// sequential scans disabled so the plan shows whether an index *can* serve the
    /// query, whatever the table's current size).
    pub fn query_plans(&self) -> Result<Vec<QueryPlan>, OracleError> {
        let queries: [(&'static str, &str); 14] = [
            ("jobs_with_new_records", sql::JOBS_WAITING),
            ("waiting_records", sql::WAITING_OF_JOB),
            ("last_submission", sql::LAST_SUBMISSION),
            ("pending_submissions", sql::PENDING),
            ("legacy_jobs", sql::LEGACY_JOBS),
            ("unsettled_waiting", sql::UNSETTLED_WAITING),
            ("unsettled_pending", sql::UNSETTLED_PENDING),
            ("attach_record", sql::ATTACH),
            ("confirm", sql::CONFIRM),
            ("waiting_usage", sql::WAITING_USAGE),
            ("pending_usage", sql::PENDING_USAGE),
            ("settled_before", sql::SETTLED_BEFORE),
            ("key_usage", sql::KEY_USAGE),
            ("invoices_after", sql::INVOICES_AFTER),
        ];
        match &self.db {
            Backend::Sqlite(db) => queries
                .iter()
                .map(|(name, query)| {
                    let query = sqlite_sql(query);
                    let mut stmt = db
                        .prepare(&format!("EXPLAIN QUERY PLAN {query}"))
                        .map_err(OracleError::sqlite("query_plans"))?;
                    let n = stmt.parameter_count();
                    let args: Vec<rusqlite::types::Value> =
                        (0..n).map(|_| rusqlite::types::Value::Integer(1)).collect();
                    let rows = stmt
                        .query_map(rusqlite::params_from_iter(args), |row| {
                            row.get::<_, String>(3)
                        })
                        .map_err(OracleError::sqlite("query_plans"))?;
                    let plan = rows
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(OracleError::sqlite("query_plans"))?
                        .join("\n");
                    Ok(QueryPlan {
                        name,
                        sql: query,
                        plan,
                    })
                })
                .collect(),
            Backend::Postgres(pg) => pg.query_plans(&queries),
        }
    }
}

// ---------------------------------------------------------------------------------
// The gateway's: which source meters each job, revoked job keys, and usage totals
// for pre-authorization.

/// A count, its tokens and its GPU ms, as a usage query answers them.
type UsageRow = (i64, i64, i64);

/// Usage rows count output tokens within `tokens` only (the gateway prices unsettled
/// tokens at the job's higher price).
fn totals_of(row: UsageRow) -> Totals {
    Totals {
        requests: to_u64(row.0),
        tokens: to_u64(row.1),
        gpu_ms: to_u64(row.2),
        output_tokens: 0,
    }
}

/// A pending receipt's incarnation, seq and running totals (tokens, requests, GPU ms).
type PendingRow = (i64, i64, [i64; 3]);

fn running(totals: [i64; 3]) -> Totals {
    Totals {
        tokens: to_u64(totals[0]),
        requests: to_u64(totals[1]),
        gpu_ms: to_u64(totals[2]),
        output_tokens: 0,
    }
}

/// The pending receipts of the incarnations `nonce` selects (`None`: all; legacy
/// ones not adopted yet always count), grouped: (nonce, first pending seq, the last
/// one's running totals).
fn pending_groups(rows: &[PendingRow], nonce: Option<i64>) -> Vec<(i64, i64, Totals)> {
    let mut groups: Vec<(i64, i64, Totals)> = Vec::new();
    for (n, seq, totals) in rows {
        if nonce.is_some_and(|want| *n != want && *n != LEGACY_NONCE_SQL) {
            continue;
        }
        match groups.last_mut() {
            // Rows come ordered by (nonce, seq): the last of a group is its latest.
            Some(group) if group.0 == *n => group.2 = running(*totals),
            _ => groups.push((*n, *seq, running(*totals))),
        }
    }
    groups
}

/// `latest − settled`, field by field (running totals only grow).
fn minus(latest: Totals, settled: Totals) -> Totals {
    Totals {
        tokens: latest.tokens.saturating_sub(settled.tokens),
        requests: latest.requests.saturating_sub(settled.requests),
        gpu_ms: latest.gpu_ms.saturating_sub(settled.gpu_ms),
        output_tokens: latest.output_tokens.saturating_sub(settled.output_tokens),
    }
}

impl Store {
    /// Claims metering of `job` for `source` unless another source already meters it.
    /// Returns the source that meters the job (`source` itself when the claim won).
    /// Atomic in the database: of two sources racing, exactly one wins.
    pub fn claim_meter(&self, job: &str, source: &str, now: i64) -> Result<String, OracleError> {
        match &self.db {
            Backend::Sqlite(db) => {
                db.prepare_cached(&sqlite_sql(sql::CLAIM_METER))
                    .and_then(|mut s| s.execute(params![job, source, now]))
                    .map_err(OracleError::sqlite("claim_meter"))?;
                db.prepare_cached(&sqlite_sql(sql::METER_OF))
                    .and_then(|mut s| s.query_row(params![job], |row| row.get::<_, String>(0)))
                    .map_err(OracleError::sqlite("claim_meter"))
            }
            Backend::Postgres(pg) => pg.claim_meter(job, source, now),
        }
    }

    /// Records that the job key `key_id` (of `job`) is refused from now on. Returns
    /// whether it was not revoked before.
    pub fn revoke_key(&self, key_id: &str, job: &str, now: i64) -> Result<bool, OracleError> {
        let inserted = match &self.db {
            Backend::Sqlite(db) => {
                db.prepare_cached(&sqlite_sql(sql::REVOKE_KEY))
                    .and_then(|mut s| s.execute(params![key_id, job, now]))
                    .map_err(OracleError::sqlite("revoke_key"))? as u64
            }
            Backend::Postgres(pg) => pg.revoke_key(key_id, job, now)?,
        };
        Ok(inserted == 1)
    }

    /// Every revoked job key id.
    pub fn revoked_keys(&self) -> Result<Vec<String>, OracleError> {
        match &self.db {
            Backend::Sqlite(db) => sqlite_strings(db, "revoked_keys", sql::REVOKED_KEYS),
            Backend::Postgres(pg) => pg.strings(sql::REVOKED_KEYS),
        }
    }

    /// Keeps the signature behind a record received from another oracle's gateway
    /// (before the record itself is committed: a record with evidence is never sent
    /// on as this oracle's own). Idempotent.
    pub fn save_evidence(&self, e: &Evidence) -> Result<(), OracleError> {
        match &self.db {
            Backend::Sqlite(db) => db
                .prepare_cached(&sqlite_sql(sql::SAVE_EVIDENCE))
                .and_then(|mut s| s.execute(params![e.job, e.request_id, e.signer, e.signature]))
                .map(drop)
                .map_err(OracleError::sqlite("save_evidence")),
            Backend::Postgres(pg) => pg.execute(
                "saving evidence",
                sql::SAVE_EVIDENCE,
                &[&e.job, &e.request_id, &e.signer, &e.signature],
            ),
        }
    }

    /// This oracle's own records of `source` not yet sent to `peer`, oldest first:
    /// (id, record).
    pub fn outbox(
        &self,
        source: &str,
        peer: &str,
        limit: i64,
    ) -> Result<Vec<(i64, UsageRecord)>, OracleError> {
        match &self.db {
            Backend::Sqlite(db) => {
                let op = "outbox";
                let mut stmt = db
                    .prepare_cached(&sqlite_sql(sql::OUTBOX))
                    .map_err(OracleError::sqlite(op))?;
                let rows = stmt
                    .query_map(params![source, peer, limit], sqlite_record)
                    .map_err(OracleError::sqlite(op))?;
                rows.map(|r| r.map(|w| (w.id, w.record)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(OracleError::sqlite(op))
            }
            Backend::Postgres(pg) => pg.outbox(source, peer, limit),
        }
    }

    /// `peer` holds this oracle's records up to id `after_id` (never moves back).
    pub fn forwarded(&self, peer: &str, after_id: i64) -> Result<(), OracleError> {
        match &self.db {
            Backend::Sqlite(db) => db
                .prepare_cached(&sqlite_sql(sql::FORWARDED))
                .and_then(|mut s| s.execute(params![peer, after_id]))
                .map(drop)
                .map_err(OracleError::sqlite("forwarded")),
            Backend::Postgres(pg) => pg.execute(
                "saving what a peer holds",
                sql::FORWARDED,
                &[&peer, &after_id],
            ),
        }
    }

    fn usage_row(&self, query: &'static str, key: &str, until: i64) -> Result<Totals, OracleError> {
        let row = match &self.db {
            Backend::Sqlite(db) => db
                .prepare_cached(&sqlite_sql(query))
                .and_then(|mut s| {
                    s.query_row(params![key, until], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                })
                .map_err(OracleError::sqlite("usage_row"))?,
            Backend::Postgres(pg) => pg.usage_row(query, key, until)?,
        };
        Ok(totals_of(row))
    }

    /// Everything recorded for `job` (every incarnation, billed or not) that finished
    /// by `until`. An audit: it reads all of the job's records.
    pub fn job_usage(&self, job: &str, until: i64) -> Result<Totals, OracleError> {
        self.usage_row(sql::JOB_USAGE, job, until)
    }

    /// Everything spent through the job key `key_id` that finished by `until` (its
    /// records, through their own index).
    pub fn key_usage(&self, key_id: &str, until: i64) -> Result<Totals, OracleError> {
        self.usage_row(sql::KEY_USAGE, key_id, until)
    }

    /// What this store metered for incarnation `job_nonce` of `job` that no landed
    /// receipt covers yet: with the job's escrow left on chain, what the job can still
    /// pay. That is the records waiting for a receipt (finished by `until`, the job's
    /// deadline; bound to this incarnation or to none yet) plus what its pending
    /// receipts bill (their running totals past the last receipt that is no longer
    /// pending; they hold billable usage only). `None`: every incarnation's (a view
    /// that does not know the job's nonce yet; at most an over-count). Reads only
    /// what is unsettled: the waiting records' and pending receipts' indexes and one
    /// receipt before them.
    pub fn unsettled_usage(
        &self,
        job: &str,
        job_nonce: Option<u64>,
        until: i64,
    ) -> Result<Totals, OracleError> {
        let nonce = job_nonce.map(nonce_to_sql).transpose()?;
        let (waiting, pending) = match &self.db {
            Backend::Sqlite(db) => {
                let waiting: UsageRow = db
                    .prepare_cached(&sqlite_sql(sql::WAITING_USAGE))
                    .and_then(|mut s| {
                        s.query_row(params![job, until, nonce], |row| {
                            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                        })
                    })
                    .map_err(OracleError::sqlite("unsettled_usage"))?;
                let rows: Vec<PendingRow> = db
                    .prepare_cached(&sqlite_sql(sql::PENDING_USAGE))
                    .and_then(|mut s| {
                        s.query_map(params![job], |row| {
                            Ok((
                                row.get(0)?,
                                row.get(1)?,
                                [row.get(2)?, row.get(3)?, row.get(4)?],
                            ))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(OracleError::sqlite("unsettled_usage"))?;
                let mut pending = Totals::default();
                for (n, first, latest) in pending_groups(&rows, nonce) {
                    let settled = db
                        .prepare_cached(&sqlite_sql(sql::SETTLED_BEFORE))
                        .and_then(|mut s| {
                            s.query_row(params![job, n, first], |row| {
                                Ok([row.get(0)?, row.get(1)?, row.get(2)?])
                            })
                            .optional()
                        })
                        .map_err(OracleError::sqlite("unsettled_usage"))?
                        .map(running)
                        .unwrap_or_default();
                    pending.merge(&minus(latest, settled));
                }
                (totals_of(waiting), pending)
            }
            Backend::Postgres(pg) => pg.unsettled_usage(job, nonce, until)?,
        };
        let mut totals = waiting;
        totals.merge(&pending);
        Ok(totals)
    }
}

fn sqlite_strings(
    db: &Connection,
    op: &'static str,
    query: &str,
) -> Result<Vec<String>, OracleError> {
    let mut stmt = db.prepare_cached(query).map_err(OracleError::sqlite(op))?;
    let rows = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(OracleError::sqlite(op))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(OracleError::sqlite(op))
}

/// Creates the schema, or upgrades a version-1 or version-2 store in place, in one
/// transaction; returns the store's schema version (newer than [`SCHEMA_VERSION`]:
/// left alone).
fn sqlite_migrate(db: &Connection) -> rusqlite::Result<i64> {
    let tx = rusqlite::Transaction::new_unchecked(db, TransactionBehavior::Immediate)?;
    let has = |table: &str| -> rusqlite::Result<bool> {
        tx.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |row| row.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    let version: i64 = if has("tally_schema")? {
        tx.query_row("SELECT MAX(version) FROM tally_schema", [], |row| {
            row.get::<_, Option<i64>>(0)
        })?
        .unwrap_or(0)
    } else {
        // Version 1 had no version table.
        i64::from(has("records")?)
    };
    if version >= SCHEMA_VERSION {
        // Newer: refused by the caller, nothing touched.
        tx.commit()?;
        return Ok(version);
    }
    if version == 1 {
        tx.execute_batch(&MIGRATE_V1_V2.replace("{int}", "INTEGER"))?;
    }
    if version >= 1 {
        // SQLite has no ADD COLUMN IF NOT EXISTS.
        let columns: Vec<String> = tx
            .prepare("SELECT name FROM pragma_table_info('records')")?
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        for column in GATEWAY_COLUMNS {
            if !columns.iter().any(|c| c == column) {
                tx.execute_batch(&format!(
                    "ALTER TABLE records ADD COLUMN {column} TEXT NOT NULL DEFAULT ''"
                ))?;
            }
        }
    }
    if version == 2 || version == 3 {
        // Version 1's submissions are rebuilt with the current table below; version 4
        // has the columns.
        for column in OUTPUT_COLUMNS {
            tx.execute_batch(&format!(
                "ALTER TABLE submissions ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
            ))?;
        }
    }
    tx.execute_batch(&schema_v3(false))?;
    if version == 1 {
        tx.execute_batch(COPY_V1_SUBMISSIONS)?;
    }
    tx.execute("DELETE FROM tally_schema", [])?;
    tx.execute(
        "INSERT INTO tally_schema (version) VALUES (?1)",
        [SCHEMA_VERSION],
    )?;
    tx.commit()?;
    Ok(SCHEMA_VERSION)
}

/// Records to write off: job, nonce, ids, reason, units.
type PreparedRecordWriteOff = (String, Option<i64>, Vec<i64>, String, i64);
/// A submission to write off: job, nonce, seq, reason.
type PreparedSubmissionWriteOff = (String, i64, i64, String);

/// A [`RoundWrite`] with its values converted (so nothing fails mid-transaction for a
/// value out of range).
struct PreparedRound {
    submissions: Vec<PreparedSubmission>,
    record_write_offs: Vec<PreparedRecordWriteOff>,
    submission_write_offs: Vec<PreparedSubmissionWriteOff>,
}

struct PreparedSubmission {
    job: String,
    nonce: i64,
    seq: i64,
    // cumulative, tokens, requests, gpu_ms, records, period_end, cumulative output,
    // output tokens
    values: [i64; 8],
    oldest: Option<i64>,
    hash: Vec<u8>,
    invoice: Vec<u8>,
    record_ids: Vec<i64>,
}

impl PreparedRound {
    fn of(round: &RoundWrite) -> Result<Self, OracleError> {
        let submissions = round
            .submissions
            .iter()
            .map(|n| {
                let s = &n.submission;
                if s.job_nonce == LEGACY_NONCE {
                    return Err(OracleError::NoJobNonce { job: s.job.clone() });
                }
                Ok(PreparedSubmission {
                    job: s.job.clone(),
                    nonce: to_i64(s.job_nonce)?,
                    seq: to_i64(s.seq)?,
                    values: [
                        to_i64(s.cumulative_units)?,
                        to_i64(s.metered.tokens)?,
                        to_i64(s.metered.requests)?,
                        to_i64(s.metered.gpu_ms)?,
                        to_i64(s.records)?,
                        s.period_end,
                        to_i64(s.cumulative_output)?,
                        to_i64(s.metered.output_tokens)?,
                    ],
                    oldest: s.oldest_finished_at,
                    hash: s.invoice_hash.to_vec(),
                    invoice: n.invoice.clone(),
                    record_ids: n.record_ids.clone(),
                })
            })
            .collect::<Result<Vec<_>, OracleError>>()?;
        let record_write_offs = round
            .record_write_offs
            .iter()
            .map(|w| {
                Ok((
                    w.job.clone(),
                    w.job_nonce.map(to_i64).transpose()?,
                    w.record_ids.clone(),
                    w.reason.clone(),
                    to_i64(w.units)?,
                ))
            })
            .collect::<Result<Vec<_>, OracleError>>()?;
        let submission_write_offs = round
            .submission_write_offs
            .iter()
            .map(|(job, nonce, seq, reason)| {
                Ok((
                    job.clone(),
                    nonce_to_sql(*nonce)?,
                    to_i64(*seq)?,
                    reason.clone(),
                ))
            })
            .collect::<Result<Vec<_>, OracleError>>()?;
        Ok(Self {
            submissions,
            record_write_offs,
            submission_write_offs,
        })
    }
}

const INSERT_SUBMISSION: &str = "INSERT INTO submissions
    (job, job_nonce, seq, cumulative_units, invoice_hash, period_end, metered_tokens,
     metered_requests, metered_gpu_ms, records, oldest_finished_at, state, reason,
     cumulative_output, metered_output)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, NULL, $12, $13)";
const INSERT_INVOICE: &str =
    "INSERT INTO invoices (job, job_nonce, seq, bytes) VALUES ($1, $2, $3, $4)";
const WRITE_OFF_RECORD: &str = "UPDATE records SET submission_seq = 0, \
    job_nonce = COALESCE(job_nonce, $1) WHERE id = $2 AND submission_seq IS NULL";
const WRITE_OFF_SUBMISSION: &str = "UPDATE submissions SET state = 2, reason = $4 \
    WHERE job = $1 AND job_nonce = $2 AND seq = $3 AND state = 0";
const LOG_WRITE_OFF: &str = "INSERT INTO write_offs (job, job_nonce, seq, reason, records, units)
    VALUES ($1, $2, $3, $4, $5, $6)";

/// Another batcher wrote `what` first.
fn conflict(what: String) -> OracleError {
    OracleError::Conflict {
        what,
        detail: None,
        source: None,
    }
}

/// Another batcher wrote `what` first: the store refused it with `detail` (`source`).
fn conflict_because(
    what: String,
    detail: String,
    source: impl Into<crate::BoxError>,
) -> OracleError {
    OracleError::Conflict {
        what,
        detail: Some(detail),
        source: Some(source.into()),
    }
}

/// [`Store::write_round`] on SQLite: submissions, then record write-offs, then
/// submission write-offs, in one transaction.
fn sqlite_write_round(db: &Connection, round: &PreparedRound) -> Result<(), OracleError> {
    let tx = rusqlite::Transaction::new_unchecked(db, TransactionBehavior::Immediate)
        .map_err(OracleError::sqlite("write_round"))?;
    sqlite_insert_submissions(&tx, &round.submissions)?;
    sqlite_write_off_records(&tx, &round.record_write_offs)?;
    sqlite_write_off_submissions(&tx, &round.submission_write_offs)?;
    tx.commit().map_err(OracleError::sqlite("write_round"))
}

/// Inserts each submission with its invoice and attaches its records (a record
/// already attached or gone: another batcher was first).
fn sqlite_insert_submissions(
    tx: &Connection,
    submissions: &[PreparedSubmission],
) -> Result<(), OracleError> {
    let mut insert = tx
        .prepare_cached(&sqlite_sql(INSERT_SUBMISSION))
        .map_err(OracleError::sqlite("write_round"))?;
    let mut invoice = tx
        .prepare_cached(&sqlite_sql(INSERT_INVOICE))
        .map_err(OracleError::sqlite("write_round"))?;
    let mut attach = tx
        .prepare_cached(&sqlite_sql(sql::ATTACH))
        .map_err(OracleError::sqlite("write_round"))?;
    for s in submissions {
        let [cumulative, tokens, requests, gpu_ms, records, period_end, output, metered_output] =
            s.values;
        insert
            .execute(params![
                s.job,
                s.nonce,
                s.seq,
                cumulative,
                s.hash,
                period_end,
                tokens,
                requests,
                gpu_ms,
                records,
                s.oldest,
                output,
                metered_output
            ])
            .map_err(|e| {
                conflict_because(
                    format!("submission {} of job {}", s.seq, s.job),
                    e.to_string(),
                    e,
                )
            })?;
        invoice
            .execute(params![s.job, s.nonce, s.seq, s.invoice])
            .map_err(OracleError::sqlite("write_round"))?;
        for id in &s.record_ids {
            if attach
                .execute(params![s.nonce, s.seq, id])
                .map_err(OracleError::sqlite("write_round"))?
                != 1
            {
                return Err(conflict(format!("record {id} of job {}", s.job)));
            }
        }
    }
    Ok(())
}

/// Writes off waiting records and logs each group's write-off.
fn sqlite_write_off_records(
    tx: &Connection,
    write_offs: &[PreparedRecordWriteOff],
) -> Result<(), OracleError> {
    let mut off = tx
        .prepare_cached(&sqlite_sql(WRITE_OFF_RECORD))
        .map_err(OracleError::sqlite("write_round"))?;
    let mut log = tx
        .prepare_cached(&sqlite_sql(LOG_WRITE_OFF))
        .map_err(OracleError::sqlite("write_round"))?;
    for (job, nonce, ids, reason, units) in write_offs {
        for id in ids {
            if off
                .execute(params![nonce, id])
                .map_err(OracleError::sqlite("write_round"))?
                != 1
            {
                return Err(conflict(format!("record {id} of job {job}")));
            }
        }
        let n = i64::try_from(ids.len()).unwrap_or(i64::MAX);
        log.execute(params![job, nonce, Option::<i64>::None, reason, n, units])
            .map_err(OracleError::sqlite("write_round"))?;
    }
    Ok(())
}

/// Writes off pending submissions and logs each with its record count.
fn sqlite_write_off_submissions(
    tx: &Connection,
    write_offs: &[PreparedSubmissionWriteOff],
) -> Result<(), OracleError> {
    let mut off = tx
        .prepare_cached(&sqlite_sql(WRITE_OFF_SUBMISSION))
        .map_err(OracleError::sqlite("write_round"))?;
    let mut log = tx
        .prepare_cached(&sqlite_sql(LOG_WRITE_OFF))
        .map_err(OracleError::sqlite("write_round"))?;
    for (job, nonce, seq, reason) in write_offs {
        if off
            .execute(params![job, nonce, seq, reason])
            .map_err(OracleError::sqlite("write_round"))?
            != 1
        {
            return Err(conflict(format!("submission {seq} of job {job}")));
        }
        log.execute(params![
            job,
            nonce,
            seq,
            reason,
            tx.query_row(
                "SELECT records FROM submissions WHERE job = ?1 AND job_nonce = ?2 AND seq = ?3",
                params![job, nonce, seq],
                |row| row.get::<_, i64>(0)
            )
            .map_err(OracleError::sqlite("write_round"))?,
            0i64
        ])
        .map_err(OracleError::sqlite("write_round"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// PostgreSQL: tokio-postgres through a deadpool pool, driven by a small runtime of
// the store's own so the store's API stays blocking (callers are blocking threads).

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;

/// A count and the oldest `finished_at` among what was counted.
type CountAndOldest = (i64, Option<i64>);

struct Pg {
    /// Drives the pool's connections; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    config: tokio_postgres::Config,
    /// The redacted location, for messages.
    location: String,
    /// The session holding (or trying for) the settlement lock.
    lock: Mutex<Option<LockSession>>,
}

struct LockSession {
    client: tokio_postgres::Client,
    /// Its server process id: what `pg_locks` names the lock holder by.
    pid: i32,
    held: bool,
}

fn pg_detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Whether retrying on a fresh connection may succeed: the connection was lost or
/// the server is restarting, or the transaction lost a race it can rerun.
fn pg_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") // connection exception
                || code.starts_with("57P") // admin / crash shutdown, cannot connect now
                || code == "40001" // serialization failure
                || code == "40P01" // deadlock
                || code == "53300" // too many connections
        }
        // No server answer at all: I/O, a connect that failed.
        None => true,
    }
}

enum PgFail {
    /// Worth retrying on another connection.
    Transient(String),
    /// The answer is final.
    Fatal(OracleError),
}

impl From<tokio_postgres::Error> for PgFail {
    fn from(e: tokio_postgres::Error) -> Self {
        if pg_transient(&e) {
            PgFail::Transient(pg_detail(&e))
        } else {
            PgFail::Fatal(postgres(e))
        }
    }
}

/// A PostgreSQL failure, with its detail.
fn postgres(e: tokio_postgres::Error) -> OracleError {
    OracleError::Postgres {
        detail: pg_detail(&e),
        source: e,
    }
}

impl From<deadpool_postgres::PoolError> for PgFail {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        PgFail::Transient(format!("no connection from the pool: {e}"))
    }
}

impl From<OracleError> for PgFail {
    fn from(e: OracleError) -> Self {
        PgFail::Fatal(e)
    }
}

type PgResult<T> = Result<T, PgFail>;

fn pg_config(location: &str) -> Result<tokio_postgres::Config, OracleError> {
    let mut config: tokio_postgres::Config =
        location.parse().map_err(|e| OracleError::NotPostgresUrl {
            location: redact_location(location),
            source: e,
        })?;
    // A peer that vanished (power loss, a cut network) is noticed in ~25 s, not hours.
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(25))
        .connect_timeout(Duration::from_secs(5))
        .application_name("tally-oracle")
        .options(format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout=60000",
            PG_STATEMENT_TIMEOUT.as_millis()
        ));
    Ok(config)
}

impl Pg {
    fn connect(location: &str) -> Result<Self, OracleError> {
        let config = pg_config(location)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tally-store-pg")
            .enable_all()
            .build()
            .map_err(|e| OracleError::Setup {
                what: "start the PostgreSQL driver",
                source: e.into(),
            })?;
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = {
            let _entered = runtime.enter();
            Pool::builder(manager)
                .max_size(PG_POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(10)))
                .create_timeout(Some(Duration::from_secs(5)))
                .recycle_timeout(Some(Duration::from_secs(5)))
                .build()
                .map_err(|e| OracleError::Setup {
                    what: "build the PostgreSQL pool",
                    source: e.into(),
                })?
        };
        let pg = Self {
            runtime: Some(runtime),
            pool,
            config,
            location: redact_location(location),
            lock: Mutex::new(None),
        };
        // The first connection must work: a wrong URL or password is an error now,
        // not 20 s of retries.
        pg.block_on(async {
            let mut client = pg.pool.get().await.map_err(|e| OracleError::Open {
                action: "connect to",
                location: pg.location.clone(),
                source: e.into(),
            })?;
            pg_migrate(&mut client)
                .await
                .map_err(|e| OracleError::Migrate {
                    location: format!("at {}", pg.location),
                    supported: SCHEMA_VERSION,
                    detail: pg_detail(&e),
                    source: e.into(),
                })
        })?;
        Ok(pg)
    }

    fn block_on<T>(
        &self,
        f: impl Future<Output = Result<T, OracleError>>,
    ) -> Result<T, OracleError> {
        match &self.runtime {
            Some(runtime) => runtime.block_on(f),
            None => Err(OracleError::Closing),
        }
    }

    /// Runs `op` on a pooled connection, retrying lost connections with backoff for
    /// up to [`PG_RETRY_FOR`].
    fn with_retry<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, OracleError>
    where
        F: Fn(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = PgResult<T>>,
    {
        self.block_on(async {
            let started = Instant::now();
            let mut wait = Duration::from_millis(50);
            loop {
                let attempt = async {
                    let client = self.pool.get().await?;
                    op(client).await
                };
                match attempt.await {
                    Ok(value) => return Ok(value),
                    Err(PgFail::Fatal(e)) => return Err(e),
                    Err(PgFail::Transient(reason)) => {
                        if started.elapsed() >= PG_RETRY_FOR {
                            return Err(OracleError::Unavailable {
                                op: what,
                                location: self.location.clone(),
                                reason,
                                retried_secs: PG_RETRY_FOR.as_secs(),
                            });
                        }
                        tracing::warn!(
                            "{what}: PostgreSQL connection lost ({reason}): retrying in {wait:?}"
                        );
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                }
            }
        })
    }

    fn try_lead(&self) -> Result<bool, OracleError> {
        let mut guard = self
            .lock
            .lock()
            .map_err(OracleError::poisoned("the settlement lock state"))?;
        self.block_on(async {
            // A session that stopped answering has lost the lock (the server ends a
            // session whose peer is gone, and releases its locks).
            if let Some(session) = guard.as_ref() {
                let alive = tokio::time::timeout(
                    Duration::from_secs(10),
                    session.client.simple_query("SELECT 1"),
                )
                .await;
                if !matches!(alive, Ok(Ok(_))) {
                    if session.held {
                        tracing::warn!(
                            "the settlement lock session to {} was lost: leadership is given up until the lock is won again",
                            self.location
                        );
                    }
                    *guard = None;
                }
            }
            if guard.is_none() {
                *guard = Some(self.lock_session().await?);
            }
            let Some(session) = guard.as_mut() else {
                return Ok(false);
            };
            if !session.held {
                let row = session
                    .client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&SETTLEMENT_LOCK])
                    .await;
                match row.and_then(|row| row.try_get::<_, bool>(0)) {
                    Ok(held) => session.held = held,
                    Err(e) => {
                        *guard = None;
                        return Err(OracleError::LockSession {
                            step: "ask for the settlement lock on",
                            location: self.location.clone(),
                            detail: pg_detail(&e),
                            source: e,
                        });
                    }
                }
            }
            Ok(session.held)
        })
    }

    /// A dedicated connection for the settlement lock, its server-side keepalives
    /// set so a vanished leader's session (and lock) ends in seconds.
    async fn lock_session(&self) -> Result<LockSession, OracleError> {
        let (client, connection) = self
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| self.lock_session_error("open the settlement lock session to", e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("settlement lock session ended: {e}");
            }
        });
        client
            .batch_execute(
                "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
                 SET tcp_keepalives_count = 3; SET tcp_user_timeout = 25000",
            )
            .await
            .map_err(|e| {
                self.lock_session_error("set the keepalives of the settlement lock session to", e)
            })?;
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| self.lock_session_error("read the settlement lock session's pid on", e))?;
        Ok(LockSession {
            client,
            pid,
            held: false,
        })
    }

    fn lock_session_error(&self, step: &'static str, e: tokio_postgres::Error) -> OracleError {
        OracleError::LockSession {
            step,
            location: self.location.clone(),
            detail: pg_detail(&e),
            source: e,
        }
    }

    /// The lock session's server pid, if it holds the settlement lock.
    fn leader_pid(&self) -> Result<i32, OracleError> {
        let guard = self
            .lock
            .lock()
            .map_err(OracleError::poisoned("the settlement lock state"))?;
        match guard.as_ref() {
            Some(session) if session.held => Ok(session.pid),
            _ => Err(OracleError::NotLeader),
        }
    }

    fn record_batch(
        &self,
        records: &[UsageRecord],
        values: &[RecordValues],
    ) -> Result<Vec<Recorded>, OracleError> {
        self.with_retry("committing usage records", |mut client| async move {
            let tx = client.transaction().await?;
            let insert = tx.prepare_cached(sql::INSERT_RECORD).await?;
            // Pipelined: one round trip for the whole batch.
            let inserts = records.iter().zip(values).map(|(r, v)| {
                let params: [&(dyn ToSql + Sync); 12] = [
                    &r.job,
                    &v.nonce,
                    &r.request_id,
                    &r.model,
                    &v.prompt,
                    &v.completion,
                    &v.gpu_ms,
                    &r.finished_at,
                    &r.source,
                    &r.upstream_id,
                    &r.counted_by,
                    &r.key_id,
                ];
                let (tx, insert) = (&tx, &insert);
                async move { tx.execute(insert, &params).await }
            });
            let counts = futures_util::future::try_join_all(inserts).await?;
            tx.commit().await?;
            Ok(counts
                .into_iter()
                .map(|n| {
                    if n == 1 {
                        Recorded::New
                    } else {
                        Recorded::Duplicate
                    }
                })
                .collect())
        })
    }

    fn strings(&self, query: &'static str) -> Result<Vec<String>, OracleError> {
        self.with_retry("reading the store", |client| async move {
            let rows = client.query(query, &[]).await?;
            Ok(rows
                .iter()
                .map(|row| row.try_get::<_, String>(0))
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn count(&self, query: &'static str) -> Result<u64, OracleError> {
        self.with_retry("reading the store", |client| async move {
            let row = client.query_one(query, &[]).await?;
            Ok(to_u64(row.try_get::<_, i64>(0)?))
        })
    }

    fn waiting_records(&self, job: &str, limit: i64) -> Result<Vec<WaitingRecord>, OracleError> {
        self.with_retry("reading waiting records", |client| async move {
            let rows = client.query(sql::WAITING_OF_JOB, &[&job, &limit]).await?;
            Ok(rows.iter().map(pg_record).collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn records_after(
        &self,
        query: &str,
        job: &str,
        after: i64,
    ) -> Result<Vec<(i64, UsageRecord)>, OracleError> {
        self.with_retry("reading records", |client| async move {
            let rows = client.query(query, &[&job, &after]).await?;
            Ok(rows
                .iter()
                .map(|row| pg_record(row).map(|w| (w.id, w.record)))
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn billing(&self, query: &str) -> Result<Vec<(UsageRecord, Option<i64>)>, OracleError> {
        self.with_retry("reading records", |client| async move {
            let rows = client.query(query, &[]).await?;
            Ok(rows
                .iter()
                .map(|row| Ok((pg_record(row)?.record, row.try_get::<_, Option<i64>>(13)?)))
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()?)
        })
    }

    fn submitted_records(
        &self,
        query: &str,
        job: &str,
        nonce: Option<i64>,
    ) -> Result<Vec<(u64, UsageRecord)>, OracleError> {
        self.with_retry("reading submitted records", |client| async move {
            let rows = client.query(query, &[&job, &nonce]).await?;
            Ok(rows
                .iter()
                .map(|row| Ok((to_u64(row.try_get(13)?), pg_record(row)?.record)))
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()?)
        })
    }

    fn last_submission(&self, job: &str, nonce: i64) -> Result<Option<Submission>, OracleError> {
        self.with_retry("reading submissions", |client| async move {
            let row = client
                .query_opt(sql::LAST_SUBMISSION, &[&job, &nonce])
                .await?;
            Ok(row.as_ref().map(pg_submission).transpose()?)
        })
    }

    fn submissions(&self, query: &str, job: Option<&str>) -> Result<Vec<Submission>, OracleError> {
        self.with_retry("reading submissions", |client| async move {
            let rows = match job {
                Some(job) => client.query(query, &[&job]).await?,
                None => client.query(query, &[]).await?,
            };
            Ok(rows
                .iter()
                .map(pg_submission)
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn unsettled(&self) -> Result<(CountAndOldest, CountAndOldest), OracleError> {
        self.with_retry("reading unsettled records", |client| async move {
            let w = client.query_one(sql::UNSETTLED_WAITING, &[]).await?;
            let p = client.query_one(sql::UNSETTLED_PENDING, &[]).await?;
            Ok((
                (w.try_get(0)?, w.try_get(1)?),
                (p.try_get(0)?, p.try_get(1)?),
            ))
        })
    }

    fn invoice(&self, job: &str, nonce: i64, seq: i64) -> Result<Option<Vec<u8>>, OracleError> {
        self.with_retry("reading an invoice", |client| async move {
            let row = client
                .query_opt(sql::INVOICE, &[&job, &nonce, &seq])
                .await?;
            Ok(row.map(|r| r.try_get::<_, Vec<u8>>(0)).transpose()?)
        })
    }

    fn invoices_after(
        &self,
        job: &str,
        nonce: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(u64, Vec<u8>)>, OracleError> {
        self.with_retry("reading invoices", |client| async move {
            let rows = client
                .query(sql::INVOICES_AFTER, &[&job, &nonce, &after, &limit])
                .await?;
            Ok(rows
                .iter()
                .map(|r| Ok((to_u64(r.try_get(0)?), r.try_get::<_, Vec<u8>>(1)?)))
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()?)
        })
    }

    fn write_offs(&self, query: &'static str) -> Result<Vec<WriteOff>, OracleError> {
        self.with_retry("reading write-offs", |client| async move {
            let rows = client.query(query, &[]).await?;
            Ok(rows
                .iter()
                .map(|row| {
                    Ok(WriteOff {
                        job: row.try_get(0)?,
                        job_nonce: row.try_get::<_, Option<i64>>(1)?.map(nonce_from_sql),
                        seq: row.try_get::<_, Option<i64>>(2)?.map(to_u64),
                        reason: row.try_get(3)?,
                        records: to_u64(row.try_get(4)?),
                        units: to_u64(row.try_get(5)?),
                    })
                })
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()?)
        })
    }

    fn lookup_tables(&self, query: &'static str) -> Result<Vec<LookupTableRow>, OracleError> {
        self.with_retry("reading lookup tables", |client| async move {
            let rows = client.query(query, &[]).await?;
            Ok(rows
                .iter()
                .map(|row| {
                    Ok(LookupTableRow {
                        address: row.try_get(0)?,
                        authority: row.try_get(1)?,
                        operator: row.try_get(2)?,
                        mint: row.try_get(3)?,
                        recent_slot: to_u64(row.try_get(4)?),
                        state: table_state_from_sql(row.try_get(5)?, row.try_get(6)?),
                    })
                })
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()?)
        })
    }

    fn save_lookup_table(
        &self,
        query: &'static str,
        table: &LookupTableRow,
        recent: i64,
        state: i64,
        slot: Option<i64>,
    ) -> Result<(), OracleError> {
        self.with_retry("saving a lookup table", |client| async move {
            client
                .execute(
                    query,
                    &[
                        &table.address,
                        &table.authority,
                        &table.operator,
                        &table.mint,
                        &recent,
                        &state,
                        &slot,
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn adopt_legacy(
        &self,
        job: &str,
        nonce: i64,
        totals: [i64; 3],
        invoices: &[(i64, Vec<u8>)],
    ) -> Result<(), OracleError> {
        let pid = self.leader_pid()?;
        self.with_retry("adopting migrated submissions", |mut client| async move {
            let tx = client.transaction().await?;
            fence(&tx, pid).await?;
            tx.execute(
                "UPDATE submissions SET metered_tokens = $2, metered_requests = $3, metered_gpu_ms = $4
                 WHERE job = $1 AND job_nonce = -1
                   AND seq = (SELECT MAX(seq) FROM submissions WHERE job = $1 AND job_nonce = -1)",
                &[&job, &totals[0], &totals[1], &totals[2]],
            )
            .await?;
            tx.execute(
                "UPDATE submissions SET job_nonce = $2 WHERE job = $1 AND job_nonce = -1",
                &[&job, &nonce],
            )
            .await?;
            tx.execute(
                "UPDATE records SET job_nonce = $2 WHERE job = $1 AND job_nonce IS NULL AND submission_seq > 0",
                &[&job, &nonce],
            )
            .await?;
            for (seq, bytes) in invoices {
                tx.execute(
                    "INSERT INTO invoices (job, job_nonce, seq, bytes) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (job, job_nonce, seq) DO NOTHING",
                    &[&job, &nonce, seq, bytes],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn write_round(&self, round: &PreparedRound) -> Result<(), OracleError> {
        let pid = self.leader_pid()?;
        // Not retried past a lost commit: a rerun would find its own submissions and
        // fail; the next round resumes them as pending instead.
        self.block_on(async {
            let run = async {
                let mut client = self.pool.get().await?;
                let tx = client.transaction().await?;
                fence(&tx, pid).await?;
                pg_insert_submissions(&tx, &round.submissions).await?;
                pg_write_off_records(&tx, &round.record_write_offs).await?;
                pg_write_off_submissions(&tx, &round.submission_write_offs).await?;
                tx.commit().await?;
                Ok(())
            };
            run.await.map_err(|e| match e {
                PgFail::Fatal(e) => e,
                PgFail::Transient(reason) => OracleError::RoundNotWritten {
                    location: self.location.clone(),
                    reason,
                },
            })
        })
    }

    fn confirm_all(&self, rows: &[(String, i64, i64)]) -> Result<u64, OracleError> {
        let pid = self.leader_pid()?;
        self.with_retry("confirming submissions", |mut client| async move {
            let tx = client.transaction().await?;
            fence(&tx, pid).await?;
            let confirm = tx.prepare_cached(sql::CONFIRM).await?;
            let updates = rows.iter().map(|(job, nonce, seq)| {
                let (tx, confirm) = (&tx, &confirm);
                async move { tx.execute(confirm, &[job, nonce, seq]).await }
            });
            let n: u64 = futures_util::future::try_join_all(updates)
                .await?
                .into_iter()
                .sum();
            tx.commit().await?;
            Ok(n)
        })
    }

    fn release(&self, job: &str, nonce: i64, seq: i64) -> Result<bool, OracleError> {
        let pid = self.leader_pid()?;
        let job = job.to_string();
        self.with_retry("releasing a submission", |mut client| {
            let job = job.clone();
            async move {
                let tx = client.transaction().await?;
                fence(&tx, pid).await?;
                let released = tx
                    .execute(sql::RELEASE_SUBMISSION, &[&job, &nonce, &seq])
                    .await?;
                if released > 0 {
                    tx.execute(sql::RELEASE_RECORDS, &[&job, &nonce, &seq])
                        .await?;
                    tx.execute(sql::RELEASE_INVOICE, &[&job, &nonce, &seq])
                        .await?;
                }
                tx.commit().await?;
                Ok(released > 0)
            }
        })
    }

    fn claim_meter(&self, job: &str, source: &str, now: i64) -> Result<String, OracleError> {
        self.with_retry("claiming a job's meter", |client| async move {
            client
                .execute(sql::CLAIM_METER, &[&job, &source, &now])
                .await?;
            let row = client.query_one(sql::METER_OF, &[&job]).await?;
            Ok(row.try_get::<_, String>(0)?)
        })
    }

    fn execute(
        &self,
        what: &'static str,
        query: &'static str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), OracleError> {
        self.with_retry(what, |client| async move {
            client.execute(query, args).await?;
            Ok(())
        })
    }

    fn outbox(
        &self,
        source: &str,
        peer: &str,
        limit: i64,
    ) -> Result<Vec<(i64, UsageRecord)>, OracleError> {
        self.with_retry("reading the outbox", |client| async move {
            let rows = client.query(sql::OUTBOX, &[&source, &peer, &limit]).await?;
            Ok(rows
                .iter()
                .map(pg_record)
                .map(|r| r.map(|w| (w.id, w.record)))
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn revoke_key(&self, key_id: &str, job: &str, now: i64) -> Result<u64, OracleError> {
        self.with_retry("revoking a job key", |client| async move {
            Ok(client
                .execute(sql::REVOKE_KEY, &[&key_id, &job, &now])
                .await?)
        })
    }

    fn usage_row(
        &self,
        query: &'static str,
        key: &str,
        until: i64,
    ) -> Result<UsageRow, OracleError> {
        self.with_retry("reading usage", |client| async move {
            let row = client.query_one(query, &[&key, &until]).await?;
            Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
        })
    }

    fn unsettled_usage(
        &self,
        job: &str,
        nonce: Option<i64>,
        until: i64,
    ) -> Result<(Totals, Totals), OracleError> {
        self.with_retry("reading unsettled usage", |client| async move {
            let row = client
                .query_one(sql::WAITING_USAGE, &[&job, &until, &nonce])
                .await?;
            let waiting = totals_of((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
            let rows = client
                .query(sql::PENDING_USAGE, &[&job])
                .await?
                .iter()
                .map(|row| {
                    Ok((
                        row.try_get(0)?,
                        row.try_get(1)?,
                        [row.try_get(2)?, row.try_get(3)?, row.try_get(4)?],
                    ))
                })
                .collect::<Result<Vec<PendingRow>, tokio_postgres::Error>>()?;
            let mut pending = Totals::default();
            for (n, first, latest) in pending_groups(&rows, nonce) {
                let settled = client
                    .query_opt(sql::SETTLED_BEFORE, &[&job, &n, &first])
                    .await?
                    .map(|row| {
                        Ok::<_, tokio_postgres::Error>(running([
                            row.try_get(0)?,
                            row.try_get(1)?,
                            row.try_get(2)?,
                        ]))
                    })
                    .transpose()?
                    .unwrap_or_default();
                pending.merge(&minus(latest, settled));
            }
            Ok((waiting, pending))
        })
    }

    fn query_plans(&self, queries: &[(&'static str, &str)]) -> Result<Vec<QueryPlan>, OracleError> {
        self.with_retry("explaining queries", |mut client| async move {
            let tx = client.transaction().await?;
            tx.batch_execute("SET LOCAL enable_seqscan = off").await?;
            let mut plans = Vec::new();
            for (name, query) in queries {
                let statement = tx.prepare(&format!("EXPLAIN {query}")).await?;
                let texts: Vec<String> = vec!["1".into(); statement.params().len()];
                let ints: Vec<i64> = vec![1; statement.params().len()];
                let params: Vec<&(dyn ToSql + Sync)> = statement
                    .params()
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| -> &(dyn ToSql + Sync) {
                        if *ty == tokio_postgres::types::Type::TEXT {
                            &texts[i]
                        } else {
                            &ints[i]
                        }
                    })
                    .collect();
                let rows = tx.query(&statement, &params).await?;
                let plan = rows
                    .iter()
                    .map(|row| row.try_get::<_, String>(0))
                    .collect::<Result<Vec<_>, _>>()?
                    .join("\n");
                plans.push(QueryPlan {
                    name,
                    sql: (*query).to_string(),
                    plan,
                });
            }
            tx.rollback().await?;
            Ok(plans)
        })
    }
}

/// [`Store::write_round`]'s submissions on PostgreSQL: each inserted with its invoice
/// and its records attached (fewer attached than listed: another batcher was first).
async fn pg_insert_submissions(
    tx: &deadpool_postgres::Transaction<'_>,
    submissions: &[PreparedSubmission],
) -> PgResult<()> {
    let insert = tx.prepare_cached(INSERT_SUBMISSION).await?;
    let invoice = tx.prepare_cached(INSERT_INVOICE).await?;
    for s in submissions {
        let [cumulative, tokens, requests, gpu_ms, records, period_end, output, metered_output] =
            s.values;
        tx.execute(
            &insert,
            &[
                &s.job,
                &s.nonce,
                &s.seq,
                &cumulative,
                &s.hash,
                &period_end,
                &tokens,
                &requests,
                &gpu_ms,
                &records,
                &s.oldest,
                &output,
                &metered_output,
            ],
        )
        .await
        .map_err(|e| {
            PgFail::Fatal(conflict_because(
                format!("submission {} of job {}", s.seq, s.job),
                pg_detail(&e),
                e,
            ))
        })?;
        tx.execute(&invoice, &[&s.job, &s.nonce, &s.seq, &s.invoice])
            .await?;
        let attached = tx
            .execute(
                "UPDATE records SET job_nonce = $1, submission_seq = $2
                             WHERE id = ANY($3) AND submission_seq IS NULL",
                &[&s.nonce, &s.seq, &s.record_ids],
            )
            .await?;
        if attached != s.record_ids.len() as u64 {
            return Err(PgFail::Fatal(conflict(format!(
                "records of submission {} of job {}",
                s.seq, s.job
            ))));
        }
    }
    Ok(())
}

/// [`Store::write_round`]'s record write-offs on PostgreSQL, each group logged.
async fn pg_write_off_records(
    tx: &deadpool_postgres::Transaction<'_>,
    write_offs: &[PreparedRecordWriteOff],
) -> PgResult<()> {
    for (job, nonce, ids, reason, units) in write_offs {
        let n = tx
            .execute(
                "UPDATE records SET submission_seq = 0, job_nonce = COALESCE(job_nonce, $1)
                             WHERE id = ANY($2) AND submission_seq IS NULL",
                &[nonce, ids],
            )
            .await?;
        if n != ids.len() as u64 {
            return Err(PgFail::Fatal(conflict(format!("records of job {job}"))));
        }
        let count = i64::try_from(ids.len()).unwrap_or(i64::MAX);
        tx.execute(
            LOG_WRITE_OFF,
            &[job, nonce, &Option::<i64>::None, reason, &count, units],
        )
        .await?;
    }
    Ok(())
}

/// [`Store::write_round`]'s submission write-offs on PostgreSQL, each logged with
/// its record count.
async fn pg_write_off_submissions(
    tx: &deadpool_postgres::Transaction<'_>,
    write_offs: &[PreparedSubmissionWriteOff],
) -> PgResult<()> {
    for (job, nonce, seq, reason) in write_offs {
        let n = tx
            .execute(WRITE_OFF_SUBMISSION, &[job, nonce, seq, reason])
            .await?;
        if n != 1 {
            return Err(PgFail::Fatal(conflict(format!(
                "submission {seq} of job {job}"
            ))));
        }
        tx.execute(
            "INSERT INTO write_offs (job, job_nonce, seq, reason, records, units)
                         SELECT job, job_nonce, seq, $4, records, 0 FROM submissions
                         WHERE job = $1 AND job_nonce = $2 AND seq = $3",
            &[job, nonce, seq, reason],
        )
        .await?;
    }
    Ok(())
}

/// Fails the transaction unless the settlement lock is still held by this
/// replica's lock session `pid`: a leader whose lock session died must not write.
async fn fence(tx: &tokio_postgres::Transaction<'_>, pid: i32) -> PgResult<()> {
    let held: i64 = tx
        .query_one(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1 AND pid = $3",
            &[
                &(SETTLEMENT_LOCK >> 32),
                &(SETTLEMENT_LOCK & 0xffff_ffff),
                &pid,
            ],
        )
        .await?
        .try_get(0)?;
    if held == 0 {
        return Err(PgFail::Fatal(OracleError::LeadLost));
    }
    Ok(())
}

async fn pg_migrate(client: &mut deadpool_postgres::Object) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // Replicas starting together race on creation and migration: serialize.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    let has = |table: &'static str| {
        let tx = &tx;
        async move {
            tx.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await
                .and_then(|row| row.try_get::<_, bool>(0))
        }
    };
    let version: i64 = if has("tally_schema").await? {
        tx.query_one("SELECT COALESCE(MAX(version), 0) FROM tally_schema", &[])
            .await?
            .try_get(0)?
    } else {
        // Version 1 had no version table.
        i64::from(has("records").await?)
    };
    if version == SCHEMA_VERSION {
        return tx.commit().await;
    }
    if version > SCHEMA_VERSION {
        // Surfaced as a database error by the caller's message.
        tx.batch_execute(&format!(
            "DO $$ BEGIN RAISE EXCEPTION 'the store has schema version {version}, newer than this oracle''s {SCHEMA_VERSION}: run a newer tally-oracle'; END $$"
        ))
        .await?;
    }
    if version == 1 {
        tx.batch_execute(&MIGRATE_V1_V2.replace("{int}", "BIGINT"))
            .await?;
    }
    if version >= 1 {
        for column in GATEWAY_COLUMNS {
            tx.batch_execute(&format!(
                "ALTER TABLE records ADD COLUMN IF NOT EXISTS {column} TEXT NOT NULL DEFAULT ''"
            ))
            .await?;
        }
    }
    if version >= 2 {
        for column in OUTPUT_COLUMNS {
            tx.batch_execute(&format!(
                "ALTER TABLE submissions ADD COLUMN IF NOT EXISTS {column} BIGINT NOT NULL DEFAULT 0"
            ))
            .await?;
        }
    }
    tx.batch_execute(&schema_v3(true)).await?;
    if version == 1 {
        tx.batch_execute(COPY_V1_SUBMISSIONS).await?;
    }
    tx.execute("DELETE FROM tally_schema", &[]).await?;
    tx.execute(
        "INSERT INTO tally_schema (version) VALUES ($1)",
        &[&SCHEMA_VERSION],
    )
    .await?;
    tx.commit().await
}

fn pg_record(row: &tokio_postgres::Row) -> Result<WaitingRecord, tokio_postgres::Error> {
    let u = |i: usize| row.try_get::<_, i64>(i).map(to_u64);
    Ok(WaitingRecord {
        id: row.try_get(0)?,
        record: UsageRecord {
            job: row.try_get(1)?,
            job_nonce: row.try_get::<_, Option<i64>>(2)?.map(to_u64),
            request_id: row.try_get(3)?,
            model: row.try_get(4)?,
            prompt_tokens: u(5)?,
            completion_tokens: u(6)?,
            gpu_ms: u(7)?,
            finished_at: row.try_get(8)?,
            source: row.try_get(9)?,
            upstream_id: row.try_get(10)?,
            counted_by: row.try_get(11)?,
            key_id: row.try_get(12)?,
        },
    })
}

fn pg_submission(row: &tokio_postgres::Row) -> Result<Submission, tokio_postgres::Error> {
    let u = |i: usize| row.try_get::<_, i64>(i).map(to_u64);
    let hash: Vec<u8> = row.try_get(4)?;
    Ok(Submission {
        job: row.try_get(0)?,
        job_nonce: nonce_from_sql(row.try_get(1)?),
        seq: u(2)?,
        cumulative_units: u(3)?,
        invoice_hash: hash_of(&hash),
        period_end: row.try_get(5)?,
        cumulative_output: u(13)?,
        metered: Totals {
            tokens: u(6)?,
            requests: u(7)?,
            gpu_ms: u(8)?,
            output_tokens: u(14)?,
        },
        records: u(9)?,
        oldest_finished_at: row.try_get(10)?,
        state: state_from_sql(row.try_get(11)?, row.try_get(12)?),
    })
}

impl Drop for Pg {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids: let it go in the
        // background (its connections close with it).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
