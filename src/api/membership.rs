//! The membership endpoints on the node's API address, JSON behind the cluster secret
//! (`soundwave lb` never forwards `/_cluster/` paths): `GET /_cluster/members`,
//! `POST /_cluster/join` and `POST /_cluster/remove`, each served by the leader through
//! this node (see `cluster::membership`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::response::send_json;
use crate::cluster::{JoinRequest, has_cluster_secret};
use crate::error::ApiError;
use crate::state::AppState;

/// Largest body of a membership request.
const MEMBER_BODY_LIMIT: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveRequest {
    id: u64,
}

/// The body as JSON, once the secret is checked.
fn secret_and_body<T: DeserializeOwned>(
    state: &AppState,
    headers: &http::HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    if !has_cluster_secret(&state.cluster, headers) {
        return Err(ApiError::ClusterSecretRequired);
    }
    if body.len() > MEMBER_BODY_LIMIT {
        return Err(ApiError::PayloadTooLarge {
            limit: MEMBER_BODY_LIMIT,
        });
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn json_ok(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => send_json(StatusCode::OK, Bytes::from(bytes)),
        Err(error) => ApiError::Internal(error.to_string()).into_response(),
    }
}

/// `GET /_cluster/members`: the members' view, from the leader.
pub(super) async fn members(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
) -> Response {
    if !has_cluster_secret(&state.cluster, &headers) {
        return ApiError::ClusterSecretRequired.into_response();
    }
    match state.cluster.members_view().await {
        Ok(view) => json_ok(&view),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// `POST /_cluster/join`: adds the node described as a learner.
pub(super) async fn join(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    body: Bytes,
) -> Response {
    let request: JoinRequest = match secret_and_body(&state, &headers, &body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    match state.cluster.join(request).await {
        Ok(last_log_index) => json_ok(&serde_json::json!({
            "joined": true,
            "last_log_index": last_log_index,
        })),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// `POST /_cluster/remove` `{"id": N}`: removes a member.
pub(super) async fn remove(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    body: Bytes,
) -> Response {
    let request: RemoveRequest = match secret_and_body(&state, &headers, &body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    match state.cluster.remove(request.id).await {
        Ok(()) => json_ok(&serde_json::json!({ "removed": request.id })),
        Err(error) => ApiError::from(error).into_response(),
    }
}
