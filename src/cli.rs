//! The command line: `soundwave node ...`. Flags override `SOUNDWAVE_*` environment
//! variables, which override the config file.

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
    /// HS256 signing secret for tokens.
    #[arg(long, env = "SOUNDWAVE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
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
        if let Some(listen) = self.listen {
            config.node.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.node.data_dir = dir.clone();
        }
        config.node.demo |= self.demo;
        if let Some(secret) = &self.jwt_secret {
            config.auth.jwt_secret = secret.clone();
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
