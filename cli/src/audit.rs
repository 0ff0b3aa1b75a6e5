//! `tally invoice audit`: the client checks its bill (see [`tally_oracle::audit`]) and,
//! with `--dispute`, disputes it while the challenge window is open.
use std::path::Path;

use anchor_lang::prelude::Pubkey;
use serde_json::json;
use tally_client::chain::RpcChain;
use tally_client::config::read_keypair;

use crate::args::OutputFormat;
use crate::CliError;
use tally_client::ops;
use tally_oracle::audit::{self, Audit};

pub struct Args<'a> {
    pub url: &'a str,
    pub keypair: &'a Path,
    pub priority_fee: u64,
    pub job: &'a Pubkey,
    pub gateway: &'a str,
    pub key: Option<&'a str>,
    pub ledger: Option<&'a Path>,
    pub dispute: bool,
}

/// How long a key the audit signs for itself lives, and what it may spend.
const OWN_KEY_SECS: i64 = 600;
const OWN_KEY_LIMIT: u64 = 1;

/// The job key: given, read from a file, or signed now by the client's wallet.
fn job_key(args: &Args<'_>, chain: &RpcChain) -> Result<String, CliError> {
    match args.key {
        Some(key) if tally_client::job_key::JobKey::looks_like(key.trim()) => {
            Ok(key.trim().to_string())
        }
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| CliError::KeyFile {
                path: path.to_string(),
                source,
            })?;
            Ok(text.trim().to_string())
        }
        None => {
            let signer = read_keypair(args.keypair)?;
            Ok(ops::job_key(chain, &signer, args.job, OWN_KEY_SECS, Some(OWN_KEY_LIMIT))?.key)
        }
    }
}

/// Runs the audit; `Ok(true)` when it is clean.
pub fn run(args: &Args<'_>, output: OutputFormat) -> Result<bool, CliError> {
    let mut chain = RpcChain::new(args.url).with_priority_fee(args.priority_fee);
    let ledger = args
        .ledger
        .map(|path| {
            std::fs::read_to_string(path)
                .map_err(|source| CliError::Read {
                    what: "ledger",
                    path: path.to_path_buf(),
                    source,
                })
                .and_then(|text| Ok(audit::read_ledger(&text)?))
        })
        .transpose()?;
    let key = job_key(args, &chain)?;
    if let Ok(parsed) = tally_client::job_key::JobKey::parse(&key) {
        if parsed.claims.job != *args.job {
            return Err(CliError::KeyForOtherJob {
                key_job: parsed.claims.job,
                job: *args.job,
            });
        }
    }
    let fetched = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::io("start the async runtime"))?
        .block_on(audit::fetch(
            &reqwest::Client::new(),
            args.gateway,
            &args.job.to_string(),
            &key,
        ))?;
    // The chain is read after the invoices: a receipt landing in between makes the
    // newest invoice settled, never a settled one missing.
    let job = ops::job(&chain, args.job)?;
    let report = audit::audit(&args.job.to_string(), &job, &fetched, ledger.as_deref());
    let dispute = if args.dispute && !report.clean() {
        let signer = read_keypair(args.keypair)?;
        Some(match ops::dispute_job(&mut chain, &signer, args.job) {
            Ok(d) => json!({ "filed": true, "frozen": d.frozen, "deadline": d.deadline }),
            Err(e) => json!({ "filed": false, "reason": e.to_string() }),
        })
    } else if args.dispute {
        Some(json!({ "filed": false, "reason": "the audit found nothing to dispute" }))
    } else {
        None
    };
    match output {
        OutputFormat::Json => {
            let mut value =
                serde_json::to_value(&report).map_err(CliError::io("encode the report"))?;
            value["clean"] = json!(report.clean());
            if let Some(dispute) = &dispute {
                value["dispute"] = dispute.clone();
            }
            println!("{value}");
        }
        OutputFormat::Table => print_table(&report, args.ledger, dispute.as_ref()),
    }
    Ok(report.clean())
}

fn tokens(line: &audit::LedgerLine) -> String {
    format!(
        "{} {}+{} tokens",
        if line.model.is_empty() {
            "-"
        } else {
            &line.model
        },
        line.prompt_tokens,
        line.completion_tokens
    )
}

fn print_table(report: &Audit, ledger: Option<&Path>, dispute: Option<&serde_json::Value>) {
    println!(
        "job {} (nonce {}): {} invoice(s) fetched, {} settled; the chain is at receipt {} ({} units)",
        report.job,
        report.job_nonce,
        report.invoices,
        report.settled_invoices,
        report.settled_seq,
        report.settled_units
    );
    if report.chain_verified {
        println!(
            "chain: verified: the invoices link to the on-chain invoice hash {}",
            report.invoice_hash
        );
    } else {
        println!("chain: NOT verified:");
        for problem in &report.chain_problems {
            println!("  - {problem}");
        }
    }
    match ledger {
        Some(path) => println!(
            "ledger: {} of {} line(s) borne out by {}",
            report.matched,
            report.lines,
            path.display()
        ),
        None => println!(
            "ledger: none given ({} line(s) not compared: pass --ledger FILE)",
            report.lines
        ),
    }
    for finding in &report.findings {
        println!("{}", describe_finding(finding));
    }
    if !report.unbilled.is_empty() {
        println!(
            "unbilled: {} ledger line(s) on no invoice (not billed, or not yet)",
            report.unbilled.len()
        );
    }
    if report.excess_tokens > 0 {
        println!(
            "excess: {} token(s) billed beyond your ledger ({} base units at the job's price)",
            report.excess_tokens, report.excess_cost
        );
    }
    if let Some(dispute) = dispute {
        println!("{}", describe_dispute(dispute));
    }
    if report.clean() {
        println!("result: clean");
    } else {
        println!(
            "result: {} finding(s){}",
            report.findings.len(),
            if report.chain_verified {
                ""
            } else {
                ", and the invoices do not verify against the chain"
            }
        );
    }
}

/// One finding, as the client reads it.
fn describe_finding(f: &audit::Finding) -> String {
    let place = format!(
        "invoice {}{}",
        f.seq,
        if f.settled { "" } else { " (not settled yet)" }
    );
    match (f.kind.as_str(), &f.received) {
        ("counted_differently", Some(mine)) => format!(
            "COUNTED DIFFERENTLY: {place}, request {}: billed {}, you received {} ({:+} tokens)",
            f.request_id,
            tokens(&f.billed),
            tokens(mine),
            f.excess_tokens
        ),
        ("billed_twice", _) => format!(
            "BILLED TWICE: {place}, request {}: {} again",
            f.request_id,
            tokens(&f.billed)
        ),
        _ => format!(
            "NEVER RECEIVED: {place}, request {}: billed {}, not in your ledger",
            f.request_id,
            tokens(&f.billed)
        ),
    }
}

/// What `--dispute` did.
fn describe_dispute(dispute: &serde_json::Value) -> String {
    if dispute["filed"] == true {
        format!(
            "dispute: filed: {} base units frozen (the operator's share still in the challenge window) until the arbiter resolves it, or until {} (unix seconds) when it goes to the operator",
            dispute["frozen"], dispute["deadline"]
        )
    } else {
        format!(
            "dispute: NOT filed: {}",
            dispute["reason"].as_str().unwrap_or_default()
        )
    }
}
