//! The command line: `soundwave node ...` and `soundwave lb ...`. Flags override
//! `SOUNDWAVE_*` environment variables, which override the config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};

#[derive(Debug, Parser)]
#[command(
    name = "soundwave",
    version,
    about = "Soundwave: a marketplace backend for the music community"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API from this node's embedded store.
    Node(NodeArgs),
    /// Balance clients over nodes: IP hash over primaries, backups when no primary is up.
    Lb(LbArgs),
    /// Start every node of the config and the balancer, until Ctrl-C.
    Up(UpArgs),
    /// Fetch an online, consistent backup of a node's state into one checked file.
    Backup(BackupArgs),
    /// Make a data directory from a backup file: `soundwave node --data-dir DIR` then starts
    /// a new cluster with the backup's users, catalog and orders.
    Restore(RestoreArgs),
    /// Look at or change a running cluster's membership, through any member's API.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, their roles (voter or learner), the leader, each one's replication and lag.
    Status {
        #[command(flatten)]
        from: MemberApi,
        /// Print the JSON the member answers instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a member (a voter or a learner; the leader steps down). The removed node stops.
    Remove {
        /// The id of the node to remove.
        id: u64,
        #[command(flatten)]
        from: MemberApi,
    },
}

/// Which member to ask, and the cluster secret its `/_cluster/` endpoints require.
#[derive(Debug, Args)]
pub struct MemberApi {
    /// The API URL of any member, e.g. http://127.0.0.1:8001.
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The cluster's shared secret.
    #[arg(long, env = "SOUNDWAVE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: String,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A node's API (or peer) address, such as http://127.0.0.1:8000.
    #[arg(long)]
    pub from: String,
    /// The backup file to write (through a temporary file, renamed once checked).
    #[arg(long)]
    pub out: PathBuf,
    /// The cluster's shared secret.
    #[arg(long, env = "SOUNDWAVE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file (from `soundwave backup`).
    pub file: PathBuf,
    /// The new data directory (must not exist or be empty).
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// TOML configuration file with `[cluster]` nodes and `[lb]` (default: ./config.toml).
    #[arg(long, env = "SOUNDWAVE_CONFIG", default_value = "config.toml")]
    pub config: PathBuf,
    /// Also serve HTTPS (h2 and http/1.1) on the balancer: on `lb.tls_listen`, else port
    /// 8443 of `lb.listen`'s address, with `lb.tls_cert`/`lb.tls_key` when set, else a
    /// self-signed certificate for localhost made once in <data_dir>/tls.
    #[arg(long)]
    pub tls: bool,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// TOML configuration file (see config.toml).
    #[arg(long, env = "SOUNDWAVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id.
    #[arg(long, env = "SOUNDWAVE_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SOUNDWAVE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the store file.
    #[arg(long, env = "SOUNDWAVE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Fill an empty store with a demo catalog and demo users.
    #[arg(long, env = "SOUNDWAVE_DEMO")]
    pub demo: bool,
    /// Products of the demo catalog (default 1000).
    #[arg(long, env = "SOUNDWAVE_DEMO_PRODUCTS", value_name = "N")]
    pub demo_products: Option<usize>,
    /// Orders the demo places after the catalog, by demo buyers (default 0).
    #[arg(long, env = "SOUNDWAVE_DEMO_ORDERS", value_name = "N")]
    pub demo_orders: Option<usize>,
    /// HS256 signing secret for tokens.
    #[arg(long, env = "SOUNDWAVE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Shared secret of the cluster's peer network.
    #[arg(long, env = "SOUNDWAVE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Join the running cluster that this member's API belongs to (http://HOST:PORT), as
    /// a learner promoted to voter once caught up. A restart needs no --join.
    #[arg(long, env = "SOUNDWAVE_JOIN", value_name = "URL")]
    pub join: Option<String>,
    /// This node's peer address (raft), for a node outside `[[cluster.nodes]]`.
    #[arg(long, env = "SOUNDWAVE_PEER_LISTEN", value_name = "ADDR")]
    pub peer_listen: Option<SocketAddr>,
    /// Stay a learner: a read replica that serves reads from its own state and forwards
    /// writes to the leader.
    #[arg(long, env = "SOUNDWAVE_READ_ONLY")]
    pub read_only: bool,
    /// Sign-ups from one client IP per hour before 429 (default 20).
    #[arg(long, env = "SOUNDWAVE_SIGNUPS_PER_IP_PER_HOUR", value_name = "N")]
    pub signups_per_ip_per_hour: Option<u32>,
    /// Bearer token `GET /metrics` requires (default: none; loopback peers only).
    #[arg(long, env = "SOUNDWAVE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Staff user to make sure exists at start (with --admin-password).
    #[arg(long, env = "SOUNDWAVE_ADMIN_USERNAME")]
    pub admin_username: Option<String>,
    /// Password of that staff user.
    #[arg(long, env = "SOUNDWAVE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
}

impl NodeArgs {
    /// The config file overlaid with environment variables and flags.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(id) = self.node_id {
            config.node.id = id;
        }
        // A member of a configured cluster listens where its [[cluster.nodes]] table says,
        // and keeps its store in a directory of its own under the data directory.
        if let Some(member) = config.cluster.nodes.iter().find(|m| m.id == config.node.id) {
            config.node.listen = member.api;
            if config.cluster.nodes.len() > 1 {
                config.node.data_dir = config.node.data_dir.join(format!("node-{}", member.id));
            }
        }
        if let Some(listen) = self.listen {
            config.node.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.node.data_dir = dir.clone();
        }
        config.node.demo |= self.demo;
        if let Some(count) = self.demo_products {
            config.node.demo_products = count;
        }
        if let Some(count) = self.demo_orders {
            config.node.demo_orders = count;
        }
        if let Some(secret) = &self.jwt_secret {
            config.auth.jwt_secret = secret.clone();
        }
        if let Some(secret) = &self.cluster_secret {
            config.cluster.secret = secret.clone();
        }
        if let Some(url) = &self.join {
            config.cluster.join = url.trim_end_matches('/').to_owned();
        }
        if let Some(addr) = self.peer_listen {
            config.cluster.peer_listen = Some(addr);
        }
        config.cluster.read_only |= self.read_only;
        if let Some(limit) = self.signups_per_ip_per_hour {
            config.auth.signups_per_ip_per_hour = limit;
        }
        if let Some(token) = &self.metrics_token {
            config.node.metrics_token = token.clone();
        }
        if let Some(username) = &self.admin_username {
            config.auth.admin_username = username.clone();
        }
        if let Some(password) = &self.admin_password {
            config.auth.admin_password = password.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct LbArgs {
    /// TOML configuration file (its `[lb]` section; see config.toml).
    #[arg(long, env = "SOUNDWAVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to accept clients on (default 127.0.0.1:8080).
    #[arg(long, env = "SOUNDWAVE_LB_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// A primary upstream (repeat the flag). Upstream flags replace the configured
    /// upstreams of both tiers: `--primary A --primary B` alone means no backup.
    #[arg(long = "primary", value_name = "ADDR")]
    pub primaries: Vec<SocketAddr>,
    /// A backup upstream (repeat the flag; with `--primary`, see there).
    #[arg(long = "backup", value_name = "ADDR")]
    pub backups: Vec<SocketAddr>,
    /// Address of the Prometheus endpoint (default 127.0.0.1:9091).
    #[arg(long, env = "SOUNDWAVE_LB_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory of the pid file and the upgrade socket (default: `lb.run_dir`, else
    /// $TMPDIR/soundwave-lb-<listen port>).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Take the listening sockets over from the balancer running with the same run
    /// directory: start this, then send that one SIGQUIT (within 5 s); it hands them over
    /// and drains. No connection is refused meanwhile.
    #[arg(long)]
    pub upgrade: bool,
    /// Address of the HTTPS listener (ALPN h2 and http/1.1) beside the plain one.
    #[arg(long, env = "SOUNDWAVE_LB_TLS_LISTEN", value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain of the HTTPS listener.
    #[arg(long, env = "SOUNDWAVE_LB_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the HTTPS listener's certificate.
    #[arg(long, env = "SOUNDWAVE_LB_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// A cluster member's API URL to learn upstreams from (repeat the flag; replaces
    /// `lb.discover_from`): every member's API address becomes a primary.
    #[arg(long = "discover-from", value_name = "URL")]
    pub discover_from: Vec<String>,
    /// The cluster secret that discovery needs (default: `[cluster] secret`).
    #[arg(long, env = "SOUNDWAVE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

impl LbArgs {
    /// The `[lb]` section of the config file overlaid with environment variables and flags.
    pub fn resolve(&self) -> Result<lb::LbConfig, ConfigError> {
        let file = Config::load(self.config.as_deref())?;
        let mut config = file.lb;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if !self.discover_from.is_empty() {
            config.discover_from.clone_from(&self.discover_from);
        }
        config.discover_secret = lb::Secret(
            self.cluster_secret
                .clone()
                .unwrap_or_else(|| file.cluster.secret.clone()),
        );
        // Upstreams given on the command line are the whole set: keeping a configured or
        // default backup next to them would send traffic where the operator did not say.
        if !self.primaries.is_empty() || !self.backups.is_empty() {
            config.primaries = self.primaries.clone();
            config.backups = self.backups.clone();
        }
        if let Some(addr) = self.metrics_listen {
            config.metrics_listen = Some(addr);
        }
        if let Some(dir) = &self.run_dir {
            config.run_dir = dir.clone();
        }
        if let Some(addr) = self.tls_listen {
            config.tls_listen = Some(addr);
        }
        if let Some(cert) = &self.tls_cert {
            config.tls_cert = cert.clone();
        }
        if let Some(key) = &self.tls_key {
            config.tls_key = key.clone();
        }
        config
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb_args(args: &[&str]) -> LbArgs {
        match Cli::try_parse_from(["soundwave", "lb"].iter().chain(args)) {
            Ok(Cli {
                command: Command::Lb(args),
                ..
            }) => args,
            other => panic!("not lb arguments: {other:?}"),
        }
    }

    #[test]
    fn upstream_flags_replace_both_tiers() {
        let config = lb_args(&["--primary", "127.0.0.1:9101", "--primary", "127.0.0.1:9102"])
            .resolve()
            .expect("valid flags");
        assert_eq!(
            config.primaries,
            vec![
                "127.0.0.1:9101".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:9102".parse().unwrap()
            ]
        );
        assert!(config.backups.is_empty(), "no default backup left behind");

        let config = lb_args(&["--primary", "127.0.0.1:9101", "--backup", "127.0.0.1:9103"])
            .resolve()
            .expect("valid flags");
        assert_eq!(config.backups, vec!["127.0.0.1:9103".parse().unwrap()]);
    }

    #[test]
    fn without_upstream_flags_the_defaults_stand() {
        let config = lb_args(&[]).resolve().expect("defaults are valid");
        assert!(!config.primaries.is_empty());
        assert!(!config.backups.is_empty());
    }

    #[test]
    fn the_run_directory_flag_replaces_the_configured_one() {
        let args = lb_args(&["--run-dir", "/tmp/lb-run", "--upgrade"]);
        assert!(args.upgrade);
        let config = args.resolve().expect("valid flags");
        assert_eq!(config.run_dir, PathBuf::from("/tmp/lb-run"));
        assert!(!lb_args(&[]).upgrade);
    }

    #[test]
    fn the_tls_flags_set_the_https_listener() {
        let config = lb_args(&[
            "--tls-listen",
            "127.0.0.1:9443",
            "--tls-cert",
            "/tmp/c.pem",
            "--tls-key",
            "/tmp/k.pem",
        ])
        .resolve()
        .expect("valid flags");
        assert_eq!(config.tls_listen, Some("127.0.0.1:9443".parse().unwrap()));
        assert_eq!(config.tls_cert, PathBuf::from("/tmp/c.pem"));
        assert_eq!(config.tls_key, PathBuf::from("/tmp/k.pem"));
        let error = lb_args(&["--tls-listen", "127.0.0.1:9443"])
            .resolve()
            .unwrap_err();
        assert!(error.to_string().contains("tls_cert"), "{error}");
    }

    #[test]
    fn a_backup_without_a_primary_is_refused() {
        let error = lb_args(&["--backup", "127.0.0.1:9103"])
            .resolve()
            .unwrap_err();
        assert!(error.to_string().contains("primaries"), "{error}");
    }
}
