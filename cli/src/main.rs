//! `tally`: pay for GPU jobs from a wallet, run an operator, administer a deployment,
//! and `tally demo` — the whole flow on an embedded chain with nothing to set up.
use std::process::ExitCode;

use anchor_lang::prelude::Pubkey;
use clap::{Parser, Subcommand};
use solana_keypair::Keypair;
use tally_client::chain::{ChainError, RpcChain};
use tally_client::cli::{execute, read_keypair, resolve_globals, GlobalArgs, OutputFormat};

mod audit;
mod demo;

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Pay-per-job settlement for GPU inference on Solana"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Chain(tally_client::cli::Command),
    /// Run the whole flow on an embedded chain: fund jobs, serve and meter requests
    /// through the oracle gateway, settle, claim, expire, reconcile
    Demo(demo::DemoArgs),
    /// Prove an invoice is what the chain paid for; audit a job's bill
    #[command(subcommand)]
    Invoice(InvoiceCommand),
}

#[derive(Debug, Subcommand)]
enum InvoiceCommand {
    /// Check an invoice against the job's on-chain invoice hash and settled units:
    /// FILE (linked to the chain through the later invoices beside it, or through the
    /// store's with --store), or --job's receipt --seq (default: the latest) from the
    /// oracle's store — any replica's: they share it
    Verify {
        /// An exported invoice file (`<invoices_dir>/<job>/<nonce>/<seq>.json`)
        file: Option<std::path::PathBuf>,
        /// The oracle's store: a SQLite file or a postgres:// URL
        #[arg(long)]
        store: Option<String>,
        /// The job whose invoice to check, from the store
        #[arg(long, requires = "store", conflicts_with = "file")]
        job: Option<String>,
        /// Which receipt's invoice (default: the latest settled)
        #[arg(long, requires = "job")]
        seq: Option<u64>,
    },
    /// Audit your job's bill: fetch its invoices from the operator's gateway with a
    /// job key, verify them against the job's on-chain invoice hash and settled units,
    /// and compare every line with your own ledger; exits nonzero on any finding.
    /// --dispute then files dispute_job while the challenge window is open
    Audit {
        /// The job
        job: Pubkey,
        /// The operator's gateway (its base URL, e.g. https://gpu.example.com)
        #[arg(long)]
        gateway: String,
        /// A job key for the job (`tally_k1_…`), or a file holding one [default: a
        /// 10-minute key, limited to 1 base unit, signed now by --keypair, the job's
        /// client]
        #[arg(long)]
        key: Option<String>,
        /// Your ledger: JSON lines {"request_id", "model", "prompt_tokens",
        /// "completion_tokens"}, one per answer received (the x-tally-request-id header
        /// and the response's usage)
        #[arg(long)]
        ledger: Option<std::path::PathBuf>,
        /// On any finding, dispute the job (signed by --keypair, the job's client): the
        /// operator's share still inside the challenge window is frozen for the arbiter
        #[arg(long)]
        dispute: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(args) => {
            demo::run(args, cli.global.output == OutputFormat::Json).map(|summary| {
                let reconciled = summary["reconciled"].as_bool().unwrap_or(false);
                match cli.global.output {
                    OutputFormat::Json => println!("{summary}"),
                    OutputFormat::Table => println!("reconciled: {reconciled}"),
                }
                reconciled
            })
        }
        Command::Invoice(InvoiceCommand::Verify { file, store, job, seq }) => resolve_globals(&cli.global).and_then(|(url, _)| {
            let chain = RpcChain::new(&url);
            let failed = |e: tally_oracle::OracleError| ChainError::Other(e.to_string());
            let store = store
                .as_deref()
                .map(tally_oracle::store::Store::connect)
                .transpose()
                .map_err(failed)?;
            let verified = match (file, job, &store) {
                (Some(file), _, store) => tally_oracle::invoice::verify_with(&chain, file, store.as_ref()),
                (None, Some(job), Some(store)) => tally_oracle::invoice::verify_in_store(&chain, store, job, *seq),
                _ => Err(tally_oracle::OracleError::Invalid(
                    "give an invoice FILE, or --store LOCATION --job ADDRESS [--seq N]".into(),
                )),
            }
            .map_err(failed)?;
            match cli.global.output {
                OutputFormat::Json => println!("{}", serde_json::to_string(&verified).unwrap_or_default()),
                OutputFormat::Table => println!(
                    "verified: invoice {} of job {} ({} units) is what the chain paid for (receipt {}, {} units in all)",
                    verified.seq, verified.job, verified.units, verified.settled_seq, verified.settled_units
                ),
            }
            Ok(true)
        }),
        Command::Invoice(InvoiceCommand::Audit {
            job,
            gateway,
            key,
            ledger,
            dispute,
        }) => resolve_globals(&cli.global).and_then(|(url, keypair_path)| {
            audit::run(
                &audit::Args {
                    url: &url,
                    keypair: &keypair_path,
                    priority_fee: cli.global.priority_fee,
                    job,
                    gateway,
                    key: key.as_deref(),
                    ledger: ledger.as_deref(),
                    dispute: *dispute,
                },
                cli.global.output,
            )
        }),
        Command::Chain(command) => resolve_globals(&cli.global).and_then(|(url, keypair_path)| {
            // Reading the chain needs no signer: a read-only command runs without a
            // keypair file (a throwaway key stands in; such commands never use it).
            let signer = match read_keypair(&keypair_path) {
                Err(_) if command.reads_only() && !keypair_path.exists() => Keypair::new(),
                read => read?,
            };
            let mut chain = RpcChain::new(&url).with_priority_fee(cli.global.priority_fee);
            let output = execute(command, &mut chain, &signer)?;
            println!("{}", output.render(cli.global.output));
            Ok(true)
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            if let Some(message) = error.program_error_message() {
                eprintln!("  {message}");
            }
            ExitCode::FAILURE
        }
    }
}
