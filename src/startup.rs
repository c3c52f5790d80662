//! The node's start-up over an open store: its state built from the config ([`build_state`],
//! which settles the JWT secret), the configured admin ensured, and [`NodeError`], every way
//! starting or running a node can fail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use store::{Command, CommandOutcome, CommandSubmitter, LocalWriter, Store, StoreError};

use crate::auth::{self, LoginLimits, LoginThrottle, SignupLimit, TokenService};
use crate::cache::ResponseCache;
use crate::cluster::{Cluster, ClusterError};
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, Limits, submit};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("start-up failed: {0}")]
    Startup(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error(
        "the replicated log stopped ({0}); check the disk and the store, then start the node \
         again (under `soundwave up` it is restarted)"
    )]
    Fault(String),
}

impl From<ApiError> for NodeError {
    fn from(error: ApiError) -> Self {
        NodeError::Startup(error.to_string())
    }
}

/// A node's state with the single-process writer (no replicated log): for benches and
/// tools that drive the API in-process.
pub async fn local_state(config: &Config, store: Arc<Store>) -> Result<Arc<AppState>, NodeError> {
    let cache = Arc::new(ResponseCache::new(config.node.cache_capacity_bytes));
    let writer: Arc<dyn CommandSubmitter> =
        Arc::new(LocalWriter::start(store.clone(), cache.clone())?);
    build_state(config, store, cache, writer, None).await
}

/// Builds the node's state over an open store and its write path; settles the token secret.
pub async fn build_state(
    config: &Config,
    store: Arc<Store>,
    cache: Arc<ResponseCache>,
    writer: Arc<dyn CommandSubmitter>,
    cluster: Option<Arc<Cluster>>,
) -> Result<Arc<AppState>, NodeError> {
    let secret = jwt_secret(config, &store, writer.as_ref()).await?;
    let node_header = HeaderValue::from(config.node.id);
    Ok(Arc::new(AppState {
        node_id: config.node.id,
        node_header,
        store,
        writer,
        cache,
        tokens: TokenService::new(
            &secret,
            Duration::from_secs(config.auth.access_token_lifetime_secs),
            Duration::from_secs(config.auth.refresh_token_lifetime_secs),
        ),
        throttle: LoginThrottle::new(LoginLimits {
            per_username_and_ip: config.auth.login_max_failures,
            per_username: config.auth.login_max_failures_per_username,
            per_ip: config.auth.login_max_failures_per_ip,
            window: Duration::from_secs(config.auth.login_failure_window_secs),
        }),
        signups: SignupLimit::new(config.auth.signups_per_ip_per_hour),
        limits: Limits {
            max_body_bytes: config.node.max_body_bytes,
            page_size: config.node.page_size,
            request_timeout_secs: config.node.request_timeout_secs,
        },
        metrics: crate::telemetry::prometheus(),
        trusted_proxies: config.node.trusted_proxies.clone(),
        metrics_token: config.node.metrics_token.clone(),
        cluster,
    }))
}

/// How long start-up writes wait for the cluster to elect a leader.
const STARTUP_WRITE_PATIENCE: Duration = Duration::from_secs(120);

/// Submits a start-up command, waiting out the time the cluster needs to form.
async fn submit_at_startup(
    writer: &dyn CommandSubmitter,
    command: Command,
) -> ApiResult<CommandOutcome> {
    let deadline = std::time::Instant::now() + STARTUP_WRITE_PATIENCE;
    loop {
        match submit(writer, command.clone()).await {
            Err(ApiError::Unavailable(reason)) if std::time::Instant::now() < deadline => {
                tracing::info!(%reason, "waiting for the cluster to take writes");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// The configured secret, or the one kept in the store, or a new one kept from now on.
async fn jwt_secret(
    config: &Config,
    store: &Store,
    writer: &dyn CommandSubmitter,
) -> Result<Vec<u8>, NodeError> {
    if !config.auth.jwt_secret.is_empty() {
        return Ok(config.auth.jwt_secret.as_bytes().to_vec());
    }
    if let Some(secret) = store.read()?.jwt_secret()? {
        return Ok(secret);
    }
    let proposed = crate::random::random_bytes(32)?;
    match submit_at_startup(writer, Command::InitJwtSecret { secret: proposed }).await? {
        CommandOutcome::JwtSecret(kept) => Ok(kept),
        other => Err(NodeError::Startup(format!(
            "unexpected answer to the JWT secret: {other:?}"
        ))),
    }
}

/// Makes sure the configured admin exists, is staff and has the configured password. An
/// existing account that is not staff is never promoted: whoever signed up under that name
/// first would get a staff session. A changed password ends the admin's earlier sessions
/// (their refresh tokens are refused from then on).
pub async fn ensure_admin(state: &AppState, config: &Config) -> Result<(), NodeError> {
    let username = &config.auth.admin_username;
    let password = &config.auth.admin_password;
    if username.is_empty() {
        return Ok(());
    }
    let refuse_promotion = || {
        NodeError::Startup(format!(
            "the admin username {username:?} (SOUNDWAVE_ADMIN_USERNAME) belongs to an \
             existing account that is not staff; refusing to make it staff: choose another \
             admin username"
        ))
    };
    if let Some(user) = state.read()?.user_by_username(username)? {
        if !user.is_staff {
            return Err(refuse_promotion());
        }
        if auth::verify_password(password.clone(), Some(user.password_hash)).await? {
            return Ok(());
        }
    }
    let password_hash = auth::hash_password(password.clone()).await?;
    let ensured = submit_at_startup(
        state.writer.as_ref(),
        Command::EnsureAdmin {
            username: username.clone(),
            password_hash,
            at: crate::clock::unix_micros(),
        },
    )
    .await;
    match ensured {
        // Signed up under that name between the check above and the command's turn.
        Err(ApiError::Conflict { .. }) => return Err(refuse_promotion()),
        other => {
            other?;
        }
    }
    tracing::info!(%username, "admin user ensured");
    Ok(())
}
