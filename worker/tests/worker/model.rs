//! The model and the API, in process.
//!
//! Correctness reference: `fixtures/reference.json`, all-MiniLM-L6-v2's embeddings of
//! five sentences computed by `fixtures/reference.py` — a float64 NumPy forward pass
//! of Hugging Face's BertModel with sentence-transformers' mean pooling and L2
//! normalization, over the same safetensors and tokenizer.json, sharing no code with
//! candle. (sentence-transformers itself needs PyTorch, gigabytes to install.) Its
//! first sentence, "This is an example sentence", starts 0.0676569, 0.0634959,
//! 0.0487131, 0.0793050, 0.0374480: the values sentence-transformers prints for it.
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};
use tally_worker::model::Tokenized;
use tally_worker::{Embedder, ModelOptions, Worker, WorkerConfig};

use crate::model_or_skip;

struct Reference {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

fn reference() -> Vec<Reference> {
    let text = include_str!("../fixtures/reference.json");
    let value: Value = serde_json::from_str(text).unwrap();
    value["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Reference {
            text: s["text"].as_str().unwrap().to_string(),
            tokens: usize::try_from(s["tokens"].as_u64().unwrap()).unwrap(),
            #[allow(clippy::cast_possible_truncation)]
            embedding: s["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect(),
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

fn embed_texts(embedder: &Embedder, texts: &[&str], batch: usize) -> (Vec<Vec<f32>>, Vec<usize>) {
    let texts: Vec<String> = texts.iter().map(|t| (*t).to_string()).collect();
    let tokenized = embedder.tokenize(&texts).unwrap();
    let tokens = tokenized.iter().map(Tokenized::tokens).collect();
    (embedder.embed(&tokenized, batch).unwrap(), tokens)
}

#[test]
fn embeddings_match_the_reference_to_1e_4() {
    let Some(dir) = model_or_skip() else { return };
    let embedder = Embedder::load(&dir, &ModelOptions::default()).unwrap();
    assert_eq!(embedder.dimensions(), 384);
    assert_eq!(embedder.max_tokens(), 256, "sentence_bert_config.json");
    let reference = reference();
    let texts: Vec<&str> = reference.iter().map(|r| r.text.as_str()).collect();
    // One at a time, and all in one padded batch.
    for batch in [1, 32] {
        let (vectors, tokens) = embed_texts(&embedder, &texts, batch);
        for ((r, v), n) in reference.iter().zip(&vectors).zip(&tokens) {
            assert_eq!(*n, r.tokens, "token count of {:?}", r.text);
            let diff = max_abs_diff(v, &r.embedding);
            assert!(diff < 1e-4, "{:?} (batch {batch}): off by {diff}", r.text);
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "normalized: {norm}");
        }
    }
}

#[test]
fn similar_sentences_are_closer_than_unrelated_ones() {
    let Some(dir) = model_or_skip() else { return };
    let embedder = Embedder::load(&dir, &ModelOptions::default()).unwrap();
    let (v, _) = embed_texts(
        &embedder,
        &[
            "The cat sits on the mat.",
            "A cat is sitting on a rug.",
            "Solana settles usage receipts on-chain, exactly once.",
        ],
        8,
    );
    let (close, far) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
    eprintln!("cosine: paraphrase {close:.3}, unrelated {far:.3}");
    assert!(
        close > 0.6 && far < 0.2 && close > far + 0.4,
        "{close} vs {far}"
    );
}

#[test]
fn batching_and_padding_change_nothing() {
    let Some(dir) = model_or_skip() else { return };
    let embedder = Embedder::load(&dir, &ModelOptions::default()).unwrap();
    let long = "token ".repeat(120);
    let texts = [
        "short",
        "a somewhat longer sentence about GPUs and payments",
        long.as_str(),
        "Ünïcödé and emoji 🚀 are tokenized too",
        "short",
    ];
    let (alone, tokens) = embed_texts(&embedder, &texts, 1);
    assert_eq!(tokens[0], 3, "[CLS] short [SEP]");
    assert_eq!(tokens[2], 122, "[CLS] + 120 words + [SEP]");
    for batch in [2, 3, 32] {
        let (batched, _) = embed_texts(&embedder, &texts, batch);
        for (a, b) in alone.iter().zip(&batched) {
            let diff = max_abs_diff(a, b);
            assert!(diff < 1e-5, "batch {batch}: off by {diff}");
        }
    }
}

#[test]
fn inputs_over_the_limit_are_refused_or_truncated_and_billed_as_read() {
    let Some(dir) = model_or_skip() else { return };
    let refuse = Embedder::load(&dir, &ModelOptions::default()).unwrap();
    let long = vec!["token ".repeat(400)];
    let error = refuse.tokenize(&long).unwrap_err().to_string();
    assert!(
        error.contains("402 tokens") && error.contains("at most 256"),
        "{error}"
    );
    let truncate = Embedder::load(
        &dir,
        &ModelOptions {
            truncate: true,
            ..ModelOptions::default()
        },
    )
    .unwrap();
    let tokenized = truncate.tokenize(&long).unwrap();
    assert_eq!(tokenized[0].tokens(), 256, "what the model reads is billed");
    assert_eq!(truncate.embed(&tokenized, 1).unwrap()[0].len(), 384);
}

async fn post(http: &reqwest::Client, url: &str, body: String) -> (u16, Value) {
    let response = http.post(url).body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn the_openai_api_usage_metrics_and_errors() {
    let Some(dir) = model_or_skip() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let worker = Worker::load(&WorkerConfig::new(&dir)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(Arc::clone(&worker).serve(listener));
        let http = reqwest::Client::new();
        let url = format!("{base}/v1/embeddings");

        // A batch: data in input order, usage = the tokenizer's count.
        let reference = reference();
        let texts: Vec<&str> = reference.iter().map(|r| r.text.as_str()).collect();
        let (status, body) = post(
            &http,
            &url,
            json!({ "model": "all-MiniLM-L6-v2", "input": texts }).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], "all-MiniLM-L6-v2");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), reference.len());
        for (i, (item, r)) in data.iter().zip(&reference).enumerate() {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], i);
            #[allow(clippy::cast_possible_truncation)]
            let v: Vec<f32> = item["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert!(max_abs_diff(&v, &r.embedding) < 1e-4);
        }
        let tokens: usize = reference.iter().map(|r| r.tokens).sum();
        assert_eq!(body["usage"]["prompt_tokens"], tokens);
        assert_eq!(body["usage"]["total_tokens"], tokens);
        let first_id = body["id"].as_str().unwrap().to_string();

        // One string; base64 (the official OpenAI clients ask for it by default).
        let (status, body) = post(
            &http,
            &url,
            json!({ "input": texts[0], "encoding_format": "base64" }).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(body["id"].as_str().unwrap(), first_id, "ids are unique");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let v: Vec<f32> = bytes
            .as_chunks::<4>()
            .0
            .iter()
            .map(|c| f32::from_le_bytes(*c))
            .collect();
        assert!(max_abs_diff(&v, &reference[0].embedding) < 1e-4);
        let served = tokens + reference[0].tokens;

        // Concurrent requests share batches and each gets its own answer.
        let mut tasks = Vec::new();
        for r in &reference {
            let (http, url, text) = (http.clone(), url.clone(), r.text.clone());
            tasks.push(tokio::spawn(async move {
                post(&http, &url, json!({ "input": [text] }).to_string()).await
            }));
        }
        for (task, r) in tasks.into_iter().zip(&reference) {
            let (status, body) = task.await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(body["usage"]["prompt_tokens"], r.tokens);
            #[allow(clippy::cast_possible_truncation)]
            let v: Vec<f32> = body["data"][0]["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert!(max_abs_diff(&v, &r.embedding) < 1e-4);
        }
        let served = served + tokens;

        // Bad requests: clear 4xx errors in OpenAI's shape, nothing counted.
        let long = "token ".repeat(400);
        let many: Vec<&str> = vec!["x"; 2049];
        let cases: Vec<(String, u16, &str)> = vec![
            ("not json".into(), 400, "not JSON"),
            (json!([1, 2]).to_string(), 400, "JSON object"),
            (
                json!({ "model": "all-MiniLM-L6-v2" }).to_string(),
                400,
                "`input` is required",
            ),
            (json!({ "input": "" }).to_string(), 400, "input[0] is empty"),
            (
                json!({ "input": ["ok", ""] }).to_string(),
                400,
                "input[1] is empty",
            ),
            (json!({ "input": [] }).to_string(), 400, "empty array"),
            (
                json!({ "input": [long] }).to_string(),
                400,
                "at most 256 tokens",
            ),
            (json!({ "input": many }).to_string(), 400, "at most 2048"),
            (
                json!({ "input": [101, 2023] }).to_string(),
                400,
                "token-id inputs",
            ),
            (
                json!({ "input": "hi", "model": "gpt-4" }).to_string(),
                404,
                "does not exist",
            ),
            (
                json!({ "input": "hi", "dimensions": 128 }).to_string(),
                400,
                "384 dimensions",
            ),
            (
                json!({ "input": "hi", "encoding_format": "int8" }).to_string(),
                400,
                "encoding_format",
            ),
        ];
        let refused = cases.len();
        for (body, status, needle) in cases {
            let (got, answer) = post(&http, &url, body.clone()).await;
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            assert_eq!(got, status, "{body}: {answer}");
            assert!(message.contains(needle), "{body}: {message}");
        }
        // Over the limit, announced or streamed: the client, which sends all of its
        // body before it reads, reads the 413 (the server reads the rest and throws it
        // away), not a broken pipe.
        let big = format!("{{\"input\": \"{}\"}}", "a".repeat(24 * 1024 * 1024));
        let (got, answer) = post(&http, &url, big.clone()).await;
        assert_eq!(got, 413, "{answer}");
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over 16777216 bytes"));
        let streamed = http
            .post(&url)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                big.into_bytes()
                    .chunks(1 << 20)
                    .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                    .collect::<Vec<_>>(),
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(streamed.status().as_u16(), 413);
        let get = http.get(&url).send().await.unwrap();
        assert_eq!(get.status().as_u16(), 405);
        let chat = http
            .post(format!("{base}/v1/chat/completions"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(chat.status().as_u16(), 404);

        // Models, health, and vLLM's counters for the oracle's cross-check.
        let models: Value = serde_json::from_str(
            &http
                .get(format!("{base}/v1/models"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(models["data"][0]["id"], "all-MiniLM-L6-v2");
        assert_eq!(models["data"][0]["max_model_len"], 256);
        let health = http.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.status().as_u16(), 200);
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let totals = tally_oracle::telemetry::parse_prometheus(&metrics);
        #[allow(clippy::cast_precision_loss)]
        let expected = served as f64;
        assert_eq!(totals["vllm:prompt_tokens_total"], expected, "{metrics}");
        assert_eq!(totals["vllm:generation_tokens_total"], 0.0);
        assert_eq!(totals["vllm:request_success_total"], 2.0 + 5.0);
        #[allow(clippy::cast_precision_loss)]
        let refused = (refused + 3) as f64; // and the two 413s and the 405
        assert_eq!(totals["tally_worker_request_errors_total"], refused);
        assert!(metrics.contains("vllm:prompt_tokens_total{model_name=\"all-MiniLM-L6-v2\"}"));
    });
}
