//! The cluster's configuration: its members (the `[cluster]` nodes, or this node alone),
//! openraft's settings, and [`ClusterError`], what can stop the cluster from starting.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use openraft::SnapshotPolicy;
use store::raft::NodeId;

use crate::config::{ClusterConfig, ClusterMember, Config};

/// Log entries in one append sent to a follower.
const MAX_ENTRIES_PER_APPEND: u64 = 32;

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
    #[error("cannot join the cluster through {url}: {reason}")]
    Join { url: String, reason: String },
    #[error(
        "node {0} is in no cluster: its store has no membership. Give --join URL (any \
         member's API) to join a running cluster as this node; a node that was a member and \
         lost its data joins again the same way once removed (soundwave cluster remove ID)"
    )]
    NotAMember(NodeId),
    #[error("cannot start the cluster's runtime: {0}")]
    Runtime(std::io::Error),
    #[error(
        "node {node_id} starts with no raft state in {data_dir}, but node {peer} has a cluster \
         with node {node_id} as a member (its log is at index {log_index}): this node lost the \
         vote and log it had acknowledged and must not vote or join as node {node_id} again. \
         To rejoin: give it back its data directory if you still have it; otherwise, on a \
         running member, `soundwave cluster remove {node_id}`, empty {data_dir}, and start it \
         with `soundwave node --join http://MEMBER_API --node-id {node_id} ...`"
    )]
    IdentityLost {
        node_id: NodeId,
        peer: NodeId,
        log_index: u64,
        data_dir: String,
    },
    #[error("cannot listen for peers on {addr}: {source}")]
    PeerListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The members: the `[cluster]` nodes, or this node alone when there are none. This node
/// must be one of them, and several need a secret.
pub(super) fn members(config: &Config) -> Result<BTreeMap<NodeId, ClusterMember>, ClusterError> {
    let node_id = config.node.id;
    let members: BTreeMap<NodeId, ClusterMember> = if config.cluster.nodes.is_empty() {
        BTreeMap::from([(
            node_id,
            ClusterMember {
                id: node_id,
                api: config.node.listen,
                peer: config.cluster.peer_listen,
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
    let has_peers = members.len() > 1 || config.cluster.peer_listen.is_some();
    if has_peers && config.cluster.secret.is_empty() {
        return Err(ClusterError::MissingSecret(members.len()));
    }
    Ok(members)
}

/// openraft's settings from the `[cluster]` section.
pub(super) fn raft_config(settings: &ClusterConfig) -> Result<openraft::Config, ClusterError> {
    openraft::Config {
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
    .map_err(|e| ClusterError::RaftConfig(e.to_string()))
}
