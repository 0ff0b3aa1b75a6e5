//! The gateway on its own (static keys, no chain): metering against a simulated
//! upstream into a real store.
use std::collections::HashMap;
use std::sync::Arc;

use tally_oracle::gateway::{Gateway, GatewaySettings};
use tally_oracle::sim_worker::SimWorker;
use tally_oracle::store::Store;
use tokio::net::TcpListener;

struct Running {
    gateway: String,
    worker: Arc<SimWorker>,
    store_path: std::path::PathBuf,
}

async fn start(name: &str) -> Running {
    let dir = super::temp_dir(name);
    let worker = Arc::new(SimWorker::default());
    let upstream_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", upstream_listener.local_addr().unwrap());
    tokio::spawn(Arc::clone(&worker).serve(upstream_listener));
    let store_path = dir.join("oracle.db");
    let api_keys = HashMap::from([
        ("key-a".to_string(), "JobA".to_string()),
        ("key-b".to_string(), "JobB".to_string()),
    ]);
    let gateway = Gateway::new(
        GatewaySettings::new(upstream.clone()).with_api_keys(api_keys),
        &store_path,
        tally_oracle::clock::ChainClock::new(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gateway.serve(listener));
    Running {
        gateway: address,
        worker,
        store_path,
    }
}

async fn records_of(
    path: &std::path::Path,
    job: &str,
    want: usize,
) -> Vec<tally_oracle::store::UsageRecord> {
    for _ in 0..100 {
        let records: Vec<_> = Store::open(path)
            .unwrap()
            .records_after(job, 0)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        if records.len() >= want {
            return records;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{want} records for {job} never arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_exactly_what_the_upstream_reported_and_passes_responses_through() {
    let run = start("gateway").await;
    let http = reqwest::Client::new();
    let chat = r#"{"model":"llama-3-8b","messages":[{"role":"user","content":"what is the capital of France"}],"max_tokens":7}"#;

    // Not streamed: the client gets the upstream's bytes.
    let response = http
        .post(format!("{}/v1/chat/completions", run.gateway))
        .bearer_auth("key-a")
        .body(chat)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert_eq!(
        body,
        run.worker
            .log
            .lock()
            .unwrap()
            .responses
            .last()
            .cloned()
            .unwrap(),
        "response unchanged"
    );

    // Streamed: SSE passed through chunk by chunk; the usage chunk was asked for.
    let streamed = chat.replace("\"max_tokens\":7", "\"max_tokens\":9,\"stream\":true");
    let response = http
        .post(format!("{}/v1/chat/completions", run.gateway))
        .bearer_auth("key-a")
        .body(streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let sse = response.bytes().await.unwrap();
    assert_eq!(
        sse,
        run.worker
            .log
            .lock()
            .unwrap()
            .responses
            .last()
            .cloned()
            .unwrap(),
        "stream unchanged"
    );
    assert!(String::from_utf8_lossy(&sse).ends_with("data: [DONE]\n\n"));

    // Embeddings, for another job.
    let embed = r#"{"model":"e5","input":["one two three","four five"]}"#;
    let response = http
        .post(format!("{}/v1/embeddings", run.gateway))
        .bearer_auth("key-b")
        .body(embed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let usage = run.worker.log.lock().unwrap().usage.clone();
    let a = records_of(&run.store_path, "JobA", 2).await;
    assert_eq!(
        a.iter()
            .map(|r| (r.prompt_tokens, r.completion_tokens))
            .collect::<Vec<_>>(),
        vec![usage[0], usage[1]]
    );
    assert_eq!(a[0].model, "llama-3-8b");
    let b = records_of(&run.store_path, "JobB", 1).await;
    assert_eq!((b[0].prompt_tokens, b[0].completion_tokens), (5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_and_other_paths_are_refused_and_never_metered() {
    let run = start("gateway-refuse").await;
    let http = reqwest::Client::new();
    let chat = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let response = http
        .post(format!("{}/v1/chat/completions", run.gateway))
        .bearer_auth("stolen")
        .body(chat)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let text = response.text().await.unwrap();
    assert!(text.contains("unknown API key"), "{text}");
    // A job named by a header, alone or beside a key for another job: refused.
    for key in [None, Some("key-a")] {
        let mut request = http
            .post(format!("{}/v1/chat/completions", run.gateway))
            .header("x-tally-job", "JobB")
            .body(chat);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400);
        let text = response.text().await.unwrap();
        assert!(
            text.contains("X-Tally-Job header is not accepted"),
            "{text}"
        );
    }
    let response = http
        .post(format!("{}/v1/models", run.gateway))
        .bearer_auth("key-a")
        .body(chat)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = http
        .post(format!("{}/v1/chat/completions", run.gateway))
        .bearer_auth("key-a")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        run.worker.log.lock().unwrap().responses.len(),
        0,
        "nothing reached the upstream"
    );
    assert_eq!(
        Store::open(&run.store_path)
            .unwrap()
            .record_count()
            .unwrap(),
        0
    );
}
