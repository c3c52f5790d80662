//! The node's state, shared by every request handler: the store and its write path (the
//! cluster), the response cache, the token service and the login and sign-up limits,
//! request limits and metrics. It depends on nothing that serves requests; the handlers
//! (`api`), the extractors and the start-up depend on it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderValue;
use metrics_exporter_prometheus::PrometheusHandle;
use store::{Command, CommandOutcome, CommandSubmitter, Id, Store, StoreReader};

use crate::auth::{LoginThrottle, Principal, SignupLimit, TokenService};
use crate::cache::{CacheKey, ResponseCache};
use crate::cluster::Cluster;
use crate::error::ApiResult;

/// Limits applied to requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub page_size: usize,
    pub request_timeout_secs: u64,
}

/// Everything a request handler needs, shared by all of them.
pub struct AppState {
    pub node_id: u64,
    pub node_header: HeaderValue,
    pub store: Arc<Store>,
    pub cache: Arc<ResponseCache>,
    pub tokens: TokenService,
    pub throttle: LoginThrottle,
    pub signups: SignupLimit,
    pub limits: Limits,
    pub metrics: PrometheusHandle,
    pub trusted_proxies: Vec<IpAddr>,
    /// Bearer token of `GET /metrics`; empty: only loopback peers may read it.
    pub metrics_token: String,
    /// The write path: the replicated log (a one-member cluster when the node runs alone).
    pub cluster: Arc<Cluster>,
}

impl AppState {
    /// Submits a command and waits until it is applied; a rejection becomes its API error.
    pub async fn submit(&self, command: Command) -> ApiResult<CommandOutcome> {
        submit(self.cluster.as_ref(), command).await
    }

    pub fn read(&self) -> ApiResult<StoreReader> {
        Ok(self.store.read()?)
    }

    /// The user behind an id, from the cache or the store.
    pub fn principal(&self, id: Id) -> ApiResult<Option<Principal>> {
        let key = CacheKey::Principal {
            generation: self.cache.user_generation(id),
            id,
        };
        if let Some(principal) = self.cache.get_principal(&key) {
            return Ok(Some(principal));
        }
        let reader = self.store.read()?;
        let Some(user) = reader.user(id)? else {
            return Ok(None);
        };
        // A deactivated user's tokens act for no one.
        if !reader.user_is_active(id)? {
            return Ok(None);
        }
        let principal = Principal {
            id,
            username: user.username,
            is_staff: user.is_staff,
        };
        self.cache.put_principal(key, principal.clone());
        Ok(Some(principal))
    }

    /// The client's address, by the one rule the balancer uses too ([`lb::client_ip`]): the
    /// TCP peer, unless it is a trusted proxy (`trusted_proxies`); then the last
    /// `X-Forwarded-For` entry that is not itself a trusted proxy, else `X-Real-IP`.
    pub fn client_ip(&self, peer: SocketAddr, headers: &http::HeaderMap) -> IpAddr {
        lb::client_ip(peer.ip(), &self.trusted_proxies, headers)
    }
}

/// Submits a command to a write path and waits until it is applied; a rejection becomes
/// its API error.
pub async fn submit(writer: &dyn CommandSubmitter, command: Command) -> ApiResult<CommandOutcome> {
    Ok(writer.submit(command).await??)
}
