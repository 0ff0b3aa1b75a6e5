//! Real inference in the loop, end to end: a client funds jobs and signs a job key
//! for each; its requests go through the oracle gateway (checking the keys against
//! the chain's jobs, pre-authorizing each request) to a `tally-worker` process
//! serving all-MiniLM-L6-v2 (embeddings) and SmolLM2-135M-Instruct (chat); the
//! oracle's invoice lines carry the token counts the worker reported (embeddings: the
//! model's tokenizer's count; chat: the rendered template's tokens, llama.cpp's
//! count, and the tokens generated), for chat completions streamed and not, sent from
//! Rust and from OpenAI's official Python client; the oracle's metrics cross-check
//! (the worker's vLLM counters) finds no drift; the oracle's batcher settles
//! cumulative receipts; each invoice (the file, and the copy in the oracle's store, as
//! `tally invoice verify --store` reads it) is proven to be what the chain paid for;
//! the jobs complete with their refunds; the operator claims; and the sum on-chain
//! equals the invoices, token for token.
//!
//! The same flow runs on the embedded chain (LiteSVM + the SBF program) and on
//! `solana-test-validator` (the SDK's RPC backend, real confirmations; skipped with
//! `local-validator suite skipped: <reason>` where none exists).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally::state::utc_day;
use tally_client::bootstrap::{self, Cast};
use tally_client::chain::{Chain, EmbeddedChain};
use tally_client::job_key::JobKeyClaims;
use tally_client::{ops, pda, OpenJobArgs};
use tally_oracle::batcher::{BatchSettings, Batcher};
use tally_oracle::clock::ChainClock;
use tally_oracle::gateway::{Gateway, GatewaySettings};
use tally_oracle::invoice::Invoice;
use tally_oracle::job_view::{JobBook, ViewConfig};
use tally_oracle::meter::SourceStore;
use tally_oracle::scrape::{MetricsScrape, ScrapeSettings};
use tally_oracle::sink::Sink;
use tally_oracle::store::{Store, COUNTED_BY_UPSTREAM};
use tally_oracle::telemetry::Telemetry;

use crate::chat::chat_model_or_skip;
use crate::{model_or_skip, openai_python_or_skip, WorkerProcess};

const PRICE: u64 = 20; // base units of a 6-decimal stablecoin per token
const MAX_UNITS: u64 = 1_000_000;
const FEE_BPS: u16 = 250;
const JOBS: usize = 2;
const REQUESTS_PER_JOB: usize = 8;
const EMBEDDING_MODEL: &str = "all-MiniLM-L6-v2";
const CHAT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";
/// Tokens each chat completion may generate: enough to stream several chunks, few
/// enough to keep the test quick.
const CHAT_MAX_TOKENS: u64 = 8;

/// What the flow runs: the two models, and the Python with OpenAI's client (`None`:
/// that step is skipped, said so on stderr).
struct Models {
    embeddings: PathBuf,
    chat: PathBuf,
    python: Option<PathBuf>,
}

fn models_or_skip() -> Option<Models> {
    let embeddings = model_or_skip()?;
    let chat = chat_model_or_skip()?;
    Some(Models {
        embeddings,
        chat,
        python: openai_python_or_skip(),
    })
}

/// The chat cases llama.cpp answered (worker/tests/fixtures/smollm2-llamacpp.json):
/// their prompt token counts are llama.cpp's count of the rendered template.
fn llama_cpp_cases() -> Vec<Value> {
    let value: Value =
        serde_json::from_str(include_str!("../fixtures/smollm2-llamacpp.json")).unwrap();
    value["cases"].as_array().unwrap().clone()
}

/// What one request should have been billed: its job and the worker's counts.
struct Expected {
    job: String,
    model: &'static str,
    prompt: u64,
    completion: u64,
    upstream_id: String,
}

/// A chat answer as the client read it (non-streamed, or its stream's chunks joined).
#[derive(Debug, PartialEq)]
struct ChatAnswer {
    id: String,
    text: String,
    finish: String,
    usage: (u64, u64),
}

/// The answer of a non-streamed chat completion body.
fn chat_answer(body: &str) -> ChatAnswer {
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    let choice = &body["choices"][0];
    assert_eq!(
        body["usage"]["total_tokens"],
        body["usage"]["prompt_tokens"].as_u64().unwrap()
            + body["usage"]["completion_tokens"].as_u64().unwrap()
    );
    ChatAnswer {
        id: body["id"].as_str().unwrap().to_string(),
        text: choice["message"]["content"].as_str().unwrap().to_string(),
        finish: choice["finish_reason"].as_str().unwrap().to_string(),
        usage: (
            body["usage"]["prompt_tokens"].as_u64().unwrap(),
            body["usage"]["completion_tokens"].as_u64().unwrap(),
        ),
    }
}

/// The answer of a streamed chat completion (SSE): role first, content in pieces,
/// the finish, the usage chunk (no choices), then `[DONE]`; one id throughout.
fn streamed_answer(sse: &str) -> ChatAnswer {
    let events: Vec<&str> = sse
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(str::trim)
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{sse}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() >= 4, "role, content, finish, usage: {sse}");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "the usage chunk is last");
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    ChatAnswer {
        id: chunks[0]["id"].as_str().unwrap().to_string(),
        text: chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect(),
        finish: finish.as_str().unwrap().to_string(),
        usage: (
            usage["usage"]["prompt_tokens"].as_u64().unwrap(),
            usage["usage"]["completion_tokens"].as_u64().unwrap(),
        ),
    }
}

/// Checks a chat answer to llama.cpp's `case` (at most [`CHAT_MAX_TOKENS`] tokens):
/// the prompt is counted exactly as llama.cpp counted it; the completion is within
/// the limit, `length` exactly at it.
fn check_chat(answer: &ChatAnswer, case: &Value, label: &str) {
    assert_eq!(
        answer.usage.0, case["usage"]["prompt_tokens"],
        "{label}: prompt tokens = llama.cpp's count of the rendered template"
    );
    assert!(
        (1..=CHAT_MAX_TOKENS).contains(&answer.usage.1),
        "{label}: {answer:?}"
    );
    let expected_finish = if answer.usage.1 == CHAT_MAX_TOKENS {
        "length"
    } else {
        "stop"
    };
    assert_eq!(answer.finish, expected_finish, "{label}: {answer:?}");
}

/// Sentences of varied length, so the token counts are not a pattern.
fn corpus() -> Vec<String> {
    let subjects = [
        "The operator's GPU",
        "A client in Lisbon",
        "Tally's oracle",
        "An embedding model",
        "The settlement program on Solana",
        "Every metered request",
    ];
    let verbs = [
        "encodes",
        "pays for",
        "settles",
        "attests to",
        "refunds what is left of",
    ];
    let objects = [
        "a sentence.",
        "thousands of tokens of customer support tickets, one batch at a time.",
        "the cumulative usage receipt signed by the oracle's Ed25519 key",
        "what was actually computed — nothing more, nothing less!",
        "invoices whose sha256 lands on-chain, chained to the previous one",
        "données multilingues: naïve café, 東京, and emoji 🚀",
    ];
    let mut out = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        for (j, v) in verbs.iter().enumerate() {
            out.push(format!("{s} {v} {}", objects[(i + j) % objects.len()]));
        }
    }
    out
}

/// The texts of request `r` of job `j`: one string or a batch of up to 16.
fn request_inputs(corpus: &[String], j: usize, r: usize) -> Vec<String> {
    let n = [1, 3, 16, 1, 8, 2, 5, 12][r % 8];
    (0..n)
        .map(|k| corpus[(j * 7 + r * 5 + k * 3) % corpus.len()].clone())
        .collect()
}

/// The tokens all-MiniLM-L6-v2 reads for `text`, counted here with the model's
/// tokenizer.json directly (special tokens included, no padding).
fn tokenizer_count(tokenizer: &tokenizers::Tokenizer, text: &str) -> u64 {
    tokenizer.encode(text, true).unwrap().get_ids().len() as u64
}

/// How the chain under test passes time for the challenge window.
trait Clock {
    fn pass(&mut self, secs: i64);
}

impl Clock for EmbeddedChain {
    fn pass(&mut self, secs: i64) {
        self.advance(secs);
    }
}

impl Clock for tally_client::chain::RpcChain {
    fn pass(&mut self, _secs: i64) {
        // Real time: `claim` below retries until the validator's clock is past it.
    }
}

/// What a run settled, for the figures printed.
struct Settled {
    requests: usize,
    inputs: usize,
    chat_requests: usize,
    generated: u64,
    tokens: u64,
    receipts: usize,
    settle_fee_lamports: u64,
}

/// The whole flow on `shared`, where `admin` is the program's upgrade authority and
/// holds SOL. `challenge_window` is waited for (embedded: advanced) before claiming.
/// The chain is shared: while requests are served, the gateway reads the jobs from it
/// (as the daemon's gateway does), and the flow holds it otherwise.
fn run_flow<C: Chain + Clock + Send + 'static>(
    shared: &Arc<Mutex<C>>,
    admin: &Keypair,
    models: &Models,
    challenge_window: u32,
    label: &str,
) -> Settled {
    let t0 = Instant::now();
    let mut held = shared.lock().unwrap();
    let chain: &mut C = &mut held;
    // A deployment (the shared bootstrap): config, a 6-decimal stablecoin, an
    // operator; the client funds its wallet and escrows two jobs.
    let people = Cast::new();
    people.fund(chain, admin, 5_000_000_000).unwrap();
    let settings = people.settings(FEE_BPS, challenge_window, 600);
    let mint = bootstrap::configure(chain, admin, &people, settings).unwrap();
    let funded = PRICE * MAX_UNITS * JOBS as u64;
    let terms = OpenJobArgs {
        job_id: 0,
        unit_kind: 0,
        input_price: PRICE * tally_client::PRICE_SCALE,
        output_price: PRICE * tally_client::PRICE_SCALE,
        model: [0; 32],
        max_units: MAX_UNITS,
        deadline: chain.clock().unwrap().unix_timestamp + 3_600,
        spend_cap_per_hour: 0,
    };
    let (client_tokens, jobs) =
        bootstrap::open_jobs(chain, &people, mint, funded, terms, 0..JOBS as u64).unwrap();
    let now = chain.clock().unwrap().unix_timestamp;
    let Cast {
        oracle,
        operator,
        client,
        ..
    } = people;
    assert_eq!(ops::token_balance(chain, &client_tokens).unwrap(), 0);
    // The client's wallet signs a job key per job: what its applications (here, also
    // OpenAI's Python client) use as the API key.
    let job_keys: Vec<String> = jobs
        .iter()
        .map(|job| {
            JobKeyClaims {
                job: *job,
                job_nonce: ops::job(chain, job).unwrap().nonce,
                expires_at: now + 3_600,
                spend_limit: None,
            }
            .sign(&client)
            .encode()
        })
        .collect();

    // The operator's GPU worker (a real process with the real models) behind the
    // oracle's gateway.
    let worker = WorkerProcess::start(&models.embeddings, Some(&models.chat));
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(models.embeddings.join("tokenizer.json")).unwrap();
    tokenizer.with_padding(None).with_truncation(None).unwrap();
    let dir = std::env::temp_dir().join(format!("tally-real-model-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store_path = dir.join("oracle.db");
    let corpus = corpus();
    // The gateway's request id → what it should bill.
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let mut inputs = 0;
    let mut chat_requests = 0;
    let cases = llama_cpp_cases();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Records are stamped in the chain's time (the gateway's clock), whatever the
    // day this test runs on.
    let clock = ChainClock::synced(chain).unwrap();
    let operator_pda = pda::operator(&operator.pubkey());
    drop(held);
    let drift = runtime.block_on(async {
        // The gateway commits into a sink whose telemetry the oracle's metrics
        // cross-check compares with the worker's own counters (vLLM's names).
        let telemetry = Arc::new(Telemetry::default());
        let sink = Sink::open(
            store_path.to_str().unwrap(),
            Arc::clone(&telemetry),
            Arc::clone(&clock),
            u64::MAX,
        )
        .unwrap();
        // Job keys are checked against the chain's jobs, and every request is
        // pre-authorized against its job's escrow, as the daemon runs the gateway.
        let book = JobBook::new(
            Arc::clone(shared) as _,
            SourceStore::open(store_path.to_str().unwrap(), Arc::clone(&clock)).unwrap(),
            Arc::clone(&clock),
            ViewConfig {
                refresh: Duration::from_secs(2),
                operator: Some(operator_pda),
                new_job_lookups_per_sec: 20,
                source: tally_oracle::gateway::SOURCE,
            },
        );
        let gateway = Gateway::build(GatewaySettings::new(worker.url.clone()), sink, Some(book));
        // vLLM's counters (the default).
        let mut cross_check = MetricsScrape::new(
            ScrapeSettings {
                interval_secs: 1.0,
                tolerance: 0.0,
                ..ScrapeSettings::new(format!("{}/metrics", worker.url))
            },
            telemetry,
        );
        let baseline = cross_check.scrape().await.unwrap();
        assert_eq!((baseline.upstream, baseline.metered), (0.0, 0.0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let url = format!("{base}/embeddings");
        tokio::spawn(gateway.serve(listener));
        let http = reqwest::Client::new();
        for r in 0..REQUESTS_PER_JOB {
            for (j, job) in jobs.iter().enumerate() {
                let texts = request_inputs(&corpus, j, r);
                let input = if texts.len() == 1 {
                    json!(texts[0])
                } else {
                    json!(texts)
                };
                let response = http
                    .post(&url)
                    .bearer_auth(&job_keys[j])
                    .body(json!({ "model": EMBEDDING_MODEL, "input": input }).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200);
                // The gateway's own request id (what the invoice lines are keyed on);
                // the worker's id is kept beside it.
                let request_id = response
                    .headers()
                    .get("x-tally-request-id")
                    .expect("the gateway names its request id")
                    .to_str()
                    .unwrap()
                    .to_string();
                let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
                assert_eq!(body["data"].as_array().unwrap().len(), texts.len());
                let counted: u64 = texts.iter().map(|t| tokenizer_count(&tokenizer, t)).sum();
                assert_eq!(
                    body["usage"]["prompt_tokens"], counted,
                    "usage = the tokenizer's count"
                );
                let upstream_id = body["id"].as_str().unwrap().to_string();
                expected.insert(
                    request_id,
                    Expected {
                        job: job.to_string(),
                        model: EMBEDDING_MODEL,
                        prompt: counted,
                        completion: 0,
                        upstream_id,
                    },
                );
                inputs += texts.len();
            }
        }

        // Chat on job 0, from Rust: a llama.cpp case asked twice, non-streamed and
        // streamed (the usage chunk asked for). Greedy: the same answer both ways.
        // (Few chat requests: on this CPU each costs seconds, most of it the prompt.)
        let chat_url = format!("{base}/chat/completions");
        {
            let (j, job) = (0, &jobs[0]);
            // Case 0 agrees with llama.cpp for 16 tokens (chat.rs's AGREEMENT).
            let case = &cases[0];
            let mut answers = Vec::new();
            for stream in [false, true] {
                let mut request = json!({
                    "model": CHAT_MODEL,
                    "messages": case["messages"],
                    "max_tokens": CHAT_MAX_TOKENS,
                    "temperature": 0,
                });
                if stream {
                    request["stream"] = json!(true);
                    request["stream_options"] = json!({ "include_usage": true });
                }
                let response = http
                    .post(&chat_url)
                    .bearer_auth(&job_keys[j])
                    .body(request.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200);
                let request_id = response.headers()["x-tally-request-id"]
                    .to_str()
                    .unwrap()
                    .to_string();
                let body = response.text().await.unwrap();
                let answer = if stream {
                    streamed_answer(&body)
                } else {
                    chat_answer(&body)
                };
                check_chat(&answer, case, &format!("job {j}, stream {stream}"));
                expected.insert(
                    request_id,
                    Expected {
                        job: job.to_string(),
                        model: CHAT_MODEL,
                        prompt: answer.usage.0,
                        completion: answer.usage.1,
                        upstream_id: answer.id.clone(),
                    },
                );
                chat_requests += 1;
                answers.push(answer);
            }
            let (plain, streamed) = (&answers[0], &answers[1]);
            assert_eq!(
                (&plain.text, &plain.finish, plain.usage),
                (&streamed.text, &streamed.finish, streamed.usage),
                "job {j}: streamed = not streamed"
            );
            let reference = case["text"].as_str().unwrap();
            assert!(
                reference.starts_with(&plain.text) && plain.usage.1 == CHAT_MAX_TOKENS,
                "llama.cpp's first {CHAT_MAX_TOKENS} tokens: {reference:?}, here {:?}",
                plain.text
            );
        }

        // Chat on job 1 from OpenAI's official Python client, the job key as its API
        // key: non-streamed and streamed.
        if let Some(python) = &models.python {
            let (j, case) = (1, &cases[1]);
            let calls: Vec<Value> = [false, true]
                .map(|stream| {
                    json!({
                        "api_key": job_keys[j],
                        "messages": case["messages"],
                        "max_completion_tokens": CHAT_MAX_TOKENS,
                        "stream": stream,
                    })
                })
                .to_vec();
            let spec = json!({ "base_url": base, "model": CHAT_MODEL, "calls": calls });
            let python = python.clone();
            let output = tokio::task::spawn_blocking(move || {
                std::process::Command::new(python)
                    .arg(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/tests/fixtures/openai_client.py"
                    ))
                    .arg(spec.to_string())
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "openai_client.py: {}\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            let out: Value = serde_json::from_str(&stdout).unwrap();
            let results = out["results"].as_array().unwrap();
            assert_eq!(results.len(), calls.len());
            for (i, result) in results.iter().enumerate() {
                let answer = ChatAnswer {
                    id: result["id"].as_str().unwrap().to_string(),
                    text: result["text"].as_str().unwrap().to_string(),
                    finish: result["finish_reason"].as_str().unwrap().to_string(),
                    usage: (
                        result["prompt_tokens"].as_u64().unwrap(),
                        result["completion_tokens"].as_u64().unwrap(),
                    ),
                };
                check_chat(&answer, case, &format!("openai {} job {j}", out["openai"]));
                if result["stream"] == true {
                    assert!(result["chunks"].as_u64().unwrap() >= 4, "{result}");
                    let plain = &results[i - 1];
                    assert_eq!(
                        (
                            &result["text"],
                            &result["prompt_tokens"],
                            &result["completion_tokens"]
                        ),
                        (
                            &plain["text"],
                            &plain["prompt_tokens"],
                            &plain["completion_tokens"]
                        ),
                        "the Python client: streamed = not streamed"
                    );
                }
                expected.insert(
                    result["request_id"].as_str().unwrap().to_string(),
                    Expected {
                        job: jobs[j].to_string(),
                        model: CHAT_MODEL,
                        prompt: answer.usage.0,
                        completion: answer.usage.1,
                        upstream_id: answer.id,
                    },
                );
                chat_requests += 1;
            }
            eprintln!(
                "openai {} (Python): {} chat completions through the gateway, streamed and not",
                out["openai"],
                results.len()
            );
        }
        // Refused input is neither served nor metered; an unknown key gets nothing.
        let refused = http
            .post(&url)
            .bearer_auth(&job_keys[0])
            .body(json!({ "input": ["fine", ""] }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 400);
        let stranger = http
            .post(&url)
            .bearer_auth("not-a-key")
            .body(json!({ "input": "free lunch?" }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(stranger.status().as_u16(), 401);
        // The oracle's cross-check: what the worker says it served = what was metered.
        cross_check.scrape().await.unwrap()
    });
    drop(worker);
    drop(runtime);
    let mut held = shared.lock().unwrap();
    let chain: &mut C = &mut held;
    let tokens: u64 = expected.values().map(|e| e.prompt + e.completion).sum();
    let generated: u64 = expected.values().map(|e| e.completion).sum();
    #[allow(clippy::cast_precision_loss)]
    let tokens_f64 = tokens as f64;
    assert_eq!(
        (drift.upstream, drift.metered, drift.tokens()),
        (tokens_f64, tokens_f64, 0.0),
        "the worker served exactly what was metered"
    );

    // The oracle's store holds one record per request, with the real counts.
    // Without lookup tables: this test counts what settling costs per receipt, and a
    // table's rent (given back when it is closed) is not a settlement cost.
    let batcher = Batcher::new(
        Store::open(&store_path).unwrap(),
        oracle.insecure_clone(),
        clock,
    )
    .with_settings(BatchSettings {
        lookup_tables: false,
        ..BatchSettings::default()
    })
    .with_invoices_dir(dir.join("invoices"));
    let records = batcher.store.all_records().unwrap();
    assert_eq!(records.len(), expected.len());
    for record in &records {
        let e = &expected[&record.request_id];
        assert_eq!(record.upstream_id, e.upstream_id);
        assert_eq!(
            (&record.job, record.prompt_tokens, record.completion_tokens),
            (&e.job, e.prompt, e.completion)
        );
        assert_eq!(record.model, e.model);
    }

    // The oracle settles: one cumulative receipt per job.
    let oracle_before = chain.account(&oracle.pubkey()).unwrap().unwrap().lamports;
    let round = batcher.run_round(chain).unwrap();
    assert_eq!((round.confirmed, round.failed), (JOBS, 0), "{round:?}");
    assert_eq!(
        batcher.run_round(chain).unwrap().sent,
        0,
        "nothing new to settle"
    );
    // What the oracle paid: the round's fees plus the rent of the two ledgers it
    // opened (Earnings of the operator for the mint, Revenue of the day).
    let day = utc_day(chain.clock().unwrap().unix_timestamp);
    let earnings = pda::earnings(&pda::operator(&operator.pubkey()), &mint.mint);
    let ledger_rent: u64 = [earnings, pda::revenue(&mint.mint, day)]
        .iter()
        .map(|a| chain.account(a).unwrap().map_or(0, |a| a.lamports))
        .sum();
    let oracle_after = chain.account(&oracle.pubkey()).unwrap().unwrap().lamports;
    let settle_fee_lamports = oracle_before - oracle_after - ledger_rent;

    // Every invoice line is a request with its real token count; each job's invoice
    // file is what the chain paid for (its sha256 is the job's on-chain hash).
    let mut invoiced = 0;
    for job in &jobs {
        let nonce = ops::job(chain, job).unwrap().nonce;
        let folder = dir
            .join("invoices")
            .join(job.to_string())
            .join(nonce.to_string());
        let files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        assert_eq!(files.len(), 1, "one receipt per job in one round");
        let invoice: Invoice = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!(
            invoice.lines.len(),
            expected
                .values()
                .filter(|e| e.job == job.to_string())
                .count()
        );
        for line in &invoice.lines {
            let e = &expected[&line.request_id];
            assert_eq!(
                (&e.job, line.prompt_tokens, line.completion_tokens),
                (&job.to_string(), e.prompt, e.completion)
            );
            assert_eq!(
                (
                    line.model.as_str(),
                    line.upstream_id.as_str(),
                    line.counted_by.as_str()
                ),
                (e.model, e.upstream_id.as_str(), COUNTED_BY_UPSTREAM)
            );
        }
        let units: u64 = invoice
            .lines
            .iter()
            .map(|l| l.prompt_tokens + l.completion_tokens)
            .sum();
        assert_eq!(invoice.units, units);
        let verified = tally_oracle::invoice::verify(chain, &files[0]).unwrap();
        assert_eq!(verified.settled_units, units);
        // What `tally invoice verify --store` checks: the store's copy, chained to
        // the hash on chain.
        let in_store =
            tally_oracle::invoice::verify_in_store(chain, &batcher.store, &job.to_string(), None)
                .unwrap();
        assert_eq!(
            (in_store.seq, in_store.units, in_store.settled_units),
            (verified.seq, units, units)
        );
        let state = ops::job(chain, job).unwrap();
        assert_eq!(
            (state.settled_units, state.settled_gross),
            (units, units * PRICE),
            "on-chain = invoice"
        );
        invoiced += units;
    }
    assert_eq!(invoiced, tokens);

    // The jobs complete with their final receipts: the rest goes back to the client.
    for job in &jobs {
        bootstrap::complete_settled(
            chain,
            &[&oracle],
            &operator.pubkey(),
            mint,
            client_tokens,
            job,
        )
        .unwrap();
        // Completed and refunded. While its share is in the challenge window the
        // account stays (its client may still dispute it) and is closed below.
        if chain.account(job).unwrap().is_some() {
            assert_eq!(
                ops::job(chain, job).unwrap().status(),
                tally::state::JobStatus::Completed
            );
        }
    }
    let gross = tokens * PRICE;
    assert_eq!(
        ops::token_balance(chain, &client_tokens).unwrap(),
        funded - gross
    );

    // The operator claims once the challenge window has passed.
    chain.pass(2 * i64::from(challenge_window) + 1);
    let start = Instant::now();
    let claimed = loop {
        match ops::claim(chain, &operator, &mint.mint) {
            Ok(amount) => break amount,
            Err(e) if e.to_string().contains("challenge window") => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "never matured: {e}"
                );
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => panic!("claim failed: {e}"),
        }
    };
    let fee = gross * u64::from(FEE_BPS) / 10_000;
    assert_eq!(claimed, gross - fee);
    // Nothing is disputable any more: anyone may close the jobs (rent to the client).
    for job in &jobs {
        if chain.account(job).unwrap().is_some() {
            ops::close_job(chain, &operator, job).unwrap();
        }
        assert!(chain.account(job).unwrap().is_none(), "the job is closed");
    }
    let payout = pda::associated_token(&operator.pubkey(), &mint.mint, &mint.token_program);
    assert_eq!(ops::token_balance(chain, &payout).unwrap(), gross - fee);

    // On-chain revenue = the invoices: units, gross, and the vault keeps only the fee.
    let revenue = ops::revenue(chain, &mint.mint, 2).unwrap();
    assert_eq!(revenue.iter().map(|d| d.units).sum::<u64>(), invoiced);
    assert_eq!(
        revenue.iter().map(|d| d.gross).sum::<u64>(),
        invoiced * PRICE
    );
    assert_eq!(revenue.iter().map(|d| d.fees).sum::<u64>(), fee);
    assert_eq!(
        ops::token_balance(chain, &pda::vault_tokens(&mint.mint)).unwrap(),
        fee
    );
    let _ = std::fs::remove_dir_all(&dir);
    let settled = Settled {
        requests: expected.len(),
        inputs,
        chat_requests,
        generated,
        tokens,
        receipts: round.confirmed,
        settle_fee_lamports,
    };
    #[allow(clippy::cast_precision_loss)]
    let per_1k = settled.settle_fee_lamports as f64 * 1_000.0 / settled.tokens as f64;
    eprintln!(
        "real models on {label}: {} requests ({} embedding inputs; {} chat completions generating {} tokens) → {} tokens invoiced = {} tokens settled in {} receipts; paid {gross}, fee {fee}, claimed {claimed}; settlement fees {} lamports ({per_1k:.1} lamports per 1k tokens at {} tokens per receipt); {:.1} s",
        settled.requests,
        settled.inputs,
        settled.chat_requests,
        settled.generated,
        settled.tokens,
        invoiced,
        settled.receipts,
        settled.settle_fee_lamports,
        settled.tokens / settled.receipts as u64,
        t0.elapsed().as_secs_f64()
    );
    settled
}

#[test]
fn real_model_usage_settles_on_the_embedded_chain() {
    let Some(models) = models_or_skip() else {
        return;
    };
    let admin = Keypair::new();
    let mut chain =
        EmbeddedChain::new(&EmbeddedChain::default_program_path(), &admin.pubkey()).unwrap();
    chain.airdrop(&admin.pubkey(), 100_000_000_000).unwrap();
    // The chain keeps its own clock (far from today's): the gateway stamps records in
    // it, so nothing here depends on the day the test runs.
    chain.set_time(tally_tests::genesis_unix_time());
    let chain = Arc::new(Mutex::new(chain));
    let settled = run_flow(&chain, &admin, &models, 60, "the embedded chain");
    assert_eq!(settled.receipts, JOBS);
}

#[test]
fn real_model_usage_settles_on_a_local_validator() {
    let Some(models) = models_or_skip() else {
        return;
    };
    // A private validator: the flow initializes a fresh deployment.
    let Some(validator) = tally_tests::validator::LocalValidator::start_private_or_skip(Some(
        &tally_tests::validator::LocalValidator::default_program(),
    )) else {
        return;
    };
    eprintln!(
        "solana-test-validator {} healthy at {} in {:.2} s",
        validator.version.as_deref().unwrap_or("?"),
        validator.rpc_url,
        validator.startup.as_secs_f64()
    );
    let chain = Arc::new(Mutex::new(validator.chain()));
    let admin = validator.payer.insecure_clone();
    // A 1-second challenge window, waited in real time.
    let settled = run_flow(&chain, &admin, &models, 1, "solana-test-validator");
    assert_eq!(settled.receipts, JOBS);
}
