//! The sources' own connection to the store, for what they decide before they record:
//! which source meters a job (one meter per job), which job keys are revoked, and how
//! much a job or a key has used. Kept apart from the [`crate::sink::Sink`] (which only
//! commits records) so a slow commit never holds these up, and opened on the same
//! location (a SQLite file in WAL mode takes readers beside its writer; PostgreSQL
//! replicas share the tables).
//!
//! **One meter per job.** The gateway and signed node reports can both see a request
//! that went through the gateway to a worker that also reports it. Billing it twice is
//! prevented by the store: the first source to record a job claims it
//! ([`crate::store::Store::claim_meter`], atomic in the database, so of two sources
//! racing exactly one wins), and the other source's records for that job are refused
//! with that reason from then on.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use crate::clock::ChainClock;
use crate::store::Store;
use crate::units::Totals;
use crate::OracleError;

/// The store, as the sources consult it.
pub struct SourceStore {
    store: Mutex<Store>,
    clock: Arc<ChainClock>,
    /// Job → the source that meters it (claims never change once made).
    meters: Mutex<HashMap<String, String>>,
    /// Revoked job key ids, as last read (and as revoked here since).
    revoked: RwLock<HashSet<String>>,
}

/// Another source meters the job.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("job {job} is metered by {owner} (the first source to record it), so {refused} records for it are refused: one request is never billed twice")]
pub struct MeteredElsewhere {
    pub job: String,
    pub owner: String,
    pub refused: String,
}

fn lock_error() -> OracleError {
    OracleError::Poisoned {
        what: "the source store's lock",
    }
}

impl SourceStore {
    /// Connects to the store at `location` (blocking: call it off the async runtime).
    pub fn open(location: &str, clock: Arc<ChainClock>) -> Result<Arc<Self>, OracleError> {
        let store = Store::connect(location)?;
        let revoked = store.revoked_keys()?.into_iter().collect();
        Ok(Arc::new(Self {
            store: Mutex::new(store),
            clock,
            meters: Mutex::new(HashMap::new()),
            revoked: RwLock::new(revoked),
        }))
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Store) -> Result<T, OracleError> + Send + 'static,
    ) -> Result<T, OracleError> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let store = this.store.lock().map_err(|_| lock_error())?;
            work(&store)
        })
        .await
        .map_err(|source| OracleError::Task {
            task: "a store task".into(),
            source,
        })?
    }

    /// Claims `job` for `source` (see the module doc). `Ok(Err(_))`: another source
    /// meters it.
    pub async fn claim(
        self: &Arc<Self>,
        job: &str,
        source: &str,
    ) -> Result<Result<(), MeteredElsewhere>, OracleError> {
        let known = self
            .meters
            .lock()
            .map_err(|_| lock_error())?
            .get(job)
            .cloned();
        let owner = if let Some(owner) = known {
            owner
        } else {
            let (job_text, source_text, now) =
                (job.to_string(), source.to_string(), self.clock.now());
            let owner = self
                .blocking(move |store| store.claim_meter(&job_text, &source_text, now))
                .await?;
            self.meters
                .lock()
                .map_err(|_| lock_error())?
                .insert(job.to_string(), owner.clone());
            owner
        };
        Ok(if owner == source {
            Ok(())
        } else {
            Err(MeteredElsewhere {
                job: job.to_string(),
                owner,
                refused: source.to_string(),
            })
        })
    }

    /// Keeps the signature behind a record from another oracle's gateway.
    pub async fn save_evidence(
        self: &Arc<Self>,
        evidence: crate::store::Evidence,
    ) -> Result<(), OracleError> {
        self.blocking(move |store| store.save_evidence(&evidence))
            .await
    }

    /// Revokes a job key. Returns whether it was not revoked before.
    pub async fn revoke(self: &Arc<Self>, key_id: &str, job: &str) -> Result<bool, OracleError> {
        let (key, job, now) = (key_id.to_string(), job.to_string(), self.clock.now());
        let fresh = self
            .blocking(move |store| store.revoke_key(&key, &job, now))
            .await?;
        self.revoked
            .write()
            .map_err(|_| lock_error())?
            .insert(key_id.to_string());
        Ok(fresh)
    }

    /// Whether `key_id` is revoked (as of the last [`SourceStore::reload_revoked`] or a
    /// revocation here).
    pub fn is_revoked(&self, key_id: &str) -> bool {
        self.revoked.read().map_or(true, |r| r.contains(key_id))
    }

    /// Re-reads the revocations (other replicas' too).
    pub async fn reload_revoked(self: &Arc<Self>) -> Result<(), OracleError> {
        let revoked: HashSet<String> = self
            .blocking(Store::revoked_keys)
            .await?
            .into_iter()
            .collect();
        *self.revoked.write().map_err(|_| lock_error())? = revoked;
        Ok(())
    }

    /// Up to `limit` invoices of a job incarnation after receipt `after`, in order.
    pub async fn invoices(
        self: &Arc<Self>,
        job: &str,
        job_nonce: u64,
        after: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, OracleError> {
        let job = job.to_string();
        self.blocking(move |store| store.invoices_after(&job, job_nonce, after, limit))
            .await
    }

    /// A job's usage not yet covered by a confirmed receipt (finished by `until`; of
    /// incarnation `job_nonce`, or of every one when the job was not read yet), and
    /// everything each listed key spent.
    pub async fn usage(
        self: &Arc<Self>,
        job: &str,
        job_nonce: Option<u64>,
        keys: Vec<String>,
        until: i64,
    ) -> Result<(Totals, Vec<(String, Totals)>), OracleError> {
        let job = job.to_string();
        self.blocking(move |store| {
            let totals = store.unsettled_usage(&job, job_nonce, until)?;
            let keys = keys
                .into_iter()
                .map(|key| store.key_usage(&key, i64::MAX).map(|t| (key, t)))
                .collect::<Result<_, _>>()?;
            Ok((totals, keys))
        })
        .await
    }
}
