//! [`LbError`]: everything that can stop the balancer from starting.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can stop the balancer from starting.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("invalid load balancer configuration: {0}")]
    Invalid(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the run directory {path}: {source}")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use the TLS file {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("cannot upgrade: {0}")]
    Upgrade(String),
}
