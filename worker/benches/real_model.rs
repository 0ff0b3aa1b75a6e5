//! Real-model figures on this machine (scripts/bench runs it):
//!
//! 1. the model alone: embeddings/s and tokens/s at batch sizes 1 and 32;
//! 2. the oracle gateway's metering overhead on real requests: the same requests
//!    straight to tally-worker and through the gateway, interleaved in one run
//!    (p50/p99 latency, throughput, ratio);
//! 3. settlement cost: the gateway's records settled by the oracle's batcher on the
//!    embedded chain (SBF program), in lamports per receipt and per 1k tokens, and
//!    the same at steady state (one saturated worker, the oracle's 10 s round);
//! 4. the chat model (SmolLM2-135M-Instruct Q4_1), streamed: time to first token and
//!    decode tokens/s at 1 and 4 concurrent streams, straight to tally-worker and
//!    through the gateway (interleaved in one run), when scripts/fetch-model fetched it.
//!
//!     cargo bench --profile host-release -p tally-worker --bench real-model
//!
//! Prints markdown; writes target/bench/real-model.json.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use solana_signer::Signer;
use tally_oracle::batcher::{BatchSettings, Batcher};
use tally_oracle::clock::ChainClock;
use tally_oracle::gateway::{Gateway, GatewaySettings};
use tally_oracle::store::Store;
use tally_tests::{JobSpec, World};
use tally_worker::model::Tokenized;
use tally_worker::{Embedder, ModelOptions, Worker, WorkerConfig};

/// Jobs the traffic is spread over (one receipt each; 8 receipts per transaction).
const JOBS: usize = 8;
/// The oracle daemon's default batcher round.
const ROUND_SECS: f64 = 10.0;
/// Base fee per signature.
const LAMPORTS_PER_SIGNATURE: u64 = 5_000;

fn sentences(n: usize) -> Vec<String> {
    let subjects = [
        "The operator's GPU",
        "A client in Lisbon",
        "Tally's oracle",
        "An embedding model",
        "The settlement program",
        "Every metered request",
        "A search index",
        "The support team",
    ];
    let verbs = ["encodes", "pays for", "settles", "attests to", "ranks"];
    let objects = [
        "a short sentence.",
        "thousands of support tickets, one batch at a time.",
        "the cumulative usage receipt the oracle signed",
        "what was actually computed, nothing more and nothing less",
        "product descriptions in several languages",
        "invoices whose hashes are recorded on-chain",
        "queries typed into a search box at midnight",
    ];
    (0..n)
        .map(|i| {
            format!(
                "{} {} {} (#{i})",
                subjects[i % subjects.len()],
                verbs[(i / subjects.len()) % verbs.len()],
                objects[(i * 3) % objects.len()]
            )
        })
        .collect()
}

fn passages(n: usize) -> Vec<String> {
    let s = sentences(n * 6);
    s.chunks(6).map(|c| c.join(" ")).collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[allow(clippy::cast_precision_loss)]
fn model_alone(embedder: &Embedder, texts: &[String], batch: usize, what: &str) -> Value {
    let tokenized: Vec<Tokenized> = embedder.tokenize(texts).unwrap();
    let tokens: usize = tokenized.iter().map(Tokenized::tokens).sum();
    // Warm up, then time every input once (at least 3 s of work, repeating).
    embedder
        .embed(&tokenized[..batch.min(tokenized.len())], batch)
        .unwrap();
    let start = Instant::now();
    let mut rounds = 0usize;
    while rounds == 0 || start.elapsed() < Duration::from_secs(3) {
        for chunk in tokenized.chunks(batch) {
            embedder.embed(chunk, batch).unwrap();
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let embeddings = (texts.len() * rounds) as f64 / secs;
    let tokens_per_s = (tokens * rounds) as f64 / secs;
    println!(
        "| {what} | {batch} | {:.1} | {embeddings:.1} | {tokens_per_s:.0} |",
        tokens as f64 / texts.len() as f64
    );
    json!({ "inputs": what, "batch": batch, "tokens_per_input": tokens as f64 / texts.len() as f64,
            "embeddings_per_s": embeddings, "tokens_per_s": tokens_per_s })
}

struct Path {
    latencies_ms: Vec<f64>,
    busy: Duration,
}

impl Path {
    fn new() -> Self {
        Self {
            latencies_ms: Vec::new(),
            busy: Duration::ZERO,
        }
    }
}

async fn send(http: &reqwest::Client, url: &str, key: &str, body: &str) -> (Duration, u64) {
    let start = Instant::now();
    let response = http
        .post(url)
        .bearer_auth(key)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let text = response.text().await.unwrap();
    let elapsed = start.elapsed();
    let value: Value = serde_json::from_str(&text).unwrap();
    (elapsed, value["usage"]["prompt_tokens"].as_u64().unwrap())
}

/// One streamed chat completion: (time to its first content token, whole time,
/// completion tokens from its usage chunk).
async fn chat_stream(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: &str,
) -> (Duration, Duration, u64) {
    let started = Instant::now();
    let mut response = http
        .post(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let (mut first, mut text) = (None, String::new());
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
        // The first chunk may carry only the role (an empty content): the first
        // token is the first content that is not empty.
        let token = |(at, m): (usize, &str)| {
            text[at + m.len()..]
                .chars()
                .next()
                .is_some_and(|c| c != '"')
        };
        if first.is_none() && text.match_indices("\"content\":\"").any(token) {
            first = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let tokens = text
        .split("\"completion_tokens\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("a usage chunk");
    (first.unwrap_or(total), total, tokens)
}

/// One settlement round of `batcher` (the world's first oracle) for `operator`'s
/// jobs: its report and the fees it paid, in lamports — the oracle's balance change
/// less the rent of ledgers the round opened (an account, not a cost).
fn settle_round(
    world: &mut World,
    batcher: &Batcher,
    operator: &tally_tests::OperatorHandle,
) -> (tally_oracle::batcher::RoundReport, u64) {
    let oracle = world.oracles[0].pubkey();
    let day = tally::state::utc_day(world.env.now());
    let ledgers = [
        tally_client::pda::earnings(&operator.address(), &world.mint.mint),
        tally_client::pda::revenue(&world.mint.mint, day),
    ];
    let rent = |world: &World| -> u64 { ledgers.iter().map(|a| world.env.lamports(a)).sum() };
    let (rent_before, before) = (rent(world), world.env.lamports(&oracle));
    let round = batcher.run_round(&mut *world.env).unwrap();
    let fees = before - world.env.lamports(&oracle) - (rent(world) - rent_before);
    (round, fees)
}

/// At steady state one worker serving `tokens_per_s` gets one receipt per job per
/// ROUND_SECS round: the tokens a receipt carries, and the lamports per 1k tokens
/// with 1 and with JOBS receipts per transaction (one signature's fee each).
#[allow(clippy::cast_precision_loss)]
fn steady_state(tokens_per_s: f64) -> (f64, f64, f64) {
    let per_round = tokens_per_s * ROUND_SECS;
    let one = LAMPORTS_PER_SIGNATURE as f64 * 1_000.0 / per_round;
    (per_round, one, one / JOBS as f64)
}

/// Section 4: the chat model, straight and through the gateway; then what settling
/// the generated tokens the gateway metered costs, measured and at steady state.
#[allow(clippy::cast_precision_loss)]
fn chat(
    world: &mut World,
    job: &tally_tests::JobHandle,
    operator: &tally_tests::OperatorHandle,
    work: &std::path::Path,
) -> Option<Value> {
    let model = tally_worker::default_chat_model();
    if let Some(reason) = tally_worker::chat::model::missing_gguf(&model) {
        println!("\nchat bench skipped: {reason}; run scripts/fetch-model");
        return None;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clock = ChainClock::synced(&*world.env).unwrap();
    let rows = runtime.block_on(async {
        let worker = Worker::load(&WorkerConfig::chat(&model)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(Arc::clone(&worker).serve(listener));
        let gateway = Gateway::new(
            GatewaySettings::new(upstream.clone())
                .with_api_keys([("chat-key".to_string(), job.address.to_string())]),
            &work.join("chat.db"),
            clock,
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let through = format!("http://{}/v1/chat/completions", listener.local_addr().unwrap());
        tokio::spawn(gateway.serve(listener));
        let direct = format!("{upstream}/v1/chat/completions");
        let http = reqwest::Client::new();
        let body = |i: usize| {
            json!({
                "model": "SmolLM2-135M-Instruct.Q4_1",
                "messages": [{ "role": "user", "content": format!("Name a colour, then count to ten. ({i})") }],
                "max_tokens": 16, "temperature": 0, "stream": true,
                "stream_options": { "include_usage": true },
            })
            .to_string()
        };
        chat_stream(&http, &direct, "chat-key", &body(0)).await;
        println!("\n| chat, streamed, 16 tokens (same run, interleaved) | path | time to first token ms (median) | decode tokens/s |\n|---|---|---:|---|");
        let mut rows = Vec::new();
        for streams in [1usize, 4] {
            let mut figures = Vec::new();
            for (name, url) in [("direct", &direct), ("gateway", &through)] {
                let (mut ttft, mut decode_tokens, mut decode_time) = (Vec::new(), 0u64, 0.0f64);
                let (mut wall, mut all_tokens) = (0.0f64, 0u64);
                for round in 0..2usize {
                    let started = Instant::now();
                    let runs = futures_join(
                        (0..streams)
                            .map(|k| {
                                let (http, url, body) = (http.clone(), url.clone(), body(round * 4 + k));
                                tokio::spawn(async move { chat_stream(&http, &url, "chat-key", &body).await })
                            })
                            .collect(),
                    )
                    .await;
                    wall += started.elapsed().as_secs_f64();
                    for (first, total, tokens) in runs {
                        ttft.push(first.as_secs_f64() * 1_000.0);
                        all_tokens += tokens;
                        decode_tokens += tokens.saturating_sub(1);
                        decode_time += total.saturating_sub(first).as_secs_f64();
                    }
                }
                ttft.sort_by(f64::total_cmp);
                let ttft_ms = percentile(&ttft, 0.5);
                // Decode speed of one stream (after its first token), and what the
                // worker served in all (every stream's tokens over the wall time).
                let per_stream = decode_tokens as f64 / decode_time;
                let served = all_tokens as f64 / wall;
                println!("| {streams} stream(s) | {name} | {ttft_ms:.0} | {per_stream:.1} per stream, {served:.1} in all |");
                figures.push((ttft_ms, per_stream, served));
            }
            let (d, g) = (figures[0], figures[1]);
            println!(
                "| | **gateway − direct / ratio** | **+{:.1} ms** | **{:.3}** |",
                g.0 - d.0,
                g.1 / d.1
            );
            rows.push(json!({
                "streams": streams,
                "direct": { "ttft_ms": d.0, "decode_tokens_per_s_per_stream": d.1, "tokens_per_s_served": d.2 },
                "gateway": { "ttft_ms": g.0, "decode_tokens_per_s_per_stream": g.1, "tokens_per_s_served": g.2 },
                "gateway_added_ttft_ms": g.0 - d.0,
                "throughput_ratio": g.1 / d.1,
            }));
        }
        rows
    });
    let settlement = chat_settlement(world, job, operator, work, &rows);
    Some(json!({ "streams": rows, "settlement": settlement }))
}

/// The chat job's metered records settled by the oracle's batcher (fees per 1k
/// generated tokens, this run), and at steady state: one worker serving 4 streams
/// through the gateway, the oracle settling every ROUND_SECS, one receipt a round.
#[allow(clippy::cast_precision_loss)]
fn chat_settlement(
    world: &mut World,
    job: &tally_tests::JobHandle,
    operator: &tally_tests::OperatorHandle,
    work: &std::path::Path,
    rows: &[Value],
) -> Value {
    let batcher = Batcher::new(
        Store::open(&work.join("chat.db")).unwrap(),
        world.oracles[0].insecure_clone(),
        ChainClock::synced(&*world.env).unwrap(),
    )
    .with_settings(BatchSettings {
        lookup_tables: false,
        ..BatchSettings::default()
    });
    let (round, fees) = settle_round(world, &batcher, operator);
    assert_eq!(round.failed, 0, "{round:?}");
    let settled = world.env.job(&job.address);
    let generated = settled.settled_output;
    let per_1k = fees as f64 * 1_000.0 / generated.max(1) as f64;
    // Steady state: what one worker generates in a round at 4 streams.
    let served = rows
        .last()
        .and_then(|r| r["gateway"]["tokens_per_s_served"].as_f64())
        .unwrap_or(0.0);
    let (per_round, steady_1, steady_8) = steady_state(served);
    println!("\n| chat settlement (SBF program, embedded chain) | value |\n|---|---:|");
    println!(
        "| this run: generated tokens settled (prompt tokens), receipts | {generated} ({}), {} |",
        settled.settled_units - generated,
        round.confirmed
    );
    println!("| this run: fee lamports per 1k generated tokens | {per_1k:.1} |");
    println!("| steady state: generated tokens per receipt (one worker, 4 streams, {ROUND_SECS} s rounds) | {per_round:.0} |");
    println!(
        "| steady state: lamports per 1k generated tokens, 1 receipt per tx | {steady_1:.1} |"
    );
    println!("| steady state: lamports per 1k generated tokens, {JOBS} receipts per tx | {steady_8:.1} |");
    json!({
        "generated_tokens": generated,
        "prompt_tokens": settled.settled_units - generated,
        "receipts": round.confirmed,
        "fee_lamports": fees,
        "fee_lamports_per_1k_generated_tokens": per_1k,
        "steady_state_generated_tokens_per_receipt": per_round,
        "steady_state_lamports_per_1k_generated_tokens_1_receipt_per_tx": steady_1,
        "steady_state_lamports_per_1k_generated_tokens_8_receipts_per_tx": steady_8,
    })
}

/// Awaits every task, in order.
async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[allow(clippy::cast_precision_loss)]
fn main() {
    let dir = tally_worker::default_model_dir();
    if let Some(reason) = tally_worker::model::missing_files(&dir) {
        println!("real-model bench skipped: {reason}; run scripts/fetch-model");
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    // Other processes compete for the same cores: say how busy the machine was.
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    };
    let load_before = load();
    println!(
        "\n### Real model: all-MiniLM-L6-v2 on this CPU ({cores} cores, candle, f32; load average {load_before} at start)\n"
    );

    // 1. The model alone.
    let embedder = Embedder::load(&dir, &ModelOptions::default()).unwrap();
    println!(
        "| inputs | batch | tokens/input | embeddings/s | tokens/s |\n|---|---:|---:|---:|---:|"
    );
    let short = sentences(256);
    let long = passages(64);
    let model_rows = vec![
        model_alone(&embedder, &short, 1, "sentences"),
        model_alone(&embedder, &short, 32, "sentences"),
        model_alone(&embedder, &long, 1, "passages"),
        model_alone(&embedder, &long, 32, "passages"),
    ];
    drop(embedder);

    // 2. The gateway's overhead on real requests, and 3. what settling them costs.
    let mut world = World::builder().fee_bps(250).challenge_window(0).build();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    world.env.set_time(i64::try_from(wall).unwrap());
    let operator = world.operator();
    let client = world.client(1_000_000_000_000);
    let spec = JobSpec {
        unit_price: 20,
        max_units: 10_000_000,
        ..JobSpec::default()
    };
    let jobs: Vec<_> = (0..JOBS as u64)
        .map(|id| world.open_job(&client, &operator, id, spec))
        .collect();
    let work = std::env::temp_dir().join(format!("tally-real-model-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let store_path = work.join("oracle.db");
    let api_keys: HashMap<String, String> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (format!("key-{i}"), j.address.to_string()))
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clock = ChainClock::synced(&*world.env).unwrap();
    let (overhead_rows, metered_tokens) = runtime.block_on(async {
        let worker = Worker::load(&WorkerConfig::new(&dir)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(Arc::clone(&worker).serve(listener));
        let gateway = Gateway::new(
            GatewaySettings::new(upstream.clone()).with_api_keys(api_keys),
            &store_path,
            Arc::clone(&clock),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let through = format!("http://{}/v1/embeddings", listener.local_addr().unwrap());
        tokio::spawn(gateway.serve(listener));
        let direct = format!("{upstream}/v1/embeddings");
        let http = reqwest::Client::new();

        println!("\n| requests (same run, interleaved) | path | p50 ms | p99 ms | requests/s | tokens/s |\n|---|---|---:|---:|---:|---:|");
        let mut rows = Vec::new();
        let mut metered = 0u64;
        for (batch, count) in [(1usize, 300usize), (32, 40)] {
            let bodies: Vec<String> = (0..count)
                .map(|r| {
                    let texts: Vec<String> = (0..batch)
                        .map(|k| short[(r * batch + k) % short.len()].clone())
                        .collect();
                    json!({ "model": "all-MiniLM-L6-v2", "input": texts }).to_string()
                })
                .collect();
            // Warm-up of both paths.
            for body in bodies.iter().take(3) {
                send(&http, &direct, "key-0", body).await;
                metered += send(&http, &through, "key-0", body).await.1;
            }
            let (mut straight, mut metered_path) = (Path::new(), Path::new());
            let mut tokens = 0u64;
            for (r, body) in bodies.iter().enumerate() {
                let key = format!("key-{}", r % JOBS);
                // Alternate which goes first, so neither path always runs warm.
                let order = if r % 2 == 0 { [false, true] } else { [true, false] };
                for via_gateway in order {
                    let (url, path) = if via_gateway {
                        (&through, &mut metered_path)
                    } else {
                        (&direct, &mut straight)
                    };
                    let (elapsed, used) = send(&http, url, &key, body).await;
                    path.latencies_ms.push(elapsed.as_secs_f64() * 1_000.0);
                    path.busy += elapsed;
                    if via_gateway {
                        metered += used;
                        tokens += used;
                    }
                }
            }
            let mut summary = Vec::new();
            for (name, path) in [("direct", &mut straight), ("gateway", &mut metered_path)] {
                path.latencies_ms.sort_by(f64::total_cmp);
                let p50 = percentile(&path.latencies_ms, 0.5);
                let p99 = percentile(&path.latencies_ms, 0.99);
                let rps = count as f64 / path.busy.as_secs_f64();
                let tps = tokens as f64 / path.busy.as_secs_f64();
                println!("| {count} × {batch} input(s) | {name} | {p50:.2} | {p99:.2} | {rps:.1} | {tps:.0} |");
                summary.push((p50, p99, rps, tps));
            }
            let (d, g) = (summary[0], summary[1]);
            println!(
                "| | **gateway / direct** | **{:.3}** (+{:.2} ms) | {:.3} | {:.3} | |",
                g.0 / d.0,
                g.0 - d.0,
                g.1 / d.1,
                g.2 / d.2
            );
            rows.push(json!({
                "batch": batch, "requests": count,
                "direct": { "p50_ms": d.0, "p99_ms": d.1, "requests_per_s": d.2, "tokens_per_s": d.3 },
                "gateway": { "p50_ms": g.0, "p99_ms": g.1, "requests_per_s": g.2, "tokens_per_s": g.3 },
                "p50_ratio": g.0 / d.0, "throughput_ratio": g.2 / d.2,
            }));
        }
        (rows, metered)
    });

    // 3. The oracle settles what the gateway metered: one receipt per job, one
    //    transaction (8 receipts); fees from the oracle's balance, less the rent of
    //    the two ledgers the first settlement opens.
    let oracle = world.oracles[0].insecure_clone();
    // Without lookup tables: the figure is what settling costs per receipt, and a
    // table's rent (given back when it is closed) is not a settlement cost.
    let batcher = Batcher::new(
        Store::open(&store_path).unwrap(),
        oracle.insecure_clone(),
        clock,
    )
    .with_settings(BatchSettings {
        max_receipts_per_tx: JOBS,
        lookup_tables: false,
        ..BatchSettings::default()
    })
    .with_invoices_dir(work.join("invoices"));
    let (round, fees) = settle_round(&mut world, &batcher, &operator);
    assert_eq!((round.confirmed, round.failed), (JOBS, 0), "{round:?}");
    let settled: u64 = jobs
        .iter()
        .map(|j| world.env.job(&j.address).settled_units)
        .sum();
    assert_eq!(settled, metered_tokens, "on-chain = metered");
    let per_receipt = fees as f64 / JOBS as f64;
    let per_1k = fees as f64 * 1_000.0 / settled as f64;
    // Steady state: one worker kept busy with batch-32 requests through the gateway,
    // the oracle settling every ROUND_SECS, one receipt per job per round.
    let busy_tps = overhead_rows[1]["gateway"]["tokens_per_s"]
        .as_f64()
        .unwrap_or(0.0);
    let (per_round, steady_1, steady_8) = steady_state(busy_tps);
    println!("\n| settlement on-chain (SBF program, embedded chain) | value |\n|---|---:|");
    println!("| this run: tokens settled, receipts, transactions | {settled} tokens, {} receipts, {} tx |", round.confirmed, round.confirmed.div_ceil(JOBS));
    println!("| this run: fee lamports (per receipt) | {fees} ({per_receipt:.0}) |");
    println!("| this run: fee lamports per 1k tokens settled | {per_1k:.1} |");
    println!("| steady state: tokens per receipt (one busy worker, {ROUND_SECS} s rounds) | {per_round:.0} |");
    println!("| steady state: lamports per 1k tokens, 1 receipt per tx | {steady_1:.1} |");
    println!("| steady state: lamports per 1k tokens, {JOBS} receipts per tx | {steady_8:.1} |");
    // 4. The chat model, on a job of its own.
    let chat_job = world.open_job(&client, &operator, JOBS as u64, spec);
    let chat_rows = chat(&mut world, &chat_job, &operator, &work);
    let _ = std::fs::remove_dir_all(&work);
    let load_after = load();
    println!("\nload average: {load_before} at start, {load_after} at the end");

    let results = json!({
        "model": "all-MiniLM-L6-v2",
        "cores": cores,
        "load_average": [load_before, load_after],
        "model_alone": model_rows,
        "gateway_overhead": overhead_rows,
        "chat_streamed": chat_rows,
        "settlement": {
            "tokens": settled, "receipts": round.confirmed, "fee_lamports": fees,
            "fee_lamports_per_receipt": per_receipt, "fee_lamports_per_1k_tokens": per_1k,
            "steady_state_tokens_per_receipt": per_round,
            "steady_state_lamports_per_1k_tokens_1_receipt_per_tx": steady_1,
            "steady_state_lamports_per_1k_tokens_8_receipts_per_tx": steady_8,
        },
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("real-model.json"),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
}
