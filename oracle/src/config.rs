//! The daemon's configuration: a TOML file, each setting overridable by an
//! environment variable `TALLY_ORACLE_<SECTION>__<KEY>` (upper case, `__` between
//! levels: `TALLY_ORACLE_URL`, `TALLY_ORACLE_BATCH__INTERVAL_SECS`,
//! `TALLY_ORACLE_GATEWAY__API_KEYS='{ "sk-1" = "<job>" }'`). A value is read as TOML
//! when it parses as one (numbers, booleans, inline tables), else as a string.
//!
//! Each section is read straight into the settings type of the module it configures
//! — `[batch]` [`BatchSettings`], `[admin]` [`AdminSettings`], `[gateway]`
//! [`GatewaySettings`], `[node_reports]` [`NodeReportSettings`], `[metrics]`
//! [`ScrapeSettings`] — with its defaults; this module composes them, applies the
//! environment and checks what serde cannot. `oracle/tally-oracle.example.toml`
//! lists every key with its default (a test parses it).
//!
//! API keys are secrets: [`OracleConfig::redacted`] is what gets logged or printed.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batcher::BatchSettings;
use crate::daemon::AdminSettings;
use crate::gateway::GatewaySettings;
use crate::node_report::NodeReportSettings;
use crate::scrape::ScrapeSettings;
use crate::OracleError;

/// The prefix of overriding environment variables.
pub const ENV_PREFIX: &str = "TALLY_ORACLE_";

/// Everything `tally-oracle` reads: the top-level keys, and one section per part of
/// the daemon, each read by the settings type of the module it configures.
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
    /// `[batch]`: when and how receipts are sent.
    #[serde(default)]
    pub batch: BatchSettings,
    /// `[admin]`: `/metrics`, `/health` and `/invoices`.
    #[serde(default)]
    pub admin: AdminSettings,
    /// `[gateway]`: the OpenAI-compatible gateway.
    #[serde(default)]
    pub gateway: Option<GatewaySettings>,
    /// `[node_reports]`: signed reports from GPU workers.
    #[serde(default)]
    pub node_reports: Option<NodeReportSettings>,
    /// `[metrics]`: the cross-check against the inference server's own counters.
    #[serde(default)]
    pub metrics: Option<ScrapeSettings>,
    /// `[quorum]`: the other oracles of an m-of-n set, which co-sign settlements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<crate::quorum::QuorumSettings>,
}

fn default_store() -> String {
    "tally-oracle.db".into()
}

fn default_invoices() -> PathBuf {
    PathBuf::from("invoices")
}

/// What is wrong with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read the config {}: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file (with the environment's overrides) is not TOML.
    #[error("the config is not valid TOML: {0}")]
    NotToml(#[source] toml::de::Error),
    /// A section or key is unknown, or a value of the wrong type.
    #[error("the config is wrong: {0}")]
    Wrong(#[source] toml::de::Error),
    /// Neither a gateway nor node reports are configured, nor a quorum (whose
    /// members take the peers' gateway records).
    #[error("no source is configured: add a [gateway] (listen, upstream, operator) or a [node_reports] (listen) section, or a [quorum] whose peers' gateways send their records")]
    NoSource,
    /// Setting `key` (e.g. `batch.max_receipts_per_tx`) has a value serde takes but
    /// the oracle cannot use.
    #[error("{key}: {reason}")]
    Setting { key: &'static str, reason: String },
    /// The configuration does not print as TOML.
    #[error("the config does not print as TOML: {0}")]
    Print(#[source] toml::ser::Error),
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
        let mut table: toml::Table = text.parse().map_err(ConfigError::NotToml)?;
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
        let config: Self = table.try_into().map_err(ConfigError::Wrong)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the file at `path` (a missing file is an empty config) and the process
    /// environment.
    pub fn load(path: Option<&Path>) -> Result<Self, OracleError> {
        let text = match path {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
                    path: path.to_path_buf(),
                    source,
                })?
            }
            None => String::new(),
        };
        Self::parse(&text, std::env::vars())
    }

    fn validate(&self) -> Result<(), OracleError> {
        if self.gateway.is_none() && self.node_reports.is_none() && self.quorum.is_none() {
            return Err(ConfigError::NoSource.into());
        }
        if let Some(gateway) = &self.gateway {
            gateway.validate()?;
        }
        self.batch.validate()
    }

    /// Where invoices are exported; `None` when `invoices_dir` is empty (the store
    /// keeps every invoice).
    pub fn invoices_export(&self) -> Option<&Path> {
        Some(self.invoices_dir.as_path()).filter(|d| !d.as_os_str().is_empty())
    }

    /// The config with secrets replaced, for logs and `--print-config`.
    #[must_use]
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        copy.store = crate::store::redact_location(&self.store);
        copy.gateway = self.gateway.as_ref().map(GatewaySettings::redacted);
        copy
    }
}
