//! A node that is starting (opening its store, joining the cluster, filling the demo) holds
//! its listener already: meanwhile it answers every request at once with a 503, so a
//! balancer's probe sees why the node is not ready instead of waiting on a connection.
//! `GET /health/` gets `{"status": "error", "node_id", "reason": "starting: STEP"}`, any
//! other request the API's JSON 503 (`{"detail": ...}`, `Retry-After: 1`).

use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::error::ApiError;

/// The start-up step under way, as the 503s name it.
#[derive(Clone)]
pub struct Step(Arc<Mutex<&'static str>>);

impl Step {
    pub fn new(step: &'static str) -> Step {
        Step(Arc::new(Mutex::new(step)))
    }

    pub fn set(&self, step: &'static str) {
        tracing::info!("starting: {step}");
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = step;
    }

    fn get(&self) -> &'static str {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The 503 a starting node gives to a request for `path`.
fn answer(node_id: u64, step: &str, path: &str) -> Response {
    let mut response = if path.trim_end_matches('/') == "/health" {
        let body = json!({
            "status": "error",
            "node_id": node_id,
            "reason": format!("starting: {step}"),
        });
        let content_type = [(http::header::CONTENT_TYPE, "application/json")];
        let body = Bytes::from(body.to_string());
        (StatusCode::SERVICE_UNAVAILABLE, content_type, body).into_response()
    } else {
        ApiError::Unavailable(format!("The node is starting ({step}).")).into_response()
    };
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}

/// Runs `startup` to its end while answering the connections `listener` accepts with
/// 503s naming `step` (one request each, then the connection closes); returns what
/// `startup` gave. Connections that come after are the server's.
pub async fn answer_while<T>(
    listener: &TcpListener,
    node_id: u64,
    step: &Step,
    startup: impl Future<Output = T>,
) -> T {
    let mut startup = std::pin::pin!(startup);
    loop {
        tokio::select! {
            biased;
            done = &mut startup => return done,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let step = step.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<_>| {
                        let response = answer(node_id, step.get(), request.uri().path());
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}
