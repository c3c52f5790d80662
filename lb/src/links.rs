//! The upstream connections of one client connection, driven by that client connection's
//! own task.
//!
//! A shared keep-alive pool (hyper's pooled client, as nginx's `keepalive`) drives every
//! upstream connection in a task of its own, so each request crosses tasks twice, and often
//! threads: a wake-up on another core for the request and one back for its answer. Here
//! each client connection keeps its own upstream connection (one idle at most: ketama
//! keeps a client on one upstream, and the descriptor bound counts one upstream connection
//! per client connection), and the task that serves the client polls it too ([`UpstreamLinks::drive`],
//! beside the client's connection): a request and its answer never leave that task.
//!
//! A connection kept idle may have been closed by the upstream in the meantime; a request
//! it refuses without having sent anything (hyper says: canceled) is sent again on a new
//! connection to the same upstream ([`LinkError::Stale`] for the caller to tell).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Sender = SendRequest<Full<Bytes>>;
type UpstreamConnection = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// The upstream connections of one client connection.
#[derive(Default)]
pub struct UpstreamLinks {
    state: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    /// The sender of the connection kept for the next request, with its upstream's index.
    idle: Option<(usize, Sender)>,
    /// Every open connection, polled by [`UpstreamLinks::drive`].
    connections: Vec<Pin<Box<UpstreamConnection>>>,
    /// The task that drives them, woken when a connection is added.
    driver: Option<Waker>,
}

/// Why a request did not get its response head.
#[derive(Debug)]
pub enum LinkError {
    /// No connection could be made to the upstream.
    Connect(String),
    /// A kept connection had closed: the request was not sent, and may be sent again.
    Stale,
    /// The request or its answer broke on the way.
    Broken(hyper::Error),
}

impl UpstreamLinks {
    fn state(&self) -> MutexGuard<'_, LinkState> {
        // The state stays consistent whatever panicked while it was held: every change is a
        // single push, take or retain.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `request` to upstream `index` at `addr`, on the connection kept for it when
    /// there is one ready, else on a new one (connected within `connect_timeout`). Returns
    /// the response head; its body streams while the connection is driven.
    pub async fn send(
        &self,
        index: usize,
        addr: SocketAddr,
        connect_timeout: Duration,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, LinkError> {
        let kept = self.take_idle(index);
        let reused = kept.is_some();
        let mut sender = match kept {
            Some(sender) => sender,
            None => self.connect(addr, connect_timeout).await?,
        };
        let answer = sender.send_request(request);
        // The connection takes its next request once this one's answer is in.
        self.put_idle(index, sender);
        match answer.await {
            Ok(response) => Ok(response),
            Err(error) if reused && error.is_canceled() => Err(LinkError::Stale),
            Err(error) => Err(LinkError::Broken(error)),
        }
    }

    /// The kept sender, when it is for `index` and its connection is open and waits for a
    /// request; a sender kept for another upstream is let go.
    fn take_idle(&self, index: usize) -> Option<Sender> {
        let (kept_for, sender) = self.state().idle.take()?;
        if kept_for != index {
            return None;
        }
        // A connection still busy with an earlier answer (or closed) is let go: it closes
        // once that answer is done.
        (sender.is_ready() && !sender.is_closed()).then_some(sender)
    }

    fn put_idle(&self, index: usize, sender: Sender) {
        // The one kept before, if any, closes once its answer is done.
        self.state().idle = Some((index, sender));
    }

    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<Sender, LinkError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(LinkError::Connect("connect timed out".to_owned())),
            Ok(Err(error)) => return Err(LinkError::Connect(error.to_string())),
            Ok(Ok(stream)) => stream,
        };
        // Small requests and answers go out at once.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| LinkError::Connect(e.to_string()))?;
        let mut state = self.state();
        state.connections.push(Box::pin(connection));
        if let Some(driver) = &state.driver {
            driver.wake_by_ref();
        }
        Ok(sender)
    }

    /// Polls every connection until it ends; never completes itself (poll it beside the
    /// client's connection, and drop it with that).
    pub fn drive(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            let mut state = self.state();
            match &state.driver {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.driver = Some(cx.waker().clone()),
            }
            // A connection ends when the upstream closes it, it breaks, or its sender is
            // gone; its error, if any, reached the request it carried.
            state
                .connections
                .retain_mut(|connection| connection.as_mut().poll(cx).is_pending());
            Poll::Pending
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that answers `answers` requests on each connection, then closes it;
    /// returns its address and the count of connections it accepted.
    async fn upstream(answers: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 4096];
                    for _ in 0..answers {
                        let mut head = Vec::new();
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buffer[..n]),
                            }
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn request() -> Request<Full<Bytes>> {
        Request::builder()
            .uri("/")
            .header("host", "test")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn body(response: Response<Incoming>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    /// Runs `exchange` while `links` are driven, as a client connection's task does.
    async fn driven(links: &UpstreamLinks, exchange: impl Future<Output = ()>) {
        tokio::select! {
            () = exchange => {}
            () = links.drive() => unreachable!("drive never completes"),
        }
    }

    #[tokio::test]
    async fn requests_of_one_client_connection_share_one_upstream_connection() {
        let (addr, accepted) = upstream(usize::MAX).await;
        let links = UpstreamLinks::default();
        let timeout = Duration::from_secs(2);
        let exchange = async {
            for _ in 0..5 {
                let response = links.send(0, addr, timeout, request()).await.unwrap();
                assert_eq!(body(response).await, "ok");
            }
        };
        driven(&links, exchange).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn one_connection_is_kept_whichever_upstream_was_last() {
        let (first, first_accepted) = upstream(usize::MAX).await;
        let (second, second_accepted) = upstream(usize::MAX).await;
        let links = UpstreamLinks::default();
        let timeout = Duration::from_secs(2);
        let exchange = async {
            for (index, addr) in [(0, first), (1, second), (0, first), (0, first)] {
                let response = links.send(index, addr, timeout, request()).await.unwrap();
                assert_eq!(body(response).await, "ok");
            }
        };
        driven(&links, exchange).await;
        let accepted = |count: &Arc<std::sync::atomic::AtomicUsize>| {
            count.load(std::sync::atomic::Ordering::SeqCst)
        };
        // Back on the first upstream after the second: its earlier connection was let go.
        assert_eq!(
            (accepted(&first_accepted), accepted(&second_accepted)),
            (2, 1)
        );
        // Driven a little longer, the connections let go end: only the kept one is left.
        let _ = tokio::time::timeout(Duration::from_millis(50), links.drive()).await;
        assert_eq!(links.state().connections.len(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced() {
        // One answer per connection, then the upstream closes it.
        let (addr, accepted) = upstream(1).await;
        let links = UpstreamLinks::default();
        let timeout = Duration::from_secs(2);
        let exchange = async {
            for _ in 0..3 {
                let response = loop {
                    match links.send(0, addr, timeout, request()).await {
                        Ok(response) => break response,
                        Err(LinkError::Stale) => continue,
                        Err(error) => panic!("unexpected {error:?}"),
                    }
                };
                assert_eq!(body(response).await, "ok");
                // Let the close reach the connection before the next request.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        driven(&links, exchange).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let links = UpstreamLinks::default();
        let error = links
            .send(0, addr, Duration::from_secs(1), request())
            .await
            .unwrap_err();
        assert!(matches!(error, LinkError::Connect(_)), "{error:?}");
    }
}
