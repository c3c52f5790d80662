//! The membership endpoints on the node's API address, JSON behind the cluster secret
//! (the balancer never forwards `/_cluster/…`): `GET /_cluster/members`,
//! `POST /_cluster/join` and `POST /_cluster/remove`, each served by the leader through
//! this node; and [`join_through`], the joining node's side of the join.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::config::ClusterError;
use super::membership::JoinRequest;
use super::network::SECRET_HEADER;
use super::node::Cluster;
use super::peer_api::require_secret;
use crate::error::ApiError;

/// Largest body of a membership request.
const MEMBER_BODY_LIMIT: usize = 4096;
/// How long a joining node keeps asking while the cluster has no leader.
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveRequest {
    id: u64,
}

fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.len() > MEMBER_BODY_LIMIT {
        return Err(ApiError::PayloadTooLarge {
            limit: MEMBER_BODY_LIMIT,
        });
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn members(State(cluster): State<Arc<Cluster>>) -> Response {
    match cluster.members_view().await {
        Ok(view) => axum::Json(view).into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

async fn join(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    let request: JoinRequest = match json_body(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    match cluster.join(request).await {
        Ok(last_log_index) => axum::Json(serde_json::json!({
            "joined": true,
            "last_log_index": last_log_index,
        }))
        .into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

async fn remove(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    let request: RemoveRequest = match json_body(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    match cluster.remove(request.id).await {
        Ok(()) => axum::Json(serde_json::json!({ "removed": request.id })).into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// The membership routes, nested under `/_cluster` of the API router.
pub fn member_router(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/members", get(members))
        .route("/join", post(join))
        .route("/remove", post(remove))
        .layer(middleware::from_fn_with_state(
            cluster.clone(),
            require_secret,
        ))
        .with_state(cluster)
}

/// Asks the member at `url` to add this node, retrying while the cluster has no leader
/// (503) for a while. A wrong secret, a taken id or an unreachable member fail at once.
/// Gives the leader's last log index when it added this node.
pub(super) async fn join_through(
    url: &str,
    secret: &str,
    request: &JoinRequest,
) -> Result<u64, ClusterError> {
    let fail = |reason: String| ClusterError::Join {
        url: url.to_owned(),
        reason,
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let deadline = Instant::now() + JOIN_PATIENCE;
    loop {
        let response = http
            .post(format!("{url}/_cluster/join"))
            .header(SECRET_HEADER, secret)
            .json(request)
            .send()
            .await
            .map_err(|e| fail(format!("the member cannot be reached: {e}")))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let answer = serde_json::from_str::<serde_json::Value>(&text).ok();
        if status.as_u16() == 200 {
            return answer
                .and_then(|v| v["last_log_index"].as_u64())
                .ok_or_else(|| fail(format!("an unexpected answer: {text}")));
        }
        let detail = answer
            .and_then(|v| v["detail"].as_str().map(str::to_owned))
            .unwrap_or(text);
        match status.as_u16() {
            403 => {
                return Err(fail(
                    "the member refused the cluster secret (check --cluster-secret)".into(),
                ));
            }
            503 if Instant::now() < deadline => {
                tracing::info!(%detail, "waiting for the cluster's leader to take the join");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => return Err(fail(format!("{status}: {detail}"))),
        }
    }
}
