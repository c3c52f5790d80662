//! The node's start-up over an open store: its state built from the config ([`node_state`],
//! which settles the JWT secret), the configured admin ensured, and [`NodeError`], every way
//! starting or running a node can fail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use store::{Command, CommandOutcome, CommandSubmitter, Store, StoreError};

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

/// The node's state over an open store, its write path a cluster started on it (a
/// one-member cluster when the config names no `[cluster]` nodes, as `soundwave node` runs
/// alone); settles the token secret. Benches drive the API in-process over it; stop it with
/// [`Cluster::shutdown`].
pub async fn node_state(config: &Config, store: Arc<Store>) -> Result<Arc<AppState>, NodeError> {
    let cache = Arc::new(ResponseCache::new(config.node.cache_capacity_bytes));
    let cluster = Cluster::start(config, store.clone(), cache.clone()).await?;
    build_state(config, store, cache, cluster).await
}

/// Builds the node's state over an open store and its write path; settles the token secret.
async fn build_state(
    config: &Config,
    store: Arc<Store>,
    cache: Arc<ResponseCache>,
    cluster: Arc<Cluster>,
) -> Result<Arc<AppState>, NodeError> {
    let secret = jwt_secret(config, &store, cluster.as_ref()).await?;
    let node_header = HeaderValue::from(config.node.id);
    Ok(Arc::new(AppState {
        node_id: config.node.id,
        node_header,
        store,
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
            max_image_bytes: config.node.max_image_bytes,
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
        state.cluster.as_ref(),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rust_decimal::Decimal;
    use store::{Id, NewProduct, NewUser, Rejection};

    use super::*;

    /// A node's state over a fresh store, writing through a one-member cluster.
    async fn start() -> (tempfile::TempDir, Arc<AppState>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("store.redb")).unwrap());
        let mut config = Config::default();
        config.auth.jwt_secret = "test-secret".into();
        config.node.data_dir = dir.path().to_path_buf();
        let state = node_state(&config, store).await.unwrap();
        (dir, state)
    }

    fn category(name: &str) -> Command {
        Command::CreateCategory { name: name.into() }
    }

    fn product(name: &str, stock: u32, category: Id) -> Command {
        Command::CreateProduct(NewProduct {
            name: name.into(),
            stock,
            price: Decimal::new(100, 2),
            description: format!("about {name}"),
            category,
        })
    }

    fn user(name: &str, is_staff: bool) -> Command {
        Command::CreateUser(NewUser {
            username: name.into(),
            email: format!("{name}@example.com"),
            phone_number: "+10000000000".into(),
            password_hash: format!("hash-of-{name}"),
            is_staff,
            date_joined: 1,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submits_are_all_answered_applied_and_seen_by_the_cache() {
        let (_dir, state) = start().await;
        let setup = state.submit(category("Rock")).await.unwrap();
        assert!(matches!(setup, CommandOutcome::Category(c) if c.id == 1));

        const TASKS: u32 = 200;
        let mut tasks = Vec::new();
        for i in 0..TASKS {
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("product {i}");
                let result = state.submit(product(&name, i, 1)).await;
                let Ok(CommandOutcome::Product(p)) = result else {
                    panic!("product {i} not created: {result:?}");
                };
                assert_eq!((p.name.as_str(), p.stock), (name.as_str(), i));
                // The answer comes only after the cache was told of the change.
                assert!(
                    state.cache.product_generation(p.id) > 0,
                    "{} not seen by the cache",
                    p.id
                );
                p.id
            }));
        }
        let mut ids = BTreeSet::new();
        for task in tasks {
            assert!(
                ids.insert(task.await.unwrap()),
                "every product got its own id"
            );
        }
        assert_eq!(ids, (1..=u64::from(TASKS)).collect());

        let reader = state.store.read().unwrap();
        let products = reader.all_products().unwrap();
        assert_eq!(products.len(), TASKS as usize);
        for p in &products {
            let i: u32 = p.name.strip_prefix("product ").unwrap().parse().unwrap();
            assert_eq!(p.stock, i);
        }
        state.cluster.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_caller_gets_its_own_answer() {
        let (_dir, state) = start().await;
        // 200 callers race for 100 names: each name is taken exactly once.
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("Name {}", i % 100);
                let name = if i >= 100 { name.to_uppercase() } else { name };
                let answer = state.cluster.submit(category(&name)).await.unwrap();
                (name, answer)
            }));
        }
        let mut winners = BTreeSet::new();
        let mut refused = 0;
        for task in tasks {
            match task.await.unwrap() {
                (name, Ok(CommandOutcome::Category(c))) => {
                    assert_eq!(c.name, name);
                    assert!(winners.insert(name.to_lowercase()));
                }
                (
                    _,
                    Err(Rejection::Duplicate {
                        what: "category", ..
                    }),
                ) => refused += 1,
                (name, other) => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!((winners.len(), refused), (100, 100));
        assert_eq!(state.store.read().unwrap().categories().unwrap().len(), 100);
        state.cluster.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_are_answered() {
        let (_dir, state) = start().await;
        state
            .cluster
            .submit(user("alice", false))
            .await
            .unwrap()
            .unwrap();
        let refused = state.cluster.submit(user("alice", true)).await.unwrap();
        assert!(matches!(refused, Err(Rejection::Duplicate { .. })));
        let secret = Command::InitJwtSecret {
            secret: b"s".to_vec(),
        };
        assert_eq!(
            state.cluster.submit(secret).await.unwrap(),
            Ok(CommandOutcome::JwtSecret(b"s".to_vec()))
        );
        state.cluster.shutdown().await;
    }

    #[test]
    fn the_node_answers_from_another_runtime_and_lets_go_of_the_store_once_stopped() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (_dir, state) = runtime.block_on(start());
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer = other.block_on(state.submit(category("Rock"))).unwrap();
        assert!(matches!(answer, CommandOutcome::Category(c) if c.id == 1));
        runtime.block_on(state.cluster.shutdown());
        let store = state.store.clone();
        drop(state);
        // Once stopped, raft's tasks and the cluster give up their Arcs of the store.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&store) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster did not let go of the store"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
