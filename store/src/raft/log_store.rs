//! [`LogStore`]: openraft's log and vote in redb. An append is one write transaction,
//! committed at once without a flush (readable, not yet durable); a background flush makes
//! every append waiting durable with one fsync (group commit), and only then tells openraft
//! that they are flushed. The vote, truncations and purges are durable when they return.

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

#[derive(Clone)]
pub struct LogStore {
    store: Arc<Store>,
    flush: Arc<Mutex<FlushQueue>>,
    /// Bytes of entries appended since this process opened the log.
    appended_bytes: Arc<AtomicU64>,
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
            store,
            flush: Arc::default(),
            appended_bytes: Arc::default(),
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
                None => last_purged_log_id,
            };
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
        self.blocking(ErrorSubject::Logs, ErrorVerb::Delete, move |store| {
            let mut txn = store.db().begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut state = txn.open_table(RAFT_STATE)?;
                state.insert(LAST_PURGED, encode(&log_id)?.as_slice())?;
                let mut table = txn.open_table(RAFT_LOG)?;
                table.retain_in(..=log_id.index, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }
}
