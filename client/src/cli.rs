//! The `tally` command line: Solana CLI conventions (`--url/-u` with cluster
//! monikers, `--keypair/-k` defaulting to the Solana CLI config, `--output json|table`),
//! every command a thin layer over [`crate::ops`] and a [`Chain`].
use std::path::{Path, PathBuf};

use anchor_lang::prelude::Pubkey;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use solana_keypair::Keypair;
use solana_signer::Signer;

use crate::chain::{Chain, ChainError};
use crate::ops::{self, OracleChange};
use crate::{InitializeConfigArgs, OpenJobArgs, OperatorArgs, UpdateConfigArgs};

/// Pay-per-job settlement for GPU inference on Solana.
#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Pay-per-job settlement for GPU inference on Solana"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, as the Solana CLI spells them.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Cluster: mainnet-beta, devnet, testnet, localhost, or an RPC URL
    /// [default: the Solana CLI config's json_rpc_url]
    #[arg(short = 'u', long = "url", global = true, env = "TALLY_URL")]
    pub url: Option<String>,
    /// Signer keypair file [default: the Solana CLI config's keypair_path]
    #[arg(short = 'k', long = "keypair", global = true, env = "TALLY_KEYPAIR")]
    pub keypair: Option<PathBuf>,
    /// Solana CLI config file [default: ~/.config/solana/cli/config.yml]
    #[arg(short = 'C', long = "config", global = true)]
    pub config: Option<PathBuf>,
    /// Output format
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Priority fee in micro-lamports per compute unit
    #[arg(long, global = true, default_value_t = 0)]
    pub priority_fee: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pay for GPU work: open, fund, inspect and end jobs
    #[command(subcommand)]
    Job(JobCommand),
    /// Run a GPU operator: register, claim earnings
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Administer a deployment
    #[command(subcommand)]
    Admin(AdminCommand),
    /// On-chain revenue per UTC day: settled metered usage, never emissions
    Revenue {
        /// Mint the revenue is paid in
        #[arg(long)]
        mint: Pubkey,
        /// How many days back from today
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Open a job and escrow what its units cost from your token account
    ///
    /// Prices are in the mint's base units per million units, as inference APIs quote
    /// them: $0.15 / 1M input and $0.60 / 1M output tokens in USDC (6 decimals) is
    /// `--input-price 150000 --output-price 600000`.
    Open {
        /// The operator's authority (its wallet)
        #[arg(long)]
        operator: Pubkey,
        #[arg(long)]
        mint: Pubkey,
        /// Price per million input (prompt) tokens, or per million units of another
        /// kind, in the mint's base units
        #[arg(long)]
        input_price: u64,
        /// Price per million output (completion) tokens [default: the input price for
        /// tokens; other kinds have no output price]
        #[arg(long)]
        output_price: Option<u64>,
        /// The model the job pays for, as the inference server names it (the gateway
        /// refuses requests for any other) [default: any model]
        #[arg(long)]
        model: Option<String>,
        /// Units to escrow for (the deposit prices them all at the higher price)
        #[arg(long)]
        units: u64,
        /// Job id: ids only go up and are never reused [default: the current Unix
        /// time, or your next free id if higher]
        #[arg(long)]
        id: Option<u64>,
        /// Seconds from now until usage stops being billable
        #[arg(long, default_value_t = 86_400)]
        deadline_in: i64,
        /// What a unit is
        #[arg(long, value_enum, default_value_t = UnitKindArg::Tokens)]
        kind: UnitKindArg,
        /// Most the job may be billed per hour (0 = no cap)
        #[arg(long, default_value_t = 0)]
        spend_cap: u64,
    },
    /// Add to a job's escrow
    TopUp { job: Pubkey, amount: u64 },
    /// Cancel a job with no usage yet: full refund
    Cancel { job: Pubkey },
    /// Show a job
    Status { job: Pubkey },
    /// List jobs (yours by default)
    List {
        /// List every client's jobs, not only yours
        #[arg(long)]
        all: bool,
        /// Only jobs of this operator (its authority)
        #[arg(long)]
        operator: Option<Pubkey>,
    },
    /// Refund a job past its deadline and grace (anyone may)
    Expire { job: Pubkey },
    /// Close an ended job once its client can no longer dispute it: rent back to the
    /// client (anyone may)
    Close { job: Pubkey },
    /// Print a key that spends this job at the operator's gateway, signed by your
    /// wallet (the job's client): `Authorization: Bearer <key>`. Nothing is sent.
    Key {
        job: Pubkey,
        /// How long the key works: 90s, 30m, 12h, 7d (the chain's clock)
        #[arg(long, default_value = "7d", value_parser = parse_duration_secs)]
        expires_in: i64,
        /// Most the key may spend, in the mint's base units [default: up to the escrow]
        #[arg(long)]
        limit: Option<u64>,
    },
}

/// `90`, `90s`, `30m`, `12h`, `7d` → seconds.
pub fn parse_duration_secs(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => {
            return Err(format!(
                "`{text}` is not a duration: write a number with s, m, h, d or w (e.g. 7d)"
            ))
        }
    };
    number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|secs| *secs > 0)
        .ok_or_else(|| format!("`{text}` is not a positive duration (e.g. 7d)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UnitKindArg {
    Tokens,
    GpuSeconds,
    Requests,
    Frames,
}

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Register your keypair as a GPU operator
    Register(OperatorFields),
    /// Change your payout owner and node keys
    Update(OperatorFields),
    /// Claim everything matured, in every mint you have earnings in
    Claim,
    /// Show earnings per mint
    Earnings {
        /// Operator authority [default: your keypair]
        #[arg(long)]
        operator: Option<Pubkey>,
    },
}

#[derive(Debug, Args)]
pub struct OperatorFields {
    /// Owner of the token accounts claims are paid to [default: your keypair]
    #[arg(long)]
    pub payout: Option<Pubkey>,
    /// A node key that signs your workers' reports (repeat, at most 4)
    #[arg(long = "node-key")]
    pub node_keys: Vec<Pubkey>,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create the config (the program's upgrade authority signs)
    Init {
        #[arg(long)]
        treasury: Pubkey,
        #[arg(long)]
        arbiter: Pubkey,
        #[arg(long, default_value_t = 250)]
        fee_bps: u16,
        #[arg(long, default_value_t = 3_600)]
        challenge_window: u32,
        #[arg(long, default_value_t = 3_600)]
        expiry_grace: u32,
        #[arg(long, default_value_t = 604_800)]
        dispute_timeout: u32,
        /// Oracle key (repeat, at most 7)
        #[arg(long = "oracle", required = true)]
        oracles: Vec<Pubkey>,
        #[arg(long, default_value_t = 1)]
        threshold: u8,
    },
    /// Change settings
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Change the oracle set (bumps its version)
    #[command(subcommand)]
    Oracle(OracleCommand),
    /// Stop new deposits (refunds and claims keep working)
    Pause,
    /// Allow new deposits again
    Unpause,
    /// Accept a mint for payment
    #[command(subcommand)]
    Mint(MintCommand),
    /// Deploy and configure a cluster as a manifest describes (migrations/*.toml):
    /// deploys the program if missing, creates or updates the config, accepts mints.
    /// Idempotent: on a cluster that already matches it sends nothing.
    Migrate {
        /// The manifest, e.g. migrations/localnet.toml
        manifest: PathBuf,
        /// Print the steps without sending anything
        #[arg(long)]
        dry_run: bool,
        /// Upgrade a deployed program that differs from the manifest's build
        #[arg(long)]
        upgrade: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Set one or more settings
    Set {
        #[arg(long)]
        fee_bps: Option<u16>,
        #[arg(long)]
        treasury: Option<Pubkey>,
        #[arg(long)]
        arbiter: Option<Pubkey>,
        #[arg(long)]
        challenge_window: Option<u32>,
        #[arg(long)]
        expiry_grace: Option<u32>,
        #[arg(long)]
        dispute_timeout: Option<u32>,
    },
    /// Show the config
    Show,
}

#[derive(Debug, Subcommand)]
pub enum OracleCommand {
    Add {
        key: Pubkey,
        #[arg(long)]
        threshold: Option<u8>,
    },
    Remove {
        key: Pubkey,
        #[arg(long)]
        threshold: Option<u8>,
    },
    Rotate {
        old: Pubkey,
        new: Pubkey,
    },
}

#[derive(Debug, Subcommand)]
pub enum MintCommand {
    Add { mint: Pubkey },
}

/// What a command produced: a JSON value and a human table of the same data.
#[derive(Debug, Clone)]
pub struct Output {
    pub json: serde_json::Value,
    pub table: String,
}

impl Output {
    fn of<T: Serialize>(value: &T, table: String) -> Self {
        Self {
            json: serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
            table,
        }
    }

    fn message(text: String, json: serde_json::Value) -> Self {
        Self { json, table: text }
    }

    /// The output in `format`.
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Table => self.table.clone(),
            OutputFormat::Json => serde_json::to_string_pretty(&self.json).unwrap_or_default(),
        }
    }
}

/// Aligned columns: a header row and data rows.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(ToString::to_string).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

fn key_value(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A job's prices in words: base units of its mint per million units.
fn price_text(job: &ops::JobView) -> String {
    if job.unit_kind == "tokens" {
        format!(
            "{} per 1M input tokens, {} per 1M output tokens",
            job.input_price, job.output_price
        )
    } else {
        format!("{} per 1M {}", job.input_price, job.unit_kind)
    }
}

fn job_table(job: &ops::JobView) -> String {
    key_value(&[
        ("job", job.address.clone()),
        ("id", job.job_id.to_string()),
        ("status", job.status.clone()),
        ("client", job.client.clone()),
        ("operator", job.operator.clone()),
        ("mint", job.mint.clone()),
        ("unit", job.unit_kind.clone()),
        ("price", price_text(job)),
        ("model", job.model.clone()),
        ("deposited", job.deposited.to_string()),
        ("escrow left", job.escrow_left.to_string()),
        (
            "settled units",
            if job.unit_kind == "tokens" {
                format!("{} ({} output)", job.settled_units, job.settled_output)
            } else {
                job.settled_units.to_string()
            },
        ),
        ("settled gross", job.settled_gross.to_string()),
        ("receipts", job.receipts.to_string()),
        ("deadline", job.deadline.to_string()),
        ("disputed", job.disputed_amount.to_string()),
    ])
}

impl Command {
    /// Whether the command only reads the chain and never uses the signer, not even
    /// its address (`job list` without `--all` lists the signer's own jobs, so it
    /// does). Such commands run without a keypair file.
    pub fn reads_only(&self) -> bool {
        match self {
            Command::Job(JobCommand::Status { .. })
            | Command::Admin(AdminCommand::Config(ConfigCommand::Show))
            | Command::Revenue { .. } => true,
            Command::Job(JobCommand::List { all, operator }) => *all || operator.is_some(),
            Command::Operator(OperatorCommand::Earnings { operator }) => operator.is_some(),
            _ => false,
        }
    }
}

/// Runs `command` against `chain`, signing with `signer`.
pub fn execute<C: Chain>(
    command: &Command,
    chain: &mut C,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    match command {
        Command::Job(job) => execute_job(job, chain, signer),
        Command::Operator(op) => execute_operator(op, chain, signer),
        Command::Admin(admin) => execute_admin(admin, chain, signer),
        Command::Revenue { mint, days } => {
            let days = ops::revenue(chain, mint, *days)?;
            let text = if days.is_empty() {
                format!("no settled revenue in {mint} in this period")
            } else {
                revenue_table(&days)
            };
            Ok(Output::of(&days, text))
        }
    }
}

/// The per-day revenue table (`tally revenue`, `tally demo`).
pub fn revenue_table(days: &[ops::RevenueView]) -> String {
    let rows: Vec<Vec<String>> = days
        .iter()
        .map(|d| {
            vec![
                d.date.clone(),
                d.gross.to_string(),
                d.fees.to_string(),
                d.operator_net.to_string(),
                d.units.to_string(),
                d.output_units.to_string(),
                d.receipts.to_string(),
                d.jobs_started.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "day (UTC)",
            "revenue",
            "fees",
            "operators",
            "units",
            "output tokens",
            "receipts",
            "jobs started",
        ],
        &rows,
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn execute_job<C: Chain>(
    command: &JobCommand,
    chain: &mut C,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    match command {
        JobCommand::Open {
            operator,
            mint,
            input_price,
            output_price,
            model,
            units,
            id,
            deadline_in,
            kind,
            spend_cap,
        } => {
            let now = chain.clock()?.unix_timestamp;
            // Default: the current Unix time, or the next free id if that is higher
            // (ids only go up; another tool may have used larger ones).
            let job_id = match id {
                Some(id) => *id,
                None => u64::try_from(unix_now())
                    .unwrap_or(0)
                    .max(ops::next_job_id(chain, &signer.pubkey())?),
            };
            let args = OpenJobArgs {
                job_id,
                unit_kind: *kind as u8,
                input_price: *input_price,
                output_price: match (output_price, kind) {
                    (Some(price), _) => *price,
                    (None, UnitKindArg::Tokens) => *input_price,
                    (None, _) => 0,
                },
                model: model.as_deref().map_or([0; 32], crate::model_hash),
                max_units: *units,
                deadline: now.saturating_add(*deadline_in),
                spend_cap_per_hour: *spend_cap,
            };
            let job = ops::open_job(chain, signer, operator, mint, args)?;
            Ok(Output::of(&job, job_table(&job)))
        }
        JobCommand::TopUp { job, amount } => {
            let job = ops::top_up(chain, signer, job, *amount)?;
            Ok(Output::of(&job, job_table(&job)))
        }
        JobCommand::Cancel { job } => {
            let refunded = ops::cancel_job(chain, signer, job)?;
            Ok(Output::message(
                format!("job {job} cancelled: {refunded} refunded"),
                serde_json::json!({ "job": job.to_string(), "refunded": refunded }),
            ))
        }
        JobCommand::Expire { job } => {
            let refunded = ops::expire_job(chain, signer, job)?;
            Ok(Output::message(
                format!("job {job} expired: {refunded} refunded to its client"),
                serde_json::json!({ "job": job.to_string(), "refunded": refunded }),
            ))
        }
        JobCommand::Key {
            job,
            expires_in,
            limit,
        } => {
            let key = ops::job_key(chain, signer, job, *expires_in, *limit)?;
            let limit = key
                .spend_limit
                .map_or_else(|| "up to the escrow".to_string(), |l| l.to_string());
            let text = format!(
                "{}\n\njob          {}\nkey id       {}\nexpires at   {} (unix seconds, chain clock)\nspend limit  {limit}\n\nSend it as `Authorization: Bearer <key>` to the operator's gateway. Anyone holding it can spend the job: keep it secret.",
                key.key, key.job, key.key_id, key.expires_at
            );
            Ok(Output::of(&key, text))
        }
        JobCommand::Close { job } => {
            ops::close_job(chain, signer, job)?;
            Ok(Output::message(
                format!("job {job} closed: its rent went back to its client"),
                serde_json::json!({ "job": job.to_string(), "closed": true }),
            ))
        }
        JobCommand::Status { job } => {
            let view = ops::JobView::new(job, &ops::job(chain, job)?);
            Ok(Output::of(&view, job_table(&view)))
        }
        JobCommand::List { all, operator } => {
            let me = signer.pubkey();
            let client = (!*all).then_some(&me);
            let jobs = ops::jobs(chain, client, operator.as_ref())?;
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .map(|j| {
                    vec![
                        j.address.clone(),
                        j.job_id.to_string(),
                        j.status.clone(),
                        j.escrow_left.to_string(),
                        j.settled_units.to_string(),
                        j.settled_gross.to_string(),
                    ]
                })
                .collect();
            let text = if rows.is_empty() {
                "no jobs".to_string()
            } else {
                table(
                    &["job", "id", "status", "escrow left", "units", "paid"],
                    &rows,
                )
            };
            Ok(Output::of(&jobs, text))
        }
    }
}

fn operator_args(fields: &OperatorFields, signer: &Keypair) -> OperatorArgs {
    OperatorArgs {
        payout_owner: fields.payout.unwrap_or_else(|| signer.pubkey()),
        node_keys: fields.node_keys.clone(),
    }
}

fn execute_operator<C: Chain>(
    command: &OperatorCommand,
    chain: &mut C,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    match command {
        OperatorCommand::Register(fields) | OperatorCommand::Update(fields) => {
            let update = matches!(command, OperatorCommand::Update(_));
            let args = operator_args(fields, signer);
            ops::register_operator(chain, signer, args.clone(), update)?;
            let verb = if update { "updated" } else { "registered" };
            Ok(Output::message(
                format!(
                    "operator {} {verb}: payouts to {}, {} node key(s)",
                    crate::pda::operator(&signer.pubkey()),
                    args.payout_owner,
                    args.node_keys.len()
                ),
                serde_json::json!({
                    "operator": crate::pda::operator(&signer.pubkey()).to_string(),
                    "payout_owner": args.payout_owner.to_string(),
                }),
            ))
        }
        OperatorCommand::Claim => {
            let mut claimed = Vec::new();
            for e in ops::earnings(chain, &signer.pubkey())? {
                if e.claimable == 0 {
                    continue;
                }
                let mint: Pubkey = e
                    .mint
                    .parse()
                    .map_err(|_| ChainError::Other(format!("bad mint {}", e.mint)))?;
                let amount = ops::claim(chain, signer, &mint)?;
                claimed.push(serde_json::json!({ "mint": e.mint, "amount": amount }));
            }
            let text = if claimed.is_empty() {
                "nothing to claim yet: earnings mature after the challenge window".to_string()
            } else {
                claimed
                    .iter()
                    .map(|c| {
                        format!(
                            "claimed {} in {}",
                            c["amount"],
                            c["mint"].as_str().unwrap_or("?")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Ok(Output::message(text, serde_json::Value::Array(claimed)))
        }
        OperatorCommand::Earnings { operator } => {
            let authority = operator.unwrap_or_else(|| signer.pubkey());
            let views = ops::earnings(chain, &authority)?;
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|e| {
                    vec![
                        e.mint.clone(),
                        e.claimable.to_string(),
                        e.pending.to_string(),
                        e.frozen.to_string(),
                        e.total_earned.to_string(),
                        e.total_claimed.to_string(),
                    ]
                })
                .collect();
            let text = if rows.is_empty() {
                format!("no earnings yet for {authority}")
            } else {
                table(
                    &[
                        "mint",
                        "claimable",
                        "in window",
                        "disputed",
                        "earned",
                        "claimed",
                    ],
                    &rows,
                )
            };
            Ok(Output::of(&views, text))
        }
    }
}

fn execute_admin<C: Chain>(
    command: &AdminCommand,
    chain: &mut C,
    signer: &Keypair,
) -> Result<Output, ChainError> {
    let done = |what: String| {
        Ok(Output::message(
            what.clone(),
            serde_json::json!({ "ok": what }),
        ))
    };
    match command {
        AdminCommand::Init {
            treasury,
            arbiter,
            fee_bps,
            challenge_window,
            expiry_grace,
            dispute_timeout,
            oracles,
            threshold,
        } => {
            ops::init(
                chain,
                signer,
                InitializeConfigArgs {
                    treasury: *treasury,
                    arbiter: *arbiter,
                    fee_bps: *fee_bps,
                    challenge_window_secs: *challenge_window,
                    expiry_grace_secs: *expiry_grace,
                    dispute_timeout_secs: *dispute_timeout,
                    oracles: oracles.clone(),
                    oracle_threshold: *threshold,
                },
            )?;
            done(format!(
                "Tally initialized: config {}",
                crate::pda::config()
            ))
        }
        AdminCommand::Config(ConfigCommand::Set {
            fee_bps,
            treasury,
            arbiter,
            challenge_window,
            expiry_grace,
            dispute_timeout,
        }) => {
            ops::update_config(
                chain,
                signer,
                UpdateConfigArgs {
                    fee_bps: *fee_bps,
                    treasury: *treasury,
                    arbiter: *arbiter,
                    challenge_window_secs: *challenge_window,
                    expiry_grace_secs: *expiry_grace,
                    dispute_timeout_secs: *dispute_timeout,
                    ..UpdateConfigArgs::default()
                },
            )?;
            done("config updated".into())
        }
        AdminCommand::Config(ConfigCommand::Show) => {
            let c = ops::config(chain)?;
            let view = serde_json::json!({
                "admin": c.admin.to_string(),
                "treasury": c.treasury.to_string(),
                "arbiter": c.arbiter.to_string(),
                "fee_bps": c.fee_bps,
                "challenge_window_secs": c.challenge_window_secs,
                "expiry_grace_secs": c.expiry_grace_secs,
                "dispute_timeout_secs": c.dispute_timeout_secs,
                "paused": c.paused,
                "oracle_set_version": c.oracle_set_version,
                "oracle_threshold": c.oracle_threshold,
                "oracles": c.oracles.iter().map(ToString::to_string).collect::<Vec<_>>(),
            });
            let text = key_value(&[
                ("admin", c.admin.to_string()),
                ("treasury", c.treasury.to_string()),
                ("arbiter", c.arbiter.to_string()),
                ("fee", format!("{} bps", c.fee_bps)),
                ("challenge window", format!("{} s", c.challenge_window_secs)),
                ("expiry grace", format!("{} s", c.expiry_grace_secs)),
                ("dispute timeout", format!("{} s", c.dispute_timeout_secs)),
                ("paused", c.paused.to_string()),
                (
                    "oracles",
                    format!(
                        "{}-of-{} (version {}): {}",
                        c.oracle_threshold,
                        c.oracles.len(),
                        c.oracle_set_version,
                        c.oracles
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            ]);
            Ok(Output::message(text, view))
        }
        AdminCommand::Oracle(change) => {
            let (change, threshold) = match change {
                OracleCommand::Add { key, threshold } => (OracleChange::Add(*key), *threshold),
                OracleCommand::Remove { key, threshold } => {
                    (OracleChange::Remove(*key), *threshold)
                }
                OracleCommand::Rotate { old, new } => (
                    OracleChange::Rotate {
                        old: *old,
                        new: *new,
                    },
                    None,
                ),
            };
            ops::change_oracles(chain, signer, &change, threshold)?;
            let c = ops::config(chain)?;
            done(format!(
                "oracle set is now version {}: {}-of-{}",
                c.oracle_set_version,
                c.oracle_threshold,
                c.oracles.len()
            ))
        }
        AdminCommand::Pause | AdminCommand::Unpause => {
            let paused = matches!(command, AdminCommand::Pause);
            ops::update_config(
                chain,
                signer,
                UpdateConfigArgs {
                    paused: Some(paused),
                    ..UpdateConfigArgs::default()
                },
            )?;
            done(if paused {
                "paused: no new deposits".into()
            } else {
                "unpaused".into()
            })
        }
        AdminCommand::Migrate {
            manifest,
            dry_run,
            upgrade,
        } => {
            let base = manifest
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let mut deployment =
                crate::migrate::Manifest::read(manifest)?.resolve(&base, &signer.pubkey())?;
            if let Some(release) = deployment.release.as_mut() {
                release.upgrade |= *upgrade;
            }
            let report = if *dry_run {
                let (steps, notes) = crate::migrate::plan(chain, &signer.pubkey(), &deployment)?;
                crate::migrate::MigrationReport {
                    steps: steps.iter().map(ToString::to_string).collect(),
                    transactions: 0,
                    notes,
                }
            } else {
                crate::migrate::migrate(chain, signer, &deployment)?
            };
            let mut lines: Vec<String> = if report.changed() {
                let verb = if *dry_run { "would" } else { "did" };
                report
                    .steps
                    .iter()
                    .map(|s| format!("{verb}: {s}"))
                    .collect()
            } else {
                vec![format!(
                    "nothing to change: the cluster matches {}",
                    manifest.display()
                )]
            };
            lines.extend(report.notes.iter().map(|n| format!("note: {n}")));
            if !*dry_run && report.changed() {
                lines.push(format!("{} transactions sent", report.transactions));
            }
            let mut json = serde_json::to_value(&report).unwrap_or(serde_json::Value::Null);
            json["changed"] = serde_json::Value::Bool(report.changed());
            json["dry_run"] = serde_json::Value::Bool(*dry_run);
            Ok(Output::message(lines.join("\n"), json))
        }
        AdminCommand::Mint(MintCommand::Add { mint }) => {
            ops::add_mint(chain, signer, mint)?;
            done(format!(
                "mint {mint} accepted: vault {}",
                crate::pda::vault(mint)
            ))
        }
    }
}

/// Solana CLI settings this tool reuses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SolanaCliConfig {
    pub json_rpc_url: Option<String>,
    pub keypair_path: Option<String>,
}

/// Default location of the Solana CLI config.
pub fn default_solana_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config/solana/cli/config.yml"))
}

/// Reads `json_rpc_url` and `keypair_path` from a Solana CLI config (YAML of
/// `key: value` lines). A missing file is an empty config.
pub fn read_solana_config(path: &Path) -> Result<SolanaCliConfig, ChainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SolanaCliConfig::default()),
        Err(e) => {
            return Err(ChainError::Other(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let mut config = SolanaCliConfig::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value
            .trim()
            .trim_matches(|c| c == '"' || c == '\'')
            .to_string();
        match key.trim() {
            "json_rpc_url" => config.json_rpc_url = Some(value),
            "keypair_path" => config.keypair_path = Some(value),
            _ => {}
        }
    }
    Ok(config)
}

/// Expands Solana CLI cluster monikers (`-u m|d|t|l` and their long forms).
pub fn resolve_url(url: &str) -> String {
    match url {
        "m" | "mainnet-beta" => "https://api.mainnet-beta.solana.com".into(),
        "d" | "devnet" => "https://api.devnet.solana.com".into(),
        "t" | "testnet" => "https://api.testnet.solana.com".into(),
        "l" | "localhost" => "http://127.0.0.1:8899".into(),
        other => other.into(),
    }
}

/// Reads a Solana keypair file (a JSON array of 64 bytes).
pub fn read_keypair(path: &Path) -> Result<Keypair, ChainError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ChainError::Other(format!(
            "cannot read keypair {}: {e}. Pass --keypair, or create one with `solana-keygen new`",
            path.display()
        ))
    })?;
    let bytes: Vec<u8> = serde_json::from_str(&text).map_err(|e| {
        ChainError::Other(format!(
            "{} is not a Solana keypair file: {e}",
            path.display()
        ))
    })?;
    Keypair::try_from(bytes.as_slice())
        .map_err(|e| ChainError::Other(format!("{} is not a valid keypair: {e}", path.display())))
}

/// The URL and keypair path the global options select, after the Solana CLI config.
pub fn resolve_globals(global: &GlobalArgs) -> Result<(String, PathBuf), ChainError> {
    let config_path = global.config.clone().or_else(default_solana_config_path);
    let config = match &config_path {
        Some(path) => read_solana_config(path)?,
        None => SolanaCliConfig::default(),
    };
    let url = global
        .url
        .clone()
        .or(config.json_rpc_url)
        .unwrap_or_else(|| "mainnet-beta".into());
    let keypair = global
        .keypair
        .clone()
        .or_else(|| config.keypair_path.map(PathBuf::from))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/solana/id.json"))
        })
        .ok_or_else(|| ChainError::Other("no keypair: pass --keypair".into()))?;
    Ok((resolve_url(&url), keypair))
}
