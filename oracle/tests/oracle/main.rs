//! The oracle's durable core against the SBF program in the embedded chain: records
//! committed once, invoices whose hash lands on-chain, and settlement exactly once
//! across lost sends, lost answers and restarts.
use std::path::PathBuf;

use tally_client::chain::{Chain, ChainError, Confirmed, EmbeddedChain, Memcmp};
use tally_oracle::batcher::{BatchSettings, Batcher, TableWork, UnbillableReason};
use tally_oracle::invoice::{sha256, Invoice};
use tally_oracle::store::{Recorded, Store, TableState, UsageRecord};
use tally_tests::solana_signer::Signer;
use tally_tests::{ClientHandle, JobHandle, JobSpec, OperatorHandle, World};

mod crash;
mod daemon;
mod gateway;
mod gateway_billing;
mod migration;
mod postgres;
mod quorum;
mod quorum_validator;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-oracle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Posts a signed node report to an oracle until it answers (it may be starting or
/// restarting), trying every `pause`, at most `tries` times; the answer must be 201
/// (recorded) or 409 (already held).
async fn post_report(
    http: &reqwest::Client,
    url: &str,
    body: &str,
    pause: std::time::Duration,
    tries: usize,
) {
    for _ in 0..tries {
        let sent = http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent.map(|r| r.status().as_u16()) {
            Ok(201 | 409) => return,
            Ok(status) => panic!("{url} refused a valid report: {status}"),
            Err(_) => tokio::time::sleep(pause).await,
        }
    }
    panic!("{url} never answered in {tries} tries");
}

/// A loopback port free right now (for servers that must keep theirs across restarts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn record(job: &JobHandle, i: u64, finished_at: i64) -> UsageRecord {
    UsageRecord {
        job: job.address.to_string(),
        job_nonce: None,
        request_id: format!("req-{i}"),
        model: "llama-3-8b".into(),
        prompt_tokens: 10 + i % 7,
        completion_tokens: 20 + i % 11,
        gpu_ms: 150,
        finished_at,
        source: "gateway".into(),
        ..UsageRecord::default()
    }
}

/// A node report of request `request_id` (its counts vary with `i`), signed by
/// `node`, finished at `now`: its tokens and its JSON body.
fn signed_report_body(
    job: &tally_client::Pubkey,
    request_id: String,
    i: u64,
    now: i64,
    node: &ed25519_dalek::SigningKey,
) -> (u64, String) {
    let record = tally_oracle::node_report::NodeRecord {
        job: job.to_string(),
        request_id,
        model: "llama-3-8b".into(),
        prompt_tokens: 5 + i % 13,
        completion_tokens: 20 + i % 29,
        gpu_ms: 100,
        started_at: now - 1,
        finished_at: now,
    };
    let tokens = record.prompt_tokens + record.completion_tokens;
    (
        tokens,
        serde_json::to_string(&record.sign(node).unwrap()).unwrap(),
    )
}

struct Setup {
    world: World,
    operator: OperatorHandle,
    /// The client who opened every job (its wallet signs their job keys).
    client: ClientHandle,
    jobs: Vec<JobHandle>,
    dir: PathBuf,
}

/// A world with one operator and a client whose jobs are opened as `specs` say.
fn setup_with(name: &str, specs: &[JobSpec]) -> Setup {
    let mut world = World::builder().fee_bps(100).challenge_window(0).build();
    let operator = world.operator();
    let client = world.client(100_000_000);
    let jobs = specs
        .iter()
        .zip(0..)
        .map(|(spec, id)| world.open_job(&client, &operator, id, *spec))
        .collect();
    world.env.advance(60);
    Setup {
        world,
        operator,
        client,
        jobs,
        dir: temp_dir(name),
    }
}

fn setup(name: &str, jobs: usize) -> Setup {
    setup_with(name, &vec![JobSpec::default(); jobs])
}

fn batcher(setup: &Setup) -> Batcher {
    Batcher::new(
        Store::open(&setup.dir.join("oracle.db")).unwrap(),
        setup.world.oracles[0].insecure_clone(),
        tally_oracle::clock::ChainClock::new(),
    )
    .with_invoices_dir(setup.dir.join("invoices"))
    .with_max_receipts_per_tx(8)
}

/// Where the batcher exports invoice `seq` of `job` (its current incarnation).
fn invoice_path(setup: &Setup, job: &JobHandle, seq: u64) -> PathBuf {
    let nonce = setup.world.env.job(&job.address).nonce;
    tally_oracle::invoice::export_path(
        &setup.dir.join("invoices"),
        &job.address.to_string(),
        nonce,
        seq,
    )
}

fn expected_units(records: &[UsageRecord], job: &JobHandle) -> u64 {
    records
        .iter()
        .filter(|r| r.job == job.address.to_string())
        .map(|r| r.prompt_tokens + r.completion_tokens)
        .sum()
}

#[test]
fn input_and_output_tokens_settle_at_their_own_prices_to_the_base_unit() {
    // $0.15 / 1M input and $0.60 / 1M output tokens.
    let prices = tally_client::Prices {
        input: 150_000,
        output: 600_000,
    };
    let spec = JobSpec {
        prices: Some((prices.input, prices.output)),
        max_units: 10_000_000,
        ..JobSpec::default()
    };
    let mut s = setup_with("prices", &[spec, spec]);
    let b = batcher(&s);
    let now = s.world.env.now();
    let mut records = Vec::new();
    for round in 0..3u64 {
        for i in 0..25u64 {
            let mut r = record(&s.jobs[(i % 2) as usize], round * 100 + i, now);
            // Long prompts, short answers, odd counts: fractions of a base unit each.
            r.prompt_tokens = 1_000 + i * 37;
            r.completion_tokens = 50 + i * 13;
            b.store.record(&r).unwrap();
            records.push(r);
        }
        let report = b.run_round(&mut *s.world.env).unwrap();
        assert_eq!(report.failed, 0, "{report:?}");
        s.world.env.advance(1);
    }
    for job in &s.jobs {
        let mine: Vec<_> = records
            .iter()
            .filter(|r| r.job == job.address.to_string())
            .collect();
        let usage = tally_client::Usage {
            units: mine
                .iter()
                .map(|r| r.prompt_tokens + r.completion_tokens)
                .sum(),
            output: mine.iter().map(|r| r.completion_tokens).sum(),
        };
        let state = s.world.env.job(&job.address);
        assert_eq!(
            (state.settled_units, state.settled_output),
            (usage.units, usage.output)
        );
        let owed = tally_client::amount_owed(prices, usage).unwrap();
        assert_eq!(
            u128::from(state.settled_gross),
            owed,
            "paid = owed, to the base unit"
        );
    }
}

#[test]
fn a_schema_4_store_gains_the_quorum_tables_and_keeps_its_records() {
    let s = setup("schema4", 1);
    let path = s.dir.join("oracle.db");
    let now = s.world.env.now();
    let written: Vec<UsageRecord> = (0..3).map(|i| record(&s.jobs[0], i, now)).collect();
    {
        let b = batcher(&s);
        for r in &written {
            b.store.record(r).unwrap();
        }
    }
    // What a version-4 oracle left: no evidence, no outbox cursors.
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "DROP TABLE evidence; DROP TABLE forwarded; UPDATE tally_schema SET version = 4;",
    )
    .unwrap();
    drop(db);

    let store = Store::open(&path).unwrap();
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT MAX(version) FROM tally_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, tally_oracle::store::SCHEMA_VERSION);
    assert_eq!(store.all_records().unwrap(), written);
    // Its gateway records are all in the outbox of a peer it never sent to, less
    // one whose evidence says it came from another oracle's gateway.
    store
        .save_evidence(&tally_oracle::store::Evidence {
            job: written[1].job.clone(),
            request_id: written[1].request_id.clone(),
            signer: "someone".into(),
            signature: "sig".into(),
        })
        .unwrap();
    let outbox: Vec<UsageRecord> = store
        .outbox("gateway", "peer", 10)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert_eq!(outbox, [written[0].clone(), written[2].clone()]);
    let first = store.outbox("gateway", "peer", 10).unwrap()[0].0;
    store.forwarded("peer", first).unwrap();
    store.forwarded("peer", first - 1).unwrap();
    assert_eq!(
        store.outbox("gateway", "peer", 10).unwrap().len(),
        1,
        "the cursor never moves back"
    );
}

#[test]
fn a_schema_3_store_gains_the_output_columns_and_its_pending_receipt_lands() {
    let mut s = setup("schema3", 1);
    let job = s.jobs[0];
    let path = s.dir.join("oracle.db");
    let now = s.world.env.now();
    let mut units = 0;
    {
        let b = batcher(&s);
        for i in 0..4 {
            let r = record(&job, i, now);
            units += r.prompt_tokens + r.completion_tokens;
            b.store.record(&r).unwrap();
        }
        // The previous oracle wrote its receipt ahead and crashed before sending it.
        let mut flaky = Flaky {
            inner: &mut s.world.env.chain,
            drop_next: true,
            lose_next_answer: false,
        };
        assert_eq!(b.run_round(&mut flaky).unwrap().failed, 1);
    }
    // What the previous oracle's store looked like: schema 3, no output columns.
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "ALTER TABLE submissions DROP COLUMN cumulative_output;
         ALTER TABLE submissions DROP COLUMN metered_output;
         UPDATE tally_schema SET version = 3;",
    )
    .unwrap();
    drop(db);

    let b = batcher(&s);
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT MAX(version) FROM tally_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, tally_oracle::store::SCHEMA_VERSION);
    let pending = b.store.pending_submissions().unwrap();
    assert_eq!(
        (
            pending.len(),
            pending[0].cumulative_units,
            pending[0].cumulative_output
        ),
        (1, units, 0),
        "its receipt as the previous oracle wrote it: no output counter"
    );
    s.world.env.advance(1);
    let report = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!((report.confirmed, report.failed), (1, 0), "{report:?}");
    let state = s.world.env.job(&job.address);
    assert_eq!((state.settled_units, state.settled_output), (units, 0));
    // Later usage carries its output tokens from there; at equal prices it pays the same.
    let r = record(&job, 10, s.world.env.now());
    b.store.record(&r).unwrap();
    s.world.env.advance(1);
    assert_eq!(b.run_round(&mut *s.world.env).unwrap().confirmed, 1);
    let state = s.world.env.job(&job.address);
    let total = units + r.prompt_tokens + r.completion_tokens;
    assert_eq!(
        (state.settled_units, state.settled_output),
        (total, r.completion_tokens)
    );
    assert_eq!(
        state.settled_gross,
        total * 10,
        "10 a token, input or output"
    );
}

#[test]
fn records_behind_a_pending_receipt_are_reported_as_work_left() {
    let mut s = setup("behind-pending", 1);
    let killed = batcher(&s);
    let job = s.jobs[0];
    let now = s.world.env.now();
    killed.store.record(&record(&job, 1, now)).unwrap();
    // The receipt is written, then the process dies before sending it: it is pending.
    let mut flaky = Flaky {
        inner: &mut s.world.env.chain,
        drop_next: true,
        lose_next_answer: false,
    };
    assert_eq!(killed.run_round(&mut flaky).unwrap().failed, 1);
    killed.store.record(&record(&job, 2, now)).unwrap();
    drop(killed);
    let b = batcher(&s);
    s.world.env.advance(60);
    // The restarted oracle's round resends the pending receipt and leaves the new record for later:
    // it must say so, or a final flush stops with the record unsettled.
    let report = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!(report.confirmed, 1, "{report:?}");
    assert!(report.more_waiting, "{report:?}");
    s.world.env.advance(1);
    let report = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!(
        (report.confirmed, report.more_waiting),
        (1, false),
        "{report:?}"
    );
    let units = [1, 2]
        .map(|i| {
            let r = record(&job, i, now);
            r.prompt_tokens + r.completion_tokens
        })
        .iter()
        .sum::<u64>();
    assert_eq!(s.world.env.job(&job.address).settled_units, units);
}

#[test]
fn records_are_committed_once_and_settle_as_cumulative_receipts() {
    let mut s = setup("once", 3);
    let b = batcher(&s);
    let now = s.world.env.now();
    let mut records = Vec::new();
    for i in 0..30 {
        let r = record(&s.jobs[(i % 3) as usize], i, now);
        assert_eq!(b.store.record(&r).unwrap(), Recorded::New);
        records.push(r);
    }
    // A retried report of the same request is never counted twice.
    assert_eq!(b.store.record(&records[4]).unwrap(), Recorded::Duplicate);
    assert_eq!(b.store.record_count().unwrap(), 30);

    let report = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!(
        (report.sent, report.confirmed, report.failed),
        (3, 3, 0),
        "{report:?}"
    );
    for job in &s.jobs {
        let state = s.world.env.job(&job.address);
        assert_eq!(state.settled_units, expected_units(&records, job));
        assert_eq!(state.last_seq, 1);
    }
    s.world.check_solvency();

    // Nothing new: nothing sent. More records: a second cumulative receipt.
    assert_eq!(b.run_round(&mut *s.world.env).unwrap().sent, 0);
    let later = record(&s.jobs[0], 100, now + 30);
    b.store.record(&later).unwrap();
    records.push(later);
    s.world.env.advance(30);
    let report = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!(report.confirmed, 1);
    let state = s.world.env.job(&s.jobs[0].address);
    assert_eq!(
        (state.settled_units, state.last_seq),
        (expected_units(&records, &s.jobs[0]), 2)
    );
}

#[test]
fn the_invoice_file_hashes_to_what_the_chain_stores_and_chains_to_the_previous() {
    let mut s = setup("invoice", 1);
    let b = batcher(&s);
    let now = s.world.env.now();
    for i in 0..5 {
        b.store.record(&record(&s.jobs[0], i, now)).unwrap();
    }
    b.run_round(&mut *s.world.env).unwrap();
    b.store.record(&record(&s.jobs[0], 9, now)).unwrap();
    b.run_round(&mut *s.world.env).unwrap();

    let first = std::fs::read(invoice_path(&s, &s.jobs[0], 1)).unwrap();
    let second = std::fs::read(invoice_path(&s, &s.jobs[0], 2)).unwrap();
    let job = s.world.env.job(&s.jobs[0].address);
    assert_eq!(
        sha256(&second),
        job.invoice_hash,
        "the latest invoice is what was paid"
    );
    let parsed: Invoice = serde_json::from_slice(&second).unwrap();
    assert_eq!(
        parsed.previous_hash,
        tally_oracle::invoice::hex(&sha256(&first)),
        "invoices chain"
    );
    assert_eq!(parsed.lines.len(), 1);
    assert_eq!(parsed.cumulative_units, job.settled_units);
}

/// A chain whose settle transactions can be made to fail before or after they land
/// (every other transaction — ledgers, lookup tables — goes through).
struct Flaky<'a> {
    inner: &'a mut EmbeddedChain,
    /// Fail the next settle without sending it (a crash before the send).
    drop_next: bool,
    /// Send the next settle, then report failure (a lost answer).
    lose_next_answer: bool,
}

/// Whether `tx` carries a `settle` instruction of the program.
fn settles(tx: &solana_transaction::versioned::VersionedTransaction) -> bool {
    use anchor_lang::Discriminator;
    let keys = tx.message.static_account_keys();
    tx.message.instructions().iter().any(|ix| {
        keys.get(usize::from(ix.program_id_index)) == Some(&tally::ID)
            && ix
                .data
                .starts_with(tally::instruction::Settle::DISCRIMINATOR)
    })
}

impl Chain for Flaky<'_> {
    fn account(
        &self,
        address: &anchor_lang::prelude::Pubkey,
    ) -> Result<Option<solana_account::Account>, ChainError> {
        self.inner.account(address)
    }
    fn program_accounts(
        &self,
        len: usize,
        filters: &[Memcmp],
    ) -> Result<Vec<(anchor_lang::prelude::Pubkey, solana_account::Account)>, ChainError> {
        self.inner.program_accounts(len, filters)
    }
    fn clock(&self) -> Result<solana_clock::Clock, ChainError> {
        self.inner.clock()
    }
    fn latest_blockhash(&self) -> Result<solana_hash::Hash, ChainError> {
        self.inner.latest_blockhash()
    }
    fn lookup_table_slots(&mut self, count: usize) -> Result<Vec<u64>, ChainError> {
        self.inner.lookup_table_slots(count)
    }
    fn wait_past_slot(&mut self, slot: u64) -> Result<u64, ChainError> {
        self.inner.wait_past_slot(slot)
    }
    fn send_transaction(
        &mut self,
        tx: solana_transaction::versioned::VersionedTransaction,
    ) -> Result<Confirmed, ChainError> {
        if !settles(&tx) {
            return self.inner.send_transaction(tx);
        }
        if std::mem::take(&mut self.drop_next) {
            return Err(ChainError::Rpc {
                url: "flaky".into(),
                message: "connection reset".into(),
            });
        }
        let result = self.inner.send_transaction(tx);
        if std::mem::take(&mut self.lose_next_answer) {
            return Err(ChainError::Rpc {
                url: "flaky".into(),
                message: "timed out waiting for confirmation".into(),
            });
        }
        result
    }
}

#[test]
fn a_send_lost_before_it_lands_is_resent_once_after_a_restart() {
    let mut s = setup("lost-send", 2);
    let now = s.world.env.now();
    let mut records = Vec::new();
    {
        let b = batcher(&s);
        for i in 0..10 {
            let r = record(&s.jobs[(i % 2) as usize], i, now);
            b.store.record(&r).unwrap();
            records.push(r);
        }
        let mut flaky = Flaky {
            inner: &mut s.world.env.chain,
            drop_next: true,
            lose_next_answer: false,
        };
        let report = b.run_round(&mut flaky).unwrap();
        assert_eq!((report.confirmed, report.failed), (0, 2), "{report:?}");
        assert_eq!(
            b.store.pending_submissions().unwrap().len(),
            2,
            "written ahead, not confirmed"
        );
    } // the oracle process ends here
    for job in &s.jobs {
        assert_eq!(
            s.world.env.job(&job.address).settled_units,
            0,
            "nothing landed"
        );
    }
    let b = batcher(&s); // restart: reopen the same store
    let report = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!((report.recovered, report.confirmed), (0, 2), "{report:?}");
    for job in &s.jobs {
        let state = s.world.env.job(&job.address);
        assert_eq!(
            (state.settled_units, state.last_seq),
            (expected_units(&records, job), 1)
        );
    }
    assert_eq!(b.store.pending_submissions().unwrap(), Vec::new());
    s.world.check_solvency();
}

#[test]
fn a_send_whose_answer_was_lost_is_recognized_and_never_paid_twice() {
    let mut s = setup("lost-answer", 2);
    let now = s.world.env.now();
    let mut records = Vec::new();
    {
        let b = batcher(&s);
        for i in 0..10 {
            let r = record(&s.jobs[(i % 2) as usize], i, now);
            b.store.record(&r).unwrap();
            records.push(r);
        }
        let mut flaky = Flaky {
            inner: &mut s.world.env.chain,
            drop_next: false,
            lose_next_answer: true,
        };
        let report = b.run_round(&mut flaky).unwrap();
        assert_eq!(report.failed, 2, "{report:?}");
    }
    let paid: Vec<u64> = s
        .jobs
        .iter()
        .map(|j| s.world.env.job(&j.address).settled_gross)
        .collect();
    assert!(paid.iter().all(|p| *p > 0), "the transaction did land");

    let b = batcher(&s);
    let report = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!(
        (report.recovered, report.sent),
        (2, 0),
        "recognized as landed, not resent: {report:?}"
    );
    for (job, before) in s.jobs.iter().zip(paid) {
        let state = s.world.env.job(&job.address);
        assert_eq!(state.settled_gross, before, "paid once");
        assert_eq!(state.settled_units, expected_units(&records, job));
    }
}

#[test]
fn usage_after_the_deadline_is_invoiced_but_not_billed() {
    let mut s = setup("deadline", 1);
    let b = batcher(&s);
    let deadline = s.world.env.job(&s.jobs[0].address).deadline;
    let inside = record(&s.jobs[0], 1, deadline - 10);
    let outside = record(&s.jobs[0], 2, deadline + 10);
    b.store.record(&inside).unwrap();
    b.store.record(&outside).unwrap();
    let round = b.run_round(&mut *s.world.env).unwrap();
    let state = s.world.env.job(&s.jobs[0].address);
    assert_eq!(
        state.settled_units,
        inside.prompt_tokens + inside.completion_tokens
    );
    // Not billed is not silent: the round says what it could not bill, and why.
    assert_eq!(round.unbillable.len(), 1, "{round:?}");
    let late = &round.unbillable[0];
    assert_eq!(late.reason, UnbillableReason::AfterDeadline);
    assert_eq!(
        (late.records, late.units),
        (1, outside.prompt_tokens + outside.completion_tokens)
    );
    assert!(late.detail.contains("after the job's deadline"), "{late:?}");
    let invoice: Invoice =
        serde_json::from_slice(&std::fs::read(invoice_path(&s, &s.jobs[0], 1)).unwrap()).unwrap();
    assert_eq!(invoice.lines.len(), 2);
    assert_eq!(invoice.period_end, deadline - 10);
}

#[test]
fn usage_beyond_the_escrow_is_reported_as_unbillable_not_hidden() {
    // Escrow for 100 units at 10 each; 130 units metered.
    let mut s = setup_with(
        "over-escrow",
        &[JobSpec {
            max_units: 100,
            ..JobSpec::default()
        }],
    );
    let b = batcher(&s);
    let now = s.world.env.now();
    let mut big = record(&s.jobs[0], 1, now);
    (big.prompt_tokens, big.completion_tokens) = (50, 80);
    b.store.record(&big).unwrap();
    let round = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!((round.confirmed, round.failed), (1, 0), "{round:?}");
    let state = s.world.env.job(&s.jobs[0].address);
    assert_eq!((state.settled_gross, state.escrow_left), (1_000, 0));
    assert_eq!(round.unbillable.len(), 1, "{round:?}");
    let over = &round.unbillable[0];
    assert_eq!(over.reason, UnbillableReason::OverEscrow);
    assert_eq!(over.units, 30);
    assert!(over.detail.contains("tally job top-up"), "{over:?}");
}

#[test]
fn invoice_files_verify_against_the_chain_and_tampering_is_caught() {
    use tally_oracle::invoice::verify;
    let mut s = setup("verify", 1);
    let b = batcher(&s);
    let now = s.world.env.now();
    b.store.record(&record(&s.jobs[0], 1, now)).unwrap();
    b.run_round(&mut *s.world.env).unwrap();
    b.store.record(&record(&s.jobs[0], 2, now)).unwrap();
    b.run_round(&mut *s.world.env).unwrap();
    let folder = invoice_path(&s, &s.jobs[0], 1)
        .parent()
        .unwrap()
        .to_path_buf();

    let latest = verify(&*s.world.env, &folder.join("2.json")).unwrap();
    assert_eq!((latest.seq, latest.settled_seq), (2, 2));
    // The first invoice verifies through the second, which names its hash.
    let first = verify(&*s.world.env, &folder.join("1.json")).unwrap();
    assert_eq!((first.seq, first.settled_seq), (1, 2));

    // One changed token count anywhere breaks the proof.
    let original = std::fs::read(folder.join("1.json")).unwrap();
    let tampered = String::from_utf8(original.clone()).unwrap().replacen(
        "\"prompt_tokens\":",
        "\"prompt_tokens\":1",
        1,
    );
    std::fs::write(folder.join("1.json"), tampered).unwrap();
    let err = verify(&*s.world.env, &folder.join("1.json")).unwrap_err();
    assert!(err.to_string().contains("altered"), "{err}");
    std::fs::write(folder.join("1.json"), original).unwrap();
    let latest_bytes = std::fs::read(folder.join("2.json")).unwrap();
    std::fs::write(
        folder.join("2.json"),
        String::from_utf8(latest_bytes)
            .unwrap()
            .replacen("llama", "LLAMA", 1),
    )
    .unwrap();
    let err = verify(&*s.world.env, &folder.join("2.json")).unwrap_err();
    assert!(err.to_string().contains("does NOT match"), "{err}");
}

#[test]
fn stream_usage_is_found_whatever_the_chunking() {
    use tally_oracle::gateway::StreamUsage;
    let sse = concat!(
        "data: {\"id\":\"cmpl-1\",\"choices\":[{\"delta\":{\"content\":\"hé\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"cmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5}}\n\n",
        "data: [DONE]\n\n"
    );
    for size in 1..=sse.len() {
        let mut seen = StreamUsage::default();
        for chunk in sse.as_bytes().chunks(size) {
            seen.feed(chunk);
        }
        assert_eq!(seen.usage, Some((3, 5)), "chunks of {size} bytes");
        assert_eq!(seen.id.as_deref(), Some("cmpl-1"));
    }
}

#[test]
fn a_receipt_the_program_refuses_does_not_hold_back_the_others_in_its_transaction() {
    // Job 1 may be billed at most 100 per hour; its usage is worth far more.
    let capped = JobSpec {
        spend_cap_per_hour: 100,
        ..JobSpec::default()
    };
    let mut s = setup_with("refused", &[JobSpec::default(), capped, JobSpec::default()]);
    let b = batcher(&s);
    let now = s.world.env.now();
    let mut records = Vec::new();
    for i in 0..9 {
        let r = record(&s.jobs[(i % 3) as usize], i, now);
        b.store.record(&r).unwrap();
        records.push(r);
    }
    let report = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!((report.confirmed, report.failed), (2, 1), "{report:?}");
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("sending each alone")),
        "{report:?}"
    );
    for (i, job) in s.jobs.iter().enumerate() {
        let settled = s.world.env.job(&job.address).settled_units;
        let want = if i == 1 {
            0
        } else {
            expected_units(&records, job)
        };
        assert_eq!(settled, want, "job {i}");
    }
    // The refused receipt stays pending (retried, never dropped), and its job backs
    // off alone: the next round settles the others' new usage without trying it.
    assert_eq!(b.store.pending_submissions().unwrap().len(), 1);
    for i in 20..26 {
        let r = record(&s.jobs[(i % 3) as usize], i, now);
        b.store.record(&r).unwrap();
        records.push(r);
    }
    s.world.env.advance(1);
    let report = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!(
        (report.backing_off, report.confirmed, report.failed),
        (1, 2, 0),
        "{report:?}"
    );
    for i in [0, 2] {
        let job = &s.jobs[i];
        assert_eq!(
            s.world.env.job(&job.address).settled_units,
            expected_units(&records, job)
        );
    }
    assert_eq!(s.world.env.job(&s.jobs[1].address).settled_units, 0);
    s.world.check_solvency();
}

#[test]
fn a_store_write_torn_by_a_crash_loses_only_the_unacknowledged_record() {
    let dir = temp_dir("torn");
    let live = dir.join("live");
    std::fs::create_dir_all(&live).unwrap();
    let store = Store::open(&live.join("oracle.db")).unwrap();
    let usage = |i: u64| UsageRecord {
        job: "Job".into(),
        job_nonce: None,
        request_id: format!("r{i}"),
        model: "m".into(),
        prompt_tokens: i,
        completion_tokens: i,
        gpu_ms: 1,
        finished_at: 1,
        source: "node-report".into(),
        ..UsageRecord::default()
    };
    for i in 0..10 {
        store.record(&usage(i)).unwrap();
    }
    let wal = live.join("oracle.db-wal");
    let acknowledged = std::fs::metadata(&wal).unwrap().len();
    store.record(&usage(10)).unwrap();
    let with_eleventh = std::fs::metadata(&wal).unwrap().len();
    assert!(with_eleventh > acknowledged);
    // The process dies while the 11th commit is being written: copy the files as a
    // crash leaves them (the store never closed), the log cut inside that commit.
    let crashed = dir.join("crashed");
    std::fs::create_dir_all(&crashed).unwrap();
    std::fs::copy(live.join("oracle.db"), crashed.join("oracle.db")).unwrap();
    std::fs::copy(&wal, crashed.join("oracle.db-wal")).unwrap();
    std::mem::forget(store);
    std::fs::OpenOptions::new()
        .write(true)
        .open(crashed.join("oracle.db-wal"))
        .unwrap()
        .set_len(acknowledged + (with_eleventh - acknowledged) / 2)
        .unwrap();

    let reopened = Store::open(&crashed.join("oracle.db")).unwrap();
    let records: Vec<UsageRecord> = reopened.all_records().unwrap();
    assert_eq!(records, (0..10).map(usage).collect::<Vec<_>>());
    // The worker, never answered for the 11th, sends it again: it is recorded once.
    assert_eq!(reopened.record(&usage(10)).unwrap(), Recorded::New);
    assert_eq!(reopened.record(&usage(10)).unwrap(), Recorded::Duplicate);
    assert_eq!(reopened.record_count().unwrap(), 11);
}

#[test]
fn a_reopened_job_address_starts_clean_and_the_old_jobs_leftovers_are_written_off() {
    let mut s = setup("reopen", 1);
    let b = batcher(&s);
    let job = s.jobs[0];
    let now = s.world.env.now();
    let old_nonce = s.world.env.job(&job.address).nonce;
    for i in 0..3 {
        b.store.record(&record(&job, i, now)).unwrap();
    }
    assert_eq!(b.run_round(&mut *s.world.env).unwrap().confirmed, 1);
    // Receipt 2 of the old job is written ahead but its send is lost…
    b.store.record(&record(&job, 3, now)).unwrap();
    let mut flaky = Flaky {
        inner: &mut s.world.env.chain,
        drop_next: true,
        lose_next_answer: false,
    };
    assert_eq!(b.run_round(&mut flaky).unwrap().failed, 1);
    // …and a record naming the old job comes in late.
    let late_old = UsageRecord {
        job_nonce: Some(old_nonce),
        request_id: "late-for-the-old-job".into(),
        ..record(&job, 90, now)
    };
    b.store.record(&late_old).unwrap();

    // The old job completes with what landed; the client opens a new job at the same
    // address (same client, same job id) in a later slot.
    let state = s.world.env.job(&job.address);
    tally_tests::expect_ok(s.world.complete(
        &s.operator,
        &job,
        tally_client::ops::settled_receipt(&state),
    ));
    s.world.jobs.retain(|j| j.address != job.address);
    s.world.env.advance(30);
    // Job ids only go up since `ClientJobs`; a job closed before that upgrade can
    // still be reopened at its address once (SECURITY.md). State injection lowers
    // the client's next id to stand for such a job; its nonce still differs.
    s.world.env.patch::<tally::state::ClientJobs>(
        &tally_client::pda::client_jobs(&s.client.wallet.pubkey()),
        |ids| ids.next_job_id = job.job_id,
    );
    let reopened = s
        .world
        .open_job(&s.client, &s.operator, job.job_id, JobSpec::default());
    assert_eq!(reopened.address, job.address, "the same address");
    let new_nonce = s.world.env.job(&job.address).nonce;
    assert_ne!(new_nonce, old_nonce);
    // Usage that finished before the new job opened belongs to the old one.
    b.store.record(&record(&job, 10, now)).unwrap();
    // The new job's usage.
    let opened = s.world.env.now();
    let fresh: Vec<UsageRecord> = (20..25).map(|i| record(&job, i, opened + 1)).collect();
    for r in &fresh {
        b.store.record(r).unwrap();
    }

    let report = b.run_round(&mut *s.world.env).unwrap();
    let mut reasons: Vec<(Option<u64>, &str)> = report
        .written_off
        .iter()
        .map(|w| (w.seq, w.reason.label()))
        .collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        vec![
            (None, "before_job_opened"),
            (None, "job_closed"),
            (Some(2), "job_closed"),
        ],
        "{report:?}"
    );
    assert_eq!(report.confirmed, 1, "{report:?}");
    // The new job was billed its own usage only, from receipt 1, with an invoice
    // chain of its own.
    let state = s.world.env.job(&job.address);
    assert_eq!(
        (state.last_seq, state.settled_units),
        (1, expected_units(&fresh, &job))
    );
    let invoice: Invoice =
        serde_json::from_slice(&std::fs::read(invoice_path(&s, &job, 1)).unwrap()).unwrap();
    assert_eq!(invoice.job_nonce, Some(new_nonce));
    assert_eq!(invoice.previous_hash, "0".repeat(64));
    assert_eq!(invoice.lines.len(), fresh.len());
    // The write-offs are terminal: nothing is left to settle, and the log says why.
    assert_eq!(b.store.pending_submissions().unwrap(), Vec::new());
    assert_eq!(b.store.unsettled().unwrap().0, 0);
    assert_eq!(b.store.write_offs().unwrap().len(), 3);
    // …and counted in the metrics, by reason.
    let telemetry = tally_oracle::telemetry::Telemetry::default();
    telemetry.round(&report, now);
    let metrics = telemetry.render();
    for line in [
        "tally_oracle_receipts_written_off_total{reason=\"job_closed\"} 1",
        "tally_oracle_records_written_off_total{reason=\"before_job_opened\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    s.world.check_solvency();
}

#[test]
fn a_receipt_past_the_settlement_window_is_written_off_not_retried_forever() {
    let mut s = setup_with(
        "expired",
        &[JobSpec {
            deadline_in_secs: 600,
            ..JobSpec::default()
        }],
    );
    let b = batcher(&s);
    let job = s.jobs[0];
    b.store.record(&record(&job, 1, s.world.env.now())).unwrap();
    let mut flaky = Flaky {
        inner: &mut s.world.env.chain,
        drop_next: true,
        lose_next_answer: false,
    };
    assert_eq!(b.run_round(&mut flaky).unwrap().failed, 1);
    // The oracle was down past the deadline and the grace: the program would refuse.
    let state = s.world.env.job(&job.address);
    let grace = i64::from(s.world.config().expiry_grace_secs);
    s.world.env.set_time(state.deadline + grace + 1);
    let report = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!(report.sent, 0, "{report:?}");
    assert_eq!(report.written_off.len(), 1, "{report:?}");
    let off = &report.written_off[0];
    assert_eq!(
        (off.seq, off.reason.label(), off.records),
        (Some(1), "expired", 1)
    );
    assert!(off.detail.contains("grace"), "{off:?}");
    assert_eq!(b.store.pending_submissions().unwrap(), Vec::new());
    assert_eq!(
        b.run_round(&mut *s.world.env).unwrap().written_off,
        Vec::new(),
        "terminal: written off once"
    );
}

#[test]
fn many_jobs_settle_20_receipts_per_transaction_through_tables_the_oracle_makes_and_closes() {
    let jobs = 40;
    let mut s = setup("tables", jobs);
    let oracle = s.world.oracles[0].pubkey();
    let b = Batcher::new(
        Store::open(&s.dir.join("oracle.db")).unwrap(),
        s.world.oracles[0].insecure_clone(),
        tally_oracle::clock::ChainClock::new(),
    );
    let now = s.world.env.now();
    let mut records = Vec::new();
    for i in 0..2 * jobs {
        let r = record(&s.jobs[i % jobs], u64::try_from(i).unwrap(), now);
        b.store.record(&r).unwrap();
        records.push(r);
    }
    let report = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!((report.confirmed, report.failed), (jobs, 0), "{report:?}");
    assert_eq!(report.tables.created, 1, "{report:?}");
    assert!(
        report.receipts_per_transaction.iter().max() >= Some(&20),
        "a full transaction carries at least 20 receipts: {report:?}"
    );
    assert_eq!(report.receipts_per_transaction.len(), 2, "{report:?}");
    let tables = b.store.lookup_tables().unwrap();
    assert_eq!(tables.len(), 1);

    // Steady state: the table is there; only settle transactions are sent.
    for i in 100..100 + jobs {
        let r = record(&s.jobs[i % jobs], u64::try_from(i).unwrap(), now);
        b.store.record(&r).unwrap();
        records.push(r);
    }
    s.world.env.advance(1);
    let report = b.run_round(&mut *s.world.env).unwrap();
    assert_eq!(
        (report.confirmed, report.transactions),
        (jobs, 2),
        "{report:?}"
    );
    assert_eq!(report.tables, TableWork::default(), "{report:?}");
    for job in &s.jobs {
        assert_eq!(
            s.world.env.job(&job.address).settled_units,
            expected_units(&records, job)
        );
    }

    // Every job completes: the table is deactivated, then closed after its
    // cool-down, its rent back to the oracle.
    for job in s.jobs.clone() {
        let state = s.world.env.job(&job.address);
        tally_tests::expect_ok(s.world.complete(
            &s.operator,
            &job,
            tally_client::ops::settled_receipt(&state),
        ));
    }
    s.world.env.advance(1);
    let work = b.tend_lookup_tables(&mut *s.world.env).unwrap();
    assert_eq!(work.deactivated, 1, "{work:?}");
    let TableState::Deactivated(at) = b.store.lookup_tables().unwrap()[0].state else {
        panic!("not deactivated: {:?}", b.store.lookup_tables());
    };
    let table: anchor_lang::prelude::Pubkey = tables[0].address.parse().unwrap();
    let rent = s.world.env.lamports(&table);
    assert!(rent > 0);
    assert_eq!(
        b.tend_lookup_tables(&mut *s.world.env).unwrap(),
        TableWork::default(),
        "not before the cool-down"
    );
    s.world
        .env
        .chain
        .wait_past_slot(at + tally_client::alt::DEACTIVATION_COOLDOWN_SLOTS)
        .unwrap();
    let before = s.world.env.lamports(&oracle);
    let work = b.tend_lookup_tables(&mut *s.world.env).unwrap();
    assert_eq!(work.closed, 1, "{work:?}");
    assert!(!s.world.env.exists(&table));
    assert!(
        s.world.env.lamports(&oracle) + 10_000 > before + rent,
        "the rent came back"
    );
    assert_eq!(b.store.lookup_tables().unwrap(), Vec::new());
    s.world.check_solvency();
}

#[test]
fn an_invoice_lists_at_most_its_cap_and_the_rest_follows_in_the_next_receipts() {
    let mut s = setup("cap", 1);
    let job = s.jobs[0];
    let b = Batcher::new(
        Store::open(&s.dir.join("oracle.db")).unwrap(),
        s.world.oracles[0].insecure_clone(),
        tally_oracle::clock::ChainClock::new(),
    )
    .with_settings(BatchSettings {
        max_invoice_records: 10,
        ..BatchSettings::default()
    });
    let now = s.world.env.now();
    let records: Vec<UsageRecord> = (0..25).map(|i| record(&job, i, now)).collect();
    for r in &records {
        b.store.record(r).unwrap();
    }
    let mut lines = Vec::new();
    for (round, more) in [(1, true), (2, true), (3, false)] {
        s.world.env.advance(1);
        let report = b.run_round(&mut *s.world.env).unwrap();
        assert_eq!(
            (report.confirmed, report.more_waiting),
            (1, more),
            "round {round}: {report:?}"
        );
        // Nothing is exported (no invoices_dir): the store holds the invoices.
        let state = s.world.env.job(&job.address);
        let invoice: Invoice = serde_json::from_slice(
            &b.store
                .invoice(&job.address.to_string(), state.nonce, round)
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        lines.push(invoice.lines.len());
    }
    assert_eq!(lines, vec![10, 10, 5]);
    let state = s.world.env.job(&job.address);
    assert_eq!(
        (state.last_seq, state.settled_units),
        (3, expected_units(&records, &job))
    );
    // The first invoice proves what was paid through the store's later ones.
    let verified = tally_oracle::invoice::verify_in_store(
        &*s.world.env,
        &b.store,
        &job.address.to_string(),
        Some(1),
    )
    .unwrap();
    assert_eq!((verified.seq, verified.settled_seq), (1, 3));
    assert_eq!(verified.settled_units, state.settled_units);
}

#[test]
fn concurrent_records_commit_in_groups_each_acknowledged_only_once_durable() {
    use std::sync::Arc;
    use tally_oracle::sink::Sink;
    use tally_oracle::telemetry::{self, Telemetry};
    let dir = temp_dir("group-commit");
    let path = dir.join("oracle.db");
    let telemetry = Arc::new(Telemetry::default());
    let sink = Sink::open(
        &path.to_string_lossy(),
        Arc::clone(&telemetry),
        tally_oracle::clock::ChainClock::new(),
        u64::MAX,
    )
    .unwrap();
    // A lone record is committed at once: it never waits for a group to fill.
    let started = std::time::Instant::now();
    let lone = UsageRecord {
        job_nonce: None,
        ..tally_oracle_record("Job", 0)
    };
    assert_eq!(sink.commit(&lone).unwrap(), Recorded::New);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));

    let (writers, each) = (64u64, 40u64);
    std::thread::scope(|scope| {
        for w in 0..writers {
            let sink = Arc::clone(&sink);
            scope.spawn(move || {
                for i in 0..each {
                    let r = tally_oracle_record("Job", 1 + w * each + i);
                    assert_eq!(sink.commit(&r).unwrap(), Recorded::New);
                }
            });
        }
    });
    let records = telemetry.get(telemetry::STORE_COMMITTED_RECORDS, "");
    let commits = telemetry.get(telemetry::STORE_COMMITS, "");
    println!("{records} records in {commits} commits");
    #[allow(clippy::cast_precision_loss)]
    let total = (writers * each + 1) as f64;
    assert!((records - total).abs() < 0.5);
    assert!(
        commits < records / 4.0,
        "64 concurrent writers share commits: {records} records in {commits} commits"
    );
    drop(sink);
    // Everything acknowledged is in the file, once.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.record_count().unwrap(), writers * each + 1);
    assert_eq!(store.record(&lone).unwrap(), Recorded::Duplicate);
}

fn tally_oracle_record(job: &str, i: u64) -> UsageRecord {
    UsageRecord {
        job: job.into(),
        job_nonce: None,
        request_id: format!("r{i}"),
        model: "m".into(),
        prompt_tokens: 1,
        completion_tokens: 2,
        gpu_ms: 3,
        finished_at: 4,
        source: "gateway".into(),
        ..UsageRecord::default()
    }
}
