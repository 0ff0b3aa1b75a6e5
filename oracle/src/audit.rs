//! The client's audit of its bill: its job's invoices, fetched from the gateway with a
//! job key ([`fetch`]), are checked against the chain — each names the hash of the one
//! before it, and the last settled one must hash to the job's on-chain invoice hash at
//! its settled units — and each line against the client's own ledger of the answers it
//! received ([`audit`]). What does not match is a finding the client can dispute
//! within the challenge window (`tally invoice audit --dispute`).
//!
//! The ledger is JSON lines, one per answer the client received, as it reads them
//! from each response (the `x-tally-request-id` header and the body's `usage`):
//!
//! ```text
//! {"request_id":"0190c0de-…","model":"llama-3-8b","prompt_tokens":12,"completion_tokens":40}
//! ```
//!
//! Blank lines are skipped and other fields ignored; `model` may be left out (it is
//! then not compared).
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tally::state::{Job, UnitKind};

use crate::invoice::{hex, sha256, Invoice, InvoiceLine};
use crate::units::Totals;
use crate::OracleError;

/// Why the audit could not read the client's ledger or get the job's invoices.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A ledger line is not JSON of the expected shape (`line`: 1-based).
    #[error("ledger line {line}: {source} (each line is {{\"request_id\", \"model\", \"prompt_tokens\", \"completion_tokens\"}})")]
    Ledger {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    /// The gateway could not be reached.
    #[error("the gateway at {gateway} did not answer: {source}")]
    Unreachable {
        gateway: String,
        #[source]
        source: reqwest::Error,
    },
    /// The gateway answered something that is not JSON.
    #[error(
        "the gateway at {gateway} answered {status} with something that is not JSON: {source}"
    )]
    NotJson {
        gateway: String,
        status: reqwest::StatusCode,
        #[source]
        source: reqwest::Error,
    },
    /// The gateway refused (the key is not the client's, the job is unknown…).
    #[error("the gateway refused to serve the invoices ({status}): {message}")]
    Refused {
        status: reqwest::StatusCode,
        message: String,
    },
    /// The key is for another job than the one audited.
    #[error(
        "the gateway served the invoices of job {served}, not of {asked}: is the key for this job?"
    )]
    OtherJob { served: String, asked: String },
    /// A page's invoice lacks its seq or text.
    #[error(
        "the gateway's invoice page is malformed (each invoice has a seq and the invoice's text)"
    )]
    MalformedPage,
    /// Invoices came out of order.
    #[error("the gateway served invoice {seq} out of order")]
    OutOfOrder { seq: u64 },
}

/// One answer as the client recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerLine {
    pub request_id: String,
    #[serde(default)]
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Reads a ledger (JSON lines; see the module doc).
pub fn read_ledger(text: &str) -> Result<Vec<LedgerLine>, OracleError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|source| {
                AuditError::Ledger {
                    line: i + 1,
                    source,
                }
                .into()
            })
        })
        .collect()
}

/// Fetches every invoice of `job` from the gateway at `gateway` (its base URL) with
/// `key`, a job key for it, page by page: `(seq, bytes)`, in order, the bytes exactly
/// as served.
pub async fn fetch(
    http: &reqwest::Client,
    gateway: &str,
    job: &str,
    key: &str,
) -> Result<Vec<(u64, Vec<u8>)>, OracleError> {
    let base = format!(
        "{}{}",
        gateway.trim_end_matches('/'),
        crate::gateway::INVOICES_PATH
    );
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut after = 0u64;
    loop {
        let response = http
            .get(format!("{base}?after={after}"))
            .bearer_auth(key)
            .send()
            .await
            .map_err(|source| AuditError::Unreachable {
                gateway: gateway.to_string(),
                source,
            })?;
        let status = response.status();
        let body: serde_json::Value =
            response
                .json()
                .await
                .map_err(|source| AuditError::NotJson {
                    gateway: gateway.to_string(),
                    status,
                    source,
                })?;
        if !status.is_success() {
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string();
            return Err(AuditError::Refused { status, message }.into());
        }
        if body["job"].as_str() != Some(job) {
            return Err(AuditError::OtherJob {
                served: body["job"].to_string(),
                asked: job.to_string(),
            }
            .into());
        }
        let page = body["invoices"].as_array().cloned().unwrap_or_default();
        for item in &page {
            let (Some(seq), Some(text)) = (item["seq"].as_u64(), item["invoice"].as_str()) else {
                return Err(AuditError::MalformedPage.into());
            };
            if out.last().is_some_and(|(last, _)| *last >= seq) {
                return Err(AuditError::OutOfOrder { seq }.into());
            }
            out.push((seq, text.as_bytes().to_vec()));
        }
        match body["next_after"].as_u64() {
            Some(next) if next > after && !page.is_empty() => after = next,
            _ => return Ok(out),
        }
    }
}

/// A line of the bill that the client's ledger does not bear out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `not_received` (no such answer in the ledger), `counted_differently`, or
    /// `billed_twice` (a request id on more than one line).
    pub kind: String,
    /// The invoice (receipt) holding the line, and whether the chain settled it.
    pub seq: u64,
    pub settled: bool,
    pub request_id: String,
    pub billed: LedgerLine,
    /// The client's own line, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<LedgerLine>,
    /// Tokens billed beyond what the client counted (negative: fewer).
    pub excess_tokens: i64,
}

/// What the audit found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Audit {
    pub job: String,
    pub job_nonce: u64,
    /// Invoices fetched, and how many of them the chain settled (and paid).
    pub invoices: u64,
    pub settled_invoices: u64,
    /// The job on chain: its last receipt, settled units and invoice hash.
    pub settled_seq: u64,
    pub settled_units: u64,
    pub invoice_hash: String,
    /// Whether the invoices link, hash by hash, to the job's on-chain invoice hash at
    /// its settled units, and their units are borne out by their lines.
    pub chain_verified: bool,
    /// Why not, when they do not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain_problems: Vec<String>,
    /// Lines on the invoices.
    pub lines: u64,
    /// Whether a ledger was given (lines are compared only then).
    pub ledger: bool,
    /// Lines the ledger bears out.
    pub matched: u64,
    pub findings: Vec<Finding>,
    /// Tokens billed beyond the ledger, over all findings, and their cost at the job's
    /// unit price (base units) when the job is billed in tokens.
    pub excess_tokens: u64,
    pub excess_cost: u64,
    /// Ledger lines on no invoice (not billed, or not yet).
    pub unbilled: Vec<String>,
}

impl Audit {
    /// Nothing to dispute: the chain verified and every line is borne out.
    pub fn clean(&self) -> bool {
        self.chain_verified && self.findings.is_empty()
    }
}

/// Audits the invoices `fetched` of job `job_address` (as it is on chain: `job`) —
/// against the chain, and line by line against `ledger` when given.
pub fn audit(
    job_address: &str,
    job: &Job,
    fetched: &[(u64, Vec<u8>)],
    ledger: Option<&[LedgerLine]>,
) -> Audit {
    let kind = UnitKind::from_u8(job.unit_kind).unwrap_or(UnitKind::Requests);
    let chain = ChainWalk::of(job_address, job, kind, fetched);
    let lines = ledger.map_or_else(LineCheck::default, |l| LineCheck::of(&chain.billed, l));
    let excess_tokens = lines
        .findings
        .iter()
        .map(|f| u64::try_from(f.excess_tokens).unwrap_or(0))
        .fold(0u64, u64::saturating_add);
    let excess_cost = if kind == UnitKind::Tokens {
        // What the excess may have cost at most.
        u64::try_from(crate::job_view::cost_at_top(job, excess_tokens)).unwrap_or(u64::MAX)
    } else {
        0
    };
    Audit {
        job: job_address.to_string(),
        job_nonce: job.nonce,
        invoices: chain.parsed,
        settled_invoices: fetched
            .iter()
            .filter(|(seq, _)| *seq <= job.last_seq)
            .count() as u64,
        settled_seq: job.last_seq,
        settled_units: job.settled_units,
        invoice_hash: hex(&job.invoice_hash),
        chain_verified: chain.problems.is_empty(),
        chain_problems: chain.problems,
        lines: chain.billed.len() as u64,
        ledger: ledger.is_some(),
        matched: lines.matched,
        findings: lines.findings,
        excess_tokens,
        excess_cost,
        unbilled: lines.unbilled,
    }
}

/// The invoices walked in order against the chain: each must follow the one before
/// it, bill no more than its lines add up to, and the last settled one must be what
/// the chain paid for.
struct ChainWalk<'a> {
    job_address: &'a str,
    job: &'a Job,
    kind: UnitKind,
    /// Why the invoices do not verify (empty: they do).
    problems: Vec<String>,
    /// Invoices that parsed.
    parsed: u64,
    /// Every line, with its invoice's seq and whether the chain settled it.
    billed: Vec<(u64, bool, InvoiceLine)>,
    /// The invoice before the next one: its hash, seq and cumulative units.
    previous: ([u8; 32], u64, u64),
    /// The usage of the billable lines so far (recomputed from the lines).
    totals: Totals,
    /// The hash and cumulative units of the invoice of the job's last receipt.
    settled_at: Option<([u8; 32], u64)>,
}

impl<'a> ChainWalk<'a> {
    fn of(job_address: &'a str, job: &'a Job, kind: UnitKind, fetched: &[(u64, Vec<u8>)]) -> Self {
        let mut walk = Self {
            job_address,
            job,
            kind,
            problems: Vec::new(),
            parsed: 0,
            billed: Vec::new(),
            previous: ([0u8; 32], 0, 0),
            totals: Totals::default(),
            settled_at: None,
        };
        for (seq, bytes) in fetched {
            let invoice: Invoice = match serde_json::from_slice(bytes) {
                Ok(invoice) => invoice,
                Err(e) => {
                    walk.problems
                        .push(format!("invoice {seq} is not a Tally invoice: {e}"));
                    break;
                }
            };
            walk.parsed += 1;
            walk.step(*seq, sha256(bytes), invoice);
        }
        walk.check_settled();
        walk
    }

    /// Checks invoice `seq` (hashing to `hash`) against the one before it and its
    /// own lines.
    fn step(&mut self, seq: u64, hash: [u8; 32], invoice: Invoice) {
        let (previous_hash, previous_seq, previous_cumulative) = self.previous;
        let job = self.job;
        let mut wrong = Vec::new();
        if invoice.seq != seq {
            wrong.push(format!("it names itself receipt {}", invoice.seq));
        }
        if invoice.program != tally::ID.to_string() {
            wrong.push(format!("it is for program {}", invoice.program));
        }
        if invoice.job != self.job_address {
            wrong.push(format!("it is for job {}", invoice.job));
        }
        if invoice.job_nonce.is_some_and(|n| n != job.nonce) {
            wrong.push(format!(
                "it is for the job opened at nonce {:?}, not {}",
                invoice.job_nonce, job.nonce
            ));
        }
        if seq <= previous_seq {
            wrong.push(format!("it follows receipt {previous_seq}"));
        }
        if invoice.previous_hash != hex(&previous_hash) {
            wrong.push(format!(
                "it does not follow {}: the invoices were altered, or some are missing",
                if previous_seq == 0 {
                    "the start of the job".to_string()
                } else {
                    format!("invoice {previous_seq}")
                }
            ));
        }
        // Its units, recomputed from the lines billed (not those after the deadline).
        for line in &invoice.lines {
            if line.finished_at <= job.deadline {
                self.totals.add(&crate::store::UsageRecord {
                    prompt_tokens: line.prompt_tokens,
                    completion_tokens: line.completion_tokens,
                    gpu_ms: line.gpu_ms,
                    ..crate::store::UsageRecord::default()
                });
            }
        }
        if invoice.cumulative_units != previous_cumulative.saturating_add(invoice.units) {
            wrong.push(format!(
                "{} cumulative units are not {previous_cumulative} before it plus its {}",
                invoice.cumulative_units, invoice.units
            ));
        }
        if invoice.cumulative_units > self.totals.units(self.kind) {
            wrong.push(format!(
                "it bills {} cumulative units, but its lines and those before it add up to {}",
                invoice.cumulative_units,
                self.totals.units(self.kind)
            ));
        }
        self.problems.extend(
            wrong
                .into_iter()
                .map(|what| format!("invoice {seq}: {what}")),
        );
        let settled = seq <= job.last_seq;
        if seq == job.last_seq {
            self.settled_at = Some((hash, invoice.cumulative_units));
        }
        self.billed
            .extend(invoice.lines.into_iter().map(|l| (seq, settled, l)));
        self.previous = (hash, seq, invoice.cumulative_units);
    }

    /// The invoice of the job's last receipt must be the one the chain paid for.
    fn check_settled(&mut self) {
        let job = self.job;
        if job.last_seq == 0 {
            return;
        }
        match self.settled_at {
            None => self.problems.push(format!(
                "the chain settled up to receipt {}, but the gateway served no invoice {}",
                job.last_seq, job.last_seq
            )),
            Some((hash, cumulative)) => {
                if hash != job.invoice_hash || cumulative != job.settled_units {
                    self.problems.push(format!(
                        "the chain paid for invoice hash {} at {} units; invoice {} hashes to {} at {cumulative}",
                        hex(&job.invoice_hash),
                        job.settled_units,
                        job.last_seq,
                        hex(&hash)
                    ));
                }
            }
        }
    }
}

/// The invoices' lines compared with the client's ledger.
#[derive(Default)]
struct LineCheck {
    /// Lines the ledger bears out.
    matched: u64,
    findings: Vec<Finding>,
    /// Ledger lines on no invoice.
    unbilled: Vec<String>,
}

impl LineCheck {
    fn of(billed: &[(u64, bool, InvoiceLine)], ledger: &[LedgerLine]) -> Self {
        let received: HashMap<&str, &LedgerLine> =
            ledger.iter().map(|l| (l.request_id.as_str(), l)).collect();
        let mut check = Self::default();
        let mut seen = HashSet::new();
        for (seq, settled, line) in billed {
            let first = seen.insert(line.request_id.as_str());
            let mine = received.get(line.request_id.as_str()).copied();
            match finding(*seq, *settled, line, mine, first) {
                Some(finding) => check.findings.push(finding),
                None => check.matched += 1,
            }
        }
        check.unbilled = ledger
            .iter()
            .filter(|l| !seen.contains(l.request_id.as_str()))
            .map(|l| l.request_id.clone())
            .collect();
        check
    }
}

/// What is wrong with billed `line` (of invoice `seq`), given the client's own line
/// for its request (`mine`) and whether the request is billed for the `first` time;
/// `None`: the ledger bears it out.
fn finding(
    seq: u64,
    settled: bool,
    line: &InvoiceLine,
    mine: Option<&LedgerLine>,
    first: bool,
) -> Option<Finding> {
    let as_billed = LedgerLine {
        request_id: line.request_id.clone(),
        model: line.model.clone(),
        prompt_tokens: line.prompt_tokens,
        completion_tokens: line.completion_tokens,
    };
    let tokens = |l: &LedgerLine| {
        i64::try_from(l.prompt_tokens.saturating_add(l.completion_tokens)).unwrap_or(i64::MAX)
    };
    let kind = match mine {
        _ if !first => "billed_twice",
        None => "not_received",
        Some(mine)
            if mine.prompt_tokens != line.prompt_tokens
                || mine.completion_tokens != line.completion_tokens
                || (!mine.model.is_empty() && mine.model != line.model) =>
        {
            "counted_differently"
        }
        Some(_) => return None,
    };
    let excess = match (kind, mine) {
        ("counted_differently", Some(mine)) => tokens(&as_billed) - tokens(mine),
        _ => tokens(&as_billed),
    };
    Some(Finding {
        kind: kind.into(),
        seq,
        settled,
        request_id: line.request_id.clone(),
        billed: as_billed,
        received: mine.cloned(),
        excess_tokens: excess,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_is_json_lines_and_a_bad_line_is_named() {
        let ledger = read_ledger(
            "{\"request_id\":\"a\",\"model\":\"m\",\"prompt_tokens\":1,\"completion_tokens\":2}\n\n{\"request_id\":\"b\",\"prompt_tokens\":3,\"completion_tokens\":4,\"extra\":true}\n",
        )
        .unwrap();
        assert_eq!(ledger.len(), 2);
        assert_eq!(ledger[1].model, "");
        let err = read_ledger("{\"request_id\":\"a\"}\nnot json").unwrap_err();
        assert!(err.to_string().contains("ledger line 1"), "{err}");
    }
}
