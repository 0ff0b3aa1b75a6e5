//! Migrations: bring a cluster to a described deployment of Tally, idempotently.
//!
//! A [`Deployment`] says what the cluster should hold: the program (deployed through
//! the upgradeable loader, see [`crate::deploy`]), the config (`initialize_config`,
//! then `update_config` for any setting that differs, the oracle set included) and
//! the accepted mints (`add_mint`). [`plan`] compares it with the chain and lists
//! only the steps that change something; [`migrate`] runs them. On a cluster that
//! already matches, the plan is empty and nothing is sent, so running a migration
//! twice is safe. `tally admin migrate migrations/<cluster>.toml` reads a
//! [`Manifest`] file (see migrations/README.md).
use std::path::{Path, PathBuf};

use anchor_lang::prelude::Pubkey;
use serde::{Deserialize, Serialize};
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::state::Config;

use crate::chain::{Chain, ChainError};
use crate::deploy::{self, ProgramState};
use crate::error::{DeployError, Invalid};
use crate::{ix, ops, pda, InitializeConfigArgs, OracleSetArgs, UpdateConfigArgs};

type Result<T> = std::result::Result<T, ChainError>;

/// The program build a deployment runs.
#[derive(Debug)]
pub struct Release {
    /// The SBF program (e.g. target/deploy/tally.so).
    pub so: Vec<u8>,
    /// Where it was read from, for messages.
    pub source: String,
    /// The program's keypair (its address is the program id): needed only to deploy
    /// it the first time.
    pub keypair: Option<Keypair>,
    /// Room reserved for future upgrades [default: twice the program's size].
    pub max_len: Option<usize>,
    /// Upgrade a deployed program that differs from `so` (else: leave it, and say so).
    pub upgrade: bool,
}

impl Release {
    /// Reads the program at `so` and, if given and present, its keypair.
    pub fn read(so: &Path, keypair: Option<&Path>) -> Result<Self> {
        let bytes = std::fs::read(so).map_err(|source| ChainError::File {
            path: so.to_path_buf(),
            source,
            hint: crate::error::BUILD_THE_PROGRAM,
        })?;
        let keypair = match keypair {
            Some(path) if path.exists() => Some(crate::config::read_keypair(path)?),
            _ => None,
        };
        Ok(Self {
            so: bytes,
            source: so.display().to_string(),
            keypair,
            max_len: None,
            upgrade: false,
        })
    }
}

/// What the cluster should hold.
#[derive(Debug)]
pub struct Deployment {
    /// The program to deploy if missing (or upgrade, if `upgrade` is set). `None`:
    /// the program must already be deployed (e.g. preloaded by the validator).
    pub release: Option<Release>,
    /// The settings of the config, oracle set included.
    pub settings: InitializeConfigArgs,
    /// Mints accepted for payment (mints are never removed).
    pub mints: Vec<Pubkey>,
}

/// One change a migration makes.
#[derive(Clone, Debug)]
pub enum Step {
    /// Deploy the program through the upgradeable loader.
    Deploy { bytes: usize, max_len: usize },
    /// Upgrade the deployed program to the release.
    Upgrade { bytes: usize },
    /// Create the config.
    InitializeConfig(InitializeConfigArgs),
    /// Change the settings that differ (each named in `changes`).
    UpdateConfig {
        args: UpdateConfigArgs,
        changes: Vec<String>,
    },
    /// Accept a mint (creates its vault).
    AddMint(Pubkey),
    /// Bring accounts of an older layout up to date (`upgrade_account`), after the
    /// program upgrade that changed it: jobs and revenue days, with their kind.
    UpgradeAccounts(Vec<(Pubkey, &'static str)>),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Deploy { bytes, max_len } => write!(
                f,
                "deploy the program {} ({bytes} bytes, room for {max_len}) through the upgradeable loader",
                tally::ID
            ),
            Step::Upgrade { bytes } => {
                write!(f, "upgrade the program {} ({bytes} bytes)", tally::ID)
            }
            Step::InitializeConfig(args) => write!(
                f,
                "initialize the config {}: fee {} bps, challenge window {} s, {}-of-{} oracles",
                pda::config(),
                args.fee_bps,
                args.challenge_window_secs,
                args.oracle_threshold,
                args.oracles.len()
            ),
            Step::UpdateConfig { changes, .. } => {
                write!(f, "update the config: {}", changes.join("; "))
            }
            Step::AddMint(mint) => write!(f, "accept mint {mint} (vault {})", pda::vault(mint)),
            Step::UpgradeAccounts(accounts) => {
                let jobs = accounts.iter().filter(|(_, kind)| *kind == "job").count();
                write!(
                    f,
                    "upgrade {jobs} job(s) and {} revenue day(s) to the current account layout (prices per million, output tokens, model binding)",
                    accounts.len().saturating_sub(jobs)
                )
            }
        }
    }
}

/// What [`migrate`] did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MigrationReport {
    /// The steps run, in words.
    pub steps: Vec<String>,
    /// Transactions sent (0 when the cluster already matched).
    pub transactions: usize,
    /// Things worth knowing that needed no change (e.g. a deployed program that
    /// differs from the release while upgrades are off).
    pub notes: Vec<String>,
}

impl MigrationReport {
    pub fn changed(&self) -> bool {
        !self.steps.is_empty()
    }
}

/// The steps that bring the chain to `deployment` when signed by `admin` (the
/// program's upgrade authority for a fresh config, the config's admin after), and
/// notes on what stays as it is.
pub fn plan(
    chain: &impl Chain,
    admin: &Pubkey,
    deployment: &Deployment,
) -> Result<(Vec<Step>, Vec<String>)> {
    let mut steps = Vec::new();
    let mut notes = Vec::new();
    let state = deploy::program_state(chain, &tally::ID)?;
    let authority = plan_program(&state, admin, deployment, &mut steps, &mut notes)?;
    plan_config(chain, &state, authority, admin, deployment, &mut steps)?;
    plan_mints(chain, deployment, &mut steps)?;
    plan_accounts(chain, &state, deployment, &mut steps, &mut notes)?;
    Ok((steps, notes))
}

/// Deploy or upgrade the program as the release asks; returns its upgrade authority
/// (the admin's, once a planned deploy has run).
fn plan_program(
    state: &ProgramState,
    admin: &Pubkey,
    deployment: &Deployment,
    steps: &mut Vec<Step>,
    notes: &mut Vec<String>,
) -> Result<Option<Pubkey>> {
    Ok(match (state, &deployment.release) {
        (ProgramState::Missing, None) => return Err(DeployError::NothingToDeploy(tally::ID).into()),
        (ProgramState::Missing, Some(release)) => {
            match &release.keypair {
                Some(k) if k.pubkey() == tally::ID => {}
                Some(k) => {
                    return Err(DeployError::KeypairMismatch {
                        keypair: k.pubkey(),
                        program: tally::ID,
                    }
                    .into())
                }
                None => return Err(DeployError::NoProgramKeypair(tally::ID).into()),
            }
            let max_len = release
                .max_len
                .unwrap_or(release.so.len().saturating_mul(2))
                .max(release.so.len());
            steps.push(Step::Deploy {
                bytes: release.so.len(),
                max_len,
            });
            Some(*admin)
        }
        (ProgramState::Other { owner, .. }, _) => {
            return Err(DeployError::NotUpgradeable {
                program: tally::ID,
                owner: *owner,
            }
            .into())
        }
        (ProgramState::Upgradeable { authority, .. }, release) => {
            if let Some(release) = release {
                if !state.runs(&release.so) {
                    if release.upgrade {
                        if *authority != Some(*admin) {
                            return Err(DeployError::NotUpgradeAuthority {
                                action: format!("upgrading {}", tally::ID),
                                authority: *authority,
                                signer: *admin,
                            }
                            .into());
                        }
                        steps.push(Step::Upgrade {
                            bytes: release.so.len(),
                        });
                    } else {
                        notes.push(format!(
                            "the deployed program differs from {}: left as it is (upgrade = true to upgrade it)",
                            release.source
                        ));
                    }
                }
            }
            *authority
        }
    })
}

/// Create the config (signed by the upgrade authority), or update what differs.
fn plan_config(
    chain: &impl Chain,
    state: &ProgramState,
    authority: Option<Pubkey>,
    admin: &Pubkey,
    deployment: &Deployment,
    steps: &mut Vec<Step>,
) -> Result<()> {
    let config = match state {
        ProgramState::Missing => None,
        _ => chain.anchor_account::<Config>(&pda::config())?,
    };
    match config {
        None => {
            if authority != Some(*admin) {
                return Err(DeployError::NotUpgradeAuthority {
                    action: "initialize_config".into(),
                    authority,
                    signer: *admin,
                }
                .into());
            }
            steps.push(Step::InitializeConfig(deployment.settings.clone()));
        }
        Some(config) => {
            if config.admin != *admin {
                return Err(DeployError::NotAdmin {
                    admin: config.admin,
                    signer: *admin,
                }
                .into());
            }
            if let Some((args, changes)) = config_changes(&config, &deployment.settings) {
                steps.push(Step::UpdateConfig { args, changes });
            }
        }
    }
    Ok(())
}

/// Accept each manifest mint that has no vault yet.
fn plan_mints(chain: &impl Chain, deployment: &Deployment, steps: &mut Vec<Step>) -> Result<()> {
    let mut seen = Vec::new();
    for mint in &deployment.mints {
        if seen.contains(mint) {
            continue;
        }
        seen.push(*mint);
        if chain.account(&pda::vault(mint))?.is_none() {
            ops::mint_ref(chain, mint)?;
            steps.push(Step::AddMint(*mint));
        }
    }
    Ok(())
}

/// Upgrade accounts the previous layout wrote, once the program that converts them
/// runs.
fn plan_accounts(
    chain: &impl Chain,
    state: &ProgramState,
    deployment: &Deployment,
    steps: &mut Vec<Step>,
    notes: &mut Vec<String>,
) -> Result<()> {
    // Accounts the previous layout wrote: once the program that converts them runs.
    if !matches!(state, ProgramState::Missing) {
        let outdated = ops::outdated_accounts(chain)?;
        let upgrading = steps.iter().any(|s| matches!(s, Step::Upgrade { .. }));
        let current = deployment
            .release
            .as_ref()
            .is_none_or(|release| state.runs(&release.so));
        if !outdated.is_empty() {
            if upgrading || current {
                steps.push(Step::UpgradeAccounts(outdated));
            } else {
                notes.push(format!(
                    "{} account(s) of the older layout wait for the program upgrade (upgrade = true)",
                    outdated.len()
                ));
            }
        }
    }
    Ok(())
}

/// The `update_config` that turns `config` into `want`, with the changes in words;
/// `None` when they already agree. The oracle set compares as a set (order is not
/// meaningful) plus its threshold.
pub fn config_changes(
    config: &Config,
    want: &InitializeConfigArgs,
) -> Option<(UpdateConfigArgs, Vec<String>)> {
    let mut args = UpdateConfigArgs::default();
    let mut changes = Vec::new();
    macro_rules! field {
        ($have:expr, $want:expr, $slot:ident, $name:literal) => {
            if $have != $want {
                changes.push(format!("{} {} → {}", $name, $have, $want));
                args.$slot = Some($want);
            }
        };
    }
    field!(config.fee_bps, want.fee_bps, fee_bps, "fee_bps");
    field!(config.treasury, want.treasury, treasury, "treasury");
    field!(config.arbiter, want.arbiter, arbiter, "arbiter");
    field!(
        config.challenge_window_secs,
        want.challenge_window_secs,
        challenge_window_secs,
        "challenge_window_secs"
    );
    field!(
        config.expiry_grace_secs,
        want.expiry_grace_secs,
        expiry_grace_secs,
        "expiry_grace_secs"
    );
    field!(
        config.dispute_timeout_secs,
        want.dispute_timeout_secs,
        dispute_timeout_secs,
        "dispute_timeout_secs"
    );
    let mut have_set = config.oracles.clone();
    let mut want_set = want.oracles.clone();
    have_set.sort();
    want_set.sort();
    want_set.dedup();
    if have_set != want_set || config.oracle_threshold != want.oracle_threshold {
        changes.push(format!(
            "oracle set {}-of-{} → {}-of-{} (bumps the set's version: receipts signed under the old set stop settling)",
            config.oracle_threshold,
            have_set.len(),
            want.oracle_threshold,
            want_set.len()
        ));
        args.oracle_set = Some(OracleSetArgs {
            oracles: want.oracles.clone(),
            threshold: want.oracle_threshold,
        });
    }
    (!changes.is_empty()).then_some((args, changes))
}

/// Runs the [`plan`]: deploys or upgrades the program (`admin` pays and becomes the
/// upgrade authority), then configures. Sends nothing when the chain already matches.
pub fn migrate(
    chain: &mut impl Chain,
    admin: &Keypair,
    deployment: &Deployment,
) -> Result<MigrationReport> {
    let (steps, notes) = plan(chain, &admin.pubkey(), deployment)?;
    let mut report = MigrationReport {
        steps: Vec::new(),
        transactions: 0,
        notes,
    };
    for step in steps {
        let sent = match &step {
            Step::Deploy { max_len, .. } => {
                let release = deployment
                    .release
                    .as_ref()
                    .ok_or(DeployError::NoRelease("deploy"))?;
                let program = release
                    .keypair
                    .as_ref()
                    .ok_or(DeployError::NoProgramKeypair(tally::ID))?;
                deploy::deploy(chain, admin, program, admin, &release.so, *max_len)?.transactions
            }
            Step::Upgrade { .. } => {
                let release = deployment
                    .release
                    .as_ref()
                    .ok_or(DeployError::NoRelease("upgrade"))?;
                deploy::upgrade(chain, admin, &tally::ID, admin, &release.so)?.transactions
            }
            Step::InitializeConfig(args) => {
                ops::init(chain, admin, args.clone())?;
                1
            }
            Step::UpdateConfig { args, .. } => {
                ops::update_config(chain, admin, args.clone())?;
                1
            }
            Step::AddMint(mint) => {
                chain.send(
                    &[ix::add_mint(admin.pubkey(), ops::mint_ref(chain, mint)?)],
                    admin,
                    &[],
                )?;
                1
            }
            Step::UpgradeAccounts(accounts) => {
                let addresses: Vec<Pubkey> = accounts.iter().map(|(a, _)| *a).collect();
                ops::upgrade_accounts(chain, admin, &addresses)?
            }
        };
        report.transactions += sent;
        report.steps.push(step.to_string());
    }
    Ok(report)
}

/// A deployment described in a TOML file (migrations/<cluster>.toml). Keys are
/// written as a base58 public key, a keypair file (relative to the manifest), or
/// `admin` for the migration's signer.
///
/// ```toml
/// mints = ["So11111111111111111111111111111111111111112"]
///
/// [program]
/// so = "../target/deploy/tally.so"
/// keypair = "../keys/tally-program-keypair.json"
/// upgrade = false
///
/// [config]
/// treasury = "admin"
/// arbiter = "admin"
/// fee_bps = 250
/// challenge_window_secs = 3600
/// expiry_grace_secs = 3600
/// dispute_timeout_secs = 604800
/// oracles = ["admin"]
/// oracle_threshold = 1
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub mints: Vec<String>,
    pub program: Option<ManifestProgram>,
    pub config: ManifestConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManifestProgram {
    /// The SBF program file.
    pub so: PathBuf,
    /// The program keypair (only read when the program must be deployed).
    pub keypair: Option<PathBuf>,
    pub max_len: Option<usize>,
    #[serde(default)]
    pub upgrade: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManifestConfig {
    pub treasury: String,
    pub arbiter: String,
    pub fee_bps: u16,
    pub challenge_window_secs: u32,
    pub expiry_grace_secs: u32,
    pub dispute_timeout_secs: u32,
    pub oracles: Vec<String>,
    pub oracle_threshold: u8,
}

impl Manifest {
    /// Reads and parses a manifest file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ChainError::File {
            path: path.to_path_buf(),
            source,
            hint: "",
        })?;
        toml::from_str(&text).map_err(|source| {
            Invalid::Manifest {
                path: path.to_path_buf(),
                source,
            }
            .into()
        })
    }

    /// The deployment it describes, with `admin` for `"admin"` and paths relative to
    /// `base` (the manifest's directory).
    pub fn resolve(&self, base: &Path, admin: &Pubkey) -> Result<Deployment> {
        let key = |text: &str| resolve_key(text, base, admin);
        let release = match &self.program {
            Some(p) => {
                let keypair = p.keypair.as_ref().map(|k| base.join(k));
                let mut release = Release::read(&base.join(&p.so), keypair.as_deref())?;
                release.max_len = p.max_len;
                release.upgrade = p.upgrade;
                Some(release)
            }
            None => None,
        };
        let c = &self.config;
        Ok(Deployment {
            release,
            settings: InitializeConfigArgs {
                treasury: key(&c.treasury)?,
                arbiter: key(&c.arbiter)?,
                fee_bps: c.fee_bps,
                challenge_window_secs: c.challenge_window_secs,
                expiry_grace_secs: c.expiry_grace_secs,
                dispute_timeout_secs: c.dispute_timeout_secs,
                oracles: c.oracles.iter().map(|o| key(o)).collect::<Result<_>>()?,
                oracle_threshold: c.oracle_threshold,
            },
            mints: self.mints.iter().map(|m| key(m)).collect::<Result<_>>()?,
        })
    }
}

/// A key written as `admin`, a base58 public key or a keypair file under `base`.
fn resolve_key(text: &str, base: &Path, admin: &Pubkey) -> Result<Pubkey> {
    if text == "admin" {
        return Ok(*admin);
    }
    if let Ok(key) = text.parse::<Pubkey>() {
        return Ok(key);
    }
    let path = base.join(text);
    if path.exists() {
        return Ok(crate::config::read_keypair(&path)?.pubkey());
    }
    Err(Invalid::Key {
        text: text.to_string(),
        path,
    }
    .into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_localnet_manifest_parses_and_resolves() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let manifest = Manifest::read(&dir.join("localnet.toml")).unwrap();
        let admin = Pubkey::new_unique();
        let program = manifest.program.clone().unwrap();
        assert_eq!(program.so, PathBuf::from("../target/deploy/tally.so"));
        // Resolving needs the built program; the keys resolve without it.
        assert_eq!(resolve_key("admin", &dir, &admin).unwrap(), admin);
        assert_eq!(
            resolve_key("../keys/tally-program-keypair.json", &dir, &admin).unwrap(),
            tally::ID
        );
        assert!(resolve_key("nobody", &dir, &admin).is_err());
        assert_eq!(manifest.config.oracles, vec!["admin".to_string()]);
    }

    #[test]
    fn only_differing_settings_are_updated() {
        let admin = Pubkey::new_unique();
        let (a, b) = (Pubkey::new_unique(), Pubkey::new_unique());
        let config = Config {
            admin,
            pending_admin: Pubkey::default(),
            treasury: admin,
            arbiter: admin,
            fee_bps: 250,
            challenge_window_secs: 60,
            expiry_grace_secs: 600,
            dispute_timeout_secs: 86_400,
            paused: false,
            oracle_set_version: 1,
            oracle_threshold: 1,
            oracles: vec![a, b],
            bump: 255,
        };
        let mut want = InitializeConfigArgs {
            treasury: admin,
            arbiter: admin,
            fee_bps: 250,
            challenge_window_secs: 60,
            expiry_grace_secs: 600,
            dispute_timeout_secs: 86_400,
            oracles: vec![b, a],
            oracle_threshold: 1,
        };
        assert!(
            config_changes(&config, &want).is_none(),
            "same set, other order"
        );
        want.fee_bps = 100;
        want.oracle_threshold = 2;
        let (args, changes) = config_changes(&config, &want).unwrap();
        assert_eq!(args.fee_bps, Some(100));
        assert!(args.treasury.is_none() && args.challenge_window_secs.is_none());
        assert_eq!(args.oracle_set.unwrap().threshold, 2);
        assert_eq!(changes.len(), 2, "{changes:?}");
    }
}
