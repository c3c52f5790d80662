//! `soundwave node`: opens the store, starts the writer and the cache, makes sure the JWT
//! secret, the admin and (with `--demo`) the demo catalog exist, then serves the API until
//! SIGINT or SIGTERM, finishing in-flight requests.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use metrics_exporter_prometheus::PrometheusHandle;
use store::{
    Command, CommandOutcome, CommandSubmitter, LocalWriter, Store, StoreError, StoreReader,
};

use crate::auth::{self, LoginLimits, LoginThrottle, SignupLimit, TokenService};
use crate::cache::ResponseCache;
use crate::cluster::{Cluster, ClusterError};
use crate::config::Config;
use crate::error::{ApiError, ApiResult};

/// Name of the store file inside the data directory.
pub const STORE_FILE: &str = "soundwave.redb";

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
    pub writer: Arc<dyn CommandSubmitter>,
    pub cache: Arc<ResponseCache>,
    pub tokens: TokenService,
    pub throttle: LoginThrottle,
    pub signups: SignupLimit,
    pub limits: Limits,
    pub metrics: PrometheusHandle,
    pub trusted_proxies: Vec<IpAddr>,
    /// Bearer token of `GET /metrics`; empty: only loopback peers may read it.
    pub metrics_token: String,
    /// The replicated log, when the node runs one (always, from `soundwave node`).
    pub cluster: Option<Arc<Cluster>>,
}

impl AppState {
    /// Submits a command and waits until it is applied; a rejection becomes its API error.
    pub async fn submit(&self, command: Command) -> ApiResult<CommandOutcome> {
        submit(self.writer.as_ref(), command).await
    }

    pub fn read(&self) -> ApiResult<StoreReader> {
        Ok(self.store.read()?)
    }

    /// The client's address, by the one rule the balancer uses too ([`lb::client_ip`]): the
    /// TCP peer, unless it is a trusted proxy (`trusted_proxies`); then the last
    /// `X-Forwarded-For` entry that is not itself a trusted proxy, else `X-Real-IP`.
    pub fn client_ip(&self, peer: SocketAddr, headers: &http::HeaderMap) -> IpAddr {
        lb::client_ip(peer.ip(), &self.trusted_proxies, headers)
    }
}

async fn submit(writer: &dyn CommandSubmitter, command: Command) -> ApiResult<CommandOutcome> {
    Ok(writer.submit(command).await??)
}

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
    let proposed = auth::random_bytes(32)?;
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
async fn ensure_admin(state: &AppState, config: &Config) -> Result<(), NodeError> {
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
            at: auth::unix_micros(),
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

/// Makes the data directory private to the node's user: created (or fixed, with a
/// warning) as mode 0700, with every file in it 0600. The store holds the token signing
/// secret and password hashes; a world-readable file would let any local user forge staff
/// tokens. The process's umask is set to 0077 first, so files made later (snapshots, the
/// store when new) are private from the start.
fn private_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    // SAFETY: umask only sets the process's file creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let make_private = |path: &std::path::Path, mode: u32| -> std::io::Result<()> {
        let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if current & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{current:o}"),
                "readable by other users; making it private (mode {mode:o})"
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    };
    make_private(dir, 0o700)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_file() {
            make_private(&entry.path(), 0o600)?;
        } else if kind.is_dir() {
            make_private(&entry.path(), 0o700)?;
        }
    }
    Ok(())
}

/// How long a node whose replicated log failed keeps answering (503 on `/health/` and on
/// writes) before it stops, so that balancers drain it first.
const FAULT_DRAIN: Duration = Duration::from_secs(2);

/// Runs the node until SIGINT or SIGTERM, or until its replicated log fails (then it
/// returns [`NodeError::Fault`], for a supervisor to restart it).
pub async fn run(config: Config) -> Result<(), NodeError> {
    // Listen first: a busy port fails at once, before the store is touched, the demo
    // catalog seeded or any credentials printed. Connections wait in the backlog until the
    // router serves them.
    let listener = tokio::net::TcpListener::bind(config.node.listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: config.node.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(NodeError::Serve)?;
    let data_dir = &config.node.data_dir;
    private_data_dir(data_dir).map_err(|source| NodeError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let path = data_dir.join(STORE_FILE);
    let page_cache_bytes =
        usize::try_from(config.node.store_page_cache_bytes).unwrap_or(usize::MAX);
    let store = Arc::new(
        tokio::task::spawn_blocking(move || Store::open_with_page_cache(path, page_cache_bytes))
            .await
            .map_err(|e| NodeError::Startup(format!("store open task failed: {e}")))??,
    );
    let cache = Arc::new(ResponseCache::new(config.node.cache_capacity_bytes));
    let cluster = Cluster::start(&config, store.clone(), cache.clone()).await?;
    let writer: Arc<dyn CommandSubmitter> = cluster.clone();
    let state = build_state(&config, store, cache, writer, Some(cluster)).await?;
    ensure_admin(&state, &config).await?;
    if config.node.demo {
        let size = crate::demo::DemoSize {
            products: config.node.demo_products,
            orders: config.node.demo_orders,
        };
        crate::demo::seed(&state, data_dir, size).await?;
    }

    let app = crate::api::router(state.clone());
    tracing::info!(node_id = config.node.id, %addr, "serving");
    // The harness and operators read this line to find the port.
    println!(
        "soundwave node {} listening on http://{addr}",
        config.node.id
    );
    let _ = std::io::stdout().flush();

    let fault = state.cluster.clone();
    let stop = async move {
        let faulted = async {
            match &fault {
                Some(cluster) => {
                    cluster.faulted().await;
                    // Long enough for the balancer's probes to see the 503 and drain.
                    tokio::time::sleep(FAULT_DRAIN).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop_requested() => tracing::info!("shutting down: finishing in-flight requests"),
            () = faulted => tracing::error!("stopping after the replicated log's failure"),
        }
    };
    // In-flight requests end within the request timeout; a little more for the last bytes.
    let drain = Duration::from_secs(config.node.request_timeout_secs.saturating_add(5));
    let limits = crate::server::ConnectionLimits::new(
        Duration::from_secs(config.node.header_timeout_secs),
        config.node.max_connections,
        config.node.max_connections_per_ip,
        config.node.trusted_proxies.clone(),
        &state.node_header,
    );
    let cached = crate::api::CachedReads::new(state.clone());
    crate::server::serve(listener, app, Some(cached), limits, stop, drain).await;
    // Raft's tasks hold the store: stop them, so that it is closed cleanly (else the next
    // start repairs the whole file). Applies and the commit point are written without a
    // flush (the log is flushed): flush them, so that a restarted node has its state at once.
    if let Some(cluster) = &state.cluster {
        cluster.shutdown().await;
    }
    let store = state.store.clone();
    let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
    if let Ok(Err(error)) = flushed {
        tracing::warn!(%error, "could not flush the store at shutdown");
    }
    if let Some(fault) = state.cluster.as_ref().and_then(|c| c.fault()) {
        return Err(NodeError::Fault(fault));
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn stop_requested() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
