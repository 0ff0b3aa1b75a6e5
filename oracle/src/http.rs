//! HTTP plumbing shared by the oracle's servers (gateway, node reports, /metrics and
//! /health): HTTP/1.1 on a listener until shutdown, then a graceful drain in which
//! every request already accepted runs to its end — its record committed — before the
//! server returns.
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

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

/// How long a drain waits for requests in flight before giving up on them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    json_response(
        status,
        &json!({ "error": { "message": message, "type": kind, "code": status.as_u16() } }),
    )
}

/// Serves `handler` on `listener` until `shutdown` fires, then stops accepting and
/// waits (up to [`DRAIN_TIMEOUT`]) for every connection's requests to finish.
pub async fn serve<H, F>(
    listener: tokio::net::TcpListener,
    handler: H,
    mut shutdown: Shutdown,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
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
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            () = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running after {}s of draining were cut off",
            DRAIN_TIMEOUT.as_secs()
        );
    }
    Ok(())
}
