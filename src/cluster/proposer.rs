//! The proposer: commands submitted on this node are queued, drained into proposals (one
//! log entry each, a few in flight), and got into the log here or through the leader;
//! linearizable reads through the leader's read index. [`Cluster`] is the node's
//! `CommandSubmitter`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::TryAsRef;
use openraft::error::{ForwardToLeader, RaftError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use store::raft::{NodeId, Proposal, RaftNode, RequestId};
use store::{Command, CommandSubmitter, StoreError, SubmitFuture};
use tokio::sync::{Semaphore, mpsc};

use super::node::Cluster;

/// Commands proposed together in one log entry, at most.
const MAX_PROPOSAL_COMMANDS: usize = 1024;
/// Media bytes (product images) one log entry carries, at most, unless one command alone
/// carries more (an image at the upload limit). openraft gives an append one heartbeat
/// interval to complete: an entry of a few MiB is replicated within it, one of tens of
/// MiB was not; appends of several such entries are split by the network
/// (`PayloadTooLarge`).
const MAX_PROPOSAL_MEDIA_BYTES: usize = 4 * 1024 * 1024;
/// Proposals in flight at once, at most.
const MAX_PROPOSALS_IN_FLIGHT: usize = 8;
/// Proposals in flight at once that are not full: one more waits, and grows meanwhile.
/// Every proposal costs each node an append, a flush and an apply whatever its size, so
/// under write load fewer, larger proposals cost less CPU and wait less (40 concurrent
/// buyers on three nodes: 3,109 orders/s, p99 24 ms with 8 in flight; 3,300-4,100/s, p99
/// 17-21 ms with 2 or 1). A full proposal cannot grow by waiting: bulk writes (the demo's
/// seeding) keep up to `MAX_PROPOSALS_IN_FLIGHT` in flight.
const MAX_PARTIAL_PROPOSALS_IN_FLIGHT: usize = 2;
/// Commands waiting to be proposed before submitters wait for room.
pub(super) const QUEUE_DEPTH: usize = 16_384;
/// Pause between attempts while there is no leader.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// The shortest wait for the leader's answer to one forwarded proposal.
const MIN_FORWARD_ATTEMPT: Duration = Duration::from_millis(500);

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

/// One proposal inside `propose_here`, counted in `Cluster::proposing` while it lasts.
struct ProposingHere<'a>(&'a Cluster);

impl<'a> ProposingHere<'a> {
    fn enter(cluster: &'a Cluster) -> Self {
        cluster.proposing.fetch_add(1, Ordering::SeqCst);
        ProposingHere(cluster)
    }
}

impl Drop for ProposingHere<'_> {
    fn drop(&mut self) {
        self.0.proposing.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Cluster {
    /// Drains queued commands into proposals, a few in flight at once.
    pub(super) async fn run_proposer(
        self: Arc<Self>,
        mut incoming: mpsc::Receiver<(RequestId, Command)>,
    ) {
        let any = Arc::new(Semaphore::new(MAX_PROPOSALS_IN_FLIGHT));
        let partial = Arc::new(Semaphore::new(MAX_PARTIAL_PROPOSALS_IN_FLIGHT));
        // A command that would take an entry's media past MAX_PROPOSAL_MEDIA_BYTES waits
        // here and starts the next proposal.
        let mut carried: Option<(RequestId, Command)> = None;
        let drain = |incoming: &mut mpsc::Receiver<(RequestId, Command)>,
                     commands: &mut Vec<(RequestId, Command)>,
                     carried: &mut Option<(RequestId, Command)>| {
            let mut media: usize = commands.iter().map(|(_, c)| c.media_bytes()).sum();
            while commands.len() < MAX_PROPOSAL_COMMANDS && carried.is_none() {
                match incoming.try_recv() {
                    Ok(next) => {
                        let more = next.1.media_bytes();
                        if more > 0 && media + more > MAX_PROPOSAL_MEDIA_BYTES {
                            *carried = Some(next);
                        } else {
                            media += more;
                            commands.push(next);
                        }
                    }
                    Err(_) => break,
                }
            }
        };
        loop {
            let first = match carried.take() {
                Some(first) => first,
                None => match incoming.recv().await {
                    Some(first) => first,
                    None => break,
                },
            };
            let mut commands = vec![first];
            drain(&mut incoming, &mut commands, &mut carried);
            let full = commands.len() >= MAX_PROPOSAL_COMMANDS || carried.is_some();
            let partial_permit = if !full {
                let Ok(permit) = partial.clone().acquire_owned().await else {
                    return;
                };
                drain(&mut incoming, &mut commands, &mut carried);
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
    pub(super) async fn call_leader<Req: Serialize, T: DeserializeOwned>(
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
        // Counted before the flag is read: a hand-off that set the flag and then sees no
        // proposal here knows none will reach the log after.
        let _counted = ProposingHere::enter(self);
        if self.handing_off() {
            // Retried by the proposer, and forwarded once another node leads.
            return Err(ProposeError::NotLeader { leader: None });
        }
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
