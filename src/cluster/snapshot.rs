//! The snapshot policy: when to ask openraft for a snapshot ([`snapshot_due`]), and the
//! task that checks it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use store::raft::LogStore;

use super::node::Cluster;

/// How often the snapshot policy is checked.
const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A snapshot asked for and not done by then is asked for again.
const SNAPSHOT_ASK_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// Whether to take a snapshot: the log since the last one holds at least `after_entries`
/// entries and, since this process started, at least half as many bytes as that snapshot.
/// A snapshot rewrites the whole state; with the byte rule its cost stays proportional to
/// what was written (at most about two bytes of snapshot per byte of log), where a count of
/// entries alone rebuilt a large state again and again under write load.
pub fn snapshot_due(
    entries_since: u64,
    after_entries: u64,
    bytes_since: u64,
    snapshot_bytes: u64,
) -> bool {
    entries_since >= after_entries.max(1) && bytes_since >= snapshot_bytes / 2
}

/// Name of the snapshot file beside the store.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";

impl Cluster {
    /// Asks openraft for a snapshot when `snapshot_due` says so, checking every second.
    pub(super) async fn take_snapshots_when_due(
        self: Arc<Self>,
        log: LogStore,
        snapshot_path: std::path::PathBuf,
        after_entries: u64,
    ) {
        // The log's byte count when the current snapshot was taken, and the snapshot asked
        // for (not asked again until it is done, or a while has passed).
        let mut bytes_at_snapshot = log.appended_bytes();
        let mut snapshot_seen = self.raft.metrics().borrow().snapshot;
        let mut asked: Option<Instant> = None;
        let mut tick = tokio::time::interval(SNAPSHOT_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            let (applied, snapshot) = {
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow();
                (metrics.last_applied, metrics.snapshot)
            };
            if snapshot != snapshot_seen {
                snapshot_seen = snapshot;
                bytes_at_snapshot = log.appended_bytes();
                asked = None;
            }
            if asked.is_some_and(|at| at.elapsed() < SNAPSHOT_ASK_AGAIN_AFTER) {
                continue;
            }
            let entries_since = applied
                .map(|l| l.index)
                .unwrap_or(0)
                .saturating_sub(snapshot.map(|l| l.index).unwrap_or(0));
            let bytes_since = log.appended_bytes().saturating_sub(bytes_at_snapshot);
            let snapshot_bytes = tokio::fs::metadata(&snapshot_path)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            if snapshot_due(entries_since, after_entries, bytes_since, snapshot_bytes) {
                tracing::debug!(entries_since, bytes_since, snapshot_bytes, "snapshot due");
                if self.raft.trigger().snapshot().await.is_err() {
                    return; // raft has stopped
                }
                asked = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    #[test]
    fn a_snapshot_waits_for_enough_entries() {
        assert!(!snapshot_due(4_999, 5_000, u64::MAX, 0));
        assert!(snapshot_due(5_000, 5_000, 0, 0));
    }

    #[test]
    fn a_large_state_waits_for_half_its_size_in_new_log() {
        let state = 300 << 20;
        assert!(!snapshot_due(1_000_000, 5_000, (150 << 20) - 1, state));
        assert!(snapshot_due(1_000_000, 5_000, 150 << 20, state));
    }

    #[test]
    fn zero_entries_is_taken_as_one() {
        assert!(!snapshot_due(0, 0, 0, 0));
        assert!(snapshot_due(1, 0, 0, 0));
    }
}
