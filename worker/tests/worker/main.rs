//! tally-worker against the real all-MiniLM-L6-v2 (scripts/fetch-model puts it in
//! target/models/all-MiniLM-L6-v2; TALLY_MODEL_DIR points elsewhere). Where the model
//! is absent each test prints `real-model tests skipped: <reason>` and passes;
//! TALLY_REQUIRE_MODEL=1 (CI) makes that a failure.
//!
//! - `model`: the embeddings match an independent reference to 1e-4, usage is the
//!   tokenizer's count, batching changes nothing, bad requests get clear 4xx errors.
//! - `e2e`: a client funds a job, its requests go through the oracle gateway to this
//!   worker (a real process), the invoices carry the real token counts, receipts
//!   settle on the chain (embedded, and solana-test-validator), the operator claims,
//!   and what the chain paid equals the invoices.
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

mod chat;
mod e2e;
mod model;

/// The line printed when the model is absent.
pub const SKIP_PREFIX: &str = "real-model tests skipped";

/// The model directory, or `None` (after printing why) when it is not on disk.
pub fn model_or_skip() -> Option<PathBuf> {
    let dir = tally_worker::default_model_dir();
    let Some(reason) = tally_worker::model::missing_files(&dir) else {
        return Some(dir);
    };
    let line = format!("{SKIP_PREFIX}: {reason}; run scripts/fetch-model");
    assert!(
        std::env::var_os("TALLY_REQUIRE_MODEL").is_none_or(|v| v != "1"),
        "TALLY_REQUIRE_MODEL=1 but {line}"
    );
    eprintln!("{line}");
    None
}

/// A `tally-worker` process on a loopback port, killed when dropped.
pub struct WorkerProcess {
    child: Child,
    pub url: String,
}

impl WorkerProcess {
    /// Starts the `tally-worker` binary on `model` and waits until it serves.
    pub fn start(model: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally-worker"))
            .args(["--listen", "127.0.0.1:0", "--device", "cpu", "--model-dir"])
            .arg(model)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tally-worker");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let Some(Ok(line)) = lines.next() else {
                let status = child.wait();
                panic!("tally-worker exited before serving: {status:?}");
            };
            eprintln!("{line}");
            if let Some(rest) = line.split("serving http://").nth(1) {
                let address = rest.trim_end_matches("/v1");
                break format!("http://{address}");
            }
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, url }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
