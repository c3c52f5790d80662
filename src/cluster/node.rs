//! [`Cluster`]: the state of this node's member of the cluster.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::Raft;
use store::raft::{NodeId, RaftConfig, RequestId};
use store::{Command, Store};
use tokio::sync::mpsc;

use super::network::PeerClient;
use super::runtime::ClusterRuntime;
use super::waiters::Waiters;
use crate::config::ClusterMember;

/// This node's member of the cluster: raft, the proposer's queue, the callers waiting for
/// their commands, and what health reports. Its behaviour is in the files beside this one:
/// `start.rs` (start, initialize, stop), `proposer.rs`, `health.rs`, `snapshot.rs`,
/// `membership.rs`.
pub struct Cluster {
    pub node_id: NodeId,
    pub(super) store: Arc<Store>,
    pub raft: Raft<RaftConfig>,
    pub secret: String,
    pub(super) members: BTreeMap<NodeId, ClusterMember>,
    pub(super) client: PeerClient,
    pub(super) waiters: Arc<Waiters>,
    pub(super) queue: mpsc::Sender<(RequestId, Command)>,
    pub(super) nonce: u64,
    pub(super) next_request: AtomicU64,
    pub(super) write_timeout: Duration,
    pub(super) election_timeout: Duration,
    pub(super) leader_seen: Mutex<Instant>,
    /// Set by [`Cluster::shutdown`]: raft stopping from then on is no fault.
    pub(super) stopping: std::sync::atomic::AtomicBool,
    /// Why raft stopped by itself (a storage error, such as a full disk): the node can no
    /// longer take writes and must be restarted.
    pub(super) fault: Mutex<Option<String>>,
    pub(super) fault_seen: tokio::sync::Notify,
    /// A read replica: a learner never promoted (recorded with its addresses).
    pub read_only: bool,
    /// Set once the leader removed this node (see `Cluster::removed_from_cluster`).
    pub(super) removed: std::sync::atomic::AtomicBool,
    /// Where raft, the peer network and the proposer run (see `ClusterRuntime`).
    pub(super) runtime: ClusterRuntime,
    /// When the leader's last append (or heartbeat) came; `None`: never.
    pub(super) leader_contact: Mutex<Option<Instant>>,
    /// Since when this node leads; `None`: it does not.
    pub(super) leader_since: Mutex<Option<Instant>>,
    /// Set while this node hands leadership over before it stops: new proposals wait.
    pub(super) handing_off: std::sync::atomic::AtomicBool,
    /// Proposals inside `client_write` here now (the hand-off waits for them).
    pub(super) proposing: std::sync::atomic::AtomicUsize,
}
