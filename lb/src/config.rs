//! `[lb]` of `config.toml`: the upstreams, health checking, passive ejection, timeouts,
//! limits, trusted proxies and the process settings of the balancer.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::LbError;

/// Settings of `soundwave lb`. Every field has a default (see `config.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LbConfig {
    /// Address the balancer accepts clients on.
    pub listen: SocketAddr,
    /// Upstreams chosen by consistent hashing of the client IP.
    pub primaries: Vec<SocketAddr>,
    /// Upstreams used only while no primary is available.
    pub backups: Vec<SocketAddr>,
    /// Path of the active health probe (`GET`, 200 means healthy).
    pub health_path: String,
    /// Time between two probes of an upstream.
    pub health_interval_ms: u64,
    /// Connect and read timeout of one probe.
    pub health_timeout_ms: u64,
    /// Consecutive successful probes that bring an upstream back.
    pub rise: usize,
    /// Consecutive failed probes that take an upstream out.
    pub fall: usize,
    /// Failed requests within `fail_timeout_secs` that eject an upstream (0: never).
    pub max_fails: u32,
    /// The window for `max_fails`, and how long an ejection lasts.
    pub fail_timeout_secs: u64,
    /// Timeout of a TCP connect to an upstream.
    pub connect_timeout_ms: u64,
    /// Longest wait for the next bytes from an upstream (or a client's request body).
    pub read_timeout_secs: u64,
    /// How long an idle keep-alive connection (client or upstream) is kept.
    pub idle_timeout_secs: u64,
    /// Largest request line plus headers accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// Longest time from a request's first byte to the end of its head, in all; then 408
    /// and the connection is closed (a client trickling its headers is cut).
    pub header_timeout_secs: u64,
    /// Longest time for a request's body, in all, from the end of its head; then 408.
    pub body_timeout_secs: u64,
    /// Largest request body accepted (bodies are read whole before they are forwarded, so a
    /// retry can send them again); larger ones get 413.
    pub max_body_bytes: usize,
    /// Open client connections at most, in all (also kept below half the descriptor limit:
    /// each client may need an upstream connection) and per client IP (trusted proxies
    /// excepted); more get a JSON 503 at once.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` / `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Requests per second per client IP (as `client_ip` gives it); more get a JSON 429
    /// with `Retry-After`. 0: no limit.
    pub rate_limit_per_sec: u32,
    /// Requests a client may make at once above that rate (the token bucket's size).
    pub rate_limit_burst: u32,
    /// Address of the operator listener (`GET /metrics`, `GET /_lb/status`); empty: none.
    #[serde(deserialize_with = "optional_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Worker threads of the proxy; 0: one per core.
    pub threads: usize,
    /// After SIGTERM: seconds to keep serving in-flight requests before stopping.
    pub grace_period_secs: u64,
    /// Then: seconds the runtimes get to finish.
    pub graceful_shutdown_timeout_secs: u64,
    /// Directory of the pid file and upgrade socket; empty: `$TMPDIR/soundwave-lb-<port>`.
    pub run_dir: PathBuf,
    /// Address of the HTTPS listener (ALPN `h2` and `http/1.1`) beside `listen`; empty: none.
    #[serde(deserialize_with = "optional_addr")]
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain of the HTTPS listener (the server's certificate first).
    pub tls_cert: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: PathBuf,
    /// API URLs of Soundwave cluster members asked for the cluster's members (the first
    /// that answers); their API addresses become primaries beside the configured ones.
    /// Empty: the configured upstreams only.
    pub discover_from: Vec<String>,
    /// Time between two discoveries.
    pub discover_interval_ms: u64,
    /// The cluster secret the members' view requires: never in `[lb]`; the command line
    /// takes it from `[cluster] secret`, `SOUNDWAVE_CLUSTER_SECRET` or `--cluster-secret`.
    #[serde(skip)]
    pub discover_secret: Secret,
}

/// A secret, left out of `Debug` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl Default for LbConfig {
    fn default() -> Self {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        LbConfig {
            listen: local(8080),
            primaries: vec![local(8001), local(8002)],
            backups: vec![local(8003)],
            health_path: "/health/".to_owned(),
            health_interval_ms: 1000,
            health_timeout_ms: 1000,
            rise: 2,
            fall: 2,
            max_fails: 3,
            fail_timeout_secs: 30,
            connect_timeout_ms: 1000,
            read_timeout_secs: 60,
            idle_timeout_secs: 60,
            max_header_bytes: 32 * 1024,
            header_timeout_secs: 30,
            body_timeout_secs: 60,
            max_body_bytes: 8 * 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            trusted_proxies: Vec::new(),
            rate_limit_per_sec: 0,
            rate_limit_burst: 50,
            metrics_listen: Some(local(9091)),
            threads: 0,
            grace_period_secs: 5,
            graceful_shutdown_timeout_secs: 5,
            run_dir: PathBuf::new(),
            tls_listen: None,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            discover_from: Vec::new(),
            discover_interval_ms: 3000,
            discover_secret: Secret::default(),
        }
    }
}

fn optional_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.trim()
        .parse()
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl LbConfig {
    /// Checks what serde cannot: non-empty tiers, no address twice, sane numbers.
    pub fn validate(&self) -> Result<(), LbError> {
        let invalid = |what: String| Err(LbError::Invalid(what));
        crate::upstream::check_tiers(&self.primaries, &self.backups).map_err(LbError::Invalid)?;
        for addr in self.primaries.iter().chain(&self.backups) {
            if *addr == self.listen
                || Some(*addr) == self.metrics_listen
                || Some(*addr) == self.tls_listen
            {
                return invalid(format!("upstream {addr} is the balancer itself"));
            }
        }
        if self.listen.port() == 0 {
            return invalid("lb.listen needs a concrete port".to_owned());
        }
        if let Some(metrics) = self.metrics_listen {
            if metrics.port() == 0 || metrics == self.listen {
                return invalid("lb.metrics_listen needs its own concrete port".to_owned());
            }
        }
        if let Some(tls) = self.tls_listen {
            if tls.port() == 0 || tls == self.listen || Some(tls) == self.metrics_listen {
                return invalid("lb.tls_listen needs its own concrete port".to_owned());
            }
            if self.tls_cert.as_os_str().is_empty() || self.tls_key.as_os_str().is_empty() {
                return invalid("lb.tls_listen needs lb.tls_cert and lb.tls_key".to_owned());
            }
        }
        if !self.health_path.starts_with('/') {
            return invalid("lb.health_path must start with /".to_owned());
        }
        if self.health_interval_ms == 0 || self.health_timeout_ms == 0 {
            return invalid(
                "lb.health_interval_ms and lb.health_timeout_ms must be > 0".to_owned(),
            );
        }
        if self.rise == 0 || self.fall == 0 {
            return invalid("lb.rise and lb.fall must be at least 1".to_owned());
        }
        if self.max_fails > 0 && self.fail_timeout_secs == 0 {
            return invalid("lb.fail_timeout_secs must be > 0 when lb.max_fails is".to_owned());
        }
        if self.connect_timeout_ms == 0 || self.read_timeout_secs == 0 {
            return invalid(
                "lb.connect_timeout_ms and lb.read_timeout_secs must be > 0".to_owned(),
            );
        }
        if self.idle_timeout_secs == 0 {
            return invalid("lb.idle_timeout_secs must be > 0".to_owned());
        }
        if self.max_header_bytes < 1024 {
            return invalid("lb.max_header_bytes must be at least 1024".to_owned());
        }
        if self.max_body_bytes == 0 {
            return invalid("lb.max_body_bytes must be at least 1".to_owned());
        }
        if self.header_timeout_secs == 0 || self.body_timeout_secs == 0 {
            return invalid(
                "lb.header_timeout_secs and lb.body_timeout_secs must be > 0".to_owned(),
            );
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return invalid(
                "lb.max_connections and lb.max_connections_per_ip must be at least 1".to_owned(),
            );
        }
        if let Some(url) = self
            .discover_from
            .iter()
            .find(|url| !url.starts_with("http://"))
        {
            return invalid(format!(
                "lb.discover_from takes members' API URLs, http://HOST:PORT (not {url:?})"
            ));
        }
        if !self.discover_from.is_empty() {
            if self.discover_interval_ms == 0 {
                return invalid("lb.discover_interval_ms must be > 0".to_owned());
            }
            if self.discover_secret.0.is_empty() {
                return invalid(
                    "lb.discover_from needs the cluster secret ([cluster] secret, \
                     SOUNDWAVE_CLUSTER_SECRET or --cluster-secret)"
                        .to_owned(),
                );
            }
        }
        if self.rate_limit_per_sec > 0 && self.rate_limit_burst == 0 {
            return invalid(
                "lb.rate_limit_burst must be at least 1 when lb.rate_limit_per_sec is set"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// The run directory: `run_dir`, or one per listen port under the temp directory, so two
    /// balancers on one machine never share a pid file or an upgrade socket.
    pub fn effective_run_dir(&self) -> PathBuf {
        if self.run_dir.as_os_str().is_empty() {
            std::env::temp_dir().join(format!("soundwave-lb-{}", self.listen.port()))
        } else {
            self.run_dir.clone()
        }
    }

    pub(crate) fn request_limits(&self) -> crate::connection::RequestLimits {
        crate::connection::RequestLimits {
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            body_timeout: Duration::from_secs(self.body_timeout_secs),
            max_header_bytes: self.max_header_bytes,
        }
    }

    pub(crate) fn fail_timeout(&self) -> Duration {
        Duration::from_secs(self.fail_timeout_secs)
    }

    pub(crate) fn worker_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_old_topology() {
        let config = LbConfig::default();
        config.validate().unwrap();
        assert_eq!(config.primaries.len(), 2);
        assert_eq!(config.backups.len(), 1);
        assert_eq!((config.max_fails, config.fail_timeout_secs), (3, 30));
    }

    #[test]
    fn an_empty_metrics_address_disables_the_endpoint() {
        let config: LbConfig = toml::from_str("metrics_listen = \"\"").unwrap();
        assert_eq!(config.metrics_listen, None);
        let config: LbConfig = toml::from_str("metrics_listen = \"127.0.0.1:9999\"").unwrap();
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9999".parse().unwrap())
        );
    }

    #[test]
    fn duplicates_and_missing_primaries_are_refused() {
        let mut config = LbConfig::default();
        config.backups.push(config.primaries[0]);
        assert!(config.validate().is_err());
        let config = LbConfig {
            primaries: vec![],
            ..LbConfig::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn the_repository_config_documents_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
        let text = std::fs::read_to_string(path).expect("config.toml");
        let file: toml::Table = toml::from_str(&text).expect("config.toml parses");
        let section = file["lb"].clone();
        let config: LbConfig = section.try_into().expect("[lb] parses");
        assert_eq!(config, LbConfig::default());
    }

    #[test]
    fn a_tls_listener_needs_its_certificate_key_and_own_port() {
        let config: LbConfig = toml::from_str(
            "tls_listen = \"127.0.0.1:8443\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"",
        )
        .unwrap();
        config.validate().unwrap();
        let no_key = LbConfig {
            tls_key: PathBuf::new(),
            ..config.clone()
        };
        assert!(no_key.validate().is_err());
        let same_port = LbConfig {
            tls_listen: Some(config.listen),
            ..config
        };
        assert!(same_port.validate().is_err());
        let none: LbConfig = toml::from_str("tls_listen = \"\"").unwrap();
        assert_eq!(none.tls_listen, None);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<LbConfig>("primary = []").is_err());
    }
}
