//! Tests of snapshot files: written, loaded, kept, tidied.

use std::fs::File;
use std::path::{Path, PathBuf};

use openraft::testing::log_id;
use redb::{ReadableDatabase, TableHandle};

use super::*;
use crate::apply::tests::{TestStore, category, product, table_names};
use crate::tables::*;

fn meta_at(index: u64) -> Meta {
    Meta {
        last_log_id: Some(log_id(1, 1, index)),
        last_membership: Default::default(),
        snapshot_id: format!("at-{index}"),
    }
}

#[test]
fn every_table_of_a_store_is_state_or_raft_bookkeeping() {
    assert_eq!(RAFT_TABLES, [RAFT_LOG.name(), RAFT_STATE.name()]);
    // A store that has applied a batch has every table (created at open from the list, or
    // by the batch's `WriteTables`): each one must be in `for_each_state_table!` (and so in
    // snapshots and the digest), or be raft's own.
    let store = TestStore::new();
    store.apply_all(&[category("Rock")]);
    let names = table_names(&store.store);
    assert!(names.len() > RAFT_TABLES.len(), "{names:?}");
    for name in &names {
        assert!(
            is_state_table(name) != RAFT_TABLES.contains(&name.as_str()),
            "table {name} is neither in for_each_state_table! nor one of RAFT_TABLES"
        );
    }
    // And every state table exists in the store.
    let mut listed = 0;
    macro_rules! count {
        ($table:ident) => {
            assert!(
                names.iter().any(|n| n == $table.name()),
                "{}",
                $table.name()
            );
            listed += 1;
        };
    }
    for_each_state_table!(count);
    assert_eq!(listed + RAFT_TABLES.len(), names.len());
}

/// A store with a little data, and a directory for snapshot files.
fn setup() -> (TestStore, tempfile::TempDir) {
    let store = TestStore::new();
    store.apply_all(&[category("Rock"), product("Guitar", 3, 100, 1)]);
    (store, tempfile::tempdir().expect("temp dir"))
}

fn write_at(store: &TestStore, path: &Path, index: u64) {
    let txn = store.store.db().begin_read().expect("read");
    write_snapshot(path, &txn, &meta_at(index)).expect("write");
}

/// Loads the snapshot file at `path` (of `index`) into `target`, committed if it loads.
fn load_into(target: &TestStore, path: &Path, index: u64) -> Result<(), StoreError> {
    let txn = target.store.db().begin_write().expect("write");
    let mut file = File::open(path).expect("open");
    load_snapshot(&mut file, path, &meta_at(index), &txn)?;
    txn.commit().expect("commit");
    Ok(())
}

fn current_index(files: &SnapshotFiles) -> Option<u64> {
    let (_, meta) = files.open_current().expect("open")?;
    meta.last_log_id.map(|id| id.index)
}

#[test]
fn a_written_snapshot_loads_into_another_store_with_the_same_rows() {
    let (source, dir) = setup();
    let path = dir.path().join("snapshot.bin");
    write_at(&source, &path, 3);
    let target = TestStore::new();
    target.apply(category("Other")).expect("a category");
    load_into(&target, &path, 3).expect("load");
    assert_eq!(target.digest(), source.digest());
}

/// The snapshot file at `path` as a node of the previous schema version would have written
/// it: that version's number in the header and its `products_by_name` table (one row) among
/// the tables, at the end.
fn rewrite_as_previous_schema(path: &Path) {
    let bytes = std::fs::read(path).expect("read");
    // The end record: tag, table count, checksum.
    let (body, end) = bytes.split_at(bytes.len() - 9);
    assert_eq!(end[0], END_TAG);
    let tables = u32::from_le_bytes(end[1..5].try_into().expect("count"));
    let mut file = body.to_vec();
    file[12..16].copy_from_slice(&PREVIOUS_SCHEMA_VERSION.to_le_bytes());
    let name = DROPPED_TABLES[0].name();
    file.push(TABLE_TAG);
    file.push(u8::try_from(name.len()).expect("short name"));
    file.extend_from_slice(name.as_bytes());
    file.extend_from_slice(&1u64.to_le_bytes());
    let key = <(&str, u64) as redb::Value>::as_bytes(&("guitar", 1));
    file.extend_from_slice(&u32::try_from(key.len()).expect("key").to_le_bytes());
    file.extend_from_slice(&key);
    file.extend_from_slice(&0u32.to_le_bytes());
    file.push(END_TAG);
    file.extend_from_slice(&(tables + 1).to_le_bytes());
    let checksum = crc32fast::hash(&file);
    file.extend_from_slice(&checksum.to_le_bytes());
    std::fs::write(path, file).expect("write");
}

#[test]
fn a_snapshot_of_the_previous_schema_loads_without_its_dropped_table() {
    let (source, dir) = setup();
    let path = dir.path().join("snapshot.bin");
    write_at(&source, &path, 3);
    rewrite_as_previous_schema(&path);
    let target = TestStore::new();
    target.apply(category("Other")).expect("a category");
    load_into(&target, &path, 3).expect("load");
    assert_eq!(target.digest(), source.digest());
    let names = table_names(&target.store);
    assert!(
        !names.iter().any(|name| is_dropped_table(name)),
        "{names:?}"
    );

    // The same table in a file of this schema is not one of its tables: refused whole.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[12..16].copy_from_slice(&SCHEMA_VERSION.to_le_bytes());
    let checksum_at = bytes.len() - 4;
    let checksum = crc32fast::hash(&bytes[..checksum_at]);
    bytes[checksum_at..].copy_from_slice(&checksum.to_le_bytes());
    std::fs::write(&path, bytes).expect("write");
    match load_into(&TestStore::new(), &path, 3) {
        Err(StoreError::SnapshotInvalid { reason, .. }) => {
            assert!(reason.contains("products_by_name"), "{reason}")
        }
        other => panic!("expected SnapshotInvalid, got {other:?}"),
    }
}

#[test]
fn an_older_snapshot_never_replaces_a_newer_one() {
    let (store, dir) = setup();
    let files = SnapshotFiles::new(dir.path().join("snapshot.bin"));
    let newer = files.temporary("receiving");
    write_at(&store, &newer, 9);
    assert!(files.keep(&newer, Some(log_id(1, 1, 9))).expect("keep"));
    // Built from a state before the install, finished after it.
    let older = files.temporary("building");
    write_at(&store, &older, 4);
    assert!(!files.keep(&older, Some(log_id(1, 1, 4))).expect("keep"));
    assert_eq!(current_index(&files), Some(9));
    assert!(!older.exists(), "the older file is removed");
    let next = files.temporary("building");
    write_at(&store, &next, 12);
    assert!(files.keep(&next, Some(log_id(1, 1, 12))).expect("keep"));
    assert_eq!(current_index(&files), Some(12));
}

#[test]
fn a_file_that_is_not_a_snapshot_counts_as_no_snapshot() {
    let (_store, dir) = setup();
    let files = SnapshotFiles::new(dir.path().join("snapshot.bin"));
    assert!(files.open_current().expect("open").is_none());
    // What the previous, in-memory format looked like to this reader: no magic.
    std::fs::write(dir.path().join("snapshot.bin"), b"\x00\x01bincode").expect("write");
    assert!(files.open_current().expect("open").is_none());
}

#[test]
fn a_restart_keeps_an_install_that_committed_and_removes_leftovers() {
    let (store, dir) = setup();
    let current = dir.path().join("snapshot.bin");
    let earlier = |name: &str| dir.path().join(format!("snapshot.bin.{name}"));
    // Left by an earlier process: an install of index 5 that committed (the state
    // machine is at 6 now), files being built or received.
    write_at(&store, &earlier("installing-00000000000000aa"), 5);
    for name in [
        "building-00000000000000aa-0",
        "receiving-00000000000000aa-3",
    ] {
        std::fs::write(earlier(name), b"half").expect("write");
    }
    let files = SnapshotFiles::new(current.clone());
    let ours = files.temporary("receiving");
    std::fs::write(&ours, b"arriving").expect("write");
    files.tidy_once(|| Ok(Some(log_id(1, 1, 6)))).expect("tidy");
    assert_eq!(current_index(&files), Some(5));
    let mut left: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| entry.expect("entry").path())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![current, ours],
        "only this process's file is left"
    );

    // An install that did not commit (the state machine is still at 2) is dropped.
    let (store, dir) = setup();
    let staged = dir.path().join("snapshot.bin.installing-00000000000000bb");
    write_at(&store, &staged, 5);
    let files = SnapshotFiles::new(dir.path().join("snapshot.bin"));
    files.tidy_once(|| Ok(Some(log_id(1, 1, 2)))).expect("tidy");
    assert_eq!(current_index(&files), None);
    assert!(!staged.exists());
}
