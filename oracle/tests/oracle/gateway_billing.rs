//! The gateway as billing software, attacked: each test is named after what it stops.
//! The real daemon (gateway, node reports, batcher) over loopback HTTP, in front of a
//! real HTTP upstream that behaves like vLLM (it echoes `request_id` into its answer's
//! id and reads `stream: 1` as true) or like llama-cpp-python (no usage chunk in
//! streams), the SBF program in LiteSVM, a real SQLite store.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchor_lang::prelude::Pubkey;
use ed25519_dalek::SigningKey;
use serde_json::Value;
use solana_keypair::Keypair;
use tally_client::chain::{Chain, EmbeddedChain};
use tally_client::job_key::{JobKey, JobKeyClaims};
use tally_client::{ix, ops, OpenJobArgs, OperatorArgs};
use tally_oracle::daemon::Daemon;
use tally_oracle::invoice::Invoice;
use tally_oracle::node_report::{JobDirectory, JobSigners, NodeRecord};
use tally_oracle::sim_worker::{SimConfig, SimFlavor, SimWorker};
use tally_oracle::store::{Store, UsageRecord};
use tally_oracle::{telemetry, OracleError};
use tally_tests::solana_signer::Signer;
use tally_tests::{expect_ok, ClientHandle, JobHandle, JobSpec, OperatorHandle, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::daemon::{get, give_back, lend, post};

/// A chat request costing at most `max_tokens` completion tokens.
fn chat(max_tokens: u64, stream: bool) -> String {
    format!(
        r#"{{"model":"llama-3-8b","messages":[{{"role":"user","content":"how much does a metered token cost"}}],"max_tokens":{max_tokens},"stream":{stream}}}"#
    )
}

/// The world, the daemon holding its chain, and a vLLM-like upstream.
struct Served {
    world: World,
    operator: OperatorHandle,
    client: ClientHandle,
    jobs: Vec<JobHandle>,
    node: SigningKey,
    dir: std::path::PathBuf,
    chain: Arc<Mutex<EmbeddedChain>>,
    daemon: Option<Daemon>,
    worker: Arc<SimWorker>,
    upstream: String,
    gateway: String,
    reports: Option<String>,
    admin: String,
    http: reqwest::Client,
}

#[derive(Default)]
struct Options<'a> {
    sim: SimConfig,
    /// More lines of the `[gateway]` section.
    gateway: &'a str,
    /// A static API key the operator issues for one of the jobs (by index).
    static_key: Option<(&'a str, usize)>,
    node_reports: bool,
    /// Looks jobs up through this directory instead of the chain's own.
    directory: Option<Arc<dyn JobDirectory>>,
    /// The `[batch]` section, when not the default (rounds every 0.2 s).
    batch: Option<&'a str>,
}

async fn serve(name: &str, specs: &[JobSpec], options: Options<'_>) -> Served {
    let super::Setup {
        mut world,
        operator,
        client,
        jobs,
        dir,
    } = super::setup_with(name, specs);
    let node = SigningKey::from_bytes(&[7; 32]);
    expect_ok(world.send(
        &[ix::update_operator(
            operator.authority.pubkey(),
            OperatorArgs {
                payout_owner: operator.payout_owner,
                node_keys: vec![Pubkey::from(node.verifying_key().to_bytes())],
            },
        )],
        &[&operator.authority],
    ));
    let worker = Arc::new(SimWorker::with(options.sim));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(Arc::clone(&worker).serve(listener));
    let oracle = world.oracles[0].insecure_clone();
    let chain = lend(&mut world);
    let api_keys = options.static_key.map_or_else(String::new, |(key, job)| {
        format!("api_keys = {{ \"{key}\" = \"{}\" }}", jobs[job].address)
    });
    let reports = if options.node_reports {
        "[node_reports]\nlisten = \"127.0.0.1:0\""
    } else {
        ""
    };
    let config = super::daemon::config_with_batch(
        &dir,
        options
            .batch
            .unwrap_or("interval_secs = 0.2\nmax_records = 25"),
        &format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\noperator = \"{}\"\nview_refresh_secs = 0.05\n{api_keys}\n{}\n{reports}",
            operator.authority.pubkey(),
            options.gateway,
        ),
    );
    let daemon = match options.directory {
        Some(directory) => {
            Daemon::start_with_directory(&config, Arc::clone(&chain), directory, oracle).await
        }
        None => Daemon::start(&config, Arc::clone(&chain), oracle).await,
    }
    .unwrap();
    Served {
        gateway: format!("http://{}", daemon.gateway.unwrap()),
        reports: daemon
            .node_reports
            .map(|a| format!("http://{a}/v1/reports")),
        admin: format!("http://{}", daemon.admin),
        daemon: Some(daemon),
        world,
        operator,
        client,
        jobs,
        node,
        dir,
        chain,
        worker,
        upstream,
        http: reqwest::Client::new(),
    }
}

struct Answer {
    status: u16,
    text: String,
    request_id: Option<String>,
}

impl Served {
    fn job(&self, i: usize) -> Pubkey {
        self.jobs[i].address
    }

    fn chain_now(&self) -> i64 {
        self.chain.lock().unwrap().clock().unwrap().unix_timestamp
    }

    fn on_chain(&self, job: &Pubkey) -> tally::state::Job {
        ops::job(&*self.chain.lock().unwrap(), job).unwrap()
    }

    /// Claims for `job` as its client would sign them: valid for an hour.
    fn claims(&self, job: &Pubkey) -> JobKeyClaims {
        JobKeyClaims {
            job: *job,
            job_nonce: self.on_chain(job).nonce,
            expires_at: self.chain_now() + 3_600,
            spend_limit: None,
        }
    }

    /// A job key signed by the jobs' client.
    fn key(&self, job: &Pubkey) -> String {
        self.claims(job).sign(&self.client.wallet).encode()
    }

    async fn send(&self, path: &str, key: Option<&str>, body: &str) -> Answer {
        let mut request = self
            .http
            .post(format!("{}{path}", self.gateway))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-tally-request-id")
            .map(|v| v.to_str().unwrap().to_string());
        Answer {
            status,
            text: response.text().await.unwrap(),
            request_id,
        }
    }

    async fn chat(&self, key: &str, body: &str) -> Answer {
        self.send("/v1/chat/completions", Some(key), body).await
    }

    fn records(&self, job: &Pubkey) -> Vec<UsageRecord> {
        Store::open(&self.dir.join("oracle.db"))
            .unwrap()
            .records_after(&job.to_string(), 0)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    fn metric(&self, name: &str, labels: &str) -> f64 {
        self.daemon.as_ref().unwrap().telemetry.get(name, labels)
    }

    fn refused(&self, reason: &str) -> f64 {
        self.metric(telemetry::GATEWAY_REFUSED, &format!("reason=\"{reason}\""))
    }

    fn served_by_worker(&self) -> usize {
        self.worker.log.lock().unwrap().requests.len()
    }

    /// Stops the daemon (what SIGTERM does) and takes the chain back.
    async fn stop(&mut self) {
        self.daemon.take().unwrap().stop().await.unwrap();
        self.take_chain_back().await;
    }

    /// Takes the chain back from a daemon that stopped.
    async fn take_chain_back(&mut self) {
        let chain = std::mem::replace(
            &mut self.chain,
            Arc::new(Mutex::new(
                EmbeddedChain::new(
                    &EmbeddedChain::default_program_path(),
                    &Pubkey::new_unique(),
                )
                .unwrap(),
            )),
        );
        give_back(&mut self.world, chain).await;
    }

    fn units(records: &[UsageRecord]) -> u64 {
        records
            .iter()
            .map(|r| r.prompt_tokens + r.completion_tokens)
            .sum()
    }
}

/// A node report of request `id` (11 prompt and 22 completion tokens of `model`) for
/// `job`, finished `now`, signed by `node`, as the worker posts it.
fn signed_report(node: &SigningKey, job: &Pubkey, id: &str, model: &str, now: i64) -> String {
    serde_json::to_string(
        &NodeRecord {
            job: job.to_string(),
            request_id: id.into(),
            model: model.into(),
            prompt_tokens: 11,
            completion_tokens: 22,
            gpu_ms: 100,
            started_at: now - 1,
            finished_at: now,
        }
        .sign(node)
        .unwrap(),
    )
    .unwrap()
}

fn assert_refused(answer: &Answer, status: u16, says: &str) {
    assert_eq!(answer.status, status, "{}", answer.text);
    assert!(
        answer.text.contains(says),
        "`{says}` not in {}",
        answer.text
    );
    let error: Value = serde_json::from_str(&answer.text).unwrap();
    assert_eq!(error["error"]["code"], status, "OpenAI's error shape");
    assert!(error["error"]["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_key_signed_by_the_client_spends_its_new_job_with_no_config_edit_or_restart() {
    let mut s = serve("billing-job-key", &[JobSpec::default()], Options::default()).await;
    // A job opened while the daemon runs, and a key for it from `tally job key`.
    let job: Pubkey = {
        let mut chain = s.chain.lock().unwrap();
        let now = chain.clock().unwrap().unix_timestamp;
        ops::open_job(
            &mut *chain,
            &s.client.wallet,
            &s.operator.authority.pubkey(),
            &s.world.mint.mint,
            OpenJobArgs {
                job_id: 77,
                unit_kind: 0,
                input_price: 10 * tally_client::PRICE_SCALE,
                output_price: 10 * tally_client::PRICE_SCALE,
                model: [0; 32],
                max_units: 10_000,
                deadline: now + 86_400,
                spend_cap_per_hour: 0,
            },
        )
        .unwrap()
        .address
    };
    // (The world's solvency check counts every job.)
    s.world.jobs.push(JobHandle {
        address: job,
        job_id: 77,
        client: s.client.wallet.pubkey(),
        client_tokens: s.client.tokens,
        mint: s.world.mint,
    });
    // A key as `tally job key JOB --expires-in 1h --limit 50000` makes it (the
    // command itself: the cli crate's tests).
    let made = ops::job_key(
        &*s.chain.lock().unwrap(),
        &s.client.wallet,
        &job,
        3_600,
        Some(50_000),
    )
    .unwrap();
    let key = made.key.clone();
    assert_eq!(made.spend_limit, Some(50_000));
    // Another wallet cannot make keys for the job.
    let stranger = Keypair::new();
    let err = ops::job_key(&*s.chain.lock().unwrap(), &stranger, &job, 3_600, None).unwrap_err();
    assert!(err.to_string().contains("was opened by"), "{err}");

    let answer = s.chat(&key, &chat(9, false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let streamed = s.chat(&key, &chat(7, true)).await;
    assert_eq!(streamed.status, 200, "{}", streamed.text);
    assert!(streamed.text.ends_with("data: [DONE]\n\n"));
    let records = s.records(&job);
    assert_eq!(records.len(), 2);
    let key_id = JobKey::parse(&key).unwrap().id();
    for (record, answer) in records.iter().zip([&answer, &streamed]) {
        assert_eq!(record.key_id, key_id);
        assert_eq!(record.counted_by, "upstream");
        assert!(record.upstream_id.starts_with("chatcmpl-"), "{record:?}");
        // The record is keyed on the gateway's own UUIDv7, returned to the client.
        let id = uuid::Uuid::parse_str(&record.request_id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(
            answer.request_id.as_deref(),
            Some(record.request_id.as_str())
        );
    }
    s.stop().await;
    let state = s.world.env.job(&job);
    assert_eq!(state.settled_units, Served::units(&records));
    let invoice: Invoice = serde_json::from_slice(
        &std::fs::read(tally_oracle::invoice::export_path(
            &s.dir.join("invoices"),
            &job.to_string(),
            state.nonce,
            1,
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(invoice
        .lines
        .iter()
        .all(|l| l.key_id == key_id && l.counted_by == "upstream"));
    s.world.check_solvency();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_key_substitution_never_bill_another_job() {
    let mut s = serve(
        "billing-substitution",
        &[JobSpec::default(); 2],
        Options {
            static_key: Some(("sk-operator-issued", 0)),
            ..Options::default()
        },
    )
    .await;
    let (a, b) = (s.job(0), s.job(1));
    let key_a = s.key(&a);
    let header = |key: Option<&str>, job: &Pubkey| {
        let mut request = s
            .http
            .post(format!("{}/v1/chat/completions", s.gateway))
            .header("x-tally-job", job.to_string())
            .body(chat(5, false));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    // The header alone, or beside a key for another job (wallet-signed or static).
    for key in [None, Some(key_a.as_str()), Some("sk-operator-issued")] {
        let response = header(key, &b).await.unwrap();
        assert_eq!(response.status(), 400);
        let text = response.text().await.unwrap();
        assert!(
            text.contains("X-Tally-Job header is not accepted"),
            "{text}"
        );
    }
    // Body fields name nothing either: the key's job pays.
    let body = chat(5, false).replacen('{', &format!("{{\"job\":\"{b}\",\"user\":\"{b}\","), 1);
    assert_eq!(s.chat(&key_a, &body).await.status, 200);
    assert_eq!(
        s.chat("sk-operator-issued", &chat(4, true)).await.status,
        200
    );
    assert_eq!(s.records(&a).len(), 2);
    assert_eq!(s.records(&b), Vec::new(), "job B was never billed");
    assert_eq!(
        s.served_by_worker(),
        2,
        "refused requests never reached the server"
    );
    assert_eq!(s.refused("job_header"), 3.0);
    s.stop().await;
    assert_eq!(s.world.env.job(&b).settled_units, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_for_job_a_cannot_spend_job_b() {
    let mut s = serve(
        "billing-a-on-b",
        &[JobSpec::default(); 2],
        Options::default(),
    )
    .await;
    let (a, b) = (s.job(0), s.job(1));
    let claims_a = JobKeyClaims {
        spend_limit: Some(1_000_000),
        ..s.claims(&a)
    };
    let key_a = claims_a.sign(&s.client.wallet);
    assert_eq!(s.chat(&key_a.encode(), &chat(5, false)).await.status, 200);
    // The same signature under other terms: another job of the same client, a later
    // expiry, no limit. The first was verified a moment ago; these are not.
    let retargeted = JobKey {
        claims: JobKeyClaims {
            job: b,
            job_nonce: s.on_chain(&b).nonce,
            ..claims_a
        },
        ..key_a
    };
    let extended = JobKey {
        claims: JobKeyClaims {
            expires_at: claims_a.expires_at + 1_000_000,
            ..claims_a
        },
        ..key_a
    };
    let unlimited = JobKey {
        claims: JobKeyClaims {
            spend_limit: None,
            ..claims_a
        },
        ..key_a
    };
    for forged in [retargeted, extended, unlimited] {
        let answer = s.chat(&forged.encode(), &chat(5, false)).await;
        assert_refused(&answer, 401, "is not signed by the client of job");
    }
    // A stranger's wallet signing for job B.
    let stranger = s.claims(&b).sign(&Keypair::new());
    assert_refused(
        &s.chat(&stranger.encode(), &chat(5, false)).await,
        401,
        "only the wallet that opened the job can make its keys",
    );
    assert_eq!(s.refused("key_forged"), 4.0);
    assert_eq!(s.records(&a).len(), 1);
    assert_eq!(s.records(&b), Vec::new());
    s.stop().await;
    assert_eq!(s.world.env.job(&b).settled_units, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revoked_stale_and_malformed_keys_are_refused() {
    let mut s = serve("billing-keys", &[JobSpec::default()], Options::default()).await;
    let a = s.job(0);
    let now = s.chain_now();
    let sign = |claims: JobKeyClaims| claims.sign(&s.client.wallet).encode();
    // Expired by the chain's clock.
    let expired = sign(JobKeyClaims {
        expires_at: now - 1,
        ..s.claims(&a)
    });
    assert_refused(&s.chat(&expired, &chat(3, false)).await, 401, "expired at");
    // Made for an earlier job at this address.
    let stale = sign(JobKeyClaims {
        job_nonce: s.on_chain(&a).nonce + 1,
        ..s.claims(&a)
    });
    assert_refused(
        &s.chat(&stale, &chat(3, false)).await,
        401,
        "an earlier job",
    );
    // Damaged, unknown, absent.
    assert_refused(
        &s.chat("tally_k1_!!!", &chat(3, false)).await,
        401,
        "damaged",
    );
    assert_refused(
        &s.chat("sk-guessed", &chat(3, false)).await,
        401,
        "unknown API key",
    );
    let none = s.send("/v1/chat/completions", None, &chat(3, false)).await;
    assert_refused(&none, 401, "no API key");
    // Revoked by its holder: refused from then on; a forged key revokes nothing.
    let revoked = s.key(&a);
    assert_eq!(s.chat(&revoked, &chat(3, false)).await.status, 200);
    let forged = JobKeyClaims {
        expires_at: now + 9_999,
        ..s.claims(&a)
    }
    .sign(&Keypair::new())
    .encode();
    let answer = s.send("/tally/v1/keys/revoke", Some(&forged), "").await;
    assert_eq!(answer.status, 401, "{}", answer.text);
    let answer = s.send("/tally/v1/keys/revoke", Some(&revoked), "").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let id = JobKey::parse(&revoked).unwrap().id();
    assert!(answer.text.contains(&id), "{}", answer.text);
    assert_refused(&s.chat(&revoked, &chat(3, false)).await, 401, "was revoked");
    // The revocation is in the store, for other replicas and restarts.
    assert!(Store::open(&s.dir.join("oracle.db"))
        .unwrap()
        .revoked_keys()
        .unwrap()
        .contains(&id));
    // A key valid now expires when the chain's clock passes its expiry.
    let short = sign(JobKeyClaims {
        expires_at: now + 100,
        ..s.claims(&a)
    });
    assert_eq!(s.chat(&short, &chat(3, false)).await.status, 200);
    s.chain.lock().unwrap().set_time(now + 200);
    let mut answer = s.chat(&short, &chat(3, false)).await;
    for _ in 0..200 {
        if answer.status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        answer = s.chat(&short, &chat(3, false)).await;
    }
    assert_refused(&answer, 401, "expired at");
    for (reason, count) in [
        ("key_expired", 2.0),
        ("key_stale", 1.0),
        ("malformed_key", 1.0),
        ("unknown_key", 1.0),
        ("no_key", 1.0),
        ("key_revoked", 1.0),
    ] {
        assert!(
            s.refused(reason) >= count,
            "{reason}: {}",
            s.refused(reason)
        );
    }
    let served = s.served_by_worker() as u64;
    assert_eq!(
        s.records(&a).len() as u64,
        served,
        "only what was served is billed"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_options_null_cannot_switch_the_usage_chunk_off() {
    let mut s = serve(
        "billing-stream-options",
        &[JobSpec::default()],
        Options::default(),
    )
    .await;
    let key = s.key(&s.job(0));
    for options in [
        "null",
        r#"{"include_usage":false}"#,
        r#"{"include_usage":false,"continuous_usage_stats":true}"#,
    ] {
        let body = chat(6, true).replacen(
            "\"stream\":true",
            &format!("\"stream\":true,\"stream_options\":{options}"),
            1,
        );
        let answer = s.chat(&key, &body).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert!(answer.text.contains("\"usage\":{"), "{}", answer.text);
        assert!(answer.text.ends_with("data: [DONE]\n\n"));
    }
    let (requests, usage) = {
        let log = s.worker.log.lock().unwrap();
        (log.requests.clone(), log.usage.clone())
    };
    for (request, _) in &requests {
        assert_eq!(
            request["stream_options"]["include_usage"], true,
            "{request}"
        );
    }
    let records = s.records(&s.job(0));
    assert_eq!(
        records
            .iter()
            .map(|r| (r.prompt_tokens, r.completion_tokens))
            .collect::<Vec<_>>(),
        usage
    );
    s.stop().await;
    assert_eq!(
        s.world.env.job(&s.job(0)).settled_units,
        Served::units(&records)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_given_as_1_or_a_string_is_refused_before_the_server_streams_it_unbilled() {
    let mut s = serve(
        "billing-stream-1",
        &[JobSpec::default()],
        Options::default(),
    )
    .await;
    let key = s.key(&s.job(0));
    // The server reads these as true and streams; a gateway reading them as false
    // would expect a JSON answer with usage and find none.
    let direct = s
        .http
        .post(format!("{}/v1/chat/completions", s.upstream))
        .body(chat(4, false).replace("\"stream\":false", "\"stream\":1"))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.headers()["content-type"], "text/event-stream");
    let before = s.served_by_worker();
    for value in ["1", "\"true\"", "\"yes\"", "0", "{}"] {
        let body = chat(4, false).replace("\"stream\":false", &format!("\"stream\":{value}"));
        assert_refused(
            &s.chat(&key, &body).await,
            400,
            "`stream` must be true or false",
        );
    }
    for value in ["\"on\"", "1", "[]"] {
        let body = chat(4, true).replace(
            "\"stream\":true",
            &format!("\"stream\":true,\"stream_options\":{value}"),
        );
        assert_refused(
            &s.chat(&key, &body).await,
            400,
            "`stream_options` must be an object",
        );
    }
    assert_eq!(s.served_by_worker(), before, "nothing reached the server");
    assert_eq!(s.records(&s.job(0)), Vec::new());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constant_request_id_is_billed_once_per_request() {
    let mut s = serve(
        "billing-request-id",
        &[JobSpec::default()],
        Options::default(),
    )
    .await;
    let key = s.key(&s.job(0));
    let mut ids = Vec::new();
    for i in 0..6 {
        let body = chat(3 + i, i % 2 == 0).replacen('{', "{\"request_id\":\"same\",", 1);
        let answer = s.chat(&key, &body).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        // vLLM names its answer after the request's request_id.
        assert!(answer.text.contains("chatcmpl-same"), "{}", answer.text);
        ids.push(answer.request_id.unwrap());
    }
    let records = s.records(&s.job(0));
    assert_eq!(records.len(), 6, "every request billed");
    assert_eq!(
        records
            .iter()
            .map(|r| r.request_id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    assert!(records.iter().all(|r| r.upstream_id == "chatcmpl-same"));
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "UUIDv7s: unique and in time order");
    // The server was told the gateway's id too.
    let sent: Vec<_> = s
        .worker
        .log
        .lock()
        .unwrap()
        .requests
        .iter()
        .map(|(_, id)| id.clone().unwrap())
        .collect();
    assert_eq!(sent, ids);
    let usage: u64 = s
        .worker
        .log
        .lock()
        .unwrap()
        .usage
        .iter()
        .map(|(p, c)| p + c)
        .sum();
    s.stop().await;
    assert_eq!(s.world.env.job(&s.job(0)).settled_units, usage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_usage_in_streams_is_billed_by_its_own_tokenizer() {
    // llama-cpp-python: no usage chunk even when asked, CRLF framing; here also
    // `data:` without its space, multibyte tokens, and writes that split events and
    // characters.
    let mut s = serve(
        "billing-tokenizer",
        &[JobSpec::default()],
        Options {
            sim: SimConfig {
                flavor: SimFlavor::LlamaCppPython,
                multibyte: true,
                write_bytes: Some(7),
                data_without_space: true,
                ..SimConfig::default()
            },
            ..Options::default()
        },
    )
    .await;
    let key = s.key(&s.job(0));
    let streamed = s.chat(&key, &chat(12, true)).await;
    assert_eq!(streamed.status, 200, "{}", streamed.text);
    assert!(streamed.text.contains("né11"), "{}", streamed.text);
    assert!(streamed.text.ends_with("data: [DONE]\n\n"));
    let whole = s.chat(&key, &chat(5, false)).await;
    assert_eq!(whole.status, 200, "{}", whole.text);
    let usage = s.worker.log.lock().unwrap().usage.clone();
    let records = s.records(&s.job(0));
    assert_eq!(
        records
            .iter()
            .map(|r| (
                (r.prompt_tokens, r.completion_tokens),
                r.counted_by.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![(usage[0], "tokenizer"), (usage[1], "upstream")],
        "the stream counted by the server's tokenizer, exactly"
    );
    assert!(s.worker.log.lock().unwrap().tokenize_calls >= 2);
    assert_eq!(
        s.metric(telemetry::USAGE_MISSING, "outcome=\"tokenized\""),
        1.0
    );
    let (status, health) = get(&format!("{}/health", s.admin)).await;
    assert_eq!(
        status, 200,
        "billed answers do not degrade health: {health}"
    );
    s.stop().await;
    assert_eq!(
        s.world.env.job(&s.job(0)).settled_units,
        Served::units(&records)
    );
    let invoice: Invoice = serde_json::from_slice(
        &std::fs::read(tally_oracle::invoice::export_path(
            &s.dir.join("invoices"),
            &s.job(0).to_string(),
            s.world.env.job(&s.job(0)).nonce,
            1,
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(invoice.lines[0].counted_by, "tokenizer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_reports_no_usage_is_never_served_silently_unbilled() {
    let mut s = serve(
        "billing-no-usage",
        &[JobSpec::default()],
        Options {
            sim: SimConfig {
                omit_usage: true,
                ..SimConfig::default()
            },
            gateway: "tokenize = \"off\"",
            ..Options::default()
        },
    )
    .await;
    let key = s.key(&s.job(0));
    // Not streamed: withheld.
    let whole = s.chat(&key, &chat(5, false)).await;
    assert_refused(&whole, 502, "not delivered");
    // Streamed: what already went out cannot be taken back, but it ends in an error,
    // without [DONE], and is counted.
    let streamed = s.chat(&key, &chat(5, true)).await;
    assert_eq!(streamed.status, 200);
    assert!(streamed.text.contains("tok4"), "{}", streamed.text);
    assert!(!streamed.text.contains("[DONE]"), "{}", streamed.text);
    assert!(
        streamed.text.contains("could not be metered"),
        "{}",
        streamed.text
    );
    assert_eq!(
        s.metric(telemetry::USAGE_MISSING, "outcome=\"withheld\""),
        1.0
    );
    assert_eq!(
        s.metric(telemetry::USAGE_MISSING, "outcome=\"unbilled\""),
        1.0
    );
    let (status, health) = get(&format!("{}/health", s.admin)).await;
    assert_eq!(status, 503, "{health}");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["unmetered"]["answers"]["unbilled"], 1.0);
    assert_eq!(health["unmetered"]["recent"].as_array().unwrap().len(), 2);
    let (_, metrics) = get(&format!("{}/metrics", s.admin)).await;
    assert!(
        metrics.contains("tally_oracle_usage_missing_total{outcome=\"withheld\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(s.records(&s.job(0)), Vec::new());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_job_is_refused() {
    let mut s = serve("billing-closed", &[JobSpec::default()], Options::default()).await;
    let a = s.job(0);
    let key = s.key(&a);
    // The gateway has read the job (a request it refused for its size) …
    let too_big = chat(10_000_000, false);
    assert_refused(&s.chat(&key, &too_big).await, 402, "cannot pay");
    // … then its client cancels it (no usage yet: a full refund).
    ops::cancel_job(&mut *s.chain.lock().unwrap(), &s.client.wallet, &a).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = s.chat(&key, &chat(5, false)).await;
    assert_refused(&answer, 402, "does not exist");
    assert_eq!(s.served_by_worker(), 0);
    assert_eq!(s.refused("job_closed"), 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_escrow_gets_402_and_a_burst_cannot_overspend_it() {
    // Escrow 4,000 (400 units at 10). A request reserves (body bytes + max_tokens) ×
    // price = about 2,500 and uses (6 prompt + 100 completion) × 10 = 1,060.
    let small = JobSpec {
        max_units: 400,
        ..JobSpec::default()
    };
    let capped = JobSpec {
        spend_cap_per_hour: 1_000,
        ..JobSpec::default()
    };
    let mut s = serve(
        "billing-escrow",
        &[small, small, capped],
        Options::default(),
    )
    .await;
    let (a, burst, slow) = (s.job(0), s.job(1), s.job(2));
    let key = s.key(&a);
    let body = chat(100, false);
    assert_eq!(s.chat(&key, &body).await.status, 200);
    assert_eq!(s.chat(&key, &body).await.status, 200);
    let answer = s.chat(&key, &body).await;
    assert_refused(&answer, 402, &format!("tally job top-up {a}"));
    let error: Value = serde_json::from_str(&answer.text).unwrap();
    assert_eq!(error["error"]["type"], "insufficient_quota");
    assert!(
        answer.text.contains("metered and not yet settled"),
        "{}",
        answer.text
    );
    assert_eq!(s.records(&a).len(), 2);
    // A top-up is seen on the next request.
    ops::top_up(&mut *s.chain.lock().unwrap(), &s.client.wallet, &a, 10_000).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.chat(&key, &body).await.status, 200);

    // Twelve at once on a fresh job: reservations admit only what the escrow covers.
    let key = s.key(&burst);
    let bodies: Vec<String> = (0..12).map(|i| chat(100, i % 2 == 0)).collect();
    let answers = futures_util::future::join_all(bodies.iter().map(|b| s.chat(&key, b))).await;
    let served = answers.iter().filter(|a| a.status == 200).count();
    assert!(served >= 1, "the escrow pays for one");
    for answer in answers.iter().filter(|a| a.status != 200) {
        assert_refused(answer, 402, "tally job top-up");
    }
    let metered = Served::units(&s.records(&burst));
    assert!(
        metered * 10 <= 4_000,
        "{metered} units metered on a 400-unit escrow"
    );

    // The job's spend cap allows 1,000 in its first hour: 429 with when to retry.
    let response = s
        .http
        .post(format!("{}/v1/chat/completions", s.gateway))
        .bearer_auth(s.key(&slow))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert!(response.text().await.unwrap().contains("spend cap"));
    s.stop().await;
    for job in [a, burst] {
        let state = s.world.env.job(&job);
        assert!(state.settled_gross <= state.deposited);
    }
    assert_eq!(
        s.world.env.job(&burst).settled_units,
        metered,
        "everything served was paid"
    );
    s.world.check_solvency();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_spends_no_more_than_its_limit() {
    let mut s = serve(
        "billing-key-limit",
        &[JobSpec::default()],
        Options::default(),
    )
    .await;
    let a = s.job(0);
    let limited = JobKeyClaims {
        spend_limit: Some(3_000),
        ..s.claims(&a)
    }
    .sign(&s.client.wallet)
    .encode();
    let body = chat(100, false);
    assert_eq!(s.chat(&limited, &body).await.status, 200);
    assert_refused(
        &s.chat(&limited, &body).await,
        402,
        "this job key may spend 3000",
    );
    // The job itself can pay: another key of the same client still spends it.
    assert_eq!(s.chat(&s.key(&a), &body).await.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_flight_at_sigterm_is_finished_and_billed() {
    let mut s = serve(
        "billing-sigterm",
        &[JobSpec::default()],
        Options {
            sim: SimConfig {
                event_delay: Duration::from_millis(40),
                ..SimConfig::default()
            },
            ..Options::default()
        },
    )
    .await;
    let a = s.job(0);
    let response = s
        .http
        .post(format!("{}/v1/chat/completions", s.gateway))
        .bearer_auth(s.key(&a))
        .body(chat(40, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = futures_util::StreamExt::next(&mut body)
        .await
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    // SIGTERM: the daemon's signal handler fires this.
    let daemon = s.daemon.take().unwrap();
    daemon.stopper().send(true).unwrap();
    let mut rest = first.to_vec();
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(rest).unwrap();
    assert!(text.contains("tok39"), "the whole answer");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    daemon.wait().await.unwrap();
    s.take_chain_back().await;
    let usage = s.worker.log.lock().unwrap().usage[0];
    assert_eq!(
        s.world.env.job(&a).settled_units,
        usage.0 + usage.1,
        "billed and settled before the daemon exited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_is_still_billed_for_the_work() {
    let mut s = serve(
        "billing-client-leaves",
        &[JobSpec::default()],
        Options {
            sim: SimConfig {
                event_delay: Duration::from_millis(20),
                ..SimConfig::default()
            },
            ..Options::default()
        },
    )
    .await;
    let a = s.job(0);
    let response = s
        .http
        .post(format!("{}/v1/chat/completions", s.gateway))
        .bearer_auth(s.key(&a))
        .body(chat(30, true))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    futures_util::StreamExt::next(&mut body)
        .await
        .unwrap()
        .unwrap();
    drop(body);
    for _ in 0..300 {
        if !s.records(&a).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let records = s.records(&a);
    assert_eq!(records.len(), 1, "the server's work was billed");
    assert_eq!(records[0].completion_tokens, 30);
    s.stop().await;
}

/// Writes all of `request`, then reads the answer, as a client that does not read
/// while it sends.
async fn send_then_read(address: &str, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let sent = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(sent.is_ok(), "sending: {sent:?}; read {read:?}: {answer}");
    answer
}

/// Writes `head` then the rest of a request one byte every `pause`; returns what the
/// server answered before it closed the connection.
async fn trickle(address: &str, head: &str, rest: &[u8], pause: Duration) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for byte in rest {
        tokio::time::sleep(pause).await;
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_oversized_bodies_are_refused_and_the_daemon_keeps_serving() {
    let mut s = serve(
        "billing-listeners",
        &[JobSpec::default()],
        Options {
            gateway:
                "header_read_timeout_secs = 0.5\nbody_read_timeout_secs = 1\nmax_body_bytes = 4096",
            ..Options::default()
        },
    )
    .await;
    let key = s.key(&s.job(0));
    let address = s.gateway.trim_start_matches("http://").to_string();
    // Slowloris: twenty connections sending their heads a byte every 100 ms.
    let slow_head = format!("X-Slow: {}\r\n\r\n", "z".repeat(40));
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let (address, rest) = (address.clone(), slow_head.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let answer = trickle(
                    &address,
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n",
                    rest.as_bytes(),
                    Duration::from_millis(100),
                )
                .await;
                (started.elapsed(), answer)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Meanwhile, paying callers are served.
    let started = std::time::Instant::now();
    assert_eq!(s.chat(&key, &chat(3, false)).await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(400));
    for task in slow {
        let (took, answer) = task.await.unwrap();
        assert!(
            took < Duration::from_secs(3),
            "a slow head held its connection {took:?}"
        );
        assert!(!answer.contains("200 OK"), "{answer}");
    }
    // A body dribbled slower than the body timeout: 408.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    );
    let answer = trickle(&address, &head, &[b' '; 40], Duration::from_millis(50)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Oversized: announced (refused before it is read: only the head is sent, and the
    // answer comes without waiting for the body), or chunked past the limit.
    let big = format!("{{\"model\":\"m\",\"prompt\":\"{}\"}}", "x".repeat(10_000));
    let announced = |authorization: &str| {
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: gateway\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
    };
    let answer = trickle(
        &address,
        &announced(&format!("Authorization: Bearer {key}\r\n")),
        &[],
        Duration::ZERO,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than 4096 bytes"), "{answer}");
    // A client that waits for `100 Continue` is told 413 instead, and sends nothing.
    let answer = trickle(
        &address,
        &announced(&format!(
            "Authorization: Bearer {key}\r\nExpect: 100-continue\r\n"
        )),
        &[],
        Duration::ZERO,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let chunked = s
        .http
        .post(format!("{}/v1/completions", s.gateway))
        .bearer_auth(&key)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            big.clone()
                .into_bytes()
                .chunks(1_000)
                .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                .collect::<Vec<_>>(),
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), 413);
    // A client that sends all of a large body before it reads (as `openai` and
    // `reqwest` do) reads the 413 and why, not a reset connection: the server reads
    // the rest and throws it away.
    let huge = format!(
        "{{\"model\":\"m\",\"prompt\":\"{}\"}}",
        "x".repeat(16 << 20)
    );
    for announce in [true, false] {
        let body = if announce {
            reqwest::Body::from(huge.clone())
        } else {
            reqwest::Body::wrap_stream(futures_util::stream::iter(
                huge.clone()
                    .into_bytes()
                    .chunks(64 << 10)
                    .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                    .collect::<Vec<_>>(),
            ))
        };
        let refused = s
            .http
            .post(format!("{}/v1/completions", s.gateway))
            .bearer_auth(&key)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("announced {announce}: {e:?}"));
        assert_eq!(refused.status(), 413, "announced {announce}");
        let why = refused.text().await.unwrap();
        assert!(why.contains("larger than 4096 bytes"), "{why}");
    }
    // Without a key, no body is read at all: 401 at once (a server waiting for the
    // body would answer 408 after the body timeout).
    let answer = trickle(&address, &announced(""), &[], Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // ... and one that sends all of a large body before it reads (as Python's `openai`
    // does) reads the 401 and why, not a reset connection.
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        huge.len()
    );
    let why = send_then_read(&address, &[head.as_bytes(), huge.as_bytes()].concat()).await;
    assert!(why.starts_with("HTTP/1.1 401"), "{why}");
    assert!(why.contains("\"code\":401"), "{why}");
    // And the daemon keeps serving.
    assert_eq!(s.chat(&key, &chat(3, true)).await.status, 200);
    assert_eq!(s.records(&s.job(0)).len(), 2);
    assert_eq!(s.refused("body_too_large"), 5.0);
    assert_eq!(s.refused("body_too_slow"), 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_meter_per_job_the_first_source_owns_it_and_the_other_is_refused() {
    let mut s = serve(
        "billing-one-meter",
        &[JobSpec::default(); 2],
        Options {
            node_reports: true,
            ..Options::default()
        },
    )
    .await;
    let (a, b) = (s.job(0), s.job(1));
    let reports = s.reports.clone().unwrap();
    let now = s.chain_now();
    let report = |job: &Pubkey, id: &str| signed_report(&s.node, job, id, "llama-3-8b", now);
    // Job A: the gateway records it first; the worker's report of it is refused.
    assert_eq!(s.chat(&s.key(&a), &chat(5, false)).await.status, 200);
    let (status, text) = post(&reports, &report(&a, "r-1")).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("metered by gateway"), "{text}");
    // Job B: a node report first; the gateway then refuses its requests.
    let (status, text) = post(&reports, &report(&b, "r-2")).await;
    assert_eq!(status, 201, "{text}");
    let answer = s.chat(&s.key(&b), &chat(5, false)).await;
    assert_refused(&answer, 409, "metered by node-report");
    assert_eq!(
        s.metric(
            telemetry::RECORDS_REJECTED,
            "source=\"node-report\",reason=\"metered_elsewhere\""
        ),
        1.0
    );
    assert_eq!(s.refused("metered_elsewhere"), 1.0);
    let gateway_units = Served::units(&s.records(&a));
    s.stop().await;
    assert_eq!(s.world.env.job(&a).settled_units, gateway_units);
    assert_eq!(s.world.env.job(&b).settled_units, 33);
}

/// The chain, counting what is asked of it.
struct Counting {
    chain: Arc<Mutex<EmbeddedChain>>,
    lookups: std::sync::atomic::AtomicU64,
}

impl JobDirectory for Counting {
    fn job(&self, job: &Pubkey) -> Result<Option<tally::state::Job>, OracleError> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.chain.job(job)
    }

    fn signers(&self, job: &Pubkey) -> Result<Option<JobSigners>, OracleError> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.chain.signers(job)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reports_signed_by_random_keys_cost_one_chain_lookup_per_window() {
    // The directory is built on the chain the daemon will hold.
    let super::Setup {
        mut world, jobs, ..
    } = super::setup("billing-negative", 1);
    let chain = lend(&mut world);
    let counting = Arc::new(Counting {
        chain: Arc::clone(&chain),
        lookups: std::sync::atomic::AtomicU64::new(0),
    });
    let dir = super::temp_dir("billing-negative-daemon");
    let config = super::daemon::config(&dir, "[node_reports]\nlisten = \"127.0.0.1:0\"");
    let daemon = Daemon::start_with_directory(
        &config,
        Arc::clone(&chain),
        Arc::clone(&counting) as Arc<dyn JobDirectory>,
        world.oracles[0].insecure_clone(),
    )
    .await
    .unwrap();
    let url = format!("http://{}/v1/reports", daemon.node_reports.unwrap());
    let now = chain.lock().unwrap().clock().unwrap().unix_timestamp;
    let signed = |job: Pubkey, i: u64, key: &SigningKey| {
        serde_json::to_string(
            &NodeRecord {
                job: job.to_string(),
                request_id: format!("r-{i}"),
                model: "m".into(),
                prompt_tokens: 1,
                completion_tokens: 1,
                gpu_ms: 1,
                started_at: now - 1,
                finished_at: now,
            }
            .sign(key)
            .unwrap(),
        )
        .unwrap()
    };
    let lookups = || counting.lookups.load(std::sync::atomic::Ordering::SeqCst);
    // Thirty random keys for a real job: one lookup, then refusals from the cache.
    for i in 0..30 {
        let key = SigningKey::from_bytes(&Keypair::new().to_bytes()[..32].try_into().unwrap());
        let (status, text) = post(&url, &signed(jobs[0].address, i, &key)).await;
        assert_eq!(status, 403, "{text}");
    }
    assert_eq!(lookups(), 1, "refusals of unknown keys are cached");
    // Random jobs: looked up within a budget, then 503 until it refills.
    let mut busy = 0;
    for i in 0..150 {
        let key = SigningKey::from_bytes(&[9; 32]);
        let (status, text) = post(&url, &signed(Pubkey::new_unique(), 100 + i, &key)).await;
        match status {
            404 => {}
            503 => {
                busy += 1;
                assert!(text.contains("retry in a second"), "{text}");
            }
            other => panic!("{other}: {text}"),
        }
    }
    assert!(busy > 0, "lookups of unseen jobs are budgeted");
    assert!(lookups() <= 1 + 100, "{} lookups", lookups());
    daemon.stop().await.unwrap();
    drop(counting);
    give_back(&mut world, chain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_do_not_leak_internal_urls() {
    let dead = super::free_port();
    let mut s = serve("billing-leak", &[JobSpec::default()], Options::default()).await;
    // Point a second daemon at a port nobody listens on.
    let config = super::daemon::config(
        &super::temp_dir("billing-leak-2"),
        &format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:{dead}/internal\"\noperator = \"{}\"",
            s.operator.authority.pubkey()
        ),
    );
    let other = Daemon::start(
        &config,
        Arc::clone(&s.chain),
        s.world.oracles[0].insecure_clone(),
    )
    .await
    .unwrap();
    let response = s
        .http
        .post(format!(
            "http://{}/v1/chat/completions",
            other.gateway.unwrap()
        ))
        .bearer_auth(s.key(&s.job(0)))
        .body(chat(3, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    assert!(text.contains("did not answer"), "{text}");
    assert!(
        !text.contains(&dead.to_string())
            && !text.contains("internal")
            && !text.contains("127.0.0.1"),
        "{text}"
    );
    other.stop().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_billed_before_its_last_byte_reaches_the_client() {
    let mut s = serve(
        "billing-last-byte",
        &[JobSpec::default()],
        Options::default(),
    )
    .await;
    let key = s.key(&s.job(0));
    for i in 0..20u64 {
        let response = s
            .http
            .post(format!("{}/v1/chat/completions", s.gateway))
            .bearer_auth(&key)
            .body(chat(3 + i % 5, true))
            .send()
            .await
            .unwrap();
        let request_id = response.headers()["x-tally-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let mut body = response.bytes_stream();
        let mut seen = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
            seen.extend_from_slice(&chunk.unwrap());
            if seen.ends_with(b"data: [DONE]\n\n") {
                // The moment [DONE] arrives, before the body ends: already billed.
                let records = s.records(&s.job(0));
                assert_eq!(records.len() as u64, i + 1, "stream {i}");
                assert_eq!(records.last().unwrap().request_id, request_id);
            }
        }
        assert!(seen.ends_with(b"data: [DONE]\n\n"));
    }
    s.stop().await;
}

/// What the client keeps of an answer: its ledger line.
fn ledger_line(answer: &Answer) -> tally_oracle::audit::LedgerLine {
    let body: Value = serde_json::from_str(&answer.text).unwrap();
    tally_oracle::audit::LedgerLine {
        request_id: answer
            .request_id
            .clone()
            .expect("every answer names its request"),
        model: body["model"].as_str().unwrap().to_string(),
        prompt_tokens: body["usage"]["prompt_tokens"].as_u64().unwrap(),
        completion_tokens: body["usage"]["completion_tokens"].as_u64().unwrap(),
    }
}

impl Served {
    async fn get_invoices(&self, path: &str, key: Option<&str>) -> Answer {
        let mut request = self.http.get(format!("{}{path}", self.gateway));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status().as_u16(),
            request_id: response
                .headers()
                .get("x-tally-request-id")
                .map(|v| v.to_str().unwrap().to_string()),
            text: response.text().await.unwrap(),
        }
    }

    /// Waits until the chain has settled `units` on `job`.
    async fn settled(&self, job: &Pubkey, units: u64) -> tally::state::Job {
        for _ in 0..300 {
            let state = self.on_chain(job);
            if state.settled_units >= units {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {job} did not settle {units} units");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_audits_its_bill_finds_inflated_lines_and_disputes_them_in_the_window() {
    // Rounds only once four records wait, so the operator has time to cook the books.
    let mut s = serve(
        "billing-audit",
        &[JobSpec::default(); 2],
        Options {
            batch: Some("interval_secs = 3600\nmax_records = 4"),
            ..Options::default()
        },
    )
    .await;
    let (a, b) = (s.job(0), s.job(1));
    ops::update_config(
        &mut *s.chain.lock().unwrap(),
        &s.world.admin,
        tally_client::UpdateConfigArgs {
            challenge_window_secs: Some(3_600),
            ..Default::default()
        },
    )
    .unwrap();
    let (key_a, key_b) = (s.key(&a), s.key(&b));
    let mut ledger_a = Vec::new();
    for max_tokens in [9, 7] {
        let answer = s.chat(&key_a, &chat(max_tokens, false)).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        ledger_a.push(ledger_line(&answer));
    }
    let answer = s.chat(&key_b, &chat(5, false)).await;
    let ledger_b = vec![ledger_line(&answer)];

    // A dishonest operator, before settlement: one answer inflated, one invented.
    let db = s.dir.join("oracle.db");
    let changed = rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE records SET completion_tokens = completion_tokens + 1000 WHERE request_id = ?1",
            [&ledger_a[0].request_id],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let invented = UsageRecord {
        job: a.to_string(),
        job_nonce: Some(s.on_chain(&a).nonce),
        request_id: uuid::Uuid::now_v7().to_string(),
        model: "llama-3-8b".into(),
        prompt_tokens: 20,
        completion_tokens: 500,
        gpu_ms: 1,
        finished_at: s.chain_now(),
        source: "gateway".into(),
        ..UsageRecord::default()
    };
    Store::open(&db).unwrap().record(&invented).unwrap();
    // The client's last request fills the batch: everything settles.
    let answer = s.chat(&key_a, &chat(3, false)).await;
    ledger_a.push(ledger_line(&answer));
    let honest: u64 = ledger_a
        .iter()
        .map(|l| l.prompt_tokens + l.completion_tokens)
        .sum();
    let state_a = s.settled(&a, honest + 1000 + 520).await;
    let state_b = s.settled(&b, 1).await;

    // The client fetches its invoices with its key: exactly what the chain hashed.
    let fetched = tally_oracle::audit::fetch(&s.http, &s.gateway, &a.to_string(), &key_a)
        .await
        .unwrap();
    assert_eq!(fetched.len() as u64, state_a.last_seq);
    let last = fetched.last().unwrap();
    assert_eq!(tally_oracle::invoice::sha256(&last.1), state_a.invoice_hash);
    let audit = tally_oracle::audit::audit(&a.to_string(), &state_a, &fetched, Some(&ledger_a));
    assert!(audit.chain_verified, "{:?}", audit.chain_problems);
    assert!(!audit.clean());
    assert_eq!(audit.matched, 2, "{audit:?}");
    let kinds: Vec<(&str, &str, i64)> = audit
        .findings
        .iter()
        .map(|f| (f.kind.as_str(), f.request_id.as_str(), f.excess_tokens))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("counted_differently", ledger_a[0].request_id.as_str(), 1000),
            ("not_received", invented.request_id.as_str(), 520),
        ]
    );
    assert_eq!(audit.excess_tokens, 1520);
    assert_eq!(audit.excess_cost, 1520 * 10);
    // The same invoices without a ledger verify against the chain; a ledger line the
    // operator dropped is reported as unbilled.
    let mut longer = ledger_a.clone();
    longer.push(tally_oracle::audit::LedgerLine {
        request_id: "never-billed".into(),
        ..ledger_a[1].clone()
    });
    let again = tally_oracle::audit::audit(&a.to_string(), &state_a, &fetched, Some(&longer));
    assert_eq!(again.unbilled, vec!["never-billed".to_string()]);
    // Altered bytes do not verify.
    let mut altered = fetched.clone();
    let text = String::from_utf8(altered[0].1.clone()).unwrap();
    altered[0].1 = text
        .replacen("\"prompt_tokens\":", "\"prompt_tokens\":1", 1)
        .into_bytes();
    let broken = tally_oracle::audit::audit(&a.to_string(), &state_a, &altered, None);
    assert!(!broken.chain_verified);

    // B's key reads only B's invoices: asking with it for A's is caught.
    let err = tally_oracle::audit::fetch(&s.http, &s.gateway, &a.to_string(), &key_b)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is the key for this job"), "{err}");
    // Job B's bill is clean.
    let fetched_b = tally_oracle::audit::fetch(&s.http, &s.gateway, &b.to_string(), &key_b)
        .await
        .unwrap();
    let clean = tally_oracle::audit::audit(&b.to_string(), &state_b, &fetched_b, Some(&ledger_b));
    assert!(clean.clean(), "{clean:?}");
    assert_eq!(clean.matched, 1);
    for (_, bytes) in &fetched_b {
        let invoice: Invoice = serde_json::from_slice(bytes).unwrap();
        assert_eq!(invoice.job, b.to_string());
    }

    // The client disputes within the window: the operator's share is frozen.
    let disputed = ops::dispute_job(&mut *s.chain.lock().unwrap(), &s.client.wallet, &a).unwrap();
    assert!(disputed.frozen > 0);
    assert_eq!(s.on_chain(&a).disputed_amount, disputed.frozen);
    let err = ops::dispute_job(&mut *s.chain.lock().unwrap(), &s.client.wallet, &a).unwrap_err();
    assert!(
        err.to_string().contains("already has an open dispute"),
        "{err}"
    );
    // Another wallet cannot; and once the window has passed, nothing can be.
    let err = ops::dispute_job(&mut *s.chain.lock().unwrap(), &Keypair::new(), &b).unwrap_err();
    assert!(
        err.to_string().contains("only its client can dispute it"),
        "{err}"
    );
    let matures = s
        .on_chain(&b)
        .pending
        .iter()
        .map(|p| p.matures_at)
        .max()
        .unwrap();
    s.chain.lock().unwrap().set_time(matures);
    let err = ops::dispute_job(&mut *s.chain.lock().unwrap(), &s.client.wallet, &b).unwrap_err();
    assert!(err.to_string().contains("challenge window"), "{err}");
    assert!(err.to_string().contains("has closed"), "{err}");
    s.stop().await;
    s.world.check_solvency();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_open_only_to_a_valid_key_of_their_job_and_every_answer_names_its_request() {
    let mut s = serve(
        "billing-invoice-keys",
        &[JobSpec::default(); 2],
        Options {
            static_key: Some(("sk-operator-issued", 0)),
            ..Options::default()
        },
    )
    .await;
    let (a, b) = (s.job(0), s.job(1));
    let key_a = s.key(&a);
    let answer = s.chat(&key_a, &chat(5, false)).await;
    assert_eq!(answer.status, 200);
    s.settled(&a, 1).await;
    let path = tally_oracle::gateway::INVOICES_PATH;
    let page = s.get_invoices(path, Some(&key_a)).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.request_id.is_some());
    let body: Value = serde_json::from_str(&page.text).unwrap();
    assert_eq!(body["job"], a.to_string());
    assert_eq!(body["invoices"].as_array().unwrap().len(), 1);
    assert!(body["next_after"].is_null());
    // One invoice's bytes, exactly as hashed on chain.
    let one = s.get_invoices(&format!("{path}/1"), Some(&key_a)).await;
    assert_eq!(one.status, 200);
    assert_eq!(
        tally_oracle::invoice::sha256(one.text.as_bytes()),
        s.on_chain(&a).invoice_hash
    );
    assert_eq!(
        s.get_invoices(&format!("{path}/2"), Some(&key_a))
            .await
            .status,
        404
    );

    // A key for job A under job B's terms (its signature reused), a stranger's key for
    // A, no key, a damaged key, an operator's static key: refused.
    let claims_a = s.claims(&a);
    let signed_a = claims_a.sign(&s.client.wallet);
    let retargeted = JobKey {
        claims: JobKeyClaims {
            job: b,
            job_nonce: s.on_chain(&b).nonce,
            ..claims_a
        },
        ..signed_a
    }
    .encode();
    let stranger = s.claims(&a).sign(&Keypair::new()).encode();
    for (key, status, says) in [
        (
            Some(retargeted.as_str()),
            401,
            "is not signed by the client of job",
        ),
        (
            Some(stranger.as_str()),
            401,
            "is not signed by the client of job",
        ),
        (None, 401, "no API key"),
        (Some("tally_k1_!!!"), 401, "damaged"),
        (Some("sk-guessed"), 401, "unknown API key"),
        (
            Some("sk-operator-issued"),
            403,
            "signed by the job's client",
        ),
    ] {
        let answer = s.get_invoices(path, key).await;
        assert_refused(&answer, status, says);
        assert!(
            answer.request_id.is_some(),
            "a refusal names its request too"
        );
    }
    // Revoked: refused from then on (a key of its own: the same terms are the same key).
    let revoked = JobKeyClaims {
        expires_at: claims_a.expires_at + 1,
        ..claims_a
    }
    .sign(&s.client.wallet)
    .encode();
    assert_eq!(s.get_invoices(path, Some(&revoked)).await.status, 200);
    let answer = s.send("/tally/v1/keys/revoke", Some(&revoked), "").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(answer.request_id.is_some());
    assert_refused(
        &s.get_invoices(path, Some(&revoked)).await,
        401,
        "was revoked",
    );
    // Bad paging is refused; other paths and methods are not served, and say so.
    assert_eq!(
        s.get_invoices(&format!("{path}?after=x"), Some(&key_a))
            .await
            .status,
        400
    );
    let answer = s.get_invoices("/v1/models", Some(&key_a)).await;
    assert_refused(&answer, 404, "/tally/v1/invoices");
    assert!(answer.request_id.is_some());
    let answer = s.send(path, Some(&key_a), "").await;
    assert_eq!(answer.status, 404);
    assert_eq!(s.served_by_worker(), 1, "invoices never reach the server");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_bound_to_a_model_refuses_requests_for_another_one() {
    let bound = JobSpec {
        model: tally_client::model_hash("llama-3-8b"),
        ..JobSpec::default()
    };
    let mut s = serve("billing-model", &[bound], Options::default()).await;
    let job = s.job(0);
    let key = s.key(&job);
    // Another model: refused before the server sees it, the job's model named.
    for stream in [false, true] {
        let other = chat(5, stream).replace("llama-3-8b", "gpt-4o");
        let answer = s.chat(&key, &other).await;
        assert_refused(&answer, 400, "pays for model `llama-3-8b`, not `gpt-4o`");
    }
    assert_eq!(s.served_by_worker(), 0);
    assert_eq!(s.refused("model_not_paid_for"), 2.0);
    // Its own model is served and metered under it.
    let answer = s.chat(&key, &chat(5, false)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let records = s.records(&job);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].model, "llama-3-8b");
    s.settled(&job, Served::units(&records)).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_of_a_model_the_server_swapped_in_is_metered_under_it_and_not_billed() {
    let bound = JobSpec {
        model: tally_client::model_hash("llama-3-8b"),
        ..JobSpec::default()
    };
    let mut s = serve(
        "billing-swapped-model",
        &[bound, JobSpec::default()],
        Options {
            sim: SimConfig {
                serves_model: Some("llama-3-8b-q2".into()),
                ..SimConfig::default()
            },
            ..Options::default()
        },
    )
    .await;
    let (bound, any) = (s.job(0), s.job(1));
    for job in [bound, any] {
        let key = s.key(&job);
        for stream in [false, true] {
            let answer = s.chat(&key, &chat(5, stream)).await;
            assert_eq!(answer.status, 200, "{}", answer.text);
        }
    }
    // Both are metered under the model the server says it served.
    for job in [bound, any] {
        let records = s.records(&job);
        assert_eq!(records.len(), 2);
        assert!(
            records.iter().all(|r| r.model == "llama-3-8b-q2"),
            "{records:?}"
        );
    }
    // The unbound job pays for it; the bound one does not, and the operator hears why.
    let paid = Served::units(&s.records(&any));
    s.settled(&any, paid).await;
    let unpaid = f64::from(u32::try_from(Served::units(&s.records(&bound))).unwrap());
    for _ in 0..100 {
        if s.metric(telemetry::UNBILLABLE_UNITS, "reason=\"wrong_model\"") >= unpaid {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.metric(telemetry::UNBILLABLE_UNITS, "reason=\"wrong_model\""),
        unpaid
    );
    s.stop().await;
    let state = s.world.env.job(&bound);
    assert_eq!((state.settled_units, state.settled_gross), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_report_for_another_model_than_the_job_pays_for_is_refused() {
    let bound = JobSpec {
        model: tally_client::model_hash("llama-3-8b"),
        ..JobSpec::default()
    };
    let mut s = serve(
        "billing-report-model",
        &[bound],
        Options {
            node_reports: true,
            ..Options::default()
        },
    )
    .await;
    let job = s.job(0);
    let reports = s.reports.clone().unwrap();
    let now = s.chain_now();
    let report = |id: &str, model: &str| signed_report(&s.node, &job, id, model, now);
    let (status, text) = post(&reports, &report("r-1", "llama-3-70b")).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not `llama-3-70b`"), "{text}");
    assert_eq!(
        s.metric(
            telemetry::RECORDS_REJECTED,
            "source=\"node-report\",reason=\"wrong_model\""
        ),
        1.0
    );
    let (status, text) = post(&reports, &report("r-2", "llama-3-8b")).await;
    assert_eq!(status, 201, "{text}");
    s.settled(&job, 33).await;
    s.stop().await;
    assert_eq!(s.world.env.job(&job).settled_units, 33);
}
