//! The gateway: an OpenAI-compatible reverse proxy in front of an operator's inference
//! server (vLLM, TGI, llama.cpp server, Ollama), and billing software. Each request:
//!
//! 1. **Who pays.** The caller's key names the job: a job key signed by the job's
//!    client wallet, checked against the chain ([`auth`], [`tally_client::job_key`]),
//!    or a static key the operator configured. Nothing else can name a job.
//! 2. **Can it pay.** The job's view ([`crate::job_view`]) must show the request's
//!    maximum cost available — escrow left, less usage metered and not yet settled,
//!    less what requests in flight reserved — else `402` (or `429` at the job's spend
//!    cap); the cost is reserved before the request is forwarded.
//! 3. **The meter stays on.** The body is normalized so the caller cannot switch usage
//!    reporting off ([`request`]); answers without usage are counted with the
//!    server's tokenizer ([`tokenize`]), or withheld (non-streamed) and counted as
//!    unbilled, degrading `/health`.
//! 4. **Billed before delivered.** A record keyed by the gateway's own request id
//!    (UUIDv7; the server's id kept beside it) is committed before a non-streamed
//!    answer is returned, and before a stream's usage chunk and `[DONE]` are sent
//!    ([`stream`]). Stream tasks are tracked: a stop waits for them (bounded).
//!
//! A gateway built without a chain ([`Gateway::new`], [`Gateway::with_sink`]) takes
//! static keys only and does not pre-authorize: it is for tests, benchmarks and the
//! demo. The daemon always builds it with the chain ([`Gateway::build`]).
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tally::state::{Job, UnitKind};
use tokio_util::task::TaskTracker;

use crate::http::{error_response, full, json_response, Body, Limits, Shutdown};
use crate::job_view::{JobBook, KeyTerms, Refused, Reservation, Usage};
use crate::sink::Sink;
use crate::store::{UsageRecord, COUNTED_BY_TOKENIZER, COUNTED_BY_UPSTREAM};
use crate::telemetry::Telemetry;

pub mod auth;
pub mod request;
pub mod stream;
pub mod tokenize;

use auth::{Caller, Refusal};
pub use request::usage_of;
use request::{Endpoint, Normalized};
use stream::Passage;
pub use stream::StreamUsage;
pub use tokenize::TokenizeMode;
use tokenize::Tokenizer;

/// Endpoints metered (POST).
pub const METERED_PATHS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];
/// Where a job key's holder revokes it (`POST`, `Authorization: Bearer <key>`).
pub const REVOKE_PATH: &str = "/tally/v1/keys/revoke";
/// The response header carrying the gateway's request id (the record's key). Every
/// response has one, refusals too: a client keeps it in its ledger, and quotes it.
pub const REQUEST_ID_HEADER: &str = "x-tally-request-id";
/// Where a job's client reads its invoices with a job key (`GET`, `Authorization:
/// Bearer <key>`): `?after=<seq>&limit=<n>` pages through them (JSON), and
/// `/<seq>` is one invoice's bytes, exactly as hashed on chain. Never forwarded.
pub const INVOICES_PATH: &str = "/tally/v1/invoices";
/// Most invoices one page holds.
pub const INVOICES_PAGE_MAX: u64 = 100;
/// A page stops growing past this many bytes of invoices (it holds at least one).
pub const INVOICES_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// The name gateway records carry.
pub const SOURCE: &str = "gateway";

/// A client that reads nothing for this long is treated as gone (its stream is still
/// read to the end and billed).
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// The `[gateway]` section: where the gateway listens, the inference server it
/// forwards to, whose jobs it takes, and how it treats requests. Only `listen` and
/// `upstream` are required; [`GatewaySettings::new`] gives every other key its
/// default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Where the daemon serves the gateway, e.g. `127.0.0.1:8080` (a gateway built
    /// by hand is served on whatever listener it is given).
    pub listen: String,
    /// Base URL of the inference server, e.g. `http://127.0.0.1:8000`.
    pub upstream: String,
    /// The operator this gateway serves (its authority, the wallet that registered
    /// it). Job keys are taken only for this operator's jobs: others' usage would pay
    /// someone else. Without it, only static `api_keys` are taken.
    #[serde(default)]
    pub operator: Option<String>,
    /// Optional static API key → job address, for operators who issue their own keys.
    /// Secret. Clients normally bring job keys signed by their wallet instead
    /// (`tally job key <JOB>`), which need no entry here.
    #[serde(default)]
    pub api_keys: BTreeMap<String, String>,
    /// Largest request body, bytes (bigger: 413; at least 1 KiB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// A connection must send each request's head within this time (slowloris).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: f64,
    /// A request's body must arrive within this time (else 408).
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_secs: f64,
    /// Connections served at once; more wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// On stop, how long requests and streams in flight may take to finish (each is
    /// billed when it does).
    #[serde(default = "default_drain")]
    pub drain_secs: f64,
    /// `max_tokens` given to chat requests that set none, so their cost is bounded.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// Longest an upstream answer may take, streamed or not.
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout_secs: f64,
    /// Counting tokens for answers the upstream sends without usage: `auto` (its
    /// `/tokenize`, else `/extras/tokenize`), `off`, or a path on the upstream.
    #[serde(default)]
    pub tokenize: TokenizeMode,
    /// How often a served job's view is refreshed from the chain and the store.
    #[serde(default = "default_view_refresh")]
    pub view_refresh_secs: f64,
    /// A quorum member's gateway key (a Solana keypair file, not the oracle's key):
    /// it signs every record this gateway meters, so that the other oracles can
    /// check the record themselves (`quorum::evidence`). Its operator registers the
    /// public key as a node key (`tally operator update --node-key <KEY>`). Required
    /// with `[quorum]`; unused without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<std::path::PathBuf>,
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}

fn default_header_read_timeout() -> f64 {
    30.0
}

fn default_body_read_timeout() -> f64 {
    60.0
}

fn default_max_connections() -> usize {
    1_024
}

fn default_drain() -> f64 {
    30.0
}

fn default_max_tokens() -> u64 {
    4_096
}

fn default_upstream_timeout() -> f64 {
    600.0
}

fn default_view_refresh() -> f64 {
    2.0
}

/// `value` seconds, at least `least` (a value that is not finite: `least`).
fn secs(value: f64, least: f64) -> Duration {
    Duration::from_secs_f64(if value.is_finite() {
        value.max(least)
    } else {
        least
    })
}

impl GatewaySettings {
    /// A gateway forwarding to `upstream`, every other setting at its default (no
    /// operator, no static keys; `listen` is `127.0.0.1:0`).
    pub fn new(upstream: impl Into<String>) -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            upstream: upstream.into(),
            operator: None,
            api_keys: BTreeMap::new(),
            max_body_bytes: default_max_body_bytes(),
            header_read_timeout_secs: default_header_read_timeout(),
            body_read_timeout_secs: default_body_read_timeout(),
            max_connections: default_max_connections(),
            drain_secs: default_drain(),
            default_max_tokens: default_max_tokens(),
            upstream_timeout_secs: default_upstream_timeout(),
            tokenize: TokenizeMode::default(),
            view_refresh_secs: default_view_refresh(),
            signing_key: None,
        }
    }

    /// With these static API keys (key → job address).
    #[must_use]
    pub fn with_api_keys(mut self, keys: impl IntoIterator<Item = (String, String)>) -> Self {
        self.api_keys = keys.into_iter().collect();
        self
    }

    /// What the gateway's listener accepts.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes.max(1024),
            header_read_timeout: secs(self.header_read_timeout_secs, 0.1),
            body_read_timeout: secs(self.body_read_timeout_secs, 0.1),
            max_connections: self.max_connections.max(1),
            drain: secs(self.drain_secs, 0.0),
        }
    }

    /// `max_tokens` given to chat requests that set none (at least 1).
    pub fn default_max_tokens(&self) -> u64 {
        self.default_max_tokens.max(1)
    }

    /// Longest an upstream answer may take (at least 1 s).
    pub fn upstream_timeout(&self) -> Duration {
        secs(self.upstream_timeout_secs, 1.0)
    }

    /// How often a served job's view is refreshed (at least 50 ms).
    pub fn view_refresh(&self) -> Duration {
        secs(self.view_refresh_secs, 0.05)
    }

    /// The operator PDA this gateway serves, if configured.
    pub fn operator_pda(&self) -> Result<Option<anchor_lang::prelude::Pubkey>, crate::OracleError> {
        self.operator
            .as_deref()
            .map(|text| {
                text.parse::<anchor_lang::prelude::Pubkey>()
                    .map(|authority| tally_client::pda::operator(&authority))
                    .map_err(|_| {
                        crate::config::ConfigError::Setting {
                            key: "gateway.operator",
                            reason: format!(
                                "`{text}` is not a public key: write the operator's authority (its wallet)"
                            ),
                        }
                        .into()
                    })
            })
            .transpose()
    }

    /// Checks what serde cannot: the operator is a public key, and every static key
    /// names a job address (the key itself is never shown).
    pub fn validate(&self) -> Result<(), crate::OracleError> {
        self.operator_pda()?;
        for (key, job) in &self.api_keys {
            if job.parse::<anchor_lang::prelude::Pubkey>().is_err() {
                let shown: String = key.chars().take(4).collect();
                return Err(crate::config::ConfigError::Setting {
                    key: "gateway.api_keys",
                    reason: format!("the key {shown}… names `{job}`, which is not a job address"),
                }
                .into());
            }
        }
        Ok(())
    }

    /// The settings with the static keys replaced by `<secret N>`, for logs.
    #[must_use]
    pub fn redacted(&self) -> Self {
        Self {
            api_keys: self
                .api_keys
                .values()
                .enumerate()
                .map(|(i, job)| (format!("<secret {}>", i + 1), job.clone()))
                .collect(),
            ..self.clone()
        }
    }
}

/// The running gateway's state.
pub struct Gateway {
    /// As given, the upstream without a trailing `/`.
    settings: GatewaySettings,
    sink: Arc<Sink>,
    http: reqwest::Client,
    book: Option<Arc<JobBook>>,
    tokenizer: Tokenizer,
    tasks: TaskTracker,
    verified: auth::Verified,
}

/// What a request's head decides.
#[allow(clippy::large_enum_variant)] // one per request, on the stack, matched at once
enum Head {
    /// A metered request, from a caller allowed to spend the job: its body is read.
    Metered(Endpoint, Authorized),
    /// Answered from the head alone (invoices, a revocation).
    Answered(Response<Body>),
}

/// A caller allowed to spend a job, before its request's cost is reserved.
struct Authorized {
    job: String,
    key: Option<KeyTerms>,
    /// The job as the chain says (with pre-authorization).
    state: Option<(anchor_lang::prelude::Pubkey, Job)>,
}

fn refused(refused: &Refused) -> Refusal {
    let status = match refused {
        Refused::Closed(_)
        | Refused::Ended { .. }
        | Refused::AfterDeadline { .. }
        | Refused::InsufficientEscrow { .. }
        | Refused::KeyLimit { .. } => StatusCode::PAYMENT_REQUIRED,
        Refused::OtherOperator { .. } => StatusCode::FORBIDDEN,
        Refused::MeteredElsewhere(_) => StatusCode::CONFLICT,
        Refused::SpendCap { .. } => StatusCode::TOO_MANY_REQUESTS,
        Refused::Busy | Refused::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut refusal = Refusal::new(status, refused.reason(), refused.to_string());
    refusal.retry_after = match refused {
        Refused::SpendCap { retry_after, .. } => Some(*retry_after),
        Refused::Busy | Refused::Unavailable(_) => Some(1),
        _ => None,
    };
    refusal
}

fn refusal_response(refusal: &Refusal) -> Response<Body> {
    let mut response = error_response(refusal.status, &refusal.message);
    if let Some(secs) = refusal.retry_after {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
            response
                .headers_mut()
                .insert(hyper::header::RETRY_AFTER, value);
        }
    }
    response
}

fn millis_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// An SSE event telling a streaming client its answer ended in error.
fn error_event(message: &str) -> Bytes {
    Bytes::from(format!(
        "data: {}\n\n",
        json!({ "error": { "message": message, "type": "server_error", "code": 502 } })
    ))
}

impl Gateway {
    /// A gateway with a store of its own at `store_path`, stamping records with
    /// `clock` (synced by the caller before the first request) — no chain: static
    /// keys only, no pre-authorization.
    pub fn new(
        settings: GatewaySettings,
        store_path: &Path,
        clock: Arc<crate::clock::ChainClock>,
    ) -> Result<Arc<Self>, crate::OracleError> {
        let sink = Sink::open(
            &store_path.to_string_lossy(),
            Arc::new(Telemetry::default()),
            clock,
            u64::MAX,
        )?;
        Ok(Self::with_sink(settings, sink))
    }

    /// A gateway committing into `sink` (no chain: static keys only, no
    /// pre-authorization).
    pub fn with_sink(settings: GatewaySettings, sink: Arc<Sink>) -> Arc<Self> {
        Self::build(settings, sink, None)
    }

    /// A gateway committing into `sink`, checking job keys and pre-authorizing every
    /// request against `book` (the chain and the store), as the daemon runs it.
    pub fn build(
        mut settings: GatewaySettings,
        sink: Arc<Sink>,
        book: Option<Arc<JobBook>>,
    ) -> Arc<Self> {
        settings.upstream = settings.upstream.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(settings.upstream_timeout())
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            tokenizer: Tokenizer::new(
                &settings.upstream,
                settings.tokenize.clone(),
                Duration::from_secs(30),
            ),
            sink,
            http,
            book,
            settings,
            tasks: TaskTracker::new(),
            verified: auth::Verified::default(),
        })
    }

    /// The clock its records are stamped with: sync it from the chain (the batcher
    /// does, each round, when given this clock).
    pub fn clock(&self) -> Arc<crate::clock::ChainClock> {
        Arc::clone(&self.sink.clock)
    }

    /// Serves HTTP/1.1 on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        self.serve_until(listener, crate::http::never()).await
    }

    /// Serves until `shutdown`, then drains: requests in flight finish, and streams
    /// still being read are metered, within the configured drain time.
    pub async fn serve_until(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: Shutdown,
    ) -> std::io::Result<()> {
        if let Some(book) = &self.book {
            // Revocations made on other replicas reach this one within seconds.
            let (store, mut stop) = (Arc::clone(book.store()), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        () = crate::http::stopped(&mut stop) => return,
                    }
                    if let Err(e) = store.reload_revoked().await {
                        tracing::warn!("reading revoked job keys: {e}");
                    }
                }
            });
        }
        let (limits, tasks) = (self.settings.limits(), self.tasks.clone());
        crate::http::serve(
            listener,
            move |req| Arc::clone(&self).handle(req),
            shutdown,
            &limits,
            Some(tasks),
        )
        .await
    }

    fn telemetry(&self) -> &Telemetry {
        &self.sink.telemetry
    }

    /// `text` without the upstream's address (internal URLs stay internal).
    fn scrub(&self, text: &str) -> String {
        let host = self
            .settings
            .upstream
            .split_once("://")
            .map_or(self.settings.upstream.as_str(), |(_, host)| host);
        text.replace(&self.settings.upstream, "the inference server")
            .replace(host, "the inference server")
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        // Minted first, so that every answer names it, refusals and errors too.
        let request_id = uuid::Uuid::now_v7().to_string();
        let mut response = match Arc::clone(&self).serve_request(req, &request_id).await {
            Ok(response) => response,
            Err(refusal) => {
                self.telemetry().refused(refusal.reason);
                refusal_response(&refusal)
            }
        };
        if let Ok(value) = hyper::header::HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        response
    }

    async fn authorize(&self, caller: &Caller) -> Result<Authorized, Refusal> {
        let job = caller.job();
        let key = match caller {
            Caller::JobKey(key) => Some(KeyTerms {
                id: key.id(),
                spend_limit: key.claims.spend_limit,
            }),
            Caller::Static { .. } => None,
        };
        let Some(book) = &self.book else {
            if matches!(caller, Caller::JobKey(_)) {
                return Err(Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    "key_unchecked",
                    "this gateway runs without the chain and cannot check job keys: use a static key the operator issued",
                ));
            }
            return Ok(Authorized {
                job,
                key,
                state: None,
            });
        };
        let address = auth::job_address(&job)?;
        if matches!(caller, Caller::JobKey(_)) && !book.takes_job_keys() {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "key_unchecked",
                "this gateway takes no job keys until its operator is configured (gateway.operator): use a static key the operator issued",
            ));
        }
        if let Caller::JobKey(job_key) = caller {
            auth::check_terms(
                job_key,
                self.sink.clock.now(),
                book.store().is_revoked(&job_key.id()),
            )?;
        }
        let state = book.job(&address).await.map_err(|e| refused(&e))?;
        if let Caller::JobKey(job_key) = caller {
            self.verified.check(job_key, &state)?;
        }
        Ok(Authorized {
            job,
            key,
            state: Some((address, state)),
        })
    }

    /// The refusal of a request for a model `job` does not pay for, naming the job's
    /// model: its name when the inference server lists it (`GET /v1/models`), else
    /// its hash.
    async fn wrong_model(&self, job_text: &str, job: &Job, asked: &str) -> Refusal {
        let listed = self
            .http
            .get(format!("{}/v1/models", self.settings.upstream))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok();
        let listed = match listed {
            Some(answer) => answer.json::<Value>().await.ok(),
            None => None,
        };
        let name = listed
            .as_ref()
            .and_then(|v| v.get("data"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("id").and_then(Value::as_str))
            .find(|id| tally_client::model_hash(id) == job.model)
            .map(str::to_string);
        let message = match name {
            Some(name) => format!(
                "job {job_text} pays for model `{name}`, not `{asked}`: send \"model\": \"{name}\" (a job pays for one model; open another job for another model)"
            ),
            None => format!(
                "job {job_text} pays for the model whose name hashes to sha256:{}, which this gateway's inference server does not list, not `{asked}`: open a job for a model the operator serves (GET /v1/models)",
                tally_client::model_label(&job.model)
            ),
        };
        Refusal::new(StatusCode::BAD_REQUEST, "model_not_paid_for", message)
    }

    /// Most units one request may bill, for a job of `kind`.
    /// Counts an answer that came without usage (`what`: a non-streamed answer, a
    /// stream) with the server's own tokenizer: the usage and how it was counted,
    /// or `None` (logged) when it cannot be counted.
    async fn count_with_tokenizer<'a>(
        &self,
        request: &Normalized,
        generated: impl IntoIterator<Item = &'a String>,
        what: &str,
    ) -> Option<((u64, u64), &'static str)> {
        match self
            .tokenizer
            .count_answer(
                &request.model,
                &request.prompt_text,
                request.prompt_token_ids,
                generated,
            )
            .await
        {
            Ok(usage) => {
                self.telemetry().usage_missing(
                    "tokenized",
                    &format!("{what} without usage, counted with the server's tokenizer"),
                    self.sink.clock.now(),
                );
                Some((usage, COUNTED_BY_TOKENIZER))
            }
            Err(e) => {
                tracing::warn!("counting {what} without usage: {}", self.scrub(&e));
                None
            }
        }
    }

    /// The most one request may use of a job of `kind`: units, and the output
    /// tokens among them.
    fn max_usage(&self, kind: UnitKind, request: &Normalized) -> Usage {
        let units = match kind {
            UnitKind::Tokens => request
                .prompt_bound
                .saturating_add(request.prompt_token_ids)
                .saturating_add(request.max_completion_tokens),
            UnitKind::Requests | UnitKind::Frames => 1,
            // GPU time is the request's wall time, at most the upstream timeout.
            UnitKind::GpuSeconds => self.settings.upstream_timeout().as_secs().saturating_add(1),
        };
        let output = match kind {
            UnitKind::Tokens => request.max_completion_tokens,
            _ => 0,
        };
        Usage { units, output }
    }

    /// The checks made on a request's head, before its body is read.
    async fn before_body(&self, parts: &hyper::http::request::Parts) -> Result<Head, Refusal> {
        let path = parts.uri.path().to_string();
        if path == REVOKE_PATH && parts.method == hyper::Method::POST {
            return self.revoke(&parts.headers).await.map(Head::Answered);
        }
        if parts.method == hyper::Method::GET
            && (path == INVOICES_PATH || path.starts_with(&format!("{INVOICES_PATH}/")))
        {
            return self
                .invoices(
                    &path[INVOICES_PATH.len()..],
                    parts.uri.query(),
                    &parts.headers,
                )
                .await
                .map(Head::Answered);
        }
        let Some(endpoint) = Endpoint::of(&path).filter(|_| parts.method == hyper::Method::POST)
        else {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "{} {path} is not served here: POST to {}, or GET {INVOICES_PATH} with your job key",
                    parts.method,
                    METERED_PATHS.join(", ")
                ),
            ));
        };
        // Who pays, before the body is read: strangers cannot make the gateway buffer.
        let caller = auth::caller(&parts.headers, |key| {
            self.settings.api_keys.get(key).cloned()
        })?;
        Ok(Head::Metered(endpoint, self.authorize(&caller).await?))
    }

    async fn serve_request(
        self: Arc<Self>,
        req: Request<Incoming>,
        request_id: &str,
    ) -> Result<Response<Body>, Refusal> {
        let (parts, body) = req.into_parts();
        let limits = self.settings.limits();
        // What is answered from the head alone (invoices, revocations, and refusals of
        // who pays) leaves the body unread: it is read away after the answer, so a
        // caller still sending reads why (`http::discard`).
        let (endpoint, authorized) = match self.before_body(&parts).await {
            Ok(Head::Metered(endpoint, authorized)) => (endpoint, authorized),
            Ok(Head::Answered(response)) => {
                crate::http::discard(&parts.headers, body, &limits);
                return Ok(response);
            }
            Err(refusal) => {
                crate::http::discard(&parts.headers, body, &limits);
                return Err(refusal);
            }
        };
        let raw = crate::http::read_body(&parts.headers, body, &limits)
            .await
            .map_err(|e| Refusal::new(e.status(), e.reason(), e.to_string()))?;
        let request = request::normalize(endpoint, &raw, self.settings.default_max_tokens())
            .map_err(|message| Refusal::new(StatusCode::BAD_REQUEST, "bad_request", message))?;
        if let Some((_, job)) = &authorized.state {
            if !crate::batcher::pays_for_model(job, &request.model) {
                return Err(self.wrong_model(&authorized.job, job, &request.model).await);
            }
        }
        let reservation = match (&self.book, &authorized.state) {
            (Some(book), Some((address, job))) => {
                let bound = self.max_usage(crate::job_view::unit_kind(job), &request);
                Some(
                    book.admit(address, authorized.key.as_ref(), bound)
                        .await
                        .map_err(|e| refused(&e))?,
                )
            }
            _ => None,
        };
        self.forward(
            parts.uri.path().to_string(),
            request,
            authorized,
            reservation,
            request_id.to_string(),
        )
        .await
    }

    async fn forward(
        self: Arc<Self>,
        path: String,
        request: Normalized,
        authorized: Authorized,
        reservation: Option<Reservation>,
        request_id: String,
    ) -> Result<Response<Body>, Refusal> {
        let started = Instant::now();
        let upstream = self
            .http
            .post(format!("{}{path}", self.settings.upstream))
            .header("content-type", "application/json")
            .header("x-request-id", &request_id)
            .body(request.body.to_string())
            .send()
            .await
            .map_err(|e| {
                Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_down",
                    self.scrub(&format!(
                        "the inference server did not answer: {}",
                        e.without_url()
                    )),
                )
            })?;
        let status = upstream.status();
        let content_type = upstream
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let record = UsageRecord {
            // The incarnation pre-authorization read (and a job key names): usage is
            // never bound to a later job at the same address.
            job_nonce: authorized.state.as_ref().map(|(_, job)| job.nonce),
            job: authorized.job,
            request_id: request_id.clone(),
            model: request.model.clone(),
            source: SOURCE.into(),
            key_id: authorized.key.map(|k| k.id).unwrap_or_default(),
            ..UsageRecord::default()
        };
        Ok(if !status.is_success() {
            // The server's own error, without its address; nothing to bill.
            drop(reservation);
            let bytes = upstream.bytes().await.unwrap_or_default();
            let text = self.scrub(&String::from_utf8_lossy(&bytes));
            Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(full(text))
                .map_err(|e| {
                    Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?
        } else if content_type.starts_with("text/event-stream") {
            self.stream(upstream, status, request, record, reservation, started)
        } else {
            self.whole(
                upstream,
                status,
                &content_type,
                request,
                record,
                reservation,
                started,
            )
            .await?
        })
    }

    /// Commits a record on a blocking thread (a commit waits for the disk or the
    /// database).
    async fn commit(self: &Arc<Self>, record: UsageRecord) -> Result<UsageRecord, String> {
        let gateway = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            gateway
                .sink
                .commit(&record)
                .map(|_| record)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    }

    /// A non-streamed answer: billed (committed) before it is returned, or withheld.
    async fn whole(
        self: Arc<Self>,
        upstream: reqwest::Response,
        status: StatusCode,
        content_type: &str,
        request: Normalized,
        mut record: UsageRecord,
        reservation: Option<Reservation>,
        started: Instant,
    ) -> Result<Response<Body>, Refusal> {
        let bytes = upstream.bytes().await.map_err(|_| {
            Refusal::new(
                StatusCode::BAD_GATEWAY,
                "upstream_cut",
                "the inference server's answer was cut short: nothing was billed",
            )
        })?;
        let value = serde_json::from_slice::<Value>(&bytes).ok();
        let mut counted = value
            .as_ref()
            .and_then(usage_of)
            .map(|usage| (usage, COUNTED_BY_UPSTREAM));
        if counted.is_none() && self.tokenizer.enabled() {
            let mut generated = BTreeMap::new();
            if let Some(value) = &value {
                request::generated_text(value, &mut generated);
            }
            counted = self
                .count_with_tokenizer(&request, generated.values(), "a non-streamed answer")
                .await;
        }
        let Some(((prompt, completion), counted_by)) = counted else {
            let detail = format!(
                "request {} of job {}: the inference server answered without usage and it could not be counted (gateway.tokenize): the answer was withheld, not billed",
                record.request_id, record.job
            );
            self.telemetry()
                .usage_missing("withheld", &detail, self.sink.clock.now());
            return Err(Refusal::new(
                StatusCode::BAD_GATEWAY,
                "usage_missing",
                "the inference server did not report usage for this answer and it could not be counted, so it is not delivered (nothing is billed); the operator is alerted",
            ));
        };
        record.upstream_id = value
            .as_ref()
            .and_then(|v| v.get("id"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // Metered under the model the server says it served (what the client asked
        // for when it does not say).
        if let Some(served) = value
            .as_ref()
            .and_then(|v| v.get("model"))
            .and_then(Value::as_str)
        {
            record.model = served.to_string();
        }
        record.prompt_tokens = prompt;
        record.completion_tokens = completion;
        record.counted_by = counted_by.into();
        record.gpu_ms = millis_since(started);
        record.finished_at = self.sink.clock.now();
        let record = self.commit(record).await.map_err(|e| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "metering_unavailable",
                format!("metering is unavailable, so the answer is not delivered (nothing is billed): {e}"),
            )
        })?;
        if let Some(reservation) = reservation {
            reservation.commit(&record);
        }
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(full(bytes))
            .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
    }

    /// A streamed answer: events pass through as they arrive; the usage chunk and
    /// `[DONE]` only after the record is committed. The reading runs as a tracked task,
    /// so it finishes (and bills) even if the client leaves, and a stop waits for it.
    fn stream(
        self: Arc<Self>,
        upstream: reqwest::Response,
        status: StatusCode,
        request: Normalized,
        record: UsageRecord,
        reservation: Option<Reservation>,
        started: Instant,
    ) -> Response<Body> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
        let gateway = Arc::clone(&self);
        self.tasks.spawn(async move {
            gateway
                .meter_stream(upstream, tx, request, record, reservation, started)
                .await;
        });
        let body = BodyExt::boxed(StreamBody::new(receiver_stream(rx)));
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-cache"),
        );
        response
    }

    async fn meter_stream(
        self: Arc<Self>,
        upstream: reqwest::Response,
        tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
        request: Normalized,
        mut record: UsageRecord,
        reservation: Option<Reservation>,
        started: Instant,
    ) {
        let mut client = StreamClient(Some(tx));
        let relayed = relay(upstream, &mut client).await;
        let billed = self
            .bill_stream(&request, &mut record, reservation, started, &relayed.seen)
            .await;
        match billed {
            Ok(()) => {
                for bytes in relayed.held {
                    if !client.send(bytes).await {
                        break;
                    }
                }
                if let Some(reason) = relayed.cut {
                    client
                        .send(error_event(&self.scrub(&format!(
                            "the inference server's stream was cut short ({reason}); what was sent is billed"
                        ))))
                        .await;
                }
            }
            Err(reason) => {
                let detail = format!(
                    "stream {} of job {}: {reason}; what it sent reached the client unbilled",
                    record.request_id, record.job
                );
                self.telemetry()
                    .usage_missing("unbilled", &detail, self.sink.clock.now());
                client
                    .send(error_event(
                        "the answer could not be metered, so it ends here; the operator is alerted",
                    ))
                    .await;
            }
        }
    }

    /// Commits a stream's record with the usage it reported (or, failing that, as
    /// counted), and settles its reservation. Err: why it could not be billed.
    async fn bill_stream(
        self: &Arc<Self>,
        request: &Normalized,
        record: &mut UsageRecord,
        reservation: Option<Reservation>,
        started: Instant,
        seen: &StreamUsage,
    ) -> Result<(), String> {
        let mut counted = seen.usage.map(|usage| (usage, COUNTED_BY_UPSTREAM));
        if counted.is_none() && self.tokenizer.enabled() {
            counted = self
                .count_with_tokenizer(request, seen.generated.values(), "a stream")
                .await;
        }
        let Some(((prompt, completion), counted_by)) = counted else {
            return Err(
                "the inference server sent no usage and it could not be counted (gateway.tokenize)"
                    .to_string(),
            );
        };
        record.upstream_id = seen.id.clone().unwrap_or_default();
        if let Some(served) = &seen.model {
            record.model.clone_from(served);
        }
        record.prompt_tokens = prompt;
        record.completion_tokens = completion;
        record.counted_by = counted_by.into();
        record.gpu_ms = millis_since(started);
        record.finished_at = self.sink.clock.now();
        match self.commit(record.clone()).await {
            Ok(record) => {
                if let Some(reservation) = reservation {
                    reservation.commit(&record);
                }
                Ok(())
            }
            Err(e) => Err(format!("its record could not be committed: {e}")),
        }
    }

    /// `POST /tally/v1/keys/revoke` with the key itself: refused from now on (here at
    /// once, on other replicas within seconds).
    async fn revoke(&self, headers: &hyper::HeaderMap) -> Result<Response<Body>, Refusal> {
        let Some(book) = &self.book else {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "this gateway runs without the chain: it takes no job keys to revoke",
            ));
        };
        let Caller::JobKey(key) = auth::caller(headers, |_| None)? else {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "send the job key to revoke as `Authorization: Bearer <key>`",
            ));
        };
        let job = book.job(&key.claims.job).await.map_err(|e| refused(&e))?;
        self.verified.check(&key, &job)?;
        let fresh = book
            .store()
            .revoke(&key.id(), &key.claims.job.to_string())
            .await
            .map_err(|e| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                )
            })?;
        Ok(json_response(
            StatusCode::OK,
            &json!({ "revoked": true, "already": !fresh, "key_id": key.id(), "job": key.claims.job.to_string() }),
        ))
    }
}

impl Gateway {
    /// `GET /tally/v1/invoices[/<seq>]` with a job key: the invoices of the key's job
    /// (the incarnation it was signed for, which must be the job on chain now), read
    /// from the store. Only a job key signed by the job's client opens them: a static
    /// key is the operator's word, not the client's. Nothing here reaches the upstream,
    /// and nothing needs escrow.
    async fn invoices(
        &self,
        rest: &str,
        query: Option<&str>,
        headers: &hyper::HeaderMap,
    ) -> Result<Response<Body>, Refusal> {
        let job_invoices = self.invoice_shelf(headers).await?;
        match rest.strip_prefix('/').filter(|s| !s.is_empty()) {
            Some(seq) => job_invoices.one(seq).await,
            None => job_invoices.page(PageQuery::parse(query)?).await,
        }
    }

    /// The invoices of the caller's job, if the caller may read them: a job key
    /// signed by the job's client, for a job the chain shows.
    async fn invoice_shelf(&self, headers: &hyper::HeaderMap) -> Result<InvoiceShelf, Refusal> {
        let Some(book) = &self.book else {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "this gateway runs without the chain: it serves no invoices",
            ));
        };
        let caller = auth::caller(headers, |key| self.settings.api_keys.get(key).cloned())?;
        if matches!(caller, Caller::Static { .. }) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "key_not_client",
                "invoices are served to job keys signed by the job's client (`tally job key <JOB>`): a key the operator issued does not prove who pays",
            ));
        }
        let authorized = self.authorize(&caller).await?;
        let Some((_, job)) = authorized.state else {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the job could not be read from the chain",
            ));
        };
        Ok(InvoiceShelf {
            store: Arc::clone(book.store()),
            job: authorized.job,
            nonce: job.nonce,
        })
    }
}

/// A `Stream` over an mpsc receiver.
fn receiver_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The invoices of one job incarnation, as the gateway serves them to its client.
struct InvoiceShelf {
    store: Arc<crate::meter::SourceStore>,
    job: String,
    nonce: u64,
}

fn unavailable(e: crate::OracleError) -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )
}

impl InvoiceShelf {
    /// Invoice `seq` (`<seq>` or `<seq>.json`): its bytes as stored.
    async fn one(&self, seq: &str) -> Result<Response<Body>, Refusal> {
        let seq = seq.trim_end_matches(".json").parse::<u64>().map_err(|_| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invoices are numbered: {INVOICES_PATH}/<seq>"),
            )
        })?;
        let found = self
            .store
            .invoices(&self.job, self.nonce, seq.saturating_sub(1), 1)
            .await
            .map_err(unavailable)?;
        match found.into_iter().next() {
            Some((at, bytes)) if at == seq => Ok(Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(full(bytes))
                .map_err(|e| {
                    Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?),
            _ => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("job {} has no invoice {seq} (yet)", self.job),
            )),
        }
    }

    /// A page of invoices after `query.after`, at most `query.limit` of them and
    /// [`INVOICES_PAGE_BYTES`] (at least one), with where the next page starts.
    async fn page(&self, query: PageQuery) -> Result<Response<Body>, Refusal> {
        let found = self
            .store
            .invoices(&self.job, self.nonce, query.after, query.limit)
            .await
            .map_err(unavailable)?;
        let (fetched, mut invoices, mut bytes_in_page) = (found.len(), Vec::new(), 0usize);
        let mut last = None;
        for (seq, bytes) in found {
            if !invoices.is_empty()
                && bytes_in_page.saturating_add(bytes.len()) > INVOICES_PAGE_BYTES
            {
                break;
            }
            bytes_in_page = bytes_in_page.saturating_add(bytes.len());
            let sha256 = crate::invoice::hex(&crate::invoice::sha256(&bytes));
            let text = String::from_utf8(bytes).map_err(|_| {
                Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!(
                        "invoice {seq} is not UTF-8 text: fetch its bytes at {INVOICES_PATH}/{seq}"
                    ),
                )
            })?;
            invoices.push(json!({ "seq": seq, "sha256": sha256, "invoice": text }));
            last = Some(seq);
        }
        // More may follow: the page was cut short by its size, or came back full.
        let more = invoices.len() < fetched || fetched as u64 == query.limit;
        let next_after = last.filter(|_| more);
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "job": self.job,
                "job_nonce": self.nonce,
                "invoices": invoices,
                "next_after": next_after,
            }),
        ))
    }
}

/// `after=<seq>&limit=<n>` of an invoice page.
struct PageQuery {
    after: u64,
    limit: u64,
}

impl PageQuery {
    fn parse(query: Option<&str>) -> Result<Self, Refusal> {
        let mut page = Self {
            after: 0,
            limit: INVOICES_PAGE_MAX,
        };
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = value.parse::<u64>().map_err(|_| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("`{name}` must be a number (got `{value}`)"),
                )
            })?;
            match name {
                "after" => page.after = number,
                "limit" => page.limit = number.clamp(1, INVOICES_PAGE_MAX),
                _ => {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("unknown parameter `{name}`: use after=<seq> and limit=<n>"),
                    ))
                }
            }
        }
        Ok(page)
    }
}

/// The client end of a metered stream. Gone once a write failed or timed out: the
/// stream is still read to its end, and billed (a client that went away still
/// ordered the work the server goes on doing).
struct StreamClient(Option<tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>>);

impl StreamClient {
    /// Sends `bytes`; false (and gone from then on) when the client is gone or did
    /// not take them within [`CLIENT_WRITE_TIMEOUT`].
    async fn send(&mut self, bytes: Bytes) -> bool {
        let Some(sender) = &self.0 else {
            return false;
        };
        let sent = matches!(
            tokio::time::timeout(CLIENT_WRITE_TIMEOUT, sender.send(Ok(Frame::data(bytes)))).await,
            Ok(Ok(()))
        );
        if !sent {
            self.0 = None;
        }
        sent
    }
}

/// An upstream stream read to its end.
struct Relayed {
    /// What its events said (usage, model, text generated).
    seen: StreamUsage,
    /// Events held back until the stream is billed (its usage, its end).
    held: Vec<Bytes>,
    /// Why it ended early, if it did.
    cut: Option<String>,
}

/// Reads `upstream` to its end, forwarding its events to `client` as they come
/// except those held back until the stream is billed.
async fn relay(upstream: reqwest::Response, client: &mut StreamClient) -> Relayed {
    let mut seen = StreamUsage::default();
    let mut held = Vec::new();
    let mut cut = None;
    let mut body = upstream.bytes_stream();
    loop {
        let passages = match body.next().await {
            Some(Ok(chunk)) => seen.feed(&chunk),
            Some(Err(e)) => {
                cut = Some(e.without_url().to_string());
                break;
            }
            None => break,
        };
        for passage in passages {
            match passage {
                Passage::Forward(bytes) => {
                    client.send(bytes).await;
                }
                Passage::Hold(bytes) => held.push(bytes),
            }
        }
    }
    for passage in seen.finish() {
        match passage {
            Passage::Forward(bytes) | Passage::Hold(bytes) => held.push(bytes),
        }
    }
    if let Some(e) = &seen.broken {
        cut.get_or_insert_with(|| format!("unreadable events: {e}"));
    }
    Relayed { seen, held, cut }
}
