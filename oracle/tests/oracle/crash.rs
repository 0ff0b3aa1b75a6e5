//! The crash test: the real `tally-oracle` process against solana-test-validator,
//! killed with SIGKILL at random points while thousands of signed node reports come
//! in, streamed chat completions go through its gateway, and receipts are being sent,
//! restarted each time. A worker retries each report until the oracle answers it (201
//! recorded, or 409 already recorded: an answer lost to a kill). A client streams
//! through the gateway with a job key, again and again: a stream a kill cut short is
//! simply asked again. At the end, SIGTERM (with streams still in flight): the oracle
//! finishes them, settles what it accepted and exits. Then the chain must hold exactly
//! the units of the reports and of the gateway's records — none lost, none doubled —
//! the store exactly one record per report, and every stream the client received
//! whole (its `[DONE]`) must have its record: answers are billed before their last
//! byte.
//!
//! The seed is printed; `TALLY_CRASH_SEED=<n>` replays a run's kill schedule.
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anchor_lang::prelude::Pubkey;
use ed25519_dalek::SigningKey;
use solana_keypair::Keypair;
use tally_client::chain::Chain;
use tally_client::chain::RpcChain;
use tally_client::job_key::JobKeyClaims;
use tally_client::migrate::migrate;
use tally_client::{ops, OpenJobArgs, OperatorArgs};
use tally_oracle::sim_worker::{SimConfig, SimWorker};
use tally_oracle::store::{Billing, Store};
use tally_tests::solana_signer::Signer;
use tally_tests::validator::LocalValidator;

/// Reports sent in one run.
const REPORTS: u64 = 3_000;
/// Jobs they are spread over.
const JOBS: u64 = 3;
/// Jobs metered by the gateway (one meter per job: not the reports' jobs).
const GATEWAY_JOBS: u64 = 2;

/// xorshift64*: a reproducible schedule from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

fn write_keypair(path: &Path, keypair: &Keypair) {
    let bytes: Vec<u8> = keypair.to_bytes().to_vec();
    std::fs::write(path, serde_json::to_string(&bytes).unwrap()).unwrap();
}

fn spawn_oracle(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_tally-oracle"))
        .arg("--config")
        .arg(config)
        .env("TALLY_ORACLE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wallet(validator: &LocalValidator, sol: u64) -> Keypair {
    let keypair = Keypair::new();
    validator
        .fund(&keypair.pubkey(), sol * 1_000_000_000)
        .unwrap();
    keypair
}

/// The crash tests run one at a time: each starts its own validator and oracle
/// processes, and two at once on a 2-core machine slow every confirmation past what
/// the tests measure.
pub(super) static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The kill schedule's seed: `TALLY_CRASH_SEED`, else the clock's (printed).
fn seed(what: &str) -> u64 {
    let seed = std::env::var("TALLY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos(),
            ) | 1
        });
    println!("{what} seed: {seed} (replay with TALLY_CRASH_SEED={seed})");
    seed
}

/// An operator (its wallet funded) with `node` as its node key.
fn operator_with_node(
    validator: &LocalValidator,
    chain: &mut RpcChain,
    node: &SigningKey,
) -> Keypair {
    let operator = wallet(validator, 2);
    ops::register_operator(
        chain,
        &operator,
        OperatorArgs {
            payout_owner: operator.pubkey(),
            node_keys: vec![Pubkey::from(node.verifying_key().to_bytes())],
        },
        false,
    )
    .unwrap();
    operator
}

/// Token jobs `ids` of `client` with `operator`, in wrapped SOL at 1 lamport a token.
fn open_sol_jobs(
    chain: &mut RpcChain,
    client: &Keypair,
    operator: &Pubkey,
    ids: impl IntoIterator<Item = u64>,
) -> Vec<Pubkey> {
    let now = chain.clock().unwrap().unix_timestamp;
    ids.into_iter()
        .map(|job_id| {
            ops::open_job(
                chain,
                client,
                operator,
                &ops::NATIVE_MINT,
                OpenJobArgs {
                    job_id,
                    unit_kind: 0,
                    input_price: tally_client::PRICE_SCALE,
                    output_price: tally_client::PRICE_SCALE,
                    model: [0; 32],
                    max_units: 100_000_000,
                    deadline: now + 86_400,
                    spend_cap_per_hour: 0,
                },
            )
            .unwrap()
            .address
        })
        .collect()
}

/// `count` signed reports spread over `jobs`: (job index, tokens, body) each, and the
/// tokens each job should settle.
pub(super) fn report_bodies(
    jobs: &[Pubkey],
    node: &SigningKey,
    now: i64,
    prefix: &str,
    count: u64,
) -> (Vec<(usize, u64, String)>, Vec<u64>) {
    let mut expected = vec![0; jobs.len()];
    let bodies = (0..count)
        .map(|i| {
            let job = usize::try_from(i).unwrap() % jobs.len();
            let (tokens, body) =
                super::signed_report_body(&jobs[job], format!("{prefix}-{i}"), i, now, node);
            expected[job] += tokens;
            (job, tokens, body)
        })
        .collect();
    (bodies, expected)
}

/// The `peers = [...]` of oracle `me`'s `[quorum]`: every other oracle's key and
/// admin URL.
pub(super) fn peers_toml(keys: &[Pubkey], admin_ports: &[u16], me: usize) -> String {
    let peers: Vec<String> = (0..keys.len())
        .filter(|j| *j != me)
        .map(|j| {
            format!(
                "{{ key = \"{}\", url = \"http://127.0.0.1:{}\" }}",
                keys[j], admin_ports[j]
            )
        })
        .collect();
    format!("[{}]", peers.join(", "))
}

#[test]
fn kill_9_at_random_points_loses_and_doubles_nothing() {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(validator) =
        LocalValidator::start_private_or_skip(Some(&LocalValidator::default_program()))
    else {
        return;
    };
    let seed = seed("crash test");
    let mut rng = Rng(seed);
    let dir = super::temp_dir("crash");
    let mut chain = validator.chain();

    // A deployment with this oracle, wrapped SOL accepted, one operator with a node
    // key, a client with JOBS open jobs.
    let oracle = wallet(&validator, 10);
    let admin = &validator.payer;
    let report = migrate(
        &mut chain,
        admin,
        &tally_tests::validator::test_deployment(&admin.pubkey(), &oracle.pubkey()),
    )
    .unwrap();
    assert!(report.changed());
    let node = SigningKey::from_bytes(&[42; 32]);
    let operator = operator_with_node(&validator, &mut chain, &node);
    let client = wallet(&validator, 5);
    ops::wrap_sol(&mut chain, &client, 1_000_000_000).unwrap();
    let now = chain.clock().unwrap().unix_timestamp;
    let jobs = open_sol_jobs(&mut chain, &client, &operator.pubkey(), 0..JOBS);

    // Jobs the client spends through the gateway, each with a key its wallet signs.
    let gateway_jobs: Vec<(Pubkey, String)> = open_sol_jobs(
        &mut chain,
        &client,
        &operator.pubkey(),
        100..100 + GATEWAY_JOBS,
    )
    .into_iter()
    .map(|job| {
        let key = JobKeyClaims {
            job,
            job_nonce: ops::job(&chain, &job).unwrap().nonce,
            expires_at: now + 86_400,
            spend_limit: None,
        }
        .sign(&client)
        .encode();
        (job, key)
    })
    .collect();
    // The inference server: vLLM-like, a few milliseconds per streamed token, so kills
    // land inside streams.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    upstream.set_nonblocking(true).unwrap();
    let upstream_url = format!("http://{}", upstream.local_addr().unwrap());

    // The oracle's config: fixed ports, so restarts keep the workers' URL.
    let keypair_path = dir.join("oracle.json");
    write_keypair(&keypair_path, &oracle);
    let reports_port = super::free_port();
    let gateway_port = super::free_port();
    let config = dir.join("oracle.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{}\"\nkeypair = \"{}\"\nstore = \"{}\"\ninvoices_dir = \"{}\"\n\
             [batch]\ninterval_secs = 0.25\nmax_records = 150\n\
             [admin]\nlisten = \"127.0.0.1:{}\"\n\
             [node_reports]\nlisten = \"127.0.0.1:{reports_port}\"\n\
             [gateway]\nlisten = \"127.0.0.1:{gateway_port}\"\nupstream = \"{upstream_url}\"\noperator = \"{}\"\n",
            validator.rpc_url,
            keypair_path.display(),
            dir.join("oracle.db").display(),
            dir.join("invoices").display(),
            super::free_port(),
            operator.pubkey(),
        ),
    )
    .unwrap();
    let log = dir.join("oracle.log");
    let url = format!("http://127.0.0.1:{reports_port}/v1/reports");

    // The worker: every report, retried until the oracle answers it.
    let (bodies, expected) = report_bodies(&jobs, &node, now, "req", REPORTS);
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let (mut recorded, mut already) = (0u64, 0u64);
            for (_, _, body) in &bodies {
                // Paced like a busy worker, so the run spans many kills and rounds.
                tokio::time::sleep(Duration::from_millis(5)).await;
                loop {
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match sent.map(|r| r.status().as_u16()) {
                        Ok(201) => recorded += 1,
                        Ok(409) => already += 1,
                        Ok(status) => panic!("the oracle refused a valid report: {status}"),
                        // Down (killed) or cut off mid-answer: the same report again.
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                    break;
                }
            }
            (recorded, already)
        })
    });

    // The streaming client: whole streams (ending in [DONE]) by gateway request id.
    let streaming = Arc::new(AtomicBool::new(true));
    let streams = {
        let (streaming, jobs) = (Arc::clone(&streaming), gateway_jobs.clone());
        let url = format!("http://127.0.0.1:{gateway_port}/v1/chat/completions");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let worker = Arc::new(SimWorker::with(SimConfig {
                    event_delay: Duration::from_millis(4),
                    ..SimConfig::default()
                }));
                let listener = tokio::net::TcpListener::from_std(upstream).unwrap();
                tokio::spawn(Arc::clone(&worker).serve(listener));
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let (mut started, mut whole) = (0u64, Vec::new());
                let mut i = 0usize;
                while streaming.load(Ordering::SeqCst) {
                    i += 1;
                    let (job, key) = &jobs[i % jobs.len()];
                    let body = format!(
                        r#"{{"model":"llama-3-8b","messages":[{{"role":"user","content":"stream {i} through the gateway"}}],"max_tokens":{},"stream":true}}"#,
                        4 + i % 9
                    );
                    let Ok(response) = http.post(&url).bearer_auth(key).body(body).send().await
                    else {
                        // Down (killed): ask again.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    started += 1;
                    assert_eq!(response.status(), 200, "the gateway refused a paid request");
                    let id = response.headers()["x-tally-request-id"]
                        .to_str()
                        .unwrap()
                        .to_string();
                    if let Ok(text) = response.text().await {
                        if text.ends_with("data: [DONE]\n\n") {
                            whole.push((*job, id));
                        }
                    }
                }
                (started, whole)
            })
        })
    };

    // The killer: SIGKILL at random points until the worker is done.
    let mut oracle_process = spawn_oracle(&config, &log);
    let mut kills = 0u32;
    let started = Instant::now();
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(rng.between(150, 1_000)));
        if worker.is_finished() {
            break;
        }
        oracle_process.kill().unwrap(); // SIGKILL
        oracle_process.wait().unwrap();
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.between(0, 200)));
        oracle_process = spawn_oracle(&config, &log);
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the worker never finished; oracle log: {}",
            log.display()
        );
    }
    let (recorded, already) = worker.join().unwrap();
    println!("{REPORTS} reports accepted ({recorded} recorded, {already} answered as already recorded after a kill); {kills} kills");
    assert_eq!(recorded + already, REPORTS);
    assert!(
        kills >= 3,
        "only {kills} kills: the run was too short to test anything"
    );

    // SIGTERM, streams still in flight: the last oracle finishes them, settles what
    // it accepted, then exits cleanly.
    streaming.store(false, Ordering::SeqCst);
    let status = Command::new("kill")
        .args(["-TERM", &oracle_process.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (started, whole) = streams.join().unwrap();
    let exit = oracle_process.wait().unwrap();
    assert!(
        exit.success(),
        "tally-oracle exited {exit} on SIGTERM; log: {}",
        log.display()
    );

    let store = Store::open(&dir.join("oracle.db")).unwrap();
    let reported: usize = jobs
        .iter()
        .map(|job| store.records_after(&job.to_string(), 0).unwrap().len())
        .sum();
    assert_eq!(reported as u64, REPORTS, "one record per report");
    assert_eq!(store.pending_submissions().unwrap(), Vec::new());
    // Every stream delivered whole was billed: its record is in the store.
    let mut recorded = 0;
    for (job, _) in &gateway_jobs {
        let records = store.records_after(&job.to_string(), 0).unwrap();
        recorded += records.len();
        let ids: std::collections::HashSet<_> =
            records.iter().map(|(_, r)| r.request_id.clone()).collect();
        for (_, id) in whole.iter().filter(|(j, _)| j == job) {
            assert!(
                ids.contains(id),
                "stream {id} reached the client whole but was never billed (seed {seed})"
            );
        }
        let units: u64 = records
            .iter()
            .map(|(_, r)| r.prompt_tokens + r.completion_tokens)
            .sum();
        let state = ops::job(&chain, job).unwrap();
        assert_eq!(
            state.settled_units, units,
            "gateway job {job}: settled on-chain vs recorded (seed {seed})"
        );
    }
    println!(
        "{} whole streams delivered, {recorded} recorded, of {started} started (the rest cut by kills)",
        whole.len()
    );
    assert!(whole.len() >= 10, "too few streams to test anything");
    assert!(recorded >= whole.len() && recorded as u64 <= started);
    for (job, units) in jobs.iter().zip(&expected) {
        let state = ops::job(&chain, job).unwrap();
        assert_eq!(
            state.settled_units, *units,
            "job {job}: settled on-chain vs reported (seed {seed})"
        );
        assert_eq!(state.settled_gross, *units, "price 1: gross = units");
    }
    // Every record is on a confirmed receipt, and each job's invoices in the store
    // prove, from the first on, what the chain paid.
    assert!(store
        .billing()
        .unwrap()
        .iter()
        .all(|(_, b)| matches!(b, Billing::Submitted { .. })));
    for (job, units) in jobs.iter().zip(&expected) {
        let verified =
            tally_oracle::invoice::verify_in_store(&chain, &store, &job.to_string(), Some(1))
                .unwrap();
        assert_eq!(verified.settled_units, *units);
    }
    // The settlements went through a lookup table the oracle made for this operator.
    let tables = store.lookup_tables().unwrap();
    assert_eq!(tables.len(), 1, "{tables:?}");
    let table: anchor_lang::prelude::Pubkey = tables[0].address.parse().unwrap();
    let state =
        tally_client::alt::decode_lookup_table(&chain.account(&table).unwrap().unwrap().data)
            .unwrap();
    assert!(
        jobs.iter().all(|j| state.addresses.contains(j)),
        "{state:?}"
    );
    println!("settled on-chain: {expected:?} tokens per job = reported, across {kills} kills");
}

/// Reports of the quorum crash test.
const QUORUM_REPORTS: u64 = 300;
/// Its leadership term: short, so leadership moves many times in a run.
const QUORUM_TERM_SECS: u64 = 4;

/// Three real `tally-oracle` processes of a 2-of-3 set on solana-test-validator, each
/// with its own store, config and log: one operator with a node key, a client with
/// SOL jobs.
pub(super) struct QuorumProcesses {
    pub dir: std::path::PathBuf,
    pub chain: RpcChain,
    pub jobs: Vec<Pubkey>,
    pub node: SigningKey,
    /// Chain time when the jobs opened (reports finish then).
    pub now: i64,
    configs: Vec<std::path::PathBuf>,
    pub logs: Vec<std::path::PathBuf>,
    pub admin_ports: Vec<u16>,
    pub report_ports: Vec<u16>,
    processes: Vec<Option<Child>>,
}

impl QuorumProcesses {
    /// Deploys the set and writes each oracle's config (fixed ports: restarts keep
    /// them); starts nothing.
    pub fn deploy(validator: &LocalValidator, name: &str, term_secs: u64, jobs: u64) -> Self {
        let dir = super::temp_dir(name);
        let mut chain = validator.chain();
        let oracles: Vec<Keypair> = (0..3).map(|_| wallet(validator, 10)).collect();
        let admin = &validator.payer;
        let mut deployment =
            tally_tests::validator::test_deployment(&admin.pubkey(), &oracles[0].pubkey());
        deployment.settings.oracles = oracles.iter().map(Signer::pubkey).collect();
        deployment.settings.oracle_threshold = 2;
        migrate(&mut chain, admin, &deployment).unwrap();
        let node = SigningKey::from_bytes(&[43; 32]);
        let operator = operator_with_node(validator, &mut chain, &node);
        let client = wallet(validator, 5);
        ops::wrap_sol(&mut chain, &client, 1_000_000_000).unwrap();
        let now = chain.clock().unwrap().unix_timestamp;
        let jobs = open_sol_jobs(&mut chain, &client, &operator.pubkey(), 0..jobs);
        let admin_ports: Vec<u16> = (0..3).map(|_| super::free_port()).collect();
        let report_ports: Vec<u16> = (0..3).map(|_| super::free_port()).collect();
        let keys: Vec<Pubkey> = oracles.iter().map(Signer::pubkey).collect();
        let configs = (0..3)
            .map(|i| {
                let keypair_path = dir.join(format!("oracle-{i}.json"));
                write_keypair(&keypair_path, &oracles[i]);
                let config = dir.join(format!("oracle-{i}.toml"));
                std::fs::write(
                    &config,
                    format!(
                        "url = \"{}\"\nkeypair = \"{}\"\nstore = \"{}\"\ninvoices_dir = \"\"\n\
                         [batch]\ninterval_secs = 0.25\nmax_records = 100\nmax_backoff_secs = 2\n\
                         [admin]\nlisten = \"127.0.0.1:{}\"\n\
                         [node_reports]\nlisten = \"127.0.0.1:{}\"\n\
                         [quorum]\npeers = {}\nterm_secs = {term_secs}\nsignature_secs = 10\n",
                        validator.rpc_url,
                        keypair_path.display(),
                        dir.join(format!("oracle-{i}.db")).display(),
                        admin_ports[i],
                        report_ports[i],
                        peers_toml(&keys, &admin_ports, i)
                    ),
                )
                .unwrap();
                config
            })
            .collect();
        let logs = (0..3)
            .map(|i| dir.join(format!("oracle-{i}.log")))
            .collect();
        Self {
            dir,
            chain,
            jobs,
            node,
            now,
            configs,
            logs,
            admin_ports,
            report_ports,
            processes: vec![None, None, None],
        }
    }

    pub fn spawn(&mut self, i: usize) {
        self.processes[i] = Some(spawn_oracle(&self.configs[i], &self.logs[i]));
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self, i: usize) {
        let mut process = self.processes[i].take().expect("running");
        process.kill().unwrap();
        process.wait().unwrap();
    }

    /// SIGTERM: the oracle stops as it should (settles what it accepted, exits 0).
    pub fn terminate(&mut self, i: usize) {
        let mut process = self.processes[i].take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &process.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = process.wait().unwrap();
        assert!(
            exit.success(),
            "oracle {i} exited {exit}; log: {}",
            self.logs[i].display()
        );
    }

    pub fn terminate_all(&mut self) {
        for i in 0..3 {
            if self.processes[i].is_some() {
                self.terminate(i);
            }
        }
    }

    pub fn store(&self, i: usize) -> Store {
        Store::open(&self.dir.join(format!("oracle-{i}.db"))).unwrap()
    }

    /// Units each job settled on chain.
    pub fn settled(&self) -> Vec<u64> {
        self.jobs
            .iter()
            .map(|j| ops::job(&self.chain, j).unwrap().settled_units)
            .collect()
    }

    /// Waits (`secs` at most) until the jobs settled `expected`; the last reading.
    pub fn wait_settled(&self, expected: &[u64], secs: u64) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let settled = self.settled();
            if settled == expected || Instant::now() > deadline {
                return settled;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn report_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}/v1/reports", self.report_ports[i])
    }
}

/// The crash test for a 2-of-3 quorum: three real `tally-oracle` processes, each with
/// its own store, on solana-test-validator; every signed report posted to all three;
/// one of them (often the leader of the moment, mid-round) killed with SIGKILL at
/// random points and restarted, while leadership rotates every few seconds. Then the
/// chain must hold exactly the units reported — none lost, none doubled — and every
/// store one record per report.
#[test]
fn a_quorum_killed_at_random_points_loses_and_doubles_nothing() {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(validator) =
        LocalValidator::start_private_or_skip(Some(&LocalValidator::default_program()))
    else {
        return;
    };
    let seed = seed("quorum crash test");
    let mut rng = Rng(seed);
    let mut q = QuorumProcesses::deploy(&validator, "quorum-crash", QUORUM_TERM_SECS, JOBS);

    // The worker: every report to every oracle, each retried until that one answers.
    let (bodies, expected) = report_bodies(&q.jobs, &q.node, q.now, "q-req", QUORUM_REPORTS);
    let urls: Vec<String> = (0..3).map(|i| q.report_url(i)).collect();
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            for (_, _, body) in &bodies {
                tokio::time::sleep(Duration::from_millis(15)).await;
                for url in &urls {
                    super::post_report(&http, url, body, Duration::from_millis(20), usize::MAX)
                        .await;
                }
            }
        });
    });

    // The killer: SIGKILL one oracle at random points until the worker is done.
    for i in 0..3 {
        q.spawn(i);
    }
    let mut kills = 0u32;
    let started = Instant::now();
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(rng.between(300, 1_500)));
        if worker.is_finished() {
            break;
        }
        let victim = usize::try_from(rng.between(0, 3)).unwrap();
        q.kill(victim);
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.between(0, 600)));
        q.spawn(victim);
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the worker never finished; logs in {}",
            q.dir.display()
        );
    }
    worker.join().unwrap();
    assert!(kills >= 3, "only {kills} kills: the run was too short");

    // All three up: the quorum settles everything, leadership moving on.
    q.wait_settled(&expected, 180);
    q.terminate_all();
    assert_eq!(
        q.settled(),
        expected,
        "settled on-chain vs reported (seed {seed}; logs in {})",
        q.dir.display()
    );
    for i in 0..3 {
        let store = q.store(i);
        let records: usize = q
            .jobs
            .iter()
            .map(|job| store.records_after(&job.to_string(), 0).unwrap().len())
            .sum();
        assert_eq!(
            records as u64, QUORUM_REPORTS,
            "oracle {i}: one record per report"
        );
    }
    println!(
        "quorum: {QUORUM_REPORTS} reports to 3 oracles, {kills} kills, settled {expected:?} = reported"
    );
}
