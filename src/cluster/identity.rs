//! A node never reuses an identity whose log it lost. A member of a multi-node cluster that
//! starts with no raft state at all (an empty or wiped data directory, or a restored backup)
//! asks its peers, before it serves its own peer address, whether they already have a
//! cluster with its id as a member; if one does, it refuses to start and says how to rejoin.
//! A vote and a log it acknowledged are gone, so voting again under that id could elect a
//! leader that lacks committed entries.
//!
//! A first start of a new cluster still works: every member is empty, none has initialized
//! (the lowest id initializes only once every member answers its peer address, which a
//! member serves only after this check). A restart with data asks nobody, so peers that are
//! down do not slow it. Peers that do not answer are passed over: when none answers, the
//! node starts (it cannot tell a first start from a lost log without them).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use store::Store;
use store::raft::NodeId;

use super::config::ClusterError;
use super::network::PeerClient;
use super::node::Cluster;
use crate::config::ClusterMember;

/// How long a peer has to answer the check.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// A member's view of the cluster, answered on the peer address's `/_cluster/identity`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MemberView {
    pub node_id: NodeId,
    /// Whether this member has a cluster (a membership in its log).
    pub initialized: bool,
    /// Voters and learners of its current membership.
    pub members: Vec<NodeId>,
    pub last_log_index: u64,
}

impl Cluster {
    pub(super) async fn member_view(&self) -> MemberView {
        let metrics = self.raft.metrics().borrow().clone();
        let members = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        MemberView {
            node_id: self.node_id,
            initialized: self.raft.is_initialized().await.unwrap_or(false),
            members,
            last_log_index: metrics.last_log_index.unwrap_or(0),
        }
    }
}

/// Refuses to start node `node_id` when its store has no raft state while a peer has a
/// cluster with it as a member (see the module's notes).
pub(super) async fn refuse_lost_identity(
    node_id: NodeId,
    members: &BTreeMap<NodeId, ClusterMember>,
    store: &Store,
    secret: &str,
    data_dir: &std::path::Path,
) -> Result<(), ClusterError> {
    if members.len() < 2 {
        return Ok(());
    }
    let fresh = store::raft::raft_state_is_empty(store)
        .map_err(|e| ClusterError::Raft(format!("cannot read the raft state: {e}")))?;
    if !fresh {
        return Ok(());
    }
    tracing::info!(
        node_id,
        "no raft state: asking the peers whether this id has a log"
    );
    // A client of its own: the cluster's runs on the cluster's runtime.
    let own_ip = members.get(&node_id).and_then(|m| m.peer).map(|a| a.ip());
    let client = PeerClient::new(secret.to_owned(), own_ip);
    let asks = members
        .iter()
        .filter(|(id, _)| **id != node_id)
        .filter_map(|(id, member)| member.peer.map(|addr| (*id, addr.to_string())))
        .map(|(id, addr)| {
            let client = client.clone();
            async move {
                let view: Result<MemberView, _> = client
                    .call(&addr, "/_cluster/identity", &(), ASK_TIMEOUT)
                    .await;
                (id, view)
            }
        });
    let tasks: Vec<_> = asks.map(tokio::spawn).collect();
    for task in tasks {
        let Ok((peer, view)) = task.await else {
            continue;
        };
        match view {
            Ok(view) if view.initialized && view.members.contains(&node_id) => {
                return Err(ClusterError::IdentityLost {
                    node_id,
                    peer,
                    log_index: view.last_log_index,
                    data_dir: data_dir.display().to_string(),
                });
            }
            Ok(_) => {}
            Err(error) => {
                tracing::info!(peer, %error, "cannot ask a peer whether this node's id has a log");
            }
        }
    }
    Ok(())
}
