//! The gateway: an OpenAI-compatible reverse proxy in front of an operator's inference
//! server (vLLM, TGI, llama.cpp server, Ollama). It names the job of each request by
//! its API key (`Authorization: Bearer …`) or an `X-Tally-Job` header, forwards the
//! request, returns the upstream's response unchanged, and meters the `usage` the
//! upstream reported — for streams it asks the upstream for the usage chunk
//! (`stream_options.include_usage`). A record is committed before a non-streamed
//! response is returned, and when a stream ends.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::http::{error_response, full, Body, Shutdown};
use crate::sink::Sink;
use crate::store::UsageRecord;
use crate::telemetry::Telemetry;

/// Endpoints metered (POST).
pub const METERED_PATHS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// The name gateway records carry.
pub const SOURCE: &str = "gateway";

/// What the gateway needs to run on its own (tests, the demo, the bench); the daemon
/// builds it with [`Gateway::with_sink`] over the store it shares with other sources.
pub struct GatewayConfig {
    /// Base URL of the inference server, e.g. `http://127.0.0.1:8000`.
    pub upstream: String,
    /// API key → job address.
    pub api_keys: HashMap<String, String>,
    /// The store file (shared with the batcher through SQLite).
    pub store_path: PathBuf,
    /// The chain's clock, synced by the caller before the first request (records
    /// are stamped with it) and given to the batcher, which keeps it synced.
    pub clock: Arc<crate::clock::ChainClock>,
}

/// The running gateway's state.
pub struct Gateway {
    upstream: String,
    api_keys: HashMap<String, String>,
    sink: Arc<Sink>,
    http: reqwest::Client,
    sequence: std::sync::atomic::AtomicU64,
}

/// What a streamed response's SSE events have said so far: the response id and the
/// usage chunk's counts. Fed the upstream's bytes as they arrive, in any chunking.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamUsage {
    pub id: Option<String>,
    pub usage: Option<(u64, u64)>,
    buffer: String,
}

impl StreamUsage {
    /// Feeds the next bytes of the stream; every complete event (`…\n\n`) is read.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.buffer.push_str(&String::from_utf8_lossy(chunk));
        while let Some(end) = self.buffer.find("\n\n") {
            let event: String = self.buffer.drain(..end + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if self.id.is_none() {
                    self.id = value.get("id").and_then(Value::as_str).map(str::to_string);
                }
                if let Some(usage) = usage_of(&value) {
                    self.usage = Some(usage);
                }
            }
        }
    }
}

/// `usage.prompt_tokens` / `usage.completion_tokens` of an OpenAI response object.
pub fn usage_of(value: &Value) -> Option<(u64, u64)> {
    let usage = value.get("usage").filter(|u| !u.is_null())?;
    let prompt = usage
        .get("prompt_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let completion = usage
        .get("completion_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some((prompt, completion))
}

impl Gateway {
    /// A gateway with a store of its own at `config.store_path`.
    pub fn new(config: GatewayConfig) -> Result<Arc<Self>, crate::OracleError> {
        let sink = Sink::open(
            &config.store_path.to_string_lossy(),
            Arc::new(Telemetry::default()),
            config.clock,
            u64::MAX,
        )?;
        Ok(Self::with_sink(config.upstream, config.api_keys, sink))
    }

    /// The clock its records are stamped with: sync it from the chain (the batcher
    /// does, each round, when given this clock).
    pub fn clock(&self) -> Arc<crate::clock::ChainClock> {
        Arc::clone(&self.sink.clock)
    }

    /// A gateway committing into `sink`.
    pub fn with_sink(
        upstream: String,
        api_keys: HashMap<String, String>,
        sink: Arc<Sink>,
    ) -> Arc<Self> {
        Arc::new(Self {
            upstream,
            api_keys,
            sink,
            http: reqwest::Client::new(),
            sequence: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Serves HTTP/1.1 on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        self.serve_until(listener, crate::http::never()).await
    }

    /// Serves until `shutdown`, then drains: streams in flight finish and are metered.
    pub async fn serve_until(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: Shutdown,
    ) -> std::io::Result<()> {
        crate::http::serve(listener, move |req| Arc::clone(&self).handle(req), shutdown).await
    }

    fn job_of(&self, req: &Request<Incoming>) -> Option<String> {
        if let Some(job) = req
            .headers()
            .get("x-tally-job")
            .and_then(|v| v.to_str().ok())
        {
            return self
                .api_keys
                .values()
                .any(|j| j == job)
                .then(|| job.to_string());
        }
        let key = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))?;
        self.api_keys.get(key.trim()).cloned()
    }

    fn commit(&self, record: &UsageRecord) -> Result<(), String> {
        self.sink
            .commit(record)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if req.method() != hyper::Method::POST || !METERED_PATHS.contains(&path.as_str()) {
            return error_response(
                StatusCode::NOT_FOUND,
                &format!("{path} is not an inference endpoint of this gateway"),
            );
        }
        let Some(job) = self.job_of(&req) else {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "unknown API key: use the key issued for your Tally job",
            );
        };
        let Ok(body) = req
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
        else {
            return error_response(StatusCode::BAD_REQUEST, "could not read the request body");
        };
        let Ok(mut request): Result<Value, _> = serde_json::from_slice(&body) else {
            return error_response(StatusCode::BAD_REQUEST, "the request body is not JSON");
        };
        let streaming = request
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if streaming {
            if let Some(object) = request.as_object_mut() {
                let options = object.entry("stream_options").or_insert_with(|| json!({}));
                if let Some(options) = options.as_object_mut() {
                    options.insert("include_usage".into(), Value::Bool(true));
                }
            }
        }
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let started = Instant::now();
        let url = format!("{}{path}", self.upstream.trim_end_matches('/'));
        let upstream = match self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(request.to_string())
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    &format!("the inference server did not answer: {e}"),
                )
            }
        };
        let status =
            StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = upstream
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let sequence = self
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut record = UsageRecord {
            job,
            job_nonce: None,
            request_id: format!("gw-{}-{sequence}", self.sink.clock.now()),
            model,
            prompt_tokens: 0,
            completion_tokens: 0,
            gpu_ms: 0,
            finished_at: 0,
            source: SOURCE.into(),
        };
        let mut builder = Response::builder()
            .status(status)
            .header("content-type", content_type);
        if !streaming {
            let Ok(bytes) = upstream.bytes().await else {
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    "the inference server's response was cut short",
                );
            };
            if status.is_success() {
                if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
                    if let Some((prompt, completion)) = usage_of(&value) {
                        if let Some(id) = value.get("id").and_then(Value::as_str) {
                            record.request_id = id.to_string();
                        }
                        record.prompt_tokens = prompt;
                        record.completion_tokens = completion;
                        record.gpu_ms =
                            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                        record.finished_at = self.sink.clock.now();
                        // Committed before the client gets its answer (on a
                        // blocking thread: a commit waits for the disk or the database).
                        let gateway = Arc::clone(&self);
                        let committed =
                            tokio::task::spawn_blocking(move || gateway.commit(&record))
                                .await
                                .unwrap_or_else(|e| Err(e.to_string()));
                        if let Err(e) = committed {
                            return error_response(
                                StatusCode::SERVICE_UNAVAILABLE,
                                &format!("metering is unavailable: {e}"),
                            );
                        }
                    }
                }
            }
            builder = builder.header("content-length", bytes.len());
            return builder
                .body(full(bytes))
                .unwrap_or_else(|_| error_response(StatusCode::INTERNAL_SERVER_ERROR, "response"));
        }
        // Streams: pass every chunk through as it arrives; watch the SSE events for
        // the usage chunk; commit when the stream ends.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
        let gateway = Arc::clone(&self);
        tokio::spawn(async move {
            let mut stream = upstream.bytes_stream();
            let mut seen = StreamUsage::default();
            let mut client_gone = false;
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { break };
                seen.feed(&chunk);
                // A client that went away still ordered the work the upstream goes on
                // doing: read to the usage chunk so it is metered.
                if !client_gone && tx.send(Ok(Frame::data(chunk))).await.is_err() {
                    client_gone = true;
                }
            }
            if let Some((prompt, completion)) = seen.usage {
                if let Some(id) = seen.id {
                    record.request_id = id;
                }
                record.prompt_tokens = prompt;
                record.completion_tokens = completion;
                record.gpu_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                record.finished_at = gateway.sink.clock.now();
                let committed = tokio::task::spawn_blocking(move || gateway.commit(&record)).await;
                if let Ok(Err(e)) | Err(e) = committed.map_err(|e| e.to_string()) {
                    tracing::error!("a streamed request's usage could not be committed: {e}");
                }
            }
        });
        let body = BodyExt::boxed(StreamBody::new(tokio_stream_from(rx)));
        builder
            .body(body)
            .unwrap_or_else(|_| error_response(StatusCode::INTERNAL_SERVER_ERROR, "response"))
    }
}

/// A `Stream` over an mpsc receiver.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
