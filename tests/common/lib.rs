//! The black-box harness of Soundwave's integration tests, a dev-only library crate
//! (`soundwave-testkit`) so that each test binary uses what it needs of it.
//!
//! Every test starts its own `soundwave node` process (the real binary Cargo built for the
//! tests) on `127.0.0.1:0` with a fresh data directory, waits for the
//! `listening on http://...` line on stdout and then talks HTTP/JSON to it with reqwest.
//! `node` is that process and its client; `process` starts and watches children;
//! `response` holds what a request got back and the expectations about it; `fixtures` the
//! request bodies and names; `jwt` forges tokens; `cluster` runs several nodes as one
//! cluster; `lb` the balancer and a scripted upstream; `browser` a headless Chromium.

pub mod browser;
pub mod cluster;
pub mod fixtures;
pub mod jwt;
pub mod lb;
pub mod node;
pub mod process;
pub mod response;

pub use fixtures::*;
pub use jwt::*;
pub use node::*;
pub use process::*;
pub use reqwest::Method;
pub use response::*;
pub use serde_json::{Value, json};
