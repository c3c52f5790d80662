//! The store as a replicated state machine: openraft's log, vote and state machine kept in
//! the node's own redb file, applying the same [`Command`]s with the same
//! [`apply_command`](crate::apply) as a single node, a whole batch of entries per write
//! transaction.

mod log_store;
mod snapshot;
mod state_machine;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::apply::ChangeSet;
use crate::command::{Command, CommandOutcome, Rejection};

pub use log_store::LogStore;
pub use snapshot::{
    BackupMeta, CheckedBackup, SnapshotFile, check_backup, raft_state_is_empty, restore_backup,
    write_backup,
};
pub use state_machine::StateMachine;

/// Identifies one client command across forwarding and retries, so the state machine can
/// apply it at most once. Made by the node that took the request (a random per-process
/// nonce and a counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u128);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The payload of one log entry: commands from many clients, proposed together so that they
/// share a log append and a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub commands: Vec<(RequestId, Command)>,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal of {} commands", self.commands.len())
    }
}

/// What the state machine answers to openraft for an entry. Results of the commands go to
/// the node's [`AppliedSink`] instead, on every node, so each node answers its own clients
/// from its own state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryApplied;

openraft::declare_raft_types!(
    /// Soundwave's openraft type configuration.
    pub RaftConfig:
        D = Proposal,
        R = EntryApplied,
        SnapshotData = SnapshotFile,
);

pub type NodeId = u64;
pub type RaftNode = openraft::BasicNode;
pub type RaftEntry = openraft::Entry<RaftConfig>;
pub type RaftLogId = openraft::LogId<NodeId>;
pub type RaftStorageError = openraft::StorageError<NodeId>;

/// Log entries carrying at most this many commands are appended and applied right on raft's
/// thread; larger ones go to the blocking pool (see [`Place`]).
pub(crate) const INLINE_COMMANDS: usize = 128;

/// Where a piece of redb work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// On the calling task, which is raft's own thread: for short commits that do not wait
    /// for the disk (a small append or apply, the commit point). Sending them to the pool
    /// and back costs two thread wake-ups, and when reads keep every core busy each is a
    /// wait in the run queue: on 2 cores under `mixed`, a write's round on the leader took
    /// 8.0-9.3 ms with these hops and 5.6-7.4 ms without. It may wait for redb's write
    /// lock while another commit holds it: a flush (one fsync) or a big batch's apply.
    Here,
    /// On the blocking pool: flushes, votes, truncations and purges, snapshots, big batches,
    /// so that raft goes on replicating meanwhile.
    BlockingPool,
}

impl Place {
    /// `Here` for entries carrying at most [`INLINE_COMMANDS`] commands in all.
    pub(crate) fn for_entries(entries: &[RaftEntry]) -> Place {
        let commands: usize = entries
            .iter()
            .map(|entry| match &entry.payload {
                openraft::EntryPayload::Normal(proposal) => proposal.commands.len(),
                _ => 1,
            })
            .sum();
        if commands <= INLINE_COMMANDS {
            Place::Here
        } else {
            Place::BlockingPool
        }
    }
}

/// Runs redb work where `place` says, mapping its failure to openraft's error.
pub(crate) async fn run_storage<S, T>(
    owner: S,
    place: Place,
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    work: impl FnOnce(&S) -> Result<T, crate::error::StoreError> + Send + 'static,
) -> Result<T, RaftStorageError>
where
    S: Send + 'static,
    T: Send + 'static,
{
    let outcome = match place {
        Place::Here => work(&owner),
        Place::BlockingPool => match tokio::task::spawn_blocking(move || work(&owner)).await {
            Ok(outcome) => outcome,
            Err(join) => {
                return Err(storage_error(
                    subject,
                    verb,
                    openraft::AnyError::error(join),
                ));
            }
        },
    };
    outcome.map_err(|error| storage_error(subject, verb, openraft::AnyError::new(&error)))
}

/// openraft's error for a failed storage operation.
pub(crate) fn storage_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    source: openraft::AnyError,
) -> RaftStorageError {
    openraft::StorageError::IO {
        source: openraft::StorageIOError::new(subject, verb, source),
    }
}

/// Told, after each committed apply, of every command's result and of what changed.
pub trait AppliedSink: Send + Sync {
    fn applied(
        &self,
        results: Vec<(RequestId, Result<CommandOutcome, Rejection>)>,
        changes: &ChangeSet,
    );
}

/// An [`AppliedSink`] that drops the results: for tools and tests that apply entries with
/// nobody waiting for them.
pub struct DiscardResults;

impl AppliedSink for DiscardResults {
    fn applied(
        &self,
        _results: Vec<(RequestId, Result<CommandOutcome, Rejection>)>,
        _changes: &ChangeSet,
    ) {
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use openraft::{Entry, EntryPayload};

    use super::*;
    use crate::apply::tests::category;

    fn proposal(index: u64, commands: usize) -> RaftEntry {
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Proposal {
                commands: (0..commands)
                    .map(|n| (RequestId(n as u128), category("drums")))
                    .collect(),
            }),
        }
    }

    #[test]
    fn small_batches_run_here_and_big_ones_on_the_pool() {
        let blank = Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Blank,
        };
        assert_eq!(
            Place::for_entries(std::slice::from_ref(&blank)),
            Place::Here
        );
        assert_eq!(
            Place::for_entries(&[proposal(2, INLINE_COMMANDS)]),
            Place::Here
        );
        assert_eq!(
            Place::for_entries(&[proposal(2, INLINE_COMMANDS + 1)]),
            Place::BlockingPool
        );
        // Commands are counted over all the entries of one call, blanks as one each.
        assert_eq!(
            Place::for_entries(&[blank, proposal(2, INLINE_COMMANDS)]),
            Place::BlockingPool
        );
    }
}
