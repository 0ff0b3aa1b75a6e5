//! HTTP plumbing shared by the oracle's servers (gateway, node reports, /metrics and
//! /health): HTTP/1.1 on hyper with limits that hold against callers who would rather
//! hold the server than pay — a cap on connections, a deadline to send the request
//! head (slowloris), a size and a deadline for the body — and a graceful stop in which
//! every request already accepted, and every task still metering one, runs to its end
//! (its record committed) within a bounded drain.
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::{HeaderMap, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio_util::task::TaskTracker;

/// Response bodies: whole or streamed.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Fires once when the daemon is told to stop (SIGTERM, SIGINT, or a test).
pub type Shutdown = tokio::sync::watch::Receiver<bool>;

/// A shutdown signal that never fires (servers run until their task is dropped).
pub fn never() -> Shutdown {
    let (tx, rx) = tokio::sync::watch::channel(false);
    // Leaking the sender keeps the channel open: `changed()` then never resolves.
    std::mem::forget(tx);
    rx
}

/// Resolves when `shutdown` fires (or its sender is gone).
pub async fn stopped(shutdown: &mut Shutdown) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// How long a drain waits, by default, for requests in flight before giving up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What one listener accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body; bigger ones get `413` (before they are read, when they
    /// announce their length).
    pub max_body_bytes: usize,
    /// A connection must deliver each request's head within this time, idle
    /// keep-alive connections included; slower ones are closed (slowloris).
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this time, else `408`.
    pub body_read_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// On stop: how long requests in flight (and streams still being metered) may
    /// take before they are cut off.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            max_connections: 1_024,
            drain: DRAIN_TIMEOUT,
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// An error in the OpenAI error shape (`{"error": {"message", "type", "code"}}`), which
/// OpenAI clients display as is.
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let kind = match status {
        StatusCode::PAYMENT_REQUIRED => "insufficient_quota",
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "authentication_error",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    json_response(
        status,
        &json!({ "error": { "message": message, "type": kind, "code": status.as_u16() } }),
    )
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive within {0} s")]
    TooSlow(u64),
    #[error("could not read the request body: {0}")]
    Broken(String),
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Broken(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "body_too_large",
            Self::TooSlow(_) => "body_too_slow",
            Self::Broken(_) => "body_broken",
        }
    }
}

/// Reads a whole request body within the limits: refused at once when its announced
/// length is over `limits.max_body_bytes`, cut off when it grows past it, and given
/// `limits.body_read_timeout` to arrive. What is left of a body refused as too large is
/// read and thrown away after the answer (see [`discard`]), so that the caller reads
/// the `413` rather than a reset connection.
pub async fn read_body(
    headers: &HeaderMap,
    mut body: Incoming,
    limits: &Limits,
) -> Result<Bytes, BodyError> {
    let max = limits.max_body_bytes;
    let announced = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > max as u64) {
        discard(headers, body, limits);
        return Err(BodyError::TooLarge(max));
    }
    let mut bytes = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if bytes.len().saturating_add(data.len()) > max {
                    return Err(BodyError::TooLarge(max));
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    let outcome = tokio::time::timeout(limits.body_read_timeout, read).await;
    match outcome {
        Err(_) => Err(BodyError::TooSlow(limits.body_read_timeout.as_secs())),
        Ok(Ok(())) => Ok(Bytes::from(bytes)),
        Ok(Err(e @ BodyError::TooLarge(_))) => {
            discard_rest(body, limits);
            Err(e)
        }
        Ok(Err(e)) => Err(e),
    }
}

/// How long, at most, the rest of a body left unread is read and thrown away.
pub const LINGER: Duration = Duration::from_secs(30);
/// ... and how long it may pause (or `limits.body_read_timeout`, when shorter).
pub const LINGER_IDLE: Duration = Duration::from_secs(5);

/// Reads what is left of a body the server answered without (a refusal, or an answer
/// from the head alone) and throws it away while the answer is sent: until the body
/// ends, pauses, or [`LINGER`] is up. A server that closes a socket with bytes still
/// unread resets the connection (RFC 9112 §9.6), and a client still sending gets a
/// broken pipe or a reset instead of the answer that says what was wrong; this is the
/// lingering close of nginx and Apache. A client that waits for `100 Continue` has
/// sent nothing, and is not asked for its body.
pub fn discard(headers: &HeaderMap, body: Incoming, limits: &Limits) {
    let expects_continue = headers
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects_continue {
        discard_rest(body, limits);
    }
}

/// [`discard`] for a body already being read (its `100 Continue` is sent).
fn discard_rest(mut body: Incoming, limits: &Limits) {
    if body.is_end_stream() {
        return;
    }
    let idle = limits.body_read_timeout.min(LINGER_IDLE);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(Some(Ok(_))) = tokio::time::timeout(idle, body.frame()).await {}
        })
        .await;
    });
}

/// Serves `handler` on `listener` within `limits` until `shutdown` fires, then stops
/// accepting and waits (up to `limits.drain`) for every connection's requests to
/// finish and for `tasks` (work a request started that outlives its connection, such
/// as metering a stream whose client left) to end.
pub async fn serve<H, F>(
    listener: tokio::net::TcpListener,
    handler: H,
    mut shutdown: Shutdown,
    limits: &Limits,
    tasks: Option<TaskTracker>,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        // At the cap, stop accepting: new connections wait in the backlog.
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stopped(&mut shutdown) => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(accepted) => accepted,
                    // Out of file descriptors and the like: back off, keep serving.
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let connection =
                    builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop(permit);
                });
            }
            () = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    let drained = async {
        graceful.shutdown().await;
        if let Some(tasks) = tasks {
            tasks.close();
            tasks.wait().await;
        }
    };
    if tokio::time::timeout(limits.drain, drained).await.is_err() {
        tracing::warn!(
            "requests still running after {:.1} s of draining were cut off",
            limits.drain.as_secs_f64()
        );
    }
    Ok(())
}
