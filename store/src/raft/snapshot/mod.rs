//! State-machine snapshots as files: the raw rows of every application table, streamed from
//! one read transaction into a file beside the store, sent to other nodes in chunks by
//! openraft, and loaded back row by row into one write transaction. Memory stays bounded by
//! the I/O buffers and one row, whatever the size of the state.
//!
//! A snapshot file (integers little-endian):
//!
//! ```text
//! header  "SWSNAPSH" · format version u32 · schema version u32 · meta length u32 · meta (bincode)
//! table*  1u8 · name length u8 · name · row count u64 · row*
//! row     key length u32 · key · value length u32 · value      (redb's own encodings)
//! end     0xFFu8 · table count u32 · CRC-32 of every byte before it u32
//! ```
//!
//! Files are written under a temporary name, fsynced, then renamed over the current one
//! ([`SnapshotFiles::keep`]), so a crash never leaves a half-written current snapshot.
//!
//! `write.rs` writes a file from a read transaction, `load.rs` verifies one and loads it into
//! a write transaction, `files.rs` keeps the files beside the store, `backup.rs` writes,
//! checks and restores backups in the same layout.

mod backup;
mod files;
mod load;
#[cfg(test)]
mod tests;
mod write;

use std::io;
use std::path::Path;

use openraft::storage::SnapshotMeta;

use super::{NodeId, RaftNode};
use crate::error::StoreError;

pub use backup::{
    BackupMeta, CheckedBackup, check_backup, raft_state_is_empty, restore_backup, write_backup,
};
pub use files::SnapshotFile;
pub(crate) use files::{RemoveOnDrop, SnapshotFiles};
pub(crate) use load::load_snapshot;
pub(crate) use write::write_snapshot;

pub(crate) type Meta = SnapshotMeta<NodeId, RaftNode>;

/// The first bytes of a snapshot file.
const MAGIC: [u8; 8] = *b"SWSNAPSH";
/// Bumped whenever the layout of the file changes.
const FORMAT_VERSION: u32 = 1;
const TABLE_TAG: u8 = 1;
const END_TAG: u8 = 0xFF;
/// Size of the read and write buffers of snapshot files.
const BUFFER_BYTES: usize = 1024 * 1024;
/// Size of the read buffer when only the header is read.
const HEADER_BUFFER_BYTES: usize = 8 * 1024;

/// How an I/O error on the snapshot file at `path` is told: a file that ends early is
/// unusable (truncated), any other error is the I/O failure of `action`.
fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    move |source| {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            invalid(path, "the file ends early (truncated)")
        } else {
            StoreError::SnapshotIo {
                path: path.display().to_string(),
                action,
                source,
            }
        }
    }
}

/// The snapshot file at `path` is not one this build can use, for `reason`.
fn invalid(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::SnapshotInvalid {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}
