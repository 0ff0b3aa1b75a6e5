//! `tally`: pay for GPU jobs from a wallet, run an operator, administer a deployment.
use std::process::ExitCode;

use clap::Parser;
use tally_client::chain::RpcChain;
use tally_client::cli::{execute, read_keypair, resolve_globals, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = resolve_globals(&cli.global).and_then(|(url, keypair_path)| {
        let signer = read_keypair(&keypair_path)?;
        let mut chain = RpcChain::new(&url).with_priority_fee(cli.global.priority_fee);
        execute(&cli.command, &mut chain, &signer)
    });
    match result {
        Ok(output) => {
            println!("{}", output.render(cli.global.output));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            if let Some(message) = error.program_error_message() {
                eprintln!("  {message}");
            }
            ExitCode::FAILURE
        }
    }
}
