//! The `soundwave` binary's library: command line and configuration, the HTTP API over the
//! store, authentication, the response cache, and the node's start-up. The data model and
//! the state machine live in the `store` crate.

pub mod api;
pub mod auth;
pub mod backup;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod cluster_client;
pub mod compression;
pub mod config;
pub mod demo;
pub mod error;
pub mod input;
pub mod logging;
pub mod node;
pub mod output;
pub mod private_files;
pub mod random;
pub mod self_signed;
pub mod server;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod up;
