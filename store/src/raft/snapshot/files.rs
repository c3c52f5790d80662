//! The snapshot files beside the store: the current one, temporary ones being built,
//! received or installed, and what a restart finds left of them; and [`SnapshotFile`], a
//! file as openraft reads and writes it.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use super::load::read_meta;
use super::{Meta, io_error};
use crate::error::StoreError;
use crate::raft::RaftLogId;

/// A random number of this process, in the names of its temporary files, so that files
/// left by an earlier process can be told apart and removed.
fn process_nonce() -> u64 {
    static NONCE: OnceLock<u64> = OnceLock::new();
    *NONCE.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    })
}

/// The current snapshot file and its temporary siblings (`<name>.building-…`,
/// `<name>.receiving-…`, `<name>.installing-…`).
#[derive(Debug)]
pub(crate) struct SnapshotFiles {
    current: PathBuf,
    /// Held while the current file is replaced, so that an older snapshot built
    /// concurrently never replaces a newer installed one.
    replacing: Mutex<()>,
    tidied: AtomicBool,
    counter: AtomicU64,
}

/// A state-machine log id, for comparing snapshots.
type LastLogId = Option<RaftLogId>;

impl SnapshotFiles {
    pub(crate) fn new(current: PathBuf) -> SnapshotFiles {
        SnapshotFiles {
            current,
            replacing: Mutex::new(()),
            tidied: AtomicBool::new(false),
            counter: AtomicU64::new(0),
        }
    }

    fn file_name(&self) -> String {
        self.current
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "snapshot".to_owned())
    }

    fn sibling(&self, name: String) -> PathBuf {
        self.current.with_file_name(name)
    }

    /// A new, unused temporary path of this process for `kind` (building or receiving).
    pub(crate) fn temporary(&self, kind: &str) -> PathBuf {
        let number = self.counter.fetch_add(1, Ordering::Relaxed);
        self.sibling(format!(
            "{}.{kind}-{:016x}-{number}",
            self.file_name(),
            process_nonce()
        ))
    }

    /// Where a received snapshot waits while its install commits.
    pub(crate) fn installing(&self) -> PathBuf {
        self.sibling(format!(
            "{}.installing-{:016x}",
            self.file_name(),
            process_nonce()
        ))
    }

    fn sync_directory(&self) -> Result<(), StoreError> {
        let directory = match self.current.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        File::open(directory)
            .and_then(|d| d.sync_all())
            .map_err(io_error(directory, "sync"))
    }

    /// The last log id of the current snapshot; none when there is none or it is unreadable.
    fn current_last_log_id(&self) -> Result<Option<LastLogId>, StoreError> {
        match self.open_current()? {
            Some((_, meta)) => Ok(Some(meta.last_log_id)),
            None => Ok(None),
        }
    }

    /// Renames the fsynced snapshot at `temporary` (of `last_log_id`) over the current one,
    /// unless the current one is newer; then the temporary file is removed instead. Answers
    /// whether it became current.
    pub(crate) fn keep(
        &self,
        temporary: &Path,
        last_log_id: LastLogId,
    ) -> Result<bool, StoreError> {
        let _replacing = self
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self
            .current_last_log_id()?
            .is_some_and(|current| current > last_log_id)
        {
            remove_quietly(temporary);
            return Ok(false);
        }
        std::fs::rename(temporary, &self.current).map_err(io_error(temporary, "rename"))?;
        self.sync_directory()?;
        Ok(true)
    }

    /// The received snapshot in `file` as a durable file of ours, with its path and guard:
    /// the file itself when it was received into `received`, else a copy.
    pub(crate) fn make_durable(
        &self,
        mut file: File,
        received: RemoveOnDrop,
    ) -> Result<(File, PathBuf, RemoveOnDrop), StoreError> {
        let (file, path, received) = match received.path() {
            Some(path) => (file, path.to_owned(), received),
            None => {
                let path = self.temporary("receiving");
                let guard = RemoveOnDrop::new(path.clone());
                let mut copy = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(io_error(&path, "create"))?;
                file.seek(SeekFrom::Start(0))
                    .and_then(|_| io::copy(&mut file, &mut copy))
                    .map_err(io_error(&path, "copy into"))?;
                (copy, path, guard)
            }
        };
        file.sync_all().map_err(io_error(&path, "sync"))?;
        Ok((file, path, received))
    }

    /// Moves the received file at `path` to its installing name (durably) before its
    /// install commits; its `guard` follows it.
    pub(crate) fn stage(
        &self,
        path: &Path,
        guard: &mut RemoveOnDrop,
    ) -> Result<PathBuf, StoreError> {
        let installing = self.installing();
        std::fs::rename(path, &installing).map_err(io_error(path, "rename"))?;
        guard.0 = Some(installing.clone());
        self.sync_directory()?;
        Ok(installing)
    }

    /// Opens the current snapshot with its meta, positioned at its start. A file that is
    /// not a snapshot this build reads (an older format, damage) counts as none: the state
    /// machine builds a new one when openraft needs it.
    pub(crate) fn open_current(&self) -> Result<Option<(File, Meta)>, StoreError> {
        let path = &self.current;
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path, "open")(e)),
        };
        match read_meta(&mut file, path) {
            Ok(meta) => {
                file.seek(SeekFrom::Start(0))
                    .map_err(io_error(path, "seek"))?;
                Ok(Some((file, meta)))
            }
            Err(error @ StoreError::SnapshotInvalid { .. }) => {
                tracing::warn!(%error, "ignoring the current snapshot file");
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Once per process, removes what an earlier process left behind: temporary files of
    /// snapshots being built or received, and a received snapshot whose install may not
    /// have committed: it becomes current if the state machine reached its last log id
    /// (`applied`), and is removed otherwise.
    pub(crate) fn tidy_once(
        &self,
        applied: impl FnOnce() -> Result<LastLogId, StoreError>,
    ) -> Result<(), StoreError> {
        if self.tidied.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let applied = applied()?;
        let Some(directory) = self.current.parent() else {
            return Ok(());
        };
        let directory = if directory.as_os_str().is_empty() {
            Path::new(".")
        } else {
            directory
        };
        let entries = match std::fs::read_dir(directory) {
            Ok(entries) => entries,
            Err(e) => return Err(io_error(directory, "list")(e)),
        };
        let prefix = format!("{}.", self.file_name());
        let ours = format!("-{:016x}", process_nonce());
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(suffix) = name.strip_prefix(&prefix) else {
                continue;
            };
            let path = entry.path();
            if suffix.starts_with("installing-") && !suffix.ends_with(&ours) {
                self.recover_install(&path, applied)?;
            } else if (suffix.starts_with("building-") || suffix.starts_with("receiving-"))
                && !suffix.contains(&ours)
            {
                remove_quietly(&path);
            }
        }
        Ok(())
    }

    fn recover_install(&self, path: &Path, applied: LastLogId) -> Result<(), StoreError> {
        let meta = File::open(path)
            .map_err(io_error(path, "open"))
            .and_then(|mut file| read_meta(&mut file, path));
        match meta {
            Ok(meta) if meta.last_log_id <= applied => {
                tracing::info!(snapshot = %meta, "keeping a snapshot installed before a restart");
                self.keep(path, meta.last_log_id)?;
            }
            _ => remove_quietly(path),
        }
        Ok(())
    }
}

fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot remove a snapshot file");
        }
    }
}

/// Removes a temporary file when dropped, unless [`disarm`](RemoveOnDrop::disarm)ed: a file
/// being received that openraft gives up, a file whose install failed.
#[derive(Debug, Default)]
pub(crate) struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    pub(crate) fn new(path: PathBuf) -> RemoveOnDrop {
        RemoveOnDrop(Some(path))
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.0.as_deref()
    }

    /// The file was moved or kept: nothing to remove any more.
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let Some(path) = self.0.take() else {
            return;
        };
        // Off the async runtime when there is one.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || remove_quietly(&path));
            }
            Err(_) => remove_quietly(&path),
        }
    }
}

/// A snapshot file as openraft handles it: read in chunks to send a snapshot, or written
/// with the chunks of one being received (then removed if it is never installed).
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    received: RemoveOnDrop,
}

impl SnapshotFile {
    /// A snapshot file to read, positioned at its start.
    pub(crate) fn reading(file: File) -> SnapshotFile {
        SnapshotFile {
            file: tokio::fs::File::from_std(file),
            received: RemoveOnDrop::default(),
        }
    }

    /// A new file at `path` to write received chunks into.
    pub(crate) async fn receiving(path: PathBuf) -> Result<SnapshotFile, StoreError> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io_error(&path, "create"))?;
        Ok(SnapshotFile {
            file,
            received: RemoveOnDrop::new(path),
        })
    }

    /// The file, once every write has finished, and the guard of a received file.
    pub(crate) async fn into_parts(self) -> (File, RemoveOnDrop) {
        (self.file.into_std().await, self.received)
    }
}

impl tokio::io::AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl tokio::io::AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}
