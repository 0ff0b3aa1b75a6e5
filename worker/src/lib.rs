//! tally-worker: a reference GPU worker for Tally — an OpenAI-compatible embeddings
//! server running a real sentence-embedding model (BERT family: all-MiniLM-L6-v2 and
//! the like) with candle on the CPU, or on a GPU with the `cuda` feature.
//!
//! It plays the operator's inference server in the end-to-end test and in
//! `tally demo --real-model`: the oracle's gateway meters the `usage` it reports,
//! counted by the model's own tokenizer, and its `/metrics` carries vLLM's token
//! counters for the oracle's cross-check.
//!
//! - [`model`]: loading a model directory and embedding (tokenize, encode, pool,
//!   normalize) as sentence-transformers does.
//! - [`server`]: the HTTP API, dynamic batching, metrics.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod model;
pub mod server;

pub use model::{DeviceChoice, Embedder, ModelError, ModelOptions};
pub use server::{Embedded, Worker, WorkerConfig};

/// Where `scripts/fetch-model` puts all-MiniLM-L6-v2, relative to the repository root.
pub const DEFAULT_MODEL_DIR: &str = "target/models/all-MiniLM-L6-v2";

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
