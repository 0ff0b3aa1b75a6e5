//! The daemon in process: its sources over real HTTP on loopback, one store file, the
//! batcher settling on the embedded chain, /metrics and /health, and a graceful stop
//! that settles everything accepted.
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchor_lang::prelude::Pubkey;
use ed25519_dalek::SigningKey;
use tally_client::chain::{Chain, EmbeddedChain};
use tally_client::{ix, OperatorArgs};
use tally_oracle::config::OracleConfig;
use tally_oracle::daemon::Daemon;
use tally_oracle::node_report::{NodeRecord, SignedReport};
use tally_oracle::sim_worker::{SimConfig, SimWorker};
use tally_oracle::telemetry;
use tally_tests::solana_signer::Signer;
use tally_tests::{expect_ok, JobHandle, OperatorHandle, World};

pub(super) struct Fixture {
    pub world: World,
    pub operator: OperatorHandle,
    pub node: SigningKey,
    pub jobs: Vec<JobHandle>,
    /// The chain's clock when the fixture was made (reports finish then).
    pub now: i64,
    pub dir: std::path::PathBuf,
}

fn node_pubkey(key: &SigningKey) -> Pubkey {
    Pubkey::from(key.verifying_key().to_bytes())
}

/// [`super::setup`]'s world, its operator having registered the node key `[7; 32]`.
pub(super) fn fixture(name: &str, jobs: usize) -> Fixture {
    fixture_with(name, &vec![tally_tests::JobSpec::default(); jobs])
}

/// [`fixture`] with jobs opened as `specs` say.
pub(super) fn fixture_with(name: &str, specs: &[tally_tests::JobSpec]) -> Fixture {
    let super::Setup {
        mut world,
        operator,
        jobs,
        dir,
        ..
    } = super::setup_with(name, specs);
    let node = SigningKey::from_bytes(&[7; 32]);
    expect_ok(world.send(
        &[ix::update_operator(
            operator.authority.pubkey(),
            OperatorArgs {
                payout_owner: operator.payout_owner,
                node_keys: vec![node_pubkey(&node)],
            },
        )],
        &[&operator.authority],
    ));
    Fixture {
        now: world.env.now(),
        world,
        operator,
        node,
        jobs,
        dir,
    }
}

/// Moves the world's chain into the daemon's hands (a fresh chain holds its place).
pub(super) fn lend(world: &mut World) -> Arc<Mutex<EmbeddedChain>> {
    let placeholder = EmbeddedChain::new(
        &EmbeddedChain::default_program_path(),
        &Pubkey::new_unique(),
    )
    .unwrap();
    Arc::new(Mutex::new(std::mem::replace(
        &mut world.env.chain,
        placeholder,
    )))
}

/// Takes the chain back once the daemon has stopped.
pub(super) async fn give_back(world: &mut World, mut chain: Arc<Mutex<EmbeddedChain>>) {
    for _ in 0..200 {
        match Arc::try_unwrap(chain) {
            Ok(mutex) => {
                world.env.chain = mutex.into_inner().unwrap();
                return;
            }
            Err(shared) => chain = shared,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the daemon still holds the chain after it stopped");
}

pub(super) fn config(dir: &Path, sections: &str) -> OracleConfig {
    config_with_batch(dir, "interval_secs = 0.2\nmax_records = 25", sections)
}

/// [`config`] with its own `[batch]` section.
pub(super) fn config_with_batch(dir: &Path, batch: &str, sections: &str) -> OracleConfig {
    OracleConfig::parse(
        &format!(
            r#"
store = "{}"
invoices_dir = "{}"
[batch]
{batch}
[admin]
listen = "127.0.0.1:0"
{sections}
"#,
            dir.join("oracle.db").display(),
            dir.join("invoices").display()
        ),
        Vec::new(),
    )
    .unwrap()
}

pub(super) fn report(f: &Fixture, job: usize, i: u64, key: &SigningKey) -> SignedReport {
    let finished_at = f.now;
    NodeRecord {
        job: f.jobs[job].address.to_string(),
        request_id: format!("node-req-{i}"),
        model: "llama-3-8b".into(),
        prompt_tokens: 10 + i % 5,
        completion_tokens: 30 + i % 9,
        gpu_ms: 200,
        started_at: finished_at - 1,
        finished_at,
    }
    .sign(key)
    .unwrap()
}

pub(super) async fn post(url: &str, body: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

pub(super) async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reports_are_checked_against_the_chain_counted_once_and_settled() {
    let mut f = fixture("daemon-reports", 2);
    let oracle = f.world.oracles[0].insecure_clone();
    let chain = lend(&mut f.world);
    let config = config(&f.dir, "[node_reports]\nlisten = \"127.0.0.1:0\"");
    let daemon = Daemon::start(&config, Arc::clone(&chain), oracle)
        .await
        .unwrap();
    let url = format!("http://{}/v1/reports", daemon.node_reports.unwrap());

    // Valid reports, to both jobs.
    let mut expected = [0u64; 2];
    for i in 0..40 {
        let job = (i % 2) as usize;
        let r = report(&f, job, i, &f.node);
        expected[job] += r.record.prompt_tokens + r.record.completion_tokens;
        let (status, body) = post(&url, &serde_json::to_string(&r).unwrap()).await;
        assert_eq!(status, 201, "{body}");
    }

    // A retry of a recorded request: 409, never counted twice.
    let again = serde_json::to_string(&report(&f, 0, 0, &f.node)).unwrap();
    let (status, body) = post(&url, &again).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already recorded"), "{body}");

    // A count changed after signing: 401.
    let mut tampered = report(&f, 0, 100, &f.node);
    tampered.record.completion_tokens += 1;
    let (status, body) = post(&url, &serde_json::to_string(&tampered).unwrap()).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("does not verify"), "{body}");

    // Signed by a key the operator never registered: 403, and how to fix it.
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let (status, body) = post(
        &url,
        &serde_json::to_string(&report(&f, 0, 101, &stranger)).unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("tally operator update --node-key"), "{body}");
    assert!(body.contains(&f.operator.address().to_string()), "{body}");

    // A job that does not exist: 404.
    let mut ghost = report(&f, 0, 102, &f.node).record;
    ghost.job = Pubkey::new_unique().to_string();
    let ghost = ghost.sign(&f.node).unwrap();
    let (status, body) = post(&url, &serde_json::to_string(&ghost).unwrap()).await;
    assert_eq!(status, 404, "{body}");

    // A node clock far ahead: 422 naming the clock.
    let mut ahead = report(&f, 0, 103, &f.node).record;
    ahead.finished_at = i64::MAX / 2;
    let ahead = ahead.sign(&f.node).unwrap();
    let (status, body) = post(&url, &serde_json::to_string(&ahead).unwrap()).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("clock"), "{body}");

    // Malformed bodies: 400 saying what is wrong.
    for (body, says) in [
        ("not json", "malformed report"),
        (r#"{"job":"x"}"#, "missing field"),
        (
            &again.replacen('{', r#"{"bonus_tokens":5,"#, 1) as &str,
            "unknown field",
        ),
        (
            &again.replacen(&f.jobs[0].address.to_string(), "not-a-key", 1) as &str,
            "not a base58 public key",
        ),
    ] {
        let (status, text) = post(&url, body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(says), "{body}: {text}");
    }
    let (status, _) = get(&url).await;
    assert_eq!(status, 405);
    let (status, _) = post(&url.replace("/v1/reports", "/v1/other"), "{}").await;
    assert_eq!(status, 404);

    // /metrics says what came in and what was refused; /health is ok.
    let admin = format!("http://{}", daemon.admin);
    let (status, metrics) = get(&format!("{admin}/metrics")).await;
    assert_eq!(status, 200);
    for line in [
        "tally_oracle_records_in_total{source=\"node-report\"} 40",
        "tally_oracle_records_duplicate_total{source=\"node-report\"} 1",
        "tally_oracle_records_rejected_total{source=\"node-report\",reason=\"bad_signature\"} 1",
        "tally_oracle_records_rejected_total{source=\"node-report\",reason=\"unknown_key\"} 1",
        "tally_oracle_records_rejected_total{source=\"node-report\",reason=\"unknown_job\"} 1",
        "tally_oracle_records_rejected_total{source=\"node-report\",reason=\"clock_skew\"} 1",
        "tally_oracle_records_rejected_total{source=\"node-report\",reason=\"malformed\"} 4",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    // Stop: what was accepted is settled before the daemon returns.
    daemon.stop().await.unwrap();
    give_back(&mut f.world, chain).await;
    for (job, units) in f.jobs.iter().zip(expected) {
        assert_eq!(f.world.env.job(&job.address).settled_units, units);
    }
    f.world.check_solvency();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_meters_settles_and_the_metrics_cross_check_catches_bypassed_usage() {
    let mut f = fixture("daemon-gateway", 1);
    let worker = Arc::new(SimWorker::default());
    let upstream_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", upstream_listener.local_addr().unwrap());
    tokio::spawn(Arc::clone(&worker).serve(upstream_listener));
    let oracle = f.world.oracles[0].insecure_clone();
    let chain = lend(&mut f.world);
    let config = config(
        &f.dir,
        &format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
upstream = "{upstream}"
api_keys = {{ "sk-client" = "{}" }}
[metrics]
url = "{upstream}/metrics"
interval_secs = 0.05
"#,
            f.jobs[0].address
        ),
    );
    let daemon = Daemon::start(&config, Arc::clone(&chain), oracle)
        .await
        .unwrap();
    // The cross-check's first scrape is its baseline.
    for _ in 0..500 {
        if daemon.telemetry.get(telemetry::SCRAPES, "") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        daemon.telemetry.get(telemetry::SCRAPES, "") >= 1.0,
        "the upstream's metrics were never scraped"
    );
    let gateway = format!("http://{}", daemon.gateway.unwrap());
    let http = reqwest::Client::new();
    for i in 0..6 {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"count these five words {i}"}}],"max_tokens":{},"stream":{}}}"#,
            4 + i,
            i % 2 == 0
        );
        let response = http
            .post(format!("{gateway}/v1/chat/completions"))
            .bearer_auth("sk-client")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    let metered_by_worker: u64 = worker
        .log
        .lock()
        .unwrap()
        .usage
        .iter()
        .map(|(p, c)| p + c)
        .sum();
    // Usage served around the gateway: the cross-check shows it as drift.
    let direct = http
        .post(format!("{upstream}/v1/completions"))
        .body(r#"{"model":"m","prompt":"one two three","max_tokens":9}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    direct.bytes().await.unwrap();
    let admin = format!("http://{}", daemon.admin);
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = get(&format!("{admin}/metrics")).await.1;
        if metrics.contains("tally_oracle_metering_drift_tokens 12\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics.contains("tally_oracle_metering_drift_tokens 12\n"),
        "3 prompt + 9 completion tokens bypassed the gateway:\n{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "tally_oracle_tokens_metered_total{{source=\"gateway\"}} {metered_by_worker}\n"
        )),
        "{metrics}"
    );
    let (status, health) = get(&format!("{admin}/health")).await;
    assert_eq!(status, 200, "{health}");

    daemon.stop().await.unwrap();
    give_back(&mut f.world, chain).await;
    // Only what went through the gateway is billed.
    assert_eq!(
        f.world.env.job(&f.jobs[0].address).settled_units,
        metered_by_worker
    );
    f.world.check_solvency();
}

/// The world's chain runs days away from this machine's clock (its genesis is a fixed
/// date): the gateway stamps records in the chain's time, so usage is billed by the
/// chain's deadline whatever day the test runs. A stream admitted before the deadline
/// that ends after it is unbillable, and shows up in /metrics and /health as such, not
/// as a silent zero; a request after the deadline is refused (402) and never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_judged_by_the_chain_clock_and_late_usage_is_reported_not_silent() {
    let mut f = fixture("daemon-clock", 1);
    // Streams take a while (a model generating); whole answers come at once.
    let worker = Arc::new(SimWorker::with(SimConfig {
        event_delay: Duration::from_millis(100),
        ..SimConfig::default()
    }));
    let upstream_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", upstream_listener.local_addr().unwrap());
    tokio::spawn(Arc::clone(&worker).serve(upstream_listener));
    let oracle = f.world.oracles[0].insecure_clone();
    let deadline = f.world.env.job(&f.jobs[0].address).deadline;
    let chain = lend(&mut f.world);
    let config = config(
        &f.dir,
        &format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\napi_keys = {{ \"sk-client\" = \"{}\" }}",
            f.jobs[0].address
        ),
    );
    let daemon = Daemon::start(&config, Arc::clone(&chain), oracle)
        .await
        .unwrap();
    let gateway = format!("http://{}/v1/completions", daemon.gateway.unwrap());
    let admin = format!("http://{}", daemon.admin);
    let http = reqwest::Client::new();
    let request = |max_tokens: u32| {
        http.post(&gateway)
            .bearer_auth("sk-client")
            .body(format!(
                r#"{{"model":"m","prompt":"one two three","max_tokens":{max_tokens}}}"#
            ))
            .send()
    };
    assert_eq!(request(5).await.unwrap().status(), 200);
    // Wait for the round that settles it.
    let settled = |chain: &Arc<Mutex<EmbeddedChain>>| {
        let chain = chain.lock().unwrap();
        tally_client::ops::job(&*chain, &f.jobs[0].address).map_or(0, |j| j.settled_units)
    };
    // (The round's telemetry — the clock offset with it — is recorded when it ends.)
    for _ in 0..500 {
        if settled(&chain) > 0 && daemon.telemetry.get(telemetry::RECEIPTS_CONFIRMED, "") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let billed = settled(&chain);
    assert!(billed > 0, "usage inside the deadline was not billed");
    // A stream admitted now ends after the deadline passes.
    let late = http
        .post(&gateway)
        .bearer_auth("sk-client")
        .body(r#"{"model":"m","prompt":"one two three","max_tokens":25,"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 200);
    let chain_now = chain.lock().unwrap().clock().unwrap().unix_timestamp;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let expected = chain_now as f64 - wall;
    // The round that settled it reports the offset as it ends.
    let mut offset = 0.0;
    for _ in 0..500 {
        offset = daemon.telemetry.get(telemetry::CLOCK_OFFSET, "");
        if (offset - expected).abs() <= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!((offset - expected).abs() <= 2.0, "{offset} vs {expected}");

    // The chain passes the deadline; the next round syncs the clock.
    chain.lock().unwrap().set_time(deadline + 10);
    for _ in 0..500 {
        #[allow(clippy::cast_precision_loss)]
        if (daemon.telemetry.get(telemetry::CLOCK_OFFSET, "") - (deadline + 10) as f64 + wall).abs()
            <= 5.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sse = late.text().await.unwrap();
    assert!(sse.ends_with("data: [DONE]\n\n"), "{sse}");
    // After the deadline nothing more is served: it could not be billed.
    let refused = request(7).await.unwrap();
    assert_eq!(refused.status(), 402);
    let text = refused.text().await.unwrap();
    assert!(text.contains("passed its deadline"), "{text}");
    let labels = "reason=\"after_deadline\"";
    for _ in 0..500 {
        if daemon.telemetry.get(telemetry::UNBILLABLE_RECORDS, labels) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, metrics) = get(&format!("{admin}/metrics")).await;
    assert!(
        metrics.contains("tally_oracle_unbillable_records_total{reason=\"after_deadline\"} 1\n"),
        "{metrics}"
    );
    let (status, health) = get(&format!("{admin}/health")).await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(
        status, 200,
        "one job's late usage does not fail the daemon: {health}"
    );
    assert_eq!(
        health["unbillable"]["records"]["after_deadline"], 1.0,
        "{health}"
    );
    let warning = health["unbillable"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("after the job's deadline"), "{warning}");
    daemon.stop().await.unwrap();
    give_back(&mut f.world, chain).await;
    // Nothing after the deadline was billed.
    assert_eq!(f.world.env.job(&f.jobs[0].address).settled_units, billed);
    f.world.check_solvency();
}

#[test]
fn config_reads_toml_then_the_environment_and_never_shows_api_keys() {
    let text = r#"
url = "devnet"
[gateway]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:8000"
api_keys = { "sk-live-123456" = "9dF2zMwvV5mCiEXKHmG38gZmPfBMTTDD3yfeYzn3W39Q" }
"#;
    let env = [
        ("TALLY_ORACLE_URL", "localhost"),
        ("TALLY_ORACLE_BATCH__INTERVAL_SECS", "2.5"),
        ("TALLY_ORACLE_BATCH__MAX_RECORDS", "64"),
        ("TALLY_ORACLE_NODE_REPORTS__LISTEN", "0.0.0.0:9000"),
        ("UNRELATED", "x"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let config = OracleConfig::parse(text, env).unwrap();
    assert_eq!(config.url.as_deref(), Some("localhost"));
    assert_eq!(config.batch.interval(), Duration::from_millis(2_500));
    assert_eq!(config.batch.max_records, 64);
    assert_eq!(config.node_reports.as_ref().unwrap().listen, "0.0.0.0:9000");
    assert_eq!(config.gateway.as_ref().unwrap().api_keys.len(), 1);
    let shown = format!("{:?}", config.redacted());
    assert!(!shown.contains("sk-live"), "{shown}");
    assert!(shown.contains("<secret 1>"), "{shown}");

    // Mistakes are named.
    let err = OracleConfig::parse("[batch]\ninterval = 3", Vec::new()).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `interval`"),
        "{err}"
    );
    let err = OracleConfig::parse("", Vec::new()).unwrap_err();
    assert!(err.to_string().contains("no source is configured"), "{err}");
    let err = OracleConfig::parse(
        "[gateway]\nlisten = \"x\"\nupstream = \"y\"\napi_keys = { \"sk-secret\" = \"nope\" }",
        Vec::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not a job address"), "{err}");
    assert!(!err.to_string().contains("sk-secret"), "{err}");

    // The gateway's limits and counting, and their mistakes.
    let config = OracleConfig::parse(
        "[gateway]\nlisten = \"x\"\nupstream = \"y\"\noperator = \"9dF2zMwvV5mCiEXKHmG38gZmPfBMTTDD3yfeYzn3W39Q\"\nmax_body_bytes = 2048\nheader_read_timeout_secs = 2\ndrain_secs = 5\ntokenize = \"/extras/tokenize\"",
        Vec::new(),
    )
    .unwrap();
    let gateway = config.gateway.unwrap();
    let limits = gateway.limits();
    assert_eq!(limits.max_body_bytes, 2048);
    assert_eq!(limits.header_read_timeout, Duration::from_secs(2));
    assert_eq!(limits.drain, Duration::from_secs(5));
    assert_eq!(
        gateway.tokenize,
        tally_oracle::gateway::tokenize::TokenizeMode::Path("/extras/tokenize".into())
    );
    assert!(gateway.operator_pda().unwrap().is_some());
    for (line, says) in [
        ("tokenize = \"sometimes\"", "gateway.tokenize"),
        ("operator = \"me\"", "gateway.operator"),
    ] {
        let err = OracleConfig::parse(
            &format!("[gateway]\nlisten = \"x\"\nupstream = \"y\"\n{line}"),
            Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
}

/// `oracle/tally-oracle.example.toml` is the reference for operators: it must parse,
/// hold every key the code reads, and show each at the code's default.
#[test]
fn the_example_config_parses_and_shows_every_key_at_its_default() {
    use tally_oracle::batcher::BatchSettings;
    use tally_oracle::daemon::AdminSettings;
    use tally_oracle::gateway::GatewaySettings;
    use tally_oracle::node_report::NodeReportSettings;
    use tally_oracle::scrape::ScrapeSettings;

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tally-oracle.example.toml");
    let config = OracleConfig::load(Some(&path)).unwrap();
    assert_eq!(
        (config.url.as_deref(), config.keypair.as_deref()),
        (None, None)
    );
    assert_eq!(config.store, "tally-oracle.db");
    assert_eq!(config.invoices_dir, Path::new("invoices"));
    assert_eq!(config.batch, BatchSettings::default());
    assert_eq!(config.batch.interval(), Duration::from_secs(10));
    assert_eq!(config.admin, AdminSettings::default());
    assert_eq!(config.admin.listen, "127.0.0.1:9464");
    let gateway = config.gateway.as_ref().unwrap();
    assert_eq!(
        *gateway,
        GatewaySettings {
            listen: "127.0.0.1:8080".into(),
            ..GatewaySettings::new("http://127.0.0.1:8000")
        }
    );
    assert_eq!(
        (gateway.operator.as_deref(), gateway.api_keys.len()),
        (None, 0)
    );
    assert_eq!(gateway.limits().max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(gateway.upstream_timeout(), Duration::from_secs(600));
    assert_eq!(
        config.node_reports,
        Some(NodeReportSettings {
            listen: "127.0.0.1:8081".into()
        })
    );
    assert_eq!(
        config.metrics,
        Some(ScrapeSettings::new("http://127.0.0.1:8000/metrics"))
    );
    assert_eq!(config.metrics.as_ref().unwrap().counters.len(), 2);

    // What the file says is what serde does with the key left out: the same config
    // from the required keys alone.
    let required = "[gateway]\nlisten = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:8000\"\n\
                    [node_reports]\nlisten = \"127.0.0.1:8081\"\n\
                    [metrics]\nurl = \"http://127.0.0.1:8000/metrics\"\n";
    assert_eq!(OracleConfig::parse(required, Vec::new()).unwrap(), config);

    // Every key the code writes out is in the file (those unset by default are shown
    // commented out), so a new setting cannot be left out of it.
    let text = std::fs::read_to_string(&path).unwrap();
    let file: toml::Table = text.parse().unwrap();
    let written: toml::Table = toml::to_string(&config).unwrap().parse().unwrap();
    for (key, value) in &written {
        assert!(file.contains_key(key), "the example lacks `{key}`");
        if let (Some(section), Some(in_file)) = (value.as_table(), file[key].as_table()) {
            for inner in section.keys() {
                assert!(
                    in_file.contains_key(inner),
                    "the example lacks `{key}.{inner}`"
                );
            }
        }
    }
    for unset in [
        "# url = ",
        "# keypair = ",
        "# operator = ",
        "# [quorum]",
        "# peers = ",
        "# term_secs = 30",
    ] {
        assert!(text.contains(unset), "the example lacks `{unset}…`");
    }
}

#[test]
fn prometheus_text_is_summed_over_labels_and_garbage_is_skipped() {
    let text = "# HELP x y\nvllm:prompt_tokens_total{model_name=\"a\"} 10.0\nvllm:prompt_tokens_total{model_name=\"b\",x=\"}\"} 5\nbad line\nvllm:generation_tokens_total 7 1700000000\nnan_metric NaN\n";
    let totals = telemetry::parse_prometheus(text);
    assert_eq!(totals.get("vllm:prompt_tokens_total"), Some(&15.0));
    assert_eq!(totals.get("vllm:generation_tokens_total"), Some(&7.0));
    assert!(!totals.contains_key("nan_metric"));
    assert!(!totals.contains_key("bad"));
}

/// A chain whose connection can be cut: while `down`, every call fails as an
/// unreachable RPC node would.
struct Cuttable {
    inner: EmbeddedChain,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Cuttable {
    fn check(&self) -> Result<(), tally_client::chain::ChainError> {
        if self.down.load(std::sync::atomic::Ordering::Acquire) {
            return Err(tally_client::chain::ChainError::Rpc {
                url: "http://rpc.example".into(),
                message: "connection refused".into(),
            });
        }
        Ok(())
    }
}

impl Chain for Cuttable {
    fn account(
        &self,
        address: &Pubkey,
    ) -> Result<Option<solana_account::Account>, tally_client::chain::ChainError> {
        self.check()?;
        self.inner.account(address)
    }
    fn program_accounts(
        &self,
        len: usize,
        filters: &[tally_client::chain::Memcmp],
    ) -> Result<Vec<(Pubkey, solana_account::Account)>, tally_client::chain::ChainError> {
        self.check()?;
        self.inner.program_accounts(len, filters)
    }
    fn clock(&self) -> Result<solana_clock::Clock, tally_client::chain::ChainError> {
        self.check()?;
        self.inner.clock()
    }
    fn latest_blockhash(&self) -> Result<solana_hash::Hash, tally_client::chain::ChainError> {
        self.check()?;
        self.inner.latest_blockhash()
    }
    fn send_transaction(
        &mut self,
        tx: solana_transaction::versioned::VersionedTransaction,
    ) -> Result<tally_client::chain::Confirmed, tally_client::chain::ChainError> {
        self.check()?;
        self.inner.send_transaction(tx)
    }
    fn lookup_table_slots(
        &mut self,
        count: usize,
    ) -> Result<Vec<u64>, tally_client::chain::ChainError> {
        self.check()?;
        self.inner.lookup_table_slots(count)
    }
    fn wait_past_slot(&mut self, slot: u64) -> Result<u64, tally_client::chain::ChainError> {
        self.check()?;
        self.inner.wait_past_slot(slot)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflects_the_daemon_not_one_job_and_any_replica_serves_invoices() {
    // Job 1 may be billed almost nothing per hour: its receipts are refused.
    let capped = tally_tests::JobSpec {
        spend_cap_per_hour: 10,
        ..tally_tests::JobSpec::default()
    };
    let mut f = fixture_with("daemon-health", &[tally_tests::JobSpec::default(), capped]);
    let oracle = f.world.oracles[0].insecure_clone();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let placeholder = EmbeddedChain::new(
        &EmbeddedChain::default_program_path(),
        &Pubkey::new_unique(),
    )
    .unwrap();
    let chain = Arc::new(Mutex::new(Cuttable {
        inner: std::mem::replace(&mut f.world.env.chain, placeholder),
        down: Arc::clone(&down),
    }));
    let mut config = config(&f.dir, "[node_reports]\nlisten = \"127.0.0.1:0\"\n");
    config.batch.max_backoff_secs = 1.0;
    let daemon = Daemon::start(&config, Arc::clone(&chain), oracle)
        .await
        .unwrap();
    let url = format!("http://{}/v1/reports", daemon.node_reports.unwrap());
    let admin = format!("http://{}", daemon.admin);
    let mut expected = 0;
    for i in 0..10 {
        let job = (i % 2) as usize;
        let r = report(&f, job, i, &f.node);
        if job == 0 {
            expected += r.record.prompt_tokens + r.record.completion_tokens;
        }
        let (status, body) = post(&url, &serde_json::to_string(&r).unwrap()).await;
        assert_eq!(status, 201, "{body}");
    }
    let settled = |chain: &Arc<Mutex<Cuttable>>| {
        let chain = chain.lock().unwrap();
        tally_client::ops::job(&chain.inner, &f.jobs[0].address).map_or(0, |j| j.settled_units)
    };
    for _ in 0..500 {
        if settled(&chain) == expected
            && daemon.telemetry.get(telemetry::RECEIPTS_FAILED, "") >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(settled(&chain), expected, "the healthy job settles");
    // One job's refused receipt: the daemon is healthy, and says which job has trouble.
    let (status, health) = get(&format!("{admin}/health")).await;
    assert_eq!(status, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["role"], "leader", "{health}");
    assert!(
        health["jobs"]["errors"]
            .to_string()
            .contains(&f.jobs[1].address.to_string()),
        "{health}"
    );

    // The invoice the healthy job was paid for is served from the store, as hashed.
    let job0 = {
        let chain = chain.lock().unwrap();
        tally_client::ops::job(&chain.inner, &f.jobs[0].address).unwrap()
    };
    let (status, bytes) = get(&format!(
        "{admin}/invoices/{}/{}/{}",
        f.jobs[0].address, job0.nonce, job0.last_seq
    ))
    .await;
    assert_eq!(status, 200, "{bytes}");
    assert_eq!(
        tally_oracle::invoice::sha256(bytes.as_bytes()),
        job0.invoice_hash
    );
    let (status, _) = get(&format!(
        "{admin}/invoices/{}/{}/99",
        f.jobs[0].address, job0.nonce
    ))
    .await;
    assert_eq!(status, 404);

    // The chain unreachable: rounds cannot run; the daemon is unhealthy and says why.
    down.store(true, std::sync::atomic::Ordering::Release);
    let mut last = (0, String::new());
    for _ in 0..500 {
        last = get(&format!("{admin}/health")).await;
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(last.0, 503, "{}", last.1);
    assert!(
        last.1.contains("degraded") && last.1.contains("connection refused"),
        "{}",
        last.1
    );
    // Back: healthy again.
    down.store(false, std::sync::atomic::Ordering::Release);
    for _ in 0..500 {
        last = get(&format!("{admin}/health")).await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last.0, 200, "{}", last.1);

    daemon.stop().await.unwrap();
    return_if_held(chain, &mut f.world).await;
    assert_eq!(f.world.env.job(&f.jobs[0].address).settled_units, expected);
    assert_eq!(f.world.env.job(&f.jobs[1].address).settled_units, 0);
    f.world.check_solvency();
}

/// Waits for the daemon to let go of the chain, then takes it back.
async fn return_if_held(mut chain: Arc<Mutex<Cuttable>>, world: &mut World) {
    for _ in 0..200 {
        match Arc::try_unwrap(chain) {
            Ok(mutex) => {
                world.env.chain = mutex.into_inner().unwrap().inner;
                return;
            }
            Err(shared) => chain = shared,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the daemon still holds the chain after it stopped");
}
