//! `tally-oracle`: the metering daemon. Reads a TOML config (overridable by
//! `TALLY_ORACLE_*` environment variables), serves the configured sources, settles
//! cumulative receipts, exposes /metrics and /health, and stops gracefully on SIGTERM
//! or Ctrl-C: what was accepted is committed and settled before it exits.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use solana_signer::Signer;
use tally_client::chain::{Chain, RpcChain};
use tally_client::config::{read_keypair, resolve, Resolved};
use tally_oracle::config::{ConfigError, OracleConfig};
use tally_oracle::daemon::Daemon;
use tally_oracle::OracleError;

/// Tally's metering oracle: watches GPU work complete, keeps invoices, and settles
/// attested cumulative usage on-chain exactly once.
#[derive(Debug, Parser)]
#[command(name = "tally-oracle", version)]
struct Args {
    /// The config file (TOML); settings can be overridden by TALLY_ORACLE_* variables
    #[arg(short, long, env = "TALLY_ORACLE_CONFIG")]
    config: Option<PathBuf>,
    /// Cluster URL or moniker (mainnet-beta, devnet, testnet, localhost); overrides the config
    #[arg(short = 'u', long)]
    url: Option<String>,
    /// The oracle's keypair file; overrides the config
    #[arg(short, long)]
    keypair: Option<PathBuf>,
    /// Print the effective config (secrets redacted) and exit
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TALLY_ORACLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), OracleError> {
    let mut config = OracleConfig::load(args.config.as_deref())?;
    if args.url.is_some() {
        config.url.clone_from(&args.url);
    }
    if args.keypair.is_some() {
        config.keypair.clone_from(&args.keypair);
    }
    // As the Solana CLI resolves them: this config (or the flags), else the Solana
    // CLI config, else localhost and ~/.config/solana/id.json.
    let Resolved {
        url,
        keypair: keypair_path,
    } = resolve(
        config.url.as_deref(),
        config.keypair.as_deref(),
        None,
        "localhost",
    )?;
    if args.print_config {
        let mut shown = config.redacted();
        shown.url = Some(url);
        shown.keypair = Some(keypair_path);
        let text = toml::to_string_pretty(&shown).map_err(ConfigError::Print)?;
        print!("{text}");
        return Ok(());
    }
    let oracle = read_keypair(&keypair_path)?;
    tracing::info!(
        %url,
        oracle = %oracle.pubkey(),
        config = ?config.redacted(),
        "starting"
    );
    let chain = RpcChain::new(&url).with_priority_fee(config.batch.priority_fee_micro_lamports);
    let deployment = tally_client::ops::config(&chain)?;
    if !deployment.oracles.contains(&oracle.pubkey()) {
        return Err(OracleError::NotAnOracle {
            oracle: oracle.pubkey(),
            url,
        });
    }
    if deployment.oracle_threshold > 1 && config.quorum.is_none() {
        tracing::warn!(
            threshold = deployment.oracle_threshold,
            "the oracle set needs several signatures per settlement; this daemon signs alone, so its settlements will be refused"
        );
    }
    let _ = chain.clock()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| OracleError::Setup {
            what: "start the runtime",
            source: e.into(),
        })?;
    runtime.block_on(async move {
        // Lookups of node keys get their own connection: they never wait behind a
        // settlement's confirmation.
        let directory = Arc::new(Mutex::new(RpcChain::new(&url)));
        // …and so do a quorum member's answers to its peers: never behind its own round.
        let quorum_view = Arc::new(Mutex::new(RpcChain::new(&url)));
        let daemon = Daemon::start_with_views(
            &config,
            Arc::new(Mutex::new(chain)),
            directory,
            quorum_view,
            oracle,
        )
        .await?;
        if let Some(gateway) = daemon.gateway {
            tracing::info!(%gateway, "gateway listening");
        }
        if let Some(reports) = daemon.node_reports {
            tracing::info!(%reports, "node reports listening");
        }
        let stopper = daemon.stopper();
        tokio::spawn(async move {
            let signal = wait_for_signal().await;
            tracing::info!("{signal}: stopping gracefully");
            let _ = stopper.send(true);
        });
        daemon.wait().await
    })
}

async fn wait_for_signal() -> &'static str {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return "interrupt";
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = ctrl_c => "interrupt",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        "interrupt"
    }
}
