//! The batcher: turns committed usage records into cumulative receipts and settles
//! them, exactly once, with work per round proportional to what is new.
//!
//! Each round:
//! 1. Read: the pending submissions and the jobs with waiting records (each from an
//!    index of its own), then every one of those jobs' states in one
//!    `getMultipleAccounts` pass, and the clock and config.
//! 2. Resume: a pending submission whose job's `last_seq` reached it landed (its
//!    answer was lost): confirmed. One whose job ended (completed, cancelled or
//!    expired: it stays on chain while disputable, but the program settles nothing
//!    more), whose job incarnation is gone (closed, or reopened at the same address)
//!    or which is past its settlement window can never land: it is written off, with
//!    its reason, in the metrics and the log; so are an ended job's waiting
//!    records. Otherwise it is sent again — settling a seq twice is a no-op
//!    on-chain, so a retry never pays twice.
//! 3. New usage: for each job with waiting records (and no pending receipt), at most
//!    `max_invoice_records` of them become the next receipt: its invoice (bytes kept
//!    in the store), its submission carrying the running totals and the invoice chain
//!    head, and the records attached to it — all in one store transaction per round,
//!    written before anything is sent.
//! 4. Send: receipts grouped per operator and mint, packed into v0 transactions
//!    through the lookup tables this daemon manages (each job's address in a table:
//!    16 receipts per transaction), all sent at once and their confirmations tracked
//!    together. A transaction the program refuses is split: each receipt alone, so
//!    one job cannot hold back the others. A job whose receipt failed backs off on its
//!    own (0.5 s doubling up to `max_backoff`); the others go on.
//! 5. Tables: made per operator and mint as jobs appear, extended as they open (used
//!    once the chain is past the slot they were extended in), deactivated when every
//!    job in them has closed, and closed to reclaim their rent after the cool-down.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchor_lang::prelude::Pubkey;
use anchor_lang::AccountDeserialize;
use serde::{Deserialize, Serialize};
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::state::{utc_day, Job, JobStatus, Operator, UnitKind};
use tally_client::alt::{self, AddressLookupTableAccount, LookupTableState, VersionedMessage};
use tally_client::chain::{Chain, Confirmed, PACKET_DATA_SIZE};
use tally_client::ix::{self, Attestation};
use tally_client::{ops, pda, SettleReceipt};

use crate::clock::ChainClock;
use crate::config::ConfigError;
use crate::invoice::{export_path, hex, sha256, Invoice, InvoiceLine, INVOICE_VERSION};
use crate::store::{
    LookupTableRow, NewSubmission, RecordWriteOff, RoundWrite, Store, Submission, SubmissionState,
    TableState, WaitingRecord, LEGACY_NONCE,
};
use crate::units::Totals;
use crate::OracleError;

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Pending submissions found already landed.
    pub recovered: usize,
    /// Receipts sent (new or resent).
    pub sent: usize,
    /// Receipts confirmed this round.
    pub confirmed: usize,
    /// Receipts left pending after an error (their jobs back off; retried).
    pub failed: usize,
    /// Per-receipt and per-table errors, for logs (one job's trouble, not the
    /// daemon's: the round itself succeeded).
    pub errors: Vec<String>,
    /// Usage the oracle holds but cannot bill, per job and reason. Never silent: it
    /// is counted in the metrics and shown by `/health`.
    pub unbillable: Vec<Unbillable>,
    /// Receipts and records that can never be billed, with why.
    pub written_off: Vec<WrittenOff>,
    /// Jobs skipped this round because they are backing off after a failure.
    pub backing_off: usize,
    /// Transactions sent (settlements, ledgers, lookup tables).
    pub transactions: usize,
    /// Lookup tables created, extended (transactions), deactivated, closed.
    pub tables: TableWork,
    /// Some job had more waiting records than one invoice takes, or records behind
    /// a receipt still pending: run again soon.
    pub more_waiting: bool,
    /// Receipts carried by each settle transaction sent (in the order sent).
    pub receipts_per_transaction: Vec<usize>,
    /// In a quorum, the peers that refused or left unanswered this oracle's proposals
    /// this round: (peer, reason label).
    pub peer_refusals: Vec<(Pubkey, String)>,
    /// In a quorum, the oracle that leads this term when it is another one: this
    /// oracle settled nothing (its peers do, with its co-signature).
    pub not_leading: Option<Pubkey>,
}

/// Lookup-table transactions of a round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableWork {
    pub created: usize,
    pub extended: usize,
    pub deactivated: usize,
    pub closed: usize,
}

/// Why held usage cannot be billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnbillableReason {
    /// The records finished after the job's deadline (in the chain's time).
    AfterDeadline,
    /// The receipt's units cost more than the job's escrow has left.
    OverEscrow,
    /// The upstream reported serving another model than the one the job pays for.
    WrongModel,
}

impl UnbillableReason {
    /// The `reason` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::AfterDeadline => "after_deadline",
            Self::OverEscrow => "over_escrow",
            Self::WrongModel => "wrong_model",
        }
    }
}

/// Usage of one job that a round could not bill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unbillable {
    pub job: String,
    pub reason: UnbillableReason,
    /// Records concerned (for `OverEscrow`, those of the receipt that ran over).
    pub records: u64,
    /// Units not billed.
    pub units: u64,
    /// What happened and what to do, for logs and `/health`.
    pub detail: String,
}

impl Unbillable {
    /// Records of `job` listed in its invoice but not billed, `why`.
    fn listed(
        job: &str,
        reason: UnbillableReason,
        records: &Totals,
        kind: UnitKind,
        why: &str,
    ) -> Self {
        Self {
            job: job.to_string(),
            reason,
            records: records.requests,
            units: records.units(kind),
            detail: format!(
                "job {job}: {} record(s), {} unit(s), {why}",
                records.requests,
                records.units(kind)
            ),
        }
    }
}

/// Why a receipt or records can never be billed: a terminal state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOffReason {
    /// The job incarnation is gone from the chain (ended and closed) or the address
    /// was reopened as another job.
    JobClosed,
    /// The job ended (completed, cancelled or expired): it stays on chain while its
    /// client may dispute it, but the program settles no receipt for it any more
    /// (`JobFinished`).
    JobEnded,
    /// Past the job's deadline plus the settlement grace: the program refuses it.
    Expired,
    /// Another receipt with the same seq settled first (another oracle, a relayer).
    Superseded,
    /// Usage that finished before the job open at the address was opened: it belongs
    /// to an earlier job there, which is gone.
    BeforeJobOpened,
    /// No job account exists at the address (or it is not an address).
    NoSuchJob,
}

impl WriteOffReason {
    /// The `reason` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::JobClosed => "job_closed",
            Self::JobEnded => "job_ended",
            Self::Expired => "expired",
            Self::Superseded => "superseded",
            Self::BeforeJobOpened => "before_job_opened",
            Self::NoSuchJob => "no_such_job",
        }
    }
}

/// A receipt or records written off this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenOff {
    pub job: String,
    pub job_nonce: Option<u64>,
    /// The receipt written off, or `None` for records never submitted.
    pub seq: Option<u64>,
    pub reason: WriteOffReason,
    pub records: u64,
    /// Units they would have billed (0 when unknown).
    pub units: u64,
    /// What happened, for logs and `/health`.
    pub detail: String,
}

/// Records without a nonce are bound to the job open at their address if they
/// finished no earlier than this many seconds before it opened (the sources' clock
/// is the chain's, carried forward between syncs).
pub const BIND_TOLERANCE_SECS: i64 = 5;
/// Records (and pending receipts) whose job does not exist are written off once they
/// are this old (chain time): an RPC node behind the one the source (or an earlier
/// round) asked may not see a new job yet. A job existed when its records finished
/// (the sources read it first; records without a nonce are bound only to a job
/// opened at most [`BIND_TOLERANCE_SECS`] before), so a node that shows no job there
/// this long after is not behind: the job is closed.
pub const MISSING_JOB_GRACE_SECS: i64 = 120;
/// Job addresses per managed lookup table (the table also holds the group's config,
/// vault, earnings and revenue ledgers).
pub const TABLE_JOBS: usize = alt::TABLE_CAPACITY - 4;
/// How often tables are checked for being done (every job in them closed).
pub const TABLE_HOUSEKEEPING: Duration = Duration::from_secs(60);

/// The `[batch]` section: when and how receipts are sent. Every key has a default
/// ([`BatchSettings::default`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// A round runs at least this often, seconds (at least 0.01)…
    pub interval_secs: f64,
    /// …and as soon as this many new records are waiting.
    pub max_records: u64,
    /// The most receipts one settle transaction carries; below it the 1,232-byte
    /// packet limit decides (16 per v0 transaction through a lookup table).
    pub max_receipts_per_tx: usize,
    /// The most records one invoice lists; a job with more waiting gets the next
    /// receipt in the next round (which then follows at once).
    pub max_invoice_records: usize,
    /// Settle through address lookup tables the daemon creates (per operator and
    /// mint, extended as jobs open, closed when their jobs are done; the oracle pays
    /// their rent and gets it back). Off: v0 transactions with every account inline.
    pub lookup_tables: bool,
    /// A job whose receipt failed retries after 0.5 s, doubling up to this many
    /// seconds (at least 0.5); a round that could not run at all (store or chain
    /// down) backs off the same way.
    pub max_backoff_secs: f64,
    /// Priority fee, micro-lamports per compute unit (0: none).
    pub priority_fee_micro_lamports: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            interval_secs: 10.0,
            max_records: 1_000,
            max_receipts_per_tx: 32,
            max_invoice_records: 20_000,
            lookup_tables: true,
            max_backoff_secs: 60.0,
            priority_fee_micro_lamports: 0,
        }
    }
}

impl BatchSettings {
    /// The longest time between rounds.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_secs.max(0.01))
    }

    /// The longest backoff of a failing job (or of rounds that cannot run).
    pub fn max_backoff(&self) -> Duration {
        Duration::from_secs_f64(self.max_backoff_secs.max(0.5))
    }

    /// Checks what serde cannot: the counts are at least 1.
    pub fn validate(&self) -> Result<(), OracleError> {
        if self.max_receipts_per_tx == 0 {
            return Err(ConfigError::Setting {
                key: "batch.max_receipts_per_tx",
                reason: "must be at least 1".into(),
            }
            .into());
        }
        if self.max_invoice_records == 0 {
            return Err(ConfigError::Setting {
                key: "batch.max_invoice_records",
                reason: "must be at least 1".into(),
            }
            .into());
        }
        Ok(())
    }
}

/// The settlement side of the oracle.
pub struct Batcher {
    pub store: Store,
    /// Signs settlements (and pays their fees); the authority of its lookup tables.
    oracle: Keypair,
    /// The clock the sources stamp records with: synced to the chain's each round.
    clock: Arc<ChainClock>,
    settings: BatchSettings,
    /// Where invoices are exported (`<job>/<nonce>/<seq>.json`); `None`: the store
    /// keeps them only.
    invoices_dir: Option<PathBuf>,
    /// The other oracles of an m-of-n set: settlements are co-signed, and this oracle
    /// settles only in its leadership terms. `None`: it attests alone.
    quorum: Option<crate::quorum::Quorum>,
    state: Mutex<State>,
}

/// What the batcher keeps between rounds.
#[derive(Default)]
struct State {
    backoff: HashMap<(String, u64), Backoff>,
    /// Operator PDA → its authority (fixed: the PDA is derived from it).
    operators: HashMap<Pubkey, Pubkey>,
    /// Ledgers known to exist: (operator authority, mint, day).
    ledgers: HashSet<(Pubkey, Pubkey, u32)>,
    /// Managed lookup tables, loaded from the store on the first round.
    tables: Option<Vec<ManagedTable>>,
    last_housekeeping: Option<Instant>,
}

impl State {
    /// Whether the job (incarnation) backs off after a failure now.
    fn backing_off(&self, job: &str, nonce: u64) -> bool {
        self.backoff
            .get(&(job.to_string(), nonce))
            .is_some_and(|b| b.until > Instant::now())
    }
}

struct Backoff {
    until: Instant,
    delay: Duration,
}

struct ManagedTable {
    key: Pubkey,
    row: LookupTableRow,
    /// As last read from the chain.
    state: Option<LookupTableState>,
}

/// A receipt to send.
struct Outgoing {
    submission: Submission,
    job: Pubkey,
    operator_authority: Pubkey,
    mint: Pubkey,
}

fn parse_key(s: &str) -> Option<Pubkey> {
    s.parse().ok()
}

fn unit_kind_name(kind: UnitKind) -> &'static str {
    match kind {
        UnitKind::Tokens => "tokens",
        UnitKind::GpuSeconds => "gpu-seconds",
        UnitKind::Requests => "requests",
        UnitKind::Frames => "frames",
    }
}

/// An ended job's status, for messages.
fn status_name(job: &Job) -> &'static str {
    match job.status() {
        JobStatus::Completed => "completed",
        JobStatus::Cancelled => "cancelled",
        JobStatus::Expired => "expired",
        JobStatus::Open | JobStatus::Active => "open",
    }
}

/// Whether `job` pays for usage of `model` (a job bound to no model pays for any).
pub fn pays_for_model(job: &Job, model: &str) -> bool {
    job.model == [0; 32] || tally_client::model_hash(model) == job.model
}

/// Whether `record` is billed on `job`: usage of a model the job pays for, finished by
/// its deadline (the rest is listed on the invoice, not counted).
pub(crate) fn billable(job: &Job, record: &crate::store::UsageRecord) -> bool {
    pays_for_model(job, &record.model) && record.finished_at <= job.deadline
}

pub(crate) fn kind_of(job: &Job) -> UnitKind {
    UnitKind::from_u8(job.unit_kind).unwrap_or(UnitKind::Requests)
}

fn units_of(records: &[&WaitingRecord], kind: UnitKind) -> u64 {
    let mut totals = Totals::default();
    for r in records {
        totals.add(&r.record);
    }
    totals.units(kind)
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, OracleError> {
    m.lock()
        .map_err(OracleError::poisoned("the batcher's state"))
}

/// Decodes a job account if it is one of the program's.
fn job_of(account: Option<&solana_account::Account>) -> Option<Job> {
    account
        .filter(|a| a.owner == tally::ID)
        .and_then(|a| ops::decode_job(&a.data))
}

impl Batcher {
    /// A batcher settling `store`'s records, signing with `oracle`, keeping `clock`
    /// (the sources' clock) on the chain's time.
    pub fn new(store: Store, oracle: Keypair, clock: Arc<ChainClock>) -> Self {
        Self {
            store,
            oracle,
            clock,
            settings: BatchSettings::default(),
            invoices_dir: None,
            quorum: None,
            state: Mutex::new(State::default()),
        }
    }

    /// With these settings.
    #[must_use]
    pub fn with_settings(mut self, settings: BatchSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Exporting invoices under `dir`.
    #[must_use]
    pub fn with_invoices_dir(mut self, dir: PathBuf) -> Self {
        self.invoices_dir = Some(dir);
        self
    }

    /// As one oracle of an m-of-n quorum with these peers.
    #[must_use]
    pub fn with_quorum(mut self, quorum: crate::quorum::Quorum) -> Self {
        self.quorum = Some(quorum);
        self
    }

    /// At most `n` receipts per transaction.
    #[must_use]
    pub fn with_max_receipts_per_tx(mut self, n: usize) -> Self {
        self.settings.max_receipts_per_tx = n.max(1);
        self
    }

    /// Forgets what it cached from the chain and the store (lookup tables, ledgers,
    /// backoffs): call it when this replica becomes the leader, since another one may
    /// have made tables meanwhile.
    pub fn reset(&self) {
        if let Ok(mut state) = self.state.lock() {
            *state = State::default();
        }
    }

    pub fn settings(&self) -> &BatchSettings {
        &self.settings
    }

    /// The oracle key this batcher signs with.
    pub fn oracle(&self) -> Pubkey {
        self.oracle.pubkey()
    }

    /// How many jobs are backing off now.
    pub fn jobs_backing_off(&self) -> usize {
        let now = Instant::now();
        self.state
            .lock()
            .map_or(0, |s| s.backoff.values().filter(|b| b.until > now).count())
    }

    /// The lookup tables this batcher manages that are active (as last read).
    pub fn active_tables(&self) -> usize {
        self.state
            .lock()
            .ok()
            .and_then(|s| {
                s.tables.as_ref().map(|t| {
                    t.iter()
                        .filter(|t| t.state.as_ref().is_some_and(LookupTableState::is_active))
                        .count()
                })
            })
            .unwrap_or(0)
    }

    /// One round: resume what is pending, settle new usage, tend the lookup tables.
    pub fn run_round(&self, chain: &mut impl Chain) -> Result<RoundReport, OracleError> {
        let mut report = RoundReport::default();
        let time = self.read_time(chain)?;
        if let Some(leader) = self.leader_elsewhere(&time) {
            report.not_leading = Some(leader);
            return Ok(report);
        }
        let mut state = lock(&self.state)?;
        let started = Instant::now();

        // 1. What needs work, and the jobs' states in one pass; in a quorum, receipts
        // that landed without this oracle adopted first.
        let mut work = self.read_work(chain, &mut report)?;
        if self.catch_up(&work, &mut report) > 0 {
            work = self.read_work(chain, &mut report)?;
        }
        // 2. Resume pending submissions; 3. new usage. Decided, not yet written.
        let mut round = RoundWrite::default();
        let pending = std::mem::take(&mut work.pending);
        let resumed = Self::resume_pending(
            pending,
            &work.jobs,
            &time,
            &state,
            self.quorum.is_some(),
            &mut round,
            &mut report,
        );
        // In a quorum, no new receipt in the last stretch of this oracle's term:
        // what it sends lands before the next leader bills (resends go on).
        let billed = if self.quorum.as_ref().is_none_or(|q| q.bills_at(time.now)) {
            self.bill_waiting(&work, &time, &state, &mut round, &mut report)?
        } else {
            report.more_waiting = true;
            Billed::default()
        };
        // Everything decided is written in one transaction, before anything is sent.
        self.commit_round(&mut state, &round, &resumed.landed, &report)?;

        // 4. Send (resumed receipts first, then the new ones).
        let mut outgoing = resumed.outgoing;
        outgoing.extend(billed.outgoing);
        if !outgoing.is_empty() {
            Self::resolve_operators(chain, &mut state, &mut outgoing)?;
            self.send(chain, &mut state, outgoing, &time, &mut report)?;
        }
        // The exports, after the sends: the store holds the invoices already, so
        // their syncs never delay a settlement.
        export_invoices(billed.exports, &mut report);
        // 5. Tables that are done.
        self.tend_tables_when_due(chain, &mut state, &mut report)?;
        tracing::debug!(elapsed = ?started.elapsed(), "settlement round");
        Ok(report)
    }

    /// In a quorum: adopts, for each job of the round, the receipts that landed while
    /// another oracle led (fetched from peers, checked against the chain). Returns how
    /// many; a job that cannot catch up is reported (its new receipt would be refused).
    fn catch_up(&self, work: &Work, report: &mut RoundReport) -> usize {
        let Some(quorum) = &self.quorum else {
            return 0;
        };
        let mut adopted = 0;
        for (job, state) in &work.jobs.0 {
            let (Some(key), Some(state)) = (parse_key(job), state) else {
                continue;
            };
            match crate::quorum::catch_up(&self.store, quorum.peers(), &key, state) {
                Ok(n) => adopted += n,
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        adopted
    }

    /// In a quorum, the oracle leading this term, when it is not this one.
    fn leader_elsewhere(&self, time: &RoundTime) -> Option<Pubkey> {
        let quorum = self.quorum.as_ref()?;
        let leader = quorum.leader(&time.config.oracles, time.now)?;
        (leader != self.oracle.pubkey()).then_some(leader)
    }

    /// The chain's clock and config for a round; the sources' clock is kept on it
    /// (records are stamped in the chain's time).
    fn read_time(&self, chain: &impl Chain) -> Result<RoundTime, OracleError> {
        let clock = chain.clock()?;
        self.clock.set_chain_time(clock.unix_timestamp);
        let config = ops::config(chain)?;
        Ok(RoundTime {
            slot: clock.slot,
            now: clock.unix_timestamp,
            config,
        })
    }

    /// Step 1: the pending submissions and the jobs with waiting records, and every
    /// one of those jobs' states in one pass. Jobs of the previous layout are upgraded
    /// and submissions migrated from schema 1 adopted on the way.
    fn read_work(
        &self,
        chain: &mut impl Chain,
        report: &mut RoundReport,
    ) -> Result<Work, OracleError> {
        let pending = self.store.pending_submissions()?;
        let waiting = self.store.jobs_with_new_records()?;
        let legacy = self.store.legacy_jobs()?;
        let addresses = distinct_addresses(
            pending
                .iter()
                .map(|s| s.job.as_str())
                .chain(waiting.iter().map(String::as_str))
                .chain(legacy.iter().map(String::as_str)),
        );
        let read = chain.accounts(&addresses)?;
        // Jobs the previous program version wrote: brought up to date before they
        // settle (the program refuses to settle them until then).
        let outdated: Vec<Pubkey> = addresses
            .iter()
            .zip(&read.accounts)
            .filter(|(_, a)| {
                a.as_ref()
                    .is_some_and(|a| a.owner == tally::ID && a.data.len() == Job::V1_ACCOUNT_SIZE)
            })
            .map(|(key, _)| *key)
            .collect();
        self.upgrade_accounts(chain, &outdated, report)?;
        let jobs = JobStates(
            addresses
                .iter()
                .zip(&read.accounts)
                .map(|(key, account)| (key.to_string(), job_of(account.as_ref())))
                .collect(),
        );
        // Migrated submissions join the job open at their address.
        for job in &legacy {
            self.adopt(job, jobs.get(job).as_ref(), report)?;
        }
        let pending = if legacy.is_empty() {
            pending
        } else {
            self.store.pending_submissions()?
        };
        let pending_jobs = pending
            .iter()
            .map(|s| (s.job.clone(), s.job_nonce))
            .collect();
        Ok(Work {
            pending,
            pending_jobs,
            waiting,
            jobs,
        })
    }

    /// Step 2: what becomes of each pending submission ([`resume`]): written off,
    /// found landed, or sent again. In a quorum (`quorum`), a seq the chain has passed
    /// landed here only when this oracle's own receipt at the chain's last seq carries
    /// the chain's invoice hash (each receipt is built on the one before); otherwise
    /// another leader's may have landed, and catch-up decides (it needs the peers).
    fn resume_pending(
        pending: Vec<Submission>,
        jobs: &JobStates,
        time: &RoundTime,
        state: &State,
        quorum: bool,
        round: &mut RoundWrite,
        report: &mut RoundReport,
    ) -> Resumed {
        let in_line: HashSet<(String, u64)> = pending
            .iter()
            .filter(|s| {
                quorum
                    && jobs.get(&s.job).is_some_and(|j| {
                        j.nonce == s.job_nonce
                            && j.last_seq == s.seq
                            && j.invoice_hash == s.invoice_hash
                    })
            })
            .map(|s| (s.job.clone(), s.job_nonce))
            .collect();
        let mut resumed = Resumed::default();
        for submission in pending {
            let ours_landed =
                quorum.then(|| in_line.contains(&(submission.job.clone(), submission.job_nonce)));
            let job = jobs.get(&submission.job);
            match resume(&submission, job.as_ref(), time, state, ours_landed) {
                Resume::WriteOff(reason, detail) => {
                    Self::write_off_submission(round, report, &submission, reason, detail);
                }
                Resume::Landed => {
                    resumed
                        .landed
                        .push((submission.job, submission.job_nonce, submission.seq));
                    report.recovered += 1;
                }
                Resume::Wait => {}
                Resume::BackingOff => report.backing_off += 1,
                Resume::Send {
                    job,
                    operator,
                    mint,
                } => resumed.outgoing.push(Outgoing {
                    submission,
                    job,
                    operator_authority: operator, // resolved before sending
                    mint,
                }),
            }
        }
        resumed
    }

    /// Step 3: for each job with waiting records (and no pending receipt), at most
    /// `max_invoice_records` of them become its next receipt; records that can never
    /// be billed are written off.
    fn bill_waiting(
        &self,
        work: &Work,
        time: &RoundTime,
        state: &State,
        round: &mut RoundWrite,
        report: &mut RoundReport,
    ) -> Result<Billed, OracleError> {
        let cap = self.settings.max_invoice_records.max(1);
        let mut billed = Billed::default();
        let jobs = &work.jobs;
        for job_text in &work.waiting {
            // A job whose receipt is pending or backing off waits: its records are
            // not even read. Behind a pending receipt they are work left for the next
            // round (a final flush must not stop while they wait).
            if let Some(job) = jobs.get(job_text) {
                if work.pending_jobs.contains(&(job_text.clone(), job.nonce)) {
                    report.more_waiting = true;
                    continue;
                }
                if state.backing_off(job_text, job.nonce) {
                    report.backing_off += 1;
                    continue;
                }
            }
            let records = self.store.waiting_records(job_text, cap)?;
            let (Some(job_key), Some(job)) = (parse_key(job_text), jobs.get(job_text)) else {
                Self::write_off_jobless(round, report, job_text, &records, time.now);
                continue;
            };
            let sorted = SortedRecords::of(&records, &job);
            let Some(bill) = sorted.write_off_unbillable(round, report, job_text, &job) else {
                continue;
            };
            if records.len() >= cap {
                report.more_waiting = true;
            }
            let (new, bytes) = self.prepare(job_text, &job, &bill, report)?;
            if let Some(dir) = &self.invoices_dir {
                billed.exports.push((
                    export_path(dir, job_text, job.nonce, new.submission.seq),
                    bytes,
                ));
            }
            billed.outgoing.push(Outgoing {
                submission: new.submission.clone(),
                job: job_key,
                operator_authority: job.operator,
                mint: job.mint,
            });
            round.submissions.push(new);
        }
        Ok(billed)
    }

    /// Waiting records of an address where no job is open (or that is not an
    /// address at all).
    fn write_off_jobless(
        round: &mut RoundWrite,
        report: &mut RoundReport,
        job_text: &str,
        records: &[WaitingRecord],
        now: i64,
    ) {
        if parse_key(job_text).is_none() {
            let all: Vec<&WaitingRecord> = records.iter().collect();
            Self::write_off_records(
                round,
                report,
                job_text,
                None,
                &all,
                WriteOffReason::NoSuchJob,
                0,
                format!("{job_text} is not an account address: its records can never be billed"),
            );
            return;
        }
        // No job: records wait out the grace (a lagging RPC node), then go: those
        // bound to a job (a source read it) as closed, the rest as never having had
        // one.
        let old_enough =
            |r: &&WaitingRecord| r.record.finished_at < now.saturating_sub(MISSING_JOB_GRACE_SECS);
        let (closed, unbound_old): (Vec<&WaitingRecord>, Vec<&WaitingRecord>) = records
            .iter()
            .filter(old_enough)
            .partition(|r| r.record.job_nonce.is_some());
        if !closed.is_empty() {
            Self::write_off_records(
                round,
                report,
                job_text,
                closed[0].record.job_nonce,
                &closed,
                WriteOffReason::JobClosed,
                0,
                format!(
                    "job {job_text} is closed: {} record(s) metered for it can never be billed",
                    closed.len()
                ),
            );
        }
        if !unbound_old.is_empty() {
            Self::write_off_records(round, report, job_text, None, &unbound_old, WriteOffReason::NoSuchJob, 0,
                format!("no job exists at {job_text}: {} record(s) older than {MISSING_JOB_GRACE_SECS} s can never be billed", unbound_old.len()));
        }
    }

    /// Writes what a round decided in one transaction (before anything is sent),
    /// confirms the receipts found landed, and forgets the backoffs of jobs whose
    /// receipts were written off.
    fn commit_round(
        &self,
        state: &mut State,
        round: &RoundWrite,
        landed: &[(String, u64, u64)],
        report: &RoundReport,
    ) -> Result<(), OracleError> {
        self.store.write_round(round)?;
        if !landed.is_empty() {
            self.store.confirm_all(landed)?;
        }
        for off in &report.written_off {
            if let Some(nonce) = off.job_nonce {
                state.backoff.remove(&(off.job.clone(), nonce));
            }
        }
        Ok(())
    }

    /// Step 5: the table housekeeping, when its interval has passed.
    fn tend_tables_when_due(
        &self,
        chain: &mut impl Chain,
        state: &mut State,
        report: &mut RoundReport,
    ) -> Result<(), OracleError> {
        if self.settings.lookup_tables
            && state
                .last_housekeeping
                .is_none_or(|at| at.elapsed() >= TABLE_HOUSEKEEPING)
        {
            state.last_housekeeping = Some(Instant::now());
            self.tend_tables(chain, state, report)?;
        }
        Ok(())
    }

    /// Runs the table housekeeping now (deactivate tables whose jobs all closed,
    /// close deactivated ones past their cool-down), whatever its interval.
    pub fn tend_lookup_tables(&self, chain: &mut impl Chain) -> Result<TableWork, OracleError> {
        let mut report = RoundReport::default();
        let mut state = lock(&self.state)?;
        state.last_housekeeping = Some(Instant::now());
        self.tend_tables(chain, &mut state, &mut report)?;
        if let Some(error) = report.errors.first() {
            return Err(OracleError::TableUpkeep {
                report: error.clone(),
            });
        }
        Ok(report.tables)
    }

    fn write_off_submission(
        round: &mut RoundWrite,
        report: &mut RoundReport,
        submission: &Submission,
        reason: WriteOffReason,
        detail: String,
    ) {
        round.submission_write_offs.push((
            submission.job.clone(),
            submission.job_nonce,
            submission.seq,
            reason.label().to_string(),
        ));
        report.written_off.push(WrittenOff {
            job: submission.job.clone(),
            job_nonce: Some(submission.job_nonce),
            seq: Some(submission.seq),
            reason,
            records: submission.records,
            units: 0,
            detail,
        });
    }

    fn write_off_records(
        round: &mut RoundWrite,
        report: &mut RoundReport,
        job: &str,
        job_nonce: Option<u64>,
        records: &[&WaitingRecord],
        reason: WriteOffReason,
        units: u64,
        detail: String,
    ) {
        round.record_write_offs.push(RecordWriteOff {
            job: job.to_string(),
            job_nonce,
            record_ids: records.iter().map(|r| r.id).collect(),
            reason: reason.label().to_string(),
            units,
        });
        report.written_off.push(WrittenOff {
            job: job.to_string(),
            job_nonce,
            seq: None,
            reason,
            records: records.len() as u64,
            units,
            detail,
        });
    }

    /// Adopts a job's submissions migrated from schema version 1 into the job open at
    /// its address (what version 1 assumed), their running totals recomputed against
    /// the job's deadline and the old invoice files imported into the store.
    fn adopt(
        &self,
        job_text: &str,
        job: Option<&Job>,
        report: &mut RoundReport,
    ) -> Result<(), OracleError> {
        let submissions: Vec<Submission> = self
            .store
            .submissions_of(job_text)?
            .into_iter()
            .filter(|s| s.job_nonce == LEGACY_NONCE)
            .collect();
        let Some(latest) = submissions.last() else {
            return Ok(());
        };
        let Some(job) = job else {
            // Closed before the upgrade: pending ones can never land; the rest is
            // history, filed under nonce 0 so it is not looked at again.
            let mut round = RoundWrite::default();
            for s in submissions.iter().filter(|s| s.is_pending()) {
                Self::write_off_submission(&mut round, report, s, WriteOffReason::JobClosed, format!(
                    "job {job_text} closed before this oracle was upgraded: its receipt {} can never land",
                    s.seq
                ));
            }
            self.store.write_round(&round)?;
            return self.store.adopt_legacy(job_text, 0, latest.metered, &[]);
        };
        let mut metered = Totals::default();
        for (_, record) in self.store.submitted_records(job_text, None)? {
            if record.finished_at <= job.deadline {
                metered.add(&record);
            }
        }
        let mut invoices = Vec::new();
        if let Some(dir) = &self.invoices_dir {
            for s in &submissions {
                let path = dir.join(job_text).join(format!("{}.json", s.seq));
                if let Ok(bytes) = std::fs::read(&path) {
                    if sha256(&bytes) == s.invoice_hash {
                        invoices.push((s.seq, bytes));
                    }
                }
            }
        }
        tracing::info!(
            job = job_text,
            nonce = job.nonce,
            submissions = submissions.len(),
            invoices = invoices.len(),
            "adopted submissions migrated from schema 1"
        );
        self.store
            .adopt_legacy(job_text, job.nonce, metered, &invoices)
    }

    /// The next receipt of `job` over the records `bill`: its invoice and the
    /// write-ahead submission (written by the caller with the round). Usage it lists
    /// but cannot bill is reported.
    fn prepare(
        &self,
        job_text: &str,
        job: &Job,
        bill: &[&WaitingRecord],
        report: &mut RoundReport,
    ) -> Result<(NewSubmission, Vec<u8>), OracleError> {
        let last = self.store.last_submission(job_text, job.nonce)?;
        let kind = kind_of(job);
        let listed = Listed::of(job, bill, last.as_ref());
        listed.report_unbilled(job_text, job, kind, report);
        let cumulative_units = listed.totals.units(kind).max(job.settled_units);
        let cumulative_output = listed.totals.output(kind).max(job.settled_output);
        if let Some(over) = over_escrow(
            job_text,
            job,
            cumulative_units,
            cumulative_output,
            bill.len(),
        ) {
            report.unbillable.push(over);
        }
        let seq = last
            .as_ref()
            .map_or(1, |s| s.seq.saturating_add(1))
            .max(job.last_seq.saturating_add(1));
        let invoice = Invoice {
            version: INVOICE_VERSION,
            program: tally::ID.to_string(),
            job: job_text.to_string(),
            job_nonce: Some(job.nonce),
            seq,
            previous_hash: hex(&last.as_ref().map_or([0; 32], |s| s.invoice_hash)),
            unit_kind: unit_kind_name(kind).to_string(),
            units: cumulative_units.saturating_sub(listed.units_before),
            cumulative_units,
            period_end: listed.period_end.min(job.deadline),
            lines: listed.lines,
        };
        let bytes = invoice.to_bytes()?;
        let submission = Submission {
            job: job_text.to_string(),
            job_nonce: job.nonce,
            seq,
            cumulative_units,
            cumulative_output,
            invoice_hash: sha256(&bytes),
            period_end: invoice.period_end,
            metered: listed.totals,
            records: bill.len() as u64,
            oldest_finished_at: (listed.oldest != i64::MAX).then_some(listed.oldest),
            state: SubmissionState::Pending,
        };
        Ok((
            NewSubmission {
                submission,
                invoice: bytes.clone(),
                record_ids: bill.iter().map(|r| r.id).collect(),
            },
            bytes,
        ))
    }

    /// Fills in each receipt's operator authority (read once per operator).
    fn resolve_operators(
        chain: &impl Chain,
        state: &mut State,
        outgoing: &mut [Outgoing],
    ) -> Result<(), OracleError> {
        let unknown: Vec<Pubkey> = outgoing
            .iter()
            .map(|o| o.operator_authority) // the operator PDA until resolved
            .filter(|op| !state.operators.contains_key(op))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !unknown.is_empty() {
            let read = chain.accounts(&unknown)?;
            for (key, account) in unknown.iter().zip(read.accounts) {
                if let Some(account) = account {
                    let operator = Operator::try_deserialize(&mut account.data.as_slice())
                        .map_err(|e| OracleError::Decode {
                            what: "operator",
                            address: *key,
                            reason: e.to_string(),
                        })?;
                    state.operators.insert(*key, operator.authority);
                }
            }
        }
        for o in outgoing.iter_mut() {
            o.operator_authority = state
                .operators
                .get(&o.operator_authority)
                .copied()
                .ok_or_else(|| OracleError::NoOperator {
                    operator: o.operator_authority,
                    job: o.job,
                })?;
        }
        Ok(())
    }

    fn backoff(&self, state: &mut State, job: &str, nonce: u64) {
        let entry = state
            .backoff
            .entry((job.to_string(), nonce))
            .or_insert(Backoff {
                until: Instant::now(),
                delay: Duration::ZERO,
            });
        entry.delay = if entry.delay.is_zero() {
            Duration::from_millis(500)
        } else {
            (entry.delay * 2).min(self.settings.max_backoff())
        };
        entry.until = Instant::now() + entry.delay;
    }

    /// Sends every outgoing receipt: ledgers first where missing, lookup tables made
    /// and extended as needed, then all settle transactions at once (a transaction
    /// the program refuses, again receipt by receipt).
    fn send(
        &self,
        chain: &mut impl Chain,
        state: &mut State,
        outgoing: Vec<Outgoing>,
        time: &RoundTime,
        report: &mut RoundReport,
    ) -> Result<(), OracleError> {
        let (slot, day) = (time.slot, utc_day(time.now));
        let mut groups: BTreeMap<(Pubkey, Pubkey), Vec<Outgoing>> = BTreeMap::new();
        for o in outgoing {
            groups
                .entry((o.operator_authority, o.mint))
                .or_default()
                .push(o);
        }
        self.open_ledgers(chain, state, groups.keys().copied().collect(), day, report)?;
        let tables = if self.settings.lookup_tables {
            self.ensure_tables(chain, state, &groups, slot, day, report)?
        } else {
            HashMap::new()
        };
        let settling = Settling {
            slot: chain.clock()?.slot,
            preamble: chain.preamble(),
            payer: self.oracle.pubkey(),
            members: time.config.oracles.clone(),
            attestation: Attestation {
                oracles: self.attesting_oracles(&time.config),
                oracle_set_version: time.config.oracle_set_version,
                day,
            },
            tables,
            max_receipts: self.settings.max_receipts_per_tx.max(1),
        };
        let mut batches = Vec::new();
        for (group, items) in groups {
            batches.extend(settling.pack(group, items)?);
        }
        let sent = self.send_batches(chain, state, &settling, batches, report);
        let mut confirmed = sent.confirmed;
        if !sent.alone.is_empty() {
            confirmed.extend(self.send_alone(chain, state, &settling, sent.alone, report)?);
        }
        for (job, nonce, _) in &confirmed {
            state.backoff.remove(&(job.clone(), *nonce));
        }
        report.confirmed += usize::try_from(self.store.confirm_all(&confirmed)?).unwrap_or(0);
        Ok(())
    }

    /// Sends the packed settle transactions all at once, their confirmations tracked
    /// together.
    fn send_batches(
        &self,
        chain: &mut impl Chain,
        state: &mut State,
        settling: &Settling,
        batches: Vec<(VersionedMessage, Vec<Outgoing>)>,
        report: &mut RoundReport,
    ) -> Sent {
        report.transactions += batches.len();
        report
            .receipts_per_transaction
            .extend(batches.iter().map(|(_, c)| c.len()));
        report.sent += batches.iter().map(|(_, c)| c.len()).sum::<usize>();
        let outcomes = self.send_settlements(chain, settling, &batches);
        let mut sent = Sent::default();
        for ((_, chunk), outcome) in batches.into_iter().zip(outcomes) {
            match outcome {
                Ok(_) => sent.confirmed.extend(chunk.iter().map(Outgoing::receipt)),
                // One receipt the program refuses (a job over its spend cap, say) must
                // not hold back the others: each alone.
                Err(e) if chunk.len() > 1 && e.refused() => {
                    e.note_refusals(report);
                    report.errors.push(format!(
                        "a transaction of {} receipts was refused ({e}): sending each alone",
                        chunk.len()
                    ));
                    sent.alone.extend(chunk);
                }
                Err(e) => {
                    e.note_refusals(report);
                    report.failed += chunk.len();
                    report.errors.push(format!(
                        "{} receipt(s) not settled (their jobs back off): {e}",
                        chunk.len()
                    ));
                    for o in &chunk {
                        self.backoff(state, &o.submission.job, o.submission.job_nonce);
                    }
                }
            }
        }
        sent
    }

    /// Sends each of `alone` in a transaction of its own; the receipts confirmed.
    fn send_alone(
        &self,
        chain: &mut impl Chain,
        state: &mut State,
        settling: &Settling,
        alone: Vec<Outgoing>,
        report: &mut RoundReport,
    ) -> Result<Vec<(String, u64, u64)>, OracleError> {
        let batches = alone
            .into_iter()
            .map(|o| Ok((settling.alone(&o)?, vec![o])))
            .collect::<Result<Vec<_>, OracleError>>()?;
        report.transactions += batches.len();
        let outcomes = self.send_settlements(chain, settling, &batches);
        let alone: Vec<Outgoing> = batches.into_iter().flat_map(|(_, o)| o).collect();
        let mut confirmed = Vec::new();
        for (o, outcome) in alone.iter().zip(outcomes) {
            match outcome {
                Ok(_) => confirmed.push(o.receipt()),
                Err(e) => {
                    e.note_refusals(report);
                    report.failed += 1;
                    report.errors.push(format!(
                        "job {}: receipt {} refused (the job backs off): {e}",
                        o.job, o.submission.seq
                    ));
                    self.backoff(state, &o.submission.job, o.submission.job_nonce);
                }
            }
        }
        Ok(confirmed)
    }

    /// Who attests this oracle's settlements: itself, and in a quorum as many peers as
    /// the set's threshold needs (the first ones asked; the packing counts their
    /// signatures).
    fn attesting_oracles(&self, config: &tally::state::Config) -> Vec<Pubkey> {
        let mut oracles = vec![self.oracle.pubkey()];
        if let Some(quorum) = &self.quorum {
            let needed = usize::from(config.oracle_threshold).saturating_sub(1);
            let members = quorum.peers().of_set(&config.oracles);
            oracles.extend(members.keys().into_iter().take(needed));
        }
        oracles
    }

    /// Sends settle transactions: signed by this oracle alone, or, in a quorum with a
    /// threshold above one, each co-signed by peers that check it against their own
    /// records first.
    fn send_settlements(
        &self,
        chain: &mut impl Chain,
        settling: &Settling,
        batches: &[(VersionedMessage, Vec<Outgoing>)],
    ) -> Vec<Result<Confirmed, SendError>> {
        let Some(quorum) = self
            .quorum
            .as_ref()
            .filter(|_| settling.attestation.oracles.len() > 1)
        else {
            let messages = batches.iter().map(|(m, _)| m.clone()).collect();
            return chain
                .send_messages(messages, &[&self.oracle])
                .into_iter()
                .map(|o| o.map_err(SendError::Chain))
                .collect();
        };
        batches
            .iter()
            .map(|(_, chunk)| self.send_cosigned(chain, quorum, settling, chunk))
            .collect()
    }

    /// One settlement co-signed by the quorum, then sent.
    fn send_cosigned(
        &self,
        chain: &mut impl Chain,
        quorum: &crate::quorum::Quorum,
        settling: &Settling,
        chunk: &[Outgoing],
    ) -> Result<Confirmed, SendError> {
        let invoices = chunk
            .iter()
            .map(|o| {
                let s = &o.submission;
                self.store
                    .invoice(&s.job, s.job_nonce, s.seq)?
                    .ok_or_else(|| OracleError::Decode {
                        what: "the store's invoice of a pending receipt",
                        address: o.job,
                        reason: format!("receipt {} has no invoice in the store", s.seq),
                    })
            })
            .collect::<Result<Vec<_>, OracleError>>()
            .map_err(SendError::Oracle)?;
        let blockhash = chain.latest_blockhash().map_err(SendError::Chain)?;
        let group = chunk
            .first()
            .map(|o| (o.operator_authority, o.mint))
            .unwrap_or_default();
        let tables = settling.group_tables(group);
        let cosigned = crate::quorum::cosign(
            &self.oracle,
            &quorum.peers().of_set(&settling.members),
            settling.attestation.oracles.len(),
            blockhash,
            &invoices,
            |oracles| settling.message_for(oracles, group, chunk, &tables),
        )
        .map_err(SendError::Quorum)?;
        for o in chunk {
            let s = &o.submission;
            quorum.signed().mark(&s.job, s.job_nonce, s.seq);
        }
        chain
            .send_transaction(cosigned.transaction)
            .map_err(SendError::Chain)
    }

    /// Brings accounts of the previous layout (jobs, revenue days) up to date with
    /// `upgrade_account`, the oracle paying the extra rent; failures are reported
    /// (their receipts then fail and back off, and are retried).
    fn upgrade_accounts(
        &self,
        chain: &mut impl Chain,
        accounts: &[Pubkey],
        report: &mut RoundReport,
    ) -> Result<(), OracleError> {
        if accounts.is_empty() {
            return Ok(());
        }
        let payer = self.oracle.pubkey();
        let preamble = chain.preamble();
        let messages = accounts
            .chunks(8)
            .map(|chunk| {
                let mut instructions = preamble.clone();
                instructions.extend(chunk.iter().map(|a| ix::upgrade_account(payer, *a)));
                alt::v0_message(&payer, &instructions, &[], solana_hash::Hash::default()).map_err(
                    |source| OracleError::Compile {
                        what: "upgrade_account",
                        source,
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        report.transactions += messages.len();
        for (chunk, outcome) in accounts
            .chunks(8)
            .zip(chain.send_messages(messages, &[&self.oracle]))
        {
            match outcome {
                Ok(_) => tracing::info!(
                    "upgraded {} account(s) to the current layout: {chunk:?}",
                    chunk.len()
                ),
                Err(e) => report.errors.push(format!(
                    "cannot upgrade accounts {chunk:?} to the current layout: {e}"
                )),
            }
        }
        Ok(())
    }

    /// Sends `open_ledgers` for every group whose earnings or revenue ledger of `day`
    /// does not exist yet (all at once), before its receipts.
    fn open_ledgers(
        &self,
        chain: &mut impl Chain,
        state: &mut State,
        groups: Vec<(Pubkey, Pubkey)>,
        day: u32,
        report: &mut RoundReport,
    ) -> Result<(), OracleError> {
        let unknown: Vec<(Pubkey, Pubkey)> = groups
            .into_iter()
            .filter(|(op, mint)| !state.ledgers.contains(&(*op, *mint, day)))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let addresses: Vec<Pubkey> = unknown
            .iter()
            .flat_map(|(op, mint)| {
                [
                    pda::earnings(&pda::operator(op), mint),
                    pda::revenue(mint, day),
                ]
            })
            .collect();
        let read = chain.accounts(&addresses)?;
        let outdated: Vec<Pubkey> = addresses
            .iter()
            .zip(&read.accounts)
            .filter(|(_, a)| {
                a.as_ref()
                    .is_some_and(|a| a.data.len() == tally::state::Revenue::V1_ACCOUNT_SIZE)
            })
            .map(|(key, _)| *key)
            .collect();
        self.upgrade_accounts(chain, &outdated, report)?;
        let mut missing = Vec::new();
        for (i, (op, mint)) in unknown.iter().enumerate() {
            let exists = |k: usize| read.accounts.get(k).is_some_and(Option::is_some);
            if exists(2 * i) && exists(2 * i + 1) {
                state.ledgers.insert((*op, *mint, day));
            } else {
                missing.push((*op, *mint));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let payer = self.oracle.pubkey();
        let preamble = chain.preamble();
        let messages = missing
            .iter()
            .map(|(op, mint)| {
                let mut instructions = preamble.clone();
                instructions.push(ix::open_ledgers(payer, *op, *mint, day));
                alt::v0_message(&payer, &instructions, &[], solana_hash::Hash::default()).map_err(
                    |source| OracleError::Compile {
                        what: "open_ledgers",
                        source,
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        report.transactions += messages.len();
        for ((op, mint), outcome) in missing
            .iter()
            .zip(chain.send_messages(messages, &[&self.oracle]))
        {
            match outcome {
                Ok(_) => {
                    state.ledgers.insert((*op, *mint, day));
                }
                // Its receipts will fail and back off; logged here with the cause.
                Err(e) => report.errors.push(format!(
                    "cannot open the ledgers of operator {op} in mint {mint}: {e}"
                )),
            }
        }
        Ok(())
    }

    /// Loads the managed tables (store rows and their accounts) on first use.
    fn load_tables<'s>(
        &self,
        chain: &impl Chain,
        state: &'s mut State,
        slot: u64,
    ) -> Result<&'s mut Vec<ManagedTable>, OracleError> {
        if state.tables.is_none() {
            let rows = self.store.lookup_tables()?;
            let keys: Vec<Pubkey> = rows.iter().filter_map(|r| parse_key(&r.address)).collect();
            let read = chain.accounts(&keys)?;
            let mut tables = Vec::new();
            for (key, (mut row, account)) in keys.iter().zip(rows.into_iter().zip(read.accounts)) {
                let decoded = account
                    .as_ref()
                    .and_then(|a| alt::decode_lookup_table(&a.data));
                match (&row.state, &decoded) {
                    (TableState::Creating, Some(_)) => {
                        row.state = TableState::Active;
                        self.store.save_lookup_table(&row)?;
                    }
                    // Its create never landed, and no longer can (its slot is old).
                    (TableState::Creating, None)
                        if slot > row.recent_slot + alt::DEACTIVATION_COOLDOWN_SLOTS =>
                    {
                        row.state = TableState::Closed;
                        self.store.save_lookup_table(&row)?;
                        continue;
                    }
                    (TableState::Active | TableState::Deactivated(_), None) => {
                        row.state = TableState::Closed;
                        self.store.save_lookup_table(&row)?;
                        continue;
                    }
                    _ => {}
                }
                tables.push(ManagedTable {
                    key: *key,
                    row,
                    state: decoded,
                });
            }
            state.tables = Some(tables);
        }
        state.tables.as_mut().ok_or(OracleError::TablesNotLoaded)
    }

    /// Puts every job of `groups` into an active table of its group (creating and
    /// extending tables: one wave of transactions per extension step, tables in
    /// parallel), waits until the chain is past the slot they were last extended in,
    /// and returns each group's tables.
    fn ensure_tables(
        &self,
        chain: &mut impl Chain,
        state: &mut State,
        groups: &BTreeMap<(Pubkey, Pubkey), Vec<Outgoing>>,
        slot: u64,
        day: u32,
        report: &mut RoundReport,
    ) -> Result<HashMap<(Pubkey, Pubkey), Vec<ManagedView>>, OracleError> {
        let me = self.oracle.pubkey();
        let tables = self.load_tables(chain, state, slot)?;
        let plan = TablePlan::of(tables, groups, me, day);
        let mut steps = self.create_tables(chain, tables, plan.create, report)?;
        steps.extend(plan.extend.into_iter().map(|(key, addresses)| {
            TableSteps {
                key,
                transactions: alt::extend_lookup_table(key, me, me, &addresses)
                    .into_iter()
                    .map(|i| vec![i])
                    .collect(),
            }
        }));
        self.send_table_waves(chain, &steps, report)?;
        report.tables.extended = report.tables.extended.saturating_sub(report.tables.created);
        let last_extended = self.read_back_tables(chain, tables, &steps)?;
        if last_extended > 0 {
            // Addresses added in a slot are usable from the next one.
            chain.wait_past_slot(last_extended)?;
        }
        Ok(group_views(tables, groups))
    }

    /// Writes the planned tables ahead of their create transactions; the steps that
    /// make each.
    fn create_tables(
        &self,
        chain: &mut impl Chain,
        tables: &mut Vec<ManagedTable>,
        create: Vec<((Pubkey, Pubkey), Vec<Pubkey>)>,
        report: &mut RoundReport,
    ) -> Result<Vec<TableSteps>, OracleError> {
        let me = self.oracle.pubkey();
        let slots = if create.is_empty() {
            Vec::new()
        } else {
            chain.lookup_table_slots(create.len())?
        };
        let mut steps = Vec::new();
        for (((op, mint), addresses), recent_slot) in create.into_iter().zip(slots) {
            let (key, transactions) = alt::create_lookup_table(me, me, recent_slot, &addresses);
            let row = LookupTableRow {
                address: key.to_string(),
                authority: me.to_string(),
                operator: op.to_string(),
                mint: mint.to_string(),
                recent_slot,
                state: TableState::Creating,
            };
            self.store.save_lookup_table(&row)?;
            tables.push(ManagedTable {
                key,
                row,
                state: None,
            });
            report.tables.created += 1;
            steps.push(TableSteps { key, transactions });
        }
        Ok(steps)
    }

    /// Wave k sends step k of every table at once (a table's steps write it in
    /// turn); a table whose step failed gets no more.
    fn send_table_waves(
        &self,
        chain: &mut impl Chain,
        steps: &[TableSteps],
        report: &mut RoundReport,
    ) -> Result<(), OracleError> {
        let me = self.oracle.pubkey();
        let preamble = chain.preamble();
        let mut broken: HashSet<Pubkey> = HashSet::new();
        let waves = steps
            .iter()
            .map(|s| s.transactions.len())
            .max()
            .unwrap_or(0);
        for wave in 0..waves {
            let mut keys = Vec::new();
            let mut messages = Vec::new();
            for step in steps {
                let Some(instructions) = step.transactions.get(wave) else {
                    continue;
                };
                if broken.contains(&step.key) {
                    continue;
                }
                let mut all = preamble.clone();
                all.extend_from_slice(instructions);
                messages.push(
                    alt::v0_message(&me, &all, &[], solana_hash::Hash::default()).map_err(|e| {
                        OracleError::Compile {
                            what: "a table transaction",
                            source: e,
                        }
                    })?,
                );
                keys.push(step.key);
            }
            report.transactions += messages.len();
            report.tables.extended += messages.len();
            for (key, outcome) in keys
                .iter()
                .zip(chain.send_messages(messages, &[&self.oracle]))
            {
                if let Err(e) = outcome {
                    broken.insert(*key);
                    report.errors.push(format!(
                        "lookup table {key} could not be made or extended ({e}): its receipts go without it"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads back the tables `steps` changed (creating ones that exist now are
    /// active); the latest slot any of them was extended in (0: none).
    fn read_back_tables(
        &self,
        chain: &impl Chain,
        tables: &mut [ManagedTable],
        steps: &[TableSteps],
    ) -> Result<u64, OracleError> {
        let changed: Vec<Pubkey> = steps.iter().map(|s| s.key).collect();
        let mut last_extended = 0u64;
        if changed.is_empty() {
            return Ok(last_extended);
        }
        let read = chain.accounts(&changed)?;
        for (key, account) in changed.iter().zip(read.accounts) {
            let decoded = account
                .as_ref()
                .and_then(|a| alt::decode_lookup_table(&a.data));
            if let Some(t) = tables.iter_mut().find(|t| t.key == *key) {
                if decoded.is_some() && t.row.state == TableState::Creating {
                    t.row.state = TableState::Active;
                    self.store.save_lookup_table(&t.row)?;
                }
                if let Some(d) = &decoded {
                    last_extended = last_extended.max(d.last_extended_slot);
                }
                t.state = decoded;
            }
        }
        Ok(last_extended)
    }

    /// Deactivates managed tables whose jobs have all closed, and closes deactivated
    /// ones whose cool-down has passed (their rent back to the oracle).
    fn tend_tables(
        &self,
        chain: &mut impl Chain,
        state: &mut State,
        report: &mut RoundReport,
    ) -> Result<(), OracleError> {
        let me = self.oracle.pubkey();
        let slot = chain.clock()?.slot;
        let tables = self.load_tables(chain, state, slot)?;
        let chores = TableChores::of(chain, tables, me, slot)?;
        let preamble = chain.preamble();
        let message = |ix: anchor_lang::solana_program::instruction::Instruction| {
            let mut all = preamble.clone();
            all.push(ix);
            alt::v0_message(&me, &all, &[], solana_hash::Hash::default()).map_err(|e| {
                OracleError::Compile {
                    what: "a table transaction",
                    source: e,
                }
            })
        };
        let messages = chores
            .deactivate
            .iter()
            .map(|&i| message(alt::deactivate_lookup_table(tables[i].key, me)))
            .chain(
                chores
                    .close
                    .iter()
                    .map(|&i| message(alt::close_lookup_table(tables[i].key, me, me))),
            )
            .collect::<Result<Vec<_>, _>>()?;
        if messages.is_empty() {
            return Ok(());
        }
        report.transactions += messages.len();
        let outcomes = chain.send_messages(messages, &[&self.oracle]);
        let now_slot = chain.clock()?.slot;
        for (k, outcome) in outcomes.into_iter().enumerate() {
            let (i, closing) = chores.nth(k);
            let t = &mut tables[i];
            match outcome {
                Ok(_) if closing => {
                    t.row.state = TableState::Closed;
                    t.state = None;
                    report.tables.closed += 1;
                }
                Ok(_) => {
                    t.row.state = TableState::Deactivated(now_slot);
                    if let Some(s) = t.state.as_mut() {
                        s.deactivation_slot = now_slot;
                    }
                    report.tables.deactivated += 1;
                }
                Err(e) => {
                    report.errors.push(format!(
                        "lookup table {} could not be {}: {e}",
                        t.key,
                        if closing { "closed" } else { "deactivated" }
                    ));
                    continue;
                }
            }
            self.store.save_lookup_table(&t.row)?;
        }
        tables.retain(|t| t.row.state != TableState::Closed);
        Ok(())
    }
}

/// A group's table as a round uses it.
struct ManagedView {
    key: Pubkey,
    state: LookupTableState,
}

impl ManagedView {
    fn usable_at(&self, slot: u64) -> Vec<Pubkey> {
        self.state.usable_at(slot).to_vec()
    }
}

/// The chain's time and rules, as a round read them at its start.
struct RoundTime {
    slot: u64,
    now: i64,
    config: tally::state::Config,
}

/// The jobs' states a round read (`None`: no job of the program at the address).
struct JobStates(HashMap<String, Option<Job>>);

impl JobStates {
    fn get(&self, job: &str) -> Option<Job> {
        self.0.get(job).copied().flatten()
    }
}

/// What a round has to work on (step 1).
struct Work {
    /// Submissions written but not confirmed.
    pending: Vec<Submission>,
    /// (job, nonce) of each pending submission.
    pending_jobs: HashSet<(String, u64)>,
    /// Jobs with records waiting for a submission.
    waiting: Vec<String>,
    jobs: JobStates,
}

/// What step 2 decided about the pending submissions (their write-offs go into the
/// round's write).
#[derive(Default)]
struct Resumed {
    /// Sent again.
    outgoing: Vec<Outgoing>,
    /// Found landed (their answer was lost): (job, nonce, seq) to confirm.
    landed: Vec<(String, u64, u64)>,
}

/// What step 3 made of the waiting records (the new submissions go into the round's
/// write).
#[derive(Default)]
struct Billed {
    /// The new receipts, to send.
    outgoing: Vec<Outgoing>,
    /// Their invoices, to export once sent: (path, bytes).
    exports: Vec<(PathBuf, Vec<u8>)>,
}

/// What a round does with a pending submission.
enum Resume {
    /// It can never land: written off, with why.
    WriteOff(WriteOffReason, String),
    /// It landed already (its answer was lost): confirmed.
    Landed,
    /// The RPC node is behind the job: asked again next round.
    Wait,
    /// Its job backs off after a failure.
    BackingOff,
    /// Sent again, to the job at `job` (of `operator`, paid in `mint`).
    Send {
        job: Pubkey,
        operator: Pubkey,
        mint: Pubkey,
    },
}

/// Decides what becomes of pending `submission`, whose job (at its address) is `job`.
/// `ours_landed`, in a quorum: whether this oracle's receipt at the chain's last seq
/// of the job is the one that landed. When it is not, a seq the chain passed may be
/// another leader's: the submission waits for catch-up (which needs the peers), as
/// neither confirmed nor written off (which would drop its records).
fn resume(
    submission: &Submission,
    job: Option<&Job>,
    time: &RoundTime,
    state: &State,
    ours_landed: Option<bool>,
) -> Resume {
    let (job_text, nonce, seq) = (&submission.job, submission.job_nonce, submission.seq);
    let gone = match job {
        None => {
            let evidence = submission
                .oldest_finished_at
                .unwrap_or(submission.period_end);
            parse_key(job_text).is_none()
                || evidence
                    < time
                        .now
                        .saturating_sub(MISSING_JOB_GRACE_SECS + BIND_TOLERANCE_SECS)
        }
        Some(j) => j.nonce > nonce,
    };
    if gone {
        return Resume::WriteOff(WriteOffReason::JobClosed, format!(
            "job {job_text} (nonce {nonce}) is closed: its receipt {seq} ({} records) can never land",
            submission.records
        ));
    }
    let Some(job) = job.filter(|j| j.nonce == nonce) else {
        return Resume::Wait;
    };
    if job.last_seq >= seq && ours_landed == Some(false) {
        return Resume::Wait;
    }
    if job.last_seq > seq || (job.last_seq == seq && job.invoice_hash == submission.invoice_hash) {
        return Resume::Landed;
    }
    if job.last_seq == seq {
        return Resume::WriteOff(WriteOffReason::Superseded, format!(
            "job {job_text}: another receipt {seq} (invoice {}) settled instead of this oracle's ({})",
            hex(&job.invoice_hash), hex(&submission.invoice_hash)
        ));
    }
    if job.status().is_finished() {
        return Resume::WriteOff(WriteOffReason::JobEnded, format!(
            "job {job_text} has ended ({}) before its receipt {seq} ({} records) landed: the program settles nothing more for it",
            status_name(job), submission.records
        ));
    }
    if time.now > job.settle_until(time.config.expiry_grace_secs) {
        let grace = i64::from(time.config.expiry_grace_secs);
        return Resume::WriteOff(WriteOffReason::Expired, format!(
            "job {job_text}: receipt {seq} was not settled before the deadline {} plus the {grace} s grace: the program refuses it now",
            job.deadline
        ));
    }
    if state.backing_off(job_text, nonce) {
        return Resume::BackingOff;
    }
    match parse_key(job_text) {
        Some(key) => Resume::Send {
            job: key,
            operator: job.operator,
            mint: job.mint,
        },
        None => Resume::Wait,
    }
}

/// A job's waiting records, by the job incarnation they belong to.
struct SortedRecords<'r> {
    /// Of the job open now: to bill.
    bill: Vec<&'r WaitingRecord>,
    /// Bound to an earlier job at the address, closed before they were billed.
    earlier_job: Vec<&'r WaitingRecord>,
    /// Bound to no job, and finished before the one open now was opened.
    before_open: Vec<&'r WaitingRecord>,
}

impl<'r> SortedRecords<'r> {
    fn of(records: &'r [WaitingRecord], job: &Job) -> Self {
        let mut sorted = Self {
            bill: Vec::new(),
            earlier_job: Vec::new(),
            before_open: Vec::new(),
        };
        for r in records {
            match r.record.job_nonce {
                Some(n) if n == job.nonce => sorted.bill.push(r),
                Some(n) if n < job.nonce => sorted.earlier_job.push(r),
                Some(_) => {} // a job newer than the RPC node shows: next round
                None if r.record.finished_at
                    >= job.opened_at.saturating_sub(BIND_TOLERANCE_SECS) =>
                {
                    sorted.bill.push(r);
                }
                None => sorted.before_open.push(r),
            }
        }
        sorted
    }

    /// Writes off the records that can never be billed (those of other jobs at the
    /// address; all of them once the job has ended). The records to bill, if any.
    fn write_off_unbillable(
        self,
        round: &mut RoundWrite,
        report: &mut RoundReport,
        job_text: &str,
        job: &Job,
    ) -> Option<Vec<&'r WaitingRecord>> {
        let kind = kind_of(job);
        let Self {
            bill,
            earlier_job: old,
            before_open: before,
        } = self;
        if !old.is_empty() {
            let units = units_of(&old, kind);
            Batcher::write_off_records(round, report, job_text, old[0].record.job_nonce, &old, WriteOffReason::JobClosed, units,
                format!("job {job_text}: {} record(s) ({units} units) of an earlier job at this address, closed before they were billed", old.len()));
        }
        if !before.is_empty() {
            let units = units_of(&before, kind);
            Batcher::write_off_records(round, report, job_text, None, &before, WriteOffReason::BeforeJobOpened, units,
                format!("job {job_text} (opened at {}): {} record(s) ({units} units) finished before it opened: usage of an earlier job at this address, which is closed", job.opened_at, before.len()));
        }
        if bill.is_empty() {
            return None;
        }
        if job.status().is_finished() {
            let units = units_of(&bill, kind);
            Batcher::write_off_records(round, report, job_text, Some(job.nonce), &bill, WriteOffReason::JobEnded, units,
                format!("job {job_text} has ended ({}): {} record(s) ({units} units) metered after its last receipt can never be billed (the program settles nothing more for it)", status_name(job), bill.len()));
            return None;
        }
        Some(bill)
    }
}

/// The distinct addresses among `jobs` (in order; those that are not addresses
/// left out).
fn distinct_addresses<'a>(jobs: impl Iterator<Item = &'a str>) -> Vec<Pubkey> {
    let mut seen = HashSet::new();
    jobs.filter_map(parse_key)
        .filter(|key| seen.insert(*key))
        .collect()
}

/// Exports the round's invoices; a failure is reported (the store keeps them).
fn export_invoices(exports: Vec<(PathBuf, Vec<u8>)>, report: &mut RoundReport) {
    for (path, bytes) in exports {
        if let Err(e) = crate::invoice::export(&path, &bytes) {
            report.errors.push(format!(
                "{e} (the store keeps the invoice; only the exported copy is missing)"
            ));
        }
    }
}

/// The records of a new receipt as its invoice lists them: all of them, the
/// billable ones counted into the running totals, the others set aside.
struct Listed<'r> {
    /// The running totals: the previous receipt's plus the billable records.
    totals: Totals,
    /// The units the previous receipt's totals came to.
    units_before: u64,
    lines: Vec<InvoiceLine>,
    /// The latest billable record's end (or the previous receipt's).
    period_end: i64,
    /// Finished after the job's deadline: listed, not billed.
    late: Totals,
    /// The latest of those.
    latest_late: i64,
    /// Of a model the job does not pay for: listed, not billed.
    foreign: Totals,
    foreign_models: BTreeSet<&'r str>,
    /// The earliest end of any record listed (`i64::MAX`: none).
    oldest: i64,
}

impl<'r> Listed<'r> {
    fn of(job: &Job, bill: &[&'r WaitingRecord], last: Option<&Submission>) -> Self {
        let totals = last.map(|s| s.metered).unwrap_or_default();
        let mut listed = Self {
            totals,
            units_before: totals.units(kind_of(job)),
            lines: Vec::with_capacity(bill.len()),
            period_end: last.map_or(0, |s| s.period_end),
            late: Totals::default(),
            latest_late: 0,
            foreign: Totals::default(),
            foreign_models: BTreeSet::new(),
            oldest: i64::MAX,
        };
        for waiting in bill {
            let record = &waiting.record;
            listed.oldest = listed.oldest.min(record.finished_at);
            // Usage after the deadline, or of a model the job does not pay for, is
            // not billable: listed, not counted.
            if !pays_for_model(job, &record.model) {
                listed.foreign.add(record);
                listed.foreign_models.insert(record.model.as_str());
            } else if record.finished_at <= job.deadline {
                listed.totals.add(record);
                listed.period_end = listed.period_end.max(record.finished_at);
            } else {
                listed.late.add(record);
                listed.latest_late = listed.latest_late.max(record.finished_at);
            }
            listed.lines.push(InvoiceLine::from(record));
        }
        listed
    }

    /// Reports the usage listed but not billed (another model's, or after the
    /// deadline).
    fn report_unbilled(&self, job_text: &str, job: &Job, kind: UnitKind, report: &mut RoundReport) {
        if self.foreign.requests > 0 {
            let foreign_models = &self.foreign_models;
            report.unbillable.push(Unbillable::listed(
                job_text,
                UnbillableReason::WrongModel,
                &self.foreign,
                kind,
                &format!(
                    "served by model(s) {foreign_models:?} that the job does not pay for: \
                     listed in the invoice, not billed (the inference server answered with \
                     another model than the one requested)"
                ),
            ));
        }
        if self.late.requests > 0 {
            let latest = self.latest_late;
            report.unbillable.push(Unbillable::listed(
                job_text,
                UnbillableReason::AfterDeadline,
                &self.late,
                kind,
                &format!(
                    "finished after the job's deadline {} (latest {latest}, chain time): \
                     listed in the invoice, not billed",
                    job.deadline
                ),
            ));
        }
    }
}

/// The new units' share that `job`'s escrow cannot pay, if any, with what to do
/// (reported; the program settles what the escrow covers).
fn over_escrow(
    job_text: &str,
    job: &Job,
    cumulative_units: u64,
    cumulative_output: u64,
    records: usize,
) -> Option<Unbillable> {
    let added = cumulative_units.saturating_sub(job.settled_units);
    let due = tally_client::amount_owed(
        job.prices(),
        tally_client::Usage {
            units: cumulative_units,
            output: cumulative_output,
        },
    )
    .ok()
    .and_then(|owed| {
        owed.checked_sub(tally_client::amount_owed(job.prices(), job.settled_usage()).ok()?)
    })
    .unwrap_or(0);
    if due <= u128::from(job.escrow_left) || added == 0 {
        return None;
    }
    // The share of the new units the escrow cannot pay (for the report).
    let unpaid = due.saturating_sub(u128::from(job.escrow_left));
    let over = u64::try_from(unpaid.saturating_mul(u128::from(added)) / due.max(1))
        .unwrap_or(added)
        .max(1);
    Some(Unbillable {
        job: job_text.to_string(),
        reason: UnbillableReason::OverEscrow,
        records: records as u64,
        units: over,
        detail: format!(
            "job {job_text}: about {over} of the {added} new unit(s) exceed the escrow left \
             ({} base units; the new usage costs {due}): the client must top the job up \
             (`tally job top-up {job_text} <AMOUNT>`) for them to be paid",
            job.escrow_left,
        ),
    })
}

impl Outgoing {
    /// (job, nonce, seq): the receipt, as the store confirms it.
    fn receipt(&self) -> (String, u64, u64) {
        (
            self.submission.job.clone(),
            self.submission.job_nonce,
            self.submission.seq,
        )
    }
}

/// What sending the packed transactions came to.
#[derive(Default)]
struct Sent {
    /// (job, nonce, seq) of the receipts confirmed.
    confirmed: Vec<(String, u64, u64)>,
    /// Receipts of transactions the program refused: to send each alone.
    alone: Vec<Outgoing>,
}

/// Why a settle transaction did not land.
#[derive(Debug)]
enum SendError {
    Chain(tally_client::chain::ChainError),
    /// The quorum did not co-sign: each peer's reason.
    Quorum(Vec<crate::quorum::PeerError>),
    Oracle(OracleError),
}

impl SendError {
    /// Counts the peers' refusals in `report`.
    fn note_refusals(&self, report: &mut RoundReport) {
        if let SendError::Quorum(peers) = self {
            for p in peers {
                let (peer, label) = p.peer_and_label();
                report.peer_refusals.push((peer, label.to_string()));
            }
        }
    }

    /// The program, or a co-signer, refused it (as opposed to a network failure): a
    /// batch refused so is split, each receipt sent alone.
    fn refused(&self) -> bool {
        match self {
            SendError::Chain(e) => e.program_error_code().is_some(),
            SendError::Quorum(peers) => peers
                .iter()
                .any(|p| matches!(p, crate::quorum::PeerError::Refused { .. })),
            SendError::Oracle(_) => false,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Chain(e) => write!(f, "{e}"),
            SendError::Oracle(e) => write!(f, "{e}"),
            SendError::Quorum(peers) => {
                write!(f, "the quorum did not co-sign")?;
                for p in peers {
                    write!(f, "; {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// What a round's settle transactions are built from.
struct Settling {
    payer: Pubkey,
    /// The on-chain oracle set (peers outside it are never asked to co-sign).
    members: Vec<Pubkey>,
    preamble: Vec<anchor_lang::solana_program::instruction::Instruction>,
    attestation: Attestation,
    /// Each group's (operator authority, mint) active tables…
    tables: HashMap<(Pubkey, Pubkey), Vec<ManagedView>>,
    /// …with the addresses usable in this slot.
    slot: u64,
    max_receipts: usize,
}

impl Settling {
    /// The group's tables, as a transaction sent now may use them.
    fn group_tables(&self, group: (Pubkey, Pubkey)) -> Vec<AddressLookupTableAccount> {
        self.tables
            .get(&group)
            .map(|ts| {
                ts.iter()
                    .map(|t| AddressLookupTableAccount {
                        key: t.key,
                        addresses: t.usable_at(self.slot),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Packs a group's receipts into transactions up to the packet limit (and
    /// `max_receipts`), receipts whose jobs share a table together.
    fn pack(
        &self,
        group: (Pubkey, Pubkey),
        mut items: Vec<Outgoing>,
    ) -> Result<Vec<(VersionedMessage, Vec<Outgoing>)>, OracleError> {
        let group_tables = self.group_tables(group);
        let table_of = |job: &Pubkey| {
            group_tables
                .iter()
                .position(|t| t.addresses.contains(job))
                .unwrap_or(usize::MAX)
        };
        items.sort_by_key(|o| table_of(&o.job));
        let mut batches = Vec::new();
        let mut chunk: Vec<Outgoing> = Vec::new();
        let mut chunk_message: Option<VersionedMessage> = None;
        for item in items {
            chunk.push(item);
            let message = self.message(group, &chunk, &group_tables)?;
            let fits =
                alt::v0_wire_size(&message) <= PACKET_DATA_SIZE && chunk.len() <= self.max_receipts;
            if fits {
                chunk_message = Some(message);
                continue;
            }
            let Some(last) = chunk.pop() else { continue };
            if let Some(message) = chunk_message.take() {
                batches.push((message, std::mem::take(&mut chunk)));
            }
            chunk.push(last);
            chunk_message = Some(self.message(group, &chunk, &group_tables)?);
        }
        if let Some(message) = chunk_message {
            batches.push((message, chunk));
        }
        Ok(batches)
    }

    /// The transaction settling `o` alone (through the one table holding its job).
    fn alone(&self, o: &Outgoing) -> Result<VersionedMessage, OracleError> {
        let group = (o.operator_authority, o.mint);
        let table: Vec<AddressLookupTableAccount> = self
            .group_tables(group)
            .into_iter()
            .filter(|t| t.addresses.contains(&o.job))
            .take(1)
            .collect();
        self.message(group, std::slice::from_ref(o), &table)
    }

    /// [`Settling::message`] attested by `oracles` (the first pays).
    fn message_for(
        &self,
        oracles: &[Pubkey],
        group: (Pubkey, Pubkey),
        chunk: &[Outgoing],
        tables: &[AddressLookupTableAccount],
    ) -> Result<VersionedMessage, OracleError> {
        let settling = Settling {
            payer: oracles.first().copied().unwrap_or(self.payer),
            members: self.members.clone(),
            preamble: self.preamble.clone(),
            attestation: Attestation {
                oracles: oracles.to_vec(),
                ..self.attestation.clone()
            },
            tables: HashMap::new(),
            slot: self.slot,
            max_receipts: self.max_receipts,
        };
        settling.message(group, chunk, tables)
    }

    /// The settle transaction of `chunk` (receipts of one group), through the
    /// tables of `tables` it uses.
    fn message(
        &self,
        (operator_authority, mint): (Pubkey, Pubkey),
        chunk: &[Outgoing],
        tables: &[AddressLookupTableAccount],
    ) -> Result<VersionedMessage, OracleError> {
        let receipts: Vec<(Pubkey, SettleReceipt)> = chunk
            .iter()
            .map(|o| {
                (
                    o.job,
                    SettleReceipt {
                        seq: o.submission.seq,
                        cumulative_units: o.submission.cumulative_units,
                        cumulative_output: o.submission.cumulative_output,
                        invoice_hash: o.submission.invoice_hash,
                        period_end: o.submission.period_end,
                    },
                )
            })
            .collect();
        let mut instructions = self.preamble.clone();
        instructions.push(ix::settle(
            &self.attestation,
            operator_authority,
            mint,
            &receipts,
        ));
        // Only the tables this transaction uses: each costs bytes.
        let used: Vec<AddressLookupTableAccount> = tables
            .iter()
            .filter(|t| chunk.iter().any(|o| t.addresses.contains(&o.job)))
            .cloned()
            .collect();
        let used = if used.is_empty() {
            tables.iter().take(1).cloned().collect()
        } else {
            used
        };
        alt::v0_message(
            &self.payer,
            &instructions,
            &used,
            solana_hash::Hash::default(),
        )
        .map_err(|source| OracleError::Compile {
            what: "a settle transaction",
            source,
        })
    }
}

/// The transactions that make or extend one lookup table, in turn.
struct TableSteps {
    key: Pubkey,
    transactions: Vec<Vec<anchor_lang::solana_program::instruction::Instruction>>,
}

/// Where the jobs of a round's groups go that no active table of theirs holds yet.
struct TablePlan {
    /// Per table of ours with room: the addresses to add.
    extend: HashMap<Pubkey, Vec<Pubkey>>,
    /// New tables: (group, addresses).
    create: Vec<((Pubkey, Pubkey), Vec<Pubkey>)>,
}

impl TablePlan {
    fn of(
        tables: &[ManagedTable],
        groups: &BTreeMap<(Pubkey, Pubkey), Vec<Outgoing>>,
        me: Pubkey,
        day: u32,
    ) -> Self {
        let mut plan = Self {
            extend: HashMap::new(),
            create: Vec::new(),
        };
        for ((op, mint), items) in groups {
            let (op_text, mint_text) = (op.to_string(), mint.to_string());
            let in_group = |t: &ManagedTable| {
                t.row.operator == op_text
                    && t.row.mint == mint_text
                    && t.state.as_ref().is_some_and(LookupTableState::is_active)
            };
            let missing: Vec<Pubkey> = items
                .iter()
                .map(|o| o.job)
                .filter(|job| {
                    !tables
                        .iter()
                        .filter(|t| in_group(t))
                        .any(|t| t.state.as_ref().is_some_and(|s| s.addresses.contains(job)))
                })
                .collect();
            let mut missing = missing.into_iter().peekable();
            for t in tables
                .iter()
                .filter(|t| in_group(t) && t.row.authority == me.to_string())
            {
                let room = alt::TABLE_CAPACITY
                    .saturating_sub(t.state.as_ref().map_or(0, |s| s.addresses.len()));
                let take: Vec<Pubkey> = missing.by_ref().take(room).collect();
                if !take.is_empty() {
                    plan.extend.entry(t.key).or_default().extend(take);
                }
                if missing.peek().is_none() {
                    break;
                }
            }
            let rest: Vec<Pubkey> = missing.collect();
            for jobs in rest.chunks(TABLE_JOBS) {
                let mut addresses = alt::settlement_addresses(op, mint, day, &[]);
                addresses.retain(|a| *a != tally::ID); // a program id is never looked up
                addresses.extend_from_slice(jobs);
                plan.create.push(((*op, *mint), addresses));
            }
        }
        plan
    }
}

/// Each group's active tables.
fn group_views(
    tables: &[ManagedTable],
    groups: &BTreeMap<(Pubkey, Pubkey), Vec<Outgoing>>,
) -> HashMap<(Pubkey, Pubkey), Vec<ManagedView>> {
    let mut out = HashMap::new();
    for (op, mint) in groups.keys() {
        let (op_text, mint_text) = (op.to_string(), mint.to_string());
        let views = tables
            .iter()
            .filter(|t| t.row.operator == op_text && t.row.mint == mint_text)
            .filter_map(|t| {
                t.state
                    .as_ref()
                    .filter(|s| s.is_active())
                    .map(|s| ManagedView {
                        key: t.key,
                        state: s.clone(),
                    })
            })
            .collect();
        out.insert((*op, *mint), views);
    }
    out
}

/// Which of our tables are done with (indices into the managed tables).
struct TableChores {
    /// Active, and no job in them may settle any more (one that ended stays on
    /// chain while disputable, but settles nothing more).
    deactivate: Vec<usize>,
    /// Deactivated, and past the cool-down: closed for their rent.
    close: Vec<usize>,
}

impl TableChores {
    fn of(
        chain: &impl Chain,
        tables: &[ManagedTable],
        me: Pubkey,
        slot: u64,
    ) -> Result<Self, OracleError> {
        let mut chores = Self {
            deactivate: Vec::new(),
            close: Vec::new(),
        };
        for (i, t) in tables.iter().enumerate() {
            if t.row.authority != me.to_string() {
                continue;
            }
            match (&t.row.state, &t.state) {
                (TableState::Active, Some(s)) if s.is_active() => {
                    let read = chain.accounts(&s.addresses)?;
                    let open_job = s.addresses.iter().zip(&read.accounts).any(|(_, a)| {
                        job_of(a.as_ref()).is_some_and(|j| !j.status().is_finished())
                    });
                    if !open_job {
                        chores.deactivate.push(i);
                    }
                }
                (TableState::Deactivated(at), _)
                    if slot > at.saturating_add(alt::DEACTIVATION_COOLDOWN_SLOTS) =>
                {
                    chores.close.push(i);
                }
                _ => {}
            }
        }
        Ok(chores)
    }

    /// The table of the `k`th transaction (deactivations, then closes), and whether
    /// it closes it.
    fn nth(&self, k: usize) -> (usize, bool) {
        match self.deactivate.get(k) {
            Some(&i) => (i, false),
            None => (self.close[k - self.deactivate.len()], true),
        }
    }
}
