//! tally-worker: a reference GPU worker for Tally — an OpenAI-compatible inference
//! server running real models with candle on the CPU (or on a GPU with the `cuda`
//! feature): a chat model (a GGUF llama-family LLM such as SmolLM2-135M-Instruct:
//! chat and text completions, streamed or not) and a sentence-embedding model (BERT
//! family: all-MiniLM-L6-v2 and the like).
//!
//! It plays the operator's inference server in the end-to-end tests and in
//! `tally demo --real-model`: the oracle's gateway meters the `usage` it reports,
//! counted by the model's own tokenizer as llama.cpp and vLLM count, and its
//! `/metrics` carries vLLM's token counters for the oracle's cross-check.
//!
//! - [`chat`]: the GGUF chat model — tokenizer and chat template from the file,
//!   generation, the OpenAI chat/completions shapes.
//! - [`model`]: loading an embedding model directory and embedding (tokenize,
//!   encode, pool, normalize) as sentence-transformers does.
//! - [`server`]: the HTTP API, batching and interleaving, metrics.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod chat;
pub mod model;
pub mod server;

pub use chat::ChatModel;
pub use model::{DeviceChoice, Embedder, ModelError, ModelOptions};
pub use server::{Embedded, Worker, WorkerConfig};

/// Where `scripts/fetch-model` puts all-MiniLM-L6-v2, relative to the repository root.
pub const DEFAULT_MODEL_DIR: &str = "target/models/all-MiniLM-L6-v2";

/// Where `scripts/fetch-model` puts SmolLM2-135M-Instruct (Q4_1 GGUF), relative to
/// the repository root.
pub const DEFAULT_CHAT_MODEL: &str = "target/models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The chat model to use: `TALLY_CHAT_MODEL`, else [`DEFAULT_CHAT_MODEL`] under the
/// repository root this crate was built from.
pub fn default_chat_model() -> std::path::PathBuf {
    std::env::var_os("TALLY_CHAT_MODEL").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(DEFAULT_CHAT_MODEL)
        },
        std::path::PathBuf::from,
    )
}

/// The model directory to use: `TALLY_MODEL_DIR`, else [`DEFAULT_MODEL_DIR`] under
/// the repository root this crate was built from.
pub fn default_model_dir() -> std::path::PathBuf {
    std::env::var_os("TALLY_MODEL_DIR").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(DEFAULT_MODEL_DIR)
        },
        std::path::PathBuf::from,
    )
}
