//! The node's HTTP server: accepts TCP connections and serves the API router on each with
//! hyper's HTTP/1.1 connection, until told to stop; then stops accepting, lets every
//! connection finish the request it is on, and returns.
//!
//! Not `axum::serve`: that one sniffs each connection for HTTP/2 and serves it through
//! hyper-util's auto connection with upgrades, which a cached GET paid for on every request
//! (profiled under oha), and it leaves Nagle on. The node speaks HTTP/1.1 (as the balancer
//! does to it), with `TCP_NODELAY` and a deadline for a request's headers.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long a client may take to send a request's headers (slow clients hold a connection
/// and its task; hyper closes the connection after this).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait, after accepting fails (e.g. out of file descriptors), before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `stop` resolves, then waits up to `drain` for in-flight
/// requests to finish. Each request carries its peer as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Responses are written whole, in one writev: nothing to gain from Nagle's delay.
        let _ = stream.set_nodelay(true);
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), RouterService::new(&app, peer));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {}s: closing their connections",
            drain.as_secs()
        );
    }
}

/// Logs a failed `accept` and waits a little: the usual causes (no file descriptors left, a
/// connection reset before it was accepted) pass, and retrying at once would spin.
async fn accept_failed(error: &io::Error) {
    if error.kind() != io::ErrorKind::ConnectionAborted {
        tracing::warn!(%error, "accepting a connection failed");
        tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
    }
}

/// The router as one connection's hyper service: each request gets the connection's peer.
#[derive(Clone)]
struct RouterService {
    app: Router,
    peer: ConnectInfo<SocketAddr>,
}

impl RouterService {
    fn new(app: &Router, peer: SocketAddr) -> Self {
        RouterService {
            app: app.clone(),
            peer: ConnectInfo(peer),
        }
    }
}

impl hyper::service::Service<http::Request<Incoming>> for RouterService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = tower::util::Oneshot<Router, http::Request<Body>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(self.peer);
        self.app.clone().oneshot(request)
    }
}
