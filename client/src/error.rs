//! What can go wrong talking to Tally, typed: each variant says what failed and on
//! what, carries its source where there is one, and its message says what to do.
//! Callers match on the variant (`Refused(InsufficientFunds { .. })`, `Missing(Job(_))`)
//! instead of on text; people read the message.
use std::path::PathBuf;

use anchor_lang::prelude::Pubkey;
use solana_signature::Signature;
use solana_signer::SignerError;
use solana_transaction_error::TransactionError;

/// What to do when the program file is missing.
pub const BUILD_THE_PROGRAM: &str = " (build it with scripts/build-program or anchor build)";

/// A boxed source error from a library whose error type is not worth naming here.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong talking to a chain, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The cluster refused or failed the transaction.
    #[error("transaction failed: {error}{}", describe_logs(logs))]
    Transaction {
        error: TransactionError,
        /// Program logs, when the cluster returned them (preflight or execution).
        logs: Vec<String>,
    },
    /// The RPC endpoint could not be reached or answered with an error.
    #[error("RPC error from {url}: {message} (check --url and that the cluster is up)")]
    Rpc { url: String, message: String },
    /// A transaction was sent but is not known to have landed.
    #[error(transparent)]
    NotLanded(#[from] NotLanded),
    /// A transaction could not be signed (a required signer is missing).
    #[error("cannot sign the transaction: {0}")]
    Sign(#[from] SignerError),
    /// An instruction could not be built from its arguments.
    #[error("cannot build {instruction}: {source}")]
    Instruction {
        instruction: &'static str,
        #[source]
        source: Source,
    },
    /// Data the cluster returned is not what Solana or Tally defines.
    #[error("{what}{} does not decode{}", at(address.as_ref()), reason_suffix(reason))]
    Decode {
        what: &'static str,
        address: Option<Pubkey>,
        reason: String,
    },
    /// An account the command needs is not on the cluster.
    #[error(transparent)]
    Missing(#[from] Missing),
    /// An account exists but is not the kind the command needs.
    #[error("{address} is not {expected}{}", owned_by(owner.as_ref()))]
    WrongAccount {
        address: Pubkey,
        /// With its article: "a token mint", "a Tally job".
        expected: &'static str,
        owner: Option<Pubkey>,
    },
    /// The chain's state does not allow the command now (checked before sending).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// An argument the caller gave cannot work.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Deploying or upgrading the program cannot go ahead.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// A file could not be read.
    #[error("cannot read {path}: {source}{hint}", path = path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        /// What to do about it (may be empty).
        hint: &'static str,
    },
    /// A keypair file could not be used.
    #[error("{0}")]
    Keypair(#[from] KeypairError),
    /// The program's own arithmetic refused (e.g. maturing an earnings ledger).
    #[error("{0}")]
    Program(#[from] anchor_lang::error::Error),
    /// The backend cannot answer this question.
    #[error("this chain cannot tell the rent-exempt balance of {data_len} bytes")]
    RentUnknown { data_len: usize },
    /// Setting up the embedded chain failed (LiteSVM reports errors by Debug only).
    #[error("the embedded chain refused to {what}: {reason}")]
    Embedded { what: &'static str, reason: String },
}

/// A transaction that was sent and did not land.
#[derive(Debug, thiserror::Error)]
pub enum NotLanded {
    #[error("transaction {signature} did not land before its blockhash expired (block height {last_valid_block_height}): send it again")]
    Expired {
        signature: Signature,
        last_valid_block_height: u64,
    },
    #[error("{pending} of {total} transactions did not land after {rounds} rounds of resending")]
    GaveUp {
        pending: usize,
        total: usize,
        rounds: usize,
    },
    #[error("the transaction was not tracked")]
    Untracked,
    #[error("the cluster stayed at slot {now} for {waited_secs} s waiting to pass slot {slot}: is it producing blocks?")]
    Stalled {
        now: u64,
        slot: u64,
        waited_secs: u64,
    },
}

/// An account that does not exist.
#[derive(Debug, thiserror::Error)]
pub enum Missing {
    #[error("mint {0} does not exist on this cluster (check --url)")]
    Mint(Pubkey),
    #[error(
        "the Tally program {0} is not deployed on this cluster: check --url, or deploy it first"
    )]
    Program(Pubkey),
    #[error("Tally is deployed but not initialized: run `tally admin init`")]
    Config,
    #[error("job {0} does not exist: it was never opened, or it ended (completed, cancelled or expired) and was closed")]
    Job(Pubkey),
    #[error("{0} is not a registered operator: check --operator (operators register with `tally operator register`)")]
    Operator(Pubkey),
    #[error("no earnings in mint {0} yet (`tally operator earnings` lists every mint)")]
    Earnings(Pubkey),
    #[error("the cluster has no {0} sysvar")]
    Sysvar(&'static str),
    #[error("program {program} has no ProgramData account {program_data}")]
    ProgramData {
        program: Pubkey,
        program_data: Pubkey,
    },
    #[error("mint {0} is not accepted by this deployment: pay in an accepted mint, or its admin runs `tally admin mint add {0}`")]
    Vault(Pubkey),
}

/// The chain's state refuses the command; each says what would make it go through.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "Tally is paused: no new jobs can be opened right now (refunds and claims still work)"
    )]
    Paused,
    #[error("{0} is already an oracle")]
    AlreadyOracle(Pubkey),
    #[error("{0} is not an oracle")]
    NotOracle(Pubkey),
    #[error("operator {0} is already registered: use `tally operator update`")]
    OperatorRegistered(Pubkey),
    #[error("{0} is not a registered operator: run `tally operator register` first")]
    OperatorNotRegistered(Pubkey),
    #[error("insufficient funds: your token account {account} holds {} of mint {mint}, less than the {} this needs: send that mint's tokens to it, or pay in SOL (--mint So11111111111111111111111111111111111111112, wrapped for you)", crate::amount::format(*holds, *decimals), crate::amount::format(*needs, *decimals))]
    InsufficientFunds {
        /// The token account short of funds, and its mint.
        account: Pubkey,
        mint: Pubkey,
        /// In base units of the mint.
        holds: u64,
        needs: u64,
        decimals: u8,
    },
    #[error("insufficient SOL: {wallet} holds {} SOL, less than the {} SOL this needs (wrapped into its wSOL account) before fees: fund it (`solana transfer {wallet} <SOL>`, or `solana airdrop` on devnet and localnet)", crate::amount::format(*holds, 9), crate::amount::format(*needs, 9))]
    InsufficientSol {
        wallet: Pubkey,
        /// Lamports.
        holds: u64,
        needs: u64,
    },
    #[error("you already have a job with id {0}: pick another --id")]
    JobIdTaken(u64),
    #[error("job id {id} was already used: a client's job ids only go up and are never reused; use --id {next} or higher (or leave --id out)")]
    JobIdUsed { id: u64, next: u64 },
    #[error("job {job} was opened by {client}, not by {signer}: only its client can {action} (--keypair)")]
    NotTheClient {
        job: Pubkey,
        client: Pubkey,
        signer: Pubkey,
        /// "sign its keys", "dispute it".
        action: &'static str,
    },
    #[error("this job already has metered usage: it cannot be cancelled; it completes, or after its deadline anyone refunds the rest with `tally job expire <JOB>`")]
    HasUsage,
    #[error("job {job} has not expired: it can be expired after {expires_at} (in {} s): run `tally job expire {job}` then", expires_at - now)]
    NotExpired {
        job: Pubkey,
        expires_at: i64,
        now: i64,
    },
    #[error("job {0} has not ended: complete, cancel or expire it first (`tally job cancel {0}` before any usage, `tally job expire {0}` past its deadline)")]
    NotEnded(Pubkey),
    #[error("job {0} has an open dispute: it can be closed once the dispute is resolved")]
    DisputeOpen(Pubkey),
    #[error("job {job} can still be disputed by its client until {until} (in {} s): close it after that (`tally job close {job}`)", until - now)]
    StillDisputable { job: Pubkey, until: i64, now: i64 },
    #[error("job {job} already has an open dispute: {frozen} frozen until the arbiter resolves it (or until {deadline})")]
    AlreadyDisputed {
        job: Pubkey,
        frozen: u64,
        deadline: i64,
    },
    #[error("nothing was settled on job {0}: there is nothing to dispute")]
    NothingSettled(Pubkey),
    #[error("the challenge window of job {job} has closed: everything settled on it has matured to the operator (chain time {now}), so nothing can be disputed any more")]
    WindowClosed { job: Pubkey, now: i64 },
    #[error("nothing to claim yet: {pending} is still inside the challenge window (`tally operator earnings` shows when it matures)")]
    NothingToClaim { pending: u64 },
}

/// An argument that cannot work, and how to change it.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("only token jobs have an output price: GPU-seconds, requests and frames have one price (leave --output-price out)")]
    OutputPriceWithoutTokens,
    #[error("price × max units overflows: lower one of them")]
    DepositOverflow,
    #[error("the job would escrow nothing: {units} units at {price} per million round down to 0; raise the price or the units")]
    ZeroDeposit { units: u64, price: u64 },
    #[error("a key must expire in the future")]
    KeyExpiry,
    #[error("a spend limit of 0 spends nothing: leave --limit out for no limit")]
    ZeroSpendLimit,
    #[error("`{text}` is neither `admin`, a public key, nor a keypair file (looked for {})", path.display())]
    Key { text: String, path: PathBuf },
    #[error("{} is not a migration manifest: {source}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("no keypair: pass --keypair")]
    NoKeypair,
    #[error("no oracle to attest: give the oracle set's threshold of oracle keypairs")]
    NoOracles,
    #[error("--{what}: {reason}")]
    Amount { what: &'static str, reason: String },
}

/// Why the program cannot be deployed or upgraded as asked.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0} already exists: upgrade it instead of deploying")]
    Exists(Pubkey),
    #[error("{0} is not deployed: deploy it first")]
    NotDeployed(Pubkey),
    #[error("the Tally program {0} is not deployed on this cluster and no program file was given to deploy")]
    NothingToDeploy(Pubkey),
    #[error("{0} is immutable: it cannot be upgraded")]
    Immutable(Pubkey),
    #[error("{program} is owned by {owner}, not the upgradeable loader: Tally's config needs a program of the upgradeable loader whose upgrade authority signs initialize_config")]
    NotUpgradeable { program: Pubkey, owner: Pubkey },
    #[error("the upgrade authority of {program} is {current}, not {signer}")]
    WrongAuthority {
        program: Pubkey,
        current: Pubkey,
        signer: Pubkey,
    },
    #[error("{action} needs the program's upgrade authority ({}); you are {signer}", describe_authority(authority.as_ref()))]
    NotUpgradeAuthority {
        /// "upgrading <program>", "initialize_config".
        action: String,
        authority: Option<Pubkey>,
        signer: Pubkey,
    },
    #[error("the config's admin is {admin}; you are {signer}: run the migration with the admin's keypair")]
    NotAdmin { admin: Pubkey, signer: Pubkey },
    #[error("the program keypair is for {keypair}, but this build of Tally is {program}")]
    KeypairMismatch { keypair: Pubkey, program: Pubkey },
    #[error(
        "deploying {0} needs its program keypair (keys/tally-program-keypair.json for localnet)"
    )]
    NoProgramKeypair(Pubkey),
    #[error("the new program is {bytes} bytes but {program} has room for {room}: extend it first (`solana program extend`)")]
    TooLarge {
        program: Pubkey,
        bytes: usize,
        room: usize,
    },
    #[error("the program is larger than the loader allows")]
    BeyondLoader,
    #[error("the program file is empty")]
    EmptyProgram,
    #[error("a buffer write does not fit in a transaction")]
    NoRoomToWrite,
    #[error("the buffer {0} does not hold the program after writing it")]
    BufferMismatch(Pubkey),
    #[error("the migration plan has a {0} step but no program to run it with")]
    NoRelease(&'static str),
}

/// A keypair file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeypairError {
    #[error("cannot read keypair {}: {source}. Pass --keypair, or create one with `solana-keygen new`", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a Solana keypair file: {reason}", path.display())]
    NotKeypair { path: PathBuf, reason: String },
}

impl ChainError {
    /// The custom program error code, for a failed instruction.
    pub fn program_error_code(&self) -> Option<u32> {
        match self {
            ChainError::Transaction {
                error:
                    TransactionError::InstructionError(
                        _,
                        anchor_lang::solana_program::instruction::error::InstructionError::Custom(
                            code,
                        ),
                    ),
                ..
            } => Some(*code),
            _ => None,
        }
    }

    /// The Anchor error message the program logged, if any.
    pub fn program_error_message(&self) -> Option<&str> {
        match self {
            ChainError::Transaction { logs, .. } => logs
                .iter()
                .find_map(|line| line.split_once("Error Message: "))
                .map(|(_, m)| m.trim_end_matches('.')),
            _ => None,
        }
    }

    /// An instruction builder's error, named by the instruction.
    pub fn instruction(instruction: &'static str, source: impl Into<Source>) -> Self {
        ChainError::Instruction {
            instruction,
            source: source.into(),
        }
    }

    /// Data at `address` (or with no address) that does not decode.
    pub fn decode(what: &'static str, address: Option<Pubkey>, reason: impl ToString) -> Self {
        ChainError::Decode {
            what,
            address,
            reason: reason.to_string(),
        }
    }
}

/// Summarizes program logs for an error message: the Anchor error line if there is
/// one, else the first line that explains a failure, else the last line.
fn describe_logs(logs: &[String]) -> String {
    let anchor = logs.iter().find(|l| l.contains("Error Message:"));
    let reason = || {
        logs.iter().find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("already in use") || l.contains("insufficient") || l.contains("error:")
        })
    };
    match anchor.or_else(reason).or(logs.last()) {
        Some(line) => format!("\n  program log: {line}"),
        None => String::new(),
    }
}

fn at(address: Option<&Pubkey>) -> String {
    address.map(|a| format!(" {a}")).unwrap_or_default()
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

fn owned_by(owner: Option<&Pubkey>) -> String {
    owner
        .map(|o| format!(" (owned by {o})"))
        .unwrap_or_default()
}

/// An upgrade authority as a person reads it.
pub fn describe_authority(authority: Option<&Pubkey>) -> String {
    authority.map_or_else(
        || {
            "none: the program is immutable (a validator preloads it so with --bpf-program; \
             use --upgradeable-program <id> <so> <admin>, or [test] upgradeable = true in Anchor.toml)"
                .to_string()
        },
        ToString::to_string,
    )
}
