//! openraft's own storage test suite, run against the redb log store and state machine.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use store::Store;
use store::raft::{DiscardResults, LogStore, RaftConfig, StateMachine};

struct RedbStores;

impl StoreBuilder<RaftConfig, LogStore, StateMachine, tempfile::TempDir> for RedbStores {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path().join("store.redb")).expect("open store"));
        let machine = StateMachine::new(
            store.clone(),
            Arc::new(DiscardResults),
            dir.path().join("snapshot.bin"),
        );
        Ok((dir, LogStore::new(store), machine))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(RedbStores).expect("openraft's storage suite");
}
