//! [`StateMachine`]: applies committed entries to the store with the same
//! [`apply_command`](crate::apply) as a single node, one write transaction per batch of
//! entries, and builds and installs snapshots.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StoredMembership};
use redb::{Durability, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::log_store::read_state;
use super::snapshot::{TableRows, dump_state, load_state};
use super::{
    AppliedSink, EntryApplied, NodeId, RaftConfig, RaftEntry, RaftLogId, RaftNode,
    RaftStorageError, run_blocking,
};
use crate::apply::{ChangeSet, WriteTables, apply_command};
use crate::db::Store;
use crate::error::StoreError;
use crate::tables::{APPLIED_REQUESTS, APPLIED_REQUESTS_BY_INDEX, RAFT_STATE, decode, encode};

const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";
/// Request ids are remembered for this many log entries after the one that applied them.
const REQUEST_MEMORY_ENTRIES: u64 = 200_000;
/// Most remembered request ids forgotten per applied batch.
const REQUEST_PRUNE_BATCH: usize = 4096;

type Membership = StoredMembership<NodeId, RaftNode>;

/// A snapshot as it is kept on disk and sent to other nodes.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, RaftNode>,
    tables: Vec<TableRows>,
}

#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    sink: Arc<dyn AppliedSink>,
    snapshot_path: PathBuf,
}

impl StateMachine {
    /// `snapshot_path` is where the latest snapshot is kept (beside the store file).
    pub fn new(store: Arc<Store>, sink: Arc<dyn AppliedSink>, snapshot_path: PathBuf) -> Self {
        StateMachine {
            store,
            sink,
            snapshot_path,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
        work: impl FnOnce(&StateMachine) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, RaftStorageError> {
        run_blocking(self.clone(), subject, verb, work).await
    }

    fn apply_entries(&self, entries: Vec<RaftEntry>) -> Result<Vec<EntryApplied>, StoreError> {
        let mut txn = self.store.db().begin_write()?;
        // The log is durable already: after a crash, entries past the last durable apply are
        // applied again from it, so this commit need not wait for the disk.
        txn.set_durability(Durability::None)?;
        let mut results = Vec::new();
        let mut changes = ChangeSet::default();
        let count = entries.len();
        {
            let mut tables = WriteTables::open(&txn)?;
            let mut requests = txn.open_table(APPLIED_REQUESTS)?;
            let mut requests_by_index = txn.open_table(APPLIED_REQUESTS_BY_INDEX)?;
            let mut state = txn.open_table(RAFT_STATE)?;
            let mut last_applied: Option<RaftLogId> = None;
            for entry in entries {
                let index = entry.log_id.index;
                last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(proposal) => {
                        for (request, command) in proposal.commands {
                            if requests.get(request.0)?.is_some() {
                                // A retry of a command applied before: never twice.
                                continue;
                            }
                            let result = apply_command(&mut tables, &command, &mut changes)?;
                            requests.insert(request.0, index)?;
                            requests_by_index.insert((index, request.0), ())?;
                            results.push((request, result));
                        }
                    }
                    EntryPayload::Membership(membership) => {
                        let stored = Membership::new(Some(entry.log_id), membership);
                        state.insert(MEMBERSHIP, encode(&stored)?.as_slice())?;
                    }
                }
            }
            if let Some(last) = last_applied {
                state.insert(LAST_APPLIED, encode(&last)?.as_slice())?;
                let horizon = last.index.saturating_sub(REQUEST_MEMORY_ENTRIES);
                let expired: Vec<(u64, u128)> = requests_by_index
                    .range(..(horizon, 0))?
                    .take(REQUEST_PRUNE_BATCH)
                    .map(|row| row.map(|(key, _)| key.value()))
                    .collect::<Result<_, _>>()?;
                for (index, request) in expired {
                    requests.remove(request)?;
                    requests_by_index.remove((index, request))?;
                }
            }
        }
        // Commits and brings the catalog index along before anyone is told.
        self.store.commit(txn, &changes)?;
        self.sink.applied(results, &changes);
        Ok(vec![EntryApplied; count])
    }

    fn applied_state_blocking(&self) -> Result<(Option<RaftLogId>, Membership), StoreError> {
        Ok((
            read_state(&self.store, LAST_APPLIED)?,
            read_state(&self.store, MEMBERSHIP)?.unwrap_or_default(),
        ))
    }

    fn write_snapshot_file(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let temporary = self.snapshot_path.with_extension("partial");
        std::fs::write(&temporary, bytes)
            .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
            .and_then(|()| std::fs::rename(&temporary, &self.snapshot_path))
            .map_err(|e| StoreError::WriteFailed(format!("cannot keep the snapshot: {e}")))
    }

    fn build_snapshot_blocking(&self) -> Result<Snapshot<RaftConfig>, StoreError> {
        let txn = self.store.db().begin_read()?;
        let state = txn.open_table(RAFT_STATE)?;
        let last_log_id: Option<RaftLogId> = state
            .get(LAST_APPLIED)?
            .map(|v| decode(v.value()))
            .transpose()?;
        let last_membership: Membership = state
            .get(MEMBERSHIP)?
            .map(|v| decode(v.value()))
            .transpose()?
            .unwrap_or_default();
        let tables = dump_state(&txn)?;
        let snapshot_id = match last_log_id {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let file = SnapshotFile { meta, tables };
        let bytes = encode(&file)?;
        self.write_snapshot_file(&bytes)?;
        Ok(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }

    fn install_snapshot_blocking(
        &self,
        meta: SnapshotMeta<NodeId, RaftNode>,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        let file: SnapshotFile = decode(&bytes)?;
        let mut txn = self.store.db().begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        load_state(&txn, &file.tables)?;
        {
            let mut state = txn.open_table(RAFT_STATE)?;
            match meta.last_log_id {
                Some(last) => {
                    state.insert(LAST_APPLIED, encode(&last)?.as_slice())?;
                }
                None => {
                    state.remove(LAST_APPLIED)?;
                }
            }
            state.insert(MEMBERSHIP, encode(&meta.last_membership)?.as_slice())?;
        }
        // A whole new state: the catalog index is built anew from it.
        self.store.commit(txn, &ChangeSet::everything())?;
        // Keep what was installed as this node's current snapshot, with the meta it came with.
        let kept = SnapshotFile {
            meta,
            tables: file.tables,
        };
        self.write_snapshot_file(&encode(&kept)?)?;
        self.sink.applied(Vec::new(), &ChangeSet::everything());
        Ok(())
    }

    fn current_snapshot_blocking(&self) -> Result<Option<Snapshot<RaftConfig>>, StoreError> {
        let bytes = match std::fs::read(&self.snapshot_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StoreError::WriteFailed(format!(
                    "cannot read the snapshot: {e}"
                )));
            }
        };
        let file: SnapshotFile = decode(&bytes)?;
        Ok(Some(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

impl RaftSnapshotBuilder<RaftConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<RaftConfig>, RaftStorageError> {
        self.blocking(ErrorSubject::Snapshot(None), ErrorVerb::Write, |machine| {
            machine.build_snapshot_blocking()
        })
        .await
    }
}

impl RaftStateMachine<RaftConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<RaftLogId>, Membership), RaftStorageError> {
        self.blocking(ErrorSubject::StateMachine, ErrorVerb::Read, |machine| {
            machine.applied_state_blocking()
        })
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<EntryApplied>, RaftStorageError>
    where
        I: IntoIterator<Item = RaftEntry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<RaftEntry> = entries.into_iter().collect();
        self.blocking(
            ErrorSubject::StateMachine,
            ErrorVerb::Write,
            move |machine| machine.apply_entries(entries),
        )
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, RaftNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let meta = meta.clone();
        let bytes = snapshot.into_inner();
        self.blocking(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
            move |machine| machine.install_snapshot_blocking(meta, bytes),
        )
        .await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<RaftConfig>>, RaftStorageError> {
        self.blocking(ErrorSubject::Snapshot(None), ErrorVerb::Read, |machine| {
            machine.current_snapshot_blocking()
        })
        .await
    }
}
