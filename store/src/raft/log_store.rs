//! [`LogStore`]: openraft's log and vote in redb. An append is one write transaction,
//! committed durably before openraft is told the entries are flushed.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, Vote};
use redb::{Durability, ReadableDatabase, ReadableTable};

use super::{NodeId, RaftConfig, RaftEntry, RaftLogId, RaftStorageError, run_blocking};
use crate::db::Store;
use crate::error::StoreError;
use crate::tables::{RAFT_LOG, RAFT_STATE, decode, encode};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

#[derive(Clone)]
pub struct LogStore {
    store: Arc<Store>,
}

impl LogStore {
    pub fn new(store: Arc<Store>) -> LogStore {
        LogStore { store }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
        work: impl FnOnce(&Arc<Store>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, RaftStorageError> {
        run_blocking(self.store.clone(), subject, verb, work).await
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

fn write_state<T: serde::Serialize>(store: &Store, key: &str, value: &T) -> Result<(), StoreError> {
    let mut txn = store.db().begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut table = txn.open_table(RAFT_STATE)?;
        table.insert(key, encode(value)?.as_slice())?;
    }
    txn.commit()?;
    Ok(())
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
        self.blocking(ErrorSubject::Logs, ErrorVerb::Read, move |store| {
            if end.is_some_and(|end| end < start) {
                return Ok(Vec::new());
            }
            let txn = store.db().begin_read()?;
            let table = txn.open_table(RAFT_LOG)?;
            let rows = match end {
                Some(end) => table.range(start..=end)?,
                None => table.range(start..)?,
            };
            rows.map(|row| decode(row?.1.value())).collect()
        })
        .await
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
            write_state(store, VOTE, &vote)
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
        self.blocking(ErrorSubject::Store, ErrorVerb::Write, move |store| {
            write_state(store, COMMITTED, &committed)
        })
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
        let result = self
            .blocking(ErrorSubject::Logs, ErrorVerb::Write, move |store| {
                let mut txn = store.db().begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                {
                    let mut table = txn.open_table(RAFT_LOG)?;
                    for entry in &entries {
                        table.insert(entry.log_id.index, encode(entry)?.as_slice())?;
                    }
                }
                txn.commit()?;
                Ok(())
            })
            .await;
        // Only after the durable commit may openraft count these entries as persisted.
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(error) => callback.log_io_completed(Err(std::io::Error::other(error.to_string()))),
        }
        result
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
