//! A real local validator for tests: `solana-test-validator` on loopback, with its own
//! ports and ledger, the Tally program preloaded, stopped when dropped.
//!
//! ```no_run
//! use tally_tests::validator::LocalValidator;
//! // None (after printing "local-validator suite skipped: <reason>") when no
//! // validator binary exists on this machine; attaches to `anchor test`'s validator
//! // when ANCHOR_PROVIDER_URL is set.
//! let Some(validator) = LocalValidator::start_or_skip(Some(&LocalValidator::default_program()))
//! else {
//!     return;
//! };
//! let mut chain = validator.chain(); // tally_client's RpcChain, confirmed commitment
//! // validator.payer is funded (the genesis mint) and is the program's upgrade authority.
//! ```
//!
//! The binary is found, in this order, at `TALLY_VALIDATOR`, as `solana-test-validator`
//! on `PATH`, or as the prebuilt `../shared/bin/solana-test-validator(.xz)` beside the
//! repository (unpacked once into `.tools/validator/<sha256>/`). It must be Agave 4.x:
//! the program is SBPF v3, which 3.x validators do not run ("Program is not deployed").
//!
//! Every start gets a private block of loopback ports (RPC, websocket, faucet, gossip
//! and the dynamic range), checked free, and a fresh temporary ledger. The process is
//! started in its own process group with a parent-death signal, from a thread that
//! lives as long as the [`LocalValidator`]: dropping it (a panicking test included)
//! kills the group and removes the ledger, and if the test process itself dies, the
//! kernel kills the validator. `TALLY_KEEP_LEDGER=1` keeps the ledger for a post-mortem.
//!
//! Environment: `TALLY_VALIDATOR` (binary; `none` to skip the tier),
//! `TALLY_REQUIRE_VALIDATOR=1` (fail instead of skipping, as CI does), `ANCHOR_PROVIDER_URL` + `ANCHOR_WALLET` (use that running
//! validator and wallet instead of starting one; `anchor test` sets both).
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anchor_lang::prelude::Pubkey;
use sha2::{Digest, Sha256};
use solana_keypair::Keypair;
use solana_signer::Signer;
use tally_client::chain::{Chain, RpcChain};

/// The line printed when no validator exists (README and scripts/test show it).
pub const SKIP_PREFIX: &str = "local-validator suite skipped";

/// Oldest Agave line that runs SBPF v3 programs (4.2.2 is the version proven here).
const MIN_MAJOR_VERSION: u64 = 4;
/// Ports one validator takes: RPC, RPC websocket (RPC + 1), faucet, gossip, then the
/// dynamic range (the validator refuses fewer than 26).
const DYNAMIC_PORTS: u16 = 30;
const PORT_BLOCK: u16 = 4 + DYNAMIC_PORTS;
/// Port blocks are picked below Linux's ephemeral range (32768+).
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// A running local validator (or one `anchor test` started).
pub struct LocalValidator {
    /// JSON-RPC endpoint, e.g. `http://127.0.0.1:20440`.
    pub rpc_url: String,
    /// A wallet funded at genesis (the validator's `--mint`), and the upgrade
    /// authority of the preloaded program. Under `anchor test`: ANCHOR_WALLET.
    pub payer: Keypair,
    /// The binary that runs (None when attached to a validator started elsewhere).
    pub binary: Option<PathBuf>,
    /// Its `--version` line.
    pub version: Option<String>,
    /// The private ledger directory (removed on drop).
    pub ledger: Option<PathBuf>,
    /// From spawn to healthy (and the program loaded).
    pub startup: Duration,
    process: Option<Process>,
}

/// What to start.
#[derive(Clone, Debug, Default)]
pub struct ValidatorOptions {
    /// Preload the Tally program from this file at [`tally::ID`] through the
    /// upgradeable loader, with [`LocalValidator::payer`] as upgrade authority.
    pub program: Option<PathBuf>,
    /// More arguments for solana-test-validator.
    pub extra_args: Vec<String>,
}

/// Why no validator binary can be used.
#[derive(Clone, Debug)]
pub struct NoValidator {
    pub reason: String,
    /// The user named a binary (TALLY_VALIDATOR) and it does not work: an error, not
    /// a reason to skip.
    pub misconfigured: bool,
}

/// The deployment the validator-tier tests and benches make: `admin` as treasury and
/// arbiter, a 1% fee, no challenge window, `oracle` alone (1-of-1), wrapped SOL.
pub fn test_deployment(admin: &Pubkey, oracle: &Pubkey) -> tally_client::migrate::Deployment {
    tally_client::migrate::Deployment {
        release: None,
        settings: tally_client::InitializeConfigArgs {
            treasury: *admin,
            arbiter: *admin,
            fee_bps: 100,
            challenge_window_secs: 0,
            expiry_grace_secs: 3_600,
            dispute_timeout_secs: 3_600,
            oracles: vec![*oracle],
            oracle_threshold: 1,
        },
        mints: vec![tally_client::ops::NATIVE_MINT],
    }
}

impl LocalValidator {
    /// `target/deploy/tally.so` (or `TALLY_PROGRAM_SO`), as the embedded suite uses.
    pub fn default_program() -> PathBuf {
        tally_client::chain::EmbeddedChain::default_program_path()
    }

    /// The validator binary this machine has, if any (see the module docs).
    pub fn find_binary() -> Option<PathBuf> {
        Self::locate().ok().map(|(path, _)| path)
    }

    /// The validator binary and its version, or why there is none.
    pub fn locate() -> Result<(PathBuf, String), NoValidator> {
        if let Some(explicit) = std::env::var_os("TALLY_VALIDATOR") {
            if explicit == "none" {
                return Err(NoValidator {
                    reason: "TALLY_VALIDATOR=none".into(),
                    misconfigured: false,
                });
            }
            let path = PathBuf::from(explicit);
            return usable(&path)
                .map(|version| (path.clone(), version))
                .map_err(|why| NoValidator {
                    reason: format!("TALLY_VALIDATOR={}: {why}", path.display()),
                    misconfigured: true,
                });
        }
        let mut tried = Vec::new();
        if let Some(paths) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&paths) {
                let path = dir.join("solana-test-validator");
                if is_executable(&path) {
                    match usable(&path) {
                        Ok(version) => return Ok((path, version)),
                        Err(why) => tried.push(format!("{}: {why}", path.display())),
                    }
                }
            }
        }
        match prebuilt() {
            Ok(Some(path)) => match usable(&path) {
                Ok(version) => return Ok((path, version)),
                Err(why) => tried.push(format!("{}: {why}", path.display())),
            },
            Ok(None) => {}
            Err(why) => tried.push(why),
        }
        let mut reason = "no solana-test-validator (Agave 4.x) found: set TALLY_VALIDATOR, put one on PATH, or provide ../shared/bin/solana-test-validator.xz".to_string();
        if !tried.is_empty() {
            reason = format!("{reason} (tried {})", tried.join("; "));
        }
        Err(NoValidator {
            reason,
            misconfigured: false,
        })
    }

    /// Starts a private validator with the program at `program_so` preloaded (or no
    /// program), and waits until it is healthy.
    pub fn start(program_so: Option<&Path>) -> Result<Self, String> {
        Self::start_with(&ValidatorOptions {
            program: program_so.map(Path::to_path_buf),
            ..ValidatorOptions::default()
        })
    }

    /// Starts a private validator as `options` say.
    pub fn start_with(options: &ValidatorOptions) -> Result<Self, String> {
        let (binary, version) = Self::locate().map_err(|e| e.reason)?;
        if let Some(program) = &options.program {
            if !program.exists() {
                return Err(format!(
                    "the program {} does not exist: build it with scripts/build-program",
                    program.display()
                ));
            }
        }
        // A port block can be taken between our check and the validator's bind (by
        // another process): try a few blocks.
        let mut last = String::new();
        for _ in 0..4 {
            match Self::spawn(&binary, &version, options) {
                Ok(validator) => return Ok(validator),
                Err(Spawn::PortsTaken(log)) => last = log,
                Err(Spawn::Failed(e)) => return Err(e),
            }
        }
        Err(format!(
            "solana-test-validator could not bind its ports after 4 tries:\n{last}"
        ))
    }

    /// Uses a validator started elsewhere: its RPC URL and a funded wallet file
    /// (the program must already be there).
    pub fn attach(rpc_url: &str, wallet: &Path) -> Result<Self, String> {
        let payer = tally_client::config::read_keypair(wallet).map_err(|e| e.to_string())?;
        let validator = Self {
            rpc_url: rpc_url.to_string(),
            payer,
            binary: None,
            version: None,
            ledger: None,
            startup: Duration::ZERO,
            process: None,
        };
        let rpc = validator.chain();
        rpc.rpc()
            .get_health()
            .map_err(|e| format!("the validator at {rpc_url} is not healthy: {e}"))?;
        Ok(validator)
    }

    /// The validator `anchor test` started, when ANCHOR_PROVIDER_URL is set.
    pub fn from_anchor_env() -> Option<Result<Self, String>> {
        let url = std::env::var("ANCHOR_PROVIDER_URL").ok()?;
        let wallet = std::env::var_os("ANCHOR_WALLET").map_or_else(
            || {
                std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".config/solana/id.json"))
                    .unwrap_or_default()
            },
            PathBuf::from,
        );
        Some(Self::attach(&url, &wallet))
    }

    /// The validator for a test: `anchor test`'s if ANCHOR_PROVIDER_URL is set, else
    /// a private one with `program_so` preloaded. `None` when this machine has no
    /// validator: prints `local-validator suite skipped: <reason>` (panics instead
    /// under TALLY_REQUIRE_VALIDATOR=1). A validator that exists but fails to start
    /// is a test failure, not a skip.
    pub fn start_or_skip(program_so: Option<&Path>) -> Option<Self> {
        if let Some(attached) = Self::from_anchor_env() {
            return Some(attached.unwrap_or_else(|e| panic!("ANCHOR_PROVIDER_URL: {e}")));
        }
        Self::start_private_or_skip(program_so)
    }

    /// Like [`LocalValidator::start_or_skip`], but always a private validator (for
    /// tests that need a fresh chain, e.g. deploying the program).
    pub fn start_private_or_skip(program_so: Option<&Path>) -> Option<Self> {
        match Self::locate() {
            Err(none) if none.misconfigured => panic!("{}", none.reason),
            Err(none) => {
                let line = format!("{SKIP_PREFIX}: {}", none.reason);
                assert!(
                    std::env::var_os("TALLY_REQUIRE_VALIDATOR").is_none_or(|v| v != "1"),
                    "TALLY_REQUIRE_VALIDATOR=1 but {line}"
                );
                eprintln!("{line}");
                None
            }
            Ok(_) => Some(Self::start(program_so).unwrap_or_else(|e| panic!("{e}"))),
        }
    }

    /// True when this validator was started elsewhere (`anchor test`).
    pub fn is_external(&self) -> bool {
        self.process.is_none()
    }

    /// The SDK's RPC chain on this validator (confirmed commitment), reporting each
    /// transaction's compute units, fee and logs.
    pub fn chain(&self) -> RpcChain {
        RpcChain::new(&self.rpc_url).with_transaction_details(true)
    }

    /// Sends `lamports` from [`LocalValidator::payer`] to `to`.
    pub fn fund(&self, to: &Pubkey, lamports: u64) -> Result<(), String> {
        let transfer = anchor_lang::solana_program::system_instruction::transfer(
            &self.payer.pubkey(),
            to,
            lamports,
        );
        self.chain()
            .send(&[transfer], &self.payer, &[])
            .map(|_| ())
            .map_err(|e| format!("funding {to}: {e}"))
    }

    /// Waits (real time) until the cluster clock reaches `unix_timestamp`; returns
    /// the clock then.
    pub fn wait_for_unix_time(
        &self,
        unix_timestamp: i64,
        timeout: Duration,
    ) -> Result<i64, String> {
        let chain = self.chain();
        let start = Instant::now();
        loop {
            let now = chain.clock().map_err(|e| e.to_string())?.unix_timestamp;
            if now >= unix_timestamp {
                return Ok(now);
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "the cluster clock is at {now}, still before {unix_timestamp} after {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn spawn(binary: &Path, version: &str, options: &ValidatorOptions) -> Result<Self, Spawn> {
        let payer = Keypair::new();
        let ledger = private_ledger().map_err(Spawn::Failed)?;
        let base = free_port_block().map_err(Spawn::Failed)?;
        let rpc_port = base;
        let mut command = validator_command(binary);
        command
            .arg("--ledger")
            .arg(&ledger)
            .args(["--reset", "--quiet", "--bind-address", "127.0.0.1"])
            .args(["--rpc-port", &rpc_port.to_string()])
            .args(["--faucet-port", &(base + 2).to_string()])
            .args(["--gossip-port", &(base + 3).to_string()])
            .args([
                "--dynamic-port-range",
                &format!("{}-{}", base + 4, base + PORT_BLOCK),
            ])
            .args(["--mint", &payer.pubkey().to_string()]);
        if let Some(program) = &options.program {
            command
                .arg("--upgradeable-program")
                .arg(tally::ID.to_string())
                .arg(program)
                .arg(payer.pubkey().to_string());
        }
        command.args(&options.extra_args);
        let output = ledger.join("test-validator-output.log");
        let log = std::fs::File::create(&output)
            .map_err(|e| Spawn::Failed(format!("cannot create {}: {e}", output.display())))?;
        let log_err = log.try_clone().map_err(|e| Spawn::Failed(e.to_string()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .current_dir(&ledger);

        let started = Instant::now();
        let process = Process::spawn(command)
            .map_err(|e| Spawn::Failed(format!("cannot start {}: {e}", binary.display())))?;
        let mut validator = Self {
            rpc_url: format!("http://127.0.0.1:{rpc_port}"),
            payer,
            binary: Some(binary.to_path_buf()),
            version: Some(version.to_string()),
            ledger: Some(ledger.clone()),
            startup: Duration::ZERO,
            process: Some(process),
        };
        validator.wait_until_ready(options.program.is_some())?;
        validator.startup = started.elapsed();
        Ok(validator)
    }

    /// Polls getHealth (and the program account) until ready; fails early if the
    /// process exits.
    fn wait_until_ready(&self, with_program: bool) -> Result<(), Spawn> {
        let chain = RpcChain::new(&self.rpc_url);
        let start = Instant::now();
        loop {
            if let Some(status) = self.process.as_ref().and_then(Process::exited) {
                let log = self.log_tail();
                return Err(
                    if log.contains("in use") || log.contains("Address already") {
                        Spawn::PortsTaken(log)
                    } else {
                        Spawn::Failed(format!(
                            "solana-test-validator exited ({status}) while starting:\n{log}"
                        ))
                    },
                );
            }
            let healthy = chain.rpc().get_health().is_ok();
            let loaded =
                !with_program || matches!(chain.account(&tally::ID), Ok(Some(a)) if a.executable);
            let funded = healthy
                && chain
                    .rpc()
                    .get_balance(&self.payer.pubkey())
                    .is_ok_and(|b| b > 0);
            if healthy && loaded && funded {
                return Ok(());
            }
            if start.elapsed() > STARTUP_TIMEOUT {
                return Err(Spawn::Failed(format!(
                    "solana-test-validator at {} not ready after {STARTUP_TIMEOUT:?} (healthy: {healthy}, program loaded: {loaded}):\n{}",
                    self.rpc_url,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of the validator's output and log, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(ledger) = &self.ledger else {
            return String::new();
        };
        ["test-validator-output.log", "validator.log"]
            .iter()
            .filter_map(|name| {
                let text = std::fs::read_to_string(ledger.join(name)).ok()?;
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                Some(format!("--- {name} (last lines) ---\n{tail}"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for LocalValidator {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop();
        }
        if let Some(ledger) = &self.ledger {
            if std::env::var_os("TALLY_KEEP_LEDGER").is_none_or(|v| v != "1") {
                let _ = std::fs::remove_dir_all(ledger);
            } else {
                eprintln!("validator ledger kept at {}", ledger.display());
            }
        }
    }
}

enum Spawn {
    /// Another process took one of the ports: try another block.
    PortsTaken(String),
    Failed(String),
}

/// The validator process, owned by a thread that lives until [`Process::stop`]: the
/// parent-death signal is tied to the thread that spawned the child.
struct Process {
    child: Arc<Mutex<Child>>,
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Process {
    fn spawn(mut command: Command) -> Result<Self, String> {
        command.process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // one async-signal-safe system call.
        unsafe {
            command.pre_exec(|| {
                // The kernel kills the validator if the thread that started it (and so
                // the test process) goes away without dropping it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("local-validator".into())
            .spawn(move || match command.spawn() {
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
                Ok(child) => {
                    let pid = child.id();
                    let child = Arc::new(Mutex::new(child));
                    let _ = ready_tx.send(Ok(Arc::clone(&child)));
                    // Returns when the owner sends or drops the sender.
                    let _ = stop_rx.recv();
                    kill_group(pid);
                    let lock = child.lock();
                    if let Ok(mut child) = lock {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let child = ready_rx
            .recv()
            .map_err(|_| "the validator thread died".to_string())??;
        Ok(Self {
            child,
            stop,
            thread,
        })
    }

    /// The exit status, if the process has exited.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().ok()?.try_wait().ok().flatten()
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn kill_group(pid: u32) {
    if let Ok(pgid) = i32::try_from(pid) {
        // SAFETY: killpg has no memory-safety preconditions; the group is the one
        // the validator leads (process_group(0)).
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// A fresh directory under the system temp dir. Ledgers left by test processes that
/// were killed (no drop ran) are removed on the way.
fn private_ledger() -> Result<PathBuf, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("tally-validator-"))
                .and_then(|rest| rest.split('-').next())
            else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = std::env::temp_dir().join(format!(
        "tally-validator-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create the ledger dir {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The first port of a block of [`PORT_BLOCK`] loopback ports that are free now
/// (TCP and UDP). Blocks handed out in this process are never handed out again.
fn free_port_block() -> Result<u16, String> {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().map_err(|e| e.to_string())?;
    let blocks = (PORT_RANGE.end - PORT_RANGE.start) / PORT_BLOCK;
    // Start somewhere that depends on the process, so concurrent test processes
    // rarely probe the same blocks.
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let first = u16::try_from(seed % u32::from(blocks)).unwrap_or(0);
    for i in 0..blocks {
        let base = PORT_RANGE.start + ((first + i) % blocks) * PORT_BLOCK;
        if taken.contains(&base) {
            continue;
        }
        if (base..base + PORT_BLOCK).all(port_is_free) {
            taken.push(base);
            return Ok(base);
        }
    }
    Err(format!(
        "no block of {PORT_BLOCK} free loopback ports in {PORT_RANGE:?}"
    ))
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A command running the validator. The validator keeps its own clock, as a real
/// cluster does: a preload that shifts this machine's clock (libfaketime, in
/// `scripts/test-shifted`) is not passed on — it also deadlocks the validator's
/// allocator at start.
fn validator_command(path: &Path) -> Command {
    let mut command = Command::new(path);
    command.env_remove("LD_PRELOAD");
    command
}

/// The binary's version line if it is an Agave validator that runs SBPF v3.
fn usable(path: &Path) -> Result<String, String> {
    if !is_executable(path) {
        return Err("not an executable file".into());
    }
    let out = validator_command(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(format!("`--version` failed: {line}"));
    }
    let major = line
        .split_whitespace()
        .find_map(|word| word.split('.').next()?.parse::<u64>().ok())
        .ok_or_else(|| format!("cannot read a version in `{line}`"))?;
    if major < MIN_MAJOR_VERSION {
        return Err(format!(
            "`{line}` is too old: the program is SBPF v3, which needs Agave {MIN_MAJOR_VERSION}.x (4.2.2 is proven); 3.x answers \"Program is not deployed\""
        ));
    }
    Ok(line)
}

/// The repository root (this crate is `tests/` in it).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The prebuilt validator beside the repository (../shared/bin), unpacked into
/// `.tools/validator/<sha256 of the .xz>/` once. `Ok(None)` when there is none.
fn prebuilt() -> Result<Option<PathBuf>, String> {
    static UNPACKED: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
    UNPACKED
        .get_or_init(|| {
            let shared = repo_root().join("../shared/bin");
            let plain = shared.join("solana-test-validator");
            if is_executable(&plain) {
                return Ok(Some(plain));
            }
            let xz = shared.join("solana-test-validator.xz");
            if !xz.exists() {
                return Ok(None);
            }
            unpack(&xz).map(Some)
        })
        .clone()
}

fn unpack(xz: &Path) -> Result<PathBuf, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(xz)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", xz.display()))?;
    let digest = Sha256::digest(&bytes);
    let key: String = digest[..8]
        .iter()
        .fold(String::new(), |hex, b| hex + &format!("{b:02x}"));
    let dir = repo_root().join(".tools/validator").join(key);
    let binary = dir.join("solana-test-validator");
    if is_executable(&binary) {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let partial = dir.join(format!(
        "solana-test-validator.{}.partial",
        std::process::id()
    ));
    let out = std::fs::File::create(&partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let status = Command::new("xz")
        .args(["-dc"])
        .arg(xz)
        .stdout(Stdio::from(out))
        .status()
        .map_err(|e| {
            format!(
                "cannot run xz to unpack {} ({e}): install xz-utils",
                xz.display()
            )
        })?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(format!("xz could not unpack {}", xz.display()));
    }
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    // Atomic: concurrent unpackers each rename a complete file.
    std::fs::rename(&partial, &binary).map_err(|e| e.to_string())?;
    Ok(binary)
}
