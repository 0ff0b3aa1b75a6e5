//! tally-worker against the real models: all-MiniLM-L6-v2 (embeddings) and
//! SmolLM2-135M-Instruct Q4_1 (chat), which scripts/fetch-model puts in target/models
//! (TALLY_MODEL_DIR and TALLY_CHAT_MODEL point elsewhere), and OpenAI's Python client,
//! which it installs in target/openai-venv. Where a model is absent the tests that
//! need it print `real-model tests skipped: <reason>` and pass (without the client, the
//! end-to-end test skips its Python step: `OpenAI Python client step skipped: …`);
//! TALLY_REQUIRE_MODEL=1 (CI) makes either a failure.
//!
//! - `model`: the embeddings match an independent reference to 1e-4, usage is the
//!   tokenizer's count, batching changes nothing, bad requests get clear 4xx errors.
//! - `chat`: chat completions count tokens as llama.cpp does, stream, stop, refuse.
//! - `e2e`: a client funds jobs and signs job keys; embedding and chat requests
//!   (streamed and not; from Rust and from OpenAI's Python client) go through the
//!   oracle gateway to this worker (a real process), the invoices carry the worker's
//!   token counts, receipts settle on the chain (embedded, and
//!   solana-test-validator), the invoices verify against it, the operator claims, and
//!   what the chain paid equals the invoices.
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

/// The Python of the virtual environment scripts/fetch-model installs OpenAI's client
/// in (`TALLY_OPENAI_PYTHON` names another), or `None` (after printing why) when it
/// cannot import `openai`.
pub fn openai_python_or_skip() -> Option<PathBuf> {
    let python = std::env::var_os("TALLY_OPENAI_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/openai-venv/bin/python"),
        PathBuf::from,
    );
    let imports = Command::new(&python)
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if imports {
        return Some(python);
    }
    let line = format!(
        "OpenAI Python client step skipped: {} cannot import openai; run scripts/fetch-model openai",
        python.display()
    );
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
    /// Starts the `tally-worker` binary on the embedding model `model` (and the chat
    /// model `chat`, a GGUF file, where given) and waits until it serves.
    pub fn start(model: &std::path::Path, chat: Option<&std::path::Path>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally-worker"));
        command
            .args(["--listen", "127.0.0.1:0", "--device", "cpu", "--model-dir"])
            .arg(model);
        if let Some(chat) = chat {
            command.arg("--chat-model").arg(chat);
        }
        let mut child = command
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
