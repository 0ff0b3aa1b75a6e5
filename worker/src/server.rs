//! The HTTP side: an OpenAI-compatible embeddings server.
//!
//! - `POST /v1/embeddings` — `{"input": "text" | ["text", …], "model"?,
//!   "encoding_format"?: "float" | "base64", "dimensions"?}` →
//!   `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
//!   "model", "usage": {"prompt_tokens", "total_tokens"}}`; `usage` is counted by
//!   the model's tokenizer (special tokens included: what the model read).
//! - `GET /v1/models`, `GET /health`.
//! - `GET /metrics` — Prometheus text with vLLM's token counters
//!   (`vllm:prompt_tokens_total`, `vllm:generation_tokens_total` = 0 for an encoder),
//!   so the oracle's metrics cross-check reads this worker as it reads vLLM.
//!
//! Requests are tokenized on arrival (bad input is refused at once with a 4xx in
//! OpenAI's error shape) and queued to one inference thread, which merges the
//! requests waiting into shared batches (dynamic batching) and answers each.
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::model::{Embedder, ModelError, ModelOptions, Tokenized};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The most inputs one request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// How to run the worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The model directory (config.json, model.safetensors, tokenizer.json).
    pub model_dir: PathBuf,
    /// The name the model is served as [default: the directory's name].
    pub model_name: Option<String>,
    pub options: ModelOptions,
    /// Inputs per forward pass.
    pub batch_size: usize,
}

impl WorkerConfig {
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            model_name: None,
            options: ModelOptions::default(),
            batch_size: 32,
        }
    }
}

/// Counters behind `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub prompt_tokens: AtomicU64,
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

/// The running worker: the model, its inference thread, and the counters.
pub struct Worker {
    embedder: Arc<Embedder>,
    name: String,
    queue: mpsc::Sender<Work>,
    pub stats: Arc<Stats>,
    started: std::time::SystemTime,
}

/// An error in OpenAI's shape (`{"error": {"message", "type", "code"}}`).
fn error_response(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let kind = match status {
        StatusCode::NOT_FOUND => "NotFoundError",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    json_response(
        status,
        &json!({ "error": { "message": message, "type": kind, "param": Value::Null, "code": status.as_u16() } }),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
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

impl Worker {
    /// Loads the model and starts its inference thread.
    pub fn load(config: &WorkerConfig) -> Result<Arc<Self>, ModelError> {
        let embedder = Arc::new(Embedder::load(&config.model_dir, &config.options)?);
        let name = config.model_name.clone().unwrap_or_else(|| {
            config
                .model_dir
                .file_name()
                .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
        });
        let stats = Arc::new(Stats::default());
        let (queue, rx) = mpsc::channel::<Work>(1024);
        let batch_size = config.batch_size.max(1);
        let (thread_embedder, thread_stats) = (Arc::clone(&embedder), Arc::clone(&stats));
        std::thread::Builder::new()
            .name("tally-worker-inference".into())
            .spawn(move || inference_loop(&thread_embedder, &thread_stats, batch_size, rx))
            .map_err(|e| ModelError::Load {
                path: config.model_dir.display().to_string(),
                reason: format!("cannot start the inference thread: {e}"),
            })?;
        Ok(Arc::new(Self {
            embedder,
            name,
            queue,
            stats,
            started: std::time::SystemTime::now(),
        }))
    }

    /// The name the model is served as.
    pub fn model_name(&self) -> &str {
        &self.name
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Embeds `texts` through the inference thread (as a request would, without HTTP).
    pub async fn embed(&self, texts: &[String]) -> Result<Embedded, ModelError> {
        let inputs = self.embedder.tokenize(texts)?;
        let tokens = inputs.iter().map(Tokenized::tokens).collect();
        let (reply, answer) = oneshot::channel();
        self.queue
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

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let response = match (req.method(), path.as_str()) {
            (&Method::POST, "/v1/embeddings" | "/embeddings") => self.embeddings(req).await,
            (&Method::GET, "/v1/models") => json_response(StatusCode::OK, &self.models()),
            (&Method::GET, "/health") => json_response(
                StatusCode::OK,
                &json!({ "status": "ok", "model": self.name, "device": self.embedder.device_name() }),
            ),
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics_text())));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            (_, "/v1/embeddings" | "/embeddings" | "/v1/models" | "/health" | "/metrics") => {
                error_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("{} is not allowed on {path}", req.method()),
                )
            }
            _ => error_response(
                StatusCode::NOT_FOUND,
                &format!("{path} is not served here: this worker serves POST /v1/embeddings, GET /v1/models, /health and /metrics"),
            ),
        };
        if path.ends_with("/embeddings") {
            let counter = if response.status().is_success() {
                &self.stats.requests
            } else {
                &self.stats.request_errors
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        response
    }

    fn models(&self) -> Value {
        let created = self
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        json!({
            "object": "list",
            "data": [{
                "id": self.name,
                "object": "model",
                "created": created,
                "owned_by": "tally-worker",
                "max_model_len": self.embedder.max_tokens(),
                "dimensions": self.embedder.dimensions(),
            }]
        })
    }

    async fn embeddings(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the request body is over {MAX_BODY_BYTES} bytes"),
                )
            }
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("could not read the request body: {e}"),
                )
            }
        };
        let request = match parse_request(&body, &self.name, self.embedder.dimensions()) {
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
                // Unique per response: the oracle keys its usage records by it.
                "id": format!("embd-{:032x}", rand::random::<u128>()),
                "object": "list",
                "created": created,
                "model": self.name,
                "data": data,
                "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
            }),
        )
    }

    /// vLLM's token counters, and the worker's own, in Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        let label = format!(
            "model_name=\"{}\"",
            self.name.replace(['"', '\\', '\n'], "_")
        );
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, labels: &str, value: String| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{labels}}} {value}\n"
            );
        };
        counter(
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
            &label,
            format!("{}.0", get(&s.prompt_tokens)),
        );
        counter(
            "vllm:generation_tokens_total",
            "Number of generation tokens processed (an encoder generates none).",
            &label,
            "0.0".into(),
        );
        counter(
            "vllm:request_success_total",
            "Count of successfully processed requests.",
            &label,
            format!("{}.0", get(&s.requests)),
        );
        counter(
            "tally_worker_request_errors_total",
            "Embedding requests refused or failed.",
            &label,
            format!("{}.0", get(&s.request_errors)),
        );
        counter(
            "tally_worker_embeddings_total",
            "Embeddings computed.",
            &label,
            format!("{}.0", get(&s.embeddings)),
        );
        counter(
            "tally_worker_forward_passes_total",
            "Batched forward passes of the model.",
            &label,
            format!("{}.0", get(&s.forward_passes)),
        );
        #[allow(clippy::cast_precision_loss)]
        let seconds = get(&s.inference_nanos) as f64 / 1e9;
        counter(
            "tally_worker_inference_seconds_total",
            "Time spent in the model.",
            &label,
            format!("{seconds:.6}"),
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
