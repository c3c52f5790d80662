//! Starting the cluster (raft on the store, on its own runtime; the proposer, the peer
//! server, the leader watch, the snapshot policy) once the identity check passed, its one-time
//! initialization and its stop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{BasicNode, Raft};
use store::Store;
use store::raft::{LogStore, NodeId, StateMachine};
use tokio::sync::mpsc;

use super::config::{ClusterError, members, raft_config};
use super::identity::refuse_lost_identity;
use super::join::join_through;
use super::membership::JoinRequest;
use super::network::{PeerClient, PeerNetwork};
use super::node::Cluster;
use super::peer_api::peer_router;
use super::proposer::QUEUE_DEPTH;
use super::runtime::{ClusterRuntime, RUNTIME_SHUTDOWN_TIMEOUT};
use super::snapshot::SNAPSHOT_FILE;
use super::waiters::Waiters;
use crate::cache::ResponseCache;
use crate::config::Config;

/// How long a node that joined waits to catch up with the leader before it serves anyway.
const JOIN_CATCH_UP_PATIENCE: Duration = Duration::from_secs(300);

impl Cluster {
    /// Starts raft on the store, the proposer, the peer server (several members, or a node
    /// with a peer address of its own) and the one-time initialization (by the lowest id of
    /// `[[cluster.nodes]]`, once every member answers); with `join`, asks the cluster to add
    /// this node and returns once it is a learner.
    pub async fn start(
        config: &Config,
        store: Arc<Store>,
        cache: Arc<ResponseCache>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let node_id = config.node.id;
        let members = members(config)?;
        let settings = &config.cluster;
        let raft_config = raft_config(settings)?;
        // Before this node serves its peer address, so that no first start of a new cluster
        // can be mistaken for a lost log (see identity.rs).
        refuse_lost_identity(
            node_id,
            &members,
            &store,
            &settings.secret,
            &config.node.data_dir,
        )
        .await?;

        let waiters = Arc::new(Waiters::new(cache));
        let snapshot_path = config.node.data_dir.join(SNAPSHOT_FILE);
        let log_store = LogStore::new(store.clone());
        let own_peer_ip = members
            .get(&node_id)
            .and_then(|m| m.peer)
            .map(|addr| addr.ip());
        let client = PeerClient::new(settings.secret.clone(), own_peer_ip);
        let (runtime, handle) = ClusterRuntime::new()?;
        // openraft spawns its tasks on the runtime it starts on.
        let raft = handle
            .spawn(Raft::new(
                node_id,
                Arc::new(raft_config),
                PeerNetwork {
                    client: client.clone(),
                },
                log_store.clone(),
                StateMachine::new(store.clone(), waiters.clone(), snapshot_path.clone()),
            ))
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?
            .map_err(|e| ClusterError::Raft(e.to_string()))?;

        // A node outside [[cluster.nodes]] restarted without --peer-listen: its address is
        // in the membership its log holds.
        // (Read from raft's state: its metrics may not show the loaded membership yet.)
        let own_peer: Option<SocketAddr> = match members[&node_id].peer {
            Some(addr) => Some(addr),
            None => raft
                .with_raft_state(move |state| {
                    state
                        .membership_state
                        .effective()
                        .get_node(&node_id)
                        .and_then(|node| node.addr.parse().ok())
                })
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?,
        };
        let dynamic = settings.nodes.is_empty() && own_peer.is_some();
        if dynamic && settings.join.is_empty() && !raft.is_initialized().await.unwrap_or(false) {
            let _ = raft.shutdown().await;
            return Err(ClusterError::NotAMember(node_id));
        }

        let (queue, incoming) = mpsc::channel(QUEUE_DEPTH);
        let nonce = u64::from_le_bytes(
            crate::random::random_bytes(8)
                .ok()
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
        );
        let cluster = Arc::new(Cluster {
            node_id,
            store,
            raft,
            secret: settings.secret.clone(),
            members,
            client,
            waiters,
            queue,
            nonce,
            next_request: AtomicU64::new(0),
            write_timeout: Duration::from_millis(settings.write_timeout_ms),
            election_timeout: Duration::from_millis(settings.election_timeout_ms * 2),
            leader_seen: Mutex::new(Instant::now()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            fault: Mutex::new(None),
            fault_seen: tokio::sync::Notify::new(),
            read_only: settings.read_only,
            removed: std::sync::atomic::AtomicBool::new(false),
            runtime,
        });

        if let Some(addr) = own_peer {
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                .map_err(|source| ClusterError::PeerListen { addr, source })?;
            let router = peer_router(cluster.clone());
            handle.spawn(async move {
                let served = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => axum::serve(listener, router).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = served {
                    tracing::error!(%error, "peer server stopped");
                }
            });
        }
        handle.spawn(cluster.clone().run_proposer(incoming));
        handle.spawn(cluster.clone().watch_leader());
        if !dynamic {
            handle.spawn(cluster.clone().initialize_when_ready());
        }
        handle.spawn(cluster.clone().take_snapshots_when_due(
            log_store,
            snapshot_path,
            settings.snapshot_after_entries,
        ));
        if let Some(peer) = own_peer {
            let api = config.node.listen.to_string();
            if !settings.join.is_empty() {
                let request = JoinRequest {
                    id: node_id,
                    api: api.clone(),
                    peer: peer.to_string(),
                    read_only: settings.read_only,
                };
                let joined = handle
                    .spawn({
                        let (url, secret) = (settings.join.clone(), settings.secret.clone());
                        async move { join_through(&url, &secret, &request).await }
                    })
                    .await
                    .map_err(|e| ClusterError::Raft(e.to_string()))
                    .and_then(|joined| joined);
                let leader_index = match joined {
                    Ok(index) => index,
                    Err(error) => {
                        cluster.shutdown().await;
                        return Err(error);
                    }
                };
                tracing::info!(url = %settings.join, "joined the cluster as a learner; catching up");
                // Serving only once caught up: reads here would be older than the
                // cluster's, and start-up (the admin, the JWT secret) reads the store.
                let caught_up = cluster
                    .raft
                    .wait(Some(JOIN_CATCH_UP_PATIENCE))
                    .applied_index_at_least(Some(leader_index), "caught up after the join")
                    .await;
                if let Err(error) = caught_up {
                    tracing::warn!(%error, "not caught up yet; serving anyway");
                }
            }
            handle.spawn(cluster.clone().promote_caught_up_learners());
            handle.spawn(cluster.clone().record_self(api, peer.to_string()));
        }
        Ok(cluster)
    }

    /// The lowest id initializes the cluster once every member answers; restarts and
    /// the other members never do.
    async fn initialize_when_ready(self: Arc<Self>) {
        let lowest = self.members.keys().next().copied();
        if lowest != Some(self.node_id) {
            return;
        }
        loop {
            match self.raft.is_initialized().await {
                Ok(true) | Err(_) => return,
                Ok(false) => {}
            }
            let mut all_reachable = true;
            for (&id, _) in self.members.iter().filter(|(id, _)| **id != self.node_id) {
                let reachable = match self.peer_addr(id) {
                    Some(addr) => self.client.ping(&addr).await,
                    None => false,
                };
                all_reachable &= reachable;
            }
            if all_reachable {
                let nodes: BTreeMap<NodeId, BasicNode> = self
                    .members
                    .iter()
                    .map(|(&id, m)| {
                        let addr = m.peer.map(|a| a.to_string()).unwrap_or_default();
                        (id, BasicNode { addr })
                    })
                    .collect();
                match self.raft.initialize(nodes).await {
                    Ok(()) => tracing::info!("cluster initialized"),
                    Err(error) => tracing::info!(%error, "cluster already initialized"),
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops raft, then the cluster's runtime with every task on it (they hold the store),
    /// waiting at most a few seconds.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not stop cleanly");
        }
        if let Some(runtime) = self.runtime.take() {
            let stopped = tokio::task::spawn_blocking(move || {
                runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
            })
            .await;
            if stopped.is_err() {
                tracing::warn!("the cluster's runtime did not stop cleanly");
            }
        }
    }
}
