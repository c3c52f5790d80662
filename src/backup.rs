//! `soundwave backup` and `soundwave restore`: the client of a node's `/_cluster/backup`
//! (the backup streamed into a temporary file, checked whole, then renamed into place), and
//! the making of a data directory from a backup file, from which `soundwave node` starts a
//! new cluster with the backup's users, catalog, orders and JWT secret.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use store::StoreError;
use store::raft::CheckedBackup;

use crate::cluster::SECRET_HEADER;
use crate::node::STORE_FILE;

/// How long to wait for a node to connect and to start answering (the body then streams
/// for as long as it takes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest error answer shown.
const MAX_SHOWN_ANSWER: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "no cluster secret: pass --cluster-secret or set SOUNDWAVE_CLUSTER_SECRET (the nodes' \
         [cluster] secret)"
    )]
    MissingSecret,
    #[error("cannot ask {url} for a backup: {source}")]
    Request { url: String, source: reqwest::Error },
    #[error("{url} refused the backup: {status} {answer}")]
    Refused {
        url: String,
        status: reqwest::StatusCode,
        answer: String,
    },
    #[error("the backup from {url} was cut off: {source}")]
    Cut { url: String, source: reqwest::Error },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the data directory {0} is not empty: restore into a new or empty directory")]
    NotEmpty(String),
    #[error("the backup is unusable: {0}")]
    Unusable(#[from] StoreError),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.display().to_string();
    move |source| BackupError::Io {
        action,
        path,
        source,
    }
}

/// What a backup or a restore reports.
pub struct Outcome<'a> {
    pub done: &'static str,
    pub path: &'a Path,
    pub backup: CheckedBackup,
}

impl fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let meta = &self.backup.meta;
        let term = meta.last_log_id.map(|id| id.leader_id.term).unwrap_or(0);
        write!(
            f,
            "{} {}: log index {} (term {term}), members {:?}, state digest {:016x}",
            self.done,
            self.path.display(),
            meta.log_index(),
            meta.member_ids(),
            self.backup.digest,
        )
    }
}

/// Fetches a backup of the node at `from` (its API or peer address, `http://HOST:PORT`)
/// into `out`: streamed into a temporary file beside it, fsynced, checked whole (structure
/// and CRC-32), then renamed over `out`. Nothing is left at `out` unless the check passed.
pub async fn backup(from: &str, out: &Path, secret: &str) -> Result<CheckedBackup, BackupError> {
    if secret.is_empty() {
        return Err(BackupError::MissingSecret);
    }
    let url = format!("{}/_cluster/backup", from.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|source| BackupError::Request {
            url: url.clone(),
            source,
        })?;
    let answer = tokio::time::timeout(
        ANSWER_TIMEOUT,
        client.get(&url).header(SECRET_HEADER, secret).send(),
    )
    .await;
    let mut response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(source)) => return Err(BackupError::Request { url, source }),
        Err(_) => {
            return Err(BackupError::Io {
                action: "get an answer in time from",
                path: url,
                source: std::io::ErrorKind::TimedOut.into(),
            });
        }
    };
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let answer: String = text.chars().take(MAX_SHOWN_ANSWER).collect();
        return Err(BackupError::Refused {
            url,
            status,
            answer,
        });
    }
    let temporary = temporary_path(out);
    let written = async {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
            .map_err(io_error("create", &temporary))?;
        while let Some(chunk) = response.chunk().await.map_err(|source| BackupError::Cut {
            url: url.clone(),
            source,
        })? {
            file.write_all(&chunk)
                .map_err(io_error("write", &temporary))?;
        }
        file.sync_all().map_err(io_error("sync", &temporary))?;
        let checked = {
            let temporary = temporary.clone();
            tokio::task::spawn_blocking(move || store::raft::check_backup(&temporary))
                .await
                .map_err(|e| BackupError::Io {
                    action: "check",
                    path: url.clone(),
                    source: std::io::Error::other(e.to_string()),
                })??
        };
        std::fs::rename(&temporary, out).map_err(io_error("rename into", out))?;
        sync_parent(out)?;
        Ok(checked)
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// `out`'s temporary sibling, named after this process.
fn temporary_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".to_owned());
    out.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

fn sync_parent(path: &Path) -> Result<(), BackupError> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync", parent))
}

/// Makes `data_dir` (new or empty) a data directory holding the state of the backup at
/// `file`, checked whole first. `soundwave node --data-dir DATA_DIR` then starts a new
/// cluster on it (one member when it has no `[cluster]` nodes) with the backup's state.
pub fn restore(file: &Path, data_dir: &Path) -> Result<CheckedBackup, BackupError> {
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty(data_dir.display().to_string()));
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("read", data_dir)(error)),
    }
    // Checked before the directory is made: a bad file leaves nothing behind.
    store::raft::check_backup(file)?;
    crate::private_files::private_data_dir(data_dir).map_err(io_error("make", data_dir))?;
    let store_path = data_dir.join(STORE_FILE);
    let restored = store::raft::restore_backup(file, &store_path);
    if restored.is_err() {
        let _ = std::fs::remove_file(&store_path);
    }
    Ok(restored?)
}
