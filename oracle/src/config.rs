//! The daemon's configuration: a TOML file, each setting overridable by an
//! environment variable `TALLY_ORACLE_<SECTION>__<KEY>` (upper case, `__` between
//! levels: `TALLY_ORACLE_URL`, `TALLY_ORACLE_BATCH__INTERVAL_SECS`,
//! `TALLY_ORACLE_GATEWAY__API_KEYS='{ "sk-1" = "<job>" }'`). A value is read as TOML
//! when it parses as one (numbers, booleans, inline tables), else as a string.
//!
//! API keys are secrets: [`OracleConfig::redacted`] is what gets logged or printed.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::OracleError;

/// The prefix of overriding environment variables.
pub const ENV_PREFIX: &str = "TALLY_ORACLE_";

/// Everything `tally-oracle` reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OracleConfig {
    /// Cluster: a URL or a Solana CLI moniker (mainnet-beta, devnet, testnet,
    /// localhost). Default: the Solana CLI config's, else localhost.
    #[serde(default)]
    pub url: Option<String>,
    /// The oracle's key (a Solana keypair file): signs settlements and pays their
    /// fees. Default: the Solana CLI config's keypair.
    #[serde(default)]
    pub keypair: Option<PathBuf>,
    /// The store: a SQLite file path (default), or a `postgres://user:pass@host/db`
    /// URL for replicas sharing one database. Secret when it carries a password.
    #[serde(default = "default_store")]
    pub store: String,
    /// Where invoices are exported (`<job>/<nonce>/<seq>.json`, a sync each); the
    /// store keeps the bytes, so any replica serves and verifies them. Empty: no
    /// export.
    #[serde(default = "default_invoices")]
    pub invoices_dir: PathBuf,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub gateway: Option<GatewaySection>,
    #[serde(default)]
    pub node_reports: Option<NodeReportsSection>,
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
}

fn default_store() -> String {
    "tally-oracle.db".into()
}

fn default_invoices() -> PathBuf {
    PathBuf::from("invoices")
}

/// When and how receipts are sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A round runs at least this often…
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
    /// A job whose receipt failed retries after 0.5 s, doubling up to this; a round
    /// that could not run at all (store or chain down) backs off the same way.
    pub max_backoff_secs: f64,
    /// Priority fee, micro-lamports per compute unit (0: none).
    pub priority_fee_micro_lamports: u64,
}

impl Default for BatchConfig {
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

impl BatchConfig {
    /// The batcher's settings, exporting invoices under `invoices_dir`.
    /// An empty `invoices_dir` exports nothing (the store keeps every invoice).
    pub fn settings(&self, invoices_dir: &Path) -> crate::batcher::BatchSettings {
        crate::batcher::BatchSettings {
            invoices_dir: Some(invoices_dir.to_path_buf()).filter(|d| !d.as_os_str().is_empty()),
            max_receipts_per_tx: self.max_receipts_per_tx,
            max_invoice_records: self.max_invoice_records,
            max_backoff: self.max_backoff(),
            lookup_tables: self.lookup_tables,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_secs.max(0.01))
    }

    pub fn max_backoff(&self) -> Duration {
        Duration::from_secs_f64(self.max_backoff_secs.max(0.5))
    }
}

/// `/metrics` and `/health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// The OpenAI-compatible gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    pub listen: String,
    /// The inference server, e.g. `http://127.0.0.1:8000`.
    pub upstream: String,
    /// The operator this gateway serves (its authority, the wallet that registered
    /// it). Job keys are taken only for this operator's jobs: others' usage would pay
    /// someone else. Without it, only static `api_keys` are taken.
    #[serde(default)]
    pub operator: Option<String>,
    /// Optional static API key → job address, for operators who issue their own keys.
    /// Secret. Clients normally bring job keys signed by their wallet instead
    /// (`tally job key <JOB>`), which need no entry here.
    #[serde(default)]
    pub api_keys: BTreeMap<String, String>,
    /// Largest request body, bytes (bigger: 413).
    #[serde(default = "default_gateway_body")]
    pub max_body_bytes: usize,
    /// A connection must send each request's head within this time (slowloris).
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_secs: f64,
    /// A request's body must arrive within this time (else 408).
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout_secs: f64,
    /// Connections served at once; more wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// On stop, how long requests and streams in flight may take to finish (each is
    /// billed when it does).
    #[serde(default = "default_drain")]
    pub drain_secs: f64,
    /// `max_tokens` given to chat requests that set none, so their cost is bounded.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// Longest an upstream answer may take.
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout_secs: f64,
    /// Counting tokens for answers the upstream sends without usage: `auto` (its
    /// `/tokenize`, else `/extras/tokenize`), `off`, or a path on the upstream.
    #[serde(default = "default_tokenize")]
    pub tokenize: String,
    /// How often a served job's view is refreshed from the chain and the store.
    #[serde(default = "default_view_refresh")]
    pub view_refresh_secs: f64,
}

fn default_gateway_body() -> usize {
    4 * 1024 * 1024
}

fn default_header_timeout() -> f64 {
    30.0
}

fn default_body_timeout() -> f64 {
    60.0
}

fn default_max_connections() -> usize {
    1_024
}

fn default_drain() -> f64 {
    30.0
}

fn default_max_tokens() -> u64 {
    4_096
}

fn default_upstream_timeout() -> f64 {
    600.0
}

fn default_tokenize() -> String {
    "auto".into()
}

fn default_view_refresh() -> f64 {
    2.0
}

fn secs(value: f64, least: f64) -> Duration {
    Duration::from_secs_f64(if value.is_finite() {
        value.max(least)
    } else {
        least
    })
}

impl GatewaySection {
    /// The gateway's settings from this section.
    pub fn settings(&self) -> Result<crate::gateway::GatewaySettings, OracleError> {
        Ok(crate::gateway::GatewaySettings {
            limits: crate::http::Limits {
                max_body_bytes: self.max_body_bytes.max(1024),
                header_read_timeout: secs(self.header_read_timeout_secs, 0.1),
                body_read_timeout: secs(self.body_read_timeout_secs, 0.1),
                max_connections: self.max_connections.max(1),
                drain: secs(self.drain_secs, 0.0),
            },
            default_max_tokens: self.default_max_tokens.max(1),
            upstream_timeout: secs(self.upstream_timeout_secs, 1.0),
            tokenize: crate::gateway::tokenize::TokenizeMode::parse(&self.tokenize)
                .map_err(invalid)?,
            ..crate::gateway::GatewaySettings::default()
        })
    }

    /// The operator PDA this gateway serves, if configured.
    pub fn operator_pda(&self) -> Result<Option<anchor_lang::prelude::Pubkey>, OracleError> {
        self.operator
            .as_deref()
            .map(|text| {
                text.parse::<anchor_lang::prelude::Pubkey>()
                    .map(|authority| tally_client::pda::operator(&authority))
                    .map_err(|_| {
                        invalid(format!(
                            "gateway.operator `{text}` is not a public key: write the operator's authority (its wallet)"
                        ))
                    })
            })
            .transpose()
    }

    pub fn view_refresh(&self) -> Duration {
        secs(self.view_refresh_secs, 0.05)
    }
}

/// Signed node reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReportsSection {
    pub listen: String,
}

/// The metrics cross-check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// The inference server's Prometheus endpoint.
    pub url: String,
    #[serde(default = "default_scrape_interval")]
    pub interval_secs: f64,
    /// Counters summed as tokens served (default: vLLM's).
    #[serde(default = "default_counters")]
    pub counters: Vec<String>,
    /// Drift, as a fraction of upstream tokens, above which a warning is logged.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
}

fn default_scrape_interval() -> f64 {
    15.0
}

fn default_counters() -> Vec<String> {
    crate::scrape::VLLM_TOKEN_COUNTERS
        .iter()
        .map(|c| (*c).to_string())
        .collect()
}

fn default_tolerance() -> f64 {
    0.01
}

fn invalid(message: String) -> OracleError {
    OracleError::Invalid(message)
}

/// Sets `path` (lower-cased segments) in `table` to `value`, creating tables.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = table;
    for key in parents {
        let entry = at
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        at = next;
    }
    at.insert(last.clone(), value);
}

/// Reads an environment value as TOML when it is one, else as a string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

impl OracleConfig {
    /// Parses `text` (TOML), then applies `env` overrides (`TALLY_ORACLE_*` pairs).
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, OracleError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e| invalid(format!("the config is not valid TOML: {e}")))?;
        for (key, raw) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest == "LOG" {
                continue; // the log filter, read by the binary
            }
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            set_path(&mut table, &path, env_value(&raw));
        }
        let config: Self = table
            .try_into()
            .map_err(|e| invalid(format!("the config is wrong: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the file at `path` (a missing file is an empty config) and the process
    /// environment.
    pub fn load(path: Option<&Path>) -> Result<Self, OracleError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| invalid(format!("cannot read the config {}: {e}", path.display())))?,
            None => String::new(),
        };
        Self::parse(&text, std::env::vars())
    }

    fn validate(&self) -> Result<(), OracleError> {
        if self.gateway.is_none() && self.node_reports.is_none() {
            return Err(invalid(
                "no source is configured: add a [gateway] (listen, upstream, operator) or a [node_reports] (listen) section".into(),
            ));
        }
        if let Some(gateway) = &self.gateway {
            gateway.settings()?;
            gateway.operator_pda()?;
            for (key, job) in &gateway.api_keys {
                if job.parse::<anchor_lang::prelude::Pubkey>().is_err() {
                    let shown: String = key.chars().take(4).collect();
                    return Err(invalid(format!(
                        "gateway.api_keys: the key {shown}… names `{job}`, which is not a job address"
                    )));
                }
            }
        }
        if self.batch.max_receipts_per_tx == 0 {
            return Err(invalid(
                "batch.max_receipts_per_tx must be at least 1".into(),
            ));
        }
        if self.batch.max_invoice_records == 0 {
            return Err(invalid(
                "batch.max_invoice_records must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The config with secrets replaced, for logs and `--print-config`.
    #[must_use]
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        copy.store = crate::store::redact_location(&self.store);
        if let Some(gateway) = &mut copy.gateway {
            gateway.api_keys = gateway
                .api_keys
                .values()
                .enumerate()
                .map(|(i, job)| (format!("<secret {}>", i + 1), job.clone()))
                .collect();
        }
        copy
    }
}
