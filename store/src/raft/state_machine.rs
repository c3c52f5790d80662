//! [`StateMachine`]: applies committed entries to the store with the same
//! [`apply_command`](crate::apply) as a single node, one write transaction per batch of
//! entries, and builds and installs snapshots.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StoredMembership};
use redb::{Durability, ReadTransaction, ReadableDatabase, ReadableTable};

use super::log_store::read_state;
use super::snapshot::{
    Meta, RemoveOnDrop, SnapshotFile, SnapshotFiles, load_snapshot, write_snapshot,
};
use super::{
    AppliedSink, EntryApplied, NodeId, Place, RaftConfig, RaftEntry, RaftLogId, RaftNode,
    RaftStorageError, run_storage, storage_error,
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

#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    sink: Arc<dyn AppliedSink>,
    snapshots: Arc<SnapshotFiles>,
}

impl StateMachine {
    /// `snapshot_path` is where the latest snapshot is kept (beside the store file).
    pub fn new(store: Arc<Store>, sink: Arc<dyn AppliedSink>, snapshot_path: PathBuf) -> Self {
        StateMachine {
            store,
            sink,
            snapshots: Arc::new(SnapshotFiles::new(snapshot_path)),
        }
    }

    /// Work on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
        work: impl FnOnce(&StateMachine) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, RaftStorageError> {
        run_storage(self.clone(), Place::BlockingPool, subject, verb, work).await
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

    fn build_snapshot_blocking(&self) -> Result<Snapshot<RaftConfig>, StoreError> {
        // One read transaction: the rows, the last applied log id and the membership agree.
        let txn = self.store.db().begin_read()?;
        let meta = applied_meta(&txn, "")?;
        let path = self.snapshots.temporary("building");
        let mut building = RemoveOnDrop::new(path.clone());
        let file = write_snapshot(&path, &txn, &meta)?;
        drop(txn);
        // A snapshot installed meanwhile may be newer: then this one is sent (if asked)
        // from its open file but not kept.
        self.snapshots.keep(&path, meta.last_log_id)?;
        building.disarm();
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::reading(file)),
        })
    }

    /// Installs the snapshot `meta` from `file`: a file received into `received`, or any
    /// other snapshot file (then copied, so that it can be kept).
    fn install_snapshot_blocking(
        &self,
        meta: SnapshotMeta<NodeId, RaftNode>,
        file: File,
        received: RemoveOnDrop,
    ) -> Result<(), StoreError> {
        let (mut file, path, mut received) = self.snapshots.make_durable(file, received)?;
        let mut txn = self.store.db().begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        // Verifies the whole file before the first write: a bad file changes nothing.
        load_snapshot(&mut file, &path, &meta, &txn)?;
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
        // Under its installing name, a restart right after the commit still keeps the file.
        let installing = self.snapshots.stage(&path, &mut received)?;
        // A whole new state: the catalog index is built anew from it.
        self.store.commit(txn, &ChangeSet::everything())?;
        // Committed: from here on the staged file is left for a restart to keep if need be.
        received.disarm();
        self.sink.applied(Vec::new(), &ChangeSet::everything());
        // What was installed becomes this node's current snapshot.
        self.snapshots.keep(&installing, meta.last_log_id)?;
        Ok(())
    }

    fn current_snapshot_blocking(&self) -> Result<Option<Snapshot<RaftConfig>>, StoreError> {
        self.snapshots
            .tidy_once(|| read_state(&self.store, LAST_APPLIED))?;
        Ok(self.snapshots.open_current()?.map(|(file, meta)| Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::reading(file)),
        }))
    }
}

/// The snapshot meta of the state `txn` reads: its last applied log id and membership, and
/// an id made of that log id after `prefix`.
pub(crate) fn applied_meta(txn: &ReadTransaction, prefix: &str) -> Result<Meta, StoreError> {
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
    let snapshot_id = match last_log_id {
        Some(id) => format!(
            "{prefix}{}-{}-{}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => format!("{prefix}empty"),
    };
    Ok(SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id,
    })
}

/// The nice value of the thread that builds a snapshot: the API's and raft's threads come
/// first for the cores, the snapshot takes what they leave.
const SNAPSHOT_THREAD_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`SNAPSHOT_THREAD_NICE`] (on Linux, where
/// `setpriority` on `PRIO_PROCESS` 0 is the calling thread's own). Best effort.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory-safety preconditions; a failure is only reported.
    unsafe {
        if libc::setpriority(libc::PRIO_PROCESS, 0, SNAPSHOT_THREAD_NICE) != 0 {
            tracing::debug!("cannot lower the snapshot thread's priority");
        }
    }
}

impl RaftSnapshotBuilder<RaftConfig> for StateMachine {
    /// Built on a thread of its own at a lower priority (openraft runs this beside the
    /// state machine: applies go on; the read transaction sees the state of one moment).
    async fn build_snapshot(&mut self) -> Result<Snapshot<RaftConfig>, RaftStorageError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let machine = self.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                lower_this_threads_priority();
                let _ = sender.send(machine.build_snapshot_blocking());
            });
        let built = match spawned {
            Ok(_) => receiver
                .await
                .unwrap_or_else(|_| Err(StoreError::Encoding("the snapshot thread died".into()))),
            Err(error) => Err(StoreError::SnapshotIo {
                path: "snapshot thread".into(),
                action: "spawn",
                source: error,
            }),
        };
        built.map_err(|error| {
            storage_error(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                openraft::AnyError::new(&error),
            )
        })
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
        run_storage(
            self.clone(),
            Place::for_entries(&entries),
            ErrorSubject::StateMachine,
            ErrorVerb::Write,
            move |machine| machine.apply_entries(entries),
        )
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, RaftStorageError> {
        let path = self.snapshots.temporary("receiving");
        match SnapshotFile::receiving(path).await {
            Ok(file) => Ok(Box::new(file)),
            Err(error) => Err(storage_error(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                openraft::AnyError::new(&error),
            )),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, RaftNode>,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), RaftStorageError> {
        let meta = meta.clone();
        let (file, received) = snapshot.into_parts().await;
        self.blocking(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
            move |machine| machine.install_snapshot_blocking(meta, file, received),
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

#[cfg(test)]
mod tests {
    //! Snapshots through openraft's state-machine API: built on one node, sent chunk by
    //! chunk into the file another node began receiving, installed there.

    use std::collections::BTreeSet;

    use openraft::testing::log_id;
    use openraft::{Entry, Membership as ClusterMembership};
    use tempfile::TempDir;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::apply::tests::{category, order, product, user};
    use crate::command::Command;
    use crate::raft::{DiscardResults, Proposal, RequestId};

    struct Node {
        machine: StateMachine,
        store: Arc<Store>,
        dir: TempDir,
    }

    impl Node {
        fn new() -> Node {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Arc::new(Store::open(dir.path().join("store.redb")).expect("open"));
            let machine = StateMachine::new(
                store.clone(),
                Arc::new(DiscardResults),
                dir.path().join("snapshot.bin"),
            );
            Node {
                machine,
                store,
                dir,
            }
        }

        /// A node that applied a membership and then `commands` through the log.
        async fn with(commands: Vec<Command>) -> Node {
            let mut node = Node::new();
            let mut entries = vec![Entry {
                log_id: log_id(1, 1, 1),
                payload: EntryPayload::Membership(ClusterMembership::new(
                    vec![BTreeSet::from([1])],
                    None,
                )),
            }];
            for (n, command) in (2..).zip(commands) {
                entries.push(Entry {
                    log_id: log_id(1, 1, n),
                    payload: EntryPayload::Normal(Proposal {
                        commands: vec![(RequestId(u128::from(n)), command)],
                    }),
                });
            }
            node.machine.apply(entries).await.expect("apply");
            node
        }

        fn digest(&self) -> u64 {
            self.store.read().expect("read").digest().expect("digest")
        }

        fn stock(&self, product: u64) -> u32 {
            let reader = self.store.read().expect("read");
            reader
                .product(product)
                .expect("read")
                .expect("a product")
                .stock
        }

        async fn current_meta(&mut self) -> Option<SnapshotMeta<NodeId, RaftNode>> {
            let current = self.machine.get_current_snapshot().await.expect("current");
            current.map(|snapshot| snapshot.meta)
        }

        /// Names of the files in the node's directory.
        fn files(&self) -> BTreeSet<String> {
            std::fs::read_dir(self.dir.path())
                .expect("list")
                .map(|entry| entry.expect("entry").file_name().to_string_lossy().into())
                .collect()
        }

        /// Sends `bytes` as openraft does, in chunks into a file this node began receiving.
        async fn receive(&mut self, bytes: &[u8]) -> Box<SnapshotFile> {
            let mut receiving = self
                .machine
                .begin_receiving_snapshot()
                .await
                .expect("begin");
            for chunk in bytes.chunks(1000) {
                receiving.write_all(chunk).await.expect("write a chunk");
            }
            receiving.shutdown().await.expect("shut down");
            receiving
        }
    }

    fn catalog_and_orders() -> Vec<Command> {
        vec![
            category("Rock"),
            user("ann", false),
            product("Guitar", 30, 1000, 1),
            product("Drum", 5, 500, 1),
            order(1, &[(1, 2), (2, 1)], Some("first")),
            order(1, &[(1, 1)], None),
        ]
    }

    /// A snapshot built on a node with data, and its bytes.
    async fn built_snapshot() -> (Node, SnapshotMeta<NodeId, RaftNode>, Vec<u8>) {
        let mut leader = Node::with(catalog_and_orders()).await;
        assert_eq!(leader.stock(1), 27, "the orders were placed");
        let mut snapshot = leader
            .machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        let mut bytes = Vec::new();
        snapshot
            .snapshot
            .read_to_end(&mut bytes)
            .await
            .expect("read the snapshot");
        (leader, snapshot.meta, bytes)
    }

    #[tokio::test]
    async fn a_built_snapshot_installs_into_an_empty_store_with_the_same_state() {
        let (mut leader, meta, bytes) = built_snapshot().await;
        assert_eq!(meta.last_log_id, Some(log_id(1, 1, 7)));
        assert_eq!(leader.current_meta().await, Some(meta.clone()));

        let mut follower = Node::new();
        let received = follower.receive(&bytes).await;
        follower
            .machine
            .install_snapshot(&meta, received)
            .await
            .expect("install");

        assert_eq!(follower.digest(), leader.digest());
        assert_eq!(follower.stock(1), 27);
        assert_eq!(
            follower.machine.applied_state().await.expect("applied"),
            leader.machine.applied_state().await.expect("applied"),
        );
        // The received file is kept as the follower's current snapshot, as it was sent.
        assert_eq!(follower.current_meta().await, Some(meta));
        let kept = std::fs::read(follower.dir.path().join("snapshot.bin")).expect("kept");
        assert!(kept == bytes, "the kept snapshot is the one sent");
        assert_eq!(
            follower.files(),
            BTreeSet::from(["snapshot.bin".into(), "store.redb".into()]),
            "no temporary file is left",
        );
    }

    /// A node with other data and a snapshot of its own, and what a failed install must
    /// leave as it was.
    async fn bystander() -> (Node, u64, SnapshotMeta<NodeId, RaftNode>) {
        let mut node = Node::with(vec![category("Jazz"), product("Sax", 2, 900, 1)]).await;
        let meta = node
            .machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build")
            .meta;
        let digest = node.digest();
        (node, digest, meta)
    }

    async fn assert_refused(
        node: &mut Node,
        meta: &SnapshotMeta<NodeId, RaftNode>,
        bytes: &[u8],
        unchanged: (u64, &SnapshotMeta<NodeId, RaftNode>),
        what: &str,
    ) {
        let received = node.receive(bytes).await;
        let result = node.machine.install_snapshot(meta, received).await;
        assert!(result.is_err(), "{what} is refused");
        assert_eq!(node.digest(), unchanged.0, "{what} changed the state");
        assert_eq!(
            node.machine.applied_state().await.expect("applied").0,
            unchanged.1.last_log_id,
            "{what} changed the last applied log id"
        );
        assert_eq!(node.current_meta().await.as_ref(), Some(unchanged.1));
    }

    #[tokio::test]
    async fn a_truncated_snapshot_is_refused_and_leaves_the_store_unchanged() {
        let (_leader, meta, bytes) = built_snapshot().await;
        let (mut node, digest, own) = bystander().await;
        for length in [0, 5, 30, bytes.len() / 2, bytes.len() - 5, bytes.len() - 1] {
            let what = format!("a snapshot cut at {length} of {} bytes", bytes.len());
            assert_refused(&mut node, &meta, &bytes[..length], (digest, &own), &what).await;
        }
        // Nothing is stuck: the whole snapshot still installs.
        let received = node.receive(&bytes).await;
        node.machine
            .install_snapshot(&meta, received)
            .await
            .expect("install");
        assert_eq!(node.current_meta().await, Some(meta));
        // The refused files are removed (in the background).
        let only_ours = BTreeSet::from(["snapshot.bin".into(), "store.redb".into()]);
        for _ in 0..100 {
            if node.files() == only_ours {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(node.files(), only_ours);
    }

    #[tokio::test]
    async fn a_corrupt_or_mismatched_snapshot_is_refused_and_leaves_the_store_unchanged() {
        let (_leader, meta, bytes) = built_snapshot().await;
        let (mut node, digest, own) = bystander().await;
        let middle = bytes.len() / 2;
        let mut flipped = bytes.clone();
        flipped[middle] ^= 0x10;
        let what = "a snapshot with a flipped bit";
        assert_refused(&mut node, &meta, &flipped, (digest, &own), what).await;
        let mut longer = bytes.clone();
        longer.push(0);
        let what = "a snapshot with bytes after its end";
        assert_refused(&mut node, &meta, &longer, (digest, &own), what).await;
        let other = SnapshotMeta {
            snapshot_id: "another".into(),
            ..meta.clone()
        };
        let what = "a snapshot sent as another";
        assert_refused(&mut node, &other, &bytes, (digest, &own), what).await;
    }
}
