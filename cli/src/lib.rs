//! `tally`: pay for GPU jobs from a wallet, run an operator, administer a deployment,
//! audit a bill, and `tally demo` — the whole flow on an embedded chain with nothing
//! to set up. The binary is [`run`] over [`Cli`]; tests parse the same [`Cli`] and run
//! [`execute`] against any [`tally_client::chain::Chain`].
use solana_keypair::Keypair;
use tally_client::chain::{ChainError, RpcChain};
use tally_client::config::{read_keypair, resolve, Resolved};

pub mod args;
pub mod audit;
mod command;
pub mod demo;
pub mod error;
mod invoice;
pub mod money;
pub mod output;
mod progress;
pub mod watch;

pub use args::{ChainCommand, Cli, Command, GlobalArgs, InvoiceCommand, OutputFormat};
pub use command::{execute, execute_in};
pub use error::CliError;
pub use output::Output;

/// The URL and keypair path `global` selects (after the Solana CLI config).
pub fn resolve_globals(global: &GlobalArgs) -> Result<Resolved, ChainError> {
    resolve(
        global.url.as_deref(),
        global.keypair.as_deref(),
        global.config.as_deref(),
        "mainnet-beta",
    )
}

/// Runs a parsed command line; `Ok(false)` for a command that ran and found
/// something wrong (an unreconciled demo, an audit with findings).
pub fn run(cli: &Cli) -> Result<bool, CliError> {
    let format = cli.global.output;
    match &cli.command {
        Command::Demo(args) => run_demo(args, format),
        Command::Invoice(InvoiceCommand::Verify {
            file,
            store,
            job,
            seq,
        }) => {
            let Resolved { url, .. } = resolve_globals(&cli.global)?;
            invoice::verify(
                &url,
                file.as_deref(),
                store.as_deref(),
                job.as_deref(),
                *seq,
                format,
            )
        }
        Command::Invoice(InvoiceCommand::Audit {
            job,
            gateway,
            key,
            ledger,
            dispute,
        }) => {
            let Resolved { url, keypair } = resolve_globals(&cli.global)?;
            audit::run(
                &audit::Args {
                    url: &url,
                    keypair: &keypair,
                    priority_fee: cli.global.priority_fee,
                    job,
                    gateway,
                    key: key.as_deref(),
                    ledger: ledger.as_deref(),
                    dispute: *dispute,
                },
                format,
            )
        }
        Command::Chain(command) => run_chain(command, &cli.global),
    }
}

/// `tally demo`: its summary, and whether it reconciled.
fn run_demo(args: &demo::DemoArgs, format: OutputFormat) -> Result<bool, CliError> {
    let summary = demo::run(args, format == OutputFormat::Json)?;
    let reconciled = summary["reconciled"].as_bool().unwrap_or(false);
    match format {
        OutputFormat::Json => println!("{summary}"),
        OutputFormat::Table => println!("reconciled: {reconciled}"),
    }
    Ok(reconciled)
}

/// A chain command over RPC, signed by the resolved keypair.
fn run_chain(command: &ChainCommand, global: &GlobalArgs) -> Result<bool, CliError> {
    let Resolved { url, keypair } = resolve_globals(global)?;
    if let ChainCommand::Job(args::JobCommand::Watch { job, ws }) = command {
        return watch::run(&url, ws.as_deref(), job, global.units(), global.output);
    }
    // Reading the chain needs no signer: a read-only command runs without a keypair
    // file (a throwaway key stands in; such commands never use it).
    let signer = match read_keypair(&keypair) {
        Err(_) if command.reads_only() && !keypair.exists() => Keypair::new(),
        read => read?,
    };
    let mut chain = RpcChain::new(&url)
        .with_priority_fee(global.priority_fee)
        .with_progress(progress::to_stderr());
    let output = execute_in(command, global.units(), &mut chain, &signer)?;
    println!("{}", output.render(global.output));
    Ok(true)
}
