//! Backups: the state of one read transaction in the snapshot file layout (so a backup is
//! checked as a snapshot is: structure, table count and CRC-32), written to any output while
//! writers go on (redb's MVCC), checked whole with the digest of the state it holds, and
//! restored into a new store that starts a new cluster.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use openraft::StoredMembership;
use redb::{Durability, ReadableDatabase, ReadableTableMetadata};

use super::load::{load_snapshot, verify_with_digest};
use super::write::write_state;
use super::{Meta, invalid, io_error};
use crate::apply::ChangeSet;
use crate::db::Store;
use crate::error::StoreError;
use crate::raft::state_machine::applied_meta;
use crate::raft::{NodeId, RaftLogId, RaftNode};
use crate::tables::{RAFT_LOG, RAFT_STATE};

/// What a backup holds: the log id and membership of the state it reflects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupMeta {
    /// The last log entry applied to the state (none for a store that never applied one).
    pub last_log_id: Option<RaftLogId>,
    /// The cluster's membership at that entry.
    pub membership: StoredMembership<NodeId, RaftNode>,
}

impl BackupMeta {
    fn from_meta(meta: Meta) -> BackupMeta {
        BackupMeta {
            last_log_id: meta.last_log_id,
            membership: meta.last_membership,
        }
    }

    /// The log index of the state (0 when none was applied).
    pub fn log_index(&self) -> u64 {
        self.last_log_id.map(|id| id.index).unwrap_or(0)
    }

    /// The ids of the members (voters and learners) at that index.
    pub fn member_ids(&self) -> Vec<NodeId> {
        self.membership.nodes().map(|(id, _)| *id).collect()
    }
}

/// A backup file checked whole: what it reflects and the digest of its state (equal to
/// `StoreReader::digest` of a store restored from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedBackup {
    pub meta: BackupMeta,
    pub digest: u64,
}

/// Writes a backup of `store`'s current state to `out` from one read transaction: the
/// rows, the last applied log id and the membership agree. `out` is flushed and given back;
/// `destination` names it in errors. Writers go on meanwhile.
pub fn write_backup<W: Write>(
    store: &Store,
    out: W,
    destination: &Path,
) -> Result<(W, BackupMeta), StoreError> {
    let txn = store.db().begin_read()?;
    let meta = applied_meta(&txn, "backup-")?;
    let out = write_state(out, destination, &txn, &meta)?;
    Ok((out, BackupMeta::from_meta(meta)))
}

/// Reads the backup file at `path` whole: its structure and checksum are sound. Answers what
/// it reflects and the digest of its state.
pub fn check_backup(path: &Path) -> Result<CheckedBackup, StoreError> {
    let mut file = File::open(path).map_err(io_error(path, "open"))?;
    let (meta, digest) = verify_with_digest(&mut file, path)?;
    Ok(CheckedBackup {
        meta: BackupMeta::from_meta(meta),
        digest,
    })
}

/// Makes a new store at `store_path` (which must not exist) holding the state of the backup
/// file at `backup`, checked whole first. The store has no raft log, vote or applied log id:
/// a node started on it begins a new cluster (one member when it is alone) with that state.
pub fn restore_backup(backup: &Path, store_path: &Path) -> Result<CheckedBackup, StoreError> {
    if store_path.exists() {
        return Err(invalid(
            store_path,
            "a store is already there; restore into an empty directory",
        ));
    }
    let mut file = File::open(backup).map_err(io_error(backup, "open"))?;
    let (meta, digest) = verify_with_digest(&mut file, backup)?;
    let store = Store::open(store_path)?;
    let mut txn = store.db().begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    load_snapshot(&mut file, backup, &meta, &txn)?;
    store.commit(txn, &ChangeSet::everything())?;
    let restored = store.read()?.digest()?;
    if restored != digest {
        return Err(invalid(
            backup,
            format!(
                "the restored state's digest {restored:016x} is not the backup's {digest:016x}"
            ),
        ));
    }
    Ok(CheckedBackup {
        meta: BackupMeta::from_meta(meta),
        digest,
    })
}

/// Whether `store` has no raft state at all: no log, no vote, nothing applied through raft.
/// True for a new store and for one restored from a backup.
pub fn raft_state_is_empty(store: &Store) -> Result<bool, StoreError> {
    let txn = store.db().begin_read()?;
    let log_empty = txn.open_table(RAFT_LOG)?.is_empty()?;
    let state_empty = txn.open_table(RAFT_STATE)?.is_empty()?;
    Ok(log_empty && state_empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::tests::{TestStore, category, order, product, user};

    /// A store with a catalog, a user and an order, and its backup's bytes.
    fn backed_up() -> (TestStore, Vec<u8>, BackupMeta) {
        let source = TestStore::new();
        source.apply_all(&[
            category("Rock"),
            user("ann", false),
            product("Guitar", 30, 1000, 1),
            order(1, &[(1, 2)], Some("first")),
        ]);
        let (bytes, meta) =
            write_backup(&source.store, Vec::new(), Path::new("memory")).expect("backup");
        (source, bytes, meta)
    }

    #[test]
    fn a_backup_restores_into_a_new_store_with_the_same_state_and_no_raft_state() {
        let (source, bytes, meta) = backed_up();
        // Never applied through raft: no log id, no members.
        assert_eq!(meta.log_index(), 0);
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("backup.swb");
        std::fs::write(&file, &bytes).expect("write");
        let checked = check_backup(&file).expect("check");
        assert_eq!(
            checked.digest,
            source.digest(),
            "the file's digest is the store's"
        );
        assert_eq!(checked.meta, meta);

        let restored_path = dir.path().join("restored.redb");
        let restored = restore_backup(&file, &restored_path).expect("restore");
        assert_eq!(restored, checked);
        let store = Store::open(&restored_path).expect("open the restored store");
        assert_eq!(
            store.read().expect("read").digest().expect("digest"),
            source.digest()
        );
        let stock = store.read().expect("read").product(1).expect("read");
        assert_eq!(stock.map(|p| p.stock), Some(28));
        assert!(raft_state_is_empty(&store).expect("raft state"));
        // A second restore over it is refused.
        assert!(restore_backup(&file, &restored_path).is_err());
    }

    #[test]
    fn a_corrupt_or_truncated_backup_is_refused_and_makes_no_store() {
        let (_source, bytes, _) = backed_up();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x01;
        for (what, damaged) in [
            ("a flipped bit", flipped),
            ("a cut file", bytes[..bytes.len() - 3].to_vec()),
        ] {
            let file = dir.path().join("damaged.swb");
            std::fs::write(&file, &damaged).expect("write");
            assert!(check_backup(&file).is_err(), "{what} passes the check");
            let restored_path = dir.path().join("restored.redb");
            assert!(
                restore_backup(&file, &restored_path).is_err(),
                "{what} restores"
            );
            assert!(!restored_path.exists(), "{what} left a store behind");
        }
    }
}
