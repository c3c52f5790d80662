//! The peer network, the client side: `PeerClient` sends openraft's RPCs, forwarded
//! proposals and read-index requests over HTTP to a peer's address, every request carrying
//! the cluster secret; `PeerNetwork` is openraft's network over it. The side that answers
//! them is `peer_api.rs`.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use store::raft::{NodeId, RaftConfig, RaftNode};

/// Header carrying the cluster secret on every peer request.
pub const SECRET_HEADER: &str = "x-soundwave-cluster-secret";

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| e.to_string())
}

/// An HTTP client for peer requests, shared by every connection.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: String,
}

/// Why a peer request failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("peer {0} did not answer in time: {1}")]
    TimedOut(String, String),
    #[error("peer {0} answered {1}")]
    Refused(String, String),
}

impl PeerError {
    /// A request that timed out reached a live but busy peer (a large append under load);
    /// anything else that failed before an answer means the peer cannot be reached.
    fn from_http(addr: &str, error: &reqwest::Error) -> PeerError {
        if error.is_timeout() {
            PeerError::TimedOut(addr.to_owned(), error.to_string())
        } else {
            PeerError::Unreachable(addr.to_owned(), error.to_string())
        }
    }
}

impl PeerClient {
    /// `local` is this node's own peer address: when it names one interface (not
    /// `0.0.0.0`), requests to peers leave from it, so a host with several addresses sends
    /// cluster traffic from the address its peers know it by (and a firewall rule written
    /// for that address covers all of this node's cluster traffic).
    pub fn new(secret: String, local: Option<std::net::IpAddr>) -> PeerClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .local_address(local.filter(|ip| !ip.is_unspecified()))
            .build()
            .unwrap_or_default();
        PeerClient { http, secret }
    }

    /// POSTs a bincode body and decodes a bincode answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let body = encode(request).map_err(|e| PeerError::Refused(addr.to_owned(), e))?;
        let response = self
            .http
            .post(format!("http://{addr}{path}"))
            .header(SECRET_HEADER, &self.secret)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| PeerError::from_http(addr, &e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| PeerError::from_http(addr, &e))?;
        if !status.is_success() {
            return Err(PeerError::Refused(
                addr.to_owned(),
                format!("{status}: {}", String::from_utf8_lossy(&bytes)),
            ));
        }
        decode(&bytes).map_err(|e| PeerError::Refused(addr.to_owned(), e))
    }

    /// Whether a peer answers (with this secret).
    pub async fn ping(&self, addr: &str) -> bool {
        self.http
            .get(format!("http://{addr}/_cluster/ping"))
            .header(SECRET_HEADER, &self.secret)
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

/// Media bytes (product images) one append request carries at most, unless its first entry
/// alone carries more: an append must complete within one heartbeat interval (openraft's
/// append timeout), and stay under the peer API's body limit (64 MiB). With 6 MiB, appends
/// of two 3 MB images missed the 100 ms of a debug build's test cluster.
const MAX_APPEND_MEDIA_BYTES: usize = 4 * 1024 * 1024;

/// `None` when `entries` may go in one append; else how many of the first entries may.
fn entries_within_media_limit(entries: &[openraft::Entry<RaftConfig>]) -> Option<u64> {
    let mut media = 0usize;
    for (n, entry) in entries.iter().enumerate() {
        if let openraft::EntryPayload::Normal(proposal) = &entry.payload {
            media += proposal
                .commands
                .iter()
                .map(|(_, command)| command.media_bytes())
                .sum::<usize>();
        }
        if media > MAX_APPEND_MEDIA_BYTES && n > 0 {
            return Some(n as u64);
        }
    }
    None
}

/// openraft's view of the peer network.
#[derive(Clone)]
pub struct PeerNetwork {
    pub client: PeerClient,
}

pub struct PeerConnection {
    client: PeerClient,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<RaftConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &RaftNode) -> PeerConnection {
        PeerConnection {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl PeerConnection {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, RaftNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        RaftError<NodeId, E>: DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .client
            .call(&self.addr, path, request, option.hard_ttl())
            .await
            .map_err(|error| match error {
                // A dead peer is unreachable (openraft backs off for 500 ms) rather than a
                // network error (which it retries with the next event). A busy peer that
                // timed out is not dead: backing off would stall replication, and every write
                // waiting for it, for half a second.
                PeerError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&error)),
                PeerError::TimedOut(..) | PeerError::Refused(..) => {
                    RPCError::Network(NetworkError::new(&error))
                }
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<RaftConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<RaftConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        if let Some(fits) = entries_within_media_limit(&rpc.entries) {
            // openraft sends again with at most `fits` entries.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fits),
            ));
        }
        self.rpc("/_cluster/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<RaftConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, RaftNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc("/_cluster/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        self.rpc("/_cluster/vote", &rpc, &option).await
    }
}
