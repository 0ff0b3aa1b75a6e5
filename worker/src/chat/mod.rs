//! Chat and text completions with a GGUF llama-family model (SmolLM2, Llama, …):
//! OpenAI's `/v1/chat/completions` and `/v1/completions`, streamed or not, counted
//! as llama.cpp counts them.
//!
//! - [`tokenizer`]: the GGUF's own tokenizer (byte-level BPE, special tokens).
//! - [`template`]: the GGUF's chat template, rendered with Jinja (minijinja).
//! - [`ggml`]: llama.cpp's quantized matrix products on the CPU.
//! - [`llama`]: the network, computed as llama.cpp computes it (F16 KV cache).
//! - [`model`]: the loaded model, sequences, sampling, stops.
//! - [`engine`]: the generation thread, interleaving concurrent requests.
//! - [`api`]: OpenAI's request and response shapes.
pub mod api;
pub mod engine;
pub mod ggml;
pub mod llama;
pub mod model;
pub mod template;
pub mod tokenizer;

pub use model::{ChatModel, Finish, Limits, Sampling, Sequence};
