//! Oracle benchmarks, printed and merged into target/bench/results.json (by
//! `scripts/bench`): receipts signed/s (ed25519 over the receipt message), and the
//! gateway's added latency — p50/p99 of requests through the gateway against the
//! same requests sent straight to the same upstream, in one run (at concurrency 1:
//! each record's group commit is a group of one, never waiting for others), with
//! everything a paying request goes through on: a wallet-signed job key checked
//! (signature, expiry, revocation), the job's view read and the request's maximum cost
//! reserved (pre-authorization), the meter claimed, the body normalized, the record
//! committed durably before the answer. The job's chain state comes from memory here
//! (the daemon reads it from the chain in the background; a request waits for the
//! chain only on a view older than the refresh interval). Durable ingest, settlement
//! rounds at scale and settlement throughput are in `oracle/benches/scale.rs`.
// Statistics over timings: float conversions of counts and ranks are intended.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{json, Value};
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally_client::job_key::JobKeyClaims;
use tally_oracle::clock::ChainClock;
use tally_oracle::gateway::{Gateway, GatewaySettings};
use tally_oracle::job_view::{JobBook, ViewConfig};
use tally_oracle::meter::SourceStore;
use tally_oracle::node_report::JobDirectory;
use tally_oracle::sim_worker::SimWorker;
use tally_oracle::sink::Sink;
use tally_oracle::telemetry::Telemetry;

const SIGNATURES: u64 = 20_000;
const REQUESTS: usize = 1_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn signing() -> f64 {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let receipt = tally::receipt::UsageReceipt {
        job: anchor_lang::prelude::Pubkey::new_from_array([3; 32]),
        job_nonce: 1,
        receipt: tally::receipt::SettleReceipt {
            seq: 1,
            cumulative_units: 1,
            cumulative_output: 0,
            invoice_hash: [0; 32],
            period_end: 0,
        },
        is_final: false,
        oracle_set_version: 1,
    };
    let started = Instant::now();
    let mut last = None;
    for seq in 0..SIGNATURES {
        let mut r = receipt;
        r.receipt.seq = seq;
        last = Some(key.sign(&r.message(&tally::ID)));
    }
    std::hint::black_box(last);
    SIGNATURES as f64 / started.elapsed().as_secs_f64()
}

async fn timed(client: &reqwest::Client, url: &str, key: Option<&str>) -> Result<f64, String> {
    let body = r#"{"model":"llama-3-8b","messages":[{"role":"user","content":"how much does a token cost"}],"max_tokens":32}"#;
    let mut request = client.post(format!("{url}/v1/chat/completions")).body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let started = Instant::now();
    let response = request.send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    response.bytes().await.map_err(|e| e.to_string())?;
    Ok(started.elapsed().as_secs_f64() * 1_000.0)
}

/// Latencies of one path, sorted (ms).
struct Path(Vec<f64>);

impl Path {
    fn p(&self, q: f64) -> f64 {
        percentile(&self.0, q)
    }
}

/// The same request straight to the upstream, through a gateway taking a static key
/// without the chain, and through a gateway checking a job key and pre-authorizing,
/// interleaved (rotating which goes first), so load on the machine affects all alike.
async fn latencies(
    client: &reqwest::Client,
    urls: [(&str, Option<&str>); 3],
    requests: usize,
) -> Result<[Path; 3], String> {
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..requests {
        for k in 0..3 {
            let which = (i + k) % 3;
            let (url, key) = urls[which];
            out[which].push(timed(client, url, key).await?);
        }
    }
    Ok(out.map(|mut v| {
        v.sort_by(f64::total_cmp);
        Path(v)
    }))
}

/// A job as the chain would hold it: the bench's client, escrow enough for the run.
struct MemoryDirectory {
    address: anchor_lang::prelude::Pubkey,
    job: tally::state::Job,
}

impl JobDirectory for MemoryDirectory {
    fn job(
        &self,
        job: &anchor_lang::prelude::Pubkey,
    ) -> Result<Option<tally::state::Job>, tally_oracle::OracleError> {
        Ok((*job == self.address).then_some(self.job))
    }

    fn signers(
        &self,
        _: &anchor_lang::prelude::Pubkey,
    ) -> Result<Option<tally_oracle::node_report::JobSigners>, tally_oracle::OracleError> {
        Ok(None)
    }
}

async fn gateway(dir: PathBuf) -> Result<[Path; 3], String> {
    let worker = Arc::new(SimWorker::default());
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let upstream_url = format!(
        "http://{}",
        upstream.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(Arc::clone(&worker).serve(upstream));
    let clock = ChainClock::new();
    let client = Keypair::new();
    let operator_authority = anchor_lang::prelude::Pubkey::new_unique();
    let address = anchor_lang::prelude::Pubkey::new_unique();
    let mut account = <tally::state::Job as anchor_lang::Discriminator>::DISCRIMINATOR.to_vec();
    account.resize(tally::state::Job::ACCOUNT_SIZE, 0);
    let mut job = tally_client::ops::decode_job(&account).ok_or("a zeroed job does not decode")?;
    job.client = client.pubkey();
    job.operator = tally_client::pda::operator(&operator_authority);
    job.nonce = 1;
    job.input_price = tally_client::PRICE_SCALE;
    job.output_price = tally_client::PRICE_SCALE;
    job.escrow_left = u64::MAX / 2;
    job.deposited = job.escrow_left;
    job.deadline = clock.now() + 86_400;
    let key = JobKeyClaims {
        job: address,
        job_nonce: 1,
        expires_at: clock.now() + 3_600,
        spend_limit: None,
    }
    .sign(&client)
    .encode();
    let store = dir.join("gateway.db").to_string_lossy().to_string();
    let sink = Sink::open(
        &store,
        Arc::new(Telemetry::default()),
        Arc::clone(&clock),
        u64::MAX,
    )
    .map_err(|e| e.to_string())?;
    let book = JobBook::new(
        Arc::new(MemoryDirectory { address, job }),
        SourceStore::open(&store, Arc::clone(&clock)).map_err(|e| e.to_string())?,
        clock,
        ViewConfig {
            refresh: std::time::Duration::from_secs(2),
            operator: Some(job.operator),
            new_job_lookups_per_sec: 20,
            source: tally_oracle::gateway::SOURCE,
        },
    );
    let gateway = Gateway::build(GatewaySettings::new(upstream_url.clone()), sink, Some(book));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let gateway_url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(gateway.serve(listener));
    // The same gateway without the chain: a static key, no pre-authorization.
    let plain = Gateway::new(
        GatewaySettings::new(upstream_url.clone())
            .with_api_keys([("static".to_string(), address.to_string())]),
        &dir.join("plain.db"),
        ChainClock::new(),
    )
    .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let plain_url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(plain.serve(listener));
    let http = reqwest::Client::new();
    let urls = [
        (upstream_url.as_str(), None),
        (plain_url.as_str(), Some("static")),
        (gateway_url.as_str(), Some(key.as_str())),
    ];
    // Warm every path, then measure them interleaved.
    latencies(&http, urls, 50).await?;
    latencies(&http, urls, REQUESTS).await
}

fn main() {
    let dir = std::env::temp_dir().join(format!("tally-oracle-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("tally-oracle-bench: {e}");
        std::process::exit(1);
    }
    let result = (|| -> Result<Value, String> {
        let signed = signing();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let disk = runtime.block_on(gateway(dir.clone()))?;
        // The same with the store in memory (tmpfs): the gateway's own cost, without
        // the disk's fsync (which the durable-ingest row measures).
        let memory = std::path::Path::new("/dev/shm").is_dir().then(|| {
            PathBuf::from(format!(
                "/dev/shm/tally-oracle-bench-{}",
                std::process::id()
            ))
        });
        let in_memory = match &memory {
            Some(memory) => {
                std::fs::create_dir_all(memory).map_err(|e| e.to_string())?;
                let measured = runtime.block_on(gateway(memory.clone()));
                let _ = std::fs::remove_dir_all(memory);
                Some(measured?)
            }
            None => None,
        };
        println!("| oracle | measured |");
        println!("|---|---:|");
        println!("| receipts signed/s (ed25519, 1 core) | {signed:.0} |");
        let row = |store: &str, paths: &[Path; 3]| {
            let [direct, plain, full] = paths;
            println!(
                "| {store}: upstream direct p50 / p99 (ms) | {:.2} / {:.2} |",
                direct.p(0.5),
                direct.p(0.99)
            );
            println!(
                "| {store}: gateway, static key, no pre-authorization p50 / p99 (ms) | {:.2} / {:.2} |",
                plain.p(0.5),
                plain.p(0.99)
            );
            println!(
                "| {store}: gateway, job key + pre-authorization p50 / p99 (ms) | {:.2} / {:.2} |",
                full.p(0.5),
                full.p(0.99)
            );
            println!(
                "| {store}: added by the gateway (job key + pre-authorization) p50 / p99 (ms) | {:.2} / {:.2} |",
                full.p(0.5) - direct.p(0.5),
                full.p(0.99) - direct.p(0.99)
            );
            println!(
                "| {store}: added by job keys + pre-authorization alone p50 / p99 (ms) | {:.2} / {:.2} |",
                full.p(0.5) - plain.p(0.5),
                full.p(0.99) - plain.p(0.99)
            );
        };
        row("store on disk", &disk);
        if let Some(paths) = &in_memory {
            row("store in memory (tmpfs)", paths);
        }
        let summary = |paths: &[Path; 3]| {
            let [direct, plain, full] = paths;
            json!({
                "direct_p50_ms": direct.p(0.5), "direct_p99_ms": direct.p(0.99),
                "static_key_p50_ms": plain.p(0.5), "static_key_p99_ms": plain.p(0.99),
                "job_key_preauth_p50_ms": full.p(0.5), "job_key_preauth_p99_ms": full.p(0.99),
            })
        };
        let [direct, _, through] = &disk;
        let (d50, d99, g50, g99) = (
            direct.p(0.5),
            direct.p(0.99),
            through.p(0.5),
            through.p(0.99),
        );
        Ok(json!({
            "receipts_signed_per_s": signed.round(),
            "gateway_direct_p50_ms": d50,
            "gateway_direct_p99_ms": d99,
            "gateway_p50_ms": g50,
            "gateway_p99_ms": g99,
            "gateway_p50_overhead_ratio": g50 / d50,
            "gateway_p99_overhead_ratio": g99 / d99,
            "gateway_checks": "job key + pre-authorization + durable commit",
            "gateway_store_on_disk": summary(&disk),
            "gateway_store_in_memory": in_memory.as_ref().map(summary),
            "requests_per_path": REQUESTS,
        }))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(value) => {
            let path =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/results.json");
            let mut merged: Value = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_else(|| json!({}));
            if let (Some(target), Some(source)) = (merged.as_object_mut(), value.as_object()) {
                for (k, v) in source {
                    target.insert(k.clone(), v.clone());
                }
            }
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            match std::fs::write(
                &path,
                serde_json::to_string_pretty(&merged).unwrap_or_default(),
            ) {
                Ok(()) => eprintln!("merged into target/bench/results.json"),
                Err(e) => {
                    eprintln!("tally-oracle-bench: cannot write {}: {e}", path.display());
                    std::process::exit(1);
                }
            }
        }
        Err(e) => {
            eprintln!("tally-oracle-bench: {e}");
            std::process::exit(1);
        }
    }
}
