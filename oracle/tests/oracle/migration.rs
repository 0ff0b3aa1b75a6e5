//! A live deployment upgrades: a store written by the previous oracle (schema 1:
//! records and submissions keyed by job address, attached by an id watermark,
//! invoices only as files) is upgraded in place when the new oracle opens it, on
//! SQLite and on PostgreSQL. What landed stays landed, what was pending is resumed
//! exactly once, the running totals and the invoice chain carry on, and the old
//! invoice files are taken into the store.
use std::path::Path;

use tally_oracle::batcher::Batcher;
use tally_oracle::invoice::{hex, sha256, Invoice, InvoiceLine};
use tally_oracle::store::{Billing, Store, SubmissionState, LEGACY_NONCE};
use tally_tests::JobHandle;

/// The previous oracle's schema, as it created it.
pub(super) const V1_SQLITE: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE records (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job TEXT NOT NULL,
        request_id TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        gpu_ms INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        source TEXT NOT NULL,
        UNIQUE (job, request_id)
    );
    CREATE TABLE submissions (
        job TEXT NOT NULL,
        seq INTEGER NOT NULL,
        cumulative_units INTEGER NOT NULL,
        invoice_hash BLOB NOT NULL,
        period_end INTEGER NOT NULL,
        last_record INTEGER NOT NULL,
        confirmed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (job, seq)
    );";

const V1_POSTGRES: &str = "
    CREATE TABLE records (
        id BIGSERIAL PRIMARY KEY,
        job TEXT NOT NULL,
        request_id TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        gpu_ms BIGINT NOT NULL,
        finished_at BIGINT NOT NULL,
        source TEXT NOT NULL,
        UNIQUE (job, request_id)
    );
    CREATE TABLE submissions (
        job TEXT NOT NULL,
        seq BIGINT NOT NULL,
        cumulative_units BIGINT NOT NULL,
        invoice_hash BYTEA NOT NULL,
        period_end BIGINT NOT NULL,
        last_record BIGINT NOT NULL,
        confirmed BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (job, seq)
    );";

/// A store of the previous schema, written the way the previous oracle wrote it.
enum V1 {
    Sqlite(rusqlite::Connection),
    Postgres(tokio::runtime::Runtime, tokio_postgres::Client),
}

impl V1 {
    fn sqlite(path: &Path) -> Self {
        let db = rusqlite::Connection::open(path).unwrap();
        db.execute_batch(V1_SQLITE).unwrap();
        V1::Sqlite(db)
    }

    fn postgres(url: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client.batch_execute(V1_POSTGRES).await.unwrap();
            client
        });
        V1::Postgres(runtime, client)
    }

    /// Inserts a record; returns its id.
    fn record(&self, job: &str, i: u64, finished_at: i64) -> (i64, InvoiceLine) {
        let line = InvoiceLine {
            request_id: format!("req-{i}"),
            model: "llama-3-8b".into(),
            prompt_tokens: 10 + i,
            completion_tokens: 20,
            gpu_ms: 100,
            finished_at,
            source: "node-report".into(),
            upstream_id: String::new(),
            counted_by: String::new(),
            key_id: String::new(),
        };
        let values = (
            i64::try_from(line.prompt_tokens).unwrap(),
            i64::try_from(line.completion_tokens).unwrap(),
            i64::try_from(line.gpu_ms).unwrap(),
        );
        let id = match self {
            V1::Sqlite(db) => {
                db.execute(
                    "INSERT INTO records (job, request_id, model, prompt_tokens, completion_tokens, gpu_ms, finished_at, source)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    rusqlite::params![job, line.request_id, line.model, values.0, values.1, values.2, finished_at, line.source],
                )
                .unwrap();
                db.last_insert_rowid()
            }
            V1::Postgres(runtime, client) => runtime.block_on(async {
                client
                    .query_one(
                        "INSERT INTO records (job, request_id, model, prompt_tokens, completion_tokens, gpu_ms, finished_at, source)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                        &[&job, &line.request_id, &line.model, &values.0, &values.1, &values.2, &finished_at, &line.source],
                    )
                    .await
                    .unwrap()
                    .get(0)
            }),
        };
        (id, line)
    }

    fn submission(
        &self,
        job: &str,
        seq: i64,
        cumulative: i64,
        hash: &[u8; 32],
        period_end: i64,
        last_record: i64,
        confirmed: bool,
    ) {
        match self {
            V1::Sqlite(db) => {
                db.execute(
                    "INSERT INTO submissions (job, seq, cumulative_units, invoice_hash, period_end, last_record, confirmed)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    rusqlite::params![job, seq, cumulative, hash.to_vec(), period_end, last_record, i64::from(confirmed)],
                )
                .unwrap();
            }
            V1::Postgres(runtime, client) => runtime.block_on(async {
                client
                    .execute(
                        "INSERT INTO submissions (job, seq, cumulative_units, invoice_hash, period_end, last_record, confirmed)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[&job, &seq, &cumulative, &hash.to_vec(), &period_end, &last_record, &confirmed],
                    )
                    .await
                    .unwrap();
            }),
        }
    }
}

/// The previous oracle's invoice for `lines` (format 1, no nonce), written where it
/// wrote it (`<dir>/<job>/<seq>.json`); returns its bytes' hash.
fn v1_invoice(
    dir: &Path,
    job: &JobHandle,
    seq: u64,
    previous: [u8; 32],
    lines: &[InvoiceLine],
    cumulative: u64,
    period_end: i64,
) -> [u8; 32] {
    let units: u64 = lines
        .iter()
        .map(|l| l.prompt_tokens + l.completion_tokens)
        .sum();
    let invoice = Invoice {
        version: 1,
        program: tally::ID.to_string(),
        job: job.address.to_string(),
        job_nonce: None,
        seq,
        previous_hash: hex(&previous),
        unit_kind: "tokens".into(),
        units,
        cumulative_units: cumulative,
        period_end,
        lines: lines.to_vec(),
    };
    let bytes = invoice.to_bytes().unwrap();
    let folder = dir.join(job.address.to_string());
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(format!("{seq}.json")), &bytes).unwrap();
    sha256(&bytes)
}

fn units(lines: &[InvoiceLine]) -> u64 {
    lines
        .iter()
        .map(|l| l.prompt_tokens + l.completion_tokens)
        .sum()
}

/// The story, on either backend: job A has receipt 1 landed and receipt 2 written
/// but never sent; job B's receipt 1 landed but its answer was lost (pending in the
/// store, settled on chain); both have records no receipt covers yet.
fn upgrade_in_place(name: &str, location: impl Fn(&Path) -> String, old: impl Fn(&Path) -> V1) {
    let mut s = super::setup(name, 2);
    let (a, b) = (s.jobs[0], s.jobs[1]);
    let (a_text, b_text) = (a.address.to_string(), b.address.to_string());
    let invoices = s.dir.join("invoices");
    let now = s.world.env.now();
    let v1 = old(&s.dir);
    let mut a_lines = Vec::new();
    let mut b_lines = Vec::new();
    let mut ids = Vec::new();
    for i in 0..10u64 {
        let (job, lines) = if i % 3 == 2 {
            (&b_text, &mut b_lines)
        } else {
            (&a_text, &mut a_lines)
        };
        let (id, line) = v1.record(job, i, now);
        ids.push(id);
        lines.push((id, line));
    }
    let watermark = |lines: &[(i64, InvoiceLine)], n: usize| lines[n - 1].0;
    let take = |lines: &[(i64, InvoiceLine)], from: usize, to: usize| -> Vec<InvoiceLine> {
        lines[from..to].iter().map(|(_, l)| l.clone()).collect()
    };
    // A: receipt 1 over its first 3 records, landed.
    let a1 = take(&a_lines, 0, 3);
    let a1_units = units(&a1);
    let a1_hash = v1_invoice(&invoices, &a, 1, [0; 32], &a1, a1_units, now);
    let mut receipt = s.world.receipt(1, a1_units);
    receipt.invoice_hash = a1_hash;
    receipt.period_end = now;
    tally_tests::expect_ok(s.world.settle(&s.operator, &[(a.address, receipt)]));
    v1.submission(
        &a_text,
        1,
        i64::try_from(a1_units).unwrap(),
        &a1_hash,
        now,
        watermark(&a_lines, 3),
        true,
    );
    // A: receipt 2 over 2 more, written ahead, never sent.
    let a2 = take(&a_lines, 3, 5);
    let a2_cumulative = a1_units + units(&a2);
    let a2_hash = v1_invoice(&invoices, &a, 2, a1_hash, &a2, a2_cumulative, now);
    v1.submission(
        &a_text,
        2,
        i64::try_from(a2_cumulative).unwrap(),
        &a2_hash,
        now,
        watermark(&a_lines, 5),
        false,
    );
    // B: receipt 1 over its first 2 records, landed, its answer lost.
    let b1 = take(&b_lines, 0, 2);
    let b1_units = units(&b1);
    let b1_hash = v1_invoice(&invoices, &b, 1, [0; 32], &b1, b1_units, now);
    let mut receipt = s.world.receipt(1, b1_units);
    receipt.invoice_hash = b1_hash;
    receipt.period_end = now;
    tally_tests::expect_ok(s.world.settle(&s.operator, &[(b.address, receipt)]));
    v1.submission(
        &b_text,
        1,
        i64::try_from(b1_units).unwrap(),
        &b1_hash,
        now,
        watermark(&b_lines, 2),
        false,
    );
    drop(v1);

    // The new oracle opens the store: upgraded in place.
    let store = Store::connect(&location(&s.dir)).unwrap();
    assert_eq!(store.legacy_jobs().unwrap().len(), 2);
    let pending = store.pending_submissions().unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|p| (p.job.clone(), p.job_nonce, p.seq))
            .collect::<Vec<_>>(),
        {
            let mut want = vec![
                (a_text.clone(), LEGACY_NONCE, 2),
                (b_text.clone(), LEGACY_NONCE, 1),
            ];
            want.sort();
            want
        }
    );
    assert_eq!(store.record_count().unwrap(), 10);
    assert!(store.try_lead().unwrap());
    let batcher = Batcher::new(
        store,
        s.world.oracles[0].insecure_clone(),
        tally_oracle::clock::ChainClock::new(),
    )
    .with_invoices_dir(invoices.clone());
    // Round 1: adopted into the jobs open at the addresses; A's receipt 2 is sent
    // once, B's recognized as landed; B's waiting records make its receipt 2.
    s.world.env.advance(1);
    let round = batcher.run_round(&mut *s.world.env).unwrap();
    assert_eq!(round.recovered, 1, "{round:?}");
    assert!(round.written_off.is_empty(), "{round:?}");
    assert_eq!(batcher.store.legacy_jobs().unwrap(), Vec::<String>::new());
    // Round 2: A's waiting records.
    s.world.env.advance(1);
    let round = batcher.run_round(&mut *s.world.env).unwrap();
    assert_eq!(round.failed, 0, "{round:?}");
    assert_eq!(batcher.run_round(&mut *s.world.env).unwrap().sent, 0);

    let all =
        |lines: &[(i64, InvoiceLine)]| lines.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>();
    let a_state = s.world.env.job(&a.address);
    let b_state = s.world.env.job(&b.address);
    assert_eq!(
        (a_state.last_seq, a_state.settled_units),
        (3, units(&all(&a_lines))),
        "A: 1 landed before, 2 resent once, 3 the rest"
    );
    assert_eq!(
        (b_state.last_seq, b_state.settled_units),
        (2, units(&all(&b_lines))),
        "B: 1 recovered, never resent; 2 the rest"
    );
    // The invoice chains carry on from the old files, which are now in the store:
    // the first invoice of each job verifies against the chain from the store alone.
    for (job, state) in [(&a, a_state), (&b, b_state)] {
        let verified = tally_oracle::invoice::verify_in_store(
            &*s.world.env,
            &batcher.store,
            &job.address.to_string(),
            Some(1),
        )
        .unwrap();
        assert_eq!(
            (verified.settled_seq, verified.settled_units),
            (state.last_seq, state.settled_units)
        );
    }
    let a3: Invoice = serde_json::from_slice(
        &batcher
            .store
            .invoice(&a_text, a_state.nonce, 3)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(a3.previous_hash, hex(&a2_hash));
    // Every record is on exactly one confirmed receipt.
    let billing = batcher.store.billing().unwrap();
    assert_eq!(billing.len(), 10);
    assert!(billing
        .iter()
        .all(|(_, b)| matches!(b, Billing::Submitted { .. })));
    for job in [&a_text, &b_text] {
        assert!(batcher
            .store
            .submissions_of(job)
            .unwrap()
            .iter()
            .all(|s| s.state == SubmissionState::Confirmed));
    }
    s.world.check_solvency();
}

#[test]
fn a_sqlite_store_of_the_previous_schema_is_upgraded_in_place() {
    upgrade_in_place(
        "migrate-sqlite",
        |dir| dir.join("oracle.db").to_string_lossy().into_owned(),
        |dir| V1::sqlite(&dir.join("oracle.db")),
    );
}

#[test]
fn a_postgres_store_of_the_previous_schema_is_upgraded_in_place() {
    let Some(pg) = super::postgres::PgServer::start_or_skip("pg-migrate") else {
        return;
    };
    let url = pg.url.clone();
    upgrade_in_place(
        "migrate-postgres",
        |_| url.clone(),
        |_| V1::postgres(&pg.url),
    );
}
