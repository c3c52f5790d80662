//! A planned stop of the leader (SIGTERM) hands leadership over first, so that writes pause
//! for less than an election timeout instead of waiting for the others to notice the
//! leader gone: the leader stops taking new proposals (the proposer retries them, and
//! forwards them once another node leads), waits until a voter has its whole log (openraft's
//! replication metrics), asks that voter to campaign at once (`/_cluster/campaign`, behind
//! the cluster secret: `raft.trigger().elect()`), and waits until it no longer leads.
//!
//! openraft 0.9 has no leadership transfer. A follower refuses votes while the leader's
//! lease (`election_timeout_max` since it last heard from the leader) runs, but the leader
//! itself grants a vote to a candidate with its whole log once its own vote is older than
//! the lease (it was elected longer ago than that): with the leader's vote and its own, the
//! candidate has a majority of three. A leader elected more recently waits for that first.

use std::sync::atomic::Ordering;
use std::time::Instant;

use openraft::ServerState;
use store::raft::NodeId;

use super::node::Cluster;
use super::proposer::ProposeError;

impl Cluster {
    /// Whether this node is handing leadership over (new proposals wait meanwhile).
    pub(super) fn handing_off(&self) -> bool {
        self.handing_off.load(Ordering::SeqCst)
    }

    /// Asked by the leader that hands over: campaign at once.
    pub(super) async fn campaign(&self) -> Result<(), ProposeError> {
        tracing::info!("campaigning at the leader's request (leadership hand-off)");
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| ProposeError::Failed(e.to_string()))
    }

    /// The voter other than this node whose replicated log reaches this node's last index,
    /// if any (the lowest id of those).
    fn up_to_date_voter(&self) -> Option<NodeId> {
        let metrics = self.raft.metrics().borrow().clone();
        let last = metrics.last_log_index?;
        let replication = metrics.replication.as_ref()?;
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.node_id)
            .find(|id| {
                replication
                    .get(id)
                    .and_then(|matched| matched.map(|l| l.index))
                    == Some(last)
            })
    }

    fn leads(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// On a planned stop: if this node leads a cluster of more than one voter, hands
    /// leadership to an up-to-date voter and returns it once this node sees it lead.
    /// Bounded: after about four election timeouts it gives up (the others then elect a
    /// leader the usual way once this node stops). New proposals here wait from the start
    /// (they are retried and forwarded to the new leader).
    pub async fn hand_off_leadership(&self) -> Option<NodeId> {
        let voters = {
            let metrics = self.raft.metrics().borrow().clone();
            if metrics.state != ServerState::Leader {
                return None;
            }
            metrics.membership_config.membership().voter_ids().count()
        };
        if voters < 2 {
            return None;
        }
        self.handing_off.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let deadline = started + self.election_timeout * 4;
        // The leader's own vote must be older than the lease to grant the target's.
        let lease = self.election_timeout * 2;
        let since_elected = self.leader_since().map_or(lease, |at| at.elapsed());
        let lease_wait = lease.saturating_sub(since_elected);
        tokio::time::sleep(lease_wait).await;
        let mut metrics = self.raft.metrics();
        // No proposal reaches the log from now on; those already on their way finish. Then
        // a voter with the whole log (else its vote request is refused).
        let target = loop {
            if !self.leads() {
                return None;
            }
            if self.proposing.load(Ordering::SeqCst) == 0
                && let Some(target) = self.up_to_date_voter()
            {
                break target;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!("leadership hand-off: no voter caught up in time; stopping without");
                return None;
            }
            let step = left.min(std::time::Duration::from_millis(10));
            let _ = tokio::time::timeout(step, metrics.changed()).await;
        };
        let caught_up = started.elapsed();
        let me = self.node_id;
        let another_leads = |m: &openraft::RaftMetrics<NodeId, store::raft::RaftNode>| {
            m.current_leader.is_some_and(|l| l != me)
        };
        let mut asked = 0;
        while !another_leads(&self.raft.metrics().borrow()) && Instant::now() < deadline {
            if asked < 2 {
                asked += 1;
                let campaign = self.call_leader::<_, ()>(
                    target,
                    "/_cluster/campaign",
                    &(),
                    self.election_timeout,
                );
                if let Err(error) = campaign.await {
                    tracing::warn!(target, %error, "leadership hand-off: the target did not campaign");
                }
            }
            let wait = self
                .election_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let _ = self
                .raft
                .wait(Some(wait))
                .metrics(another_leads, "leadership handed over")
                .await;
        }
        let leader = self.raft.metrics().borrow().current_leader;
        if leader != Some(target) {
            tracing::warn!(
                target,
                ?leader,
                "leadership hand-off: the target does not lead; stopping without"
            );
            return None;
        }
        tracing::info!(
            target,
            lease_wait_ms = lease_wait.as_millis() as u64,
            caught_up_ms = caught_up.saturating_sub(lease_wait).as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "leadership handed to node {target}"
        );
        Some(target)
    }
}
