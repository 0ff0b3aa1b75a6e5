//! Gateway records as quorum evidence. A request metered by one oracle's gateway is
//! seen by that oracle alone; for the others to co-sign its receipt, each must hold
//! the record itself, and hold it on evidence it checks alone, never on another
//! oracle's word. So a quorum member's gateway signs every record it commits with a
//! gateway key (`[gateway] signing_key`) that the gateway's operator registered on
//! chain for this purpose as one of its node keys (`tally operator update --node-key
//! <gateway key>`), and sends it to every peer (`POST /quorum/v1/records` on their
//! admin listeners). A peer checks the record exactly as it checks a worker's signed
//! node report: the signature over the record's canonical bytes ([`message`]), the
//! key against the job's operator on chain, the job live and of the record's
//! incarnation, its model. It keeps the signature beside the record (the store's
//! `evidence`) and the record as its own copy, byte for byte the line the leader's
//! invoice carries.
//!
//! **The outbox is the records table.** What a peer has been sent is a cursor over
//! this oracle's own gateway records (`forwarded`), moved only once the peer has
//! answered for them, so a record committed before a crash is sent after it, and a
//! peer that is down gets everything when it returns. Records that came from another
//! oracle's gateway (those with evidence) are never sent on: each gateway speaks for
//! itself. Sending twice is harmless (the peer answers `duplicate`).
//!
//! A peer's refusal that time can heal — busy, its store unavailable, the key not
//! registered yet, a job its RPC node does not show yet (for
//! [`UNKNOWN_JOB_GRACE_SECS`]), a clock ahead — holds the cursor and is retried; one
//! that cannot (a record of a model the job does not pay for, a job metered by node
//! reports there) is counted, logged and passed. Either way the record stays in this
//! oracle's store; a receipt for it settles only if another oracle holds it too.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchor_lang::prelude::Pubkey;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::http::{error_response, json_response, Body, Shutdown};
use crate::node_report::{NodeReports, ReportError, MAX_CLOCK_SKEW_SECS};
use crate::store::{Evidence, Store, UsageRecord};
use crate::telemetry::{self, Telemetry};
use crate::OracleError;

/// Where a peer takes gateway records (on its admin listener).
pub const RECORDS_PATH: &str = "/quorum/v1/records";
/// Domain separation: a record signature is never mistaken for anything else.
pub const DOMAIN: &[u8] = b"tally-gateway-record-v1\0";
/// Most records in one POST.
pub const MAX_RECORDS: usize = 256;
/// Longest text field of a record, bytes.
pub const MAX_FIELD: usize = 1024;
/// How long a peer's "no such job" is taken for its RPC node lagging behind the
/// chain (the record is sent again) rather than the job being gone (it is passed).
pub const UNKNOWN_JOB_GRACE_SECS: i64 = 120;
/// How long a peer that did not answer is left alone, at most.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

fn push_text(out: &mut Vec<u8>, text: &str) {
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..usize::from(len)]);
}

/// The canonical bytes a gateway signs for `record` of `job` (its decoded address):
/// the domain tag, the program id, the job, the incarnation (a 0 byte, or 1 and the
/// nonce), then every field in order — strings as u16-LE length and UTF-8, integers
/// little-endian.
pub fn message(record: &UsageRecord, job: &Pubkey) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 160 + record.request_id.len());
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(tally::ID.as_ref());
    out.extend_from_slice(job.as_ref());
    match record.job_nonce {
        Some(nonce) => {
            out.push(1);
            out.extend_from_slice(&nonce.to_le_bytes());
        }
        None => out.push(0),
    }
    push_text(&mut out, &record.request_id);
    push_text(&mut out, &record.model);
    for v in [
        record.prompt_tokens,
        record.completion_tokens,
        record.gpu_ms,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&record.finished_at.to_le_bytes());
    for text in [
        &record.source,
        &record.upstream_id,
        &record.counted_by,
        &record.key_id,
    ] {
        push_text(&mut out, text);
    }
    out
}

/// A gateway record with its gateway's key and signature (both base58).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRecord {
    pub record: UsageRecord,
    pub signer: String,
    pub signature: String,
}

fn malformed(what: impl Into<String>) -> ReportError {
    ReportError::Malformed(what.into())
}

impl SignedRecord {
    /// Signs `record` with the gateway key.
    pub fn sign(record: UsageRecord, key: &SigningKey) -> Result<Self, ReportError> {
        let job: Pubkey = record
            .job
            .parse()
            .map_err(|_| malformed(format!("job `{}` is not a public key", record.job)))?;
        let signature = key.sign(&message(&record, &job));
        Ok(Self {
            record,
            signer: Pubkey::from(key.verifying_key().to_bytes()).to_string(),
            signature: bs58::encode(signature.to_bytes()).into_string(),
        })
    }

    /// Checks what needs no chain — a gateway record, its fields' sizes, the clock,
    /// the signature — and returns the job and the signer.
    pub fn verify(&self, now: i64) -> Result<(Pubkey, Pubkey), ReportError> {
        let r = &self.record;
        if r.source != crate::gateway::SOURCE {
            return Err(malformed(format!(
                "source `{}`: only gateway records travel between oracles (workers post node reports to each)",
                r.source
            )));
        }
        let job: Pubkey = r
            .job
            .parse()
            .map_err(|_| malformed(format!("job `{}` is not a public key", r.job)))?;
        let signer: Pubkey = self
            .signer
            .parse()
            .map_err(|_| malformed(format!("signer `{}` is not a public key", self.signer)))?;
        let texts = [
            &r.request_id,
            &r.model,
            &r.upstream_id,
            &r.counted_by,
            &r.key_id,
        ];
        if r.request_id.is_empty() || texts.iter().any(|t| t.len() > MAX_FIELD) {
            return Err(malformed(format!(
                "request_id must be 1 to {MAX_FIELD} bytes, other text fields at most {MAX_FIELD}"
            )));
        }
        let counts = [r.prompt_tokens, r.completion_tokens, r.gpu_ms];
        if counts.iter().any(|v| i64::try_from(*v).is_err()) || r.finished_at < 0 {
            return Err(malformed("a count or the time is out of range"));
        }
        if r.finished_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(ReportError::ClockSkew(format!(
                "finished_at {} is {} s ahead of this oracle's chain clock",
                r.finished_at,
                r.finished_at - now
            )));
        }
        let signature = bs58::decode(&self.signature)
            .into_vec()
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or_else(|| malformed("signature is not a base58 64-byte signature"))?;
        VerifyingKey::from_bytes(&signer.to_bytes())
            .and_then(|key| {
                key.verify_strict(&message(r, &job), &Signature::from_bytes(&signature))
            })
            .map_err(|_| ReportError::BadSignature(signer.to_string()))?;
        Ok((job, signer))
    }
}

/// What a gateway POSTs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub records: Vec<SignedRecord>,
}

/// The peer's answer for one record, in the order sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub request_id: String,
    /// `recorded`, `duplicate` or `refused`.
    pub outcome: String,
    /// A refusal's label (as in `tally_oracle_records_rejected_total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Checks and commits one signed record: the signature, then the chain.
async fn receive_one(reports: &NodeReports, sent: SignedRecord) -> Outcome {
    let request_id = sent.record.request_id.clone();
    let admitted = match sent.verify(reports.now()) {
        Ok((job, key)) => {
            let evidence = Evidence {
                job: sent.record.job.clone(),
                request_id: request_id.clone(),
                signer: sent.signer,
                signature: sent.signature,
            };
            reports.admit(job, key, sent.record, Some(evidence)).await
        }
        Err(e) => Err(e),
    };
    let (outcome, refusal) = match admitted {
        Ok(_) => ("recorded", None),
        Err(ReportError::Duplicate { .. }) => ("duplicate", None),
        Err(e) => {
            reports.rejected(crate::gateway::SOURCE, e.reason());
            ("refused", Some(e))
        }
    };
    Outcome {
        request_id,
        outcome: outcome.into(),
        reason: refusal.as_ref().map(|e| e.reason().to_string()),
        message: refusal.map(|e| e.to_string()),
    }
}

/// Serves `POST /quorum/v1/records`: each record checked and committed in turn,
/// answered one [`Outcome`] each.
pub async fn handle(
    request: hyper::Request<hyper::body::Incoming>,
    reports: Arc<NodeReports>,
) -> Response<Body> {
    if request.method() != hyper::Method::POST {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("gateway records are POSTed to {RECORDS_PATH}"),
        );
    }
    let limits = crate::http::Limits::default();
    let (parts, body) = request.into_parts();
    let body = match crate::http::read_body(&parts.headers, body, &limits).await {
        Ok(body) => body,
        Err(e) => return error_response(e.status(), &e.to_string()),
    };
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("not a batch of signed gateway records ({{\"records\": [...]}}): {e}"),
            )
        }
    };
    if batch.records.len() > MAX_RECORDS {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "{} records in one batch; send at most {MAX_RECORDS}",
                batch.records.len()
            ),
        );
    }
    let mut outcomes = Vec::with_capacity(batch.records.len());
    for sent in batch.records {
        outcomes.push(receive_one(&reports, sent).await);
    }
    json_response(StatusCode::OK, &serde_json::json!({ "outcomes": outcomes }))
}

/// Whether a peer's refusal may heal with time (the record is sent again).
fn heals(outcome: &Outcome, record: &UsageRecord, now: i64) -> bool {
    match outcome.reason.as_deref() {
        Some("busy" | "unavailable" | "unknown_key" | "clock_skew") => true,
        Some("unknown_job") => record.finished_at > now - UNKNOWN_JOB_GRACE_SECS,
        _ => false,
    }
}

/// Sends this oracle's gateway records to its peers (see the module doc).
pub struct Forwarder {
    store: Arc<Mutex<Store>>,
    key: SigningKey,
    peers: Vec<(Pubkey, String)>,
    http: reqwest::Client,
    telemetry: Arc<Telemetry>,
    clock: Arc<crate::clock::ChainClock>,
    /// The wait between passes with nothing to send.
    idle: Duration,
}

impl Forwarder {
    /// Sends `store`'s own gateway records to `peers`, signed with `key` (a Solana
    /// keypair: its first 32 bytes are the ed25519 secret).
    pub fn new(
        store: Store,
        key: &solana_keypair::Keypair,
        peers: &super::Peers,
        telemetry: Arc<Telemetry>,
        clock: Arc<crate::clock::ChainClock>,
    ) -> Result<Self, OracleError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| OracleError::Setup {
                what: "build the record forwarder's HTTP client",
                source: e.into(),
            })?;
        let secret: [u8; 32] = key.to_bytes()[..32]
            .try_into()
            .map_err(|_| OracleError::Setup {
                what: "read the gateway key",
                source: "not an ed25519 keypair".into(),
            })?;
        Ok(Self {
            store: Arc::new(Mutex::new(store)),
            key: SigningKey::from_bytes(&secret),
            peers: peers.each().to_vec(),
            http,
            telemetry,
            clock,
            idle: Duration::from_millis(200),
        })
    }

    /// The gateway key's public half: what the operator registers.
    pub fn signer(&self) -> Pubkey {
        Pubkey::from(self.key.verifying_key().to_bytes())
    }

    /// Runs one loop per peer until `shutdown`; each makes a last pass on the way out.
    pub async fn forward_until(self, shutdown: Shutdown) -> Result<(), OracleError> {
        let this = Arc::new(self);
        let loops: Vec<_> = (0..this.peers.len())
            .map(|i| tokio::spawn(Arc::clone(&this).serve_peer(i, shutdown.clone())))
            .collect();
        for task in loops {
            task.await.map_err(|source| OracleError::Task {
                task: "forwarding gateway records".into(),
                source,
            })?;
        }
        Ok(())
    }

    async fn serve_peer(self: Arc<Self>, i: usize, mut shutdown: Shutdown) {
        let (peer, url) = self.peers[i].clone();
        let mut backoff = self.idle;
        loop {
            let stopping = *shutdown.borrow();
            let wait = match self.forward_to(&peer, &url).await {
                Ok(true) if !stopping => Duration::ZERO,
                Ok(_) => {
                    backoff = self.idle;
                    self.idle
                }
                Err(reason) => {
                    tracing::warn!(%peer, "gateway records not delivered: {reason}");
                    self.telemetry
                        .inc(telemetry::QUORUM_FORWARD_FAILURES, &peer_label(&peer), 1);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    backoff
                }
            };
            if stopping {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = shutdown.changed() => {
                    // The daemon is gone without saying stop: nothing to wait for.
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// One batch to `peer`: Ok(true) when more may wait.
    async fn forward_to(&self, peer: &Pubkey, url: &str) -> Result<bool, String> {
        let (store, peer_text) = (Arc::clone(&self.store), peer.to_string());
        let limit = i64::try_from(MAX_RECORDS).unwrap_or(i64::MAX);
        let records =
            blocking(move || lock(&store)?.outbox(crate::gateway::SOURCE, &peer_text, limit))
                .await?;
        if records.is_empty() {
            return Ok(false);
        }
        let batch = Batch {
            records: records
                .iter()
                .map(|(_, r)| SignedRecord::sign(r.clone(), &self.key))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
        };
        let outcomes = self.post(url, &batch).await?;
        if outcomes.len() != records.len() {
            return Err(format!(
                "{} answers for {} records",
                outcomes.len(),
                records.len()
            ));
        }
        let (through, sent) = self.account(peer, &records, &outcomes);
        if let Some(id) = through {
            let (store, peer_text) = (Arc::clone(&self.store), peer.to_string());
            blocking(move || lock(&store)?.forwarded(&peer_text, id)).await?;
        }
        Ok(sent == records.len() && records.len() == MAX_RECORDS)
    }

    async fn post(&self, url: &str, batch: &Batch) -> Result<Vec<Outcome>, String> {
        #[derive(Deserialize)]
        struct Answer {
            outcomes: Vec<Outcome>,
        }
        let response = self
            .http
            .post(format!("{url}{RECORDS_PATH}"))
            .json(batch)
            .send()
            .await
            .map_err(|e| format!("{url} unreachable: {e}"))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{url} answered {status}: {text}"));
        }
        serde_json::from_str::<Answer>(&text)
            .map(|a| a.outcomes)
            .map_err(|e| format!("{url} answered something else: {e}"))
    }

    /// How far the peer now holds this oracle's records (the last id before the
    /// first refusal that may heal), and how many records that passes; counts and
    /// logs what it refused for good.
    fn account(
        &self,
        peer: &Pubkey,
        records: &[(i64, UsageRecord)],
        outcomes: &[Outcome],
    ) -> (Option<i64>, usize) {
        let now = self.clock.now();
        let label = peer_label(peer);
        let mut through = None;
        let mut sent = 0;
        for ((id, record), outcome) in records.iter().zip(outcomes) {
            if outcome.outcome == "refused" {
                let reason = outcome.reason.as_deref().unwrap_or("unknown");
                let message = outcome.message.as_deref().unwrap_or("");
                if heals(outcome, record, now) {
                    tracing::info!(%peer, request_id = %record.request_id, "peer refused a gateway record for now ({reason}): {message}; sending it again");
                    break;
                }
                tracing::warn!(%peer, request_id = %record.request_id, "peer refused a gateway record ({reason}): {message}; it will not co-sign a receipt for it");
                self.telemetry.inc(
                    telemetry::QUORUM_FORWARD_REFUSED,
                    &format!("{label},reason=\"{reason}\""),
                    1,
                );
            }
            through = Some(*id);
            sent += 1;
        }
        self.telemetry
            .inc(telemetry::QUORUM_FORWARDED, &label, sent as u64);
        (through, sent)
    }
}

fn peer_label(peer: &Pubkey) -> String {
    format!("peer=\"{peer}\"")
}

fn lock(store: &Mutex<Store>) -> Result<std::sync::MutexGuard<'_, Store>, OracleError> {
    store
        .lock()
        .map_err(OracleError::poisoned("the forwarder's store lock"))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OracleError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

impl crate::source::Source for Forwarder {
    fn name(&self) -> &'static str {
        "quorum-forwarder"
    }

    fn run(self: Box<Self>, shutdown: Shutdown) -> crate::source::Running {
        Box::pin((*self).forward_until(shutdown))
    }
}
