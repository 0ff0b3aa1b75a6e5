//! The HTTP side: an OpenAI-compatible server for the models loaded (an embedding
//! model, a chat model, or both).
//!
//! - `POST /v1/chat/completions` and `POST /v1/completions` (chat model) — OpenAI's
//!   chat and text completions, streamed as server-sent events (`stream: true`; the
//!   usage chunk with `stream_options.include_usage`) or not; `usage.prompt_tokens`
//!   is the rendered prompt's tokens (special tokens included), `completion_tokens`
//!   the tokens generated. See [`crate::chat`].
//! - `POST /tokenize` and `POST /detokenize` (chat model), as vLLM serves them:
//!   `{"prompt"}` (or llama.cpp's `{"content"}`, or `{"messages"}` through the chat
//!   template) → `{"count", "tokens", "max_model_len"}`.
//! - `POST /v1/embeddings` (embedding model) — `{"input": "text" | ["text", …],
//!   "model"?, "encoding_format"?: "float" | "base64", "dimensions"?}` →
//!   `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
//!   "model", "usage": {"prompt_tokens", "total_tokens"}}`; `usage` is counted by
//!   the model's tokenizer (special tokens included: what the model read).
//! - `GET /v1/models`, `GET /health`.
//! - `GET /metrics` — Prometheus text with vLLM's token counters per model
//!   (`vllm:prompt_tokens_total`, `vllm:generation_tokens_total`), so the oracle's
//!   metrics cross-check reads this worker as it reads vLLM.
//!
//! Requests are checked on arrival (bad input is refused at once with a 4xx in
//! OpenAI's error shape). Embedding requests queue to one inference thread, which
//! merges the requests waiting into shared batches (dynamic batching); generation
//! requests queue to the generation thread, which interleaves them token by token.
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::chat::api::{self, Endpoint, GenerationRequest, ResponseHead};
use crate::chat::engine::{self, Event, Generation, Outcome};
use crate::chat::ChatModel;
use crate::model::{Embedder, ModelError, ModelOptions, Tokenized};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The most inputs one request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// How to run the worker: which models, and how.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// An embedding model directory (config.json, model.safetensors, tokenizer.json).
    pub model_dir: Option<PathBuf>,
    /// The name the embedding model is served as [default: the directory's name].
    pub model_name: Option<String>,
    /// A chat model: one GGUF file (llama family).
    pub chat_model: Option<PathBuf>,
    /// The name the chat model is served as [default: the file's name without `.gguf`].
    pub chat_model_name: Option<String>,
    pub options: ModelOptions,
    /// Embedding inputs per forward pass.
    pub batch_size: usize,
    /// Tokens a chat sequence may hold, prompt and completion [default: the model's
    /// trained context, at most 4,096].
    pub context: Option<usize>,
    /// Chat sequences generating at once; further requests wait their turn.
    pub max_active: usize,
}

impl WorkerConfig {
    /// An embeddings worker for the model in `model_dir`.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: Some(model_dir.into()),
            ..Self::empty()
        }
    }

    /// A chat worker for the GGUF file `chat_model`.
    pub fn chat(chat_model: impl Into<PathBuf>) -> Self {
        Self {
            chat_model: Some(chat_model.into()),
            ..Self::empty()
        }
    }

    /// Also serve the chat model in `chat_model`.
    #[must_use]
    pub fn with_chat(mut self, chat_model: impl Into<PathBuf>) -> Self {
        self.chat_model = Some(chat_model.into());
        self
    }

    fn empty() -> Self {
        Self {
            model_dir: None,
            model_name: None,
            chat_model: None,
            chat_model_name: None,
            options: ModelOptions::default(),
            batch_size: 32,
            context: None,
            max_active: 8,
        }
    }
}

/// Counters behind `/metrics`.
#[derive(Default)]
pub struct Stats {
    /// Tokens embedded.
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens read by the chat model.
    pub chat_prompt_tokens: AtomicU64,
    /// Tokens generated and counted (end-of-generation tokens are not).
    pub generation_tokens: AtomicU64,
    /// Chat sequences generating now.
    pub chat_active: AtomicU64,
    pub requests: AtomicU64,
    pub request_errors: AtomicU64,
    pub embeddings: AtomicU64,
    pub forward_passes: AtomicU64,
    pub inference_nanos: AtomicU64,
}

/// Embeddings of some inputs and the tokens the model read for each.
#[derive(Clone, Debug)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: Vec<usize>,
}

impl Embedded {
    pub fn total_tokens(&self) -> u64 {
        self.tokens.iter().map(|&t| t as u64).sum()
    }
}

struct Work {
    inputs: Vec<Tokenized>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

struct EmbeddingService {
    embedder: Arc<Embedder>,
    name: String,
    queue: mpsc::Sender<Work>,
}

struct ChatService {
    model: Arc<ChatModel>,
    name: String,
    queue: mpsc::Sender<Generation>,
}

impl ChatService {
    /// Queues `request` for the generation thread; what it generates comes back on
    /// the receiver (dropping it abandons the generation).
    #[allow(clippy::result_large_err)] // the error is the response to send
    async fn enqueue(
        &self,
        request: GenerationRequest,
    ) -> Result<mpsc::UnboundedReceiver<Event>, Response<Body>> {
        let (events, heard) = mpsc::unbounded_channel();
        let generation = Generation {
            prompt: request.prompt,
            limits: request.limits,
            sampling: request.sampling,
            events,
        };
        if self.queue.send(generation).await.is_err() {
            return Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the generation thread has stopped: restart the worker",
            ));
        }
        Ok(heard)
    }
}

/// The running worker: its models, their threads, and the counters.
pub struct Worker {
    embeddings: Option<EmbeddingService>,
    chat: Option<ChatService>,
    device: String,
    pub stats: Arc<Stats>,
    started: std::time::SystemTime,
}

/// What every handler answers with: a whole body or a stream.
pub type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A response body fed from a channel (server-sent events as they are generated).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// An error in OpenAI's shape (`{"error": {"message", "type", "code"}}`).
fn error_body(status: StatusCode, message: &str) -> Value {
    let kind = match status {
        StatusCode::NOT_FOUND => "NotFoundError",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    json!({ "error": { "message": message, "type": kind, "param": Value::Null, "code": status.as_u16() } })
}

fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &error_body(status, message))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// A non-streamed answer: waits for the generation to end (dropping `heard`, when
/// the client leaves, abandons it).
async fn whole_answer(
    response_head: &ResponseHead,
    mut heard: mpsc::UnboundedReceiver<Event>,
) -> Response<Body> {
    loop {
        match heard.recv().await {
            Some(Event::Text(_)) => {}
            Some(Event::Done(outcome)) => {
                return json_response(
                    StatusCode::OK,
                    &response_head.answer(
                        &outcome.text,
                        outcome.finish,
                        outcome.prompt_tokens,
                        outcome.completion_tokens,
                    ),
                )
            }
            Some(Event::Failed(e)) => {
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("generation failed: {e}"),
                )
            }
            None => {
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the generation thread stopped mid-request: restart the worker",
                )
            }
        }
    }
}

/// A streamed answer: server-sent events as they are generated; a client that
/// leaves closes the channel, which abandons the generation.
fn event_stream(
    response_head: ResponseHead,
    heard: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(send_events(response_head, heard, include_usage, tx));
    let mut response = Response::new(BoxBody::new(ChannelBody(rx)));
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    response
}

/// Feeds `tx` the stream's chunks: (chat) the role, the text as it comes, then the
/// finish, (with `include_usage`) the usage and `[DONE]`; or, when generation fails,
/// the error (and no `[DONE]`). Stops when the client leaves.
async fn send_events(
    response_head: ResponseHead,
    mut heard: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
    tx: mpsc::Sender<Bytes>,
) {
    let chat_role = response_head.endpoint == Endpoint::Chat;
    if chat_role
        && tx
            .send(sse(&response_head.chunk(
                Some(""),
                true,
                None,
                include_usage,
            )))
            .await
            .is_err()
    {
        return;
    }
    while let Some(event) = heard.recv().await {
        let chunk = match event {
            Event::Text(text) => sse(&response_head.chunk(Some(&text), false, None, include_usage)),
            Event::Done(outcome) => {
                let _ = tx
                    .send(last_chunks(&response_head, &outcome, include_usage))
                    .await;
                return;
            }
            Event::Failed(e) => {
                // No [DONE]: the stream ends with the error.
                let _ = tx
                    .send(sse(&error_body(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("generation failed: {e}"),
                    )))
                    .await;
                return;
            }
        };
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
}

/// The end of a stream, sent as one piece: the finish chunk, the usage chunk (with
/// `include_usage`), `[DONE]`.
fn last_chunks(response_head: &ResponseHead, outcome: &Outcome, include_usage: bool) -> Bytes {
    let mut tail = Vec::from(sse(&response_head.chunk(
        None,
        false,
        Some(outcome.finish),
        include_usage,
    )));
    if include_usage {
        tail.extend_from_slice(&sse(
            &response_head.usage_chunk(outcome.prompt_tokens, outcome.completion_tokens)
        ));
    }
    tail.extend_from_slice(b"data: [DONE]\n\n");
    Bytes::from(tail)
}

#[allow(clippy::result_large_err)] // the error is the response to send
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is over {MAX_BODY_BYTES} bytes"),
        )
    };
    let headers = req.headers();
    let announced = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = headers
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = req.into_body();
    if announced.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        // A client waiting for `100 Continue` has sent nothing to discard.
        if !expects_continue {
            discard(body);
        }
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("could not read the request body: {e}"),
                ))
            }
        };
        if let Ok(data) = frame.into_data() {
            if bytes.len().saturating_add(data.len()) > MAX_BODY_BYTES {
                discard(body);
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(bytes))
}

/// Reads what is left of a body refused as too large and throws it away (for at most
/// ten seconds) while the `413` is sent: a socket closed with bytes still unread is
/// reset (RFC 9112 §9.6), and a client still sending would see a broken pipe instead
/// of the answer. This is the lingering close of nginx and Apache.
fn discard(mut body: Incoming) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    });
}

/// The inference thread: waits for work, takes everything else already queued (up
/// to a few batches' worth), runs it together, and answers each request.
fn inference_loop(
    embedder: &Embedder,
    stats: &Stats,
    batch_size: usize,
    mut queue: mpsc::Receiver<Work>,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut works = vec![first];
        let mut inputs: usize = works[0].inputs.len();
        while inputs < batch_size * 4 {
            match queue.try_recv() {
                Ok(work) => {
                    inputs += work.inputs.len();
                    works.push(work);
                }
                Err(_) => break,
            }
        }
        let all: Vec<Tokenized> = works.iter().flat_map(|w| w.inputs.clone()).collect();
        let started = Instant::now();
        let result = embedder.embed(&all, batch_size);
        stats.inference_nanos.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        stats.forward_passes.fetch_add(
            all.len().div_ceil(batch_size.max(1)) as u64,
            Ordering::Relaxed,
        );
        match result {
            Ok(mut vectors) => {
                for work in works.into_iter().rev() {
                    let mine = vectors.split_off(vectors.len() - work.inputs.len());
                    let _ = work.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                for work in works {
                    let _ = work.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

fn thread_error(path: &std::path::Path, e: &std::io::Error) -> ModelError {
    ModelError::Load {
        path: path.display().to_string(),
        reason: format!("cannot start the model's thread: {e}"),
    }
}

/// Whether requests to `path` are metered (and counted in `/metrics`): the
/// embeddings and completions APIs.
fn is_metered(path: &str) -> bool {
    matches!(
        path,
        "/v1/embeddings"
            | "/embeddings"
            | "/v1/chat/completions"
            | "/chat/completions"
            | "/v1/completions"
            | "/completions"
    )
}

/// The label value for a model name in Prometheus text.
fn label(name: &str) -> String {
    format!("model_name=\"{}\"", name.replace(['"', '\\', '\n'], "_"))
}

impl Worker {
    /// Loads the configured models and starts their threads.
    pub fn load(config: &WorkerConfig) -> Result<Arc<Self>, ModelError> {
        if config.model_dir.is_none() && config.chat_model.is_none() {
            return Err(ModelError::Missing(
                "no model to serve: give an embedding model directory (--model-dir) or a chat model GGUF (--chat-model)".into(),
            ));
        }
        let stats = Arc::new(Stats::default());
        let device = crate::model::pick_device(config.options.device)?;
        let embeddings = match &config.model_dir {
            None => None,
            Some(dir) => {
                let embedder = Arc::new(Embedder::load(dir, &config.options)?);
                let name = config.model_name.clone().unwrap_or_else(|| {
                    dir.file_name()
                        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
                });
                let (queue, rx) = mpsc::channel::<Work>(1024);
                let batch_size = config.batch_size.max(1);
                let (thread_embedder, thread_stats) = (Arc::clone(&embedder), Arc::clone(&stats));
                std::thread::Builder::new()
                    .name("tally-worker-inference".into())
                    .spawn(move || inference_loop(&thread_embedder, &thread_stats, batch_size, rx))
                    .map_err(|e| thread_error(dir, &e))?;
                Some(EmbeddingService {
                    embedder,
                    name,
                    queue,
                })
            }
        };
        let chat = match &config.chat_model {
            None => None,
            Some(path) => {
                let model = Arc::new(ChatModel::load(path, &device, config.context)?);
                let name = config.chat_model_name.clone().unwrap_or_else(|| {
                    path.file_name().map_or_else(
                        || "model".into(),
                        |n| n.to_string_lossy().trim_end_matches(".gguf").to_string(),
                    )
                });
                let queue =
                    engine::spawn(Arc::clone(&model), Arc::clone(&stats), config.max_active)
                        .map_err(|e| thread_error(path, &e))?;
                Some(ChatService { model, name, queue })
            }
        };
        Ok(Arc::new(Self {
            embeddings,
            chat,
            device: device_name(&device),
            stats,
            started: std::time::SystemTime::now(),
        }))
    }

    /// The name of the main model served: the chat model's if there is one, else the
    /// embedding model's.
    pub fn model_name(&self) -> &str {
        self.chat_model_name()
            .or(self.embeddings_model_name())
            .unwrap_or_default()
    }

    /// The chat model's name in the API, if one is served.
    pub fn chat_model_name(&self) -> Option<&str> {
        self.chat.as_ref().map(|c| c.name.as_str())
    }

    /// The embedding model's name in the API, if one is served.
    pub fn embeddings_model_name(&self) -> Option<&str> {
        self.embeddings.as_ref().map(|e| e.name.as_str())
    }

    /// The embedding model, if one is served.
    pub fn embedder(&self) -> Option<&Embedder> {
        self.embeddings.as_ref().map(|e| e.embedder.as_ref())
    }

    /// The chat model, if one is served.
    pub fn chat_model(&self) -> Option<&ChatModel> {
        self.chat.as_ref().map(|c| c.model.as_ref())
    }

    /// `cpu` or `cuda:N`.
    pub fn device_name(&self) -> &str {
        &self.device
    }

    /// Tokens served so far, prompt and generated, over all models (what vLLM's
    /// counters add up to).
    pub fn tokens_served(&self) -> u64 {
        let s = &self.stats;
        s.prompt_tokens.load(Ordering::Relaxed)
            + s.chat_prompt_tokens.load(Ordering::Relaxed)
            + s.generation_tokens.load(Ordering::Relaxed)
    }

    /// Embeds `texts` through the inference thread (as a request would, without HTTP).
    pub async fn embed(&self, texts: &[String]) -> Result<Embedded, ModelError> {
        let Some(service) = &self.embeddings else {
            return Err(ModelError::Input(
                "this worker serves no embedding model (start it with --model-dir)".into(),
            ));
        };
        let inputs = service.embedder.tokenize(texts)?;
        let tokens = inputs.iter().map(Tokenized::tokens).collect();
        let (reply, answer) = oneshot::channel();
        service
            .queue
            .send(Work { inputs, reply })
            .await
            .map_err(|_| ModelError::Failed("the inference thread has stopped".into()))?;
        let vectors = answer
            .await
            .map_err(|_| ModelError::Failed("the inference thread has stopped".into()))?
            .map_err(ModelError::Failed)?;
        Ok(Embedded { vectors, tokens })
    }

    /// Serves HTTP/1.1 on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        self.serve_until(listener, std::future::pending()).await
    }

    /// Serves until `shutdown` resolves, then lets the requests in flight finish.
    pub async fn serve_until(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else {
                        // Out of file descriptors and the like: back off, keep serving.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    };
                    let worker = Arc::clone(&self);
                    let service = hyper::service::service_fn(move |req| {
                        let worker = Arc::clone(&worker);
                        async move { Ok::<_, Infallible>(worker.handle(req).await) }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), graceful.shutdown()).await;
        Ok(())
    }

    fn routes(&self) -> String {
        let mut routes = Vec::new();
        if self.chat.is_some() {
            routes.push("POST /v1/chat/completions, /v1/completions, /tokenize, /detokenize");
        }
        if self.embeddings.is_some() {
            routes.push("POST /v1/embeddings");
        }
        routes.push("GET /v1/models, /health and /metrics");
        routes.join(", ")
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let response = self.route(req, &path).await;
        self.count(&path, response.status());
        response
    }

    /// The answer to `req` for `path`: the endpoint's, or why there is none.
    async fn route(&self, req: Request<Incoming>, path: &str) -> Response<Body> {
        match (req.method(), path) {
            (&Method::POST, "/v1/embeddings" | "/embeddings") if self.embeddings.is_some() => {
                self.embeddings(req).await
            }
            (&Method::POST, "/v1/chat/completions" | "/chat/completions")
                if self.chat.is_some() =>
            {
                self.generate(req, Endpoint::Chat).await
            }
            (&Method::POST, "/v1/completions" | "/completions") if self.chat.is_some() => {
                self.generate(req, Endpoint::Completion).await
            }
            (&Method::POST, "/tokenize") if self.chat.is_some() => self.tokenize(req).await,
            (&Method::POST, "/detokenize") if self.chat.is_some() => self.detokenize(req).await,
            (&Method::GET, "/v1/models") => json_response(StatusCode::OK, &self.models()),
            (&Method::GET, "/health") => json_response(
                StatusCode::OK,
                &json!({ "status": "ok", "models": self.model_names(), "device": self.device }),
            ),
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(full(self.metrics_text()));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            (method, _) => self.not_routed(method, path),
        }
    }

    /// Why nothing here answers `method` on `path`: the model it needs is not served,
    /// the method is not the path's, or the path is unknown.
    fn not_routed(&self, method: &Method, path: &str) -> Response<Body> {
        let model_api = is_metered(path) || path == "/tokenize" || path == "/detokenize";
        match (method, path) {
            (&Method::POST, _) if model_api => {
                let what = if path.ends_with("embeddings") {
                    "no embedding model (start it with --model-dir)"
                } else {
                    "no chat model (start it with --chat-model FILE.gguf)"
                };
                error_response(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "{path} is not served here: this worker has {what}; it serves {}",
                        self.routes()
                    ),
                )
            }
            (_, "/v1/models" | "/health" | "/metrics") => error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} is not allowed on {path}"),
            ),
            (_, _) if model_api => error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} is not allowed on {path}: POST it"),
            ),
            _ => error_response(
                StatusCode::NOT_FOUND,
                &format!(
                    "{path} is not served here: this worker serves {}",
                    self.routes()
                ),
            ),
        }
    }

    /// Counts a metered request (success or error) for a model this worker serves;
    /// one for a model it does not serve is no request of its (a 404 like any
    /// unknown path).
    fn count(&self, path: &str, status: StatusCode) {
        let served = if path.ends_with("embeddings") {
            self.embeddings.is_some()
        } else {
            self.chat.is_some()
        };
        if is_metered(path) && served {
            let counter = if status.is_success() {
                &self.stats.requests
            } else {
                &self.stats.request_errors
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn model_names(&self) -> Vec<&str> {
        self.chat_model_name()
            .into_iter()
            .chain(self.embeddings_model_name())
            .collect()
    }

    fn models(&self) -> Value {
        let created = self
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut data = Vec::new();
        if let Some(chat) = &self.chat {
            data.push(json!({
                "id": chat.name,
                "object": "model",
                "created": created,
                "owned_by": "tally-worker",
                "max_model_len": chat.model.context(),
            }));
        }
        if let Some(service) = &self.embeddings {
            data.push(json!({
                "id": service.name,
                "object": "model",
                "created": created,
                "owned_by": "tally-worker",
                "max_model_len": service.embedder.max_tokens(),
                "dimensions": service.embedder.dimensions(),
            }));
        }
        json!({ "object": "list", "data": data })
    }

    /// `/v1/chat/completions` and `/v1/completions`.
    async fn generate(&self, req: Request<Incoming>, endpoint: Endpoint) -> Response<Body> {
        let Some(chat) = &self.chat else {
            return error_response(StatusCode::NOT_FOUND, "no chat model is served here");
        };
        let body = match read_body(req).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let request = match api::parse(&body, endpoint, &chat.model, &chat.name) {
            Ok(request) => request,
            Err((status, message)) => return error_response(status, &message),
        };
        let (stream, include_usage) = (request.stream, request.include_usage);
        let heard = match chat.enqueue(request).await {
            Ok(heard) => heard,
            Err(response) => return response,
        };
        let response_head = ResponseHead::new(endpoint, &chat.name);
        if stream {
            event_stream(response_head, heard, include_usage)
        } else {
            whole_answer(&response_head, heard).await
        }
    }

    /// `/tokenize`: vLLM's (`prompt` or `messages`) and llama.cpp's (`content`).
    async fn tokenize(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(chat) = &self.chat else {
            return error_response(StatusCode::NOT_FOUND, "no chat model is served here");
        };
        let body = match read_body(req).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&body) else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "the request body must be a JSON object with `prompt`, `content` or `messages`",
            );
        };
        let tokenizer = chat.model.tokenizer();
        let add_special = object
            .get("add_special_tokens")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let tokens = if let Some(messages) = object.get("messages") {
            let messages = match api::messages_for_template(Some(messages)) {
                Ok(m) => m,
                Err((status, message)) => return error_response(status, &message),
            };
            let Some(template) = chat.model.template() else {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "this model's GGUF has no chat template",
                );
            };
            let generation_prompt = object
                .get("add_generation_prompt")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            template
                .render(
                    &messages,
                    object.get("tools").filter(|t| !t.is_null()),
                    generation_prompt,
                )
                .and_then(|text| tokenizer.encode(&text, false))
        } else {
            match object.get("prompt").or_else(|| object.get("content")) {
                Some(Value::String(text)) => tokenizer.encode(text, add_special),
                _ => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "send `prompt` (or `content`) as a string, or `messages`",
                    )
                }
            }
        };
        match tokens {
            Ok(tokens) => json_response(
                StatusCode::OK,
                &json!({ "count": tokens.len(), "tokens": tokens, "max_model_len": chat.model.context() }),
            ),
            Err(e) => error_response(StatusCode::BAD_REQUEST, &e),
        }
    }

    /// `/detokenize`: `{"tokens": [ids]}` → `{"prompt": text}`.
    async fn detokenize(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(chat) = &self.chat else {
            return error_response(StatusCode::NOT_FOUND, "no chat model is served here");
        };
        let body = match read_body(req).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let tokenizer = chat.model.tokenizer();
        let vocab = tokenizer.vocab_size() as u64;
        let tokens: Option<Vec<u32>> = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("tokens").and_then(Value::as_array).cloned())
            .and_then(|items| {
                items
                    .iter()
                    .map(|t| {
                        t.as_u64()
                            .filter(|&t| t < vocab)
                            .and_then(|t| u32::try_from(t).ok())
                    })
                    .collect()
            });
        match tokens {
            Some(tokens) => json_response(
                StatusCode::OK,
                &json!({ "prompt": String::from_utf8_lossy(&tokenizer.decode(&tokens)) }),
            ),
            None => error_response(
                StatusCode::BAD_REQUEST,
                &format!("send {{\"tokens\": [ids]}} with ids below {vocab}"),
            ),
        }
    }

    async fn embeddings(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(service) = &self.embeddings else {
            return error_response(StatusCode::NOT_FOUND, "no embedding model is served here");
        };
        let body = match read_body(req).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let request = match parse_request(&body, &service.name, service.embedder.dimensions()) {
            Ok(request) => request,
            Err((status, message)) => return error_response(status, &message),
        };
        let embedded = match self.embed(&request.texts).await {
            Ok(embedded) => embedded,
            Err(ModelError::Input(message)) => {
                return error_response(StatusCode::BAD_REQUEST, &message)
            }
            Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let tokens = embedded.total_tokens();
        self.stats
            .prompt_tokens
            .fetch_add(tokens, Ordering::Relaxed);
        self.stats
            .embeddings
            .fetch_add(embedded.vectors.len() as u64, Ordering::Relaxed);
        let data: Vec<Value> = embedded
            .vectors
            .iter()
            .enumerate()
            .map(|(index, vector)| {
                let embedding = if request.base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(vector)
                };
                json!({ "object": "embedding", "index": index, "embedding": embedding })
            })
            .collect();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        json_response(
            StatusCode::OK,
            &json!({
                // Unique per response: the oracle keeps it beside its own request id.
                "id": format!("embd-{:032x}", rand::random::<u128>()),
                "object": "list",
                "created": created,
                "model": service.name,
                "data": data,
                "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
            }),
        )
    }

    /// vLLM's token counters (one series per model), and the worker's own, in
    /// Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |kind: &str, name: &str, help: &str, series: &[(String, String)]| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
            for (labels, value) in series {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        let embed = self.embeddings_model_name().map(label);
        let chat = self.chat_model_name().map(label);
        let all = label(&self.model_names().join(","));
        let per_model = |embedding: String, chat_value: String| -> Vec<(String, String)> {
            embed
                .iter()
                .map(|l| (l.clone(), embedding.clone()))
                .chain(chat.iter().map(|l| (l.clone(), chat_value.clone())))
                .collect()
        };
        metric(
            "counter",
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
            &per_model(
                format!("{}.0", get(&s.prompt_tokens)),
                format!("{}.0", get(&s.chat_prompt_tokens)),
            ),
        );
        metric(
            "counter",
            "vllm:generation_tokens_total",
            "Number of generation tokens processed (an encoder generates none; end-of-generation tokens are not counted, as in usage).",
            &per_model("0.0".into(), format!("{}.0", get(&s.generation_tokens))),
        );
        metric(
            "gauge",
            "vllm:num_requests_running",
            "Chat sequences generating now.",
            &chat
                .iter()
                .map(|l| (l.clone(), format!("{}.0", get(&s.chat_active))))
                .collect::<Vec<_>>(),
        );
        metric(
            "counter",
            "vllm:request_success_total",
            "Count of successfully processed requests.",
            &[(all.clone(), format!("{}.0", get(&s.requests)))],
        );
        metric(
            "counter",
            "tally_worker_request_errors_total",
            "Requests refused or failed.",
            &[(all.clone(), format!("{}.0", get(&s.request_errors)))],
        );
        metric(
            "counter",
            "tally_worker_embeddings_total",
            "Embeddings computed.",
            &[(all.clone(), format!("{}.0", get(&s.embeddings)))],
        );
        metric(
            "counter",
            "tally_worker_forward_passes_total",
            "Batched forward passes of the embedding model.",
            &[(all.clone(), format!("{}.0", get(&s.forward_passes)))],
        );
        #[allow(clippy::cast_precision_loss)]
        let seconds = get(&s.inference_nanos) as f64 / 1e9;
        metric(
            "counter",
            "tally_worker_inference_seconds_total",
            "Time spent in the models.",
            &[(all, format!("{seconds:.6}"))],
        );
        out
    }
}

/// A parsed `POST /v1/embeddings` body.
#[derive(Debug, PartialEq)]
pub struct EmbeddingsRequest {
    pub texts: Vec<String>,
    pub base64: bool,
}

/// Parses and checks an OpenAI embeddings request for the model `served`.
pub fn parse_request(
    body: &[u8],
    served: &str,
    dimensions: usize,
) -> Result<EmbeddingsRequest, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the request body is not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(bad(
            "the request body must be a JSON object with an `input`".into(),
        ));
    };
    if let Some(model) = object.get("model").filter(|m| !m.is_null()) {
        match model.as_str() {
            Some(m) if m == served || m.is_empty() => {}
            Some(m) => {
                return Err((
                    StatusCode::NOT_FOUND,
                    format!("The model `{m}` does not exist: this worker serves `{served}`"),
                ))
            }
            None => return Err(bad("`model` must be a string".into())),
        }
    }
    let texts = match object.get("input") {
        None | Some(Value::Null) => {
            return Err(bad(
                "`input` is required: a string or an array of strings".into()
            ))
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(bad(
                "`input` is an empty array: send at least one string".into()
            ))
        }
        Some(Value::Array(items)) if items.len() > MAX_INPUTS => {
            return Err(bad(format!(
                "`input` has {} items; at most {MAX_INPUTS} per request",
                items.len()
            )))
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Number(_) | Value::Array(_) => Err(bad(
                    "token-id inputs are not supported by this worker: send text".into(),
                )),
                _ => Err(bad(format!("input[{i}] is not a string"))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("`input` must be a string or an array of strings".into())),
    };
    let base64 = match object.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(bad(format!(
                "encoding_format {other:?} is not supported: use \"float\" or \"base64\""
            )))
        }
    };
    if let Some(d) = object.get("dimensions").filter(|d| !d.is_null()) {
        if d.as_u64() != Some(dimensions as u64) {
            return Err(bad(format!(
                "dimensions {d}: this model's embeddings have {dimensions} dimensions"
            )));
        }
    }
    Ok(EmbeddingsRequest { texts, base64 })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<EmbeddingsRequest, (u16, String)> {
        parse_request(body.as_bytes(), "mini", 384).map_err(|(s, m)| (s.as_u16(), m))
    }

    #[test]
    fn requests_parse_as_openai_sends_them() {
        assert_eq!(
            parse(r#"{"input":"hi","model":"mini"}"#).unwrap(),
            EmbeddingsRequest {
                texts: vec!["hi".into()],
                base64: false
            }
        );
        let batch =
            parse(r#"{"input":["a","b"],"encoding_format":"base64","dimensions":384,"user":"u"}"#)
                .unwrap();
        assert_eq!((batch.texts.len(), batch.base64), (2, true));
        assert!(parse(r#"{"input":"hi","model":null,"dimensions":null}"#).is_ok());
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (body, status, needle) in [
            ("{", 400, "not JSON"),
            ("[]", 400, "JSON object"),
            ("{}", 400, "`input` is required"),
            (r#"{"input":[]}"#, 400, "empty array"),
            (r#"{"input":42}"#, 400, "string or an array"),
            (r#"{"input":[[1,2]]}"#, 400, "token-id"),
            (r#"{"input":["a",null]}"#, 400, "input[1] is not a string"),
            (
                r#"{"input":"a","model":"gpt"}"#,
                404,
                "`gpt` does not exist",
            ),
            (r#"{"input":"a","model":7}"#, 400, "must be a string"),
            (
                r#"{"input":"a","encoding_format":"hex"}"#,
                400,
                "encoding_format",
            ),
            (r#"{"input":"a","dimensions":512}"#, 400, "384 dimensions"),
        ] {
            let (got, message) = parse(body).unwrap_err();
            assert_eq!(got, status, "{body}: {message}");
            assert!(message.contains(needle), "{body}: {message}");
        }
        let many = serde_json::json!({ "input": vec!["x"; MAX_INPUTS + 1] }).to_string();
        assert!(parse(&many).unwrap_err().1.contains("at most 2048"));
    }
}
