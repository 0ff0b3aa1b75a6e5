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
use tally_oracle::store::{
    Billing, LookupTableRow, NewSubmission, QueryPlan, RecordWriteOff, Recorded, RoundWrite, Store,
    Submission, SubmissionState, TableState, UsageRecord, WriteOff,
};
use tally_oracle::units::Totals;

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

impl PgServer {
    /// Restarts the server (`fast`: a clean shutdown; `immediate`: like a crash) on
    /// the same port and data; returns once it accepts connections again.
    pub fn restart(&self, mode: &str) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "restart"])
            .arg("-l")
            .arg(self.data.with_file_name("server.log"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl restart: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
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
        job_nonce: None,
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

/// Every plan a round runs uses an index: none scans a table.
pub fn assert_indexed(plans: &[QueryPlan], postgres: bool) {
    assert_eq!(plans.len(), 14, "{plans:?}");
    for plan in plans {
        println!(
            "{} ({}):\n  {}\n",
            plan.name,
            plan.sql,
            plan.plan.replace('\n', "\n  ")
        );
        if postgres {
            assert!(
                !plan.plan.contains("Seq Scan"),
                "{}: no index serves it:\n{}",
                plan.name,
                plan.plan
            );
            assert!(plan.plan.contains("Index"), "{}:\n{}", plan.name, plan.plan);
        } else {
            for line in plan.plan.lines() {
                if line.contains("SCAN") || line.contains("SEARCH") {
                    assert!(
                        line.contains("USING"),
                        "{}: scans a table:\n{}",
                        plan.name,
                        plan.plan
                    );
                }
            }
        }
    }
}

/// What every store backend must do.
fn contract(store: &Store) {
    // Settlements are written by the leader only.
    assert!(store.try_lead().unwrap());
    assert_eq!(store.record(&usage("A", 1)).unwrap(), Recorded::New);
    assert_eq!(store.record(&usage("A", 2)).unwrap(), Recorded::New);
    assert_eq!(store.record(&usage("B", 1)).unwrap(), Recorded::New);
    assert_eq!(store.record(&usage("A", 1)).unwrap(), Recorded::Duplicate);
    // A group: new, duplicate of an earlier one, duplicate within the group.
    assert_eq!(
        store
            .record_batch(&[usage("C", 1), usage("A", 2), usage("C", 1)])
            .unwrap(),
        vec![Recorded::New, Recorded::Duplicate, Recorded::Duplicate]
    );
    assert_eq!(store.record_count().unwrap(), 4);
    assert_eq!(store.jobs_with_new_records().unwrap(), vec!["A", "B", "C"]);
    let a = store.waiting_records("A", 10).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[1].record, usage("A", 2));
    assert_eq!(store.waiting_records("A", 1).unwrap().len(), 1, "capped");
    assert_eq!(store.unsettled().unwrap(), (4, Some(1_001)));

    let submission = Submission {
        job: "A".into(),
        job_nonce: 7,
        seq: 1,
        cumulative_units: 9,
        cumulative_output: 4,
        invoice_hash: [7; 32],
        period_end: 1_002,
        metered: Totals {
            tokens: 9,
            requests: 2,
            gpu_ms: 20,
            output_tokens: 4,
        },
        records: 2,
        oldest_finished_at: Some(1_001),
        state: SubmissionState::Pending,
    };
    let write = |seq: u64, ids: Vec<i64>| NewSubmission {
        submission: Submission {
            seq,
            ..submission.clone()
        },
        invoice: format!("{{\"seq\":{seq}}}").into_bytes(),
        record_ids: ids,
    };
    store
        .write_submission(&write(1, a.iter().map(|r| r.id).collect()))
        .unwrap();
    // The write-ahead record is unique per (job, nonce, seq); a record is attached
    // once: a second attach fails and writes nothing at all.
    assert!(store.write_submission(&write(1, Vec::new())).is_err());
    let again = store
        .write_submission(&write(2, vec![a[0].id]))
        .unwrap_err();
    assert!(again.to_string().contains("another batcher"), "{again}");
    assert_eq!(store.last_submission("A", 7).unwrap().unwrap().seq, 1);
    assert_eq!(store.invoice("A", 7, 2).unwrap(), None, "rolled back");
    assert_eq!(
        store.pending_submissions().unwrap(),
        vec![submission.clone()]
    );
    assert_eq!(store.jobs_with_new_records().unwrap(), vec!["B", "C"]);
    assert_eq!(
        store.unsettled().unwrap(),
        (4, Some(1_001)),
        "not confirmed yet"
    );
    assert_eq!(
        store.invoice("A", 7, 1).unwrap().as_deref(),
        Some(&b"{\"seq\":1}"[..])
    );
    store.confirm("A", 7, 1).unwrap();
    assert_eq!(store.pending_submissions().unwrap(), Vec::new());
    assert_eq!(
        store.last_submission("A", 7).unwrap(),
        Some(Submission {
            state: SubmissionState::Confirmed,
            ..submission.clone()
        })
    );
    // Another incarnation of the job (reopened at the address) starts clean.
    assert_eq!(store.last_submission("A", 8).unwrap(), None);
    assert_eq!(store.last_submission("B", 7).unwrap(), None);
    assert_eq!(store.unsettled().unwrap(), (2, Some(1_001)));
    assert_eq!(
        store.submitted_records("A", Some(7)).unwrap().len(),
        2,
        "attached and bound to nonce 7"
    );

    // Records that can never be billed are retired, with the reason logged.
    let b = store.waiting_records("B", 10).unwrap();
    store
        .write_round(&RoundWrite {
            record_write_offs: vec![RecordWriteOff {
                job: "B".into(),
                job_nonce: None,
                record_ids: b.iter().map(|r| r.id).collect(),
                reason: "no_such_job".into(),
                units: 3,
            }],
            ..RoundWrite::default()
        })
        .unwrap();
    assert_eq!(store.jobs_with_new_records().unwrap(), vec!["C"]);
    assert_eq!(store.unsettled().unwrap(), (1, Some(1_001)));
    assert_eq!(
        store.write_offs().unwrap(),
        vec![WriteOff {
            job: "B".into(),
            job_nonce: None,
            seq: None,
            reason: "no_such_job".into(),
            records: 1,
            units: 3,
        }]
    );
    let billing = store.billing().unwrap();
    assert_eq!(
        billing.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
        vec![
            Billing::Submitted {
                job_nonce: 7,
                seq: 1
            },
            Billing::Submitted {
                job_nonce: 7,
                seq: 1
            },
            Billing::WrittenOff,
            Billing::Waiting,
        ]
    );
    assert_eq!(store.all_records().unwrap().len(), 4);

    // Managed lookup tables: written before their create is sent, then updated.
    let mut table = LookupTableRow {
        address: "T1".into(),
        authority: "O".into(),
        operator: "Op".into(),
        mint: "M".into(),
        recent_slot: 5,
        state: TableState::Creating,
    };
    store.save_lookup_table(&table).unwrap();
    table.state = TableState::Deactivated(9);
    store.save_lookup_table(&table).unwrap();
    assert_eq!(store.lookup_tables().unwrap(), vec![table.clone()]);
    table.state = TableState::Closed;
    store.save_lookup_table(&table).unwrap();
    assert_eq!(store.lookup_tables().unwrap(), Vec::new());

    assert!(store.try_lead().unwrap(), "still leading");
    assert_indexed(&store.query_plans().unwrap(), store.is_shared());
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
    assert_eq!(replica.record_count().unwrap(), 4);
    assert!(!replica.try_lead().unwrap());
    // A replica that does not lead cannot write settlements.
    let err = replica.confirm("A", 7, 1).unwrap_err();
    assert!(err.to_string().contains("settlement lock"), "{err}");
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

/// Every record is billed exactly once: for each job, the lines of the invoices of
/// every confirmed receipt (from the store) are its reports, each once, and the
/// store holds one record per report, each on a confirmed receipt.
fn assert_billed_exactly_once(store: &Store, reports: &[(String, String)]) {
    let mut billed: Vec<(String, String)> = Vec::new();
    let jobs: std::collections::BTreeSet<&String> = reports.iter().map(|(j, _)| j).collect();
    for job in jobs {
        for submission in store.submissions_of(job).unwrap() {
            assert_eq!(
                submission.state,
                SubmissionState::Confirmed,
                "{submission:?}"
            );
            let bytes = store
                .invoice(job, submission.job_nonce, submission.seq)
                .unwrap()
                .expect("every receipt's invoice is in the store");
            assert_eq!(
                tally_oracle::invoice::sha256(&bytes),
                submission.invoice_hash
            );
            let invoice: tally_oracle::invoice::Invoice = serde_json::from_slice(&bytes).unwrap();
            billed.extend(
                invoice
                    .lines
                    .into_iter()
                    .map(|l| (job.clone(), l.request_id)),
            );
        }
    }
    billed.sort();
    let mut want = reports.to_vec();
    want.sort();
    assert_eq!(billed.len(), want.len(), "lines billed vs reports");
    assert_eq!(billed, want, "each report billed exactly once");
    let billing = store.billing().unwrap();
    assert_eq!(billing.len(), reports.len(), "one record per report");
    assert!(
        billing
            .iter()
            .all(|(_, b)| matches!(b, Billing::Submitted { .. })),
        "every record is on a receipt"
    );
}

/// A signed report body of request `i` for job `job` of the fixture.
fn signed_report(f: &super::daemon::Fixture, job: usize, i: u64) -> (u64, String) {
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
    (
        report.record.prompt_tokens + report.record.completion_tokens,
        serde_json::to_string(&report).unwrap(),
    )
}

/// Posts `body` until a replica answers it (201 recorded or 409 already recorded);
/// returns the answer. Anything else (503 while the database restarts, a refused
/// connection) is retried.
async fn post_until_answered(http: &reqwest::Client, url: &str, body: &str) -> u16 {
    for _ in 0..2_000 {
        let sent = http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent.map(|r| r.status().as_u16()) {
            Ok(status @ (201 | 409)) => return status,
            Ok(400..=499) => panic!("a valid report was refused"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
        }
    }
    panic!("no replica answered a report at {url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_one_postgres_take_the_same_reports_concurrently_and_bill_each_once() {
    use futures_util::StreamExt;
    let Some(pg) = PgServer::start_or_skip("pg-replicas-server") else {
        return;
    };
    let mut f = super::daemon::fixture("pg-replicas", 4);
    let oracle = f.world.oracles[0].insecure_clone();
    let chain = super::daemon::lend(&mut f.world);
    let config = replica_config(&pg.url, &f.dir);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(
            Daemon::start(&config, Arc::clone(&chain), oracle.insecure_clone())
                .await
                .unwrap(),
        );
    }
    let urls: Vec<String> = replicas
        .iter()
        .map(|d| format!("http://{}/v1/reports", d.node_reports.unwrap()))
        .collect();
    let reports: Vec<(usize, u64, String)> = (0..400u64)
        .map(|i| {
            let job = usize::try_from(i % 4).unwrap();
            let (units, body) = signed_report(&f, job, i);
            (job, units, body)
        })
        .collect();
    let http = reqwest::Client::new();
    // Every report goes to two replicas at the same time (a worker's retry racing
    // its first try), 32 reports in flight: one replica records it, the other
    // answers that it is already recorded.
    let answers: Vec<(u16, u16)> = futures_util::stream::iter(reports.iter().enumerate())
        .map(|(i, (_, _, body))| {
            let (a, b) = (&urls[i % 3], &urls[(i + 1) % 3]);
            let http = &http;
            async move {
                tokio::join!(
                    post_until_answered(http, a, body),
                    post_until_answered(http, b, body)
                )
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (a, b) in &answers {
        let mut pair = [*a, *b];
        pair.sort_unstable();
        assert_eq!(pair, [201, 409], "recorded once, the other told so");
    }
    for replica in replicas {
        replica.stop().await.unwrap();
    }
    super::daemon::give_back(&mut f.world, chain).await;
    let mut expected = [0u64; 4];
    for (job, units, _) in &reports {
        expected[*job] += units;
    }
    for (job, units) in f.jobs.iter().zip(expected) {
        assert_eq!(f.world.env.job(&job.address).settled_units, units);
    }
    let ids: Vec<(String, String)> = (0..400u64)
        .map(|i| {
            (
                f.jobs[usize::try_from(i % 4).unwrap()].address.to_string(),
                format!("rep-{i}"),
            )
        })
        .collect();
    // The store's API blocks: off the async workers.
    tokio::task::block_in_place(|| {
        assert_billed_exactly_once(&Store::connect(&pg.url).unwrap(), &ids);
    });
    f.world.check_solvency();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_loses_and_doubles_nothing() {
    use futures_util::StreamExt;
    let Some(pg) = PgServer::start_or_skip("pg-restart-server") else {
        return;
    };
    let mut f = super::daemon::fixture("pg-restart", 3);
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
    let total = 600u64;
    let reports: Vec<(usize, u64, String)> = (0..total)
        .map(|i| {
            let job = usize::try_from(i % 3).unwrap();
            let (units, body) = signed_report(&f, job, i);
            (job, units, body)
        })
        .collect();
    let http = reqwest::Client::new();
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let restarts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = {
        let (urls, done, restarts, http) = (
            urls.clone(),
            Arc::clone(&done),
            Arc::clone(&restarts),
            http.clone(),
        );
        let bodies: Vec<String> = reports.iter().map(|(_, _, b)| b.clone()).collect();
        tokio::spawn(async move {
            futures_util::stream::iter(bodies.into_iter().enumerate())
                .map(|(i, body)| {
                    let (url, http) = (urls[i % 2].clone(), http.clone());
                    let (done, restarts) = (Arc::clone(&done), Arc::clone(&restarts));
                    async move {
                        // The later reports wait for the restarts: load before,
                        // during and after each one.
                        let i = i as u64;
                        let after = u64::from(i >= total / 2) + u64::from(i >= 5 * total / 6);
                        while restarts.load(std::sync::atomic::Ordering::Acquire) < after {
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        }
                        let status = post_until_answered(&http, &url, &body).await;
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        status
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<u16>>()
                .await
        })
    };
    // Restart the server twice under load: once cleanly, once as a crash.
    for (at, mode) in [(total / 3, "fast"), (2 * total / 3, "immediate")] {
        while done.load(std::sync::atomic::Ordering::Relaxed) < at {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let server = &pg;
        tokio::task::block_in_place(|| server.restart(mode));
        restarts.fetch_add(1, std::sync::atomic::Ordering::Release);
        let answered = done.load(std::sync::atomic::Ordering::Relaxed);
        println!("PostgreSQL restarted ({mode}) with {answered} of {total} reports answered");
        assert!(answered < total, "the restart came under load");
    }
    let statuses = load.await.unwrap();
    assert_eq!(statuses.len(), usize::try_from(total).unwrap());
    // A report whose 201 was lost to the restart is answered 409 on its retry:
    // either way it is recorded, once.
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    super::daemon::give_back(&mut f.world, chain).await;
    let mut expected = [0u64; 3];
    for (job, units, _) in &reports {
        expected[*job] += units;
    }
    for (job, units) in f.jobs.iter().zip(expected) {
        assert_eq!(f.world.env.job(&job.address).settled_units, units);
    }
    let ids: Vec<(String, String)> = (0..total)
        .map(|i| {
            (
                f.jobs[usize::try_from(i % 3).unwrap()].address.to_string(),
                format!("rep-{i}"),
            )
        })
        .collect();
    tokio::task::block_in_place(|| {
        assert_billed_exactly_once(&Store::connect(&pg.url).unwrap(), &ids);
    });
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
            job_nonce: None,
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
    assert!(store.try_lead().unwrap(), "one replica here: it leads");
    assert_eq!(store.unsettled_usage("JobM", None, i64::MAX).unwrap(), all);
    let first = store.waiting_records("JobM", 1).unwrap().remove(0);
    let mut metered = Totals::default();
    metered.add(&first.record);
    let submission = NewSubmission {
        submission: Submission {
            job: "JobM".into(),
            job_nonce: 7,
            seq: 1,
            cumulative_units: 15,
            cumulative_output: 0,
            invoice_hash: [1; 32],
            period_end: 100,
            metered,
            records: 1,
            oldest_finished_at: Some(100),
            state: SubmissionState::Pending,
        },
        invoice: b"{}".to_vec(),
        record_ids: vec![first.id],
    };
    store.write_submission(&submission).unwrap();
    assert_eq!(
        store.unsettled_usage("JobM", Some(7), i64::MAX).unwrap(),
        all,
        "a receipt not yet confirmed settles nothing"
    );
    store.confirm("JobM", 7, 1).unwrap();
    let left = store.unsettled_usage("JobM", Some(7), i64::MAX).unwrap();
    assert_eq!((left.requests, left.tokens), (2, 33));
    assert_eq!(
        store
            .unsettled_usage("JobM", Some(7), 200)
            .unwrap()
            .requests,
        1
    );
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
        // The store as the oracle before the gateway's columns (and schema 2) made it.
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(super::migration::V1_SQLITE).unwrap();
        db.execute_batch(
            "INSERT INTO records (job, request_id, model, prompt_tokens, completion_tokens, gpu_ms, finished_at, source)
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
