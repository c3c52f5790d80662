//! The cluster: every write is proposed through openraft's replicated log and applied by
//! every node's state machine in the same order. A node that does not lead forwards its
//! proposals to the leader; a client is answered once its own node has applied the command.
//! A config with one node, or none, is a one-member cluster on the same code path.

pub mod network;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::TryAsRef;
use openraft::error::{ForwardToLeader, RaftError};
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use store::raft::{
    AppliedSink, LogStore, NodeId, Proposal, RaftConfig, RaftNode, RequestId, StateMachine,
};
use store::{
    ChangeSet, Command, CommandOutcome, CommandSubmitter, Rejection, Store, StoreError,
    SubmitFuture,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::cache::ResponseCache;
use crate::config::{ClusterMember, Config};
use network::{PeerClient, PeerNetwork};

/// Commands proposed together in one log entry, at most.
const MAX_PROPOSAL_COMMANDS: usize = 1024;
/// Proposals in flight at once, at most.
const MAX_PROPOSALS_IN_FLIGHT: usize = 8;
/// Proposals in flight at once that are not full: one more waits, and grows meanwhile.
/// Every proposal costs each node an append, a flush and an apply whatever its size, so
/// under write load fewer, larger proposals cost less CPU and wait less (40 concurrent
/// buyers on three nodes: 3,109 orders/s, p99 24 ms with 8 in flight; 3,300-4,100/s, p99
/// 17-21 ms with 2 or 1). A full proposal cannot grow by waiting: bulk writes (the demo's
/// seeding) keep up to `MAX_PROPOSALS_IN_FLIGHT` in flight.
const MAX_PARTIAL_PROPOSALS_IN_FLIGHT: usize = 2;
/// Log entries in one append sent to a follower.
const MAX_ENTRIES_PER_APPEND: u64 = 32;
/// Commands waiting to be proposed before submitters wait for room.
const QUEUE_DEPTH: usize = 16_384;
/// Pause between attempts while there is no leader.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// The shortest wait for the leader's answer to one forwarded proposal.
const MIN_FORWARD_ATTEMPT: Duration = Duration::from_millis(500);
/// How long the cluster's runtime is given to stop its tasks at shutdown.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the snapshot policy is checked.
const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A snapshot asked for and not done by then is asked for again.
const SNAPSHOT_ASK_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// Whether to take a snapshot: the log since the last one holds at least `after_entries`
/// entries and, since this process started, at least half as many bytes as that snapshot.
/// A snapshot rewrites the whole state; with the byte rule its cost stays proportional to
/// what was written (at most about two bytes of snapshot per byte of log), where a count of
/// entries alone rebuilt a large state again and again under write load.
pub fn snapshot_due(
    entries_since: u64,
    after_entries: u64,
    bytes_since: u64,
    snapshot_bytes: u64,
) -> bool {
    entries_since >= after_entries.max(1) && bytes_since >= snapshot_bytes / 2
}

/// Name of the snapshot file beside the store.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("a cluster of {0} nodes needs a secret ([cluster] secret or SOUNDWAVE_CLUSTER_SECRET)")]
    MissingSecret(usize),
    #[error("node {0} is not in the [cluster] nodes of the configuration")]
    UnknownNode(NodeId),
    #[error("invalid raft configuration: {0}")]
    RaftConfig(String),
    #[error("cannot start raft: {0}")]
    Raft(String),
    #[error("cannot start the cluster's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen for peers on {addr}: {source}")]
    PeerListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Why a proposal was not taken by the node asked.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("{0}")]
    Failed(String),
}

impl ProposeError {
    /// `NotLeader` when openraft names (or cannot yet name) the leader, else `Failed`.
    fn from_raft<E>(error: RaftError<NodeId, E>) -> ProposeError
    where
        E: std::error::Error + TryAsRef<ForwardToLeader<NodeId, RaftNode>>,
    {
        match error.forward_to_leader() {
            Some(forward) => ProposeError::NotLeader {
                leader: forward.leader_id,
            },
            None => ProposeError::Failed(error.to_string()),
        }
    }
}

/// Callers waiting for their commands to be applied by this node.
pub struct Waiters {
    pending: Mutex<HashMap<RequestId, oneshot::Sender<Result<CommandOutcome, Rejection>>>>,
    cache: Arc<ResponseCache>,
}

impl Waiters {
    fn register(&self, id: RequestId) -> oneshot::Receiver<Result<CommandOutcome, Rejection>> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    /// Drops the waiters of these requests: their callers learn the write did not happen.
    fn forget(&self, ids: impl IntoIterator<Item = RequestId>) {
        let mut pending = self.lock();
        for id in ids {
            pending.remove(&id);
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        HashMap<RequestId, oneshot::Sender<Result<CommandOutcome, Rejection>>>,
    > {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AppliedSink for Waiters {
    fn applied(
        &self,
        results: Vec<(RequestId, Result<CommandOutcome, Rejection>)>,
        changes: &ChangeSet,
    ) {
        // Caches first: a caller answered below must not read older data afterwards.
        if !changes.is_empty() {
            self.cache.invalidate(changes);
        }
        let mut pending = self.lock();
        for (id, result) in results {
            if let Some(waiter) = pending.remove(&id) {
                let _ = waiter.send(result);
            }
        }
    }
}

pub struct Cluster {
    pub node_id: NodeId,
    store: Arc<Store>,
    pub raft: Raft<RaftConfig>,
    pub secret: String,
    members: BTreeMap<NodeId, ClusterMember>,
    client: PeerClient,
    waiters: Arc<Waiters>,
    queue: mpsc::Sender<(RequestId, Command)>,
    nonce: u64,
    next_request: AtomicU64,
    write_timeout: Duration,
    election_timeout: Duration,
    leader_seen: Mutex<Instant>,
    /// Set by [`Cluster::shutdown`]: raft stopping from then on is no fault.
    stopping: std::sync::atomic::AtomicBool,
    /// Why raft stopped by itself (a storage error, such as a full disk): the node can no
    /// longer take writes and must be restarted.
    fault: Mutex<Option<String>>,
    fault_seen: tokio::sync::Notify,
    /// Where raft, the peer network and the proposer run (see `ClusterRuntime`).
    runtime: ClusterRuntime,
}

/// The cluster's own tokio runtime. Raft's steps (appends, replication, applying, answering
/// peers) are short and latency-bound; on the API's runtime they queued behind every
/// pending HTTP request, so a write under read load waited in each node's run queue at
/// every hop. On their own thread the OS wakes them promptly, whatever the read load.
/// Its tasks hold the cluster and the store: `Cluster::shutdown` stops it, so that the store
/// is closed cleanly when the node stops.
struct ClusterRuntime(Mutex<Option<tokio::runtime::Runtime>>);

impl ClusterRuntime {
    /// The runtime, and a handle to spawn on it.
    fn new() -> Result<(ClusterRuntime, tokio::runtime::Handle), ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("soundwave-raft")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let handle = runtime.handle().clone();
        Ok((ClusterRuntime(Mutex::new(Some(runtime))), handle))
    }

    fn take(&self) -> Option<tokio::runtime::Runtime> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for ClusterRuntime {
    fn drop(&mut self) {
        // Dropping a runtime may not block inside another one.
        if let Some(runtime) = self.take() {
            runtime.shutdown_background();
        }
    }
}

impl Cluster {
    /// Starts raft on the store, the proposer, the peer server (several members) and the
    /// one-time initialization (by the lowest id, once every member answers).
    pub async fn start(
        config: &Config,
        store: Arc<Store>,
        cache: Arc<ResponseCache>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let node_id = config.node.id;
        let members: BTreeMap<NodeId, ClusterMember> = if config.cluster.nodes.is_empty() {
            BTreeMap::from([(
                node_id,
                ClusterMember {
                    id: node_id,
                    api: config.node.listen,
                    peer: None,
                },
            )])
        } else {
            config
                .cluster
                .nodes
                .iter()
                .map(|m| (m.id, m.clone()))
                .collect()
        };
        if !members.contains_key(&node_id) {
            return Err(ClusterError::UnknownNode(node_id));
        }
        if members.len() > 1 && config.cluster.secret.is_empty() {
            return Err(ClusterError::MissingSecret(members.len()));
        }
        let settings = &config.cluster;
        let raft_config = openraft::Config {
            cluster_name: "soundwave".into(),
            heartbeat_interval: settings.heartbeat_ms,
            election_timeout_min: settings.election_timeout_ms,
            election_timeout_max: settings.election_timeout_ms * 2,
            // Snapshots are triggered by `take_snapshots_when_due`, which also weighs bytes.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: settings.logs_kept_after_snapshot,
            // An entry is already a batch (up to MAX_PROPOSAL_COMMANDS commands): openraft's
            // default of 300 entries per append made appends of tens of MiB under write load,
            // longer than the append timeout (the heartbeat interval) and costly in memory.
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::RaftConfig(e.to_string()))?;

        let waiters = Arc::new(Waiters {
            pending: Mutex::new(HashMap::new()),
            cache,
        });
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
            runtime,
        });

        if cluster.members.len() > 1 {
            let addr = cluster.members[&node_id]
                .peer
                .ok_or(ClusterError::UnknownNode(node_id))?;
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                .map_err(|source| ClusterError::PeerListen { addr, source })?;
            let router = network::peer_router(cluster.clone());
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
        handle.spawn(cluster.clone().initialize_when_ready());
        handle.spawn(cluster.clone().take_snapshots_when_due(
            log_store,
            snapshot_path,
            settings.snapshot_after_entries,
        ));
        Ok(cluster)
    }

    fn peer_addr(&self, id: NodeId) -> Option<String> {
        self.members
            .get(&id)
            .and_then(|m| m.peer)
            .map(|a| a.to_string())
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

    /// Remembers when a leader was last known, for health; notices raft stopping by itself.
    async fn watch_leader(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        loop {
            let (leader_known, stopped) = {
                let now = metrics.borrow();
                let stopped = match &now.running_state {
                    Err(fatal) => Some(fatal.to_string()),
                    Ok(()) => {
                        (now.state == ServerState::Shutdown).then(|| "raft stopped".to_owned())
                    }
                };
                (now.current_leader.is_some(), stopped)
            };
            if leader_known {
                *self.leader_seen.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            }
            if let Some(reason) = stopped
                && !self.stopping.load(Ordering::SeqCst)
            {
                self.record_fault(reason);
                return;
            }
            if metrics.changed().await.is_err() {
                // Raft's core is gone: by our shutdown, or by a fatal error of its own.
                if !self.stopping.load(Ordering::SeqCst) {
                    self.record_fault("raft's core stopped".to_owned());
                }
                return;
            }
        }
    }

    fn record_fault(&self, reason: String) {
        tracing::error!(
            %reason,
            "the replicated log stopped (a storage error: is the disk full?); this node takes \
             no more writes and stops, to be restarted once the cause is fixed"
        );
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.fault_seen.notify_waiters();
    }

    /// Why raft stopped by itself, if it did: the node cannot take writes any more.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Resolves once raft has stopped by itself, with the reason.
    pub async fn faulted(&self) -> String {
        loop {
            let notified = self.fault_seen.notified();
            if let Some(reason) = self.fault() {
                return reason;
            }
            notified.await;
        }
    }

    /// Asks openraft for a snapshot when `snapshot_due` says so, checking every second.
    async fn take_snapshots_when_due(
        self: Arc<Self>,
        log: LogStore,
        snapshot_path: std::path::PathBuf,
        after_entries: u64,
    ) {
        // The log's byte count when the current snapshot was taken, and the snapshot asked
        // for (not asked again until it is done, or a while has passed).
        let mut bytes_at_snapshot = log.appended_bytes();
        let mut snapshot_seen = self.raft.metrics().borrow().snapshot;
        let mut asked: Option<Instant> = None;
        let mut tick = tokio::time::interval(SNAPSHOT_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            let (applied, snapshot) = {
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow();
                (metrics.last_applied, metrics.snapshot)
            };
            if snapshot != snapshot_seen {
                snapshot_seen = snapshot;
                bytes_at_snapshot = log.appended_bytes();
                asked = None;
            }
            if asked.is_some_and(|at| at.elapsed() < SNAPSHOT_ASK_AGAIN_AFTER) {
                continue;
            }
            let entries_since = applied
                .map(|l| l.index)
                .unwrap_or(0)
                .saturating_sub(snapshot.map(|l| l.index).unwrap_or(0));
            let bytes_since = log.appended_bytes().saturating_sub(bytes_at_snapshot);
            let snapshot_bytes = tokio::fs::metadata(&snapshot_path)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            if snapshot_due(entries_since, after_entries, bytes_since, snapshot_bytes) {
                tracing::debug!(entries_since, bytes_since, snapshot_bytes, "snapshot due");
                if self.raft.trigger().snapshot().await.is_err() {
                    return; // raft has stopped
                }
                asked = Some(Instant::now());
            }
        }
    }

    /// Drains queued commands into proposals, a few in flight at once.
    async fn run_proposer(self: Arc<Self>, mut incoming: mpsc::Receiver<(RequestId, Command)>) {
        let any = Arc::new(Semaphore::new(MAX_PROPOSALS_IN_FLIGHT));
        let partial = Arc::new(Semaphore::new(MAX_PARTIAL_PROPOSALS_IN_FLIGHT));
        let drain = |incoming: &mut mpsc::Receiver<_>, commands: &mut Vec<_>| {
            while commands.len() < MAX_PROPOSAL_COMMANDS {
                match incoming.try_recv() {
                    Ok(next) => commands.push(next),
                    Err(_) => break,
                }
            }
        };
        while let Some(first) = incoming.recv().await {
            let mut commands = vec![first];
            drain(&mut incoming, &mut commands);
            let partial_permit = if commands.len() < MAX_PROPOSAL_COMMANDS {
                let Ok(permit) = partial.clone().acquire_owned().await else {
                    return;
                };
                drain(&mut incoming, &mut commands);
                Some(permit)
            } else {
                None
            };
            let Ok(permit) = any.clone().acquire_owned().await else {
                return;
            };
            let cluster = self.clone();
            tokio::spawn(async move {
                cluster.propose(Proposal { commands }).await;
                drop(permit);
                drop(partial_permit);
            });
        }
    }

    /// Gets a proposal into the log: here if this node leads, else through the leader,
    /// retrying (the same request ids, so nothing applies twice) until the write timeout.
    async fn propose(&self, proposal: Proposal) {
        let deadline = Instant::now() + self.write_timeout;
        loop {
            let attempt = match self.propose_here(proposal.clone()).await {
                Err(ProposeError::NotLeader {
                    leader: Some(leader),
                }) if leader != self.node_id => {
                    // One attempt waits about two election timeouts, not the whole write
                    // timeout: a leader that froze or was cut off is replaced within that,
                    // and the next attempt goes to its successor (the same request ids, so
                    // a proposal the old leader did take is not applied twice).
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let attempt = remaining
                        .min((self.election_timeout * 2).max(MIN_FORWARD_ATTEMPT))
                        .max(Duration::from_millis(100));
                    self.call_leader::<_, ()>(leader, "/_cluster/propose", &proposal, attempt)
                        .await
                }
                other => other,
            };
            match attempt {
                Ok(()) => return,
                // Raft stopped by itself: no retry can succeed here; the callers learn it now.
                Err(_) if self.fault().is_some() => {
                    self.waiters
                        .forget(proposal.commands.iter().map(|(id, _)| *id));
                    return;
                }
                Err(error) if Instant::now() >= deadline => {
                    tracing::warn!(%error, commands = proposal.commands.len(), "proposal failed");
                    self.waiters
                        .forget(proposal.commands.iter().map(|(id, _)| *id));
                    return;
                }
                Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }

    /// Asks the leader over the peer network; its answer is `Result<T, ProposeError>`, and a
    /// request that does not get through is a `Failed` too.
    async fn call_leader<Req: Serialize, T: DeserializeOwned>(
        &self,
        leader: NodeId,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<T, ProposeError> {
        let addr = self
            .peer_addr(leader)
            .ok_or_else(|| ProposeError::Failed(format!("no address for node {leader}")))?;
        self.client
            .call::<_, Result<T, ProposeError>>(&addr, path, request, timeout)
            .await
            .map_err(|e| ProposeError::Failed(e.to_string()))?
    }

    /// Appends a proposal to the log if this node leads, and waits until it is applied here.
    pub async fn propose_here(&self, proposal: Proposal) -> Result<(), ProposeError> {
        self.raft
            .client_write(proposal)
            .await
            .map(|_| ())
            .map_err(ProposeError::from_raft)
    }

    /// The log index a linearizable read must see, if this node leads.
    pub async fn read_index_here(&self) -> Result<Option<u64>, ProposeError> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|log_id| log_id.map(|l| l.index))
            .map_err(ProposeError::from_raft)
    }

    /// Waits until this node has applied everything committed when the call began, as the
    /// leader confirms (openraft's read index). Local reads after it are linearizable.
    pub async fn linearizable_barrier(&self) -> Result<(), StoreError> {
        // The cause (raft's error: members, peer addresses) goes to the log, not to clients.
        let unavailable = |cause: String| {
            tracing::warn!(%cause, "a strong read could not be confirmed");
            StoreError::Unavailable(
                "The cluster cannot confirm a consistent read right now; retry.".into(),
            )
        };
        let index = match self.read_index_here().await {
            Ok(index) => index,
            Err(ProposeError::NotLeader {
                leader: Some(leader),
            }) => self
                .call_leader::<_, Option<u64>>(
                    leader,
                    "/_cluster/read-index",
                    &(),
                    self.write_timeout,
                )
                .await
                .map_err(|e| unavailable(e.to_string()))?,
            Err(error) => return Err(unavailable(error.to_string())),
        };
        if let Some(index) = index {
            self.raft
                .wait(Some(self.write_timeout))
                .applied_index_at_least(Some(index), "linearizable read")
                .await
                .map_err(|e| unavailable(e.to_string()))?;
        }
        Ok(())
    }

    /// For the leader: whether a quorum acknowledges it now (one heartbeat round, bounded
    /// by an election timeout). A leader cut off from its followers still believes it
    /// leads, but cannot commit a write. Other roles: true (see [`Cluster::has_leader`]).
    pub async fn leads_a_quorum(&self) -> bool {
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return true;
        }
        matches!(
            tokio::time::timeout(self.election_timeout, self.raft.ensure_linearizable()).await,
            Ok(Ok(_))
        )
    }

    /// Whether a leader was known within the last election timeout.
    pub fn has_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader.is_some()
            || self
                .leader_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
                < self.election_timeout
    }

    /// The state digest (see `StoreReader::digest`) with the applied index it is at.
    pub fn digest(&self) -> Result<Value, StoreError> {
        let applied = self.raft.metrics().borrow().last_applied.map(|l| l.index);
        let digest = self.store.read()?.digest()?;
        Ok(
            json!({ "node_id": self.node_id, "applied_index": applied, "digest": format!("{digest:016x}") }),
        )
    }

    /// The `cluster` object of `/health/`.
    pub fn status(&self) -> Value {
        let metrics = self.raft.metrics().borrow().clone();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let replication: Option<BTreeMap<String, Value>> = metrics.replication.as_ref().map(|r| {
            r.iter()
                .map(|(id, matched)| {
                    let matched = matched.map(|l| l.index).unwrap_or(0);
                    (
                        id.to_string(),
                        json!({
                            "matched_index": matched,
                            "lag": last_log_index.saturating_sub(matched),
                        }),
                    )
                })
                .collect()
        });
        json!({
            "node_id": self.node_id,
            "role": role,
            "leader_id": metrics.current_leader,
            "term": metrics.current_term,
            "last_log_index": last_log_index,
            "applied_index": metrics.last_applied.map(|l| l.index).unwrap_or(0),
            "snapshot_index": metrics.snapshot.map(|l| l.index),
            "purged_index": metrics.purged.map(|l| l.index),
            "members": self.members.keys().collect::<Vec<_>>(),
            "replication": replication,
        })
    }
}

impl CommandSubmitter for Cluster {
    fn submit(&self, command: Command) -> SubmitFuture<'_> {
        Box::pin(async move {
            let faulted = || {
                StoreError::Unavailable(
                    "This node stopped taking writes after a storage error; it is restarting."
                        .into(),
                )
            };
            if self.fault().is_some() {
                return Err(faulted());
            }
            let sequence = self.next_request.fetch_add(1, Ordering::Relaxed);
            let id = RequestId((u128::from(self.nonce) << 64) | u128::from(sequence));
            let applied = self.waiters.register(id);
            if self.queue.send((id, command)).await.is_err() {
                self.waiters.forget([id]);
                return Err(StoreError::WriterStopped);
            }
            match tokio::time::timeout(self.write_timeout, applied).await {
                Ok(Ok(result)) => Ok(result),
                Ok(Err(_)) if self.fault().is_some() => Err(faulted()),
                Ok(Err(_)) => Err(StoreError::Unavailable(
                    "No leader could take the write in time; retry.".into(),
                )),
                Err(_) => {
                    self.waiters.forget([id]);
                    Err(StoreError::Unavailable(
                        "The write was not applied in time; retry (with an Idempotency-Key for orders).".into(),
                    ))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    #[test]
    fn a_snapshot_waits_for_enough_entries() {
        assert!(!snapshot_due(4_999, 5_000, u64::MAX, 0));
        assert!(snapshot_due(5_000, 5_000, 0, 0));
    }

    #[test]
    fn a_large_state_waits_for_half_its_size_in_new_log() {
        let state = 300 << 20;
        assert!(!snapshot_due(1_000_000, 5_000, (150 << 20) - 1, state));
        assert!(snapshot_due(1_000_000, 5_000, 150 << 20, state));
    }

    #[test]
    fn zero_entries_is_taken_as_one() {
        assert!(!snapshot_due(0, 0, 0, 0));
        assert!(snapshot_due(1, 0, 0, 0));
    }
}
