//! The node's HTTP server: accepts TCP connections and serves the API router on each with
//! hyper's HTTP/1.1 connection, until told to stop; then stops accepting, lets every
//! connection finish the request it is on, and returns.
//!
//! Not `axum::serve`: that one sniffs each connection for HTTP/2 and serves it through
//! hyper-util's auto connection with upgrades, which a cached GET paid for on every request
//! (profiled under oha), and it leaves Nagle on. The node speaks HTTP/1.1 (as the balancer
//! does to it), with `TCP_NODELAY` and a deadline for a request's headers.
//!
//! Connections are bounded, in all and per client IP ([`ConnectionLimits`]): past a limit a
//! connection gets a JSON 503 with `Connection: close` at once, instead of holding a
//! descriptor and a task while it trickles or idles.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// How long to wait, after accepting fails (e.g. out of file descriptors), before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `stop` resolves, then waits up to `drain` for in-flight
/// requests to finish. Each request carries its peer as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    let limits = Arc::new(limits);
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
        let Some(slot) = limits.admit(peer.ip()) else {
            tokio::spawn(refuse(stream, limits.refusal.clone()));
            continue;
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), RouterService::new(&app, peer));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(slot);
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

/// Bounds on client connections: how many are open, in all and per client IP, and how long
/// one may wait for a request's headers. Trusted proxies (the balancer, whose connections
/// carry many clients) count in all but have no per-IP bound.
pub struct ConnectionLimits {
    /// How long a client may take to send a request's headers, in all, and how long a
    /// keep-alive connection may wait for its next request (hyper starts the same timer
    /// when it waits for a head); then hyper closes the connection.
    header_read_timeout: Duration,
    max_total: usize,
    max_per_ip: usize,
    exempt: Vec<IpAddr>,
    open: Mutex<OpenConnections>,
    /// The whole response a refused connection gets.
    refusal: bytes::Bytes,
}

#[derive(Default)]
struct OpenConnections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnectionLimits {
    /// `node_header` is the `X-Soundwave-Node` value every response carries.
    pub fn new(
        header_read_timeout: Duration,
        max_total: usize,
        max_per_ip: usize,
        exempt: Vec<IpAddr>,
        node_header: &http::HeaderValue,
    ) -> Self {
        let body = br#"{"detail":"Too many connections; try again shortly."}"#;
        let mut refusal = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nretry-after: 1\r\nconnection: close\r\nx-soundwave-node: ",
            body.len()
        )
        .into_bytes();
        refusal.extend_from_slice(node_header.as_bytes());
        refusal.extend_from_slice(b"\r\n\r\n");
        refusal.extend_from_slice(body);
        ConnectionLimits {
            header_read_timeout,
            max_total,
            max_per_ip,
            exempt,
            open: Mutex::new(OpenConnections::default()),
            refusal: refusal.into(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` past a limit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_total {
            return None;
        }
        let bounded = !self.exempt.contains(&ip);
        if bounded {
            let from_ip = open.per_ip.entry(ip).or_insert(0);
            if *from_ip >= self.max_per_ip {
                return None;
            }
            *from_ip += 1;
        }
        open.total += 1;
        Some(ConnectionSlot {
            limits: self.clone(),
            ip: bounded.then_some(ip),
        })
    }
}

/// One admitted connection; dropping it frees the slot.
struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    /// The IP whose count this slot holds (none for an exempt proxy).
    ip: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(from_ip) = open.per_ip.get_mut(&ip)
        {
            *from_ip -= 1;
            if *from_ip == 0 {
                open.per_ip.remove(&ip);
            }
        }
    }
}

/// How long a refused connection is given to take its 503.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers a connection past a limit with a 503 and closes it, without reading its request.
async fn refuse(mut stream: TcpStream, response: bytes::Bytes) {
    metrics::counter!("soundwave_connections_refused_total").increment(1);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
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
