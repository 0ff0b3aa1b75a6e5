//! Solana CLI conventions, shared by the `tally` command and `tally-oracle`: the CLI
//! config file (`~/.config/solana/cli/config.yml`: `json_rpc_url`, `keypair_path`),
//! cluster monikers (`-u m|d|t|l`), and keypair files.
use std::path::{Path, PathBuf};

use solana_keypair::Keypair;

use crate::chain::ChainError;
use crate::error::{Invalid, KeypairError};

/// Solana CLI settings this tool reuses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SolanaCliConfig {
    pub json_rpc_url: Option<String>,
    pub keypair_path: Option<String>,
}

/// Default location of the Solana CLI config.
pub fn default_solana_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config/solana/cli/config.yml"))
}

/// Reads `json_rpc_url` and `keypair_path` from a Solana CLI config (YAML of
/// `key: value` lines). A missing file is an empty config.
pub fn read_solana_config(path: &Path) -> Result<SolanaCliConfig, ChainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SolanaCliConfig::default()),
        Err(e) => {
            return Err(ChainError::File {
                path: path.to_path_buf(),
                source: e,
                hint: "",
            })
        }
    };
    let mut config = SolanaCliConfig::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value
            .trim()
            .trim_matches(|c| c == '"' || c == '\'')
            .to_string();
        match key.trim() {
            "json_rpc_url" => config.json_rpc_url = Some(value),
            "keypair_path" => config.keypair_path = Some(value),
            _ => {}
        }
    }
    Ok(config)
}

/// Expands Solana CLI cluster monikers (`-u m|d|t|l` and their long forms).
pub fn resolve_url(url: &str) -> String {
    match url {
        "m" | "mainnet-beta" => "https://api.mainnet-beta.solana.com".into(),
        "d" | "devnet" => "https://api.devnet.solana.com".into(),
        "t" | "testnet" => "https://api.testnet.solana.com".into(),
        "l" | "localhost" => "http://127.0.0.1:8899".into(),
        other => other.into(),
    }
}

/// Reads a Solana keypair file (a JSON array of 64 bytes).
pub fn read_keypair(path: &Path) -> Result<Keypair, ChainError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeypairError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let not_keypair = |reason: String| KeypairError::NotKeypair {
        path: path.to_path_buf(),
        reason,
    };
    let bytes: Vec<u8> = serde_json::from_str(&text).map_err(|e| not_keypair(e.to_string()))?;
    Ok(Keypair::try_from(bytes.as_slice()).map_err(|e| not_keypair(e.to_string()))?)
}

/// The cluster URL and keypair path to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub url: String,
    pub keypair: PathBuf,
}

/// The URL and keypair path: what was given, else the Solana CLI config's (`config`,
/// default [`default_solana_config_path`]), else `default_url` and
/// `~/.config/solana/id.json`, as the Solana CLI resolves them. Monikers are expanded.
pub fn resolve(
    url: Option<&str>,
    keypair: Option<&Path>,
    config: Option<&Path>,
    default_url: &str,
) -> Result<Resolved, ChainError> {
    let config_path = config
        .map(Path::to_path_buf)
        .or_else(default_solana_config_path);
    let config = match &config_path {
        Some(path) => read_solana_config(path)?,
        None => SolanaCliConfig::default(),
    };
    let url = url
        .map(str::to_string)
        .or(config.json_rpc_url)
        .unwrap_or_else(|| default_url.to_string());
    let keypair = keypair
        .map(Path::to_path_buf)
        .or_else(|| config.keypair_path.map(PathBuf::from))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/solana/id.json"))
        })
        .ok_or(Invalid::NoKeypair)?;
    Ok(Resolved {
        url: resolve_url(&url),
        keypair,
    })
}
