//! Who may spend a job at the gateway: the holder of a job key signed by the job's
//! client wallet (see [`tally_client::job_key`]), checked against the chain, or of a
//! static API key the operator configured. The job is named by the key and by nothing
//! else: no header, no body field can point a key at another job.
use std::collections::HashSet;
use std::sync::Mutex;

use anchor_lang::prelude::Pubkey;
use ed25519_dalek::{Signature, VerifyingKey};
use hyper::{HeaderMap, StatusCode};
use tally::state::Job;
use tally_client::job_key::JobKey;

/// Who is calling, by its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A job key (verified against the job's client once the job is read).
    JobKey(JobKey),
    /// A static API key the operator issued for `job`.
    Static { job: String },
}

impl Caller {
    /// The job named by the key (text, as configured or encoded).
    pub fn job(&self) -> String {
        match self {
            Self::JobKey(key) => key.claims.job.to_string(),
            Self::Static { job } => job.clone(),
        }
    }
}

/// A refusal: its status, metrics label and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    fn unauthorized(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, reason, message)
    }
}

/// The header that once named a job by itself. It never authorizes anything.
pub const RETIRED_JOB_HEADER: &str = "x-tally-job";

/// The bearer token of a request.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Reads the caller's key. `static_key` looks up static API keys.
pub fn caller(
    headers: &HeaderMap,
    static_key: impl Fn(&str) -> Option<String>,
) -> Result<Caller, Refusal> {
    if headers.contains_key(RETIRED_JOB_HEADER) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "job_header",
            "the X-Tally-Job header is not accepted: the job is the one your key was made for (send only `Authorization: Bearer <key>`; make a key with `tally job key <JOB>`)",
        ));
    }
    let Some(token) = bearer(headers) else {
        return Err(Refusal::unauthorized(
            "no_key",
            "no API key: send `Authorization: Bearer <key>` with a key for your Tally job (`tally job key <JOB>`)",
        ));
    };
    if JobKey::looks_like(token) {
        return JobKey::parse(token)
            .map(Caller::JobKey)
            .map_err(|e| Refusal::unauthorized("malformed_key", e.to_string()));
    }
    static_key(token)
        .map(|job| Caller::Static { job })
        .ok_or_else(|| {
            Refusal::unauthorized(
                "unknown_key",
                "unknown API key: use a key made for your Tally job (`tally job key <JOB>`) or one the operator issued",
            )
        })
}

/// Checks a job key's terms that need no chain: expiry (in the chain's time) and
/// revocation.
pub fn check_terms(key: &JobKey, now: i64, revoked: bool) -> Result<(), Refusal> {
    if now >= key.claims.expires_at {
        return Err(Refusal::unauthorized(
            "key_expired",
            format!(
                "this job key expired at {} (unix seconds, chain time; now {now}): make a new one with `tally job key {}`",
                key.claims.expires_at, key.claims.job
            ),
        ));
    }
    if revoked {
        return Err(Refusal::unauthorized(
            "key_revoked",
            format!(
                "this job key ({}) was revoked: make a new one with `tally job key {}`",
                key.id(),
                key.claims.job
            ),
        ));
    }
    Ok(())
}

/// Keys already verified (a key is used for many requests): whole keys, terms and
/// signature together, so a key whose terms were altered is verified afresh (and fails).
#[derive(Default)]
pub struct Verified(Mutex<HashSet<JobKey>>);

/// How many verified keys are remembered before the memory is cleared.
const VERIFIED_CAPACITY: usize = 65_536;

impl Verified {
    /// Checks that `key` was signed by `job`'s client for this very job (its nonce).
    pub fn check(&self, key: &JobKey, job: &Job) -> Result<(), Refusal> {
        if key.claims.job_nonce != job.nonce {
            return Err(Refusal::unauthorized(
                "key_stale",
                format!(
                    "this job key was made for an earlier job at {} (nonce {}, the job now is nonce {}): make a new one with `tally job key {}`",
                    key.claims.job, key.claims.job_nonce, job.nonce, key.claims.job
                ),
            ));
        }
        if self.0.lock().is_ok_and(|v| v.contains(key)) {
            return Ok(());
        }
        let forged = || {
            Refusal::unauthorized(
                "key_forged",
                format!(
                    "this job key is not signed by the client of job {} ({}): only the wallet that opened the job can make its keys (`tally job key {}` with that wallet)",
                    key.claims.job, job.client, key.claims.job
                ),
            )
        };
        let client = VerifyingKey::from_bytes(&job.client.to_bytes()).map_err(|_| forged())?;
        client
            .verify_strict(
                &key.claims.message(&tally::ID),
                &Signature::from_bytes(&key.signature),
            )
            .map_err(|_| forged())?;
        if let Ok(mut verified) = self.0.lock() {
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
            verified.insert(*key);
        }
        Ok(())
    }
}

/// A job address from a key's or the config's text.
pub fn job_address(text: &str) -> Result<Pubkey, Refusal> {
    text.parse().map_err(|_| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "config",
            format!("the key names `{text}`, which is not a job address: the operator must fix gateway.api_keys"),
        )
    })
}
