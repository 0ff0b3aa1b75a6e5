//! `tally`: pay for GPU jobs from a wallet, run an operator, administer a deployment,
//! and `tally demo` — the whole flow on an embedded chain with nothing to set up.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tally_client::chain::RpcChain;
use tally_client::cli::{execute, read_keypair, resolve_globals, GlobalArgs, OutputFormat};

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
        Command::Chain(command) => resolve_globals(&cli.global).and_then(|(url, keypair_path)| {
            let signer = read_keypair(&keypair_path)?;
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
