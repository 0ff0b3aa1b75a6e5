//! `tally-worker`: serve a chat model (GGUF, llama family) over OpenAI's chat and
//! text completions APIs, and a sentence-embedding model over its embeddings API.
//!
//!     tally-worker --listen 127.0.0.1:8000      # the models scripts/fetch-model put in target/models
//!     tally-worker --chat-model FILE.gguf --no-embeddings
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tally_worker::{DeviceChoice, ModelOptions, Worker, WorkerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "tally-worker",
    version,
    about = "An OpenAI-compatible inference server running real models on CPU or GPU: a GGUF chat model (/v1/chat/completions, /v1/completions) and a sentence-embedding model (/v1/embeddings)"
)]
struct Args {
    /// The chat model: a GGUF file of a llama-family model (weights, tokenizer and
    /// chat template) [default: target/models/SmolLM2-135M-Instruct.Q4_1.gguf, from
    /// scripts/fetch-model, when present]
    #[arg(long, env = "TALLY_CHAT_MODEL")]
    chat_model: Option<PathBuf>,
    /// Serve no chat model
    #[arg(long, conflicts_with = "chat_model")]
    no_chat: bool,
    /// The chat model's name in the API [default: the file's name without .gguf]
    #[arg(long)]
    chat_model_name: Option<String>,
    /// Tokens a chat sequence holds, prompt and completion [default: the model's
    /// trained context, at most 4096]
    #[arg(long)]
    context: Option<usize>,
    /// Chat sequences generating at once (interleaved token by token); more wait
    #[arg(long, default_value_t = 8)]
    max_active: usize,
    /// The embedding model directory: config.json, model.safetensors, tokenizer.json
    /// (and, where present, sentence-transformers' pooling/normalize settings)
    /// [default: target/models/all-MiniLM-L6-v2, from scripts/fetch-model, when present]
    #[arg(long, env = "TALLY_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Serve no embedding model
    #[arg(long, conflicts_with = "model_dir")]
    no_embeddings: bool,
    /// The embedding model's name in the API [default: the directory's name]
    #[arg(long)]
    model_name: Option<String>,
    /// Address to serve on
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Where to run the models
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Embedding inputs per forward pass
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Cut embedding inputs longer than the model reads (instead of refusing them);
    /// the usage reported is what the model read
    #[arg(long)]
    truncate: bool,
}

/// The models to serve: those named, else the defaults that are on disk.
fn models(args: &Args) -> Result<(Option<PathBuf>, Option<PathBuf>), String> {
    let explicit = args.chat_model.is_some() || args.model_dir.is_some();
    let chat = match (&args.chat_model, args.no_chat) {
        (Some(path), _) => Some(path.clone()),
        (None, true) => None,
        (None, false) => {
            Some(tally_worker::default_chat_model()).filter(|p| !explicit && p.is_file())
        }
    };
    let embeddings = match (&args.model_dir, args.no_embeddings) {
        (Some(dir), _) => Some(dir.clone()),
        (None, true) => None,
        (None, false) => Some(tally_worker::default_model_dir())
            .filter(|d| !explicit && tally_worker::model::missing_files(d).is_none()),
    };
    if chat.is_none() && embeddings.is_none() {
        return Err(format!(
            "no model to serve: run scripts/fetch-model (it puts SmolLM2-135M-Instruct in {} and all-MiniLM-L6-v2 in {}), or give --chat-model FILE.gguf / --model-dir DIR",
            tally_worker::DEFAULT_CHAT_MODEL,
            tally_worker::DEFAULT_MODEL_DIR
        ));
    }
    Ok((chat, embeddings))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (chat_model, model_dir) = match models(&args) {
        Ok(models) => models,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = WorkerConfig {
        model_dir,
        model_name: args.model_name.clone(),
        chat_model,
        chat_model_name: args.chat_model_name.clone(),
        options: ModelOptions {
            device: args.device,
            truncate: args.truncate,
        },
        batch_size: args.batch_size,
        context: args.context,
        max_active: args.max_active,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let loaded = std::time::Instant::now();
        let worker = Worker::load(&config).map_err(|e| format!("cannot load the model: {e}"))?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        if let (Some(name), Some(model)) = (worker.chat_model_name(), worker.chat_model()) {
            eprintln!(
                "tally-worker: chat model {name} ({}, {} tokens of context, {} vocabulary) from {}",
                model.architecture(),
                model.context(),
                model.tokenizer().vocab_size(),
                model.path().display(),
            );
        }
        if let (Some(name), Some(embedder)) = (worker.embeddings_model_name(), worker.embedder()) {
            eprintln!(
                "tally-worker: embedding model {name} ({} dimensions, at most {} tokens per input, {:?} pooling{})",
                embedder.dimensions(),
                embedder.max_tokens(),
                embedder.pooling(),
                if embedder.normalize() { ", normalized" } else { "" },
            );
        }
        eprintln!(
            "tally-worker: loaded on {} in {:.2} s; serving http://{address}/v1",
            worker.device_name(),
            loaded.elapsed().as_secs_f64(),
        );
        // Ctrl-C or SIGTERM: stop accepting, finish the requests in flight.
        let shutdown = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        worker
            .serve_until(listener, shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
