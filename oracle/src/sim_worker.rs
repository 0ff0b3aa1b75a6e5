//! A simulated GPU worker for tests and `tally demo`, where no GPU exists: a small
//! HTTP server that speaks the OpenAI API the way vLLM does — the same `usage` fields,
//! the same SSE framing (`data: {chunk}\n\n`, a usage chunk when
//! `stream_options.include_usage` is set, `data: [DONE]`). Nothing in the gateway
//! knows it is not a real inference server. Token counts: one token per
//! whitespace-separated word of the prompt; `max_tokens` (default 16) completion tokens.
//! `GET /metrics` exposes vLLM's token counters (`vllm:prompt_tokens_total`,
//! `vllm:generation_tokens_total`, labelled by `model_name`) in Prometheus text.
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

/// What the worker sent, for tests to compare with what clients received.
#[derive(Default)]
pub struct SimLog {
    pub responses: Vec<Bytes>,
    pub usage: Vec<(u64, u64)>,
    /// Model → (prompt, generation) tokens served, as `/metrics` reports them.
    pub tokens_by_model: std::collections::BTreeMap<String, (u64, u64)>,
}

/// The simulated worker.
#[derive(Default)]
pub struct SimWorker {
    pub log: Mutex<SimLog>,
    counter: std::sync::atomic::AtomicU64,
}

fn prompt_tokens(request: &Value) -> u64 {
    let text = |v: &Value| {
        v.as_str()
            .map_or(0, |s| s.split_whitespace().count() as u64)
    };
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

impl SimWorker {
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

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if req.method() == hyper::Method::GET && path == "/metrics" {
            let mut response = Response::new(Full::new(Bytes::from(self.metrics_text())));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return response;
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prompt = prompt_tokens(&request);
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("sim-model")
            .to_string();
        let created = 1_795_564_800 + n;
        let embeddings = path.ends_with("/embeddings");
        let completion = if embeddings {
            0
        } else {
            request
                .get("max_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(16)
        };
        let usage = json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion });
        let stream = request
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let include_usage = request
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let id = format!("cmpl-sim-{n}");
        let (content_type, bytes) = if embeddings {
            let data: Vec<Value> = (0..1)
                .map(|i| json!({ "object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3] }))
                .collect();
            (
                "application/json",
                Bytes::from(
                    json!({ "object": "list", "data": data, "model": model, "usage": usage })
                        .to_string(),
                ),
            )
        } else if stream {
            let mut out = String::new();
            for i in 0..completion {
                let chunk = json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{ "index": 0, "delta": { "content": format!("tok{i} ") }, "finish_reason": Value::Null }], "usage": Value::Null });
                let _ = write!(out, "data: {chunk}\n\n");
            }
            let last = json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{ "index": 0, "delta": {}, "finish_reason": "length" }], "usage": Value::Null });
            let _ = write!(out, "data: {last}\n\n");
            if include_usage {
                let usage_chunk = json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage });
                let _ = write!(out, "data: {usage_chunk}\n\n");
            }
            out.push_str("data: [DONE]\n\n");
            ("text/event-stream", Bytes::from(out))
        } else {
            let text: Vec<String> = (0..completion).map(|i| format!("tok{i}")).collect();
            let body = json!({ "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": text.join(" ") }, "finish_reason": "length" }],
                "usage": usage });
            ("application/json", Bytes::from(body.to_string()))
        };
        if let Ok(mut log) = self.log.lock() {
            log.responses.push(bytes.clone());
            log.usage.push((prompt, completion));
            let served = log.tokens_by_model.entry(model).or_default();
            served.0 += prompt;
            served.1 += completion;
        }
        let mut response = Response::new(Full::new(bytes));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    }
}
