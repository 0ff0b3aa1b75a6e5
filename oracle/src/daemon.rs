//! The daemon: the configured sources feeding one store, the batcher settling on an
//! interval (and early once a batch is full, and at once while records are left over
//! by a full invoice), `/metrics`, `/health` and `/invoices`, and a graceful stop:
//! sources stop taking work and finish what they accepted, then a last round settles
//! it. A job whose receipt fails backs off on its own (in the batcher); only a round
//! that cannot run at all (store or chain unavailable) backs the loop off and makes
//! `/health` report the daemon unhealthy.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use solana_keypair::Keypair;
use tally_client::chain::Chain;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::batcher::{Batcher, RoundReport};
use crate::clock::ChainClock;
use crate::config::OracleConfig;
use crate::gateway::Gateway;
use crate::http::{json_response, stopped, Body, Shutdown};
use crate::job_view::{JobBook, ViewConfig};
use crate::meter::SourceStore;
use crate::node_report::{JobDirectory, NodeReports};
use crate::scrape::MetricsScrape;
use crate::sink::Sink;
use crate::source::{GatewaySource, NodeReportSource, Source};
use crate::store::Store;
use crate::telemetry::{self, Telemetry};
use crate::OracleError;

/// Rounds the final flush tries before giving up (what is left stays in the store
/// and is settled by the next start).
pub const FLUSH_ATTEMPTS: u32 = 5;

/// The `[admin]` section: where `/metrics`, `/health` and `/invoices/…` are served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address to listen on (default `127.0.0.1:9464`).
    pub listen: String,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// A running daemon.
pub struct Daemon {
    /// Where `/metrics` and `/health` are served.
    pub admin: SocketAddr,
    pub gateway: Option<SocketAddr>,
    pub node_reports: Option<SocketAddr>,
    pub telemetry: Arc<Telemetry>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), OracleError>>,
}

async fn bind(address: &str, what: &'static str) -> Result<TcpListener, OracleError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| OracleError::Listen {
            address: address.to_string(),
            what,
            source,
        })
}

fn local(listener: &TcpListener, what: &'static str) -> Result<SocketAddr, OracleError> {
    listener
        .local_addr()
        .map_err(|source| OracleError::LocalAddress { what, source })
}

impl Daemon {
    /// Opens the store, binds every listener (so errors surface here) and starts.
    /// Node reports look jobs up through the same `chain` the batcher sends on.
    pub async fn start<C: Chain + Send + 'static>(
        config: &OracleConfig,
        chain: Arc<Mutex<C>>,
        oracle: Keypair,
    ) -> Result<Self, OracleError> {
        let directory: Arc<dyn JobDirectory> = Arc::clone(&chain) as _;
        Self::start_with_directory(config, chain, directory, oracle).await
    }

    /// Like [`Daemon::start`], with node reports looking jobs up in `directory` (a
    /// second connection, so a lookup never waits for a settlement to confirm).
    pub async fn start_with_directory<C: Chain + Send + 'static>(
        config: &OracleConfig,
        chain: Arc<Mutex<C>>,
        directory: Arc<dyn JobDirectory>,
        oracle: Keypair,
    ) -> Result<Self, OracleError> {
        let view: Arc<dyn crate::quorum::QuorumView> = Arc::clone(&chain) as _;
        Self::start_with_views(config, chain, directory, view, oracle).await
    }

    /// Like [`Daemon::start_with_directory`], a quorum member's co-signer reading
    /// the chain through `quorum_view`: a connection of its own, so that answering a
    /// peer never waits for this oracle's own settlement round (two leaders at a term
    /// boundary would otherwise each wait for the other).
    pub async fn start_with_views<C: Chain + Send + 'static>(
        config: &OracleConfig,
        chain: Arc<Mutex<C>>,
        directory: Arc<dyn JobDirectory>,
        quorum_view: Arc<dyn crate::quorum::QuorumView>,
        oracle: Keypair,
    ) -> Result<Self, OracleError> {
        let telemetry = Arc::new(Telemetry::default());
        let stores = Stores::open(config, &chain, &telemetry).await?;
        let (stop, shutdown) = watch::channel(false);
        let mut sources = Bound::bind(config, &directory, &stores, &telemetry).await?;
        let quorum = config
            .quorum
            .as_ref()
            .map(crate::quorum::Quorum::new)
            .transpose()?;
        let member = match &quorum {
            Some(quorum) => Some(
                Member::start(
                    config,
                    &oracle,
                    quorum,
                    quorum_view,
                    &directory,
                    &stores,
                    &telemetry,
                )
                .await?,
            ),
            None => None,
        };
        let (cosigner, records) = match member {
            Some(member) => {
                if let Some(forwarder) = member.forwarder {
                    sources.sources.push(Box::new(forwarder));
                }
                (Some(member.cosigner), Some(member.records))
            }
            None => (None, None),
        };
        let (admin, admin_task) = serve_admin(
            &config.admin,
            &telemetry,
            &stores.sink,
            stores.reader,
            (cosigner, records),
            shutdown.clone(),
        )
        .await?;
        let settle = Settle::new(
            config,
            stores.store,
            oracle,
            quorum,
            chain,
            &stores.sink,
            &telemetry,
        );
        let running = sources
            .sources
            .into_iter()
            .map(|source| {
                let name = source.name();
                tracing::info!("source {name} started");
                (name, tokio::spawn(source.run(shutdown.clone())))
            })
            .collect();
        let task = tokio::spawn(run(
            settle,
            running,
            admin_task,
            shutdown,
            Arc::clone(&telemetry),
        ));
        tracing::info!(%admin, "tally-oracle running");
        Ok(Self {
            admin,
            gateway: sources.gateway,
            node_reports: sources.node_reports,
            telemetry,
            stop,
            task,
        })
    }

    /// A handle that stops the daemon when sent `true` (e.g. from a signal handler).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Stops: sources drain, the last round settles what they accepted.
    pub async fn stop(self) -> Result<(), OracleError> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the daemon has stopped (after [`Daemon::stopper`] fired).
    pub async fn wait(self) -> Result<(), OracleError> {
        self.task.await.map_err(|source| OracleError::Task {
            task: "the daemon task".into(),
            source,
        })?
    }
}

fn admin_response(path: &str, telemetry: &Telemetry, now: i64) -> Response<Body> {
    match path {
        "/metrics" => {
            let mut response = Response::new(crate::http::full(telemetry.render()));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/health" => {
            let health = telemetry.health();
            // The daemon's health: whether its rounds run. One job's refused receipt
            // or unbillable usage is reported here, but is not the daemon failing.
            let (status, verdict) = if health.shutting_down {
                (StatusCode::SERVICE_UNAVAILABLE, "stopping")
            } else if health.last_errors.is_empty() && !health.unmetered_recently(now) {
                (StatusCode::OK, "ok")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "degraded")
            };
            json_response(
                status,
                &json!({
                    "status": verdict,
                    "role": if health.leader { "leader" } else { "follower" },
                    "last_good_round": health.last_good_round,
                    "errors": health.last_errors,
                    "jobs": {
                        "backing_off": telemetry.get(telemetry::JOBS_BACKING_OFF, ""),
                        "errors": health.job_errors,
                        "receipts_written_off": {
                            "job_closed": telemetry.get(telemetry::RECEIPTS_WRITTEN_OFF, "reason=\"job_closed\""),
                            "expired": telemetry.get(telemetry::RECEIPTS_WRITTEN_OFF, "reason=\"expired\""),
                            "superseded": telemetry.get(telemetry::RECEIPTS_WRITTEN_OFF, "reason=\"superseded\""),
                        },
                    },
                    "unbillable": {
                        "warnings": health.warnings,
                        "records": {
                            "after_deadline": telemetry.get(telemetry::UNBILLABLE_RECORDS, "reason=\"after_deadline\""),
                            "over_escrow": telemetry.get(telemetry::UNBILLABLE_RECORDS, "reason=\"over_escrow\""),
                        },
                        "units": {
                            "after_deadline": telemetry.get(telemetry::UNBILLABLE_UNITS, "reason=\"after_deadline\""),
                            "over_escrow": telemetry.get(telemetry::UNBILLABLE_UNITS, "reason=\"over_escrow\""),
                        },
                    },
                    "unmetered": {
                        "recent": health.unmetered,
                        "last_at": health.last_unmetered_at,
                        "answers": {
                            "tokenized": telemetry.get(telemetry::USAGE_MISSING, "outcome=\"tokenized\""),
                            "withheld": telemetry.get(telemetry::USAGE_MISSING, "outcome=\"withheld\""),
                            "unbilled": telemetry.get(telemetry::USAGE_MISSING, "outcome=\"unbilled\""),
                        },
                    },
                    "chain_clock_offset_seconds": telemetry.get(telemetry::CLOCK_OFFSET, ""),
                    "unsettled_records": telemetry.get(telemetry::UNSETTLED_RECORDS, ""),
                    "lag_seconds": telemetry.get(telemetry::LAG_SECONDS, ""),
                }),
            )
        }
        other => crate::http::error_response(
            StatusCode::NOT_FOUND,
            &format!("{other} is not served here: try /metrics, /health or /invoices/<job>/<nonce>/<seq>"),
        ),
    }
}

/// `GET /invoices/<job>/<nonce>/<seq>`: the invoice's bytes from the store (whichever
/// replica made them), exactly as hashed on chain.
pub async fn invoice_response(path: &str, reader: Arc<Mutex<Store>>) -> Response<Body> {
    let parts: Vec<&str> = path.trim_end_matches(".json").split('/').collect();
    let [job, nonce, seq] = parts.as_slice() else {
        return crate::http::error_response(
            StatusCode::NOT_FOUND,
            "invoices are served at /invoices/<job>/<nonce>/<seq>",
        );
    };
    let (Ok(nonce), Ok(seq)) = (nonce.parse::<u64>(), seq.parse::<u64>()) else {
        return crate::http::error_response(
            StatusCode::BAD_REQUEST,
            "the nonce and the seq are numbers: /invoices/<job>/<nonce>/<seq>",
        );
    };
    let job = (*job).to_string();
    let found = tokio::task::spawn_blocking(move || {
        reader
            .lock()
            .map_err(OracleError::poisoned("the store lock"))?
            .invoice(&job, nonce, seq)
    })
    .await;
    match found {
        Ok(Ok(Some(bytes))) => {
            let mut response = Response::new(crate::http::full(bytes));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Ok(Ok(None)) => crate::http::error_response(
            StatusCode::NOT_FOUND,
            &format!("no invoice {seq} of that job (nonce {nonce}) in the store"),
        ),
        Ok(Err(e)) => crate::http::error_response(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(e) => crate::http::error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The settlement loop's state.
struct Settle<C> {
    /// Taken while a round runs on a blocking thread.
    batcher: Option<Batcher>,
    chain: Arc<Mutex<C>>,
    sink: Arc<Sink>,
    telemetry: Arc<Telemetry>,
    interval: Duration,
    max_backoff: Duration,
    /// Whether the last round ran as the leader.
    leader: bool,
}

/// How a round went, for the loop.
#[derive(Clone, Copy, Debug, Default)]
struct Outcome {
    /// The round ran (as leader or follower); false: store or chain unavailable.
    ran: bool,
    /// Receipts left pending after a failure (their jobs back off).
    failed: usize,
    /// Records wait beyond a full invoice: go again soon.
    more: bool,
    /// Jobs waiting out a backoff.
    backing_off: usize,
}

impl<C: Chain + Send + 'static> Settle<C> {
    /// The loop's state for `config`, with a batcher settling `store`.
    fn new(
        config: &OracleConfig,
        store: Store,
        oracle: Keypair,
        quorum: Option<crate::quorum::Quorum>,
        chain: Arc<Mutex<C>>,
        sink: &Arc<Sink>,
        telemetry: &Arc<Telemetry>,
    ) -> Self {
        let mut batcher = Batcher::new(store, oracle, Arc::clone(&sink.clock))
            .with_settings(config.batch.clone());
        if let Some(quorum) = quorum {
            batcher = batcher.with_quorum(quorum);
        }
        if let Some(dir) = config.invoices_export() {
            batcher = batcher.with_invoices_dir(dir.to_path_buf());
        }
        Self {
            batcher: Some(batcher),
            chain,
            sink: Arc::clone(sink),
            telemetry: Arc::clone(telemetry),
            interval: config.batch.interval(),
            max_backoff: config.batch.max_backoff(),
            leader: false,
        }
    }

    /// One round on a blocking thread.
    async fn round(&mut self) -> Outcome {
        let Some(batcher) = self.batcher.take() else {
            return Outcome::default();
        };
        self.sink.taken();
        let started = std::time::Instant::now();
        let Ok(ran) = Self::run_blocking(Arc::clone(&self.chain), self.leader, batcher).await
        else {
            self.telemetry
                .round_failed("the settlement round panicked".into());
            return Outcome::default();
        };
        self.record_gauges(&ran, started);
        let backing_off = ran.batcher.jobs_backing_off();
        self.batcher = Some(ran.batcher);
        self.leader = matches!(ran.result, Ok(Some(_)));
        match ran.result {
            Ok(None) => {
                self.telemetry.follower_round(self.sink.clock.now());
                Outcome {
                    ran: true,
                    ..Outcome::default()
                }
            }
            Ok(Some(report)) => {
                self.record_round(&report);
                Outcome {
                    ran: true,
                    failed: report.failed,
                    more: report.more_waiting,
                    backing_off,
                }
            }
            Err(e) => {
                tracing::warn!("settlement round failed: {e}");
                self.telemetry.round_failed(e.to_string());
                Outcome::default()
            }
        }
    }

    /// Runs the round on a blocking thread, if this replica leads (checked afresh
    /// every round: a lock session lost to a restart or a cut network gives it up
    /// until it is won again). Err: the thread panicked.
    async fn run_blocking(
        chain: Arc<Mutex<C>>,
        was_leader: bool,
        batcher: Batcher,
    ) -> Result<Ran, tokio::task::JoinError> {
        tokio::task::spawn_blocking(move || {
            let result = match (batcher.store.try_lead(), chain.lock()) {
                (Ok(false), _) => Ok(None),
                (Err(e), _) => Err(e),
                (Ok(true), Ok(mut chain)) => {
                    if !was_leader {
                        // Another replica may have made tables while it led.
                        batcher.reset();
                    }
                    batcher.run_round(&mut *chain).map(Some)
                }
                (Ok(true), Err(_)) => Err(OracleError::Poisoned {
                    what: "the chain lock",
                }),
            };
            let unsettled = batcher.store.unsettled();
            Ran {
                batcher,
                result,
                unsettled,
            }
        })
        .await
    }

    /// The gauges every round sets, leader or not.
    #[allow(clippy::cast_precision_loss)]
    fn record_gauges(&self, ran: &Ran, started: std::time::Instant) {
        let batcher = &ran.batcher;
        self.telemetry.set(
            telemetry::JOBS_BACKING_OFF,
            "",
            batcher.jobs_backing_off() as f64,
        );
        self.telemetry
            .set(telemetry::LOOKUP_TABLES, "", batcher.active_tables() as f64);
        self.telemetry.set(
            telemetry::ROUND_SECONDS,
            "",
            started.elapsed().as_secs_f64(),
        );
        if let Ok((count, oldest)) = ran.unsettled {
            self.telemetry
                .set(telemetry::UNSETTLED_RECORDS, "", count as f64);
            let lag = oldest.map_or(0, |t| self.sink.clock.now().saturating_sub(t).max(0));
            self.telemetry.set(telemetry::LAG_SECONDS, "", lag as f64);
        }
    }

    /// A leader's round in the metrics and the log.
    fn record_round(&self, report: &RoundReport) {
        #[allow(clippy::cast_precision_loss)]
        self.telemetry
            .set(telemetry::CLOCK_OFFSET, "", self.sink.clock.offset() as f64);
        self.telemetry.round(report, self.sink.clock.now());
        for unbillable in &report.unbillable {
            tracing::warn!("{}", unbillable.detail);
        }
        for off in &report.written_off {
            tracing::warn!(reason = off.reason.label(), "written off: {}", off.detail);
        }
        if report.sent > 0 || report.recovered > 0 {
            tracing::info!(
                sent = report.sent,
                confirmed = report.confirmed,
                recovered = report.recovered,
                failed = report.failed,
                transactions = report.transactions,
                "settlement round"
            );
        }
        for error in &report.errors {
            tracing::warn!("{error}");
        }
        for (peer, reason) in &report.peer_refusals {
            self.telemetry.inc(
                telemetry::QUORUM_PEER_REFUSALS,
                &format!("peer=\"{peer}\",reason=\"{reason}\""),
                1,
            );
        }
    }

    /// Rounds on the interval, early when a batch is full or work is left over,
    /// backing off while rounds cannot run at all.
    async fn until(&mut self, mut stop: Shutdown) {
        let mut backoff: Option<Duration> = None;
        let mut soon = false;
        loop {
            let wait = match (backoff, soon) {
                (Some(b), _) => b,
                // Left-over records (a full invoice) or jobs backing off: the next
                // round comes sooner than the interval.
                (None, true) => self.interval.min(Duration::from_millis(500)),
                (None, false) => self.interval,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.sink.batch_ready(), if backoff.is_none() => {}
                () = stopped(&mut stop) => return,
            }
            let outcome = self.round().await;
            soon = outcome.more;
            backoff = if outcome.ran {
                None
            } else {
                let next = backoff.map_or(Duration::from_millis(500), |b| b * 2);
                Some(next.min(self.max_backoff))
            };
        }
    }

    /// The last rounds on stop: settle everything accepted.
    async fn flush(&mut self) {
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=FLUSH_ATTEMPTS {
            let outcome = self.round().await;
            if outcome.ran && outcome.failed == 0 && !outcome.more && outcome.backing_off == 0 {
                return;
            }
            tracing::warn!("final settlement attempt {attempt} of {FLUSH_ATTEMPTS} left work");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.max_backoff);
        }
        tracing::error!(
            "stopping with unsettled records: they stay in the store and settle on the next start"
        );
    }
}

async fn run<C: Chain + Send + 'static>(
    mut settle: Settle<C>,
    sources: Vec<(&'static str, JoinHandle<Result<(), OracleError>>)>,
    admin: JoinHandle<std::io::Result<()>>,
    mut shutdown: Shutdown,
    telemetry: Arc<Telemetry>,
) -> Result<(), OracleError> {
    let (stop_batcher, batcher_stop) = watch::channel(false);
    let batcher = async {
        settle.until(batcher_stop).await;
        settle
    };
    let sources = async {
        stopped(&mut shutdown).await;
        telemetry.set_shutting_down();
        tracing::info!("stopping: sources finish what they accepted");
        let mut first_error = None;
        for (name, task) in sources {
            match task.await {
                Ok(Ok(())) => tracing::info!("source {name} stopped"),
                Ok(Err(e)) => {
                    tracing::error!("source {name}: {e}");
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    tracing::error!("source {name} panicked: {e}");
                    first_error.get_or_insert(OracleError::Task {
                        task: format!("source {name}"),
                        source: e,
                    });
                }
            }
        }
        let _ = stop_batcher.send(true);
        first_error
    };
    let (mut settle, source_error) = tokio::join!(batcher, sources);
    tracing::info!("settling what was accepted");
    settle.flush().await;
    let _ = admin.await;
    tracing::info!("tally-oracle stopped");
    source_error.map_or(Ok(()), Err)
}

/// The daemon's connections to its store.
struct Stores {
    /// Where the sources commit records.
    sink: Arc<Sink>,
    /// The batcher's.
    store: Store,
    /// The sources' (job claims, key revocations, invoices for callers).
    sources_store: Arc<SourceStore>,
    /// Serves `/invoices/…`.
    reader: Store,
}

impl Stores {
    /// Syncs the clock with the chain (records are stamped in the chain's time from
    /// the first one on; the batcher keeps it synced each round) and opens the
    /// store's connections — on a blocking thread (PostgreSQL's client blocks; so
    /// does RPC).
    async fn open<C: Chain + Send + 'static>(
        config: &OracleConfig,
        chain: &Arc<Mutex<C>>,
        telemetry: &Arc<Telemetry>,
    ) -> Result<Self, OracleError> {
        let clock = ChainClock::new();
        let (location, telemetry, max, chain) = (
            config.store.clone(),
            Arc::clone(telemetry),
            config.batch.max_records,
            Arc::clone(chain),
        );
        tokio::task::spawn_blocking(move || {
            let chain = chain
                .lock()
                .map_err(OracleError::poisoned("the chain lock"))?;
            clock.sync(&*chain)?;
            drop(chain);
            if !crate::store::is_postgres(&location) {
                if let Some(parent) = std::path::Path::new(&location)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(parent).map_err(|e| OracleError::Open {
                        action: "create the store's folder",
                        location: parent.display().to_string(),
                        source: e.into(),
                    })?;
                }
            }
            Ok::<_, OracleError>(Self {
                sink: Sink::open(&location, telemetry, Arc::clone(&clock), max)?,
                store: Store::connect(&location)?,
                sources_store: SourceStore::open(&location, clock)?,
                reader: Store::connect(&location)?,
            })
        })
        .await
        .map_err(|source| OracleError::Task {
            task: "opening the store".into(),
            source,
        })?
    }
}

/// The configured sources, their listeners bound (not yet running).
struct Bound {
    sources: Vec<Box<dyn Source>>,
    gateway: Option<SocketAddr>,
    node_reports: Option<SocketAddr>,
}

impl Bound {
    async fn bind(
        config: &OracleConfig,
        directory: &Arc<dyn JobDirectory>,
        stores: &Stores,
        telemetry: &Arc<Telemetry>,
    ) -> Result<Self, OracleError> {
        let mut bound = Self {
            sources: Vec::new(),
            gateway: None,
            node_reports: None,
        };
        if let Some(settings) = &config.gateway {
            let listener = bind(&settings.listen, "gateway").await?;
            bound.gateway = Some(local(&listener, "gateway")?);
            let gateway = gateway(settings, directory, stores)?;
            bound
                .sources
                .push(Box::new(GatewaySource { gateway, listener }));
        }
        if let Some(settings) = &config.node_reports {
            let listener = bind(&settings.listen, "node reports").await?;
            bound.node_reports = Some(local(&listener, "node reports")?);
            let reports = NodeReports::new(
                Arc::clone(&stores.sink),
                Arc::clone(directory),
                Some(Arc::clone(&stores.sources_store)),
            );
            bound
                .sources
                .push(Box::new(NodeReportSource { reports, listener }));
        }
        if let Some(settings) = &config.metrics {
            bound.sources.push(Box::new(MetricsScrape::new(
                settings.clone(),
                Arc::clone(telemetry),
            )));
        }
        Ok(bound)
    }
}

/// The gateway, pre-authorizing against the jobs' views.
fn gateway(
    settings: &crate::gateway::GatewaySettings,
    directory: &Arc<dyn JobDirectory>,
    stores: &Stores,
) -> Result<Arc<Gateway>, OracleError> {
    let book = JobBook::new(
        Arc::clone(directory),
        Arc::clone(&stores.sources_store),
        Arc::clone(&stores.sink.clock),
        ViewConfig {
            refresh: settings.view_refresh(),
            operator: settings.operator_pda()?,
            new_job_lookups_per_sec: 20,
            source: crate::gateway::SOURCE,
        },
    );
    if settings.operator.is_none() {
        tracing::warn!(
            "gateway.operator is not set: job keys are refused, only static api_keys are taken"
        );
    }
    Ok(Gateway::build(
        settings.clone(),
        Arc::clone(&stores.sink),
        Some(book),
    ))
}

/// Binds the admin listener and serves `/metrics`, `/health` and `/invoices/…` on it.
async fn serve_admin(
    settings: &AdminSettings,
    telemetry: &Arc<Telemetry>,
    sink: &Sink,
    reader: Store,
    (cosigner, records): (
        Option<Arc<crate::quorum::Cosigner>>,
        Option<Arc<NodeReports>>,
    ),
    shutdown: Shutdown,
) -> Result<(SocketAddr, JoinHandle<std::io::Result<()>>), OracleError> {
    let admin_listener = bind(&settings.listen, "/metrics and /health").await?;
    let admin = local(&admin_listener, "/metrics and /health")?;
    let reader = Arc::new(Mutex::new(reader));
    let (telemetry, clock) = (Arc::clone(telemetry), Arc::clone(&sink.clock));
    let task = tokio::spawn(async move {
        crate::http::serve(
            admin_listener,
            move |req: hyper::Request<hyper::body::Incoming>| {
                let (telemetry, reader, now) =
                    (Arc::clone(&telemetry), Arc::clone(&reader), clock.now());
                let (cosigner, records) = (cosigner.clone(), records.clone());
                async move {
                    let path = req.uri().path().to_string();
                    if let Some(rest) = path.strip_prefix("/invoices/") {
                        return invoice_response(rest, reader).await;
                    }
                    if let (crate::quorum::COSIGN_PATH, Some(cosigner)) = (path.as_str(), cosigner)
                    {
                        return crate::quorum::handle(req, cosigner).await;
                    }
                    if let (crate::quorum::evidence::RECORDS_PATH, Some(records)) =
                        (path.as_str(), records)
                    {
                        return crate::quorum::evidence::handle(req, records).await;
                    }
                    admin_response(&path, &telemetry, now)
                }
            },
            shutdown,
            &crate::http::Limits::default(),
            None,
        )
        .await
    });
    Ok((admin, task))
}

/// What makes this daemon a quorum member besides its batcher's leadership: its
/// co-signer, the receiver of its peers' gateway records, and (with a gateway) the
/// forwarder of its own.
struct Member {
    cosigner: Arc<crate::quorum::Cosigner>,
    records: Arc<NodeReports>,
    forwarder: Option<crate::quorum::evidence::Forwarder>,
}

impl Member {
    async fn start(
        config: &OracleConfig,
        oracle: &Keypair,
        quorum: &crate::quorum::Quorum,
        view: Arc<dyn crate::quorum::QuorumView>,
        directory: &Arc<dyn JobDirectory>,
        stores: &Stores,
        telemetry: &Arc<Telemetry>,
    ) -> Result<Self, OracleError> {
        if crate::store::is_postgres(&config.store) {
            return Err(setting(
                "quorum",
                "a quorum member keeps a SQLite store of its own (store = \"<file>\"); \
                 PostgreSQL replicas behind one quorum member are not supported yet",
            ));
        }
        let forwarder = match &config.gateway {
            Some(gateway) => Some(forwarder(config, gateway, quorum, stores, telemetry).await?),
            None => None,
        };
        Ok(Self {
            cosigner: Arc::new(cosigner(config, oracle, quorum, view, telemetry).await?),
            records: NodeReports::new(
                Arc::clone(&stores.sink),
                Arc::clone(directory),
                Some(Arc::clone(&stores.sources_store)),
            ),
            forwarder,
        })
    }
}

fn setting(key: &'static str, reason: impl Into<String>) -> OracleError {
    crate::config::ConfigError::Setting {
        key,
        reason: reason.into(),
    }
    .into()
}

/// A quorum member's gateway signs its records for its peers with its own key.
async fn forwarder(
    config: &OracleConfig,
    gateway: &crate::gateway::GatewaySettings,
    quorum: &crate::quorum::Quorum,
    stores: &Stores,
    telemetry: &Arc<Telemetry>,
) -> Result<crate::quorum::evidence::Forwarder, OracleError> {
    let Some(path) = &gateway.signing_key else {
        return Err(setting(
            "gateway.signing_key",
            "a quorum member's gateway signs the records it meters, so that the other \
             oracles can check them: make a key (solana-keygen new -o gateway.json), set \
             signing_key = \"gateway.json\", and have the operator register its public key \
             (tally operator update --node-key <KEY>)",
        ));
    };
    let keypair = tally_client::config::read_keypair(path)?;
    let location = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::connect(&location))
        .await
        .map_err(|source| OracleError::Task {
            task: "opening the forwarder's store".into(),
            source,
        })??;
    let forwarder = crate::quorum::evidence::Forwarder::new(
        store,
        &keypair,
        quorum.peers(),
        Arc::clone(telemetry),
        Arc::clone(&stores.sink.clock),
    )?;
    tracing::info!(gateway_key = %forwarder.signer(), "gateway records are signed and sent to the quorum's peers");
    Ok(forwarder)
}

/// This oracle's co-signer (a quorum member): its own store connection, and the
/// chain it reads jobs, the config and lookup tables from.
async fn cosigner(
    config: &OracleConfig,
    oracle: &Keypair,
    quorum: &crate::quorum::Quorum,
    view: Arc<dyn crate::quorum::QuorumView>,
    telemetry: &Arc<Telemetry>,
) -> Result<crate::quorum::Cosigner, OracleError> {
    let location = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::connect(&location))
        .await
        .map_err(|source| OracleError::Task {
            task: "opening the co-signer's store".into(),
            source,
        })??;
    Ok(crate::quorum::Cosigner::new(
        oracle.insecure_clone(),
        Arc::new(Mutex::new(store)),
        view,
        quorum.peers().clone(),
    )
    .with_signed(quorum.signed().clone())
    .with_telemetry(Arc::clone(telemetry)))
}

/// What a round on the blocking thread hands back.
struct Ran {
    batcher: Batcher,
    /// `None`: another replica leads; this one did not settle.
    result: Result<Option<RoundReport>, OracleError>,
    /// The store's unsettled records: (count, oldest's end).
    unsettled: Result<(u64, Option<i64>), OracleError>,
}
