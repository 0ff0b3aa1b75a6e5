//! The PostgreSQL store, against a real PostgreSQL server started privately for the
//! run (initdb into a temp dir, its own port, trust auth on loopback, stopped on drop).
//! The same contract as the SQLite store; replicas share one database, all take
//! records, one settles.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tally_oracle::config::OracleConfig;
use tally_oracle::daemon::Daemon;
use tally_oracle::node_report::NodeRecord;
use tally_oracle::store::{Recorded, Store, Submission, UsageRecord};

/// A private PostgreSQL server.
pub struct PgServer {
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    user: Option<&'static str>,
}

fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TALLY_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").is_file() && p.join("pg_ctl").is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgServer {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.user {
            // PostgreSQL refuses to run as root: run it as its own user.
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// Starts a server, or says why it cannot (printed by the caller as a skip).
    pub fn start(name: &str) -> Result<Self, String> {
        let bin = find_bin().ok_or(
            "no PostgreSQL server binaries (initdb, pg_ctl): install postgresql, or set TALLY_PG_BIN",
        )?;
        let dir = super::temp_dir(name);
        let user = is_root().then_some("postgres");
        if let Some(user) = user {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(&dir)
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("cannot hand {} to the {user} user", dir.display()));
            }
        }
        let port = super::free_port();
        let server = Self {
            url: format!("postgres://tally@127.0.0.1:{port}/postgres"),
            bin,
            data: dir.join("data"),
            user,
        };
        let run = |mut c: Command, what: &str| -> Result<(), String> {
            let out = c.output().map_err(|e| format!("{what}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{what} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let mut initdb = server.command("initdb");
        initdb
            .args([
                "-U",
                "tally",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&server.data);
        run(initdb, "initdb")?;
        let mut pg_ctl = server.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&server.data)
            .arg("-l")
            .arg(dir.join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -h 127.0.0.1 -k {} -c fsync=off",
                dir.display()
            ))
            .args(["-w", "start"]);
        run(pg_ctl, "pg_ctl start")?;
        Ok(server)
    }

    /// Starts one, or prints the skip line and returns None.
    pub fn start_or_skip(name: &str) -> Option<Self> {
        match Self::start(name) {
            Ok(server) => Some(server),
            Err(reason) if std::env::var_os("TALLY_REQUIRE_POSTGRES").is_some() => {
                panic!(
                    "TALLY_REQUIRE_POSTGRES is set and no PostgreSQL server could start: {reason}"
                )
            }
            Err(reason) => {
                println!("postgres store tests skipped: {reason}");
                None
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn usage(job: &str, i: u64) -> UsageRecord {
    UsageRecord {
        job: job.into(),
        request_id: format!("r{i}"),
        model: "m".into(),
        prompt_tokens: i,
        completion_tokens: 2 * i,
        gpu_ms: 10,
        finished_at: 1_000 + i64::try_from(i).unwrap(),
        source: "node-report".into(),
        ..UsageRecord::default()
    }
}

/// What every store backend must do.
fn contract(store: &Store) {
    assert_eq!(store.record(&usage("A", 1)).unwrap(), Recorded::New);
    assert_eq!(store.record(&usage("A", 2)).unwrap(), Recorded::New);
    assert_eq!(store.record(&usage("B", 1)).unwrap(), Recorded::New);
    assert_eq!(store.record(&usage("A", 1)).unwrap(), Recorded::Duplicate);
    assert_eq!(store.record_count().unwrap(), 3);
    assert_eq!(store.jobs_with_new_records().unwrap(), vec!["A", "B"]);
    let a = store.records_after("A", 0).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[1].1, usage("A", 2));
    assert_eq!(store.unsettled().unwrap(), (3, Some(1_001)));

    let submission = Submission {
        job: "A".into(),
        seq: 1,
        cumulative_units: 9,
        invoice_hash: [7; 32],
        period_end: 1_002,
        last_record: a[1].0,
        confirmed: false,
    };
    store.write_submission(&submission).unwrap();
    // The write-ahead record is unique per (job, seq).
    assert!(store.write_submission(&submission).is_err());
    assert_eq!(
        store.pending_submissions().unwrap(),
        vec![submission.clone()]
    );
    assert_eq!(store.jobs_with_new_records().unwrap(), vec!["B"]);
    assert_eq!(
        store.unsettled().unwrap(),
        (3, Some(1_001)),
        "not confirmed yet"
    );
    store.confirm("A", 1).unwrap();
    assert_eq!(store.pending_submissions().unwrap(), Vec::new());
    assert_eq!(
        store.last_submission("A").unwrap(),
        Some(Submission {
            confirmed: true,
            ..submission
        })
    );
    assert_eq!(store.last_submission("B").unwrap(), None);
    assert_eq!(store.unsettled().unwrap(), (1, Some(1_001)));
    assert_eq!(store.all_records().unwrap().len(), 3);
    assert!(store.try_lead().unwrap());
}

#[test]
fn the_store_contract_holds_on_sqlite_and_on_postgres() {
    let dir = super::temp_dir("store-contract");
    contract(&Store::connect(&dir.join("oracle.db").to_string_lossy()).unwrap());
    let Some(pg) = PgServer::start_or_skip("pg-contract") else {
        return;
    };
    let store = Store::connect(&pg.url).unwrap();
    contract(&store);
    // Reconnecting finds everything; a second replica waits for the settlement lock
    // until the first lets go of it.
    let replica = Store::connect(&pg.url).unwrap();
    assert_eq!(replica.record_count().unwrap(), 3);
    assert!(!replica.try_lead().unwrap());
    drop(store);
    let mut led = false;
    for _ in 0..100 {
        if replica.try_lead().unwrap() {
            led = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(led, "the lock is released when its holder disconnects");

    let err = Store::connect("postgres://tally:hunter2@127.0.0.1:1/none")
        .err()
        .unwrap();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

fn replica_config(pg: &str, dir: &Path) -> OracleConfig {
    OracleConfig::parse(
        &format!(
            "store = \"{pg}\"\ninvoices_dir = \"{}\"\n[batch]\ninterval_secs = 0.1\n[admin]\nlisten = \"127.0.0.1:0\"\n[node_reports]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("invoices").display()
        ),
        Vec::new(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_one_postgres_all_take_reports_and_settle_each_once() {
    let Some(pg) = PgServer::start_or_skip("pg-replicas-server") else {
        return;
    };
    let mut f = super::daemon::fixture("pg-replicas", 2);
    let oracle = f.world.oracles[0].insecure_clone();
    let chain = super::daemon::lend(&mut f.world);
    let config = replica_config(&pg.url, &f.dir);
    let a = Daemon::start(&config, Arc::clone(&chain), oracle.insecure_clone())
        .await
        .unwrap();
    let b = Daemon::start(&config, Arc::clone(&chain), oracle)
        .await
        .unwrap();
    let urls = [a.node_reports.unwrap(), b.node_reports.unwrap()]
        .map(|addr| format!("http://{addr}/v1/reports"));
    let mut expected = [0u64; 2];
    for i in 0..60u64 {
        let job = usize::try_from(i % 2).unwrap();
        let report = NodeRecord {
            job: f.jobs[job].address.to_string(),
            request_id: format!("rep-{i}"),
            model: "m".into(),
            prompt_tokens: 3 + i % 4,
            completion_tokens: 5,
            gpu_ms: 1,
            started_at: f.now - 1,
            finished_at: f.now,
        }
        .sign(&f.node)
        .unwrap();
        expected[job] += report.record.prompt_tokens + report.record.completion_tokens;
        let body = serde_json::to_string(&report).unwrap();
        // Every report goes to one replica, then (a retry) to the other.
        let first = usize::try_from(i % 2).unwrap();
        let (status, text) = super::daemon::post(&urls[first], &body).await;
        assert_eq!(status, 201, "{text}");
        let (status, text) = super::daemon::post(&urls[1 - first], &body).await;
        assert_eq!(status, 409, "{text}");
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    super::daemon::give_back(&mut f.world, chain).await;
    for (job, units) in f.jobs.iter().zip(expected) {
        assert_eq!(f.world.env.job(&job.address).settled_units, units);
    }
    f.world.check_solvency();
}

/// The store's additions for the gateway: one meter per job, revocations, usage totals
/// by job and key, and the columns records gained.
fn gateway_contract(store: &Store) {
    // The first source to claim a job meters it; the other sees who does.
    assert_eq!(store.claim_meter("JobM", "gateway", 10).unwrap(), "gateway");
    assert_eq!(
        store.claim_meter("JobM", "node-report", 11).unwrap(),
        "gateway"
    );
    assert_eq!(
        store.claim_meter("JobN", "node-report", 12).unwrap(),
        "node-report"
    );
    // Revocations are idempotent and listed.
    assert!(store.revoke_key("key-1", "JobM", 13).unwrap());
    assert!(!store.revoke_key("key-1", "JobM", 14).unwrap());
    assert_eq!(store.revoked_keys().unwrap(), vec!["key-1".to_string()]);
    // Totals by job and by key, up to a deadline; the new columns round-trip.
    for (i, finished_at) in [(0u64, 100), (1, 200), (2, 300)] {
        let record = UsageRecord {
            job: "JobM".into(),
            request_id: format!("gw-{i}"),
            model: "m".into(),
            prompt_tokens: 10,
            completion_tokens: 5 + i,
            gpu_ms: 1_000,
            finished_at,
            source: "gateway".into(),
            upstream_id: format!("chatcmpl-{i}"),
            counted_by: "tokenizer".into(),
            key_id: if i == 1 {
                "key-2".into()
            } else {
                String::new()
            },
        };
        assert_eq!(store.record(&record).unwrap(), Recorded::New);
    }
    let totals = store.job_usage("JobM", 200).unwrap();
    assert_eq!(
        (totals.requests, totals.tokens, totals.gpu_ms),
        (2, 31, 2_000)
    );
    let all = store.job_usage("JobM", i64::MAX).unwrap();
    assert_eq!((all.requests, all.tokens), (3, 48));
    let key = store.key_usage("key-2", i64::MAX).unwrap();
    assert_eq!((key.requests, key.tokens), (1, 16));
    assert_eq!(store.job_usage("nobody", i64::MAX).unwrap().requests, 0);
    // Metered and not yet settled: what no confirmed receipt covers.
    assert_eq!(store.unsettled_usage("JobM", i64::MAX).unwrap(), all);
    let first = store.records_after("JobM", 0).unwrap()[0].0;
    let submission = Submission {
        job: "JobM".into(),
        seq: 1,
        cumulative_units: 15,
        invoice_hash: [1; 32],
        period_end: 100,
        last_record: first,
        confirmed: false,
    };
    store.write_submission(&submission).unwrap();
    assert_eq!(
        store.unsettled_usage("JobM", i64::MAX).unwrap(),
        all,
        "a receipt not yet confirmed settles nothing"
    );
    store.confirm("JobM", 1).unwrap();
    let left = store.unsettled_usage("JobM", i64::MAX).unwrap();
    assert_eq!((left.requests, left.tokens), (2, 33));
    assert_eq!(store.unsettled_usage("JobM", 200).unwrap().requests, 1);
    let (_, second) = store.records_after("JobM", 0).unwrap().remove(1);
    assert_eq!(
        (
            second.upstream_id.as_str(),
            second.counted_by.as_str(),
            second.key_id.as_str()
        ),
        ("chatcmpl-1", "tokenizer", "key-2")
    );
}

#[test]
fn the_gateway_additions_hold_on_sqlite_and_on_postgres() {
    let dir = super::temp_dir("store-gateway");
    gateway_contract(&Store::connect(&dir.join("oracle.db").to_string_lossy()).unwrap());
    let Some(pg) = PgServer::start_or_skip("pg-gateway") else {
        return;
    };
    gateway_contract(&Store::connect(&pg.url).unwrap());
    // Reconnecting (as a restart or a replica does) adds nothing twice.
    let again = Store::connect(&pg.url).unwrap();
    assert_eq!(
        again.claim_meter("JobM", "node-report", 20).unwrap(),
        "gateway"
    );
}

#[test]
fn a_store_written_before_the_gateway_columns_opens_and_gains_them() {
    let dir = super::temp_dir("store-upgrade");
    let path = dir.join("oracle.db");
    {
        // The records table as it was.
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE TABLE records (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, request_id TEXT NOT NULL,
                 model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
                 gpu_ms INTEGER NOT NULL, finished_at INTEGER NOT NULL, source TEXT NOT NULL,
                 UNIQUE (job, request_id));
             INSERT INTO records (job, request_id, model, prompt_tokens, completion_tokens, gpu_ms, finished_at, source)
             VALUES ('JobOld', 'r-1', 'm', 3, 4, 5, 6, 'node-report');",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let old = store.all_records().unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(
        (old[0].counted_by.as_str(), old[0].key_id.as_str()),
        ("", "")
    );
    gateway_contract(&store);
    drop(store);
    assert_eq!(Store::open(&path).unwrap().record_count().unwrap(), 4);
}
