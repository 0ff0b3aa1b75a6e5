//! The `tally` command line, one parser for the binary and the tests: Solana CLI
//! conventions (`--url/-u` with cluster monikers, `--keypair/-k` defaulting to the
//! Solana CLI config, `-C` for another config file, `--output json|table`).
use std::path::PathBuf;

use anchor_lang::prelude::Pubkey;
use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Type and print amounts in the mint's base units (integers: lamports for SOL)
    /// instead of tokens with its decimals
    #[arg(long, global = true)]
    pub base_units: bool,
}

impl GlobalArgs {
    /// How amounts are typed and printed.
    pub fn units(&self) -> crate::money::Units {
        if self.base_units {
            crate::money::Units::Base
        } else {
            crate::money::Units::Tokens
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// The commands that run against a chain with a signer ([`crate::execute`]).
#[derive(Debug, Subcommand)]
pub enum ChainCommand {
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
    /// Open a job and escrow what its units cost from your token account (in SOL:
    /// wrapped from your wallet)
    ///
    /// Prices are in tokens of the mint per million units, as inference APIs quote
    /// them: $0.15 / 1M input and $0.60 / 1M output tokens in USDC is
    /// `--input-price 0.15 --output-price 0.6`. Escrow either `--units` or a `--budget`.
    Open(OpenArgs),
    /// Add to a job's escrow (in SOL: wrapped from your wallet)
    TopUp {
        job: Pubkey,
        /// In tokens of the job's mint (base units with --base-units)
        amount: String,
    },
    /// Cancel a job with no usage yet: full refund (in SOL: unwrapped to your wallet)
    Cancel {
        job: Pubkey,
        #[command(flatten)]
        sol: SolOut,
    },
    /// Show a job
    Status { job: Pubkey },
    /// Follow a job live until it ends: units, spend, escrow left and when it runs
    /// out, a line per change (an account subscription on the cluster's websocket)
    Watch {
        job: Pubkey,
        /// The cluster's websocket [default: the RPC URL's, as the Solana CLI
        /// derives it: ws(s)://, next port]
        #[arg(long)]
        ws: Option<String>,
    },
    /// List jobs (yours by default)
    List {
        /// List every client's jobs, not only yours
        #[arg(long)]
        all: bool,
        /// Only jobs of this operator (its authority)
        #[arg(long)]
        operator: Option<Pubkey>,
    },
    /// Refund a job past its deadline and grace (anyone may; in SOL, unwrapped when
    /// its client expires it)
    Expire {
        job: Pubkey,
        #[command(flatten)]
        sol: SolOut,
    },
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
        /// Most the key may spend, in tokens of the job's mint [default: up to the
        /// escrow]
        #[arg(long)]
        limit: Option<String>,
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

/// What becomes of a refund or claim paid in wrapped SOL.
#[derive(Debug, Args, Clone, Copy)]
pub struct SolOut {
    /// Keep a payment in wrapped SOL as wSOL tokens instead of unwrapping it into
    /// your wallet (unwrapping closes your wSOL account: wSOL already in it comes
    /// back as SOL too)
    #[arg(long)]
    pub no_unwrap: bool,
}

impl SolOut {
    pub fn wrapped(self) -> tally_client::ops::WrappedSol {
        if self.no_unwrap {
            tally_client::ops::WrappedSol::Keep
        } else {
            tally_client::ops::WrappedSol::Unwrap
        }
    }
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
    /// Claim everything matured, in every mint you have earnings in (in SOL:
    /// unwrapped to your wallet when you are your own payout owner)
    Claim {
        #[command(flatten)]
        sol: SolOut,
    },
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
    Init(InitArgs),
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

/// Everything `tally` does.
#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Chain(ChainCommand),
    /// Run the whole flow on an embedded chain: fund jobs, serve and meter requests
    /// through the oracle gateway, settle, claim, expire, reconcile
    Demo(crate::demo::DemoArgs),
    /// Prove an invoice is what the chain paid for; audit a job's bill
    #[command(subcommand)]
    Invoice(InvoiceCommand),
}

impl Cli {
    /// The command, if it is one that runs against a chain with a signer.
    pub fn chain_command(&self) -> Option<&ChainCommand> {
        match &self.command {
            Command::Chain(command) => Some(command),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum InvoiceCommand {
    /// Check an invoice against the job's on-chain invoice hash and settled units:
    /// FILE (linked to the chain through the later invoices beside it, or through the
    /// store's with --store), or --job's receipt --seq (default: the latest) from the
    /// oracle's store — any replica's: they share it
    Verify {
        /// An exported invoice file (`<invoices_dir>/<job>/<nonce>/<seq>.json`)
        file: Option<std::path::PathBuf>,
        /// The oracle's store: a SQLite file or a postgres:// URL
        #[arg(long)]
        store: Option<String>,
        /// The job whose invoice to check, from the store
        #[arg(long, requires = "store", conflicts_with = "file")]
        job: Option<String>,
        /// Which receipt's invoice (default: the latest settled)
        #[arg(long, requires = "job")]
        seq: Option<u64>,
    },
    /// Audit your job's bill: fetch its invoices from the operator's gateway with a
    /// job key, verify them against the job's on-chain invoice hash and settled units,
    /// and compare every line with your own ledger; exits nonzero on any finding.
    /// --dispute then files dispute_job while the challenge window is open
    Audit {
        /// The job
        job: Pubkey,
        /// The operator's gateway (its base URL, e.g. https://gpu.example.com)
        #[arg(long)]
        gateway: String,
        /// A job key for the job (`tally_k1_…`), or a file holding one [default: a
        /// 10-minute key, limited to 1 base unit, signed now by --keypair, the job's
        /// client]
        #[arg(long)]
        key: Option<String>,
        /// Your ledger: JSON lines {"request_id", "model", "prompt_tokens",
        /// "completion_tokens"}, one per answer received (the x-tally-request-id header
        /// and the response's usage)
        #[arg(long)]
        ledger: Option<std::path::PathBuf>,
        /// On any finding, dispute the job (signed by --keypair, the job's client): the
        /// operator's share still inside the challenge window is frozen for the arbiter
        #[arg(long)]
        dispute: bool,
    },
}

impl ChainCommand {
    /// Whether the command only reads the chain and never uses the signer, not even
    /// its address (`job list` without `--all` lists the signer's own jobs, so it
    /// does). Such commands run without a keypair file.
    pub fn reads_only(&self) -> bool {
        match self {
            ChainCommand::Job(JobCommand::Status { .. } | JobCommand::Watch { .. })
            | ChainCommand::Admin(AdminCommand::Config(ConfigCommand::Show))
            | ChainCommand::Revenue { .. } => true,
            ChainCommand::Job(JobCommand::List { all, operator }) => *all || operator.is_some(),
            ChainCommand::Operator(OperatorCommand::Earnings { operator }) => operator.is_some(),
            _ => false,
        }
    }
}

/// `job open`'s terms.
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// The operator's authority (its wallet)
    #[arg(long)]
    pub operator: Pubkey,
    /// The mint to pay in (So11111111111111111111111111111111111111112: SOL, wrapped
    /// for you)
    #[arg(long)]
    pub mint: Pubkey,
    /// Price per million input (prompt) tokens, or per million units of another
    /// kind, in tokens of the mint (base units with --base-units)
    #[arg(long, visible_alias = "price")]
    pub input_price: String,
    /// Price per million output (completion) tokens [default: the input price for
    /// tokens; other kinds have no output price]
    #[arg(long)]
    pub output_price: Option<String>,
    /// The model the job pays for, as the inference server names it (the gateway
    /// refuses requests for any other) [default: any model]
    #[arg(long)]
    pub model: Option<String>,
    /// Units to escrow for (the deposit prices them all at the higher price)
    #[arg(long, required_unless_present = "budget")]
    pub units: Option<u64>,
    /// Or: the most to escrow, in tokens of the mint; the job escrows as many units as
    /// it buys at the higher price
    #[arg(long, conflicts_with = "units")]
    pub budget: Option<String>,
    /// Job id: ids only go up and are never reused [default: the current Unix
    /// time, or your next free id if higher]
    #[arg(long)]
    pub id: Option<u64>,
    /// Seconds from now until usage stops being billable
    #[arg(long, default_value_t = 86_400)]
    pub deadline_in: i64,
    /// What a unit is
    #[arg(long, value_enum, default_value_t = UnitKindArg::Tokens)]
    pub kind: UnitKindArg,
    /// Most the job may be billed per hour, in tokens of the mint [default: no cap]
    #[arg(long)]
    pub spend_cap: Option<String>,
}

/// `admin init`'s settings.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[arg(long)]
    pub treasury: Pubkey,
    #[arg(long)]
    pub arbiter: Pubkey,
    #[arg(long, default_value_t = 250)]
    pub fee_bps: u16,
    #[arg(long, default_value_t = 3_600)]
    pub challenge_window: u32,
    #[arg(long, default_value_t = 3_600)]
    pub expiry_grace: u32,
    #[arg(long, default_value_t = 604_800)]
    pub dispute_timeout: u32,
    /// Oracle key (repeat, at most 7)
    #[arg(long = "oracle", required = true)]
    pub oracles: Vec<Pubkey>,
    #[arg(long, default_value_t = 1)]
    pub threshold: u8,
}
