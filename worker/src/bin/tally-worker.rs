//! `tally-worker`: serve a sentence-embedding model over the OpenAI embeddings API.
//!
//!     tally-worker --model-dir target/models/all-MiniLM-L6-v2 --listen 127.0.0.1:8000
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tally_worker::{DeviceChoice, ModelOptions, Worker, WorkerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "tally-worker",
    version,
    about = "An OpenAI-compatible embeddings server running a real sentence-embedding model (BERT family) on CPU or GPU"
)]
struct Args {
    /// The model directory: config.json, model.safetensors, tokenizer.json (and,
    /// where present, sentence-transformers' pooling/normalize settings)
    /// [default: target/models/all-MiniLM-L6-v2, from scripts/fetch-model]
    #[arg(long, env = "TALLY_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Address to serve on
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// The model's name in the API [default: the directory's name]
    #[arg(long)]
    model_name: Option<String>,
    /// Where to run the model
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Inputs per forward pass
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Cut inputs longer than the model reads (instead of refusing them); the usage
    /// reported is what the model read
    #[arg(long)]
    truncate: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = WorkerConfig {
        model_dir: args
            .model_dir
            .unwrap_or_else(tally_worker::default_model_dir),
        model_name: args.model_name,
        options: ModelOptions {
            device: args.device,
            truncate: args.truncate,
        },
        batch_size: args.batch_size,
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
        let embedder = worker.embedder();
        eprintln!(
            "tally-worker: {} ({} dimensions, at most {} tokens per input, {:?} pooling{}) on {} loaded in {:.2} s; serving http://{}/v1/embeddings",
            worker.model_name(),
            embedder.dimensions(),
            embedder.max_tokens(),
            embedder.pooling(),
            if embedder.normalize() { ", normalized" } else { "" },
            embedder.device_name(),
            loaded.elapsed().as_secs_f64(),
            listener.local_addr().map_err(|e| e.to_string())?,
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
