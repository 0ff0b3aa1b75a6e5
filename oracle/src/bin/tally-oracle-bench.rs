//! Oracle benchmarks, printed and merged into target/bench/results.json (by
//! `scripts/bench`): receipts signed/s (ed25519 over the receipt message), and the
//! gateway's added latency — p50/p99 of requests through the gateway against the
//! same requests sent straight to the same upstream, in one run (at concurrency 1:
//! each record's group commit is a group of one, never waiting for others). Durable
//! ingest, settlement rounds at scale and settlement throughput are in
//! `oracle/benches/scale.rs`.
// Statistics over timings: float conversions of counts and ranks are intended.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{json, Value};
use tally_oracle::gateway::{Gateway, GatewayConfig};
use tally_oracle::sim_worker::SimWorker;

const SIGNATURES: u64 = 20_000;
const REQUESTS: usize = 400;

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

async fn latencies(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
) -> Result<Vec<f64>, String> {
    let body = r#"{"model":"llama-3-8b","messages":[{"role":"user","content":"how much does a token cost"}],"max_tokens":32}"#;
    let mut out = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let mut request = client.post(format!("{url}/v1/chat/completions")).body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let started = Instant::now();
        let response = request.send().await.map_err(|e| e.to_string())?;
        response.bytes().await.map_err(|e| e.to_string())?;
        out.push(started.elapsed().as_secs_f64() * 1_000.0);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

async fn gateway(dir: PathBuf) -> Result<(Vec<f64>, Vec<f64>), String> {
    let worker = Arc::new(SimWorker::default());
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let upstream_url = format!(
        "http://{}",
        upstream.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(Arc::clone(&worker).serve(upstream));
    let gateway = Gateway::new(GatewayConfig {
        upstream: upstream_url.clone(),
        api_keys: HashMap::from([("bench".to_string(), "job-bench".to_string())]),
        store_path: dir.join("gateway.db"),
        clock: tally_oracle::clock::ChainClock::new(),
    })
    .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let gateway_url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(gateway.serve(listener));
    let client = reqwest::Client::new();
    // Warm both paths, then alternate so load and caches affect both alike.
    latencies(&client, &upstream_url, None).await?;
    latencies(&client, &gateway_url, Some("bench")).await?;
    let direct = latencies(&client, &upstream_url, None).await?;
    let through = latencies(&client, &gateway_url, Some("bench")).await?;
    Ok((direct, through))
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
        let (direct, through) = runtime.block_on(gateway(dir.clone()))?;
        let (d50, d99, g50, g99) = (
            percentile(&direct, 0.5),
            percentile(&direct, 0.99),
            percentile(&through, 0.5),
            percentile(&through, 0.99),
        );
        println!("| oracle | measured |");
        println!("|---|---:|");
        println!("| receipts signed/s (ed25519, 1 core) | {signed:.0} |");
        println!("| upstream direct p50 / p99 (ms) | {d50:.2} / {d99:.2} |");
        println!("| through the gateway p50 / p99 (ms) | {g50:.2} / {g99:.2} |");
        println!(
            "| gateway overhead ratio p50 / p99 | {:.2} / {:.2} |",
            g50 / d50,
            g99 / d99
        );
        Ok(json!({
            "receipts_signed_per_s": signed.round(),
            "gateway_direct_p50_ms": d50,
            "gateway_direct_p99_ms": d99,
            "gateway_p50_ms": g50,
            "gateway_p99_ms": g99,
            "gateway_p50_overhead_ratio": g50 / d50,
            "gateway_p99_overhead_ratio": g99 / d99,
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
