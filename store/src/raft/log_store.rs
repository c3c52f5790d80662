//! [`LogStore`]: openraft's log and vote in redb. An append is one write transaction,
//! committed at once without a flush (readable, not yet durable); a background flush makes
//! every append waiting durable with one fsync (group commit), and only then tells openraft
//! that they are flushed. The vote and truncations are durable when they return. A purge
//! records its point (durable with the next flush) and returns; the entries behind it are
//! deleted in the background, a few per write transaction, and no read returns them
//! meanwhile: openraft awaits a purge inside its core, so a purge of a large log (at a
//! snapshot) done in one transaction held every append, commit and heartbeat behind it.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, Vote};
use redb::{Durability, ReadableDatabase, ReadableTable};

use super::{
    NodeId, Place, RaftConfig, RaftEntry, RaftLogId, RaftStorageError, run_storage, storage_error,
};
use crate::db::Store;
use crate::error::StoreError;
use crate::tables::{RAFT_LOG, RAFT_STATE, decode, encode};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";
/// Entries deleted per write transaction when purged entries are deleted in the background.
const PURGE_CHUNK_ENTRIES: u64 = 64;

#[derive(Clone)]
pub struct LogStore {
    store: Arc<Store>,
    flush: Arc<Mutex<FlushQueue>>,
    /// Bytes of entries appended since this process opened the log.
    appended_bytes: Arc<AtomicU64>,
    purge: Arc<Purge>,
}

/// Where the log is purged to, and whether the background deletion runs.
struct Purge {
    /// The first index not purged (0: nothing purged yet in this process). Reads start
    /// there, so entries waiting for deletion are never returned.
    floor: AtomicU64,
    /// The deletion loop runs: it deletes up to the floor it finds before it stops.
    deleting: Mutex<bool>,
}

/// Appends committed but not yet durable, waiting for the next flush.
#[derive(Default)]
struct FlushQueue {
    waiting: Vec<LogFlushed<RaftConfig>>,
    /// A flush loop is running: it will take what waits before it stops.
    flushing: bool,
}

impl LogStore {
    pub fn new(store: Arc<Store>) -> LogStore {
        LogStore {
            flush: Arc::default(),
            appended_bytes: Arc::default(),
            purge: Arc::new(Purge {
                // Entries a deletion left behind before a restart stay unread.
                floor: AtomicU64::new(
                    read_state::<RaftLogId>(&store, LAST_PURGED)
                        .ok()
                        .flatten()
                        .map_or(0, |purged| purged.index.saturating_add(1)),
                ),
                deleting: Mutex::new(false),
            }),
            store,
        }
    }

    /// Deletes the purged entries in the background unless that already runs.
    fn delete_purged_later(&self) {
        let mut deleting = self
            .purge
            .deleting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !*deleting {
            *deleting = true;
            let store = self.store.clone();
            let purge = self.purge.clone();
            tokio::task::spawn_blocking(move || delete_purged(&store, &purge));
        }
    }

    /// Bytes of entries appended since this process opened the log (as stored, encoded):
    /// what the snapshot policy weighs against the size of the last snapshot.
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes.load(Ordering::Relaxed)
    }

    /// Queues an append's callback for the next flush, starting a flush loop if none runs.
    fn flush_later(&self, callback: LogFlushed<RaftConfig>) {
        let mut queue = self.flush.lock().unwrap_or_else(|e| e.into_inner());
        queue.waiting.push(callback);
        if !queue.flushing {
            queue.flushing = true;
            let store = self.store.clone();
            let flush = self.flush.clone();
            tokio::task::spawn_blocking(move || flush_until_idle(&store, &flush));
        }
    }

    /// Work on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
        work: impl FnOnce(&Arc<Store>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, RaftStorageError> {
        run_storage(self.store.clone(), Place::BlockingPool, subject, verb, work).await
    }
}

pub(crate) fn read_state<T: serde::de::DeserializeOwned>(
    store: &Store,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let txn = store.db().begin_read()?;
    let table = txn.open_table(RAFT_STATE)?;
    let value = table.get(key)?;
    value.map(|v| decode(v.value())).transpose()
}

fn write_state<T: serde::Serialize>(
    store: &Store,
    key: &str,
    value: &T,
    durability: Durability,
) -> Result<(), StoreError> {
    let mut txn = store.db().begin_write()?;
    txn.set_durability(durability)?;
    {
        let mut table = txn.open_table(RAFT_STATE)?;
        table.insert(key, encode(value)?.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

/// Flushes until no append waits: each round makes every append committed before it durable
/// (a durable redb commit persists the non-durable ones before it) and tells their callbacks.
fn flush_until_idle(store: &Store, flush: &Mutex<FlushQueue>) {
    loop {
        let batch = {
            let mut queue = flush.lock().unwrap_or_else(|e| e.into_inner());
            if queue.waiting.is_empty() {
                queue.flushing = false;
                return;
            }
            std::mem::take(&mut queue.waiting)
        };
        let flushed = store.flush();
        for callback in batch {
            callback.log_io_completed(
                flushed
                    .as_ref()
                    .map(|_| ())
                    .map_err(|error| std::io::Error::other(error.to_string())),
            );
        }
    }
}

/// Deletes the entries below the purge floor, [`PURGE_CHUNK_ENTRIES`] per write transaction
/// (not flushed: the next flush makes them durable; entries left by a crash are deleted by
/// the next purge), until none is left below the floor it finds at the end.
fn delete_purged(store: &Store, purge: &Purge) {
    loop {
        let floor = purge.floor.load(Ordering::Acquire);
        let failed = match delete_chunk_below(store, floor) {
            Ok(true) => continue,
            Ok(false) => false,
            Err(error) => {
                tracing::warn!(%error, "cannot delete purged log entries; the next purge retries");
                true
            }
        };
        let mut deleting = purge.deleting.lock().unwrap_or_else(|e| e.into_inner());
        if failed || purge.floor.load(Ordering::Acquire) == floor {
            *deleting = false;
            return;
        }
    }
}

/// Deletes up to [`PURGE_CHUNK_ENTRIES`] of the first entries below `floor`; answers whether
/// it deleted any.
fn delete_chunk_below(store: &Store, floor: u64) -> Result<bool, StoreError> {
    let mut txn = store.db().begin_write()?;
    txn.set_durability(Durability::None)?;
    let deleted = {
        let mut table = txn.open_table(RAFT_LOG)?;
        let first = table.first()?.map(|(key, _)| key.value());
        match first {
            Some(first) if first < floor => {
                let last = floor
                    .saturating_sub(1)
                    .min(first.saturating_add(PURGE_CHUNK_ENTRIES - 1));
                table.retain_in(first..=last, |_, _| false)?;
                true
            }
            _ => false,
        }
    };
    txn.commit()?;
    Ok(deleted)
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => Some(i),
        Bound::Excluded(&0) => return (1, Some(0)),
        Bound::Excluded(&i) => Some(i - 1),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<RaftConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, RaftStorageError> {
        let (start, end) = bounds(&range);
        // Purged entries may still wait for their deletion: never read them.
        let start = start.max(self.purge.floor.load(Ordering::Acquire));
        // Here, not on the blocking pool: a read never waits for the writer, and the entries
        // replication asks for were just appended (in redb's cache). This runs for every
        // append sent to every follower; the round trip to a blocking thread cost more.
        let read = || -> Result<Vec<RaftEntry>, StoreError> {
            if end.is_some_and(|end| end < start) {
                return Ok(Vec::new());
            }
            let txn = self.store.db().begin_read()?;
            let table = txn.open_table(RAFT_LOG)?;
            let rows = match end {
                Some(end) => table.range(start..=end)?,
                None => table.range(start..)?,
            };
            rows.map(|row| decode(row?.1.value())).collect()
        };
        read().map_err(|error| {
            storage_error(
                ErrorSubject::Logs,
                ErrorVerb::Read,
                openraft::AnyError::new(&error),
            )
        })
    }
}

impl RaftLogStorage<RaftConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<RaftConfig>, RaftStorageError> {
        self.blocking(ErrorSubject::Logs, ErrorVerb::Read, |store| {
            let last_purged_log_id: Option<RaftLogId> = read_state(store, LAST_PURGED)?;
            let txn = store.db().begin_read()?;
            let table = txn.open_table(RAFT_LOG)?;
            let last = table.last()?;
            let last_log_id = match last {
                Some((_, entry)) => Some(decode::<RaftEntry>(entry.value())?.log_id),
                None => None,
            };
            // Entries up to the purge point may still wait for their deletion.
            let last_log_id = last_log_id.max(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        let vote = *vote;
        self.blocking(ErrorSubject::Vote, ErrorVerb::Write, move |store| {
            write_state(store, VOTE, &vote, Durability::Immediate)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        self.blocking(ErrorSubject::Vote, ErrorVerb::Read, |store| {
            read_state(store, VOTE)
        })
        .await
    }

    async fn save_committed(
        &mut self,
        committed: Option<RaftLogId>,
    ) -> Result<(), RaftStorageError> {
        // Not flushed on its own (it would be one more fsync per commit on every node): it
        // becomes durable with the next flush, vote or purge. After a crash it may be older
        // than it was, never newer than the log, and the state machine, whose applies are
        // not flushed either, is never ahead of it: openraft applies the rest again.
        run_storage(
            self.store.clone(),
            Place::Here,
            ErrorSubject::Store,
            ErrorVerb::Write,
            move |store| write_state(store, COMMITTED, &committed, Durability::None),
        )
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<RaftLogId>, RaftStorageError> {
        self.blocking(ErrorSubject::Store, ErrorVerb::Read, |store| {
            Ok(read_state::<Option<RaftLogId>>(store, COMMITTED)?.flatten())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<RaftConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<RaftEntry> = entries.into_iter().collect();
        // Readable when this returns, as openraft requires; durable once flushed.
        let place = Place::for_entries(&entries);
        let bytes = run_storage(
            self.store.clone(),
            place,
            ErrorSubject::Logs,
            ErrorVerb::Write,
            move |store| {
                let mut txn = store.db().begin_write()?;
                txn.set_durability(Durability::None)?;
                let mut bytes = 0;
                {
                    let mut table = txn.open_table(RAFT_LOG)?;
                    for entry in &entries {
                        let encoded = encode(entry)?;
                        bytes += encoded.len() as u64;
                        table.insert(entry.log_id.index, encoded.as_slice())?;
                    }
                }
                txn.commit()?;
                Ok(bytes)
            },
        )
        .await?;
        self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        // Only after the flush may openraft count these entries as persisted: the leader
        // replicates them meanwhile, so its own fsync and its followers' overlap.
        self.flush_later(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: RaftLogId) -> Result<(), RaftStorageError> {
        self.blocking(ErrorSubject::Logs, ErrorVerb::Delete, move |store| {
            let mut txn = store.db().begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut table = txn.open_table(RAFT_LOG)?;
                table.retain_in(log_id.index.., |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: RaftLogId) -> Result<(), RaftStorageError> {
        run_storage(
            self.store.clone(),
            Place::Here,
            ErrorSubject::Logs,
            ErrorVerb::Delete,
            move |store| write_state(store, LAST_PURGED, &log_id, Durability::None),
        )
        .await?;
        self.purge
            .floor
            .fetch_max(log_id.index.saturating_add(1), Ordering::AcqRel);
        self.delete_purged_later();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use openraft::{Entry, EntryPayload};

    use super::*;

    fn stored_indexes(store: &Store) -> Vec<u64> {
        let txn = store.db().begin_read().expect("read");
        let table = txn.open_table(RAFT_LOG).expect("log");
        table
            .iter()
            .expect("iterate")
            .map(|row| row.expect("row").0.value())
            .collect()
    }

    #[tokio::test]
    async fn a_purge_hides_its_entries_at_once_and_deletes_them_in_the_background() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path().join("store.redb")).expect("open"));
        let txn = store.db().begin_write().expect("write");
        {
            let mut table = txn.open_table(RAFT_LOG).expect("log");
            for index in 1..=300 {
                let entry: RaftEntry = Entry {
                    log_id: log_id(1, 1, index),
                    payload: EntryPayload::Blank,
                };
                let bytes = encode(&entry).expect("encode");
                table.insert(index, bytes.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
        let mut log = LogStore::new(store.clone());
        log.purge(log_id(1, 1, 250)).await.expect("purge");

        // At once: nothing purged is read, and the log state says where it was purged to.
        let read = log.try_get_log_entries(0..).await.expect("read");
        let indexes: Vec<u64> = read.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (251..=300).collect::<Vec<_>>());
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 250)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 300)));

        // In the background, in several transactions: every purged entry is deleted.
        for _ in 0..500 {
            if stored_indexes(&store).first() == Some(&251) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(stored_indexes(&store), (251..=300).collect::<Vec<_>>());

        // A purge of everything: the log state's last log id stays the purge point.
        log.purge(log_id(1, 1, 300)).await.expect("purge all");
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 300)));
        assert!(log.try_get_log_entries(0..).await.expect("read").is_empty());
    }
}
