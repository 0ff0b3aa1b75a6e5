//! tally-oracle: watches GPU work complete, keeps invoices, and posts attested,
//! cumulative metering on-chain exactly once.
//!
//! - Sources behind one trait ([`source::Source`]): the OpenAI-compatible
//!   [`gateway`] (job keys, pre-authorization against each job's [`job_view`], a meter
//!   callers cannot turn off), signed [`node_report`]s, and the [`scrape`] of the
//!   inference server's metrics as a cross-check. One source meters each job
//!   ([`meter`]).
//! - The durable core: the [`store`] (every record committed before it is
//!   acknowledged, through the [`sink`]), [`invoice`]s (one file per receipt, its
//!   sha256 on-chain), and the [`batcher`] (cumulative receipts written ahead of
//!   sending, resumed after a restart).
//! - One clock, the chain's ([`clock`]): records are stamped, and deadlines judged,
//!   in the chain's time.
//! - The [`daemon`] (`tally-oracle`): [`config`], [`telemetry`] (/metrics, /health),
//!   graceful stop.
//! - `sim_worker`, with the `sim-worker` feature only: a simulated GPU worker (an
//!   OpenAI-compatible server) for `tally demo`, tests and `tally-oracle-bench`; the
//!   daemon is built without it.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod audit;
pub mod batcher;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod gateway;
pub mod http;
pub mod invoice;
pub mod job_view;
pub mod meter;
pub mod node_report;
pub mod quorum;
pub mod scrape;
#[cfg(feature = "sim-worker")]
pub mod sim_worker;
pub mod sink;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod units;

/// An error of one of several types, kept as the source of an [`OracleError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in the oracle: what failed, on what, and the error
/// underneath where there is one.
#[derive(Debug, thiserror::Error)]
pub enum OracleError {
    // The store.
    /// A SQLite statement of `op` failed.
    #[error("store: {op}: {source}")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// A PostgreSQL statement failed for good (lost connections are retried first).
    #[error("store: postgres: {detail}")]
    Postgres {
        /// The server's message and code, or the client's chain of causes.
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The store at `location` could not be opened or reached (`action`: what was
    /// tried, e.g. `connect to`).
    #[error("store: cannot {action} {location}: {source}")]
    Open {
        action: &'static str,
        /// The file path, or the URL with its password hidden.
        location: String,
        #[source]
        source: BoxError,
    },
    /// `location` is neither a SQLite path nor a PostgreSQL URL that parses.
    #[error("store: {location} is not a PostgreSQL URL: {source}")]
    NotPostgresUrl {
        location: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The store could not be created or brought to this oracle's schema.
    #[error("store: cannot create or upgrade the store {location} to schema version {supported}: {detail}")]
    Migrate {
        location: String,
        supported: i64,
        detail: String,
        #[source]
        source: BoxError,
    },
    /// The store was written by a newer oracle.
    #[error("store: the store {location} has schema version {found}, newer than this oracle's {supported}: run a newer tally-oracle")]
    Schema {
        location: String,
        found: i64,
        supported: i64,
    },
    /// PostgreSQL stayed unreachable through every retry of `op`.
    #[error("store: {op}: PostgreSQL at {location} is unavailable ({reason}); retried for {retried_secs} s — check the server")]
    Unavailable {
        op: &'static str,
        location: String,
        reason: String,
        retried_secs: u64,
    },
    /// A settlement round could not be written: nothing of it was, nothing is sent.
    #[error("store: writing a settlement round to {location}: {reason} (nothing is sent; the round is redone)")]
    RoundNotWritten { location: String, reason: String },
    /// Another batcher wrote `what` first: nothing of this round was written.
    #[error("store: {what}{}: another batcher changed it first; nothing of this round was written (it is redone next round)", suffix(.detail.as_deref()))]
    Conflict {
        /// The row, e.g. `submission 3 of job …`.
        what: String,
        /// The store's refusal, where it refused (its text, and the error).
        detail: Option<String>,
        #[source]
        source: Option<BoxError>,
    },
    /// The settlement lock session to `location` failed at `step`.
    #[error("store: cannot {step} {location}: {detail}")]
    LockSession {
        step: &'static str,
        location: String,
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Settlements are written only by the replica that holds the settlement lock.
    #[error(
        "store: this replica does not hold the settlement lock: it must not write settlements"
    )]
    NotLeader,
    /// The settlement lock was lost while a round was being written.
    #[error("store: this replica lost the settlement lock: it writes no settlement until it leads again")]
    LeadLost,
    /// The PostgreSQL store is being closed.
    #[error("store: the PostgreSQL store is closing")]
    Closing,
    /// A number does not fit the store's integer columns (the record or receipt
    /// holding it is refused).
    #[error("{value} is out of range")]
    OutOfRange { value: u64 },
    /// A new submission came without its job's nonce.
    #[error("store: a new submission of job {job} needs its job nonce")]
    NoJobNonce { job: String },
    /// The store answered no row where it always answers one.
    #[error("store: {op}: the store answered nothing")]
    NoAnswer { op: &'static str },
    /// The ingest writer is gone (`state`: when it was found gone).
    #[error("store: the ingest writer {state}")]
    IngestStopped { state: &'static str },
    /// The ingest writer could not commit a record.
    #[error("{source}")]
    Ingest {
        #[source]
        source: std::sync::Arc<OracleError>,
    },

    // The process.
    /// A thread panicked holding `what`.
    #[error("{what} is poisoned (a thread panicked holding it)")]
    Poisoned { what: &'static str },
    /// A task (a blocking thread, a source) panicked or was cancelled.
    #[error("{task} failed: {source}")]
    Task {
        task: String,
        #[source]
        source: tokio::task::JoinError,
    },
    /// Something the oracle needs could not be started (`what`: e.g. `start the
    /// runtime`).
    #[error("cannot {what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: BoxError,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {address} for the {what}: {source}")]
    Listen {
        address: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A bound listener's address could not be read.
    #[error("cannot read the address the {what} listens on: {source}")]
    LocalAddress {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A source's server stopped with an error.
    #[error("the {source_name} server failed: {source}")]
    Serve {
        source_name: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] config::ConfigError),

    // The chain and settlement.
    #[error("chain: {0}")]
    Chain(#[from] tally_client::chain::ChainError),
    /// This daemon's key is not one of the deployment's oracles.
    #[error("{oracle} is not in the deployment's oracle set on {url}: the admin adds it with `tally admin oracle add {oracle}`")]
    NotAnOracle {
        oracle: anchor_lang::prelude::Pubkey,
        url: String,
    },
    /// A transaction (`what`: e.g. `a settle transaction`) does not compile.
    #[error("cannot compile {what}: {source}")]
    Compile {
        what: &'static str,
        #[source]
        source: tally_client::alt::CompileError,
    },
    /// An account of the program does not decode as the `what` it should be.
    #[error("{what} {address} does not decode: {reason}")]
    Decode {
        what: &'static str,
        address: anchor_lang::prelude::Pubkey,
        reason: String,
    },
    /// A job's operator account is missing.
    #[error("operator {operator} of job {job} does not exist")]
    NoOperator {
        operator: anchor_lang::prelude::Pubkey,
        job: anchor_lang::prelude::Pubkey,
    },
    /// The lookup-table housekeeping failed for a table (the first failure's
    /// report).
    #[error("{report}")]
    TableUpkeep { report: String },
    /// The managed lookup tables were used before they were loaded (a bug).
    #[error("lookup tables not loaded")]
    TablesNotLoaded,

    // Invoices.
    /// An invoice file could not be written or read.
    #[error("invoice {path}: {source}")]
    InvoiceFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Bytes that should be an invoice are not one.
    #[error("invoice {what}: not a Tally invoice: {source}")]
    NotAnInvoice {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// An invoice does not serialize (a bug).
    #[error("invoice does not serialize: {0}")]
    InvoiceEncode(#[source] serde_json::Error),
    /// An invoice does not check out against the chain.
    #[error(transparent)]
    Unverified(#[from] invoice::Unverified),
    /// The client's audit could not get the invoices, or read its ledger.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
}

/// `: detail`, or nothing.
fn suffix(detail: Option<&str>) -> String {
    detail.map(|d| format!(": {d}")).unwrap_or_default()
}

impl OracleError {
    /// A SQLite failure of `op`, for `map_err`.
    pub(crate) fn sqlite(op: &'static str) -> impl Fn(rusqlite::Error) -> Self {
        move |source| Self::Sqlite { op, source }
    }

    /// A poisoned lock's error, for `map_err`.
    pub(crate) fn poisoned<T>(what: &'static str) -> impl Fn(T) -> Self {
        move |_| Self::Poisoned { what }
    }
}
