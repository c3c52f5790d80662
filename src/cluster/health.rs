//! What the cluster reports about itself: whether a leader is known and leads a quorum,
//! raft stopping by itself (a fault: the node stops taking writes), `/health/`'s `cluster`
//! object and the state digest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use openraft::ServerState;
use serde_json::{Value, json};
use store::StoreError;

use super::node::Cluster;

/// A follower more log entries than this behind the leader's commit index is catching up:
/// not ready for clients. (An entry holds a batch of commands; a follower in step trails
/// by a few at most.)
pub const CATCHING_UP_ENTRIES: u64 = 32;

impl Cluster {
    /// Remembers when a leader was last known, for health; notices raft stopping by itself.
    pub(super) async fn watch_leader(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        loop {
            let (leader_known, stopped) = {
                let now = metrics.borrow();
                {
                    let mut since = self.leader_since.lock().unwrap_or_else(|e| e.into_inner());
                    match (now.state == ServerState::Leader, *since) {
                        (true, None) => *since = Some(Instant::now()),
                        (false, Some(_)) => *since = None,
                        _ => {}
                    }
                }
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

    /// Since when this node leads, if it does.
    pub(super) fn leader_since(&self) -> Option<Instant> {
        *self.leader_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes an append (or heartbeat) from the leader.
    pub(super) fn note_leader_contact(&self) {
        *self
            .leader_contact
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Whether this node is ready for clients, or why not: a leader is ready (whether a
    /// quorum follows it is checked apart); a follower or learner is not while it knows no
    /// leader, has heard nothing from the leader for an election timeout (its state may be
    /// old: it was frozen or cut off), or had applied less than the leader's commit index
    /// (its read index, asked now, within an election timeout) by more than
    /// [`CATCHING_UP_ENTRIES`] when asked.
    pub async fn readiness(&self) -> Result<(), String> {
        let (state, leader, applied) = {
            let metrics = self.raft.metrics();
            let now = metrics.borrow();
            (
                now.state,
                now.current_leader,
                now.last_applied.map_or(0, |l| l.index),
            )
        };
        if state == ServerState::Leader {
            return Ok(());
        }
        let Some(leader) = leader else {
            return Err("catching up: no leader known yet".to_owned());
        };
        let contact = *self
            .leader_contact
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(at) = contact else {
            return Err("catching up: no word from the leader yet".to_owned());
        };
        let silent = at.elapsed();
        if silent > self.election_timeout {
            return Err(format!(
                "catching up: no word from the leader for {} ms",
                silent.as_millis()
            ));
        }
        let asked = self.call_leader::<_, Option<u64>>(
            leader,
            "/_cluster/read-index",
            &(),
            self.election_timeout,
        );
        let commit = match asked.await {
            Ok(commit) => commit.unwrap_or(0),
            Err(error) => {
                return Err(format!(
                    "catching up: the leader did not tell its commit index: {error}"
                ));
            }
        };
        let behind = commit.saturating_sub(applied);
        if behind > CATCHING_UP_ENTRIES {
            return Err(format!(
                "catching up: applied index {applied} is {behind} entries behind the leader's \
                 commit index {commit}"
            ));
        }
        Ok(())
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
        let mut members = self.member_ids();
        if members.is_empty() {
            members = self.members.keys().copied().collect();
        }
        json!({
            "node_id": self.node_id,
            "role": role,
            "leader_id": metrics.current_leader,
            "term": metrics.current_term,
            "last_log_index": last_log_index,
            "applied_index": metrics.last_applied.map(|l| l.index).unwrap_or(0),
            "snapshot_index": metrics.snapshot.map(|l| l.index),
            "purged_index": metrics.purged.map(|l| l.index),
            "members": members,
            "read_only": self.read_only,
            "replication": replication,
        })
    }
}
