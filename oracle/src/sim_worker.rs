//! A simulated GPU worker for tests and `tally demo`, where no GPU exists: a small
//! HTTP server that speaks the OpenAI API the way real inference servers do, down to
//! the habits a billing proxy must survive. Nothing in the gateway knows it is not a
//! real inference server.
//!
//! - [`SimFlavor::Vllm`] (the default) behaves like vLLM: the same `usage` fields and
//!   SSE framing (`data: {chunk}\n\n`, a usage chunk when
//!   `stream_options.include_usage` is true, `data: [DONE]`); the response id copies
//!   the request's `request_id` (`chatcmpl-<request_id>`); `stream` is read the way
//!   pydantic reads a boolean (`1`, `"true"`, `"yes"` are true); `stream_options`
//!   without streaming is refused; `POST /tokenize` counts tokens.
//! - [`SimFlavor::LlamaCppPython`] behaves like llama-cpp-python 0.3.x: streams end
//!   without a usage chunk even when asked (`\r\n`-framed, as sse-starlette writes
//!   them), non-streamed answers carry usage, and `POST /extras/tokenize` counts tokens.
//!
//! Token counts: one token per whitespace-separated word (the tokenizer endpoints
//! count the same way); `max_tokens` (default 16) completion tokens per choice.
//! `GET /v1/models` lists the served model(s) as OpenAI's API does.
//! `GET /metrics` exposes vLLM's token counters (`vllm:prompt_tokens_total`,
//! `vllm:generation_tokens_total`, labelled by `model_name`) in Prometheus text.
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::http::{full, Body};

/// Which server the worker imitates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SimFlavor {
    #[default]
    Vllm,
    LlamaCppPython,
}

/// How the worker answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimConfig {
    pub flavor: SimFlavor,
    /// Answers carry no usage at all, streamed or not (a server that never reports).
    pub omit_usage: bool,
    /// A pause before each streamed event (a model generating).
    pub event_delay: Duration,
    /// Streams are written in pieces of this many bytes: events and UTF-8 characters
    /// split across network writes.
    pub write_bytes: Option<usize>,
    /// `data:` without the space after the colon (the SSE spec allows it).
    pub data_without_space: bool,
    /// Generated tokens are words with multibyte characters (`né0`, `né1`…).
    pub multibyte: bool,
    /// Serves (and names in its answers) this model whatever the request asks for,
    /// and lists only it at `GET /v1/models`; `None`: echoes the requested model and
    /// lists `llama-3-8b`.
    pub serves_model: Option<String>,
}

/// What the worker sent, for tests to compare with what clients received.
#[derive(Default)]
pub struct SimLog {
    pub responses: Vec<Bytes>,
    pub usage: Vec<(u64, u64)>,
    /// Model → (prompt, generation) tokens served, as `/metrics` reports them.
    pub tokens_by_model: std::collections::BTreeMap<String, (u64, u64)>,
    /// The inference requests received: body and `x-request-id` header.
    pub requests: Vec<(Value, Option<String>)>,
    /// Tokenizer calls received.
    pub tokenize_calls: u64,
}

/// The simulated worker.
#[derive(Default)]
pub struct SimWorker {
    pub log: Mutex<SimLog>,
    pub config: SimConfig,
    counter: std::sync::atomic::AtomicU64,
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn prompt_tokens(request: &Value) -> u64 {
    let text = |v: &Value| v.as_str().map_or(0, words);
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        return messages
            .iter()
            .map(|m| text(m.get("content").unwrap_or(&Value::Null)))
            .sum();
    }
    match request.get("prompt").or_else(|| request.get("input")) {
        Some(Value::Array(items)) => items.iter().map(text).sum(),
        Some(v) => text(v),
        None => 0,
    }
}

/// A boolean as pydantic's lax mode reads it (what vLLM does with `stream`).
fn lax_bool(value: Option<&Value>) -> Result<bool, String> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Number(n)) if n.as_f64() == Some(1.0) => Ok(true),
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Ok(false),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "1" | "true" | "t" | "yes" | "y" | "on" => Ok(true),
            "0" | "false" | "f" | "no" | "n" | "off" => Ok(false),
            _ => Err(format!(
                "Input should be a valid boolean, unable to interpret input: {s}"
            )),
        },
        Some(other) => Err(format!("Input should be a valid boolean: {other}")),
    }
}

fn json_body(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn bad_request(message: &str) -> Response<Body> {
    json_body(
        StatusCode::BAD_REQUEST,
        &json!({ "object": "error", "message": message, "type": "BadRequestError", "code": 400 }),
    )
}

/// An inference request as received: its path, JSON body (`null` when not JSON)
/// and `x-request-id` header.
struct Received {
    path: String,
    request: Value,
    request_id_header: Option<String>,
}

impl Received {
    async fn read(req: Request<Incoming>) -> Self {
        let path = req.uri().path().to_string();
        let request_id_header = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = req
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        Self {
            path,
            request: serde_json::from_slice(&body).unwrap_or(Value::Null),
            request_id_header,
        }
    }
}

/// How a request asked to be answered.
struct StreamTerms {
    stream: bool,
    /// A usage chunk before `[DONE]` (vLLM's `stream_options.include_usage`).
    include_usage: bool,
}

/// One answer's identity and token counts.
struct Answer {
    id: String,
    model: String,
    created: u64,
    embeddings: bool,
    prompt: u64,
    completion: u64,
    /// `None`: the worker reports no usage ([`SimConfig::omit_usage`]).
    usage: Option<Value>,
}

impl Answer {
    /// `value` with the answer's usage, unless the worker omits it.
    fn with_usage(&self, mut value: Value) -> Value {
        if let Some(usage) = &self.usage {
            value["usage"] = usage.clone();
        }
        value
    }

    /// The embeddings answer (one fixed vector).
    fn embedding_body(&self) -> Value {
        let data = vec![json!({ "object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3] })];
        self.with_usage(
            json!({ "id": self.id, "object": "list", "data": data, "model": self.model }),
        )
    }
}

impl SimWorker {
    /// A worker answering as `config` says.
    pub fn with(config: SimConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let worker = Arc::clone(&self);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let worker = Arc::clone(&worker);
                    async move { Ok::<_, Infallible>(worker.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// vLLM's token counters in Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        let mut out = String::from(
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n# TYPE vllm:prompt_tokens_total counter\n",
        );
        let mut by_model = self
            .log
            .lock()
            .map(|log| log.tokens_by_model.clone())
            .unwrap_or_default();
        // Like vLLM, the counters exist (at zero) before the first request.
        if by_model.is_empty() {
            by_model.insert("sim-model".into(), (0, 0));
        }
        for (model, (prompt, _)) in &by_model {
            let _ = writeln!(
                out,
                "vllm:prompt_tokens_total{{model_name=\"{model}\"}} {prompt}.0"
            );
        }
        out.push_str("# HELP vllm:generation_tokens_total Number of generation tokens processed.\n# TYPE vllm:generation_tokens_total counter\n");
        for (model, (_, generation)) in &by_model {
            let _ = writeln!(
                out,
                "vllm:generation_tokens_total{{model_name=\"{model}\"}} {generation}.0"
            );
        }
        out
    }

    fn tokenize(&self, path: &str, request: &Value) -> Response<Body> {
        let (served, field) = match self.config.flavor {
            SimFlavor::Vllm => ("/tokenize", "prompt"),
            SimFlavor::LlamaCppPython => ("/extras/tokenize", "input"),
        };
        if path != served {
            return json_body(StatusCode::NOT_FOUND, &json!({ "detail": "Not Found" }));
        }
        if let Ok(mut log) = self.log.lock() {
            log.tokenize_calls += 1;
        }
        let count = request.get(field).and_then(Value::as_str).map_or(0, words);
        let tokens: Vec<u64> = (0..count).collect();
        json_body(
            StatusCode::OK,
            &match self.config.flavor {
                SimFlavor::Vllm => {
                    json!({ "count": count, "max_model_len": 8192, "tokens": tokens })
                }
                SimFlavor::LlamaCppPython => json!({ "tokens": tokens }),
            },
        )
    }

    fn token(&self, i: u64) -> String {
        if self.config.multibyte {
            format!("né{i} ")
        } else {
            format!("tok{i} ")
        }
    }

    /// `GET` answers that need no request body: vLLM's counters and the model list.
    fn catalog(&self, path: &str) -> Option<Response<Body>> {
        match path {
            "/metrics" => {
                let mut response = Response::new(full(self.metrics_text()));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                Some(response)
            }
            "/v1/models" => {
                let id = self.config.serves_model.as_deref().unwrap_or("llama-3-8b");
                Some(json_body(
                    StatusCode::OK,
                    &json!({ "object": "list", "data": [{ "id": id, "object": "model", "owned_by": "tally-sim" }] }),
                ))
            }
            _ => None,
        }
    }

    /// Whether the answer streams and with a usage chunk, as the flavor reads
    /// `stream` and `stream_options`; `Err`: the message of the server's `400`.
    fn stream_terms(&self, request: &Value) -> Result<StreamTerms, String> {
        let stream = lax_bool(request.get("stream")).map_err(|e| format!("stream: {e}"))?;
        let stream_options = request.get("stream_options").filter(|o| !o.is_null());
        if self.config.flavor == SimFlavor::Vllm && stream_options.is_some() && !stream {
            return Err("Stream options can only be defined when `stream=True`.".into());
        }
        let include_usage = stream_options
            .and_then(|o| o.get("include_usage"))
            .is_some_and(|v| lax_bool(Some(v)).unwrap_or(false));
        Ok(StreamTerms {
            stream,
            include_usage,
        })
    }

    /// What the request at `path` is answered with: its number, model, id and
    /// token counts.
    fn answer(&self, path: &str, request: &Value) -> Answer {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prompt = prompt_tokens(request);
        let model = match &self.config.serves_model {
            Some(model) => model.clone(),
            None => request
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("sim-model")
                .to_string(),
        };
        let embeddings = path.ends_with("/embeddings");
        let completion = if embeddings {
            0
        } else {
            request
                .get("max_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(16)
        };
        // vLLM names the answer after the request's own `request_id` when it has one.
        let base_id = request
            .get("request_id")
            .and_then(Value::as_str)
            .map_or_else(|| format!("sim-{n}"), str::to_string);
        let id = match (embeddings, path.ends_with("/chat/completions")) {
            (true, _) => format!("embd-{base_id}"),
            (false, true) => format!("chatcmpl-{base_id}"),
            (false, false) => format!("cmpl-{base_id}"),
        };
        let usage = json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion });
        Answer {
            id,
            model,
            created: 1_795_564_800 + n,
            embeddings,
            prompt,
            completion,
            usage: (!self.config.omit_usage).then_some(usage),
        }
    }

    /// Counts the answer's tokens in the log (and so in `/metrics`).
    fn record_usage(&self, answer: &Answer) {
        if let Ok(mut log) = self.log.lock() {
            log.usage.push((answer.prompt, answer.completion));
            let served = log.tokens_by_model.entry(answer.model.clone()).or_default();
            served.0 += answer.prompt;
            served.1 += answer.completion;
        }
    }

    /// The non-streamed chat or completion answer.
    fn completion_body(&self, answer: &Answer) -> Value {
        let Answer {
            id, model, created, ..
        } = answer;
        let text: Vec<String> = (0..answer.completion)
            .map(|i| self.token(i).trim_end().to_string())
            .collect();
        answer.with_usage(
            json!({ "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": text.join(" ") }, "finish_reason": "length" }] }),
        )
    }

    /// The streamed answer's events, framed as the flavor frames them: one chunk per
    /// token, the finish chunk, vLLM's usage chunk when asked for, `[DONE]`.
    fn events(&self, answer: &Answer, include_usage: bool) -> Vec<String> {
        let (prefix, end) = match (self.config.flavor, self.config.data_without_space) {
            (SimFlavor::LlamaCppPython, false) => ("data: ", "\r\n\r\n"),
            (SimFlavor::LlamaCppPython, true) => ("data:", "\r\n\r\n"),
            (SimFlavor::Vllm, false) => ("data: ", "\n\n"),
            (SimFlavor::Vllm, true) => ("data:", "\n\n"),
        };
        let Answer {
            id, model, created, ..
        } = answer;
        let mut events = Vec::new();
        for i in 0..answer.completion {
            let chunk = json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{ "index": 0, "delta": { "content": self.token(i) }, "finish_reason": Value::Null }], "usage": Value::Null });
            events.push(format!("{prefix}{chunk}{end}"));
        }
        let last = json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{ "index": 0, "delta": {}, "finish_reason": "length" }], "usage": Value::Null });
        events.push(format!("{prefix}{last}{end}"));
        if let Some(usage) = answer.usage.as_ref().filter(|_| include_usage) {
            if self.config.flavor == SimFlavor::Vllm {
                let usage_chunk = json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage });
                events.push(format!("{prefix}{usage_chunk}{end}"));
            }
        }
        events.push(format!("{prefix}[DONE]{end}"));
        events
    }

    /// One HTTP request: the catalog, the tokenizer, or an inference request, which
    /// is logged, checked as the flavor checks it, counted and answered (whole or
    /// streamed).
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if req.method() == hyper::Method::GET {
            if let Some(response) = self.catalog(req.uri().path()) {
                return response;
            }
        }
        let Received {
            path,
            request,
            request_id_header,
        } = Received::read(req).await;
        if path.ends_with("/tokenize") {
            return self.tokenize(&path, &request);
        }
        if let Ok(mut log) = self.log.lock() {
            log.requests.push((request.clone(), request_id_header));
        }
        let terms = match self.stream_terms(&request) {
            Ok(terms) => terms,
            Err(message) => return bad_request(&message),
        };
        let answer = self.answer(&path, &request);
        self.record_usage(&answer);
        if answer.embeddings {
            return self.whole(Bytes::from(answer.embedding_body().to_string()));
        }
        if !terms.stream {
            return self.whole(Bytes::from(self.completion_body(&answer).to_string()));
        }
        self.streamed(self.events(&answer, terms.include_usage))
    }

    fn whole(&self, bytes: Bytes) -> Response<Body> {
        if let Ok(mut log) = self.log.lock() {
            log.responses.push(bytes.clone());
        }
        let mut response = Response::new(full(bytes));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        response
    }

    fn streamed(&self, events: Vec<String>) -> Response<Body> {
        let whole: String = events.concat();
        if let Ok(mut log) = self.log.lock() {
            log.responses.push(Bytes::from(whole.clone()));
        }
        let (delay, write_bytes) = (self.config.event_delay, self.config.write_bytes);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            for event in events {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let bytes = Bytes::from(event);
                let pieces: Vec<Bytes> = match write_bytes {
                    Some(size) => (0..bytes.len())
                        .step_by(size.max(1))
                        .map(|at| bytes.slice(at..(at + size.max(1)).min(bytes.len())))
                        .collect(),
                    None => vec![bytes],
                };
                let split = pieces.len() > 1;
                for piece in pieces {
                    if tx.send(piece).await.is_err() {
                        return;
                    }
                    if split {
                        // Separate network writes, so the pieces arrive apart.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        });
        let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok::<_, std::io::Error>(Frame::data(c))))
        }));
        let mut response = Response::new(BodyExt::boxed(body));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        response
    }
}
