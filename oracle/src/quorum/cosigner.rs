//! The co-signer: checks a leader's proposal against this oracle's own store and the
//! chain, and signs only what they bear out (`POST /quorum/v1/cosign`).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anchor_lang::prelude::Pubkey;
use bytes::Bytes;
use hyper::{Response, StatusCode};
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::state::Job;
use tally_client::SettleReceipt;

use super::catch_up::{catch_up, release_from};
use super::settlement::read_settlement;
use super::{b64, Answer, Peers, Proposal, QuorumView, Signed};
use crate::batcher::{billable, kind_of};
use crate::http::Body;
use crate::invoice::{hex, sha256, Invoice, InvoiceLine};
use crate::store::{NewSubmission, Store, Submission, SubmissionState};
use crate::units::Totals;
use crate::OracleError;
use base64::Engine as _;

/// Why a co-signer does not sign: each has a metrics label ([`Refusal::label`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the proposal does not decode: {0}")]
    Malformed(String),
    #[error("the message is paid by {0}, which is not an oracle of the current set")]
    NotAMember(Pubkey),
    #[error("the message does not ask this oracle ({0}) to sign")]
    NotAsked(Pubkey),
    #[error("the message makes this oracle ({0}) pay its fees: the leader pays its own")]
    PaysFees(Pubkey),
    #[error("the message is not one `settle` of this program (with compute-budget instructions at most)")]
    NotASettlement,
    #[error("the receipts are attested under oracle-set version {proposed}; the set is at version {current}")]
    StaleOracleSet { proposed: u32, current: u32 },
    #[error("receipt {seq} of job {job} has no invoice in the proposal with its hash")]
    MissingInvoice { job: Pubkey, seq: u64 },
    #[error("the invoice of receipt {seq} of job {job} does not match it: {field}")]
    InvoiceMismatch {
        job: Pubkey,
        seq: u64,
        field: &'static str,
    },
    #[error("job {job} does not exist or has ended")]
    NoJob { job: Pubkey },
    #[error("job {job} is at receipt {on_chain} on chain: receipt {seq} is not the next")]
    NotNext {
        job: Pubkey,
        seq: u64,
        on_chain: u64,
    },
    #[error("job {job}: request {request_id} is not waiting in this oracle's store (never reported here, or billed already)")]
    Unseen { job: Pubkey, request_id: String },
    #[error("job {job}: request {request_id} differs from this oracle's record of it")]
    Differs { job: Pubkey, request_id: String },
    #[error("job {job}: receipt {seq} claims {proposed_units} units ({proposed_output} output); this oracle's records support {supported_units} ({supported_output} output)")]
    Inflated {
        job: Pubkey,
        seq: u64,
        proposed_units: u64,
        proposed_output: u64,
        supported_units: u64,
        supported_output: u64,
    },
    #[error("job {job}: receipt {seq} was co-signed here before with another invoice")]
    Conflicting { job: Pubkey, seq: u64 },
    #[error(
        "job {job}: this oracle cannot catch up with the receipts that landed without it: {reason}"
    )]
    Behind { job: Pubkey, reason: String },
    #[error("this oracle cannot check the proposal now: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::NotAMember(_) => "not_a_member",
            Refusal::NotAsked(_) => "not_asked",
            Refusal::PaysFees(_) => "pays_fees",
            Refusal::NotASettlement => "not_a_settlement",
            Refusal::StaleOracleSet { .. } => "stale_oracle_set",
            Refusal::MissingInvoice { .. } => "missing_invoice",
            Refusal::InvoiceMismatch { .. } => "invoice_mismatch",
            Refusal::NoJob { .. } => "no_job",
            Refusal::NotNext { .. } => "not_next",
            Refusal::Unseen { .. } => "unseen_record",
            Refusal::Differs { .. } => "record_differs",
            Refusal::Inflated { .. } => "inflated",
            Refusal::Conflicting { .. } => "conflicting",
            Refusal::Behind { .. } => "behind",
            Refusal::Unavailable(_) => "unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::CONFLICT,
        }
    }
}

impl From<OracleError> for Refusal {
    fn from(e: OracleError) -> Self {
        Refusal::Unavailable(e.to_string())
    }
}

/// An oracle of the set answering leaders' proposals.
pub struct Cosigner {
    /// Counts what it signs and refuses, when set.
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    oracle: Keypair,
    store: Arc<Mutex<Store>>,
    view: Arc<dyn QuorumView>,
    /// Where receipts this oracle did not sign are fetched from, to catch up.
    peers: Peers,
    /// What this oracle signed lately (shared with its batcher).
    signed: Signed,
}

impl Cosigner {
    pub fn new(
        oracle: Keypair,
        store: Arc<Mutex<Store>>,
        view: Arc<dyn QuorumView>,
        peers: Peers,
    ) -> Self {
        Self {
            telemetry: None,
            oracle,
            store,
            view,
            peers,
            signed: Signed::default(),
        }
    }

    /// Sharing `signed` with this oracle's batcher.
    #[must_use]
    pub fn with_signed(mut self, signed: Signed) -> Self {
        self.signed = signed;
        self
    }

    /// Counting its answers in `telemetry`.
    #[must_use]
    pub fn with_telemetry(mut self, telemetry: Arc<crate::telemetry::Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    fn count(&self, refusal: Option<&Refusal>) {
        let Some(telemetry) = &self.telemetry else {
            return;
        };
        match refusal {
            None => telemetry.inc(crate::telemetry::QUORUM_COSIGNED, "", 1),
            Some(r) => telemetry.inc(
                crate::telemetry::QUORUM_REFUSED,
                &format!("reason=\"{}\"", r.label()),
                1,
            ),
        }
    }

    pub fn oracle(&self) -> Pubkey {
        self.oracle.pubkey()
    }

    /// Checks `proposal` against this oracle's own view; on success records each
    /// receipt as pending in its store and returns its signature of the message.
    pub fn review(&self, proposal: &Proposal) -> Result<solana_signature::Signature, Refusal> {
        let me = self.oracle.pubkey();
        let settlement = read_settlement(&proposal.message, |t| self.view.lookup_table(t))?;
        let config = self.view.config()?;
        if !config.oracles.contains(&settlement.proposer) {
            return Err(Refusal::NotAMember(settlement.proposer));
        }
        if !settlement.signers.contains(&me) {
            return Err(Refusal::NotAsked(me));
        }
        // The fee payer is the first signer: a leader must not make a co-signer pay
        // (a priority fee would drain it).
        if settlement.proposer == me {
            return Err(Refusal::PaysFees(me));
        }
        if !config.oracles.contains(&me) {
            return Err(Refusal::NotAMember(me));
        }
        if settlement.oracle_set_version != config.oracle_set_version {
            return Err(Refusal::StaleOracleSet {
                proposed: settlement.oracle_set_version,
                current: config.oracle_set_version,
            });
        }
        let invoices = decode_invoices(&proposal.invoices)?;
        let mut accepted = Vec::with_capacity(settlement.receipts.len());
        let mut signing = Vec::with_capacity(settlement.receipts.len());
        for (job, receipt) in &settlement.receipts {
            let (nonce, submission) = self.check_receipt(job, receipt, &invoices)?;
            accepted.extend(submission);
            signing.push((job.to_string(), nonce, receipt.seq));
        }
        let store = self
            .store
            .lock()
            .map_err(|_| Refusal::Unavailable("the store lock is poisoned".into()))?;
        for submission in &accepted {
            store.write_submission(submission)?;
        }
        for (job, nonce, seq) in &signing {
            self.signed.mark(job, *nonce, *seq);
        }
        Ok(self.oracle.sign_message(&proposal.message.serialize()))
    }

    /// One receipt: its invoice, the chain and this oracle's records. Returns the
    /// job's nonce and the submission to write (none when this oracle co-signed the
    /// same one before).
    fn check_receipt(
        &self,
        job: &Pubkey,
        receipt: &SettleReceipt,
        invoices: &HashMap<[u8; 32], Vec<u8>>,
    ) -> Result<(u64, Option<NewSubmission>), Refusal> {
        let seq = receipt.seq;
        let bytes = invoices
            .get(&receipt.invoice_hash)
            .ok_or(Refusal::MissingInvoice { job: *job, seq })?;
        let invoice: Invoice = serde_json::from_slice(bytes)
            .map_err(|e| Refusal::Malformed(format!("invoice {seq} of job {job}: {e}")))?;
        let state = self
            .view
            .job(job)?
            .filter(|j| !j.status().is_finished())
            .ok_or(Refusal::NoJob { job: *job })?;
        if state.last_seq.saturating_add(1) != seq {
            return Err(Refusal::NotNext {
                job: *job,
                seq,
                on_chain: state.last_seq,
            });
        }
        invoice_matches(job, receipt, &invoice, &state)?;
        let job_text = job.to_string();
        let store = self
            .store
            .lock()
            .map_err(|_| Refusal::Unavailable("the store lock is poisoned".into()))?;
        // Receipts that landed without this oracle are adopted first: their records
        // are billed, whoever co-signed them.
        catch_up(&store, &self.peers, job, &state).map_err(|e| Refusal::Behind {
            job: *job,
            reason: e.to_string(),
        })?;
        let mine: Vec<Submission> = store
            .submissions_of(&job_text)?
            .into_iter()
            .filter(|s| s.job_nonce == state.nonce)
            .collect();
        if let Some(earlier) = mine.iter().find(|s| s.seq == seq) {
            if earlier.invoice_hash == receipt.invoice_hash {
                return Ok((state.nonce, None));
            }
            // Another receipt holds this seq here. While a signature of it may still
            // land, refuse; after that it never will (its seq is still free on
            // chain): give it up for this one.
            if !earlier.is_pending() || self.signed.fresh(&job_text, state.nonce, seq) {
                return Err(Refusal::Conflicting { job: *job, seq });
            }
            release_from(&store, &job_text, state.nonce, seq, &mine)?;
        }
        let waiting: HashMap<String, crate::store::WaitingRecord> = store
            .waiting_records(&job_text, usize::MAX)?
            .into_iter()
            .map(|w| (w.record.request_id.clone(), w))
            .collect();
        let before = store
            .last_submission(&job_text, state.nonce)?
            .map(|s| s.metered)
            .unwrap_or_default();
        drop(store);
        let (record_ids, added, oldest) = supported(job, &state, &invoice.lines, &waiting)?;
        let kind = kind_of(&state);
        let supported_units = state.settled_units.saturating_add(added.units(kind));
        let supported_output = state.settled_output.saturating_add(added.output(kind));
        if receipt.cumulative_units > supported_units
            || receipt.cumulative_output > supported_output
        {
            return Err(Refusal::Inflated {
                job: *job,
                seq,
                proposed_units: receipt.cumulative_units,
                proposed_output: receipt.cumulative_output,
                supported_units,
                supported_output,
            });
        }
        let submission = NewSubmission {
            submission: Submission {
                job: job_text,
                job_nonce: state.nonce,
                seq,
                cumulative_units: receipt.cumulative_units,
                cumulative_output: receipt.cumulative_output,
                invoice_hash: receipt.invoice_hash,
                period_end: receipt.period_end,
                metered: {
                    let mut running = before;
                    running.merge(&added);
                    running
                },
                records: record_ids.len() as u64,
                oldest_finished_at: oldest,
                state: SubmissionState::Pending,
            },
            invoice: bytes.clone(),
            record_ids,
        };
        Ok((state.nonce, Some(submission)))
    }
}

/// The proposal's invoices by their sha256.
fn decode_invoices(encoded: &[String]) -> Result<HashMap<[u8; 32], Vec<u8>>, Refusal> {
    encoded
        .iter()
        .map(|text| {
            let bytes = b64()
                .decode(text)
                .map_err(|e| Refusal::Malformed(format!("an invoice is not base64: {e}")))?;
            Ok((sha256(&bytes), bytes))
        })
        .collect()
}

/// The invoice names the receipt's job, incarnation, seq, totals and period, and
/// follows the invoice hash on chain.
fn invoice_matches(
    job: &Pubkey,
    receipt: &SettleReceipt,
    invoice: &Invoice,
    state: &Job,
) -> Result<(), Refusal> {
    let mismatch = |field| Refusal::InvoiceMismatch {
        job: *job,
        seq: receipt.seq,
        field,
    };
    if invoice.program != tally::ID.to_string() {
        return Err(mismatch("program"));
    }
    if invoice.job != job.to_string() {
        return Err(mismatch("job"));
    }
    if invoice.job_nonce != Some(state.nonce) {
        return Err(mismatch("job_nonce"));
    }
    if invoice.seq != receipt.seq {
        return Err(mismatch("seq"));
    }
    if invoice.cumulative_units != receipt.cumulative_units {
        return Err(mismatch("cumulative_units"));
    }
    if invoice.period_end != receipt.period_end {
        return Err(mismatch("period_end"));
    }
    if invoice.previous_hash != hex(&state.invoice_hash) {
        return Err(mismatch("previous_hash"));
    }
    Ok(())
}

/// The records behind `lines`, each waiting in this oracle's store and identical to
/// its line; returns their ids, what they bill (the batcher's rules: the job's
/// model, finished by its deadline) and when the oldest finished.
fn supported(
    job: &Pubkey,
    state: &Job,
    lines: &[InvoiceLine],
    waiting: &HashMap<String, crate::store::WaitingRecord>,
) -> Result<(Vec<i64>, Totals, Option<i64>), Refusal> {
    let mut ids = Vec::with_capacity(lines.len());
    let mut added = Totals::default();
    let mut oldest: Option<i64> = None;
    for line in lines {
        let mine = waiting
            .get(&line.request_id)
            .filter(|w| w.record.job_nonce.is_none_or(|n| n == state.nonce))
            .ok_or_else(|| Refusal::Unseen {
                job: *job,
                request_id: line.request_id.clone(),
            })?;
        if InvoiceLine::from(&mine.record) != *line || ids.contains(&mine.id) {
            return Err(Refusal::Differs {
                job: *job,
                request_id: line.request_id.clone(),
            });
        }
        ids.push(mine.id);
        oldest = Some(oldest.map_or(mine.record.finished_at, |o| o.min(mine.record.finished_at)));
        if billable(state, &mine.record) {
            added.add(&mine.record);
        }
    }
    Ok((ids, added, oldest))
}

/// Answers a request for [`COSIGN_PATH`] on the admin listener: a proposal, POSTed.
pub async fn handle(
    request: hyper::Request<hyper::body::Incoming>,
    cosigner: Arc<Cosigner>,
) -> Response<Body> {
    if request.method() != hyper::Method::POST {
        return crate::http::error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "proposals are POSTed to /quorum/v1/cosign",
        );
    }
    let limits = crate::http::Limits::default();
    let (parts, body) = request.into_parts();
    match crate::http::read_body(&parts.headers, body, &limits).await {
        Ok(body) => cosign_response(cosigner, body).await,
        Err(e) => crate::http::error_response(e.status(), &e.to_string()),
    }
}

/// Serves `POST /quorum/v1/cosign`: the review runs on a blocking thread (the store
/// and the chain block).
pub async fn cosign_response(cosigner: Arc<Cosigner>, body: Bytes) -> Response<Body> {
    let oracle = cosigner.oracle().to_string();
    let proposal: Proposal = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            let refusal = Refusal::Malformed(e.to_string());
            return answer(refusal.status(), refused(&oracle, &refusal));
        }
    };
    let reviewed = tokio::task::spawn_blocking(move || {
        let reviewed = cosigner.review(&proposal);
        cosigner.count(reviewed.as_ref().err());
        reviewed
    })
    .await;
    match reviewed {
        Ok(Ok(signature)) => answer(
            StatusCode::OK,
            Answer {
                oracle,
                signature: Some(signature.to_string()),
                refused: None,
                reason: None,
            },
        ),
        Ok(Err(refusal)) => {
            tracing::warn!(refused = refusal.label(), "co-signing refused: {refusal}");
            answer(refusal.status(), refused(&oracle, &refusal))
        }
        Err(e) => {
            let refusal = Refusal::Unavailable(e.to_string());
            answer(refusal.status(), refused(&oracle, &refusal))
        }
    }
}

fn refused(oracle: &str, refusal: &Refusal) -> Answer {
    Answer {
        oracle: oracle.to_string(),
        signature: None,
        refused: Some(refusal.label().to_string()),
        reason: Some(refusal.to_string()),
    }
}

fn answer(status: StatusCode, answer: Answer) -> Response<Body> {
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    let mut response = Response::new(crate::http::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
