//! `soundwave node`: opens the store, starts the cluster (the write path, one member when
//! alone) and the cache, makes sure the JWT secret, the admin and (with `--demo`) the demo
//! catalog exist, then serves the API until SIGINT or SIGTERM, finishing in-flight requests.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use store::Store;

use crate::config::Config;
use crate::private_files::private_data_dir;
pub use crate::startup::NodeError;
use crate::startup::{ensure_admin, node_state};

/// Name of the store file inside the data directory.
pub const STORE_FILE: &str = "soundwave.redb";

/// How long a node whose replicated log failed keeps answering (503 on `/health/` and on
/// writes) before it stops, so that balancers drain it first.
const FAULT_DRAIN: Duration = Duration::from_secs(2);

/// Runs the node until SIGINT or SIGTERM, or until its replicated log fails (then it
/// returns [`NodeError::Fault`], for a supervisor to restart it).
pub async fn run(mut config: Config) -> Result<(), NodeError> {
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
    // The address recorded for the cluster (and the balancer's discovery) is the bound one.
    config.node.listen = addr;
    let data_dir = &config.node.data_dir;
    // Meanwhile every request is answered 503 with the step under way (a balancer's
    // probe sees "starting", not a connection left waiting).
    let step = crate::starting::Step::new("opening the store");
    let startup = async {
        private_data_dir(data_dir).map_err(|source| NodeError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join(STORE_FILE);
        let page_cache_bytes =
            usize::try_from(config.node.store_page_cache_bytes).unwrap_or(usize::MAX);
        let store = Arc::new(
            tokio::task::spawn_blocking(move || {
                Store::open_with_page_cache(path, page_cache_bytes)
            })
            .await
            .map_err(|e| NodeError::Startup(format!("store open task failed: {e}")))??,
        );
        step.set("joining the cluster");
        let state = node_state(&config, store).await?;
        step.set("creating the admin");
        ensure_admin(&state, &config).await?;
        if config.node.demo {
            step.set("filling the demo catalog");
            let size = crate::demo::DemoSize {
                products: config.node.demo_products,
                orders: config.node.demo_orders,
            };
            crate::demo::seed(&state, data_dir, size).await?;
        }
        Ok::<_, NodeError>(state)
    };
    let state = crate::starting::answer_while(&listener, config.node.id, &step, startup).await?;

    let app = crate::api::router(state.clone());
    tracing::info!(node_id = config.node.id, %addr, "serving");
    // The harness and operators read this line to find the port.
    println!(
        "soundwave node {} listening on http://{addr}",
        config.node.id
    );
    let _ = std::io::stdout().flush();

    let cluster = state.cluster.clone();
    let stop = async move {
        let faulted = async {
            cluster.faulted().await;
            // Long enough for the balancer's probes to see the 503 and drain.
            tokio::time::sleep(FAULT_DRAIN).await;
        };
        tokio::select! {
            () = stop_requested() => {
                // A leader hands over first (still serving: writes meanwhile wait, then go
                // to the new leader), so writes pause less than an election timeout.
                cluster.hand_off_leadership().await;
                tracing::info!("shutting down: finishing in-flight requests");
            }
            () = faulted => if cluster.was_removed() {
                tracing::info!("stopping: this node was removed from the cluster");
            } else {
                tracing::error!("stopping after the replicated log's failure");
            },
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
    state.cluster.shutdown().await;
    let store = state.store.clone();
    let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
    if let Ok(Err(error)) = flushed {
        tracing::warn!(%error, "could not flush the store at shutdown");
    }
    if state.cluster.was_removed() {
        tracing::info!("stopped: removed from the cluster");
        return Ok(());
    }
    if let Some(fault) = state.cluster.fault() {
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
