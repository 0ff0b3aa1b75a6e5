//! Builds the program's IDL through Anchor's idl-build path (the builder behind
//! `anchor idl build`) and prints it as JSON, as `anchor idl build` writes it.
//!
//! Usage: tally-idl [--write PATH]
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // anchor-lang-idl 0.2.0 turns a set RUSTUP_TOOLCHAIN into the literal argument
    // "+{toolchain}"; without it, cargo follows rust-toolchain.toml as usual. This is
    // a single-threaded process, so changing the environment here is sound.
    std::env::remove_var("RUSTUP_TOOLCHAIN");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let idl = match anchor_lang_idl::build::IdlBuilder::new()
        .program_path(root.join("programs/tally"))
        .build()
    {
        Ok(idl) => idl,
        Err(e) => {
            eprintln!("tally-idl: building the IDL failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let json = match serde_json::to_string_pretty(&idl) {
        Ok(json) => json + "\n",
        Err(e) => {
            eprintln!("tally-idl: cannot serialize the IDL: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("--write"), Some(path)) => {
            if let Err(e) = std::fs::write(&path, json) {
                eprintln!("tally-idl: cannot write {path}: {e}");
                return ExitCode::FAILURE;
            }
            eprintln!("tally-idl: wrote {path}");
        }
        (None, None) => print!("{json}"),
        _ => {
            eprintln!("usage: tally-idl [--write PATH]");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
