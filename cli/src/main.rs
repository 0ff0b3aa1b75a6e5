//! `tally`: the command line of [`tally_cli`].
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tally_cli::Cli::parse();
    match tally_cli::run(&cli) {
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
