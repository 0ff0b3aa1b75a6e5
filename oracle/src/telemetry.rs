//! What the daemon tells its operator: Prometheus counters and gauges (`/metrics`) and
//! a health verdict (`/health`). Every metric is declared once in [`METRICS`] with its
//! help text; nothing else can be recorded, so a typo is a test failure, not a silent
//! new series.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Whether a metric only grows (counter) or goes up and down (gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Records a source committed (label `source`).
pub const RECORDS_IN: &str = "tally_oracle_records_in_total";
/// Reports already recorded, ignored (label `source`).
pub const RECORDS_DUPLICATE: &str = "tally_oracle_records_duplicate_total";
/// Reports refused (labels `source`, `reason`).
pub const RECORDS_REJECTED: &str = "tally_oracle_records_rejected_total";
/// Tokens metered (label `source`).
pub const TOKENS_METERED: &str = "tally_oracle_tokens_metered_total";
pub const RECEIPTS_SENT: &str = "tally_oracle_receipts_sent_total";
pub const RECEIPTS_CONFIRMED: &str = "tally_oracle_receipts_confirmed_total";
pub const RECEIPTS_FAILED: &str = "tally_oracle_receipts_failed_total";
pub const RECEIPTS_RECOVERED: &str = "tally_oracle_receipts_recovered_total";
pub const ROUNDS: &str = "tally_oracle_batch_rounds_total";
pub const UNSETTLED_RECORDS: &str = "tally_oracle_unsettled_records";
pub const LAG_SECONDS: &str = "tally_oracle_settlement_lag_seconds";
pub const UPSTREAM_TOKENS: &str = "tally_oracle_upstream_tokens_total";
pub const DRIFT_TOKENS: &str = "tally_oracle_metering_drift_tokens";
pub const SCRAPES: &str = "tally_oracle_scrapes_total";
pub const SCRAPE_ERRORS: &str = "tally_oracle_scrape_errors_total";
/// Records held but not billable (label `reason`: `after_deadline`, `over_escrow`).
pub const UNBILLABLE_RECORDS: &str = "tally_oracle_unbillable_records_total";
/// Units held but not billable (label `reason`).
pub const UNBILLABLE_UNITS: &str = "tally_oracle_unbillable_units_total";
/// The chain's clock minus this machine's, in seconds, at the last round.
pub const CLOCK_OFFSET: &str = "tally_oracle_chain_clock_offset_seconds";
/// Receipts that can never land, written off (label `reason`).
pub const RECEIPTS_WRITTEN_OFF: &str = "tally_oracle_receipts_written_off_total";
/// Records that can never be billed, written off (label `reason`).
pub const RECORDS_WRITTEN_OFF: &str = "tally_oracle_records_written_off_total";
/// Jobs whose receipts failed and that wait before the next try.
pub const JOBS_BACKING_OFF: &str = "tally_oracle_jobs_backing_off";
/// Settlement, ledger and lookup-table transactions sent.
pub const TRANSACTIONS_SENT: &str = "tally_oracle_transactions_sent_total";
/// Lookup tables managed and active.
pub const LOOKUP_TABLES: &str = "tally_oracle_lookup_tables";
/// How long the last settlement round took.
pub const ROUND_SECONDS: &str = "tally_oracle_round_seconds";
/// 1 while this replica leads settlement (always, for a SQLite store).
pub const LEADER: &str = "tally_oracle_leader";
/// Store transactions that committed records (group commit: one per group).
pub const STORE_COMMITS: &str = "tally_oracle_store_commits_total";
/// Records those transactions carried (÷ commits = the mean group size).
pub const STORE_COMMITTED_RECORDS: &str = "tally_oracle_store_committed_records_total";

/// Upstream answers without usage (label `outcome`: `tokenized` — billed by counting
/// with the server's tokenizer; `withheld` — a whole answer not delivered, since it
/// could not be billed; `unbilled` — a streamed answer already delivered and not
/// billed).
pub const USAGE_MISSING: &str = "tally_oracle_usage_missing_total";
/// Requests the gateway refused (label `reason`).
pub const GATEWAY_REFUSED: &str = "tally_oracle_gateway_refused_total";

/// Proposals this oracle co-signed.
pub const QUORUM_COSIGNED: &str = "tally_oracle_quorum_cosigned_total";
/// Proposals this oracle refused to co-sign (label `reason`).
pub const QUORUM_REFUSED: &str = "tally_oracle_quorum_refused_total";
/// This oracle's proposals its peers refused or left unanswered (labels `peer`,
/// `reason`).
pub const QUORUM_PEER_REFUSALS: &str = "tally_oracle_quorum_peer_refusals_total";
/// This oracle's gateway records its peers took or answered for (label `peer`).
pub const QUORUM_FORWARDED: &str = "tally_oracle_quorum_forwarded_total";
/// Gateway records a peer refused for good (labels `peer`, `reason`): it will not
/// co-sign their receipts.
pub const QUORUM_FORWARD_REFUSED: &str = "tally_oracle_quorum_forward_refused_total";
/// Batches of gateway records that did not reach a peer (label `peer`); retried.
pub const QUORUM_FORWARD_FAILURES: &str = "tally_oracle_quorum_forward_failures_total";

/// How many recent warnings `/health` keeps.
pub const HEALTH_WARNINGS: usize = 20;
/// How long `/health` stays degraded after an answer that could not be billed.
pub const UNMETERED_DEGRADES_SECS: i64 = 900;

/// Every metric the oracle exposes.
pub const METRICS: [(&str, Kind, &str); 35] = [
    (
        RECORDS_IN,
        Kind::Counter,
        "Usage records committed to the store, by source.",
    ),
    (
        RECORDS_DUPLICATE,
        Kind::Counter,
        "Reports of requests already recorded (never counted twice).",
    ),
    (
        RECORDS_REJECTED,
        Kind::Counter,
        "Reports refused, by source and reason (never counted).",
    ),
    (
        TOKENS_METERED,
        Kind::Counter,
        "Prompt + completion tokens committed, by source.",
    ),
    (
        RECEIPTS_SENT,
        Kind::Counter,
        "Receipts sent on-chain (new or resent).",
    ),
    (
        RECEIPTS_CONFIRMED,
        Kind::Counter,
        "Receipts confirmed on-chain.",
    ),
    (
        RECEIPTS_FAILED,
        Kind::Counter,
        "Receipts whose send failed (retried with backoff).",
    ),
    (
        RECEIPTS_RECOVERED,
        Kind::Counter,
        "Receipts found landed after a lost answer or a restart.",
    ),
    (ROUNDS, Kind::Counter, "Batcher rounds run."),
    (
        UNSETTLED_RECORDS,
        Kind::Gauge,
        "Records not yet covered by a confirmed receipt.",
    ),
    (
        LAG_SECONDS,
        Kind::Gauge,
        "Age of the oldest record not yet covered by a confirmed receipt.",
    ),
    (
        UPSTREAM_TOKENS,
        Kind::Gauge,
        "Tokens the inference server's own metrics counted since the oracle started.",
    ),
    (
        DRIFT_TOKENS,
        Kind::Gauge,
        "Upstream-counted minus gateway-metered tokens since the oracle started.",
    ),
    (
        SCRAPES,
        Kind::Counter,
        "Successful scrapes of the inference server's metrics.",
    ),
    (
        SCRAPE_ERRORS,
        Kind::Counter,
        "Failed scrapes of the inference server's metrics.",
    ),
    (
        UNBILLABLE_RECORDS,
        Kind::Counter,
        "Usage records held but not billable, by reason (after_deadline, over_escrow).",
    ),
    (
        UNBILLABLE_UNITS,
        Kind::Counter,
        "Units held but not billable, by reason (after_deadline, over_escrow).",
    ),
    (
        CLOCK_OFFSET,
        Kind::Gauge,
        "The chain's clock minus this machine's clock, in seconds (records are stamped in chain time).",
    ),
    (
        USAGE_MISSING,
        Kind::Counter,
        "Upstream answers without usage, by outcome (tokenized: billed by the server's tokenizer; withheld: not delivered; unbilled: a stream delivered unbilled).",
    ),
    (
        GATEWAY_REFUSED,
        Kind::Counter,
        "Requests the gateway refused, by reason (never forwarded, never billed).",
    ),
    (
        RECEIPTS_WRITTEN_OFF,
        Kind::Counter,
        "Receipts that can never land, written off, by reason (job_closed, expired, superseded).",
    ),
    (
        RECORDS_WRITTEN_OFF,
        Kind::Counter,
        "Usage records that can never be billed, written off, by reason (job_closed, before_job_opened, no_such_job).",
    ),
    (
        JOBS_BACKING_OFF,
        Kind::Gauge,
        "Jobs whose last receipt failed, waiting before their next try (the others go on).",
    ),
    (
        TRANSACTIONS_SENT,
        Kind::Counter,
        "Transactions sent: settlements, ledgers, lookup tables.",
    ),
    (
        LOOKUP_TABLES,
        Kind::Gauge,
        "Address lookup tables this oracle manages that are active.",
    ),
    (ROUND_SECONDS, Kind::Gauge, "Duration of the last settlement round."),
    (
        LEADER,
        Kind::Gauge,
        "1 while this replica holds the settlement lock (always 1 with a SQLite store).",
    ),
    (
        STORE_COMMITS,
        Kind::Counter,
        "Store transactions committing usage records (one per group of concurrent records).",
    ),
    (
        STORE_COMMITTED_RECORDS,
        Kind::Counter,
        "Usage records those transactions carried.",
    ),
    (
        QUORUM_COSIGNED,
        Kind::Counter,
        "Settlement proposals this oracle co-signed (quorum).",
    ),
    (
        QUORUM_REFUSED,
        Kind::Counter,
        "Settlement proposals this oracle refused to co-sign, by reason (quorum).",
    ),
    (
        QUORUM_PEER_REFUSALS,
        Kind::Counter,
        "This oracle's proposals that a peer refused or did not answer, by peer and reason (quorum).",
    ),
    (
        QUORUM_FORWARDED,
        Kind::Counter,
        "This oracle's gateway records each peer took or answered for (quorum).",
    ),
    (
        QUORUM_FORWARD_REFUSED,
        Kind::Counter,
        "This oracle's gateway records a peer refused for good, by peer and reason (quorum).",
    ),
    (
        QUORUM_FORWARD_FAILURES,
        Kind::Counter,
        "Batches of gateway records that did not reach a peer, retried (quorum).",
    ),
];

/// The health of the settlement loop: the daemon's, not one job's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Unix seconds (chain time) of the last round that ran to its end.
    pub last_good_round: Option<i64>,
    /// Why the last round could not run (store or chain unavailable, …); empty when
    /// it ran. Only this makes the daemon unhealthy.
    pub last_errors: Vec<String>,
    /// The per-job errors of the last round that had any, while jobs back off after
    /// them (receipts refused or lost; the daemon is fine).
    pub job_errors: Vec<String>,
    /// Recent usage the oracle holds but could not bill, and write-offs (newest last,
    /// at most [`HEALTH_WARNINGS`]): one job's problem, so not a failure of the daemon.
    pub warnings: Vec<String>,
    /// Whether this replica leads settlement (with PostgreSQL, one replica does).
    pub leader: bool,
    pub shutting_down: bool,
    /// Recent answers the gateway could not bill (newest last, at most
    /// [`HEALTH_WARNINGS`]), and when the last one happened (chain time).
    pub unmetered: Vec<String>,
    pub last_unmetered_at: Option<i64>,
}

impl Health {
    /// Whether an answer could not be billed within [`UNMETERED_DEGRADES_SECS`] of `now`.
    pub fn unmetered_recently(&self, now: i64) -> bool {
        self.last_unmetered_at
            .is_some_and(|at| now.saturating_sub(at) < UNMETERED_DEGRADES_SECS)
    }
}

/// The daemon's metrics registry.
#[derive(Default)]
pub struct Telemetry {
    values: Mutex<BTreeMap<(&'static str, String), f64>>,
    health: Mutex<Health>,
}

fn kind_of(name: &str) -> Option<(&'static str, Kind)> {
    METRICS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(n, k, _)| (*n, *k))
}

impl Telemetry {
    /// Adds `by` to counter `name` with `labels` (Prometheus label syntax, e.g.
    /// `source="gateway"`, or empty).
    pub fn inc(&self, name: &str, labels: &str, by: u64) {
        let Some((name, Kind::Counter)) = kind_of(name) else {
            debug_assert!(false, "{name} is not a declared counter");
            return;
        };
        if let Ok(mut values) = self.values.lock() {
            #[allow(clippy::cast_precision_loss)]
            {
                *values.entry((name, labels.to_string())).or_default() += by as f64;
            }
        }
    }

    /// Sets gauge `name`.
    pub fn set(&self, name: &str, labels: &str, value: f64) {
        let Some((name, Kind::Gauge)) = kind_of(name) else {
            debug_assert!(false, "{name} is not a declared gauge");
            return;
        };
        if let Ok(mut values) = self.values.lock() {
            values.insert((name, labels.to_string()), value);
        }
    }

    /// The current value of a series (0 when never recorded).
    pub fn get(&self, name: &str, labels: &str) -> f64 {
        self.values
            .lock()
            .ok()
            .and_then(|v| {
                v.iter()
                    .find(|((n, l), _)| *n == name && l == labels)
                    .map(|(_, value)| *value)
            })
            .unwrap_or(0.0)
    }

    /// Records how a batcher round went.
    pub fn round(&self, report: &crate::batcher::RoundReport, now: i64) {
        self.inc(ROUNDS, "", 1);
        self.inc(RECEIPTS_SENT, "", report.sent as u64);
        self.inc(RECEIPTS_CONFIRMED, "", report.confirmed as u64);
        self.inc(RECEIPTS_FAILED, "", report.failed as u64);
        self.inc(RECEIPTS_RECOVERED, "", report.recovered as u64);
        self.inc(TRANSACTIONS_SENT, "", report.transactions as u64);
        self.set(LEADER, "", 1.0);
        for unbillable in &report.unbillable {
            let labels = format!("reason=\"{}\"", unbillable.reason.label());
            self.inc(UNBILLABLE_RECORDS, &labels, unbillable.records);
            self.inc(UNBILLABLE_UNITS, &labels, unbillable.units);
        }
        for off in &report.written_off {
            let labels = format!("reason=\"{}\"", off.reason.label());
            if off.seq.is_some() {
                self.inc(RECEIPTS_WRITTEN_OFF, &labels, 1);
            }
            self.inc(RECORDS_WRITTEN_OFF, &labels, off.records);
        }
        if let Ok(mut health) = self.health.lock() {
            health.last_good_round = Some(now);
            health.last_errors.clear();
            // A job backing off after an error keeps its reason on show until a
            // round has news (new errors, or nothing backing off any more).
            if !report.errors.is_empty() || report.backing_off == 0 {
                health.job_errors.clone_from(&report.errors);
            }
            health.leader = true;
            health.warnings.extend(
                report
                    .unbillable
                    .iter()
                    .map(|u| u.detail.clone())
                    .chain(report.written_off.iter().map(|w| w.detail.clone())),
            );
            let excess = health.warnings.len().saturating_sub(HEALTH_WARNINGS);
            health.warnings.drain(..excess);
        }
    }

    /// Records a round that could not run at all (store or chain unreachable).
    pub fn round_failed(&self, error: String) {
        self.inc(ROUNDS, "", 1);
        if let Ok(mut health) = self.health.lock() {
            health.last_errors = vec![error];
        }
    }

    /// An upstream answer came without usage: counted by `outcome` (see
    /// [`USAGE_MISSING`]); one that could not be billed also degrades `/health`.
    pub fn usage_missing(&self, outcome: &str, detail: &str, now: i64) {
        self.inc(USAGE_MISSING, &format!("outcome=\"{outcome}\""), 1);
        if outcome == "tokenized" {
            return;
        }
        tracing::error!("{detail}");
        if let Ok(mut health) = self.health.lock() {
            health.unmetered.push(detail.to_string());
            let excess = health.unmetered.len().saturating_sub(HEALTH_WARNINGS);
            health.unmetered.drain(..excess);
            health.last_unmetered_at = Some(now);
        }
    }

    /// The gateway refused a request for `reason` (a metrics label).
    pub fn refused(&self, reason: &str) {
        self.inc(GATEWAY_REFUSED, &format!("reason=\"{reason}\""), 1);
    }

    /// Records a round this replica skipped: another replica leads settlement.
    pub fn follower_round(&self, now: i64) {
        self.inc(ROUNDS, "", 1);
        self.set(LEADER, "", 0.0);
        if let Ok(mut health) = self.health.lock() {
            health.last_good_round = Some(now);
            health.last_errors.clear();
            health.job_errors.clear();
            health.leader = false;
        }
    }

    pub fn set_shutting_down(&self) {
        if let Ok(mut health) = self.health.lock() {
            health.shutting_down = true;
        }
    }

    pub fn health(&self) -> Health {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let values = self.values.lock().map(|v| v.clone()).unwrap_or_default();
        let mut out = String::new();
        for (name, kind, help) in METRICS {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let mut any = false;
            for ((_, labels), value) in values.iter().filter(|((n, _), _)| *n == name) {
                any = true;
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
            if !any {
                let _ = writeln!(out, "{name} 0");
            }
        }
        out
    }
}

/// Sums every sample of each metric in a Prometheus text exposition, over all label
/// sets: `name → total`. Comments, malformed lines and non-numeric values are skipped.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) if line.as_bytes()[i] == b'{' => {
                let Some(close) = line[i..].rfind('}') else {
                    continue;
                };
                (&line[..i], &line[i + close + 1..])
            }
            Some(i) => (&line[..i], &line[i..]),
            None => continue,
        };
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if name.is_empty() || !value.is_finite() {
            continue;
        }
        *totals.entry(name.to_string()).or_insert(0.0) += value;
    }
    totals
}
