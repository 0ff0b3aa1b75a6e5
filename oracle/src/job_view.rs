//! Pre-authorization: the gateway's view of each job it serves, so nothing is served
//! that the job cannot pay.
//!
//! A job's view holds what the chain says (client, nonce, operator, status, deadline,
//! price, escrow left, spend cap) and what this oracle metered for it that no
//! confirmed receipt covers yet (read from the store, plus the gateway's own commits
//! since). From those: what the job can still pay = escrow left − (units metered but
//! not yet settled × price) − what requests in flight have reserved. Per-key spend is
//! read from the store when a key is first seen, then kept from this process's commits.
//!
//! **Every request reserves its maximum cost before it is forwarded** (the gateway
//! computes it: for token jobs the prompt bound at the input price and `n ×
//! max_tokens` at the output price; usage metered and not yet settled counts at the
//! higher price, as the store sums it without the split), and is
//! refused with `402` when that does not fit. The reservation becomes the request's
//! real usage when its record commits, or is released when it fails. So a burst of
//! requests, however parallel, cannot spend more than the escrow: the only overspend
//! left is a request whose upstream reports more than its maximum (an upstream that
//! ignores `max_tokens`, or a prompt with more tokens than bytes), by that excess.
//!
//! The view is read again in the background once it is half the `refresh` interval
//! old, and before a request uses it once it is older than `refresh` (so steady
//! traffic never waits for the chain, and a quiet job's next request sees the chain
//! as it is); at once (at most every [`FORCED_REFRESH`]) before a request is refused
//! for want of escrow, so a top-up is seen on the next request. A job closed on chain
//! (completed, cancelled, expired) is refused from the first request after its next
//! read: at most `refresh` after it closed. Lookups of jobs never seen are budgeted
//! (forged keys naming random jobs cost no unbounded RPC), and a job that does not
//! exist is remembered as such for a while.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchor_lang::prelude::Pubkey;
use tally::state::{Job, JobStatus, UnitKind};
use tally_client::Prices;
pub use tally_client::Usage;

use crate::clock::ChainClock;
use crate::meter::{MeteredElsewhere, SourceStore};
use crate::node_report::JobDirectory;
use crate::store::UsageRecord;
use crate::units::Totals;
use crate::OracleError;

/// The least time between two refreshes forced by a refusal.
pub const FORCED_REFRESH: Duration = Duration::from_millis(250);
/// How old a job's view may get, when the chain cannot be read, before its requests
/// are refused.
pub const STALE_LIMIT: Duration = Duration::from_secs(30);
/// How long a job found missing on chain stays refused before it is looked up again.
pub const MISSING_TTL: Duration = Duration::from_secs(10);

/// How the book reads the chain.
#[derive(Clone, Debug)]
pub struct ViewConfig {
    /// Background refresh interval of a job's chain state and store totals.
    pub refresh: Duration,
    /// The operator PDA this gateway works for: jobs with another operator are refused
    /// (their usage would pay someone else). `None`: any operator.
    pub operator: Option<Pubkey>,
    /// Chain lookups of jobs not seen before, per second (burst: 4 s worth).
    pub new_job_lookups_per_sec: u32,
    /// The source name this book claims jobs for.
    pub source: &'static str,
}

/// Why a request cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("job {0} does not exist on this cluster: it was never opened, or it ended (completed, cancelled or expired) and was closed; open a new job (`tally job open …`) and make a key for it")]
    Closed(String),
    #[error("job {job} is with operator {operator}, not with this gateway's operator {ours}: send its requests to its own operator's gateway")]
    OtherOperator {
        job: String,
        operator: String,
        ours: String,
    },
    #[error("job {job} passed its deadline ({deadline}, chain time): usage after it cannot be billed; open a new job")]
    AfterDeadline { job: String, deadline: i64 },
    #[error("job {job} has ended ({status}): it takes no more usage; open a new job (`tally job open …`) and make a key for it")]
    Ended { job: String, status: &'static str },
    #[error("job {job} cannot pay for this request: it has {available} left (escrow {escrow_left}, less {unsettled_units} units metered and not yet settled and what requests in flight reserved), and this request may cost up to {cost} ({max_units} units at up to {price} per million); top it up with `tally job top-up {job} <AMOUNT>`, or ask for fewer tokens (max_tokens)")]
    InsufficientEscrow {
        job: String,
        available: u128,
        escrow_left: u64,
        unsettled_units: u64,
        cost: u128,
        max_units: u64,
        price: u64,
    },
    #[error("this job key may spend {limit} on job {job} and has {left} left; this request may cost up to {cost}: make a new key (`tally job key {job} --limit …`), or ask for fewer tokens (max_tokens)")]
    KeyLimit {
        job: String,
        limit: u64,
        left: u128,
        cost: u128,
    },
    #[error("job {job} is at its spend cap of {cap} per hour: this request may cost up to {cost} and the cap allows {left} more now; retry in {retry_after} s")]
    SpendCap {
        job: String,
        cap: u64,
        left: u128,
        cost: u128,
        retry_after: u64,
    },
    #[error(transparent)]
    MeteredElsewhere(#[from] MeteredElsewhere),
    #[error("too many requests for jobs this gateway has not seen yet: retry in a second")]
    Busy,
    #[error("the job's state cannot be read right now ({0}): retry shortly")]
    Unavailable(String),
}

impl Refused {
    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Closed(_) => "job_closed",
            Self::OtherOperator { .. } => "other_operator",
            Self::AfterDeadline { .. } => "after_deadline",
            Self::Ended { .. } => "job_ended",
            Self::InsufficientEscrow { .. } => "payment_required",
            Self::KeyLimit { .. } => "key_limit",
            Self::SpendCap { .. } => "spend_cap",
            Self::MeteredElsewhere(_) => "metered_elsewhere",
            Self::Busy => "busy",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// A job key's share of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTerms {
    pub id: String,
    /// Most the key may spend (base units); `None`: the escrow.
    pub spend_limit: Option<u64>,
}

#[derive(Clone, Copy)]
struct Base {
    totals: Totals,
    /// Commits with a sequence number at or above this are not in `totals`.
    since: u64,
}

#[derive(Default)]
struct KeySpend {
    base: Option<Base>,
    reserved: u128,
}

struct Commit {
    seq: u64,
    totals: Totals,
    key_id: Option<String>,
}

#[derive(Default)]
struct SlotState {
    /// What the chain said; `None` when the job does not exist.
    job: Option<Job>,
    read_at: Option<Instant>,
    base: Option<Base>,
    commits: Vec<Commit>,
    next_seq: u64,
    reserved: u128,
    keys: HashMap<String, KeySpend>,
    forced_at: Option<Instant>,
    meter_claimed: bool,
    /// A background read is under way.
    reading_ahead: bool,
}

impl SlotState {
    fn totals_since(&self, base: Option<Base>, key: Option<&str>) -> Totals {
        let mut totals = base.map(|b| b.totals).unwrap_or_default();
        let since = base.map_or(0, |b| b.since);
        for commit in self
            .commits
            .iter()
            .filter(|c| c.seq >= since && (key.is_none() || c.key_id.as_deref() == key))
        {
            totals.merge(&commit.totals);
        }
        totals
    }
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// One refresh of a job at a time.
    refreshing: tokio::sync::Mutex<()>,
}

/// A token bucket for lookups of jobs never seen.
struct Budget {
    tokens: f64,
    at: Instant,
}

/// Every job's view.
pub struct JobBook {
    directory: Arc<dyn JobDirectory>,
    store: Arc<SourceStore>,
    clock: Arc<ChainClock>,
    config: ViewConfig,
    slots: Mutex<HashMap<Pubkey, Arc<Slot>>>,
    budget: Mutex<Budget>,
}

/// A request's reserved maximum cost: becomes its usage on [`Reservation::commit`],
/// released when dropped without it.
pub struct Reservation {
    slot: Arc<Slot>,
    cost: u128,
    key_id: Option<String>,
}

impl Reservation {
    /// The request's record committed: its usage replaces its reservation.
    pub fn commit(self, record: &UsageRecord) {
        if let Ok(mut state) = self.slot.state.lock() {
            let seq = state.next_seq;
            state.next_seq = seq.saturating_add(1);
            state.commits.push(Commit {
                seq,
                totals: Totals::of(record),
                key_id: self.key_id.clone(),
            });
        }
        // Drop releases the reservation.
    }

    /// The maximum cost reserved (base units).
    pub fn cost(&self) -> u128 {
        self.cost
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut state) = self.slot.state.lock() {
            state.reserved = state.reserved.saturating_sub(self.cost);
            if let Some(key) = self.key_id.as_ref().and_then(|k| state.keys.get_mut(k)) {
                key.reserved = key.reserved.saturating_sub(self.cost);
            }
        }
    }
}

fn lock_error() -> Refused {
    Refused::Unavailable("a lock is poisoned".into())
}

/// The unit kind of a job (requests when unknown, as the batcher reads it).
pub fn unit_kind(job: &Job) -> UnitKind {
    UnitKind::from_u8(job.unit_kind).unwrap_or(UnitKind::Requests)
}

impl JobBook {
    pub fn new(
        directory: Arc<dyn JobDirectory>,
        store: Arc<SourceStore>,
        clock: Arc<ChainClock>,
        config: ViewConfig,
    ) -> Arc<Self> {
        let burst = f64::from(config.new_job_lookups_per_sec.max(1)) * 4.0;
        Arc::new(Self {
            directory,
            store,
            clock,
            config,
            slots: Mutex::new(HashMap::new()),
            budget: Mutex::new(Budget {
                tokens: burst,
                at: Instant::now(),
            }),
        })
    }

    /// Whether job keys may be taken: only when the book knows which operator's jobs
    /// this gateway may serve.
    pub fn takes_job_keys(&self) -> bool {
        self.config.operator.is_some()
    }

    /// The store the book reads (revocations live there too).
    pub fn store(&self) -> &Arc<SourceStore> {
        &self.store
    }

    fn take_lookup(&self) -> bool {
        let rate = f64::from(self.config.new_job_lookups_per_sec.max(1));
        let Ok(mut budget) = self.budget.lock() else {
            return false;
        };
        let now = Instant::now();
        budget.tokens =
            (budget.tokens + now.duration_since(budget.at).as_secs_f64() * rate).min(rate * 4.0);
        budget.at = now;
        if budget.tokens >= 1.0 {
            budget.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn slot(&self, job: &Pubkey) -> Result<(Arc<Slot>, bool), Refused> {
        let mut slots = self.slots.lock().map_err(|_| lock_error())?;
        if let Some(slot) = slots.get(job) {
            return Ok((Arc::clone(slot), false));
        }
        if slots.len() >= 10_000 {
            // Forget jobs found missing long ago (forged keys for random addresses).
            slots.retain(|_, slot| {
                slot.state.lock().is_ok_and(|s| {
                    s.job.is_some() || s.read_at.is_none_or(|at| at.elapsed() < MISSING_TTL)
                })
            });
        }
        let slot = Arc::new(Slot::default());
        slots.insert(*job, Arc::clone(&slot));
        Ok((slot, true))
    }

    /// Reads the job from the chain and its usage from the store, unless another
    /// request did since `seen` (the read time this one saw), so requests waiting on
    /// one stale view read it once.
    async fn refresh(
        &self,
        job: &Pubkey,
        slot: &Arc<Slot>,
        seen: Option<Instant>,
    ) -> Result<(), Refused> {
        let _one = slot.refreshing.lock().await;
        let (since, new_keys, deadline, nonce) = {
            let state = slot.state.lock().map_err(|_| lock_error())?;
            if state.read_at != seen {
                return Ok(());
            }
            let new_keys = state
                .keys
                .iter()
                .filter(|(_, spend)| spend.base.is_none())
                .map(|(key, _)| key.clone())
                .collect::<Vec<_>>();
            (
                state.next_seq,
                new_keys,
                state.job.map_or(i64::MAX, |j| j.deadline),
                state.job.map(|j| j.nonce),
            )
        };
        // The store before the chain: a receipt that lands in between is then
        // subtracted twice (briefly conservative), never not at all.
        let (unsettled, keys) = self
            .store
            .usage(&job.to_string(), nonce, new_keys, deadline)
            .await
            .map_err(|e| Refused::Unavailable(e.to_string()))?;
        let directory = Arc::clone(&self.directory);
        let address = *job;
        let on_chain = tokio::task::spawn_blocking(move || directory.job(&address))
            .await
            .map_err(|e| Refused::Unavailable(e.to_string()))?
            .map_err(|e| Refused::Unavailable(format!("cannot read the chain: {e}")))?;
        let mut state = slot.state.lock().map_err(|_| lock_error())?;
        state.job = on_chain;
        state.read_at = Some(Instant::now());
        state.base = Some(Base {
            totals: unsettled,
            since,
        });
        // Keys known before keep their spend: this process's commits up to `since`
        // join their base, as the job's now come from the store.
        let folded: Vec<(String, Totals)> = state
            .keys
            .iter()
            .filter_map(|(key, spend)| {
                let base = spend.base?;
                let mut totals = base.totals;
                for commit in state.commits.iter().filter(|c| {
                    c.seq >= base.since && c.seq < since && c.key_id.as_deref() == Some(key)
                }) {
                    totals.merge(&commit.totals);
                }
                Some((key.clone(), totals))
            })
            .collect();
        for (key, totals) in folded.into_iter().chain(keys) {
            if let Some(spend) = state.keys.get_mut(&key) {
                spend.base = Some(Base { totals, since });
            }
        }
        state.commits.retain(|c| c.seq >= since);
        Ok(())
    }

    /// The job as the chain says: read now if never read, found missing a while ago,
    /// or read longer ago than the refresh interval (so a job closed on chain is
    /// refused from its next request after that interval on). If a re-read fails, a
    /// view younger than [`STALE_LIMIT`] still serves.
    pub async fn job(self: &Arc<Self>, job: &Pubkey) -> Result<Job, Refused> {
        let (slot, new) = self.slot(job)?;
        let (read_at, missing) = {
            let state = slot.state.lock().map_err(|_| lock_error())?;
            (state.read_at, state.job.is_none())
        };
        match read_at {
            None => {
                // First sight: a lookup from the budget (a job being read by another
                // request is waited for, not read twice).
                if new && !self.take_lookup() {
                    if let Ok(mut slots) = self.slots.lock() {
                        slots.remove(job);
                    }
                    return Err(Refused::Busy);
                }
                self.refresh(job, &slot, None).await?;
            }
            Some(at) if missing && at.elapsed() >= MISSING_TTL => {
                if !self.take_lookup() {
                    return Err(Refused::Busy);
                }
                self.refresh(job, &slot, read_at).await?;
            }
            Some(at) if !missing && at.elapsed() >= self.config.refresh => {
                if let Err(e) = self.refresh(job, &slot, read_at).await {
                    if at.elapsed() >= STALE_LIMIT {
                        return Err(e);
                    }
                    tracing::warn!(
                        "job {job}: serving a view {:.1} s old: {e}",
                        at.elapsed().as_secs_f64()
                    );
                }
            }
            Some(at) if !missing && at.elapsed() >= self.config.refresh / 2 => {
                // Read ahead in the background, so steady traffic never waits for the
                // chain: the view is renewed before it goes stale.
                let spawn = {
                    let mut state = slot.state.lock().map_err(|_| lock_error())?;
                    !std::mem::replace(&mut state.reading_ahead, true)
                };
                if spawn {
                    let (book, job, slot) = (Arc::clone(self), *job, Arc::clone(&slot));
                    tokio::spawn(async move {
                        if let Err(e) = book.refresh(&job, &slot, read_at).await {
                            tracing::warn!("reading job {job} ahead: {e}");
                        }
                        if let Ok(mut state) = slot.state.lock() {
                            state.reading_ahead = false;
                        }
                    });
                }
            }
            Some(_) => {}
        }
        let state = slot.state.lock().map_err(|_| lock_error())?;
        state.job.ok_or_else(|| Refused::Closed(job.to_string()))
    }

    /// Reserves the most one request may use of `job` (`bound`: its units and the
    /// output tokens among them, priced at the job's prices) and against the key's
    /// limit, claiming the job's metering for this source on its first request.
    pub async fn admit(
        self: &Arc<Self>,
        job: &Pubkey,
        key: Option<&KeyTerms>,
        bound: Usage,
    ) -> Result<Reservation, Refused> {
        let (slot, _) = self.slot(job)?;
        let mut forced = false;
        for _ in 0..8 {
            let (claimed, key_loaded) = {
                let mut state = slot.state.lock().map_err(|_| lock_error())?;
                let key_loaded = match key {
                    Some(k) => state.keys.entry(k.id.clone()).or_default().base.is_some(),
                    None => true,
                };
                (state.meter_claimed, key_loaded)
            };
            if !claimed {
                self.store
                    .claim(&job.to_string(), self.config.source)
                    .await
                    .map_err(|e| Refused::Unavailable(e.to_string()))??;
                slot.state.lock().map_err(|_| lock_error())?.meter_claimed = true;
            }
            if !key_loaded {
                // A key seen for the first time: what it spent so far (here or on
                // another replica) comes from the store.
                let seen = slot.state.lock().map_err(|_| lock_error())?.read_at;
                self.refresh(job, &slot, seen).await?;
                if slot.state.lock().map_err(|_| lock_error())?.job.is_none() {
                    return Err(Refused::Closed(job.to_string()));
                }
                continue;
            }
            let decision = self.decide(job, &slot, key, bound)?;
            match decision {
                Ok(reservation) => return Ok(reservation),
                Err(refused) => {
                    let retry = matches!(
                        refused,
                        Refused::InsufficientEscrow { .. } | Refused::SpendCap { .. }
                    ) && !forced;
                    let may_force = {
                        let state = slot.state.lock().map_err(|_| lock_error())?;
                        state
                            .forced_at
                            .is_none_or(|at| at.elapsed() >= FORCED_REFRESH)
                    };
                    if !(retry && may_force) {
                        return Err(refused);
                    }
                    // The chain may know better (a top-up): read it once, then decide.
                    forced = true;
                    let seen = {
                        let mut state = slot.state.lock().map_err(|_| lock_error())?;
                        state.forced_at = Some(Instant::now());
                        state.read_at
                    };
                    self.refresh(job, &slot, seen).await?;
                }
            }
        }
        Err(Refused::Unavailable(
            "the job's view kept changing while this request was admitted".into(),
        ))
    }

    /// Reserves `bound`'s cost if the job may take the request now. `Ok(Err(_))`: the
    /// request is refused; `Err(_)`: the view cannot be read.
    fn decide(
        &self,
        job_key: &Pubkey,
        slot: &Arc<Slot>,
        key: Option<&KeyTerms>,
        bound: Usage,
    ) -> Result<Result<Reservation, Refused>, Refused> {
        let mut state = slot.state.lock().map_err(|_| lock_error())?;
        let job_text = job_key.to_string();
        let cost = match self.weigh(&job_text, &state, key, bound) {
            Ok(cost) => cost,
            Err(refused) => return Ok(Err(refused)),
        };
        if let Some(terms) = key {
            state.keys.entry(terms.id.clone()).or_default().reserved += cost;
        }
        state.reserved = state.reserved.saturating_add(cost);
        Ok(Ok(Reservation {
            slot: Arc::clone(slot),
            cost,
            key_id: key.map(|k| k.id.clone()),
        }))
    }

    /// What the request may cost, if the job takes it: the job is open, this
    /// gateway's, before its deadline, and the cost fits the escrow, the spend cap
    /// and the key's limit (checked in that order).
    fn weigh(
        &self,
        job_text: &str,
        state: &SlotState,
        key: Option<&KeyTerms>,
        bound: Usage,
    ) -> Result<u128, Refused> {
        let job = self.serving(job_text, state.job.as_ref())?;
        let now = self.clock.now();
        if now >= job.deadline {
            return Err(Refused::AfterDeadline {
                job: job_text.to_string(),
                deadline: job.deadline,
            });
        }
        let charge = Charge::of(&job, state, bound);
        charge.within_escrow(job_text, &job, state.reserved)?;
        charge.within_spend_cap(job_text, &job, now, state.reserved)?;
        if let Some(terms) = key {
            charge.within_key_limit(job_text, &job, state, terms)?;
        }
        Ok(charge.cost)
    }

    /// The job, if it exists, is with this gateway's operator and takes usage.
    fn serving(&self, job_text: &str, job: Option<&Job>) -> Result<Job, Refused> {
        let Some(&job) = job else {
            return Err(Refused::Closed(job_text.to_string()));
        };
        if let Some(ours) = self.config.operator {
            if job.operator != ours {
                return Err(Refused::OtherOperator {
                    job: job_text.to_string(),
                    operator: job.operator.to_string(),
                    ours: ours.to_string(),
                });
            }
        }
        // Completed and expired jobs stay on chain while their client may still
        // dispute them; they take no more usage.
        if job.status().is_finished() {
            return Err(Refused::Ended {
                job: job_text.to_string(),
                status: match job.status() {
                    JobStatus::Completed => "completed",
                    JobStatus::Cancelled => "cancelled",
                    _ => "expired",
                },
            });
        }
        Ok(job)
    }
}

/// The most one request may cost, next to what its job already owes.
struct Charge {
    kind: UnitKind,
    /// The request at the job's prices (base units).
    cost: u128,
    max_units: u64,
    /// Units metered and not yet settled.
    unsettled_units: u64,
    /// What they cost at the job's higher price.
    committed: u128,
}

impl Charge {
    fn of(job: &Job, state: &SlotState, bound: Usage) -> Self {
        let kind = unit_kind(job);
        // The request at the job's prices; usage already metered at the higher one
        // (the store's usage sums do not split it): never less than it may cost.
        let unsettled_units = state.totals_since(state.base, None).units(kind);
        Self {
            kind,
            cost: cost_of(job.prices(), bound),
            max_units: bound.units,
            unsettled_units,
            committed: cost_at_top(job, unsettled_units),
        }
    }

    /// The escrow left, less what is owed and reserved, covers the request.
    fn within_escrow(&self, job_text: &str, job: &Job, reserved: u128) -> Result<(), Refused> {
        let available = u128::from(job.escrow_left)
            .saturating_sub(self.committed)
            .saturating_sub(reserved);
        if self.cost > available {
            return Err(Refused::InsufficientEscrow {
                job: job_text.to_string(),
                available,
                escrow_left: job.escrow_left,
                unsettled_units: self.unsettled_units,
                cost: self.cost,
                max_units: self.max_units,
                price: job.input_price.max(job.output_price),
            });
        }
        Ok(())
    }

    /// The job's spend cap (if any) allows the request at chain time `now`.
    fn within_spend_cap(
        &self,
        job_text: &str,
        job: &Job,
        now: i64,
        reserved: u128,
    ) -> Result<(), Refused> {
        if job.spend_cap_per_hour == 0 {
            return Ok(());
        }
        // The program refuses receipts that bill faster than
        // cap × (elapsed + 1 h) / 1 h since the job opened.
        let elapsed = u128::try_from(now.saturating_sub(job.opened_at).max(0)).unwrap_or(0);
        let cap = u128::from(job.spend_cap_per_hour);
        let allowed = cap.saturating_mul(elapsed.saturating_add(3_600)) / 3_600;
        let spent = u128::from(job.settled_gross)
            .saturating_add(self.committed)
            .saturating_add(reserved);
        let left = allowed.saturating_sub(spent);
        if self.cost > left {
            let short = self.cost.saturating_sub(left);
            let retry_after =
                u64::try_from(short.saturating_mul(3_600).div_ceil(cap.max(1))).unwrap_or(u64::MAX);
            return Err(Refused::SpendCap {
                job: job_text.to_string(),
                cap: job.spend_cap_per_hour,
                left,
                cost: self.cost,
                retry_after: retry_after.max(1),
            });
        }
        Ok(())
    }

    /// The key's spend limit (if any), less what it spent and reserved, covers the
    /// request.
    fn within_key_limit(
        &self,
        job_text: &str,
        job: &Job,
        state: &SlotState,
        terms: &KeyTerms,
    ) -> Result<(), Refused> {
        let Some(limit) = terms.spend_limit else {
            return Ok(());
        };
        let base = state.keys.get(&terms.id).and_then(|k| k.base);
        let spent = cost_at_top(
            job,
            state.totals_since(base, Some(&terms.id)).units(self.kind),
        );
        let reserved = state.keys.get(&terms.id).map_or(0, |k| k.reserved);
        let left = u128::from(limit)
            .saturating_sub(spent)
            .saturating_sub(reserved);
        if self.cost > left {
            return Err(Refused::KeyLimit {
                job: job_text.to_string(),
                limit,
                left,
                cost: self.cost,
            });
        }
        Ok(())
    }
}

impl std::fmt::Debug for JobBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobBook")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl From<OracleError> for Refused {
    fn from(e: OracleError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// The most `units` of `job` can cost: all at its higher price, rounded up (for
/// usage whose split into input and output is not known).
pub(crate) fn cost_at_top(job: &Job, units: u64) -> u128 {
    let top = job.input_price.max(job.output_price);
    let prices = Prices {
        input: top,
        output: top,
    };
    cost_of(prices, Usage { units, output: 0 })
}

/// What `usage` costs at `prices`, rounded up (a reservation never falls short of
/// what the receipt pays).
fn cost_of(prices: Prices, usage: Usage) -> u128 {
    let input = u128::from(usage.units.saturating_sub(usage.output))
        .saturating_mul(u128::from(prices.input));
    let output = u128::from(usage.output).saturating_mul(u128::from(prices.output));
    input
        .saturating_add(output)
        .div_ceil(u128::from(tally_client::PRICE_SCALE))
}
