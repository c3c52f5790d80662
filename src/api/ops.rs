//! Operability endpoints: `/health/` with timed checks, `/metrics` in Prometheus format,
//! `/_cluster/backup` and `/_cluster/digest` (behind the cluster secret).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::response::send_json;
use crate::cache::{CacheKey, CachedBody};
use crate::error::ApiError;
use crate::output::json_bytes;
use crate::state::AppState;

fn elapsed_ms(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// A read of the store (no write: health checks must not add load to the writer).
fn check_database(state: &AppState) -> (bool, Value) {
    let started = Instant::now();
    let result = state.store.read().and_then(|reader| reader.categories());
    match result {
        Ok(categories) => (
            true,
            json!({
                "status": "ok",
                "time_ms": elapsed_ms(started),
                "categories": categories.len(),
                "file_bytes": state.store.file_size(),
            }),
        ),
        Err(error) => (
            false,
            json!({
                "status": "error",
                "time_ms": elapsed_ms(started),
                "error": error.to_string(),
            }),
        ),
    }
}

/// A write and a read of a probe entry.
fn check_cache(state: &AppState) -> (bool, Value) {
    let started = Instant::now();
    let probe = Bytes::from_static(b"ok");
    state
        .cache
        .put_body(CacheKey::HealthProbe, CachedBody::new(probe.clone()));
    // The probe may be evicted at once under pressure; that is not a failure of the cache.
    let found = state.cache.peek_body(&CacheKey::HealthProbe);
    let (entries, weight) = state.cache.usage();
    let ok = found.is_none_or(|b| b.body == probe);
    (
        ok,
        json!({
            "status": if ok { "ok" } else { "error" },
            "time_ms": elapsed_ms(started),
            "entries": entries,
            "weight_bytes": weight,
        }),
    )
}

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (database_ok, database) = check_database(&state);
    let (cache_ok, cache) = check_cache(&state);
    // A node that has known no leader for longer than an election timeout, or a leader
    // that no quorum acknowledges (cut off from its followers), cannot take writes: it
    // answers 503 so the balancer drains it.
    let (cluster_ok, cluster) = {
        let cluster = &state.cluster;
        let mut status = cluster.status();
        let fault = cluster.fault();
        let quorum = fault.is_none() && cluster.leads_a_quorum().await;
        // A follower that is behind, or has not heard from the leader lately, serves old
        // state: not ready until it caught up.
        let readiness = cluster.readiness().await;
        let ok = cluster.has_leader() && quorum && readiness.is_ok();
        status["status"] = json!(if ok { "ok" } else { "error" });
        if let Some(fault) = fault {
            status["reason"] = json!(format!("the replicated log stopped: {fault}"));
        } else if !quorum {
            status["reason"] = json!("the leader is not acknowledged by a quorum");
        } else if let Err(reason) = readiness {
            status["reason"] = json!(reason);
        } else if !ok {
            status["reason"] = json!("no leader known for an election timeout");
        }
        (ok, status)
    };
    let healthy = database_ok && cache_ok && cluster_ok;
    let mut body = json!({
        "status": if healthy { "ok" } else { "error" },
        "node_id": state.node_id,
        "checks": { "database": database, "cache": cache, "cluster": cluster },
        "cluster": cluster,
    });
    if !healthy {
        let reason = cluster["reason"].as_str().map(str::to_owned).or_else(|| {
            let failing = if database_ok { "cache" } else { "database" };
            Some(format!("the {failing} check failed"))
        });
        body["reason"] = json!(reason);
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    send_json(status, json_bytes(&body))
}

/// Whether this request may read `/metrics`: with the configured bearer token, or from a
/// loopback peer when no token is configured.
fn may_read_metrics(state: &AppState, peer: SocketAddr, headers: &http::HeaderMap) -> bool {
    if state.metrics_token.is_empty() {
        return peer.ip().is_loopback();
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared in full whatever the first difference, so timing tells nothing.
    given.len() == state.metrics_token.len()
        && given
            .bytes()
            .zip(state.metrics_token.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

pub async fn metrics(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: http::HeaderMap,
) -> Response {
    if !may_read_metrics(&state, peer, &headers) {
        return crate::error::ApiError::Forbidden.into_response();
    }
    let (entries, weight) = state.cache.usage();
    metrics::gauge!("soundwave_store_file_bytes").set(state.store.file_size() as f64);
    metrics::gauge!("soundwave_cache_entries").set(entries as f64);
    metrics::gauge!("soundwave_cache_weight_bytes").set(weight as f64);
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// `GET /_cluster/backup`: an online backup of this node's state, for `soundwave backup`.
pub(super) async fn backup(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
) -> Response {
    crate::cluster::backup_response(&state.cluster, &headers)
}

/// `GET /_cluster/digest`: this node's state digest and applied index, as the peer API has
/// it; here also for a node alone, such as one started on a restored backup.
pub(super) async fn digest(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
) -> Response {
    if !crate::cluster::has_cluster_secret(&state.cluster, &headers) {
        return ApiError::ClusterSecretRequired.into_response();
    }
    let cluster = state.cluster.clone();
    match tokio::task::spawn_blocking(move || cluster.digest()).await {
        Ok(Ok(body)) => send_json(StatusCode::OK, Bytes::from(body.to_string())),
        Ok(Err(error)) => ApiError::from(error).into_response(),
        Err(error) => ApiError::Internal(error.to_string()).into_response(),
    }
}
