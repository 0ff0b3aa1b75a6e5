//! Signed node reports: GPU workers POST one completion record per request to
//! `/v1/reports`, signed with a node key their operator registered on-chain
//! (`tally operator update --node-key`). The oracle checks the signature, checks the
//! key against the job's operator on the chain, and commits the record before it
//! answers. Bad signatures, unknown keys, duplicates and malformed bodies get a clear
//! 4xx and are never counted.
//!
//! The signed message is binary and canonical ([`NodeRecord::message`]), so any
//! language can produce it: the domain tag `tally-node-report-v1\0`, the program id,
//! the job, then each field in order (strings as u16-LE length + UTF-8, integers
//! little-endian).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchor_lang::prelude::Pubkey;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tally::state::{Job, Operator};
use tally_client::chain::Chain;

use crate::http::{error_response, json_response, Body, Shutdown};
use crate::sink::Sink;
use crate::store::{Recorded, UsageRecord};
use crate::OracleError;

/// The endpoint workers POST to.
pub const PATH: &str = "/v1/reports";
/// The name node-report records carry.
pub const SOURCE: &str = "node-report";
/// Domain separation: a report signature can never be mistaken for anything else.
pub const DOMAIN: &[u8] = b"tally-node-report-v1\0";
/// Largest body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// Longest request id or model name.
pub const MAX_TEXT: usize = 128;
/// How far in the future a report's `finished_at` may be (node clocks drift).
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// The `[node_reports]` section: where signed reports are taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReportSettings {
    /// Where the daemon serves `POST /v1/reports`, e.g. `127.0.0.1:8081`.
    pub listen: String,
}

/// What a worker reports about one completed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// The job's account address (base58).
    pub job: String,
    /// Unique per job: a retried report of the same request is a duplicate.
    pub request_id: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub gpu_ms: u64,
    /// Unix seconds the request started and finished.
    pub started_at: i64,
    pub finished_at: i64,
}

/// A report as POSTed: the record, the node key and its signature (both base58).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReport {
    #[serde(flatten)]
    pub record: NodeRecord,
    pub node_key: String,
    pub signature: String,
}

fn push_text(out: &mut Vec<u8>, text: &str) {
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..usize::from(len)]);
}

impl NodeRecord {
    /// The canonical bytes a node signs. `job` is the decoded address.
    pub fn message(&self, job: &Pubkey) -> Vec<u8> {
        let mut out = Vec::with_capacity(DOMAIN.len() + 64 + 48 + self.request_id.len());
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(tally::ID.as_ref());
        out.extend_from_slice(job.as_ref());
        push_text(&mut out, &self.request_id);
        push_text(&mut out, &self.model);
        for v in [self.prompt_tokens, self.completion_tokens, self.gpu_ms] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.started_at.to_le_bytes());
        out.extend_from_slice(&self.finished_at.to_le_bytes());
        out
    }

    /// Signs the record with a node key (ed25519-dalek; a Solana keypair's first 32
    /// bytes are its secret key).
    pub fn sign(self, key: &SigningKey) -> Result<SignedReport, ReportError> {
        let job = parse_key(&self.job, "job")?;
        let signature = key.sign(&self.message(&job));
        Ok(SignedReport {
            node_key: Pubkey::from(key.verifying_key().to_bytes()).to_string(),
            signature: bs58::encode(signature.to_bytes()).into_string(),
            record: self,
        })
    }
}

/// Why a report was refused: each maps to one HTTP status and one metrics label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("malformed report: {0}")]
    Malformed(String),
    #[error("{0}")]
    ClockSkew(String),
    #[error("the signature does not verify for node key {0}: sign NodeRecord::message (domain tag, program id, job, fields in order) with that key")]
    BadSignature(String),
    #[error("job {0} does not exist on this cluster (never opened, or already ended): its usage cannot be billed")]
    UnknownJob(String),
    #[error("node key {key} is not registered to operator {operator} of job {job}: the operator adds it with `tally operator update --node-key {key}`")]
    UnknownKey {
        key: String,
        operator: String,
        job: String,
    },
    #[error("job {job} pays for model sha256:{paid}, not `{model}`: report only usage of the model the job pays for")]
    WrongModel {
        job: String,
        model: String,
        paid: String,
    },
    #[error("request {request_id} of job {job} is already recorded: it is counted once")]
    Duplicate { job: String, request_id: String },
    #[error(transparent)]
    MeteredElsewhere(#[from] crate::meter::MeteredElsewhere),
    #[error("too many reports for jobs this oracle has not seen yet: retry in a second")]
    Busy,
    #[error("metering is unavailable: {0}")]
    Unavailable(String),
}

impl ReportError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Malformed(_) | Self::WrongModel { .. } => StatusCode::BAD_REQUEST,
            Self::ClockSkew(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadSignature(_) => StatusCode::UNAUTHORIZED,
            Self::UnknownKey { .. } | Self::MeteredElsewhere(_) => StatusCode::FORBIDDEN,
            Self::UnknownJob(_) => StatusCode::NOT_FOUND,
            Self::Duplicate { .. } => StatusCode::CONFLICT,
            Self::Busy | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::ClockSkew(_) => "clock_skew",
            Self::BadSignature(_) => "bad_signature",
            Self::UnknownKey { .. } => "unknown_key",
            Self::UnknownJob(_) => "unknown_job",
            Self::WrongModel { .. } => "wrong_model",
            Self::Duplicate { .. } => "duplicate",
            Self::MeteredElsewhere(_) => "metered_elsewhere",
            Self::Busy => "busy",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

fn parse_key(text: &str, what: &str) -> Result<Pubkey, ReportError> {
    text.parse()
        .map_err(|_| ReportError::Malformed(format!("{what} `{text}` is not a base58 public key")))
}

impl SignedReport {
    /// Parses a body and checks everything that needs no chain: shape, field limits,
    /// the clock, the signature. Returns the job and the node key.
    pub fn parse_and_verify(body: &[u8], now: i64) -> Result<(Self, Pubkey, Pubkey), ReportError> {
        if body.len() > MAX_BODY {
            return Err(ReportError::Malformed(format!(
                "the body is {} bytes; one report is at most {MAX_BODY}",
                body.len()
            )));
        }
        let report: Self =
            serde_json::from_slice(body).map_err(|e| ReportError::Malformed(e.to_string()))?;
        let r = &report.record;
        let job = parse_key(&r.job, "job")?;
        let node_key = parse_key(&report.node_key, "node_key")?;
        if r.request_id.is_empty() || r.request_id.len() > MAX_TEXT {
            return Err(ReportError::Malformed(format!(
                "request_id must be 1 to {MAX_TEXT} bytes"
            )));
        }
        if r.model.len() > MAX_TEXT {
            return Err(ReportError::Malformed(format!(
                "model must be at most {MAX_TEXT} bytes"
            )));
        }
        for (name, v) in [
            ("prompt_tokens", r.prompt_tokens),
            ("completion_tokens", r.completion_tokens),
            ("gpu_ms", r.gpu_ms),
        ] {
            if i64::try_from(v).is_err() {
                return Err(ReportError::Malformed(format!(
                    "{name} {v} is out of range"
                )));
            }
        }
        if r.started_at < 0 {
            return Err(ReportError::Malformed(format!(
                "started_at {} is before 1970: send unix seconds",
                r.started_at
            )));
        }
        if r.finished_at < r.started_at {
            return Err(ReportError::Malformed(format!(
                "finished_at {} is before started_at {}",
                r.finished_at, r.started_at
            )));
        }
        if r.finished_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(ReportError::ClockSkew(format!(
                "finished_at {} is {} s ahead of the oracle's clock: check the node's clock (NTP)",
                r.finished_at,
                r.finished_at.saturating_sub(now)
            )));
        }
        let signature_bytes = bs58::decode(&report.signature)
            .into_vec()
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or_else(|| {
                ReportError::Malformed("signature is not a base58 64-byte signature".into())
            })?;
        let verifying = VerifyingKey::from_bytes(&node_key.to_bytes())
            .map_err(|_| ReportError::BadSignature(node_key.to_string()))?;
        verifying
            .verify_strict(&r.message(&job), &Signature::from_bytes(&signature_bytes))
            .map_err(|_| ReportError::BadSignature(node_key.to_string()))?;
        Ok((report, job, node_key))
    }
}

/// Who may report usage for a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSigners {
    /// The operator PDA.
    pub operator: Pubkey,
    pub node_keys: Vec<Pubkey>,
    /// The job's model binding (sha256 of the model's name; zero: any model).
    pub model: [u8; 32],
    /// The job's incarnation (records bound to another one are not its usage).
    pub nonce: u64,
}

/// Where the oracle learns jobs, their operators and node keys (the chain).
pub trait JobDirectory: Send + Sync + 'static {
    /// The job's account; `None` when it does not exist (never opened, or closed).
    fn job(&self, job: &Pubkey) -> Result<Option<Job>, OracleError>;
    /// `None` when the job does not exist or has ended.
    fn signers(&self, job: &Pubkey) -> Result<Option<JobSigners>, OracleError>;
}

/// Reads jobs and operators from any [`Chain`].
impl<C: Chain + Send + 'static> JobDirectory for Mutex<C> {
    fn job(&self, job: &Pubkey) -> Result<Option<Job>, OracleError> {
        let chain = self
            .lock()
            .map_err(OracleError::poisoned("the chain lock"))?;
        let Some(account) = chain.account(job)? else {
            return Ok(None);
        };
        if account.owner != tally::ID {
            return Ok(None);
        }
        Ok(tally_client::ops::decode_job(&account.data))
    }

    fn signers(&self, job: &Pubkey) -> Result<Option<JobSigners>, OracleError> {
        let Some(job_state) = self.job(job)? else {
            return Ok(None);
        };
        // An ended job stays on chain while its share is disputable; it bills nothing.
        if job_state.status().is_finished() {
            return Ok(None);
        }
        let chain = self
            .lock()
            .map_err(OracleError::poisoned("the chain lock"))?;
        let operator: Option<Operator> = chain.anchor_account(&job_state.operator)?;
        Ok(Some(JobSigners {
            operator: job_state.operator,
            node_keys: operator.map(|o| o.node_keys).unwrap_or_default(),
            model: job_state.model,
            nonce: job_state.nonce,
        }))
    }
}

/// How long a job's signers are trusted before the chain is asked again.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// How long a refusal stands without asking the chain again: a key the job's
/// operator did not register, or a job that does not exist. So reports signed by
/// random keys cost at most one lookup per job per this time, and a key registered
/// just now works within it.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Lookups of jobs never seen before, per second (burst: 4 s worth): reports naming
/// random jobs cannot turn into unbounded chain traffic.
pub const NEW_JOB_LOOKUPS_PER_SEC: f64 = 20.0;

/// What the chain said about a job, and when.
struct Known {
    /// `None`: the job does not exist.
    signers: Option<JobSigners>,
    at: Instant,
}

/// The node-report source.
pub struct NodeReports {
    sink: Arc<Sink>,
    directory: Arc<dyn JobDirectory>,
    /// One meter per job (see [`crate::meter`]); `None`: not enforced (no other source).
    meters: Option<Arc<crate::meter::SourceStore>>,
    cache: Mutex<HashMap<Pubkey, Known>>,
    /// Misses are looked up one at a time (each re-checks the cache first).
    lookups: tokio::sync::Mutex<(f64, Instant)>,
    limits: crate::http::Limits,
}

impl NodeReports {
    pub fn new(
        sink: Arc<Sink>,
        directory: Arc<dyn JobDirectory>,
        meters: Option<Arc<crate::meter::SourceStore>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            sink,
            directory,
            meters,
            cache: Mutex::new(HashMap::new()),
            lookups: tokio::sync::Mutex::new((NEW_JOB_LOOKUPS_PER_SEC * 4.0, Instant::now())),
            limits: crate::http::Limits {
                max_body_bytes: MAX_BODY,
                ..crate::http::Limits::default()
            },
        })
    }

    /// Serves `POST /v1/reports` until `shutdown`, then drains.
    pub async fn serve_until(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: Shutdown,
    ) -> std::io::Result<()> {
        let limits = self.limits.clone();
        crate::http::serve(
            listener,
            move |req| Arc::clone(&self).handle(req),
            shutdown,
            &limits,
            None,
        )
        .await
    }

    /// The cached verdict on `node_key` for `job`, if the cache can give one.
    fn cached(&self, job: &Pubkey, node_key: &Pubkey) -> Option<Result<JobSigners, ReportError>> {
        let cache = self.cache.lock().ok()?;
        let known = cache.get(job)?;
        let age = known.at.elapsed();
        match &known.signers {
            Some(signers) if signers.node_keys.contains(node_key) => {
                (age < CACHE_TTL).then(|| Ok(signers.clone()))
            }
            // Refused a moment ago: refused again without asking the chain.
            Some(signers) => (age < NEGATIVE_TTL).then(|| Ok(signers.clone())),
            None => (age < NEGATIVE_TTL).then(|| Err(ReportError::UnknownJob(job.to_string()))),
        }
    }

    async fn signers(&self, job: Pubkey, node_key: &Pubkey) -> Result<JobSigners, ReportError> {
        if let Some(verdict) = self.cached(&job, node_key) {
            return verdict;
        }
        let mut budget = self.lookups.lock().await;
        // Another report may have looked it up while this one waited.
        if let Some(verdict) = self.cached(&job, node_key) {
            return verdict;
        }
        let seen = self.cache.lock().is_ok_and(|c| c.contains_key(&job));
        if !seen {
            let now = Instant::now();
            budget.0 = (budget.0
                + now.duration_since(budget.1).as_secs_f64() * NEW_JOB_LOOKUPS_PER_SEC)
                .min(NEW_JOB_LOOKUPS_PER_SEC * 4.0);
            budget.1 = now;
            if budget.0 < 1.0 {
                return Err(ReportError::Busy);
            }
            budget.0 -= 1.0;
        }
        let directory = Arc::clone(&self.directory);
        let found = tokio::task::spawn_blocking(move || directory.signers(&job))
            .await
            .map_err(|e| ReportError::Unavailable(e.to_string()))?
            .map_err(|e| ReportError::Unavailable(format!("cannot read the chain: {e}")))?;
        drop(budget);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= 10_000 {
                cache.retain(|_, k| k.signers.is_some() || k.at.elapsed() < NEGATIVE_TTL);
            }
            cache.insert(
                job,
                Known {
                    signers: found.clone(),
                    at: Instant::now(),
                },
            );
        }
        found.ok_or_else(|| ReportError::UnknownJob(job.to_string()))
    }

    /// Checks and commits one report body.
    pub async fn accept(&self, body: &[u8]) -> Result<UsageRecord, ReportError> {
        let (report, job, node_key) = SignedReport::parse_and_verify(body, self.sink.clock.now())?;
        let r = report.record;
        let record = UsageRecord {
            job: r.job,
            job_nonce: None,
            request_id: r.request_id,
            model: r.model,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            gpu_ms: r.gpu_ms,
            finished_at: r.finished_at,
            source: SOURCE.into(),
            ..UsageRecord::default()
        };
        self.admit(job, node_key, record, None).await
    }

    /// Checks a record signed by `signer` (its signature already verified) against
    /// the chain — the key is one of the job's operator's node keys, the job is live,
    /// of the record's incarnation, and pays for its model — claims the job's meter
    /// for the record's source, then commits it: first `evidence` (the signer and its
    /// signature, kept beside the record), then the record itself.
    pub async fn admit(
        &self,
        job: Pubkey,
        signer: Pubkey,
        record: UsageRecord,
        evidence: Option<crate::store::Evidence>,
    ) -> Result<UsageRecord, ReportError> {
        let signers = self.signers(job, &signer).await?;
        if !signers.node_keys.contains(&signer) {
            return Err(ReportError::UnknownKey {
                key: signer.to_string(),
                operator: signers.operator.to_string(),
                job: job.to_string(),
            });
        }
        if record.job_nonce.is_some_and(|n| n != signers.nonce) {
            return Err(ReportError::UnknownJob(format!(
                "{job} (incarnation {}; it is now {})",
                record.job_nonce.unwrap_or_default(),
                signers.nonce
            )));
        }
        if signers.model != [0; 32] && tally_client::model_hash(&record.model) != signers.model {
            return Err(ReportError::WrongModel {
                job: job.to_string(),
                model: record.model.clone(),
                paid: tally_client::model_label(&signers.model),
            });
        }
        if let Some(meters) = &self.meters {
            meters
                .claim(&job.to_string(), &record.source)
                .await
                .map_err(|e| ReportError::Unavailable(e.to_string()))??;
            if let Some(evidence) = evidence {
                meters
                    .save_evidence(evidence)
                    .await
                    .map_err(|e| ReportError::Unavailable(e.to_string()))?;
            }
        }
        self.commit(record).await
    }

    async fn commit(&self, record: UsageRecord) -> Result<UsageRecord, ReportError> {
        let sink = Arc::clone(&self.sink);
        let committed = record.clone();
        let recorded = tokio::task::spawn_blocking(move || sink.commit(&committed))
            .await
            .map_err(|e| ReportError::Unavailable(e.to_string()))?
            .map_err(|e| ReportError::Unavailable(e.to_string()))?;
        match recorded {
            Recorded::New => Ok(record),
            Recorded::Duplicate => Err(ReportError::Duplicate {
                job: record.job,
                request_id: record.request_id,
            }),
        }
    }

    /// The clock records are stamped by.
    pub fn now(&self) -> i64 {
        self.sink.clock.now()
    }

    /// Counts a refused record of `source`.
    pub fn rejected(&self, source: &str, reason: &str) {
        self.sink.rejected(source, reason);
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() != PATH {
            return error_response(
                StatusCode::NOT_FOUND,
                &format!(
                    "{} is not an endpoint: POST reports to {PATH}",
                    req.uri().path()
                ),
            );
        }
        if req.method() != hyper::Method::POST {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{PATH} takes POST"),
            );
        }
        let (parts, body) = req.into_parts();
        let body = match crate::http::read_body(&parts.headers, body, &self.limits).await {
            Ok(body) => body,
            Err(e) => {
                self.sink.rejected(SOURCE, "malformed");
                return error_response(
                    e.status(),
                    &format!("could not read the report (at most {MAX_BODY} bytes): {e}"),
                );
            }
        };
        match self.accept(&body).await {
            Ok(record) => json_response(
                StatusCode::CREATED,
                &json!({ "recorded": true, "job": record.job, "request_id": record.request_id }),
            ),
            Err(e) => {
                if !matches!(e, ReportError::Duplicate { .. }) {
                    self.sink.rejected(SOURCE, e.reason());
                }
                error_response(e.status(), &e.to_string())
            }
        }
    }
}
