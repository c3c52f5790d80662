//! `soundwave up`: the whole local topology in one command. Starts every node of the
//! config's `[cluster]` and the balancer as child processes of this same executable, loads
//! the demo catalog on first start, prints the URL and the demo credentials, and stops them
//! all cleanly (SIGTERM, then a bounded wait) on Ctrl-C or SIGTERM.
//!
//! Once up, a child that exits is reported with its status and started again after a
//! back-off (1 s, doubling to 30 s while it keeps failing); the others keep running, so the
//! replicated topology can be seen surviving the loss of a node.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("the config has no [[cluster.nodes]]: nothing to start")]
    NoNodes,
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{0} did not become ready within {1:?}; see its output above")]
    NotReady(String, Duration),
    #[error("{name} exited while starting ({status}); see its output above")]
    ExitedEarly {
        name: String,
        status: std::process::ExitStatus,
    },
    #[error("{0}")]
    Certificate(#[from] crate::self_signed::SelfSignedError),
    #[error("cannot keep the cluster secret in {path}: {source}")]
    Secret {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How long the whole topology may take to come up.
const READY_WITHIN: Duration = Duration::from_secs(120);
/// How long children may take to stop after SIGTERM before they are killed.
const STOP_WITHIN: Duration = Duration::from_secs(15);
/// The first wait before a child that exited is started again.
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between restarts of a child that keeps exiting.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A child that ran this long before exiting is restarted after the first delay again.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// How to start one child, again when it exits.
struct ChildSpec {
    name: String,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

struct ChildProcess {
    name: String,
    process: Child,
}

/// A child of the running topology: its process, or the time it is to be started again.
struct Supervised {
    spec: ChildSpec,
    state: ChildState,
    restart_delay: Duration,
}

enum ChildState {
    Running { child: ChildProcess, since: Instant },
    Restarting { at: Instant },
}

/// A line a child printed on stdout, with who printed it.
struct Line {
    child: usize,
    text: String,
}

fn spawn(
    spec: &ChildSpec,
    index: usize,
    lines: &mpsc::Sender<Line>,
) -> Result<ChildProcess, UpError> {
    let (name, args, env) = (spec.name.clone(), &spec.args, &spec.env);
    let executable = std::env::current_exe().map_err(|source| UpError::Spawn {
        what: name.clone(),
        source,
    })?;
    let mut command = Command::new(executable);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut process = command.spawn().map_err(|source| UpError::Spawn {
        what: name.clone(),
        source,
    })?;
    if let Some(stdout) = process.stdout.take() {
        let lines = lines.clone();
        let prefix = name.clone();
        std::thread::spawn(move || {
            for text in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[{prefix}] {text}");
                if lines.send(Line { child: index, text }).is_err() {
                    break;
                }
            }
        });
    }
    Ok(ChildProcess { name, process })
}

/// The cluster secret: configured, or made once and kept beside the data.
fn cluster_secret(config: &Config) -> Result<String, UpError> {
    if !config.cluster.secret.is_empty() {
        return Ok(config.cluster.secret.clone());
    }
    let path = config.node.data_dir.join("cluster-secret");
    if let Ok(secret) = std::fs::read_to_string(&path)
        && !secret.trim().is_empty()
    {
        return Ok(secret.trim().to_owned());
    }
    let secret = crate::random::random_hex(32).map_err(|e| UpError::Secret {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    crate::private_files::write_private(&path, &secret)
        .map_err(|source| UpError::Secret { path, source })?;
    Ok(secret)
}

fn terminate(children: &mut [ChildProcess]) {
    for child in children.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.process.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + STOP_WITHIN;
    for child in children.iter_mut() {
        loop {
            match child.process.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("{} did not stop in time; killing it", child.name);
                    let _ = child.process.kill();
                    let _ = child.process.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// The balancer's HTTPS listener for `--tls`: `lb.tls_listen`, else port 8443 of
/// `lb.listen`'s address; `lb.tls_cert`/`lb.tls_key` when set, else the self-signed pair
/// in `<data_dir>/tls` (made once).
fn tls_flags(config: &Config) -> Result<(SocketAddr, Vec<String>), UpError> {
    let lb = &config.lb;
    let addr = lb
        .tls_listen
        .unwrap_or_else(|| SocketAddr::new(lb.listen.ip(), DEFAULT_TLS_PORT));
    let files = if lb.tls_cert.as_os_str().is_empty() || lb.tls_key.as_os_str().is_empty() {
        crate::self_signed::ensure_self_signed(&config.node.data_dir.join("tls"))?
    } else {
        crate::self_signed::CertificateFiles {
            cert: lb.tls_cert.clone(),
            key: lb.tls_key.clone(),
        }
    };
    let flags = vec![
        "--tls-listen".to_owned(),
        addr.to_string(),
        "--tls-cert".to_owned(),
        files.cert.display().to_string(),
        "--tls-key".to_owned(),
        files.key.display().to_string(),
    ];
    Ok((addr, flags))
}

/// The HTTPS port of `--tls` when `lb.tls_listen` does not say.
const DEFAULT_TLS_PORT: u16 = 8443;

/// Runs the topology until Ctrl-C or SIGTERM, restarting children that exit once it is up;
/// with `tls`, the balancer serves HTTPS too.
pub fn run(config_path: &Path, tls: bool) -> Result<(), UpError> {
    let config = Config::load(Some(config_path))?;
    if config.cluster.nodes.is_empty() {
        return Err(UpError::NoNodes);
    }
    let secret = cluster_secret(&config)?;
    let config_arg = config_path.display().to_string();
    let (lines, incoming) = mpsc::channel();
    let lowest = config.cluster.nodes.iter().map(|m| m.id).min();
    let mut specs = Vec::new();
    for member in &config.cluster.nodes {
        let mut args = vec![
            "node".to_owned(),
            "--config".to_owned(),
            config_arg.clone(),
            "--node-id".to_owned(),
            member.id.to_string(),
        ];
        // The demo catalog is loaded once, through the log, by one node (a restart finds
        // the catalog there and adds nothing).
        if Some(member.id) == lowest {
            args.push("--demo".to_owned());
        }
        specs.push(ChildSpec {
            name: format!("node{}", member.id),
            args,
            env: vec![("SOUNDWAVE_CLUSTER_SECRET", secret.clone())],
        });
    }
    let mut lb_args = vec!["lb".to_owned(), "--config".to_owned(), config_arg];
    let https = if tls {
        let (addr, flags) = tls_flags(&config)?;
        lb_args.extend(flags);
        Some(addr)
    } else {
        None
    };
    specs.push(ChildSpec {
        name: "lb".to_owned(),
        args: lb_args,
        env: Vec::new(),
    });
    let mut children = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        children.push(spawn(spec, index, &lines)?);
    }

    let stop = stop_signal();
    let deadline = Instant::now() + READY_WITHIN;
    let mut ready = vec![false; children.len()];
    let mut credentials = Vec::new();
    while !ready.iter().all(|r| *r) {
        let left = deadline.saturating_duration_since(Instant::now());
        match incoming.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                if line.text.contains("listening on http://") {
                    ready[line.child] = true;
                }
                if line.text.starts_with("demo admin:") || line.text.starts_with("demo shopper:") {
                    credentials.push(line.text);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => {
                let waiting = ready
                    .iter()
                    .zip(&children)
                    .find(|(r, _)| !**r)
                    .map(|(_, c)| c.name.clone())
                    .unwrap_or_default();
                terminate(&mut children);
                return Err(UpError::NotReady(waiting, READY_WITHIN));
            }
        }
        if stop.try_recv().is_ok() {
            terminate(&mut children);
            return Ok(());
        }
        // A child that fails at start (a port in use, a bad config) is reported at once,
        // not after the whole start-up allowance.
        if let Some((dead, status)) = first_exited(&mut children) {
            let name = children[dead].name.clone();
            terminate(&mut children);
            return Err(UpError::ExitedEarly { name, status });
        }
    }
    // The balancer sends no client to a node before one of its probes passed: "up" once
    // it serves.
    if !balancer_serves(config.lb.listen, Duration::from_secs(10)) {
        tracing::warn!("the balancer does not serve /health/ yet; going on");
    }
    println!();
    println!("Soundwave is up: http://{}/", config.lb.listen);
    if let Some(addr) = https {
        println!("  and https://{addr}/ (HTTP/2 and HTTP/1.1)");
    }
    for member in &config.cluster.nodes {
        println!("  node {} at http://{}/", member.id, member.api);
    }
    for line in &credentials {
        println!("  {line}");
    }
    println!("Press Ctrl-C to stop.");

    let now = Instant::now();
    let mut supervised: Vec<Supervised> = specs
        .into_iter()
        .zip(children)
        .map(|(spec, child)| Supervised {
            spec,
            state: ChildState::Running { child, since: now },
            restart_delay: FIRST_RESTART_DELAY,
        })
        .collect();
    while stop.recv_timeout(Duration::from_millis(200)).is_err() {
        for (index, entry) in supervised.iter_mut().enumerate() {
            entry.supervise(index, &lines);
        }
        // Lines of restarted children are printed by their reader threads; drop the copies.
        while incoming.try_recv().is_ok() {}
    }
    println!("stopping");
    let mut running: Vec<ChildProcess> = supervised
        .into_iter()
        .filter_map(|entry| match entry.state {
            ChildState::Running { child, .. } => Some(child),
            ChildState::Restarting { .. } => None,
        })
        .collect();
    terminate(&mut running);
    Ok(())
}

impl Supervised {
    /// Notices an exit (reported with its status, a restart scheduled) and restarts a child
    /// whose time has come.
    fn supervise(&mut self, index: usize, lines: &mpsc::Sender<Line>) {
        let now = Instant::now();
        match &mut self.state {
            ChildState::Running { child, since } => {
                let Ok(Some(status)) = child.process.try_wait() else {
                    return;
                };
                if now.duration_since(*since) >= STABLE_AFTER {
                    self.restart_delay = FIRST_RESTART_DELAY;
                }
                eprintln!(
                    "{} exited ({status}); the others keep running; restarting it in {} s",
                    self.spec.name,
                    self.restart_delay.as_secs()
                );
                self.state = ChildState::Restarting {
                    at: now + self.restart_delay,
                };
                self.restart_delay = (self.restart_delay * 2).min(MAX_RESTART_DELAY);
            }
            ChildState::Restarting { at } if now >= *at => match spawn(&self.spec, index, lines) {
                Ok(child) => {
                    eprintln!("{} restarted", self.spec.name);
                    self.state = ChildState::Running { child, since: now };
                }
                Err(error) => {
                    eprintln!(
                        "{error}; trying again in {} s",
                        self.restart_delay.as_secs()
                    );
                    self.state = ChildState::Restarting {
                        at: now + self.restart_delay,
                    };
                    self.restart_delay = (self.restart_delay * 2).min(MAX_RESTART_DELAY);
                }
            },
            ChildState::Restarting { .. } => {}
        }
    }
}

/// The first child that has exited, with its exit status.
fn first_exited(children: &mut [ChildProcess]) -> Option<(usize, std::process::ExitStatus)> {
    children
        .iter_mut()
        .enumerate()
        .find_map(|(i, c)| match c.process.try_wait() {
            Ok(Some(status)) => Some((i, status)),
            _ => None,
        })
}

/// A channel that receives once on SIGINT or SIGTERM.
fn stop_signal() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(crate::node::stop_requested());
        let _ = tx.send(());
    });
    rx
}

/// Waits (at most `limit`) until `GET /health/` through the balancer at `addr` is a 200.
fn balancer_serves(addr: std::net::SocketAddr, limit: Duration) -> bool {
    use std::io::{Read, Write};
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let answered = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .and_then(|mut stream| {
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                stream
                    .write_all(b"GET /health/ HTTP/1.1\r\nHost: up\r\nConnection: close\r\n\r\n")?;
                let mut head = [0u8; 12];
                stream.read_exact(&mut head)?;
                Ok(head.starts_with(b"HTTP/1.1 200"))
            });
        if matches!(answered, Ok(true)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_makes_a_certificate_once_and_listens_on_8443_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.node.data_dir = dir.path().to_path_buf();
        let (addr, flags) = tls_flags(&config).unwrap();
        assert_eq!(addr, SocketAddr::new(config.lb.listen.ip(), 8443));
        let cert = dir.path().join("tls").join("cert.pem");
        assert!(cert.is_file());
        assert_eq!(flags[1], addr.to_string());
        assert_eq!(flags[3], cert.display().to_string());

        config.lb.tls_listen = Some("127.0.0.1:9443".parse().unwrap());
        config.lb.tls_cert = PathBuf::from("/etc/own/cert.pem");
        config.lb.tls_key = PathBuf::from("/etc/own/key.pem");
        let (addr, flags) = tls_flags(&config).unwrap();
        assert_eq!(addr.port(), 9443);
        assert_eq!(flags[3], "/etc/own/cert.pem");
        assert_eq!(flags[5], "/etc/own/key.pem");
    }
}
