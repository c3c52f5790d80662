//! Membership changes at runtime: a node joins as a learner (its addresses recorded by a
//! replicated `Command::RecordMember`, then openraft's `add_learner`), is promoted to voter
//! by the leader once its lag is small (etcd's way) unless it is read-only, and is removed
//! (a leader removing itself steps down); the members' view that `soundwave cluster status`
//! and the balancer's discovery read. Each request is served by the leader: any member
//! forwards it there over the peer network, as writes are.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use store::raft::NodeId;
use store::{Command, CommandSubmitter, MemberRecord};

use super::node::Cluster;

/// A learner is promoted once the leader's log is at most this many entries ahead of it.
const PROMOTE_MAX_LAG: u64 = 16;
/// How often the leader looks for learners to promote.
const PROMOTE_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long a member is given to answer the leader's questions for the members' view.
const MEMBER_QUESTION_TIMEOUT: Duration = Duration::from_millis(500);

/// A node asking to join: its id, where it listens, whether it stays a learner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: NodeId,
    /// Its API address, as clients and the balancer reach it.
    pub api: String,
    /// Its peer address (raft).
    pub peer: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Why a membership request was not done.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error(
        "node {id} is already a member with peer address {peer}{}; choose another id, or \
         remove it first (soundwave cluster remove {id})",
        if *.live { ", and it answers" } else { " (not answering)" }
    )]
    IdTaken {
        id: NodeId,
        peer: String,
        live: bool,
    },
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

impl MembershipError {
    fn from_raft(error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Self {
        match error.forward_to_leader() {
            Some(forward) => MembershipError::NotLeader {
                leader: forward.leader_id,
            },
            None => MembershipError::Failed(error.to_string()),
        }
    }
}

/// One member in the members' view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    /// `voter` or `learner`.
    pub role: String,
    pub read_only: bool,
    /// Its API address, when recorded.
    pub api: Option<String>,
    pub peer: String,
    /// The last log index the leader knows this member holds.
    pub matched_index: Option<u64>,
    /// The last index this member applied, as it answered (none: it did not answer).
    pub applied_index: Option<u64>,
    /// The leader's last log index less `matched_index`.
    pub lag: Option<u64>,
}

/// The cluster's membership as the leader sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersView {
    pub leader_id: NodeId,
    pub term: u64,
    pub last_log_index: u64,
    pub members: Vec<MemberView>,
}

impl Cluster {
    /// The peer address of node `id`: from raft's membership (which joined nodes are in),
    /// else from the configuration.
    pub(super) fn peer_addr(&self, id: NodeId) -> Option<String> {
        let known = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|node| node.addr.clone())
            .filter(|addr| !addr.is_empty());
        known.or_else(|| {
            self.members
                .get(&id)
                .and_then(|m| m.peer)
                .map(|a| a.to_string())
        })
    }

    /// The ids of raft's current membership (voters and learners).
    pub(super) fn member_ids(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    }

    /// `Err(NotLeader)` unless this node leads.
    fn must_lead(&self) -> Result<(), MembershipError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state == ServerState::Leader {
            Ok(())
        } else {
            Err(MembershipError::NotLeader {
                leader: metrics.current_leader,
            })
        }
    }

    /// Runs a membership request here if this node leads, else on the leader (`path` of the
    /// peer API, which calls the same `*_here` method there).
    async fn on_leader<Req, T, Fut>(
        &self,
        path: &str,
        request: Req,
        here: impl FnOnce(Req) -> Fut,
    ) -> Result<T, MembershipError>
    where
        Req: Serialize + Clone,
        T: DeserializeOwned,
        Fut: std::future::Future<Output = Result<T, MembershipError>>,
    {
        match here(request.clone()).await {
            Err(MembershipError::NotLeader {
                leader: Some(leader),
            }) if leader != self.node_id => {
                let addr = self.peer_addr(leader).ok_or_else(|| {
                    MembershipError::Failed(format!("no address for the leader, node {leader}"))
                })?;
                self.client
                    .call::<_, Result<T, MembershipError>>(
                        &addr,
                        path,
                        &request,
                        self.write_timeout,
                    )
                    .await
                    .map_err(|e| MembershipError::Failed(e.to_string()))?
            }
            other => other,
        }
    }

    /// Adds a node as a learner, through the leader; the leader's last log index then, which
    /// the new node has caught up with once it applied that far.
    pub async fn join(&self, request: JoinRequest) -> Result<u64, MembershipError> {
        self.on_leader("/_cluster/join", request, |r| self.join_here(r))
            .await
    }

    /// Removes a member, through the leader.
    pub async fn remove(&self, id: NodeId) -> Result<(), MembershipError> {
        self.on_leader("/_cluster/remove", id, |id| self.remove_here(id))
            .await
    }

    /// The members' view, from the leader.
    pub async fn members_view(&self) -> Result<MembersView, MembershipError> {
        self.on_leader("/_cluster/members", (), |()| self.members_view_here())
            .await
    }

    /// On the leader: records the joining node's addresses, then adds it as a learner
    /// (returning once that membership is committed; replication to it has begun). The same
    /// node asking again (a restart that still says --join) changes nothing.
    pub async fn join_here(&self, request: JoinRequest) -> Result<u64, MembershipError> {
        for (what, addr) in [("api", &request.api), ("peer", &request.peer)] {
            match addr.parse::<std::net::SocketAddr>() {
                Ok(addr) if addr.port() != 0 && !addr.ip().is_unspecified() => {}
                _ => {
                    return Err(MembershipError::Refused(format!(
                        "the {what} address {addr:?} must be a concrete IP:PORT"
                    )));
                }
            }
        }
        self.must_lead()?;
        let existing = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&request.id)
            .cloned();
        if let Some(node) = &existing
            && node.addr != request.peer
        {
            let live = self.client.ping(&node.addr).await;
            return Err(MembershipError::IdTaken {
                id: request.id,
                peer: node.addr.clone(),
                live,
            });
        }
        let record = MemberRecord {
            id: request.id,
            api: request.api.clone(),
            peer: request.peer.clone(),
            read_only: request.read_only,
        };
        match self.submit(Command::RecordMember(record)).await {
            Ok(Ok(_)) => {}
            Ok(Err(rejection)) => return Err(MembershipError::Refused(rejection.to_string())),
            Err(error) => return Err(MembershipError::Failed(error.to_string())),
        }
        if existing.is_none() {
            self.raft
                .add_learner(
                    request.id,
                    BasicNode {
                        addr: request.peer.clone(),
                    },
                    false,
                )
                .await
                .map_err(MembershipError::from_raft)?;
            tracing::info!(node = request.id, peer = %request.peer, api = %request.api,
                read_only = request.read_only, "node joined as a learner");
        }
        Ok(self.raft.metrics().borrow().last_log_index.unwrap_or(0))
    }

    /// On the leader: removes a voter or a learner, then tells it (best effort) so that it
    /// stops. The last voter cannot be removed.
    pub async fn remove_here(&self, id: NodeId) -> Result<(), MembershipError> {
        self.must_lead()?;
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let Some(node) = membership.get_node(&id).cloned() else {
            return Err(MembershipError::NotMember(id));
        };
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(MembershipError::Refused(format!(
                    "node {id} is the last voter; a cluster cannot remove its last voter"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(MembershipError::from_raft)?;
        tracing::info!(node = id, "node removed from the cluster");
        if id == self.node_id {
            self.removed_from_cluster();
        } else {
            let told: Result<(), _> = self
                .client
                .call(
                    &node.addr,
                    "/_cluster/removed",
                    &(),
                    MEMBER_QUESTION_TIMEOUT,
                )
                .await;
            if let Err(error) = told {
                tracing::info!(node = id, %error, "the removed node was not told; stop it by hand");
            }
        }
        Ok(())
    }

    /// This node was removed: it stops serving (as after a fault: `/health/` 503, then the
    /// process ends), since no leader replicates to it any more.
    pub(super) fn removed_from_cluster(&self) {
        tracing::warn!(
            "this node was removed from the cluster; it stops. To serve again it must join \
             anew, with an empty data directory (soundwave node --join URL ...)"
        );
        self.removed.store(true, Ordering::SeqCst);
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) =
            Some("removed from the cluster".to_owned());
        self.fault_seen.notify_waiters();
    }

    /// Whether this node was removed from the cluster.
    pub fn was_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// On the leader: every member with its role, addresses and replication.
    pub async fn members_view_here(&self) -> Result<MembersView, MembershipError> {
        self.must_lead()?;
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let records: BTreeMap<NodeId, MemberRecord> = self
            .store
            .read()
            .and_then(|reader| reader.members())
            .map_err(|e| MembershipError::Failed(e.to_string()))?
            .into_iter()
            .map(|record| (record.id, record))
            .collect();
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let mut members = Vec::new();
        for (&id, node) in membership.nodes() {
            let matched = match &metrics.replication {
                Some(replication) if id != self.node_id => {
                    replication.get(&id).and_then(|m| m.map(|l| l.index))
                }
                _ => metrics.last_log_index,
            };
            let applied = if id == self.node_id {
                metrics.last_applied.map(|l| l.index)
            } else {
                self.client
                    .call::<_, Option<u64>>(
                        &node.addr,
                        "/_cluster/applied",
                        &(),
                        MEMBER_QUESTION_TIMEOUT,
                    )
                    .await
                    .ok()
                    .flatten()
            };
            let record = records.get(&id);
            members.push(MemberView {
                id,
                role: if voters.contains(&id) {
                    "voter"
                } else {
                    "learner"
                }
                .to_owned(),
                read_only: record.is_some_and(|r| r.read_only),
                api: record
                    .map(|r| r.api.clone())
                    .or_else(|| self.members.get(&id).map(|m| m.api.to_string())),
                peer: node.addr.clone(),
                matched_index: matched,
                applied_index: applied,
                lag: matched.map(|m| last_log_index.saturating_sub(m)),
            });
        }
        Ok(MembersView {
            leader_id: self.node_id,
            term: metrics.current_term,
            last_log_index,
            members,
        })
    }

    /// While this node leads: promotes every learner that is not read-only once the leader's
    /// log is at most `PROMOTE_MAX_LAG` entries ahead of it, one change at a time.
    pub(super) async fn promote_caught_up_learners(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PROMOTE_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let metrics = self.raft.metrics().borrow().clone();
            if metrics.state != ServerState::Leader {
                continue;
            }
            let membership = metrics.membership_config.membership();
            if membership.get_joint_config().len() > 1 {
                continue; // a change is under way
            }
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let learners: Vec<NodeId> = membership
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| !voters.contains(id))
                .collect();
            if learners.is_empty() {
                continue;
            }
            let Ok(records) = self.store.read().and_then(|r| r.members()) else {
                continue;
            };
            let last_log_index = metrics.last_log_index.unwrap_or(0);
            for id in learners {
                // A learner without a record was not added by a join: left as it is.
                let promotable = records.iter().any(|r| r.id == id && !r.read_only);
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|l| l.index);
                let caught_up =
                    matched.is_some_and(|m| last_log_index.saturating_sub(m) <= PROMOTE_MAX_LAG);
                if !promotable || !caught_up {
                    continue;
                }
                match self
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                {
                    Ok(_) => tracing::info!(node = id, "learner caught up: promoted to voter"),
                    Err(error) => tracing::info!(node = id, %error, "promotion not done yet"),
                }
                break;
            }
        }
    }

    /// Records this node's own addresses (once a leader takes the write) when the store's
    /// record differs: members of `[[cluster.nodes]]` record themselves at their first
    /// start, and a node restarted with or without --read-only updates its flag.
    pub(super) async fn record_self(self: Arc<Self>, api: String, peer: String) {
        let record = MemberRecord {
            id: self.node_id,
            api,
            peer,
            read_only: self.read_only,
        };
        loop {
            if self.stopping.load(Ordering::SeqCst) || self.fault().is_some() {
                return;
            }
            let recorded = self
                .store
                .read()
                .and_then(|r| r.members())
                .map(|members| members.contains(&record));
            if matches!(recorded, Ok(true)) {
                return;
            }
            match self.submit(Command::RecordMember(record.clone())).await {
                Ok(_) => return,
                Err(error) => {
                    tracing::debug!(%error, "this node's addresses are not recorded yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
