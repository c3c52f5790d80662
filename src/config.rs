//! Configuration: defaults, then `config.toml`, then `SOUNDWAVE_*` environment variables and
//! command-line flags (the `cli` module), in that order of precedence.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub auth: AuthConfig,
    /// `soundwave lb`: the load balancer (the `lb` crate owns its keys and checks).
    pub lb: lb::LbConfig,
    pub cluster: ClusterConfig,
}

/// The nodes of the cluster and how they replicate.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Shared by every node; every peer request carries it. Required with several nodes.
    pub secret: String,
    /// Every member, `[[cluster.nodes]]` tables. Empty: this node alone.
    pub nodes: Vec<ClusterMember>,
    /// The leader's heartbeat.
    pub heartbeat_ms: u64,
    /// A follower hearing no leader for 1 to 2 times this starts an election.
    pub election_timeout_ms: u64,
    /// A write not applied within this answers 503.
    pub write_timeout_ms: u64,
    /// A snapshot is taken once the log since the last one holds this many entries (and at
    /// least half as many bytes as that snapshot), and the log is purged behind it.
    pub snapshot_after_entries: u64,
    /// Log entries kept behind a snapshot, for followers that lag a little.
    pub logs_kept_after_snapshot: u64,
    /// A node outside `nodes`: its peer address (raft and forwarding). With `join` it joins
    /// a running cluster; once joined it restarts without `join`.
    pub peer_listen: Option<SocketAddr>,
    /// The API URL of any member of a running cluster to join, as a learner promoted to
    /// voter once caught up. Empty: no join.
    pub join: String,
    /// Stay a learner (a read replica: reads from its own state, writes forwarded).
    pub read_only: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            secret: String::new(),
            nodes: Vec::new(),
            heartbeat_ms: 100,
            election_timeout_ms: 500,
            write_timeout_ms: 5000,
            snapshot_after_entries: 5000,
            logs_kept_after_snapshot: 1000,
            peer_listen: None,
            join: String::new(),
            read_only: false,
        }
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMember {
    pub id: u64,
    /// Its client (HTTP API) address.
    pub api: std::net::SocketAddr,
    /// Its peer address (raft and forwarding); needed when there are several members.
    #[serde(default)]
    pub peer: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, shown in `X-Soundwave-Node`.
    pub id: u64,
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Directory of the node's store file.
    pub data_dir: PathBuf,
    /// Fill an empty store with the demo catalog and users.
    pub demo: bool,
    /// Products of the demo catalog.
    pub demo_products: usize,
    /// Orders the demo places (by demo buyers) after the catalog: for runs at scale.
    pub demo_orders: usize,
    /// Bytes of ready-to-send responses the cache may hold.
    pub cache_capacity_bytes: u64,
    /// Bytes of redb's page cache (store pages kept in memory).
    pub store_page_cache_bytes: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest accepted product image upload (413 beyond). At most 16 MiB: an image
    /// travels in one replicated log entry.
    pub max_image_bytes: usize,
    /// A request taking longer is answered 503.
    pub request_timeout_secs: u64,
    /// Default and largest `limit` of list endpoints.
    pub page_size: usize,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` are believed (the balancer).
    pub trusted_proxies: Vec<IpAddr>,
    /// How long a client may take to send a request's headers, and a keep-alive connection
    /// may stay idle, before the node closes it.
    pub header_timeout_secs: u64,
    /// Bearer token that `GET /metrics` requires; empty: only loopback peers (the machine's
    /// own scraper) may read it. The balancer never forwards `/metrics`.
    pub metrics_token: String,
    /// Open client connections at most; more get 503 at once. Keep it below the process's
    /// descriptor limit (`ulimit -n`), less what the store and the cluster use.
    pub max_connections: usize,
    /// Open connections from one client IP at most (trusted proxies are not bounded).
    pub max_connections_per_ip: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("./data"),
            demo: false,
            demo_products: 1000,
            demo_orders: 0,
            cache_capacity_bytes: 64 * 1024 * 1024,
            store_page_cache_bytes: store::DEFAULT_PAGE_CACHE_BYTES as u64,
            max_body_bytes: 1024 * 1024,
            max_image_bytes: 5 * 1024 * 1024,
            request_timeout_secs: 30,
            page_size: 1000,
            // The balancer on the same machine, as config.toml says.
            trusted_proxies: vec![IpAddr::from([127, 0, 0, 1])],
            header_timeout_secs: 30,
            metrics_token: String::new(),
            max_connections: 10_000,
            max_connections_per_ip: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 signing secret. Empty: generated once and kept in the store.
    pub jwt_secret: String,
    pub access_token_lifetime_secs: u64,
    pub refresh_token_lifetime_secs: u64,
    /// Failed logins for one username from one client IP within the window before 429.
    pub login_max_failures: u32,
    /// Failed logins for one username from all client IPs within the window before 429.
    pub login_max_failures_per_username: u32,
    /// Failed logins from one client IP within the window before 429.
    pub login_max_failures_per_ip: u32,
    pub login_failure_window_secs: u64,
    /// Sign-ups from one client IP per hour before 429.
    pub signups_per_ip_per_hour: u32,
    /// When both are set, this staff user is made to exist at start.
    pub admin_username: String,
    pub admin_password: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: String::new(),
            access_token_lifetime_secs: 300,
            refresh_token_lifetime_secs: 86_400,
            login_max_failures: 5,
            login_max_failures_per_username: 20,
            login_max_failures_per_ip: 50,
            login_failure_window_secs: 300,
            signups_per_ip_per_hour: 20,
            admin_username: String::new(),
            admin_password: String::new(),
        }
    }
}

impl Config {
    /// Defaults overlaid with the TOML file, if one is given.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(what.to_owned()));
        if self.node.page_size == 0 {
            return invalid("node.page_size must be at least 1");
        }
        if self.node.demo_orders > 0 && self.node.demo_products == 0 {
            return invalid("node.demo_orders needs node.demo_products of at least 1");
        }
        if self.node.header_timeout_secs == 0 {
            return invalid("node.header_timeout_secs must be at least 1");
        }
        if self.node.max_connections == 0 || self.node.max_connections_per_ip == 0 {
            return invalid(
                "node.max_connections and node.max_connections_per_ip must be at least 1",
            );
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.node.max_image_bytes) {
            return invalid("node.max_image_bytes must be between 1024 and 16777216");
        }
        if self.node.max_body_bytes < 1024 {
            return invalid("node.max_body_bytes must be at least 1024");
        }
        if self.auth.access_token_lifetime_secs == 0 || self.auth.refresh_token_lifetime_secs == 0 {
            return invalid("token lifetimes must be at least 1 second");
        }
        // The secret is checked when a node starts (`soundwave up` supplies one).
        if self.cluster.nodes.len() > 1 && self.cluster.nodes.iter().any(|m| m.peer.is_none()) {
            return invalid("every [[cluster.nodes]] member needs a peer address");
        }
        if !self.cluster.join.is_empty() {
            if !self.cluster.nodes.is_empty() {
                return invalid("a node joining a cluster (--join) has no [[cluster.nodes]]");
            }
            if self.cluster.peer_listen.is_none() {
                return invalid("a node joining a cluster (--join) needs --peer-listen");
            }
            if !self.cluster.join.starts_with("http://") {
                return invalid("--join takes a member's API URL, http://HOST:PORT");
            }
        }
        if self.cluster.peer_listen.is_some() && !self.cluster.nodes.is_empty() {
            return invalid(
                "--peer-listen is for a node outside [[cluster.nodes]] (members take `peer`)",
            );
        }
        if self.cluster.heartbeat_ms == 0
            || self.cluster.election_timeout_ms <= self.cluster.heartbeat_ms
        {
            return invalid("cluster.election_timeout_ms must exceed cluster.heartbeat_ms (> 0)");
        }
        if self.auth.admin_username.is_empty() != self.auth.admin_password.is_empty() {
            return invalid("set both the admin username and the admin password, or neither");
        }
        if !self.auth.admin_password.is_empty() && self.auth.admin_password.chars().count() < 8 {
            return invalid("the admin password must have at least 8 characters");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_config_parses_and_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let config = Config::load(Some(&path)).expect("config.toml parses");
        config.validate().expect("config.toml is valid");
        assert_eq!(config.node.page_size, 1000);
        let ids: Vec<u64> = config.cluster.nodes.iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 2, 3], "the ready local topology has three nodes");
    }

    /// config.toml documents the defaults: a setting left out means what the file says.
    /// Only the topology (the three cluster members) is the file's own.
    #[test]
    fn the_shipped_config_says_exactly_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let mut shipped = Config::load(Some(&path)).expect("config.toml parses");
        let defaults = Config::default();
        shipped.cluster.nodes.clone_from(&defaults.cluster.nodes);
        assert_eq!(
            format!("{:#?}", shipped.node),
            format!("{:#?}", defaults.node)
        );
        assert_eq!(
            format!("{:#?}", shipped.auth),
            format!("{:#?}", defaults.auth)
        );
        assert_eq!(format!("{:#?}", shipped.lb), format!("{:#?}", defaults.lb));
        assert_eq!(
            format!("{:#?}", shipped.cluster),
            format!("{:#?}", defaults.cluster)
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let result: Result<Config, _> = toml::from_str("[node]\nlisten_addr = \"x\"\n");
        assert!(result.is_err());
    }
}
