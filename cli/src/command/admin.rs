//! `tally admin …`: the config, the oracle set, mints, pause, migrations.
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally_client::chain::{Chain, ChainError};
use tally_client::ops;

use crate::args::{AdminCommand, ConfigCommand, InitArgs, MintCommand, OracleCommand};
use std::path::{Path, PathBuf};

use tally_client::ops::OracleChange;
use tally_client::{InitializeConfigArgs, UpdateConfigArgs};

use crate::output::{key_value, Output};

/// An acknowledgement: the text, and `{"ok": text}`.
fn done(what: String) -> Output {
    Output::message(what.clone(), serde_json::json!({ "ok": what }))
}

pub(super) fn execute<C: Chain>(
    command: &AdminCommand,
    chain: &mut C,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    match command {
        AdminCommand::Init(args) => init(args, chain, signer),
        AdminCommand::Config(ConfigCommand::Set {
            fee_bps,
            treasury,
            arbiter,
            challenge_window,
            expiry_grace,
            dispute_timeout,
        }) => {
            let args = UpdateConfigArgs {
                fee_bps: *fee_bps,
                treasury: *treasury,
                arbiter: *arbiter,
                challenge_window_secs: *challenge_window,
                expiry_grace_secs: *expiry_grace,
                dispute_timeout_secs: *dispute_timeout,
                ..UpdateConfigArgs::default()
            };
            ops::update_config(chain, signer, args)?;
            Ok(done("config updated".into()))
        }
        AdminCommand::Config(ConfigCommand::Show) => show_config(chain),
        AdminCommand::Oracle(change) => change_oracles(change, chain, signer),
        AdminCommand::Pause | AdminCommand::Unpause => {
            let paused = matches!(command, AdminCommand::Pause);
            let args = UpdateConfigArgs {
                paused: Some(paused),
                ..UpdateConfigArgs::default()
            };
            ops::update_config(chain, signer, args)?;
            Ok(done(if paused {
                "paused: no new deposits".into()
            } else {
                "unpaused".into()
            }))
        }
        AdminCommand::Migrate {
            manifest,
            dry_run,
            upgrade,
        } => migrate(manifest, *dry_run, *upgrade, chain, signer),
        AdminCommand::Mint(MintCommand::Add { mint }) => {
            ops::add_mint(chain, signer, mint)?;
            Ok(done(format!(
                "mint {mint} accepted: vault {}",
                tally_client::pda::vault(mint)
            )))
        }
    }
}

/// `admin init`: the config, signed by the program's upgrade authority.
fn init<C: Chain>(args: &InitArgs, chain: &mut C, signer: &Keypair) -> Result<Output, ChainError> {
    let InitArgs {
        treasury,
        arbiter,
        fee_bps,
        challenge_window,
        expiry_grace,
        dispute_timeout,
        oracles,
        threshold,
    } = args;
    let settings = InitializeConfigArgs {
        treasury: *treasury,
        arbiter: *arbiter,
        fee_bps: *fee_bps,
        challenge_window_secs: *challenge_window,
        expiry_grace_secs: *expiry_grace,
        dispute_timeout_secs: *dispute_timeout,
        oracles: oracles.clone(),
        oracle_threshold: *threshold,
    };
    ops::init(chain, signer, settings)?;
    Ok(done(format!(
        "Tally initialized: config {}",
        tally_client::pda::config()
    )))
}

/// `admin config show`.
fn show_config(chain: &impl Chain) -> Result<Output, ChainError> {
    let c = ops::config(chain)?;
    let oracles: Vec<String> = c.oracles.iter().map(ToString::to_string).collect();
    let view = serde_json::json!({
        "admin": c.admin.to_string(),
        "treasury": c.treasury.to_string(),
        "arbiter": c.arbiter.to_string(),
        "fee_bps": c.fee_bps,
        "challenge_window_secs": c.challenge_window_secs,
        "expiry_grace_secs": c.expiry_grace_secs,
        "dispute_timeout_secs": c.dispute_timeout_secs,
        "paused": c.paused,
        "oracle_set_version": c.oracle_set_version,
        "oracle_threshold": c.oracle_threshold,
        "oracles": oracles,
    });
    let text = key_value(&[
        ("admin", c.admin.to_string()),
        ("treasury", c.treasury.to_string()),
        ("arbiter", c.arbiter.to_string()),
        ("fee", format!("{} bps", c.fee_bps)),
        ("challenge window", format!("{} s", c.challenge_window_secs)),
        ("expiry grace", format!("{} s", c.expiry_grace_secs)),
        ("dispute timeout", format!("{} s", c.dispute_timeout_secs)),
        ("paused", c.paused.to_string()),
        (
            "oracles",
            format!(
                "{}-of-{} (version {}): {}",
                c.oracle_threshold,
                c.oracles.len(),
                c.oracle_set_version,
                oracles.join(", ")
            ),
        ),
    ]);
    Ok(Output::message(text, view))
}

/// `admin oracle add|remove|rotate`.
fn change_oracles(
    command: &OracleCommand,
    chain: &mut impl Chain,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    let (change, threshold) = match command {
        OracleCommand::Add { key, threshold } => (OracleChange::Add(*key), *threshold),
        OracleCommand::Remove { key, threshold } => (OracleChange::Remove(*key), *threshold),
        OracleCommand::Rotate { old, new } => (
            OracleChange::Rotate {
                old: *old,
                new: *new,
            },
            None,
        ),
    };
    ops::change_oracles(chain, signer, &change, threshold)?;
    let c = ops::config(chain)?;
    Ok(done(format!(
        "oracle set is now version {}: {}-of-{}",
        c.oracle_set_version,
        c.oracle_threshold,
        c.oracles.len()
    )))
}

/// `admin migrate MANIFEST [--dry-run] [--upgrade]`.
fn migrate(
    manifest: &Path,
    dry_run: bool,
    upgrade: bool,
    chain: &mut impl Chain,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    use tally_client::migrate::{self, Manifest, MigrationReport};
    let base = manifest
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut deployment = Manifest::read(manifest)?.resolve(&base, &signer.pubkey())?;
    if let Some(release) = deployment.release.as_mut() {
        release.upgrade |= upgrade;
    }
    let report = if dry_run {
        let (steps, notes) = migrate::plan(chain, &signer.pubkey(), &deployment)?;
        MigrationReport {
            steps: steps.iter().map(ToString::to_string).collect(),
            transactions: 0,
            notes,
        }
    } else {
        migrate::migrate(chain, signer, &deployment)?
    };
    let mut lines: Vec<String> = if report.changed() {
        let verb = if dry_run { "would" } else { "did" };
        report
            .steps
            .iter()
            .map(|s| format!("{verb}: {s}"))
            .collect()
    } else {
        vec![format!(
            "nothing to change: the cluster matches {}",
            manifest.display()
        )]
    };
    lines.extend(report.notes.iter().map(|n| format!("note: {n}")));
    if !dry_run && report.changed() {
        lines.push(format!("{} transactions sent", report.transactions));
    }
    let mut json = serde_json::to_value(&report).unwrap_or(serde_json::Value::Null);
    json["changed"] = serde_json::Value::Bool(report.changed());
    json["dry_run"] = serde_json::Value::Bool(dry_run);
    Ok(Output::message(
        lines.join(
            "
",
        ),
        json,
    ))
}
