//! The cluster: every write is proposed through openraft's replicated log and applied by
//! every node's state machine in the same order. A node that does not lead forwards its
//! proposals to the leader; a client is answered once its own node has applied the command.
//! A config with one node, or none, is a one-member cluster on the same code path.
//!
//! [`Cluster`] (`node.rs`) is this node's member; `start.rs` starts and stops it on its own
//! runtime (`runtime.rs`) with the members and settings of `config.rs`; `proposer.rs` gets
//! commands into the log; `waiters.rs` answers the callers once applied; `snapshot.rs` is
//! the snapshot policy; `health.rs` what the cluster reports; `network.rs` and
//! `peer_api.rs` the two sides of the peer network; `backup.rs` the backup endpoint;
//! `identity.rs` the refusal of a member that lost its log, `membership.rs` joins,
//! promotions, removals and the members' view, `join.rs` the joining node's side (the JSON
//! endpoints are `api::membership`).

mod backup;
mod config;
mod health;
mod identity;
mod join;
mod membership;
mod network;
mod node;
mod peer_api;
mod proposer;
mod runtime;
mod snapshot;
mod start;
mod waiters;

pub use backup::{backup_response, has_cluster_secret};
pub use config::ClusterError;
pub use membership::{JoinRequest, MemberView, MembersView, MembershipError};
pub use network::SECRET_HEADER;
pub use node::Cluster;
