//! The quorum's named scenarios on solana-test-validator: three real `tally-oracle`
//! processes of a 2-of-3 set, one validator for all of them, each oracle with its own
//! store, every signed node report posted to the oracles that are up. In turn: all
//! honest, one down, two down and one back, and one lying (its store inflates a real
//! request and invents another). The chain must hold exactly what was reported,
//! settled once, at the end of each.
use std::time::Duration;

use tally_oracle::store::UsageRecord;
use tally_tests::validator::LocalValidator;

use super::crash::{report_bodies, QuorumProcesses, ONE_AT_A_TIME};

/// Leadership moves every few seconds, so each scenario sees every oracle lead.
const TERM_SECS: u64 = 3;
/// Reports per scenario.
const REPORTS: u64 = 12;

/// Runs `work` on a runtime of its own (the test is synchronous).
fn block_on<F: std::future::Future>(work: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(work)
}

/// Posts each body to each of `urls`, retrying one that does not answer (it may be
/// starting); every answer must be 201 (recorded) or 409 (already held).
fn post_all(urls: &[String], bodies: &[(usize, u64, String)]) {
    block_on(async {
        let http = reqwest::Client::new();
        for (_, _, body) in bodies {
            for url in urls {
                super::post_report(&http, url, body, Duration::from_millis(100), 200).await;
            }
        }
    });
}

fn metrics(port: u16) -> String {
    block_on(async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

fn add(total: &mut [u64], more: &[u64]) {
    for (t, m) in total.iter_mut().zip(more) {
        *t += m;
    }
}

/// A record of report `body` as its oracle stores it, with `extra` completion tokens.
fn inflated(body: &str, extra: u64) -> UsageRecord {
    let report: tally_oracle::node_report::SignedReport = serde_json::from_str(body).unwrap();
    let r = report.record;
    UsageRecord {
        job: r.job,
        request_id: r.request_id,
        model: r.model,
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens + extra,
        gpu_ms: r.gpu_ms,
        finished_at: r.finished_at,
        source: tally_oracle::node_report::SOURCE.into(),
        ..UsageRecord::default()
    }
}

#[test]
fn a_quorum_of_processes_settles_once_survives_outages_and_outvotes_a_liar() {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(validator) =
        LocalValidator::start_private_or_skip(Some(&LocalValidator::default_program()))
    else {
        return;
    };
    let mut q = QuorumProcesses::deploy(&validator, "quorum-scenarios", TERM_SECS, 2);
    let urls: Vec<String> = (0..3).map(|i| q.report_url(i)).collect();
    let (jobs, node, now) = (q.jobs.clone(), q.node.clone(), q.now);
    let batch = |prefix: &str| report_bodies(&jobs, &node, now, prefix, REPORTS);
    let logs = q.dir.display().to_string();
    for i in 0..3 {
        q.spawn(i);
    }

    // All honest: settled once, exactly what was reported.
    let (all_up, units) = batch("all-up");
    let mut expected = units;
    post_all(&urls, &all_up);
    assert_eq!(
        q.wait_settled(&expected, 90),
        expected,
        "all up; logs in {logs}"
    );

    // One down (killed mid-whatever): the other two settle in their terms.
    q.kill(2);
    let (one_down, units) = batch("one-down");
    add(&mut expected, &units);
    post_all(&urls[..2], &one_down);
    assert_eq!(
        q.wait_settled(&expected, 90),
        expected,
        "one down; logs in {logs}"
    );

    // Two down: nothing settles and nothing is lost; one back, and it all settles.
    q.kill(1);
    let before = q.settled();
    let (two_down, units) = batch("two-down");
    post_all(&urls[..1], &two_down);
    std::thread::sleep(Duration::from_secs(3 * TERM_SECS));
    assert_eq!(q.settled(), before, "one oracle alone settled something");
    q.spawn(1);
    post_all(&urls[1..2], &two_down);
    add(&mut expected, &units);
    assert_eq!(
        q.wait_settled(&expected, 90),
        expected,
        "one back; logs in {logs}"
    );
    // The third returns: it catches up (what it missed is a duplicate now).
    q.spawn(2);
    post_all(&urls[2..], &one_down);
    post_all(&urls[2..], &two_down);

    // A liar: oracle 2's store inflates a request before its report arrives, and
    // invents one nobody reported. Whenever it leads, both honest oracles refuse; when
    // they lead, the truth settles with their two signatures.
    q.terminate(2);
    let (lied_about, units) = batch("liar");
    let liar = q.store(2);
    liar.record(&inflated(&lied_about[0].2, 10_000)).unwrap();
    let mut invented = inflated(&lied_about[1].2, 5_000);
    invented.request_id = "invented-by-the-liar".into();
    liar.record(&invented).unwrap();
    drop(liar);
    q.spawn(2);
    post_all(&urls, &lied_about);
    add(&mut expected, &units);
    assert_eq!(
        q.wait_settled(&expected, 90),
        expected,
        "liar; logs in {logs}"
    );
    // Until the liar has led and been refused, and after: nothing more settles.
    let refused = "tally_oracle_quorum_peer_refusals_total{peer=";
    let mut seen = String::new();
    for _ in 0..(10 * TERM_SECS * 3) {
        seen = metrics(q.admin_ports[2]);
        if seen.contains(refused) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen.contains(refused), "the liar never proposed: {seen}");
    let honest = metrics(q.admin_ports[0]) + &metrics(q.admin_ports[1]);
    assert!(
        honest.contains("tally_oracle_quorum_refused_total{reason=\"unseen_record\"}")
            || honest.contains("tally_oracle_quorum_refused_total{reason=\"record_differs\"}"),
        "the honest oracles' refusals: {honest}"
    );
    std::thread::sleep(Duration::from_secs(TERM_SECS));
    q.terminate_all();
    assert_eq!(q.settled(), expected, "what the liar holds never settled");
    let reported = 4 * REPORTS;
    for i in 0..2 {
        let records = q.store(i).all_records().unwrap();
        assert_eq!(
            records.len() as u64,
            reported,
            "oracle {i}: one record per report"
        );
    }
    println!("quorum scenarios on the validator: settled {expected:?} = reported");
    let _ = std::fs::remove_dir_all(&q.dir);
}
