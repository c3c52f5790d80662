//! The joining node's side of a join: [`join_through`] asks a member's API to add it.

use std::time::{Duration, Instant};

use super::config::ClusterError;
use super::membership::JoinRequest;
use super::network::SECRET_HEADER;

/// How long a joining node keeps asking while the cluster has no leader.
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

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
