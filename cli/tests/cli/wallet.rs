//! `tally` as a wallet user runs it on solana-test-validator: pays in SOL (wrapped on
//! the way in, unwrapped on the way out), types and reads amounts in SOL, follows a
//! job live with `job watch` (an account subscription) and reads the chain without a
//! keypair.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use solana_keypair::Keypair;
use solana_signer::Signer;
use tally_client::chain::Chain;
use tally_client::{ops, pda};
use tally_tests::validator::LocalValidator;

use crate::invoice::{deploy, tally, Deployed};

const SOL: u64 = 1_000_000_000;

#[test]
fn a_wallet_user_pays_in_sol_watches_the_job_and_gets_sol_back() {
    let Some(validator) =
        LocalValidator::start_private_or_skip(Some(&LocalValidator::default_program()))
    else {
        return;
    };
    let Deployed {
        chain, operator, ..
    } = deploy(&validator, 0);
    let url = validator.rpc_url.as_str();
    let dir = std::env::temp_dir().join(format!("tally-cli-wallet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A client with SOL only: no wSOL account, no default keypair (HOME is empty).
    let client = Keypair::new();
    validator.fund(&client.pubkey(), 2 * SOL).unwrap();
    let keypair = dir.join("client.json");
    std::fs::write(
        &keypair,
        serde_json::to_string(&client.to_bytes().to_vec()).unwrap(),
    )
    .unwrap();
    let keypair = keypair.to_string_lossy().to_string();
    let wsol = ops::NATIVE_MINT.to_string();
    let op = operator.pubkey().to_string();
    let wsol_account = ops::wsol_account(&client.pubkey());

    // Open: a 0.5 SOL budget at 0.001 SOL per 1M tokens, wrapped from the wallet.
    let (ok, out) = tally(&[
        "-u",
        url,
        "-k",
        &keypair,
        "job",
        "open",
        "--operator",
        &op,
        "--mint",
        &wsol,
        "--price",
        "0.001",
        "--budget",
        "0.5",
        "--id",
        "1",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("escrow left    0.500000000 SOL"), "{out}");
    let job = pda::job(&client.pubkey(), 1);
    let job_text = job.to_string();
    assert_eq!(ops::job(&chain, &job).unwrap().escrow_left, SOL / 2);
    assert_eq!(ops::token_balance(&chain, &wsol_account).unwrap(), 0);

    // Watch it, with no keypair anywhere: a line per change, as JSON lines.
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut watch = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["-u", url, "--output", "json", "job", "watch", &job_text])
        .env("HOME", &home)
        .env_remove("TALLY_KEYPAIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<serde_json::Value>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = lines_tx.send(value);
            }
        }
    });
    let next = |what: &str| {
        lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("job watch printed no line for {what}"))
    };
    let first = next("the job's state");
    assert_eq!(
        (
            first["escrow_left"].as_u64(),
            first["decimals"].as_u64(),
            first["status"].as_str()
        ),
        (Some(SOL / 2), Some(9), Some("open")),
        "{first}"
    );

    // Top up 0.25 SOL: wrapped again; the watcher sees it.
    let (ok, out) = tally(&[
        "-u", url, "-k", &keypair, "job", "top-up", &job_text, "0.25",
    ]);
    assert!(ok, "{out}");
    let topped = next("the top-up");
    assert_eq!(
        topped["escrow_left"].as_u64(),
        Some(3 * SOL / 4),
        "{topped}"
    );

    // Reading needs no keypair: status in SOL, JSON in lamports with the decimals.
    let (ok, out) = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["-u", url, "job", "status", &job_text])
        .env("HOME", &home)
        .env_remove("TALLY_KEYPAIR")
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).to_string()
                    + &String::from_utf8_lossy(&o.stderr),
            )
        })
        .unwrap();
    assert!(
        ok && out.contains("escrow left    0.750000000 SOL"),
        "{out}"
    );
    let (ok, out) = tally(&[
        "-u",
        url,
        "--base-units",
        "job",
        "status",
        &job_text,
        "-k",
        &keypair,
    ]);
    assert!(ok && out.contains("escrow left    750000000\n"), "{out}");

    // Too much for the wallet: refused before sending, saying how to fund it.
    let (ok, out) = tally(&["-u", url, "-k", &keypair, "job", "top-up", &job_text, "50"]);
    assert!(
        !ok && out.contains("insufficient SOL") && out.contains("solana transfer"),
        "{out}"
    );

    // Cancel: 0.75 SOL back as SOL; the watcher sees the job close and ends.
    let before = chain.account(&client.pubkey()).unwrap().unwrap().lamports;
    let (ok, out) = tally(&["-u", url, "-k", &keypair, "job", "cancel", &job_text]);
    assert!(ok, "{out}");
    assert!(out.contains("0.750000000 SOL refunded (unwrapped"), "{out}");
    let after = chain.account(&client.pubkey()).unwrap().unwrap().lamports;
    assert!(
        after > before + 3 * SOL / 4,
        "{before} → {after}: the refund, the job's and the wSOL account's rent, less a fee"
    );
    assert!(
        chain.account(&wsol_account).unwrap().is_none(),
        "unwrapped: the wSOL account is closed"
    );
    let last = next("the cancel");
    assert_eq!(last["status"], "closed", "{last}");
    let mut status = None;
    for _ in 0..100 {
        status = watch.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(status) = status else {
        let _ = watch.kill();
        panic!("job watch did not end with the job");
    };
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
