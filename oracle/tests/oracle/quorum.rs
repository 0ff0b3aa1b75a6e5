//! A 2-of-3 oracle quorum on the embedded chain (issue 20): three oracles, each with
//! its own store holding the same signed evidence, co-signing over real HTTP. The
//! leader's batcher settles only what a second oracle's own records bear out.
use std::sync::{Arc, Mutex};

use tally_client::chain::{Chain, EmbeddedChain, Shared};
use tally_oracle::batcher::Batcher;
use tally_oracle::http::Shutdown;
use tally_oracle::quorum::{
    self, Cosigner, PeerSettings, Peers, Quorum, QuorumSettings, QuorumView,
};
use tally_oracle::store::{Billing, Store, UsageRecord};
use tally_tests::solana_keypair::Keypair;
use tally_tests::solana_signer::Signer;
use tally_tests::{JobHandle, JobSpec, TestEnv, World};

use super::{record, temp_dir};

/// A co-signing oracle: its store and its HTTP server (stopped by `stop`).
struct Peer {
    oracle: Keypair,
    path: std::path::PathBuf,
    store: Arc<Mutex<Store>>,
    url: String,
    stop: tokio::sync::watch::Sender<bool>,
}

struct Quorum3 {
    chain: Shared<EmbeddedChain>,
    /// The deployment's admin (changes the oracle set).
    admin: Keypair,
    jobs: Vec<JobHandle>,
    leader: Batcher,
    leader_key: tally_client::Pubkey,
    /// The leader's admin listener (its invoices, for peers catching up).
    leader_url: String,
    peers: Vec<Peer>,
    dir: std::path::PathBuf,
}

impl Quorum3 {
    /// Every oracle's store gets `r` (workers post each report to every oracle).
    fn report(&self, r: &UsageRecord) {
        self.leader.store.record(r).unwrap();
        for peer in &self.peers {
            peer.store.lock().unwrap().record(r).unwrap();
        }
    }

    /// One settlement round of the leader, on a blocking thread (it waits for its
    /// peers' answers).
    fn round(&self) -> tally_oracle::batcher::RoundReport {
        let (leader, mut chain) = (&self.leader, self.chain.clone());
        tokio::task::block_in_place(|| leader.run_round(&mut chain)).unwrap()
    }

    fn settled(&self, job: &JobHandle) -> (u64, u64) {
        let job = self.chain.lock().job_state(&job.address);
        (job.settled_units, job.last_seq)
    }

    /// Starts (again) peer `i`'s server on its port.
    async fn start_peer(&mut self, i: usize) {
        let url = self.peers[i].url.clone();
        let address = url.trim_start_matches("http://").to_string();
        // Its peers (to catch up from): the leader and the other co-signer.
        let other = &self.peers[1 - i];
        let peers = Peers::new(&QuorumSettings {
            peers: vec![
                PeerSettings {
                    key: self.leader_key.to_string(),
                    url: self.leader_url.clone(),
                },
                PeerSettings {
                    key: other.oracle.pubkey().to_string(),
                    url: other.url.clone(),
                },
            ],
            term_secs: 30,
            signature_secs: 120,
        })
        .unwrap();
        let cosigner = Arc::new(Cosigner::new(
            self.peers[i].oracle.insecure_clone(),
            Arc::clone(&self.peers[i].store),
            Arc::clone(&self.chain.0) as Arc<dyn QuorumView>,
            peers,
        ));
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let reader = Arc::new(Mutex::new(Store::open(&self.peers[i].path).unwrap()));
        serve(&address, cosigner, reader, shutdown).await;
        self.peers[i].stop = stop;
    }

    fn stop_peer(&self, i: usize) {
        let _ = self.peers[i].stop.send(true);
    }
}

/// A peer's admin listener: proposals, and its invoices (as the daemon serves them).
async fn serve(
    address: &str,
    cosigner: Arc<Cosigner>,
    reader: Arc<Mutex<Store>>,
    shutdown: Shutdown,
) {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    tokio::spawn(async move {
        tally_oracle::http::serve(
            listener,
            move |req: hyper::Request<hyper::body::Incoming>| {
                let (cosigner, reader) = (Arc::clone(&cosigner), Arc::clone(&reader));
                async move {
                    let path = req.uri().path().to_string();
                    match path.strip_prefix("/invoices/") {
                        Some(rest) => tally_oracle::daemon::invoice_response(rest, reader).await,
                        None => quorum::handle(req, cosigner).await,
                    }
                }
            },
            shutdown,
            &tally_oracle::http::Limits::default(),
            None,
        )
        .await
    });
}

trait JobState {
    fn job_state(&self, address: &tally_client::Pubkey) -> tally::state::Job;
}

impl JobState for EmbeddedChain {
    fn job_state(&self, address: &tally_client::Pubkey) -> tally::state::Job {
        tally_client::ops::job(self, address).unwrap()
    }
}

/// A 2-of-3 deployment with two jobs; oracle 0 leads (one long term), 1 and 2 co-sign.
async fn quorum3(name: &str) -> Quorum3 {
    let mut world = World::builder()
        .oracles(3, 2)
        .fee_bps(100)
        .challenge_window(0)
        .build();
    let operator = world.operator();
    let client = world.client(100_000_000);
    let jobs = (0..2)
        .map(|id| world.open_job(&client, &operator, id, JobSpec::default()))
        .collect();
    world.env.advance(60);
    let oracles: Vec<Keypair> = world.oracles.iter().map(Keypair::insecure_clone).collect();
    // The chain moves out of the world: the leader's rounds and the peers' reads
    // share it, each call taking the lock alone.
    let standin = EmbeddedChain::new(&TestEnv::program_path(), &oracles[0].pubkey()).unwrap();
    let chain = Shared::new(std::mem::replace(&mut world.env.chain, standin));
    let dir = temp_dir(name);
    let mut peers = Vec::new();
    for (i, oracle) in oracles.iter().enumerate().skip(1) {
        let port = super::free_port();
        let path = dir.join(format!("oracle-{i}.db"));
        peers.push(Peer {
            oracle: oracle.insecure_clone(),
            store: Arc::new(Mutex::new(Store::open(&path).unwrap())),
            path,
            url: format!("http://127.0.0.1:{port}"),
            stop: tokio::sync::watch::channel(false).0,
        });
    }
    let settings = QuorumSettings {
        peers: peers
            .iter()
            .map(|p| PeerSettings {
                key: p.oracle.pubkey().to_string(),
                url: p.url.clone(),
            })
            .collect(),
        // One term longer than the test: oracle 0 leads throughout.
        term_secs: 1 << 40,
        signature_secs: 120,
    };
    let leader_path = dir.join("oracle-0.db");
    let leader = Batcher::new(
        Store::open(&leader_path).unwrap(),
        oracles[0].insecure_clone(),
        tally_oracle::clock::ChainClock::new(),
    )
    .with_quorum(Quorum::new(&settings).unwrap());
    let leader_url = format!("http://127.0.0.1:{}", super::free_port());
    let leader_cosigner = Arc::new(Cosigner::new(
        oracles[0].insecure_clone(),
        Arc::new(Mutex::new(Store::open(&leader_path).unwrap())),
        Arc::clone(&chain.0) as Arc<dyn QuorumView>,
        Peers::new(&settings).unwrap(),
    ));
    serve(
        leader_url.trim_start_matches("http://"),
        leader_cosigner,
        Arc::new(Mutex::new(Store::open(&leader_path).unwrap())),
        tally_oracle::http::never(),
    )
    .await;
    let mut q = Quorum3 {
        chain,
        admin: world.admin.insecure_clone(),
        jobs,
        leader,
        leader_key: oracles[0].pubkey(),
        leader_url,
        peers,
        dir,
    };
    for i in 0..2 {
        q.start_peer(i).await;
    }
    q
}

fn units(records: &[UsageRecord]) -> u64 {
    records
        .iter()
        .map(|r| r.prompt_tokens + r.completion_tokens)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_of_three_settle_what_two_stores_hold_and_survive_one_down() {
    let mut q = quorum3("quorum-honest").await;
    let now = q.chain.clock().unwrap().unix_timestamp;
    let first: Vec<UsageRecord> = (0..6).map(|i| record(&q.jobs[0], i, now)).collect();
    for r in &first {
        q.report(r);
    }

    // All honest: settled once, with the first peer's signature.
    let report = q.round();
    assert_eq!((report.failed, report.confirmed), (0, 1), "{report:?}");
    assert_eq!(q.settled(&q.jobs[0]), (units(&first), 1));
    // The co-signer bound those records to the receipt in its own store.
    let billing = q.peers[0].store.lock().unwrap().billing().unwrap();
    assert!(billing.iter().all(|(_, b)| !matches!(b, Billing::Waiting)));
    // A round with nothing new sends nothing.
    assert_eq!(q.round().sent, 0);

    // The first peer down: the second co-signs.
    q.stop_peer(0);
    let second: Vec<UsageRecord> = (10..14).map(|i| record(&q.jobs[0], i, now)).collect();
    for r in &second {
        q.report(r);
    }
    let report = q.round();
    assert_eq!((report.failed, report.confirmed), (0, 1), "{report:?}");
    assert_eq!(q.settled(&q.jobs[0]), (units(&first) + units(&second), 2));
    let cosigned = q.peers[1]
        .store
        .lock()
        .unwrap()
        .submissions_of(&q.jobs[0].address.to_string())
        .unwrap();
    assert_eq!(
        cosigned.iter().map(|s| s.seq).collect::<Vec<_>>(),
        vec![1, 2],
        "the second peer adopted receipt 1 (landed without it), then co-signed 2"
    );

    // Both peers down: nothing settles, nothing is lost…
    q.stop_peer(1);
    let third: Vec<UsageRecord> = (20..23).map(|i| record(&q.jobs[1], i, now)).collect();
    for r in &third {
        q.report(r);
    }
    let report = q.round();
    assert_eq!((report.failed, report.confirmed), (1, 0), "{report:?}");
    assert!(
        report.errors.iter().any(|e| e.contains("did not answer")),
        "{report:?}"
    );
    assert_eq!(q.settled(&q.jobs[1]), (0, 0));
    // …and it settles once one returns (after the job's backoff).
    q.start_peer(1).await;
    let mut settled = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        q.round();
        if q.settled(&q.jobs[1]) == (units(&third), 1) {
            settled = true;
            break;
        }
    }
    assert!(
        settled,
        "settled once a peer returned: {:?}",
        q.settled(&q.jobs[1])
    );

    // The first peer returns, behind: receipt 2 of job 0 landed without it. Asked to
    // co-sign receipt 3, it first adopts receipt 2 (from the other peer, checked
    // against the chain), then signs.
    q.start_peer(0).await;
    let fourth: Vec<UsageRecord> = (30..33).map(|i| record(&q.jobs[0], i, now)).collect();
    for r in &fourth {
        q.report(r);
    }
    let report = q.round();
    assert_eq!((report.failed, report.confirmed), (0, 1), "{report:?}");
    let all = units(&first) + units(&second) + units(&fourth);
    assert_eq!(q.settled(&q.jobs[0]), (all, 3));
    let seqs: Vec<u64> = q.peers[0]
        .store
        .lock()
        .unwrap()
        .submissions_of(&q.jobs[0].address.to_string())
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3],
        "the first peer caught up with receipt 2"
    );

    // Leadership moves to the first peer's oracle. Job 1 settled while it was down:
    // as leader it adopts that receipt, then bills only what is new.
    let now_secs = u64::try_from(now).unwrap();
    let new_leader = Batcher::new(
        Store::open(&q.peers[0].path).unwrap(),
        q.peers[0].oracle.insecure_clone(),
        tally_oracle::clock::ChainClock::new(),
    )
    .with_quorum(
        Quorum::new(&QuorumSettings {
            peers: vec![PeerSettings {
                key: q.peers[1].oracle.pubkey().to_string(),
                url: q.peers[1].url.clone(),
            }],
            // now / term = 1: the set's second oracle leads this term.
            term_secs: now_secs,
            signature_secs: 120,
        })
        .unwrap(),
    );
    let fifth: Vec<UsageRecord> = (40..42).map(|i| record(&q.jobs[1], i, now)).collect();
    for r in &fifth {
        q.report(r);
    }
    let mut chain = q.chain.clone();
    let report = tokio::task::block_in_place(|| new_leader.run_round(&mut chain)).unwrap();
    assert_eq!((report.failed, report.confirmed), (0, 1), "{report:?}");
    assert_eq!(
        q.settled(&q.jobs[1]),
        (units(&third) + units(&fifth), 2),
        "the requests of receipt 1 are not billed twice"
    );
    let _ = std::fs::remove_dir_all(&q.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_invents_or_inflates_usage_gets_no_signature() {
    let q = quorum3("quorum-liar").await;
    let now = q.chain.clock().unwrap().unix_timestamp;
    let honest: Vec<UsageRecord> = (0..4).map(|i| record(&q.jobs[0], i, now)).collect();
    for r in &honest {
        q.report(r);
    }
    // The leader's store holds a request nobody reported to the others.
    let invented = record(&q.jobs[0], 99, now);
    q.leader.store.record(&invented).unwrap();
    let report = q.round();
    assert_eq!(report.confirmed, 0, "{report:?}");
    assert!(
        report.errors.iter().any(|e| e.contains("unseen_record")),
        "{report:?}"
    );
    assert_eq!(q.settled(&q.jobs[0]), (0, 0), "nothing settles");

    // On the other job, the leader's count of a request is larger than the one the
    // node signed and the peers hold.
    let mut inflated = record(&q.jobs[1], 7, now);
    for peer in &q.peers {
        peer.store.lock().unwrap().record(&inflated).unwrap();
    }
    inflated.completion_tokens += 1_000;
    q.leader.store.record(&inflated).unwrap();
    let report = q.round();
    assert_eq!(report.confirmed, 0, "{report:?}");
    assert!(
        report.errors.iter().any(|e| e.contains("record_differs")),
        "{report:?}"
    );
    assert_eq!(q.settled(&q.jobs[1]), (0, 0), "nothing settles");
    let _ = std::fs::remove_dir_all(&q.dir);
}

#[test]
fn leadership_rotates_through_the_set_in_terms_of_chain_time() {
    let set: Vec<_> = (0..3).map(|_| tally_client::Pubkey::new_unique()).collect();
    assert_eq!(quorum::leader(&set, 0, 30), Some(set[0]));
    assert_eq!(quorum::leader(&set, 29, 30), Some(set[0]));
    assert_eq!(quorum::leader(&set, 30, 30), Some(set[1]));
    assert_eq!(quorum::leader(&set, 60, 30), Some(set[2]));
    assert_eq!(quorum::leader(&set, 90, 30), Some(set[0]));
    assert_eq!(quorum::leader(&[], 90, 30), None);

    // In the last fifth of its term a leader resends but bills nothing new.
    let q = Quorum::new(&QuorumSettings {
        peers: Vec::new(),
        term_secs: 30,
        signature_secs: 120,
    })
    .unwrap();
    assert!(q.bills_at(60) && q.bills_at(83));
    assert!(!q.bills_at(84) && !q.bills_at(89));
}

/// Posts a signed report to every running daemon (a worker reports to each oracle).
async fn post_to_all(daemons: &[Option<tally_oracle::daemon::Daemon>], body: &str) {
    for daemon in daemons.iter().flatten() {
        let url = format!("http://{}/v1/reports", daemon.node_reports.unwrap());
        let (status, text) = super::daemon::post(&url, body).await;
        assert_eq!(status, 201, "{text}");
    }
}

/// The daemons' leadership term, seconds of chain time.
const TERM: i64 = 100;

/// The worker's node key and the gateway's key, both registered by the operator.
const NODE_SECRET: [u8; 32] = [7; 32];
const GATEWAY_SECRET: [u8; 32] = [9; 32];

/// Three `tally-oracle` daemons in process, each with its own store and `[quorum]`
/// config, on one embedded chain with a 2-of-3 set and one job; each daemon has its
/// own chain connections (its rounds, its lookups and its answers to peers lock the
/// chain one call at a time).
struct Members {
    chain: Shared<EmbeddedChain>,
    oracles: Vec<Keypair>,
    job: JobHandle,
    dir: std::path::PathBuf,
    configs: Vec<tally_oracle::config::OracleConfig>,
    daemons: Vec<Option<tally_oracle::daemon::Daemon>>,
}

impl Members {
    /// Starts all three; `extra(i, dir, job)` is more of oracle `i`'s config (TOML
    /// sections).
    async fn start(
        name: &str,
        extra: impl Fn(usize, &std::path::Path, &tally_client::Pubkey) -> String,
    ) -> Self {
        let mut world = World::builder()
            .oracles(3, 2)
            .fee_bps(100)
            .challenge_window(0)
            .build();
        let operator = world.operator();
        let node_keys = [NODE_SECRET, GATEWAY_SECRET]
            .iter()
            .map(|s| {
                let key = ed25519_dalek::SigningKey::from_bytes(s);
                tally_client::Pubkey::from(key.verifying_key().to_bytes())
            })
            .collect();
        let args = tally_client::OperatorArgs {
            payout_owner: operator.payout_owner,
            node_keys,
        };
        tally_tests::expect_ok(world.send(
            &[tally_client::ix::update_operator(
                operator.authority.pubkey(),
                args,
            )],
            &[&operator.authority],
        ));
        let client = world.client(100_000_000);
        let job = world.open_job(&client, &operator, 0, JobSpec::default());
        world.env.advance(60);
        let oracles: Vec<Keypair> = world.oracles.iter().map(Keypair::insecure_clone).collect();
        let standin = EmbeddedChain::new(&TestEnv::program_path(), &oracles[0].pubkey()).unwrap();
        let chain = Shared::new(std::mem::replace(&mut world.env.chain, standin));
        let dir = temp_dir(name);
        let ports: Vec<u16> = (0..3).map(|_| super::free_port()).collect();
        let keys: Vec<tally_client::Pubkey> = oracles.iter().map(Signer::pubkey).collect();
        let configs = (0..3)
            .map(|i| {
                tally_oracle::config::OracleConfig::parse(
                    &format!(
                        "store = \"{}\"\ninvoices_dir = \"\"\n[batch]\ninterval_secs = 0.2\nmax_backoff_secs = 0.5\n\
                         [admin]\nlisten = \"127.0.0.1:{}\"\n[node_reports]\nlisten = \"127.0.0.1:0\"\n\
                         [quorum]\npeers = {}\nterm_secs = {TERM}\n{}",
                        dir.join(format!("oracle-{i}.db")).display(),
                        ports[i],
                        super::crash::peers_toml(&keys, &ports, i),
                        extra(i, &dir, &job.address),
                    ),
                    Vec::new(),
                )
                .unwrap()
            })
            .collect();
        let mut daemons = Self {
            chain,
            oracles,
            job,
            dir,
            configs,
            daemons: vec![None, None, None],
        };
        for i in 0..3 {
            daemons.start_one(i).await;
        }
        daemons
    }

    async fn start_one(&mut self, i: usize) {
        let own = Arc::new(Mutex::new(self.chain.clone()));
        let directory = Arc::new(Mutex::new(self.chain.clone()));
        let view = Arc::new(Mutex::new(self.chain.clone()));
        self.daemons[i] = Some(
            tally_oracle::daemon::Daemon::start_with_views(
                &self.configs[i],
                own,
                directory,
                view,
                self.oracles[i].insecure_clone(),
            )
            .await
            .unwrap(),
        );
    }

    async fn stop_one(&mut self, i: usize) {
        self.daemons[i].take().unwrap().stop().await.unwrap();
    }

    fn daemon(&self, i: usize) -> &tally_oracle::daemon::Daemon {
        self.daemons[i].as_ref().unwrap()
    }

    /// Sets the chain's clock to the start of the first term at or after `at` that
    /// `leader` (an index) does not lead... or leads: `wanted(index)` picks.
    fn move_to_term(&self, from: i64, wanted: impl Fn(usize) -> bool) -> i64 {
        let members = self.chain.config_oracles();
        let mut now = (from / TERM + 1) * TERM + 1;
        loop {
            let leader = quorum::leader(&members, now, TERM as u64).unwrap();
            let index = self
                .oracles
                .iter()
                .position(|o| o.pubkey() == leader)
                .unwrap();
            if wanted(index) {
                self.chain.lock().set_time(now);
                return now;
            }
            now += TERM;
        }
    }

    fn leader_index(&self, now: i64) -> usize {
        let leader = quorum::leader(&self.chain.config_oracles(), now, TERM as u64).unwrap();
        self.oracles
            .iter()
            .position(|o| o.pubkey() == leader)
            .unwrap()
    }

    fn settled(&self) -> tally::state::Job {
        self.chain.lock().job_state(&self.job.address)
    }

    /// Waits (10 s at most) until the job has settled `units`.
    async fn wait_for(&self, units: u64) -> bool {
        for _ in 0..100 {
            if self.settled().settled_units == units {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }

    async fn metrics(&self, i: usize) -> String {
        super::daemon::get(&format!("http://{}/metrics", self.daemon(i).admin))
            .await
            .1
    }

    /// Oracle `i`'s store, read beside its daemon.
    fn records(&self, i: usize) -> Vec<UsageRecord> {
        Store::open(&self.dir.join(format!("oracle-{i}.db")))
            .unwrap()
            .all_records()
            .unwrap()
    }

    async fn stop_all(mut self) {
        for i in 0..3 {
            if self.daemons[i].is_some() {
                self.stop_one(i).await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three daemons, node reports posted to every one over HTTP, leadership rotating
/// with the chain's clock: settled once while all run, and still settled, by the two
/// left, once the leader of the moment stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_settle_signed_reports_and_carry_on_without_their_leader() {
    let mut d = Members::start("quorum-daemons", |_, _, _| String::new()).await;
    let node = ed25519_dalek::SigningKey::from_bytes(&NODE_SECRET);
    // The clock at the start of a term (a leader bills in the first four fifths).
    let now = d.move_to_term(d.chain.clock().unwrap().unix_timestamp, |_| true);
    let job = d.job.address;
    // Report `i` signed by the node: its units and its body.
    let report = |i: u64| super::signed_report_body(&job, format!("node-req-{i}"), i, now, &node);

    // Posted in the last fifth of the term before (no leader bills new usage then),
    // so the six land in one receipt whatever the machine's speed.
    d.chain.lock().set_time(now - TERM / 10);
    let mut expected = 0;
    for i in 0..6 {
        let (units, body) = report(i);
        expected += units;
        post_to_all(&d.daemons, &body).await;
    }
    d.chain.lock().set_time(now);
    assert!(
        d.wait_for(expected).await,
        "settled: {:?}",
        d.settled().settled_units
    );
    assert_eq!(d.settled().last_seq, 1, "settled once");

    // A report only the leader received (the worker failed to post it to the
    // others): its peers refuse the receipt, and both sides count why.
    let stopped = d.leader_index(now);
    let (_, body) = report(5_000);
    let to_leader = format!(
        "http://{}/v1/reports",
        d.daemon(stopped).node_reports.unwrap()
    );
    let (status, text) = super::daemon::post(&to_leader, &body).await;
    assert_eq!(status, 201, "{text}");
    let refused_here = "tally_oracle_quorum_peer_refusals_total{peer=";
    let mut seen = String::new();
    for _ in 0..100 {
        seen = d.metrics(stopped).await;
        if seen.contains(refused_here) && seen.contains("reason=\"unseen_record\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen.contains(refused_here), "{seen}");
    let theirs = d.metrics((stopped + 1) % 3).await;
    assert!(
        theirs.contains("tally_oracle_quorum_refused_total{reason=\"unseen_record\"}")
            && theirs.contains("tally_oracle_quorum_cosigned_total"),
        "{theirs}"
    );
    assert_eq!(d.settled().last_seq, 1, "nothing more settled");

    // The leader of the moment stops.
    // Posted while it would lead (nobody bills), then the clock moves on to a term
    // whose leader runs.
    d.stop_one(stopped).await;
    for i in 10..14 {
        let (units, body) = report(i);
        expected += units;
        post_to_all(&d.daemons, &body).await;
    }
    d.move_to_term(now, |leader| leader != stopped);
    assert!(
        d.wait_for(expected).await,
        "settled: {:?}",
        d.settled().settled_units
    );
    assert_eq!(d.settled().last_seq, 2);
    d.stop_all().await;
}

/// Writes a Solana keypair file (64 bytes: the secret, then the public key).
fn keypair_file(path: &std::path::Path, secret: &[u8; 32]) {
    let key = ed25519_dalek::SigningKey::from_bytes(secret);
    let bytes: Vec<u8> = secret
        .iter()
        .chain(key.verifying_key().as_bytes())
        .copied()
        .collect();
    std::fs::write(path, serde_json::to_string(&bytes).unwrap()).unwrap();
}

/// Chat requests `from..to` through a gateway, with the job's static key.
async fn chat_through(gateway: std::net::SocketAddr, from: u64, to: u64) {
    let http = reqwest::Client::new();
    for i in from..to {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"say something {i}"}}],"max_tokens":{},"stream":{}}}"#,
            3 + i % 5,
            i % 2 == 0
        );
        let response = http
            .post(format!("http://{gateway}/v1/chat/completions"))
            .bearer_auth("sk-quorum")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
}

fn tokens(records: &[UsageRecord]) -> u64 {
    records
        .iter()
        .map(|r| r.prompt_tokens + r.completion_tokens)
        .sum()
}

/// A request metered by one oracle's gateway settles through the quorum: the gateway
/// signs each record with its key (registered by the operator as a node key) and
/// sends it to its peers, which check it themselves and co-sign. A peer that is down
/// gets what it missed when it returns, even after the gateway's daemon restarted
/// (the outbox is the store), and records signed by a key the operator never
/// registered, altered after signing, or not a gateway's are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_records_reach_every_oracle_signed_and_settle_through_the_quorum() {
    use tally_oracle::quorum::evidence::{SignedRecord, RECORDS_PATH};
    use tally_oracle::sim_worker::SimWorker;

    let worker = Arc::new(SimWorker::default());
    let upstream_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", upstream_listener.local_addr().unwrap());
    tokio::spawn(Arc::clone(&worker).serve(upstream_listener));
    // Oracle 0 runs a gateway in front of the worker, signing with the gateway key.
    let mut d = Members::start("quorum-gateway", |i, dir, job| {
        if i != 0 {
            return String::new();
        }
        let key_path = dir.join("gateway.json");
        keypair_file(&key_path, &GATEWAY_SECRET);
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
             api_keys = {{ \"sk-quorum\" = \"{job}\" }}\nsigning_key = \"{}\"\n",
            key_path.display()
        )
    })
    .await;
    let now = d.move_to_term(d.chain.clock().unwrap().unix_timestamp, |_| true);

    chat_through(d.daemon(0).gateway.unwrap(), 0, 6).await;
    let metered = tokens(&d.records(0));
    assert!(metered > 0);
    assert!(
        d.wait_for(metered).await,
        "settled {} of {metered}",
        d.settled().settled_units
    );
    for i in 0..3 {
        assert_eq!(d.records(i).len(), 6, "oracle {i} holds every record once");
    }
    assert_eq!(
        d.records(1),
        d.records(0),
        "byte for byte the gateway's records"
    );

    // Oracle 2 is down while more requests are metered, and oracle 0 restarts before
    // it returns: what 2 missed waits in 0's store, and reaches it afterwards.
    d.stop_one(2).await;
    d.move_to_term(now, |leader| leader != 2);
    chat_through(d.daemon(0).gateway.unwrap(), 6, 10).await;
    let metered = tokens(&d.records(0));
    assert!(
        d.wait_for(metered).await,
        "settled {} of {metered}",
        d.settled().settled_units
    );
    d.stop_one(0).await;
    d.start_one(2).await;
    d.start_one(0).await;
    for _ in 0..100 {
        if d.records(2).len() == 10 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        d.records(2).len(),
        10,
        "oracle 2 caught up on what it missed"
    );
    let forwarded = d.metrics(0).await;
    assert!(
        forwarded.contains("tally_oracle_quorum_forwarded_total{peer="),
        "{forwarded}"
    );

    // What a peer refuses: an unregistered key, a record altered after signing, a
    // record that is not a gateway's.
    let mut fake = d.records(0)[0].clone();
    fake.request_id = "made-up".into();
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let unregistered = SignedRecord::sign(fake.clone(), &stranger).unwrap();
    let gateway_key = ed25519_dalek::SigningKey::from_bytes(&GATEWAY_SECRET);
    let mut altered = SignedRecord::sign(fake.clone(), &gateway_key).unwrap();
    altered.record.completion_tokens += 1_000;
    let mut not_gateway = fake.clone();
    not_gateway.source = "node-report".into();
    let not_gateway = SignedRecord::sign(not_gateway, &gateway_key).unwrap();
    let body = serde_json::json!({ "records": [unregistered, altered, not_gateway] });
    let url = format!("http://{}{RECORDS_PATH}", d.daemon(1).admin);
    let (status, text) = super::daemon::post(&url, &body.to_string()).await;
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let reasons: Vec<&str> = answer["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["reason"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        reasons,
        ["unknown_key", "bad_signature", "malformed"],
        "{text}"
    );
    assert!(d.records(1).iter().all(|r| r.request_id != "made-up"));
    assert_eq!(d.settled().settled_units, metered, "nothing more settled");
    d.stop_all().await;
}

trait ConfigOracles {
    fn config_oracles(&self) -> Vec<tally_client::Pubkey>;
}

impl ConfigOracles for Shared<EmbeddedChain> {
    fn config_oracles(&self) -> Vec<tally_client::Pubkey> {
        tally_client::ops::config(self).unwrap().oracles
    }
}

/// Rotating an oracle out while the daemons run: the rotated-out peer is not asked any
/// more, and a receipt left pending under the old set version is signed again under
/// the new one and lands once, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_out_oracle_is_not_asked_and_pending_receipts_are_signed_again() {
    let mut q = quorum3("quorum-rotate").await;
    let now = q.chain.clock().unwrap().unix_timestamp;
    // Both peers down: the receipt is written ahead and left pending.
    q.stop_peer(0);
    q.stop_peer(1);
    let records: Vec<UsageRecord> = (0..5).map(|i| record(&q.jobs[0], i, now)).collect();
    for r in &records {
        q.report(r);
    }
    let report = q.round();
    assert_eq!((report.failed, report.confirmed), (1, 0), "{report:?}");
    let version = tally_client::ops::config(&q.chain)
        .unwrap()
        .oracle_set_version;

    // The second peer's key is rotated out for a new one (whose daemon is not
    // configured anywhere yet).
    let replacement = Keypair::new();
    let change = tally_client::ops::OracleChange::Rotate {
        old: q.peers[1].oracle.pubkey(),
        new: replacement.pubkey(),
    };
    let mut chain = q.chain.clone();
    tally_client::ops::change_oracles(&mut chain, &q.admin, &change, None).unwrap();
    let config = tally_client::ops::config(&q.chain).unwrap();
    assert_eq!(config.oracle_set_version, version + 1);

    // Only the rotated-out peer is back: it is not asked, nothing settles.
    q.start_peer(1).await;
    let mut report = q.round();
    for _ in 0..40 {
        if report.sent > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        report = q.round();
    }
    assert_eq!(report.confirmed, 0, "{report:?}");
    assert!(
        report.errors.iter().any(|e| e.contains("did not co-sign")),
        "{report:?}"
    );
    assert_eq!(q.settled(&q.jobs[0]), (0, 0));
    let asked = q.peers[1]
        .store
        .lock()
        .unwrap()
        .submissions_of(&q.jobs[0].address.to_string())
        .unwrap();
    assert!(asked.is_empty(), "the rotated-out oracle signed nothing");

    // The first peer returns: the pending receipt is signed under the new version
    // and lands once.
    q.start_peer(0).await;
    let mut settled = (0, 0);
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        q.round();
        settled = q.settled(&q.jobs[0]);
        if settled.1 > 0 {
            break;
        }
    }
    assert_eq!(settled, (units(&records), 1), "settled once, nothing lost");
    let _ = std::fs::remove_dir_all(&q.dir);
}

/// A co-signer signs the whole message: a leader that makes it the fee payer (a
/// priority fee would drain it) is refused before anything else is looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_co_signer_never_pays_the_fees() {
    let q = quorum3("quorum-fees").await;
    let peer = &q.peers[0].oracle;
    let config = tally_client::ops::config(&q.chain).unwrap();
    let job = q.chain.lock().job_state(&q.jobs[0].address);
    let attestation = tally_client::ix::Attestation {
        oracles: vec![peer.pubkey(), q.leader_key],
        oracle_set_version: config.oracle_set_version,
        day: 0,
    };
    let settle = tally_client::ix::settle(
        &attestation,
        tally_client::Pubkey::new_unique(),
        job.mint,
        &[(
            q.jobs[0].address,
            tally_client::SettleReceipt {
                seq: 1,
                cumulative_units: 10,
                cumulative_output: 0,
                invoice_hash: [1; 32],
                period_end: 0,
            },
        )],
    );
    let message = solana_message::VersionedMessage::Legacy(solana_message::Message::new(
        &[settle],
        Some(&peer.pubkey()),
    ));
    let cosigner = Cosigner::new(
        peer.insecure_clone(),
        Arc::clone(&q.peers[0].store),
        Arc::clone(&q.chain.0) as Arc<dyn QuorumView>,
        Peers::new(&QuorumSettings {
            peers: Vec::new(),
            term_secs: 30,
            signature_secs: 120,
        })
        .unwrap(),
    );
    let refused = cosigner
        .review(&quorum::Proposal::new(message, &[]))
        .unwrap_err();
    assert_eq!(refused, quorum::Refusal::PaysFees(peer.pubkey()));
    let _ = std::fs::remove_dir_all(&q.dir);
}

/// A leader's receipt that another leader beat to its seq is not taken for landed on
/// the seq alone (it was, before: the store confirmed the wrong receipt, built the
/// next one on its hash, and co-signers refused the job forever). While no peer can
/// tell what landed, the receipt stays pending, its records bound to it: neither
/// confirmed nor written off, and nothing new is billed on top of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receipt_another_leader_landed_first_is_not_taken_for_this_ones() {
    use tally_client::ix::{self, Attestation};
    use tally_client::SettleReceipt;

    let q = quorum3("quorum-beaten").await;
    let now = q.chain.clock().unwrap().unix_timestamp;
    let job = q.jobs[0].address;
    let records: Vec<UsageRecord> = (0..4).map(|i| record(&q.jobs[0], i, now)).collect();
    for r in &records {
        q.report(r);
    }
    // Both peers down: the leader's receipt 1 is written ahead and cannot land.
    q.stop_peer(0);
    q.stop_peer(1);
    let report = q.round();
    assert_eq!((report.confirmed, report.failed), (0, 1), "{report:?}");

    // Meanwhile the other two oracles settle receipts 1 and 2 of their own.
    let (authority, mint, version) = {
        let chain = q.chain.lock();
        let state = chain.job_state(&job);
        let operator: tally::state::Operator =
            chain.anchor_account(&state.operator).unwrap().unwrap();
        let config = tally_client::ops::config(&*chain).unwrap();
        (operator.authority, state.mint, config.oracle_set_version)
    };
    let day = tally::state::utc_day(now);
    let (o1, o2) = (&q.peers[0].oracle, &q.peers[1].oracle);
    let attestation = Attestation {
        oracles: vec![o1.pubkey(), o2.pubkey()],
        oracle_set_version: version,
        day,
    };
    let mut chain = q.chain.clone();
    chain
        .send(
            &[ix::open_ledgers(o1.pubkey(), authority, mint, day)],
            o1,
            &[],
        )
        .unwrap();
    for seq in 1..=2 {
        let theirs = SettleReceipt {
            seq,
            cumulative_units: seq,
            cumulative_output: 0,
            invoice_hash: [u8::try_from(seq).unwrap(); 32],
            period_end: now,
        };
        chain
            .send(
                &[ix::settle(&attestation, authority, mint, &[(job, theirs)])],
                o1,
                &[o2],
            )
            .unwrap();
    }
    assert_eq!(q.settled(&q.jobs[0]), (2, 2));

    // The leader's next rounds (peers still down, catch-up impossible): its receipt
    // 1 is not found "landed", not written off, and its records stay bound to it.
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let report = q.round();
        assert_eq!(report.recovered, 0, "{report:?}");
        assert!(report.written_off.is_empty(), "{report:?}");
        assert_eq!(report.sent, 0, "{report:?}");
    }
    let leaders = q.leader.store.submissions_of(&job.to_string()).unwrap();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    assert_eq!(
        (leaders[0].seq, &leaders[0].state),
        (1, &tally_oracle::store::SubmissionState::Pending),
        "{leaders:?}"
    );
    let billing = q.leader.store.billing().unwrap();
    assert!(
        billing
            .iter()
            .all(|(_, b)| matches!(b, Billing::Submitted { seq: 1, .. })),
        "{billing:?}"
    );
}
