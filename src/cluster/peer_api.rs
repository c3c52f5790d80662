//! The peer API, the side that answers the peer network: `/_cluster/...` raft RPCs,
//! forwarded proposals, read index, digest and backup, behind the cluster secret.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use store::raft::{NodeId, Proposal, RaftConfig};

use super::backup::backup_response;
use super::membership::JoinRequest;

use super::network::{SECRET_HEADER, decode, encode};
use super::node::Cluster;
use crate::error::ApiError;

/// Largest peer request body (snapshot chunks are a few MiB).
const PEER_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Compares secrets in time independent of where they differ.
pub(super) fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn require_secret(
    State(cluster): State<Arc<Cluster>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !same_secret(given, cluster.secret.as_bytes()) {
        return ApiError::ClusterSecretRequired.into_response();
    }
    next.run(request).await
}

fn reply<T: Serialize>(value: &T) -> Response {
    match encode(value) {
        Ok(bytes) => bytes.into_response(),
        Err(error) => ApiError::Internal(error).into_response(),
    }
}

fn bad_body(error: String) -> Response {
    ApiError::BadRequest(error).into_response()
}

async fn append(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    match decode::<AppendEntriesRequest<RaftConfig>>(&body) {
        Ok(rpc) => reply(&cluster.raft.append_entries(rpc).await),
        Err(error) => bad_body(error),
    }
}

async fn vote(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    match decode::<VoteRequest<NodeId>>(&body) {
        Ok(rpc) => reply(&cluster.raft.vote(rpc).await),
        Err(error) => bad_body(error),
    }
}

async fn snapshot(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    match decode::<InstallSnapshotRequest<RaftConfig>>(&body) {
        Ok(rpc) => reply(&cluster.raft.install_snapshot(rpc).await),
        Err(error) => bad_body(error),
    }
}

/// A proposal forwarded by a follower: appended here if this node leads.
async fn propose(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    match decode::<Proposal>(&body) {
        Ok(proposal) => reply(&cluster.propose_here(proposal).await),
        Err(error) => bad_body(error),
    }
}

/// The read index of a linearizable read, asked by a follower.
async fn read_index(State(cluster): State<Arc<Cluster>>) -> Response {
    reply(&cluster.read_index_here().await)
}

/// An online backup of this node's state (see `backup.rs`; the secret was checked).
async fn backup(State(cluster): State<Arc<Cluster>>, headers: http::HeaderMap) -> Response {
    backup_response(&cluster, &headers)
}

/// This member's view of the cluster, for a starting peer's identity check.
async fn identity(State(cluster): State<Arc<Cluster>>) -> Response {
    reply(&cluster.member_view().await)
}

/// Asks openraft for a snapshot now (operators before maintenance; the scale bench, to
/// measure writes during one). Answers at once; `/health/`'s `snapshot_index` moves when
/// it is done.
async fn take_snapshot(State(cluster): State<Arc<Cluster>>) -> Response {
    match cluster.raft.trigger().snapshot().await {
        Ok(()) => http::StatusCode::ACCEPTED.into_response(),
        Err(error) => ApiError::Internal(error.to_string()).into_response(),
    }
}

async fn ping() -> &'static str {
    "pong"
}

/// This node's state digest and applied index, to compare nodes.
async fn digest(State(cluster): State<Arc<Cluster>>) -> Response {
    match cluster.digest() {
        Ok(body) => (
            [(http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response(),
        Err(error) => ApiError::Internal(error.to_string()).into_response(),
    }
}

/// A join forwarded by a member: done here if this node leads.
async fn join(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    match decode::<JoinRequest>(&body) {
        Ok(request) => reply(&cluster.join_here(request).await),
        Err(error) => bad_body(error),
    }
}

/// A removal forwarded by a member: done here if this node leads.
async fn remove(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    match decode::<NodeId>(&body) {
        Ok(id) => reply(&cluster.remove_here(id).await),
        Err(error) => bad_body(error),
    }
}

/// The members' view, asked by a member: answered here if this node leads.
async fn members(State(cluster): State<Arc<Cluster>>) -> Response {
    reply(&cluster.members_view_here().await)
}

/// This node's last applied index, for the leader's members' view.
async fn applied(State(cluster): State<Arc<Cluster>>) -> Response {
    let applied = cluster
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map(|l| l.index);
    reply(&applied)
}

/// The leader removed this node: it stops.
async fn removed(State(cluster): State<Arc<Cluster>>) -> Response {
    cluster.removed_from_cluster();
    reply(&())
}

/// The peer API, served on the node's peer address.
pub fn peer_router(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/_cluster/append", post(append))
        .route("/_cluster/vote", post(vote))
        .route("/_cluster/snapshot", post(snapshot))
        .route("/_cluster/propose", post(propose))
        .route("/_cluster/read-index", post(read_index))
        .route("/_cluster/ping", get(ping))
        .route("/_cluster/digest", get(digest))
        .route("/_cluster/backup", get(backup))
        .route("/_cluster/identity", post(identity))
        .route("/_cluster/take-snapshot", post(take_snapshot))
        .route("/_cluster/join", post(join))
        .route("/_cluster/remove", post(remove))
        .route("/_cluster/members", post(members))
        .route("/_cluster/applied", post(applied))
        .route("/_cluster/removed", post(removed))
        .layer(DefaultBodyLimit::max(PEER_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            cluster.clone(),
            require_secret,
        ))
        .with_state(cluster)
}
