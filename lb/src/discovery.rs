//! Upstreams learned from a Soundwave cluster (Pingora's `ServiceDiscovery` idea, fed from a
//! member's membership view): every `discover_interval_ms` the balancer asks the first
//! member of `discover_from` that answers for `GET /_cluster/members` (with the cluster
//! secret) and makes every member's API address a primary beside the configured upstreams
//! ([`Upstreams::set_discovered`]). A member that joins adds capacity without a restart; one
//! removed leaves. When no member answers, the last set learned is kept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::Value;

use crate::config::LbConfig;
use crate::upstream::Upstreams;

/// The header carrying the cluster secret.
const SECRET_HEADER: &str = "x-soundwave-cluster-secret";
/// The members' view of a Soundwave node.
const MEMBERS_PATH: &str = "/_cluster/members";
/// How long one member is given to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The background service polling the cluster's members.
pub struct Discovery {
    urls: Vec<String>,
    secret: String,
    interval: Duration,
    upstreams: Arc<Upstreams>,
    http: reqwest::Client,
}

/// The API addresses of a members' view (`{"members": [{"api": "ADDR", ...}, ...]}`);
/// members without a usable address are left out.
pub fn member_addresses(view: &Value) -> Result<Vec<SocketAddr>, String> {
    let members = view["members"]
        .as_array()
        .ok_or_else(|| "an answer without a members list".to_owned())?;
    let mut addrs = Vec::new();
    for member in members {
        let Some(addr) = member["api"]
            .as_str()
            .and_then(|api| api.parse::<SocketAddr>().ok())
        else {
            continue;
        };
        if addr.port() != 0 && !addr.ip().is_unspecified() && !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    Ok(addrs)
}

impl Discovery {
    pub fn new(config: &LbConfig, upstreams: Arc<Upstreams>) -> Discovery {
        Discovery {
            urls: config
                .discover_from
                .iter()
                .map(|url| url.trim_end_matches('/').to_owned())
                .collect(),
            secret: config.discover_secret.0.clone(),
            interval: Duration::from_millis(config.discover_interval_ms),
            upstreams,
            http: reqwest::Client::builder()
                .timeout(ASK_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }
    }

    async fn ask(&self, url: &str) -> Result<Vec<SocketAddr>, String> {
        let response = self
            .http
            .get(format!("{url}{MEMBERS_PATH}"))
            .header(SECRET_HEADER, &self.secret)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let view: Value = response.json().await.map_err(|e| e.to_string())?;
        member_addresses(&view)
    }

    /// Asks the members in turn; the first answer replaces the discovered upstreams.
    async fn poll(&self, failing: &mut bool) {
        for url in &self.urls {
            match self.ask(url).await {
                Ok(addrs) => {
                    let change = self.upstreams.set_discovered(&addrs);
                    if !change.is_empty() || *failing {
                        tracing::info!(
                            target: "soundwave::lb",
                            from = %url,
                            added = ?change.added,
                            removed = ?change.removed,
                            members = ?addrs,
                            "upstreams discovered from the cluster"
                        );
                    }
                    *failing = false;
                    return;
                }
                Err(error) => {
                    tracing::debug!(target: "soundwave::lb", from = %url, %error, "discovery");
                }
            }
        }
        if !*failing {
            tracing::warn!(
                target: "soundwave::lb",
                from = ?self.urls,
                "no cluster member answered the discovery; the upstreams learned last are kept"
            );
        }
        *failing = true;
    }
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut failing = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                () = self.poll(&mut failing) => {}
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_api_addresses_are_taken_and_unusable_ones_left_out() {
        let view = serde_json::json!({"members": [
            {"id": 1, "api": "127.0.0.1:8001"},
            {"id": 2, "api": null},
            {"id": 3, "api": "0.0.0.0:8003"},
            {"id": 4, "api": "not an address"},
            {"id": 5, "api": "127.0.0.5:8005"},
            {"id": 6, "api": "127.0.0.1:8001"},
        ]});
        assert_eq!(
            member_addresses(&view).unwrap(),
            vec![
                "127.0.0.1:8001".parse::<SocketAddr>().unwrap(),
                "127.0.0.5:8005".parse().unwrap()
            ]
        );
        assert!(member_addresses(&serde_json::json!({"detail": "x"})).is_err());
    }
}
