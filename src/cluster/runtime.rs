//! The cluster's own tokio runtime, apart from the API's.

use std::sync::Mutex;
use std::time::Duration;

use super::config::ClusterError;

/// How long the cluster's runtime is given to stop its tasks at shutdown.
pub(super) const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster's own tokio runtime. Raft's steps (appends, replication, applying, answering
/// peers) are short and latency-bound; on the API's runtime they queued behind every
/// pending HTTP request, so a write under read load waited in each node's run queue at
/// every hop. On their own thread the OS wakes them promptly, whatever the read load.
/// Its tasks hold the cluster and the store: `Cluster::shutdown` stops it, so that the store
/// is closed cleanly when the node stops.
pub(super) struct ClusterRuntime(Mutex<Option<tokio::runtime::Runtime>>);

impl ClusterRuntime {
    /// The runtime, and a handle to spawn on it.
    pub(super) fn new() -> Result<(ClusterRuntime, tokio::runtime::Handle), ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("soundwave-raft")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let handle = runtime.handle().clone();
        Ok((ClusterRuntime(Mutex::new(Some(runtime))), handle))
    }

    pub(super) fn take(&self) -> Option<tokio::runtime::Runtime> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for ClusterRuntime {
    fn drop(&mut self) {
        // Dropping a runtime may not block inside another one.
        if let Some(runtime) = self.take() {
            runtime.shutdown_background();
        }
    }
}
