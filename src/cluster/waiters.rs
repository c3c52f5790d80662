//! [`Waiters`], the cluster's `AppliedSink`: once this node applies a batch, the caches'
//! generations bump, then the callers waiting on this node get their own results.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use store::raft::{AppliedSink, RequestId};
use store::{ChangeSet, CommandOutcome, Rejection};
use tokio::sync::oneshot;

use crate::cache::ResponseCache;

/// Callers waiting for their commands to be applied by this node.
pub struct Waiters {
    pending: Mutex<HashMap<RequestId, oneshot::Sender<Result<CommandOutcome, Rejection>>>>,
    cache: Arc<ResponseCache>,
}

impl Waiters {
    pub(super) fn new(cache: Arc<ResponseCache>) -> Waiters {
        Waiters {
            pending: Mutex::new(HashMap::new()),
            cache,
        }
    }

    pub(super) fn register(
        &self,
        id: RequestId,
    ) -> oneshot::Receiver<Result<CommandOutcome, Rejection>> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    /// Drops the waiters of these requests: their callers learn the write did not happen.
    pub(super) fn forget(&self, ids: impl IntoIterator<Item = RequestId>) {
        let mut pending = self.lock();
        for id in ids {
            pending.remove(&id);
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        HashMap<RequestId, oneshot::Sender<Result<CommandOutcome, Rejection>>>,
    > {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AppliedSink for Waiters {
    fn applied(
        &self,
        results: Vec<(RequestId, Result<CommandOutcome, Rejection>)>,
        changes: &ChangeSet,
    ) {
        // Caches first: a caller answered below must not read older data afterwards.
        if !changes.is_empty() {
            self.cache.invalidate(changes);
        }
        let mut pending = self.lock();
        for (id, result) in results {
            if let Some(waiter) = pending.remove(&id) {
                let _ = waiter.send(result);
            }
        }
    }
}
