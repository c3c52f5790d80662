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
pub use snapshot::SnapshotFile;
pub(crate) use snapshot::{StateVisitor, visit_state};
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

/// Runs blocking redb work on the blocking pool, mapping its failure to openraft's error.
pub(crate) async fn run_blocking<S, T>(
    owner: S,
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    work: impl FnOnce(&S) -> Result<T, crate::error::StoreError> + Send + 'static,
) -> Result<T, RaftStorageError>
where
    S: Send + 'static,
    T: Send + 'static,
{
    let source = match tokio::task::spawn_blocking(move || work(&owner)).await {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(error)) => openraft::AnyError::new(&error),
        Err(join) => openraft::AnyError::error(join),
    };
    Err(storage_error(subject, verb, source))
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
