//! `GET /_cluster/backup` (on the API address and on the peer address, behind the cluster
//! secret): an online, consistent backup of this node's state, streamed as it is written
//! from one redb read transaction (writers go on), in the snapshot file layout with its
//! CRC-32. `soundwave backup` (`src/backup.rs`) is the client.

use std::io::{self, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, header};
use http_body::Frame;
use store::Store;
use tokio::sync::mpsc;

use super::node::Cluster;
use super::peer_api::same_secret;
use crate::error::ApiError;

/// Bytes sent to the client at a time.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks written ahead of what the client has taken: the memory a backup holds.
const CHUNKS_AHEAD: usize = 4;

type Chunk = Result<Bytes, io::Error>;

/// Whether `headers` carry this cluster's secret. A node without a secret refuses them all.
pub fn has_cluster_secret(cluster: &Cluster, headers: &HeaderMap) -> bool {
    let given = headers
        .get(super::network::SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    !cluster.secret.is_empty() && same_secret(given, cluster.secret.as_bytes())
}

/// The backup answer, if `headers` carry the secret.
pub fn backup_response(cluster: &Cluster, headers: &HeaderMap) -> Response {
    if !has_cluster_secret(cluster, headers) {
        return ApiError::ClusterSecretRequired.into_response();
    }
    stream_backup(cluster.store.clone())
}

/// Writes the backup on the blocking pool into a bounded channel that the body reads: the
/// client's pace sets the writer's, and a client that leaves stops it.
fn stream_backup(store: Arc<Store>) -> Response {
    let (sender, receiver) = mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter {
            sender: sender.clone(),
            buffer: Vec::with_capacity(CHUNK_BYTES),
        };
        match store::raft::write_backup(&store, out, Path::new("the backup stream")) {
            Ok((_, meta)) => tracing::info!(
                log_index = meta.log_index(),
                members = ?meta.member_ids(),
                "backup sent"
            ),
            Err(error) => {
                tracing::warn!(%error, "backup not sent whole");
                // Ends the body with an error: the client sees a cut answer.
                let _ = sender.blocking_send(Err(io::Error::other(error.to_string())));
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::new(ChannelBody(receiver)),
    )
        .into_response()
}

/// A `Write` that sends what it is given to the channel in chunks of [`CHUNK_BYTES`].
struct ChannelWriter {
    sender: mpsc::Sender<Chunk>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

/// A response body of the chunks the channel brings.
struct ChannelBody(mpsc::Receiver<Chunk>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }
}
