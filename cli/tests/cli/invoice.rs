//! `tally invoice verify` and `tally invoice audit` end to end on solana-test-validator.
//! Verify: the oracle settles a job's usage into its store; the binary proves the
//! invoice from the store alone (as any replica sharing it would), from an exported
//! file linked through the store, and catches a tampered file. Audit: the client
//! fetches its invoices from the oracle's gateway with its job key, finds a line the
//! operator invented against its own ledger, and disputes it in the window.
use std::process::Command;

use anchor_lang::prelude::Pubkey;
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally_client::chain::Chain;
use tally_client::migrate::migrate;
use tally_client::{ops, OpenJobArgs, OperatorArgs};
use tally_oracle::batcher::Batcher;
use tally_oracle::store::{Store, UsageRecord};
use tally_tests::validator::LocalValidator;

pub(crate) fn tally(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .output()
        .expect("run tally");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Deployed on `validator`: the program configured with a 1-of-1 `oracle` and
/// wrapped SOL, a registered operator, a client holding 0.1 wrapped SOL.
pub(crate) struct Deployed {
    pub chain: tally_client::chain::RpcChain,
    pub oracle: Keypair,
    pub operator: Keypair,
    pub client: Keypair,
}

pub(crate) fn deploy(validator: &LocalValidator, challenge_window_secs: u32) -> Deployed {
    let mut chain = validator.chain();
    let wallet = |sol: u64| {
        let keypair = Keypair::new();
        validator
            .fund(&keypair.pubkey(), sol * 1_000_000_000)
            .unwrap();
        keypair
    };
    let oracle = wallet(2);
    let admin = &validator.payer;
    let mut deployment = tally_tests::validator::test_deployment(&admin.pubkey(), &oracle.pubkey());
    deployment.settings.challenge_window_secs = challenge_window_secs;
    migrate(&mut chain, admin, &deployment).unwrap();
    let operator = wallet(1);
    ops::register_operator(
        &mut chain,
        &operator,
        OperatorArgs {
            payout_owner: operator.pubkey(),
            node_keys: Vec::new(),
        },
        false,
    )
    .unwrap();
    let client = wallet(2);
    ops::wrap_sol(&mut chain, &client, 100_000_000).unwrap();
    Deployed {
        chain,
        oracle,
        operator,
        client,
    }
}

#[test]
fn invoice_verify_proves_an_invoice_from_the_store_or_a_file_and_catches_tampering() {
    let Some(validator) =
        LocalValidator::start_private_or_skip(Some(&LocalValidator::default_program()))
    else {
        return;
    };
    let Deployed {
        mut chain,
        oracle,
        operator,
        client,
    } = deploy(&validator, 0);
    let now = chain.clock().unwrap().unix_timestamp;
    let job: Pubkey = ops::open_job(
        &mut chain,
        &client,
        &operator.pubkey(),
        &ops::NATIVE_MINT,
        OpenJobArgs {
            job_id: 1,
            unit_kind: 0,
            input_price: tally_client::PRICE_SCALE,
            output_price: tally_client::PRICE_SCALE,
            model: [0; 32],
            max_units: 1_000_000,
            deadline: now + 86_400,
            spend_cap_per_hour: 0,
        },
    )
    .unwrap()
    .address;

    // The oracle meters and settles two receipts; the store keeps their invoices.
    let dir = std::env::temp_dir().join(format!("tally-cli-invoice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store_path = dir.join("oracle.db");
    let batcher = Batcher::new(
        Store::open(&store_path).unwrap(),
        oracle.insecure_clone(),
        tally_oracle::clock::ChainClock::synced(&chain).unwrap(),
    )
    .with_invoices_dir(dir.join("invoices"));
    for round in 0..2u64 {
        for i in 0..5u64 {
            batcher
                .store
                .record(&UsageRecord {
                    job: job.to_string(),
                    job_nonce: None,
                    request_id: format!("req-{round}-{i}"),
                    model: "m".into(),
                    prompt_tokens: 10 + i,
                    completion_tokens: 5,
                    gpu_ms: 1,
                    finished_at: chain.clock().unwrap().unix_timestamp,
                    source: "gateway".into(),
                    ..UsageRecord::default()
                })
                .unwrap();
        }
        let report = batcher.run_round(&mut chain).unwrap();
        assert_eq!((report.confirmed, report.failed), (1, 0), "{report:?}");
    }
    let state = ops::job(&chain, &job).unwrap();
    assert_eq!(state.last_seq, 2);
    drop(batcher);

    let url = validator.rpc_url.as_str();
    let store = store_path.to_string_lossy().into_owned();
    let job_text = job.to_string();
    // From the store alone: the latest receipt, then the first, linked through the
    // second.
    for seq in [None, Some("1")] {
        let mut args = vec![
            "invoice", "verify", "-u", url, "--store", &store, "--job", &job_text,
        ];
        if let Some(seq) = seq {
            args.extend(["--seq", seq]);
        }
        let (ok, out) = tally(&args);
        assert!(ok, "{out}");
        assert!(out.contains("verified"), "{out}");
        assert!(
            out.contains(&format!("{} units in all", state.settled_units)),
            "{out}"
        );
    }
    // An exported file: the first needs the second beside it, or the store.
    let first =
        tally_oracle::invoice::export_path(&dir.join("invoices"), &job_text, state.nonce, 1);
    let file = first.to_string_lossy().into_owned();
    let (ok, out) = tally(&["invoice", "verify", "-u", url, &file]);
    assert!(ok, "{out}");
    std::fs::remove_file(first.with_file_name("2.json")).unwrap();
    let (ok, out) = tally(&["invoice", "verify", "-u", url, &file]);
    assert!(!ok && out.contains("--store"), "{out}");
    let (ok, out) = tally(&["invoice", "verify", "-u", url, &file, "--store", &store]);
    assert!(ok, "{out}");
    // One token changed in the file: caught.
    let bytes = std::fs::read_to_string(&first).unwrap();
    std::fs::write(
        &first,
        bytes.replacen("\"prompt_tokens\":1", "\"prompt_tokens\":9", 1),
    )
    .unwrap();
    let (ok, out) = tally(&["invoice", "verify", "-u", url, &file, "--store", &store]);
    assert!(!ok, "{out}");
    assert!(out.contains("altered"), "{out}");

    // Reading the chain needs no keypair; signing does, and says how to get one.
    let nowhere = dir.join("no-such-keypair.json");
    let nowhere = nowhere.to_string_lossy();
    let (ok, out) = tally(&["job", "status", &job_text, "-u", url, "-k", &nowhere]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("settled units  {}", state.settled_units)),
        "{out}"
    );
    let (ok, out) = tally(&["job", "list", "--all", "-u", url, "-k", &nowhere]);
    assert!(ok && out.contains(&job_text), "{out}");
    let (ok, out) = tally(&["job", "cancel", &job_text, "-u", url, "-k", &nowhere]);
    assert!(!ok && out.contains("solana-keygen new"), "{out}");
    let (ok, out) = tally(&["job", "list", "-u", url, "-k", &nowhere]);
    assert!(!ok && out.contains("cannot read keypair"), "{out}");
}

/// A JSON ledger line for an answer: its request id header and its usage.
fn ledger_line(request_id: &str, body: &serde_json::Value) -> String {
    serde_json::json!({
        "request_id": request_id,
        "model": body["model"],
        "prompt_tokens": body["usage"]["prompt_tokens"],
        "completion_tokens": body["usage"]["completion_tokens"],
    })
    .to_string()
}

#[test]
fn invoice_audit_finds_an_invented_line_and_disputes_it_in_the_window() {
    use std::sync::{Arc, Mutex};

    let Some(validator) =
        LocalValidator::start_private_or_skip(Some(&LocalValidator::default_program()))
    else {
        return;
    };
    let Deployed {
        mut chain,
        oracle,
        operator,
        client,
    } = deploy(&validator, 3_600);
    let now = chain.clock().unwrap().unix_timestamp;
    let mut open = |job_id: u64| -> Pubkey {
        ops::open_job(
            &mut chain,
            &client,
            &operator.pubkey(),
            &ops::NATIVE_MINT,
            OpenJobArgs {
                job_id,
                unit_kind: 0,
                input_price: tally_client::PRICE_SCALE,
                output_price: tally_client::PRICE_SCALE,
                model: [0; 32],
                max_units: 1_000_000,
                deadline: now + 86_400,
                spend_cap_per_hour: 0,
            },
        )
        .unwrap()
        .address
    };
    let (a, b) = (open(1), open(2));
    let dir = std::env::temp_dir().join(format!("tally-cli-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key_a = ops::job_key(&chain, &client, &a, 3_600, None).unwrap().key;
    let key_b = ops::job_key(&chain, &client, &b, 3_600, None).unwrap().key;
    let keypair_file = dir.join("client.json");
    std::fs::write(
        &keypair_file,
        serde_json::to_string(&client.to_bytes().to_vec()).unwrap(),
    )
    .unwrap();

    // The operator's oracle: its gateway in front of a worker; it settles on stop (the
    // interval is an hour), and a second start serves the invoices.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store_path = dir.join("oracle.db");
    let (config, daemon, gateway, ledger_a, ledger_b) = runtime.block_on(async {
        let worker = Arc::new(tally_oracle::sim_worker::SimWorker::default());
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
        tokio::spawn(Arc::clone(&worker).serve(upstream));
        let config = tally_oracle::config::OracleConfig::parse(
            &format!(
                "store = \"{}\"\ninvoices_dir = \"{}\"\n[batch]\ninterval_secs = 3600\nmax_records = 100\n[admin]\nlisten = \"127.0.0.1:0\"\n[gateway]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream_url}\"\noperator = \"{}\"\n",
                store_path.display(),
                dir.join("invoices").display(),
                operator.pubkey()
            ),
            Vec::new(),
        )
        .unwrap();
        let daemon = tally_oracle::daemon::Daemon::start(
            &config,
            Arc::new(Mutex::new(validator.chain())),
            oracle.insecure_clone(),
        )
        .await
        .unwrap();
        let gateway = format!("http://{}", daemon.gateway.unwrap());
        let http = reqwest::Client::new();
        let chat = |key: String, max_tokens: u32| {
            let (http, gateway) = (http.clone(), gateway.clone());
            async move {
                let response = http
                    .post(format!("{gateway}/v1/chat/completions"))
                    .bearer_auth(key)
                    .body(format!(
                        r#"{{"model":"llama-3-8b","messages":[{{"role":"user","content":"count my tokens"}}],"max_tokens":{max_tokens}}}"#
                    ))
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                let id = response.headers()["x-tally-request-id"]
                    .to_str()
                    .unwrap()
                    .to_string();
                let body: serde_json::Value = response.json().await.unwrap();
                ledger_line(&id, &body)
            }
        };
        let mut ledger_a = vec![chat(key_a.clone(), 9).await, chat(key_a.clone(), 7).await];
        let ledger_b = vec![chat(key_b.clone(), 5).await];
        // The operator invents an answer the client never received.
        Store::open(&store_path)
            .unwrap()
            .record(&UsageRecord {
                job: a.to_string(),
                job_nonce: None,
                request_id: "invented-by-the-operator".into(),
                model: "llama-3-8b".into(),
                prompt_tokens: 20,
                completion_tokens: 500,
                gpu_ms: 1,
                finished_at: now + 1,
                source: "gateway".into(),
                ..UsageRecord::default()
            })
            .unwrap();
        ledger_a.push(chat(key_a.clone(), 3).await);
        // Stopping settles everything accepted; the next start serves the invoices.
        daemon.stop().await.unwrap();
        let daemon = tally_oracle::daemon::Daemon::start(
            &config,
            Arc::new(Mutex::new(validator.chain())),
            oracle.insecure_clone(),
        )
        .await
        .unwrap();
        let gateway = format!("http://{}", daemon.gateway.unwrap());
        (config, daemon, gateway, ledger_a, ledger_b)
    });
    drop(config);
    let units = |ledger: &[String]| -> u64 {
        ledger
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["prompt_tokens"].as_u64().unwrap() + v["completion_tokens"].as_u64().unwrap()
            })
            .sum()
    };
    let billed_a = units(&ledger_a) + 520;
    assert_eq!(
        ops::job(&chain, &b).unwrap().settled_units,
        units(&ledger_b)
    );
    assert_eq!(
        ops::job(&chain, &a).unwrap().settled_units,
        billed_a,
        "{}",
        daemon.telemetry.render()
    );
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let dirty_ledger = write("ledger-a.jsonl", ledger_a.join("\n") + "\n");
    let clean_ledger = write("ledger-b.jsonl", ledger_b.join("\n") + "\n");
    let key_a_file = write("key-a", key_a.clone() + "\n");
    let url = validator.rpc_url.as_str();
    let (a_text, b_text) = (a.to_string(), b.to_string());
    let keypair = keypair_file.to_string_lossy().into_owned();

    // Job B: clean, with a key the audit signs itself (--keypair, the client).
    let (ok, out) = tally(&[
        "invoice",
        "audit",
        &b_text,
        "--gateway",
        &gateway,
        "--ledger",
        &clean_ledger,
        "-u",
        url,
        "--keypair",
        &keypair,
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("chain: verified"), "{out}");
    assert!(out.contains("result: clean"), "{out}");
    // Job A: the invented line is found (the key from a file), exit nonzero.
    let (ok, out) = tally(&[
        "invoice",
        "audit",
        &a_text,
        "--gateway",
        &gateway,
        "--key",
        &key_a_file,
        "--ledger",
        &dirty_ledger,
        "-u",
        url,
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("chain: verified"), "{out}");
    assert!(out.contains("NEVER RECEIVED"), "{out}");
    assert!(out.contains("invented-by-the-operator"), "{out}");
    assert!(out.contains("3 of 4 line(s) borne out"), "{out}");
    // B's key does not open A's invoices.
    let (ok, out) = tally(&[
        "invoice",
        "audit",
        &a_text,
        "--gateway",
        &gateway,
        "--key",
        &key_b,
        "-u",
        url,
    ]);
    assert!(!ok && out.contains("the key is for job"), "{out}");
    // A stranger's key for A is refused by the gateway.
    let stranger = tally_client::job_key::JobKeyClaims {
        job: a,
        job_nonce: ops::job(&chain, &a).unwrap().nonce,
        expires_at: now + 3_600,
        spend_limit: None,
    }
    .sign(&Keypair::new())
    .encode();
    let (ok, out) = tally(&[
        "invoice",
        "audit",
        &a_text,
        "--gateway",
        &gateway,
        "--key",
        &stranger,
        "-u",
        url,
    ]);
    assert!(
        !ok && out.contains("refused") && out.contains("401"),
        "{out}"
    );
    // Disputed within the window: the operator's share is frozen.
    let (ok, out) = tally(&[
        "--output",
        "json",
        "invoice",
        "audit",
        &a_text,
        "--gateway",
        &gateway,
        "--key",
        &key_a,
        "--ledger",
        &dirty_ledger,
        "-u",
        url,
        "--keypair",
        &keypair,
        "--dispute",
    ]);
    assert!(!ok, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(report["clean"], false);
    assert_eq!(report["findings"][0]["kind"], "not_received");
    assert_eq!(report["excess_tokens"], 520);
    assert_eq!(report["dispute"]["filed"], true, "{out}");
    let frozen = report["dispute"]["frozen"].as_u64().unwrap();
    assert!(frozen > 0);
    assert_eq!(ops::job(&chain, &a).unwrap().disputed_amount, frozen);
    // A second dispute is refused, and says why.
    let (ok, out) = tally(&[
        "invoice",
        "audit",
        &a_text,
        "--gateway",
        &gateway,
        "--key",
        &key_a,
        "--ledger",
        &dirty_ledger,
        "-u",
        url,
        "--keypair",
        &keypair,
        "--dispute",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("dispute: NOT filed"), "{out}");
    assert!(out.contains("already has an open dispute"), "{out}");
    runtime.block_on(daemon.stop()).unwrap();
}
