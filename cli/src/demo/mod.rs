//! `tally demo`: the whole of Tally on the embedded chain, with nothing to set up.
//!
//! A client funds jobs from its wallet; a simulated GPU worker (speaking the OpenAI
//! API like vLLM) serves requests through the real oracle gateway, which meters them
//! into the real store; the real batcher settles cumulative receipts on the SBF
//! program; jobs complete with their final receipts and refunds; the operator claims;
//! a stalled job expires and is refunded; and every balance is reconciled.
//!
//! `--real-model`: the GPU worker is tally-worker in process, serving the models
//! `scripts/fetch-model` fetches: SmolLM2-135M-Instruct (or `--chat-model`) answers
//! the requests, chat completions streamed and not, counted as llama.cpp counts them;
//! all-MiniLM-L6-v2 (or `--model-dir`) serves embeddings beside it, where present, and
//! `--embeddings` sends embedding requests instead. The rest is the same.
//!
//! `--oracles N --threshold M`: an m-of-n oracle set settles instead of one oracle
//! ([`quorum`]).
mod quorum;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally_client::bootstrap::{self, Cast};
use tally_client::chain::{Chain, ChainError, EmbeddedChain, Shared};

use crate::money::{Money, Units};
use crate::CliError;
use tally_client::ix::MintRef;
use tally_client::{ops, pda, OpenJobArgs, Prices, Pubkey, Usage};
use tally_oracle::batcher::Batcher;
use tally_oracle::clock::ChainClock;
use tally_oracle::gateway::{Gateway, GatewaySettings};
use tally_oracle::sim_worker::SimWorker;
use tally_oracle::store::Store;

/// `tally demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Jobs the client opens (plus one that stalls and expires)
    #[arg(long, default_value_t = 3)]
    pub jobs: u64,
    /// Requests served per job
    #[arg(long, default_value_t = 20)]
    pub requests: u64,
    /// The SBF program [default: TALLY_PROGRAM_SO or target/deploy/tally.so]
    #[arg(long)]
    pub program: Option<PathBuf>,
    /// Serve real models (tally-worker, on CPU) instead of the simulated worker: a
    /// chat model answers the requests (a second or more each on a small CPU), an
    /// embedding model serves beside it
    #[arg(long)]
    pub real_model: bool,
    /// The chat model for --real-model: a GGUF file of a llama-family model
    /// [default: TALLY_CHAT_MODEL or target/models/SmolLM2-135M-Instruct.Q4_1.gguf, from scripts/fetch-model]
    #[arg(long, requires = "real_model")]
    pub chat_model: Option<PathBuf>,
    /// The embedding model for --real-model: config.json, model.safetensors,
    /// tokenizer.json [default: TALLY_MODEL_DIR or target/models/all-MiniLM-L6-v2,
    /// from scripts/fetch-model, when present]
    #[arg(long, requires = "real_model")]
    pub model_dir: Option<PathBuf>,
    /// With --real-model: send embedding requests instead of chat completions
    #[arg(long, requires = "real_model")]
    pub embeddings: bool,
    /// Oracles in the deployment's set, each a daemon with its own store; above 1
    /// the gateway signs its records for the others and settlements are co-signed
    #[arg(long, default_value_t = 1)]
    pub oracles: u8,
    /// Oracle signatures each settlement needs [default: a majority of --oracles]
    #[arg(long)]
    pub threshold: Option<u8>,
}

/// The operator's inference server in the demo.
enum Upstream {
    Simulated(Arc<SimWorker>),
    /// The real worker; `true` when the requests are chat completions.
    #[cfg(feature = "real-model")]
    Real(Arc<tally_worker::Worker>, bool),
}

impl Upstream {
    fn start(args: &DemoArgs) -> Result<Self, CliError> {
        if !args.real_model {
            return Ok(Self::Simulated(Arc::new(SimWorker::default())));
        }
        #[cfg(feature = "real-model")]
        {
            // Chat unless --embeddings; the embedding model too when asked for or
            // present (a chat-only worker is fine).
            let chat = if args.embeddings {
                args.chat_model.clone()
            } else {
                Some(
                    args.chat_model
                        .clone()
                        .unwrap_or_else(tally_worker::default_chat_model),
                )
            };
            let dir = args
                .model_dir
                .clone()
                .unwrap_or_else(tally_worker::default_model_dir);
            let embeddings = (args.embeddings
                || args.model_dir.is_some()
                || tally_worker::model::missing_files(&dir).is_none())
            .then_some(dir);
            let mut config = tally_worker::WorkerConfig::new(PathBuf::new());
            config.model_dir = embeddings;
            config.chat_model = chat;
            tally_worker::Worker::load(&config)
                .map(|worker| Self::Real(worker, !args.embeddings))
                .map_err(|e| {
                    CliError::RealModel(format!("{e} (scripts/fetch-model fetches the models)"))
                })
        }
        #[cfg(not(feature = "real-model"))]
        Err(CliError::RealModel(
            "this tally was built without the `real-model` feature; run scripts/demo --real-model (or cargo build -p tally-cli --features real-model)".into(),
        ))
    }

    fn describe(&self) -> String {
        match self {
            Self::Simulated(_) => "a simulated GPU worker".into(),
            #[cfg(feature = "real-model")]
            Self::Real(worker, chat) => {
                let also = match (
                    chat,
                    worker.chat_model_name(),
                    worker.embeddings_model_name(),
                ) {
                    (true, _, Some(other)) => format!(" (and {other} for embeddings)"),
                    (false, Some(other), _) => format!(" (and {other} for chat)"),
                    _ => String::new(),
                };
                format!(
                    "tally-worker running {}{also} on {}",
                    self.model(),
                    worker.device_name()
                )
            }
        }
    }

    fn model(&self) -> String {
        match self {
            Self::Simulated(_) => "llama-3-8b".into(),
            #[cfg(feature = "real-model")]
            Self::Real(worker, chat) => if *chat {
                worker.chat_model_name()
            } else {
                worker.embeddings_model_name()
            }
            .unwrap_or_default()
            .to_string(),
        }
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        match self {
            Self::Simulated(worker) => {
                tokio::spawn(Arc::clone(worker).serve(listener));
            }
            #[cfg(feature = "real-model")]
            Self::Real(worker, _) => {
                tokio::spawn(Arc::clone(worker).serve(listener));
            }
        }
    }

    /// The path and body of request `r`.
    fn request(&self, r: u64) -> (&'static str, String) {
        match self {
            Self::Simulated(_) => (
                "/v1/chat/completions",
                format!(
                    r#"{{"model":"llama-3-8b","messages":[{{"role":"user","content":"request {r} asks about GPU settlement"}}],"max_tokens":{},"stream":{}}}"#,
                    16 + (r % 5) * 8,
                    r % 2 == 1
                ),
            ),
            #[cfg(feature = "real-model")]
            Self::Real(_, true) => {
                // Short answers (8 to 16 tokens; the prompt costs most here), every
                // other one streamed; greedy.
                const QUESTIONS: [&str; 4] = [
                    "What is a GPU?",
                    "Say hello to the operator.",
                    "Name one use of embeddings.",
                    "Why settle usage on a blockchain?",
                ];
                let question = QUESTIONS[usize::try_from(r).unwrap_or(0) % QUESTIONS.len()];
                (
                    "/v1/chat/completions",
                    json!({
                        "model": self.model(),
                        "messages": [{ "role": "user", "content": question }],
                        "max_tokens": 8 + (r % 3) * 4,
                        "temperature": 0,
                        "stream": r % 2 == 1,
                    })
                    .to_string(),
                )
            }
            #[cfg(feature = "real-model")]
            Self::Real(worker, false) => {
                // 1 to 8 texts of varied length per request.
                const TEXTS: [&str; 6] = [
                    "How do I rotate the oracle keys of a Tally deployment?",
                    "GPU operators are paid for metered inference, not emissions.",
                    "Settlement is cumulative: a replayed receipt never pays twice.",
                    "Embeddings of support tickets, product descriptions and search queries.",
                    "A client escrows USDC for a job and gets back whatever was not used.",
                    "Le modèle lit des phrases en plusieurs langues — 日本語 too.",
                ];
                let n = 1 + usize::try_from(r % 8).unwrap_or(0);
                let input: Vec<String> = (0..n)
                    .map(|k| {
                        format!(
                            "{} (request {r}, part {k})",
                            TEXTS[(usize::try_from(r).unwrap_or(0) + k) % TEXTS.len()]
                        )
                    })
                    .collect();
                (
                    "/v1/embeddings",
                    json!({ "model": worker.embeddings_model_name(), "input": input }).to_string(),
                )
            }
        }
    }

    /// Tokens the inference server itself says it served (its own counter), where known.
    fn served_tokens(&self) -> Option<u64> {
        match self {
            Self::Simulated(_) => None,
            #[cfg(feature = "real-model")]
            Self::Real(worker, _) => Some(worker.tokens_served()),
        }
    }
}

/// Priced like inference APIs, per million tokens in base units of a 6-decimal
/// stablecoin: $0.15 / 1M input tokens, $0.60 / 1M output tokens.
const PRICES: Prices = Prices {
    input: 150_000,
    output: 600_000,
};
const MAX_TOKENS_PER_JOB: u64 = 1_000_000;
const FEE_BPS: u16 = 250;
const CHALLENGE_WINDOW: u32 = 60;
const GRACE: u32 = 600;

fn step(quiet: bool, text: &str) {
    if !quiet {
        eprintln!("• {text}");
    }
}

/// Runs the demo; returns its JSON summary (printed as a table unless `json`).
pub fn run(args: &DemoArgs, quiet: bool) -> Result<Value, CliError> {
    let quorum =
        quorum::QuorumCast::new(args.oracles, args.threshold.unwrap_or(args.oracles / 2 + 1))?;
    // The model first: a missing model fails before anything else is set up.
    let upstream = Upstream::start(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::io("start the async runtime"))?;
    let dir = std::env::temp_dir().join(format!("tally-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(CliError::io("create the demo directory"))?;
    let mut stage = set_up(args, &upstream, quorum.as_ref(), quiet)?;
    let oracles = match &quorum {
        Some(q) => Some(Oracles {
            members: runtime.block_on(quorum::Members::start(q, &stage.chain, &dir))?,
            cast: q,
        }),
        None => None,
    };
    let served = serve(
        args,
        &stage,
        &upstream,
        (&runtime, &dir),
        oracles.as_ref(),
        quiet,
    )?;
    let settled = settle(&mut stage, &served, oracles.as_ref(), quiet)?;
    let ended = end_jobs(&mut stage, quorum.as_ref(), quiet)?;
    if let Some(oracles) = oracles {
        runtime.block_on(oracles.members.stop())?;
    }
    reconcile(&stage, &upstream, &served, &settled, &ended, quiet)
}

/// With `--oracles`: the set beyond the cast's oracle, and its members' daemons.
struct Oracles<'a> {
    cast: &'a quorum::QuorumCast,
    members: quorum::Members,
}

/// The demo's deployment on the embedded chain, its jobs opened.
struct Stage {
    chain: Shared<EmbeddedChain>,
    cast: Cast,
    mint: MintRef,
    /// The mint's amounts as the demo prints them.
    money: Money,
    client_tokens: Pubkey,
    /// What the client put in escrow, over every job.
    funding: u64,
    /// The jobs the gateway serves.
    jobs: Vec<Pubkey>,
    /// A job nobody uses: it expires.
    stalled: Pubkey,
}

/// The embedded chain with the program, the deployment (the shared bootstrap:
/// `tally_client::bootstrap`), and the client's jobs, priced like inference and
/// bound to the model served.
fn set_up(
    args: &DemoArgs,
    upstream: &Upstream,
    quorum: Option<&quorum::QuorumCast>,
    quiet: bool,
) -> Result<Stage, CliError> {
    let program = args
        .program
        .clone()
        .unwrap_or_else(EmbeddedChain::default_program_path);
    let deployer = Keypair::new();
    let mut chain = EmbeddedChain::new(&program, &deployer.pubkey())?;
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1_795_564_800, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    // With a quorum, a term the cast's oracle leads.
    chain.set_time(quorum.map_or(start, |q| q.leading_time(start)));
    step(
        quiet,
        &format!(
            "embedded chain up: Tally {} (SBF, {} bytes) deployed",
            tally::ID,
            std::fs::metadata(&program).map_or(0, |m| m.len())
        ),
    );
    chain.airdrop(&deployer.pubkey(), 1_000_000_000_000)?;
    let cast = Cast::new();
    cast.fund(&mut chain, &deployer, 100_000_000_000)?;
    let mut settings = cast.settings(FEE_BPS, CHALLENGE_WINDOW, GRACE);
    if let Some(quorum) = quorum {
        settings = quorum.settings(settings);
    }
    let mint = bootstrap::configure(&mut chain, &deployer, &cast, settings)?;
    let oracles = match quorum {
        Some(q) => {
            q.register_gateway(&mut chain, &cast)?;
            format!(
                "{}-of-{} oracles (leading: {}), gateway key {} registered by the operator",
                q.threshold,
                q.others.len() + 1,
                cast.oracle.pubkey(),
                q.gateway_key.pubkey()
            )
        }
        None => format!("oracle {}", cast.oracle.pubkey()),
    };
    step(
        quiet,
        &format!(
            "deployment configured: fee {FEE_BPS} bps, {oracles}, operator {}",
            cast.operator.pubkey()
        ),
    );

    // The client funds its wallet and opens jobs (one more that will stall).
    let funding = tally_client::deposit_for(PRICES, MAX_TOKENS_PER_JOB)
        .map_err(ChainError::from)?
        * (args.jobs + 1);
    let terms = OpenJobArgs {
        job_id: 0,
        unit_kind: 0,
        input_price: PRICES.input,
        output_price: PRICES.output,
        model: tally_client::model_hash(&upstream.model()),
        max_units: MAX_TOKENS_PER_JOB,
        deadline: chain.clock()?.unix_timestamp + 3_600,
        spend_cap_per_hour: 0,
    };
    let (client_tokens, mut jobs) =
        bootstrap::open_jobs(&mut chain, &cast, mint, funding, terms, 0..=args.jobs)?;
    let stalled = jobs.pop().expect("open_jobs opens args.jobs + 1 jobs");
    let money = Money::of(&chain, &mint.mint, Units::Tokens)?;
    step(
        quiet,
        &format!(
            "client {} escrowed {} in {} jobs",
            cast.client.pubkey(),
            money.show(funding),
            jobs.len() + 1
        ),
    );
    Ok(Stage {
        chain: Shared::new(chain),
        cast,
        mint,
        money,
        client_tokens,
        funding,
        jobs,
        stalled,
    })
}

/// What the gateway served.
struct Served {
    store_path: PathBuf,
    invoices_dir: PathBuf,
    clock: Arc<ChainClock>,
    requests: u64,
    last_completion: std::time::Instant,
}

/// The GPU worker and the oracle gateway on loopback, one API key per job; every job
/// is sent `args.requests` requests, each metered into the oracle's store.
fn serve(
    args: &DemoArgs,
    stage: &Stage,
    upstream: &Upstream,
    (runtime, dir): (&tokio::runtime::Runtime, &std::path::Path),
    oracles: Option<&Oracles>,
    quiet: bool,
) -> Result<Served, CliError> {
    let store_path = dir.join("oracle.db");
    let jobs = &stage.jobs;
    let api_keys: HashMap<String, String> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (format!("demo-key-{i}"), j.to_string()))
        .collect();
    let clock = ChainClock::synced(&stage.chain)?;
    let (gateway_url, requests, last_completion) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(CliError::io("listen on 127.0.0.1"))?;
        let upstream_url = format!(
            "http://{}",
            listener
                .local_addr()
                .map_err(CliError::io("listen on 127.0.0.1"))?
        );
        upstream.serve(listener);
        let gateway = Gateway::new(
            GatewaySettings::new(upstream_url).with_api_keys(api_keys.clone()),
            &store_path,
            Arc::clone(&clock),
        )?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(CliError::io("listen on 127.0.0.1"))?;
        let url = format!(
            "http://{}",
            listener
                .local_addr()
                .map_err(CliError::io("listen on 127.0.0.1"))?
        );
        tokio::spawn(gateway.serve(listener));
        if let Some(oracles) = oracles {
            let forwarder =
                oracles
                    .members
                    .forwarder(&store_path, oracles.cast, Arc::clone(&clock))?;
            // Sends until the demo's runtime ends (the task keeps its stop signal).
            let (stopper, stop) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let _stopper = stopper;
                forwarder.forward_until(stop).await
            });
        }
        let (served, last_completion) =
            send_requests(&url, args.requests, jobs.len(), upstream, quiet).await?;
        // Streams commit when they end: wait until every request is in the store.
        for _ in 0..200 {
            if Store::open(&store_path).and_then(|s| s.record_count())? >= served {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if let Some(oracles) = oracles {
            oracles.members.wait_for_records(served).await?;
        }
        Ok::<_, CliError>((url, served, last_completion))
    })?;
    step(
        quiet,
        &format!(
            "{requests} requests served by {} through the gateway at {gateway_url}, each metered",
            upstream.describe()
        ),
    );
    if let Some(oracles) = oracles {
        step(
            quiet,
            &format!(
                "the gateway signed each record and sent it to the {} other oracles; each checked the signature against the operator's node keys on chain and holds all {requests}",
                oracles.cast.others.len()
            ),
        );
    }
    Ok(Served {
        store_path,
        invoices_dir: dir.join("invoices"),
        clock,
        requests,
        last_completion,
    })
}

/// `requests` rounds of one request per job key, with a progress bar; returns how
/// many were answered and when the last one completed.
async fn send_requests(
    url: &str,
    requests: u64,
    jobs: usize,
    upstream: &Upstream,
    quiet: bool,
) -> Result<(u64, std::time::Instant), CliError> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(requests * jobs as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("  requests {bar:30} {pos}/{len}")
            .map_err(CliError::io("draw a progress bar"))?,
    );
    let http = reqwest::Client::new();
    let mut served = 0u64;
    let mut last_completion = std::time::Instant::now();
    for r in 0..requests {
        for key in 0..jobs {
            let (path, body) = upstream.request(r);
            let response = http
                .post(format!("{url}{path}"))
                .bearer_auth(format!("demo-key-{key}"))
                .body(body)
                .send()
                .await
                .map_err(CliError::io("reach the gateway"))?;
            if !response.status().is_success() {
                return Err(CliError::Gateway(response.status()));
            }
            response
                .bytes()
                .await
                .map_err(CliError::io("read the gateway's answer"))?;
            last_completion = std::time::Instant::now();
            served += 1;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok((served, last_completion))
}

/// What the oracle settled, and what the metered usage owes.
struct Settled {
    /// Records in the store (every request metered).
    records: u64,
    /// With `--oracles`: the records each other oracle's store holds.
    held: Option<Vec<u64>>,
    /// With `--oracles`: the set, the threshold and `held`, for the summary.
    quorum: Option<Value>,
    metered_units: u64,
    /// Each job's usage at its prices, input and output tokens apart, each job's
    /// total rounded once (the payout rule).
    owed: u128,
    completion_to_settled_ms: f64,
}

/// The oracle's batcher settles cumulative receipts in one round.
fn settle(
    stage: &mut Stage,
    served: &Served,
    oracles: Option<&Oracles>,
    quiet: bool,
) -> Result<Settled, CliError> {
    let mut batcher = Batcher::new(
        Store::open(&served.store_path)?,
        stage.cast.oracle.insecure_clone(),
        Arc::clone(&served.clock),
    )
    .with_invoices_dir(served.invoices_dir.clone());
    if let Some(oracles) = oracles {
        // The leader asks the others to co-sign, over HTTP.
        batcher = batcher.with_quorum(tally_oracle::quorum::Quorum::new(
            &oracles.members.leader_settings(),
        )?);
    }
    stage.chain.lock().advance(5);
    let report = batcher.run_round(&mut stage.chain)?;
    // From the last request's completion to its usage confirmed on-chain (the oracle
    // runs its round as soon as the records are in; a deployment adds its interval).
    let completion_to_settled_ms = served.last_completion.elapsed().as_secs_f64() * 1_000.0;
    if report.failed > 0 {
        return Err(CliError::Settlement(report.errors));
    }
    let records = batcher.store.all_records()?;
    let metered_units: u64 = records
        .iter()
        .map(|r| r.prompt_tokens + r.completion_tokens)
        .sum();
    let mut per_job: std::collections::BTreeMap<&str, Usage> = std::collections::BTreeMap::new();
    for r in &records {
        let usage = per_job.entry(r.job.as_str()).or_default();
        usage.units += r.prompt_tokens + r.completion_tokens;
        usage.output += r.completion_tokens;
    }
    let mut owed = 0u128;
    for usage in per_job.values() {
        owed += tally_client::amount_owed(PRICES, *usage).map_err(ChainError::from)?;
    }
    let held = oracles.map(|o| o.members.records()).transpose()?;
    let signed = oracles.map_or_else(
        || "oracle settled".to_string(),
        |o| {
            format!(
                "oracles settled ({} signatures each: the leader's and co-signers' who found every invoice line in their own stores)",
                o.cast.threshold
            )
        },
    );
    step(
        quiet,
        &format!(
            "{signed} {} receipts ({metered_units} tokens) on-chain",
            report.confirmed
        ),
    );
    let quorum = oracles.map(|o| {
        json!({
            "oracles": o.cast.others.len() + 1,
            "threshold": o.cast.threshold,
            "records_held_by_the_others": held,
        })
    });
    Ok(Settled {
        quorum,
        held,
        records: batcher.store.record_count()?,
        metered_units,
        owed,
        completion_to_settled_ms,
    })
}

/// How the jobs ended.
struct Ended {
    refunded: u64,
    claimed: u64,
}

/// Each served job completes with its final receipt (the rest of its escrow goes
/// back); the operator claims once the challenge window has passed; the stalled job
/// expires and anyone refunds it.
fn end_jobs(
    stage: &mut Stage,
    quorum: Option<&quorum::QuorumCast>,
    quiet: bool,
) -> Result<Ended, CliError> {
    let Stage {
        chain, cast, mint, ..
    } = stage;
    let attesters = quorum.map_or_else(|| vec![&cast.oracle], |q| q.attesters(&cast.oracle));
    let money = &stage.money;
    let mut refunded = 0u64;
    for job in &stage.jobs {
        let (refund, _) = bootstrap::complete_settled(
            chain,
            &attesters,
            &cast.operator.pubkey(),
            *mint,
            stage.client_tokens,
            job,
        )?;
        refunded += refund;
    }
    step(
        quiet,
        &format!(
            "{} jobs completed; {} refunded to the client",
            stage.jobs.len(),
            money.show(refunded)
        ),
    );
    chain.lock().advance(2 * i64::from(CHALLENGE_WINDOW) + 1);
    let claimed = ops::claim(chain, &cast.operator, &mint.mint)?;
    step(quiet, &format!("operator claimed {}", money.show(claimed)));
    chain.lock().advance(3_600 + i64::from(GRACE) + 1);
    let expired_refund = ops::expire_job(chain, &cast.treasury, &stage.stalled)?;
    refunded += expired_refund;
    step(
        quiet,
        &format!(
            "stalled job {} expired: {} refunded",
            stage.stalled,
            money.show(expired_refund)
        ),
    );
    Ok(Ended { refunded, claimed })
}

/// The revenue ledger and every balance checked against what was metered; the JSON
/// summary.
fn reconcile(
    stage: &Stage,
    upstream: &Upstream,
    served: &Served,
    settled: &Settled,
    ended: &Ended,
    quiet: bool,
) -> Result<Value, CliError> {
    let (chain, mint) = (&stage.chain, stage.mint);
    let revenue = ops::revenue(chain, &mint.mint, 2)?;
    let gross: u64 = revenue.iter().map(|d| d.gross).sum();
    let fees: u64 = revenue.iter().map(|d| d.fees).sum();
    let units: u64 = revenue.iter().map(|d| d.units).sum();
    let output_units: u64 = revenue.iter().map(|d| d.output_units).sum();
    let client_left = ops::token_balance(chain, &stage.client_tokens)?;
    let vault_left = ops::token_balance(chain, &pda::vault_tokens(&mint.mint))?;
    let operator = stage.cast.operator.pubkey();
    let operator_tokens = pda::associated_token(&operator, &mint.mint, &mint.token_program);
    let operator_balance = ops::token_balance(chain, &operator_tokens)?;
    let (funding, claimed) = (stage.funding, ended.claimed);
    let mut checks = vec![
        ("every request metered", settled.records == served.requests),
        (
            "on-chain units = metered units",
            units == settled.metered_units,
        ),
        (
            "paid = metered input and output tokens × their prices",
            u128::from(gross) == settled.owed,
        ),
        (
            "operator claimed = paid − fees",
            claimed == gross - fees && operator_balance == claimed,
        ),
        ("client = funded − paid", client_left == funding - gross),
        ("refunds = escrow − paid", ended.refunded == funding - gross),
        ("vault holds only unwithdrawn fees", vault_left == fees),
    ];
    if let Some(held) = &settled.held {
        checks.push((
            "every oracle's own store holds every record",
            held.iter().all(|n| *n == served.requests),
        ));
    }
    if let Some(tokens) = upstream.served_tokens() {
        // The model's own counter (its /metrics) agrees with the oracle's metering.
        checks.push((
            "tokens the model served = metered units",
            tokens == settled.metered_units,
        ));
    }
    let reconciled = checks.iter().all(|(_, ok)| *ok);
    if !quiet {
        eprintln!("\non-chain revenue (metered inference, not emissions):");
        eprintln!("{}", crate::output::revenue_table(&revenue, &stage.money));
        eprintln!();
        for (what, ok) in &checks {
            eprintln!("  {} {what}", if *ok { "✓" } else { "✗" });
        }
    }
    Ok(json!({
        "model": upstream.model(),
        "jobs": stage.jobs.len() + 1,
        "requests": served.requests,
        "units": units,
        "output_units": output_units,
        "prices_per_million": { "input": PRICES.input, "output": PRICES.output },
        "deposit_per_job": tally_client::deposit_for(PRICES, MAX_TOKENS_PER_JOB).map_err(ChainError::from)?,
        "paid": gross,
        "refunded": ended.refunded,
        "fees": fees,
        "claimed": claimed,
        "reconciled": reconciled,
        "completion_to_settled_ms": (settled.completion_to_settled_ms * 100.0).round() / 100.0,
        "quorum": settled.quorum,
    }))
}
