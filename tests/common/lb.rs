//! Balancer harness: the `soundwave lb` process, clients bound to chosen source addresses
//! (127.0.0.2, 127.0.0.3, ...), and a tiny scripted HTTP upstream that echoes what it got.
//! The `soundwave node`s behind the balancer are the shared [`Node`](crate::node::Node) harness
//! started on fixed addresses (`NodeBuilder::listen`), so a node restarts where the balancer
//! expects it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::node::Node;
use crate::process::{
    Proc, free_port, soundwave_command, spawn_line_reader, wait_for, wait_timeout,
};

/// How long the balancer may take to print its ready line.
pub const LB_START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The `IP:PORT` a node listens on (from its `listening on http://...` line).
pub fn node_addr(node: &Node) -> SocketAddr {
    let base = node.base_url();
    base.trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("node base URL {base:?} is not http://IP:PORT: {e}"))
}

/// `127.0.0.{2..}`: `n` distinct client source addresses.
pub fn client_ips(n: u8) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)))
        .collect()
}

/// A reqwest client whose connections come from `ip`.
pub fn client_from(ip: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build a client")
}

/// The last `n` stderr lines of a process.
fn stderr_tail(proc: &Proc, n: usize) -> String {
    let lines = proc.stderr.lock().unwrap();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGKILL, reaped, reader threads joined.
fn kill9(mut proc: Proc) {
    let _ = proc.child.kill();
    let _ = proc.child.wait();
    for t in proc.threads.drain(..) {
        let _ = t.join();
    }
}

/// Spawns `cmd` (from [`soundwave_command`]) and waits for a stdout line containing
/// `ready`; panics with the stderr when the process exits or stays silent.
fn spawn_until_ready(mut cmd: Command, ready: &str) -> Proc {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn soundwave lb");
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let t_out = spawn_line_reader(child.stdout.take().unwrap(), stdout.clone(), Some(tx));
    let t_err = spawn_line_reader(child.stderr.take().unwrap(), stderr.clone(), None);
    let mut proc = Proc {
        child,
        stdout,
        stderr,
        threads: vec![t_out, t_err],
    };
    let deadline = Instant::now() + LB_START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(ready) => return proc,
            Ok(_) => {}
            Err(_) => {
                let _ = proc.child.kill();
                let status = proc.child.wait().ok();
                for t in proc.threads.drain(..) {
                    let _ = t.join();
                }
                panic!(
                    "the balancer did not start: no `{ready}` line (exit status {status:?})\n\
                     --- stderr ---\n{}",
                    stderr_tail(&proc, 40)
                );
            }
        }
    }
}

/// A running `soundwave lb`.
pub struct Balancer {
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
    /// Holds the config file and the run directory; goes with the last balancer using it.
    dir: Arc<tempfile::TempDir>,
    proc: Option<Proc>,
}

/// The config file of a test balancer: `[lb]` with its listeners, its own run directory,
/// and `lb_toml`.
fn lb_config(
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    dir: &std::path::Path,
    lb_toml: &str,
) -> String {
    let metrics_line = match metrics {
        Some(m) => format!("metrics_listen = \"{m}\""),
        None => "metrics_listen = \"\"".to_owned(),
    };
    format!(
        "[lb]\nlisten = \"{addr}\"\n{metrics_line}\nrun_dir = \"{}\"\n{lb_toml}\n",
        dir.join("run").display()
    )
}

/// `soundwave lb --config FILE` with access lines on stderr.
fn lb_command(config: &std::path::Path) -> Command {
    let mut cmd = soundwave_command();
    cmd.arg("lb").arg("--config").arg(config);
    cmd.env("RUST_LOG", "info");
    cmd
}

const READY: &str = "soundwave lb listening on http://";

impl Balancer {
    /// Starts `soundwave lb --config FILE` where FILE holds `[lb]` with `lb_toml` and a
    /// `run_dir` of its own; waits for `soundwave lb listening on http://...`.
    pub fn start(addr: SocketAddr, metrics: Option<SocketAddr>, lb_toml: &str) -> Balancer {
        let dir = tempfile::Builder::new()
            .prefix("soundwave-lb-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("lb.toml");
        std::fs::write(&path, lb_config(addr, metrics, dir.path(), lb_toml))
            .expect("write lb config");
        let proc = spawn_until_ready(lb_command(&path), READY);
        Balancer {
            addr,
            metrics,
            dir: Arc::new(dir),
            proc: Some(proc),
        }
    }

    /// A zero-downtime upgrade: starts `soundwave lb --upgrade` with this balancer's config
    /// and, once the new process waits on the upgrade socket, sends this one SIGQUIT; returns
    /// the new balancer when it is ready. This one hands its sockets over and drains.
    pub fn upgrade(&self) -> Balancer {
        let socket = self.dir.path().join("run").join("lb-upgrade.sock");
        let old = self.pid();
        // The new process binds the socket before it waits for the sockets (5 s at most).
        let signaller = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !socket.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            signal(old, "QUIT");
        });
        let mut cmd = lb_command(&self.dir.path().join("lb.toml"));
        cmd.arg("--upgrade");
        let proc = spawn_until_ready(cmd, READY);
        signaller.join().expect("the SIGQUIT sender");
        Balancer {
            addr: self.addr,
            metrics: self.metrics,
            dir: self.dir.clone(),
            proc: Some(proc),
        }
    }

    /// Rewrites the config file as `start` wrote it, with `lb_toml` instead (not read
    /// before a SIGHUP).
    pub fn rewrite_config(&self, lb_toml: &str) {
        let text = lb_config(self.addr, self.metrics, self.dir.path(), lb_toml);
        self.write_config_file(&text);
    }

    /// Replaces the config file with `text` as it is (a broken file, say).
    pub fn write_config_file(&self, text: &str) {
        std::fs::write(self.dir.path().join("lb.toml"), text).expect("write lb config");
    }

    /// Sends SIGHUP (reload the configuration).
    pub fn sighup(&self) {
        signal(self.pid(), "HUP");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET /_lb/status` (on the operator listener) as JSON.
    pub async fn status(&self) -> Value {
        let addr = self.metrics.expect("an operator listener (metrics_listen)");
        let resp = reqwest::get(format!("http://{addr}/_lb/status"))
            .await
            .expect("GET /_lb/status");
        assert_eq!(resp.status(), 200, "GET /_lb/status");
        resp.json().await.expect("status JSON")
    }

    /// `METHOD PATH` on the operator listener: the status and the JSON body.
    pub async fn operator(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let addr = self.metrics.expect("an operator listener (metrics_listen)");
        let resp = reqwest::Client::new()
            .request(method.clone(), format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The status entry of the upstream at `addr`.
    pub async fn upstream_status(&self, addr: SocketAddr) -> Value {
        let status = self.status().await;
        status["upstreams"]
            .as_array()
            .and_then(|a| a.iter().find(|u| u["address"] == addr.to_string()))
            .cloned()
            .unwrap_or_else(|| panic!("no upstream {addr} in {status}"))
    }

    /// The Prometheus text of the metrics endpoint.
    pub async fn metrics_text(&self) -> String {
        let addr = self.metrics.expect("metrics endpoint configured");
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("running").child.id()
    }

    /// Sends SIGTERM (graceful drain).
    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.proc.as_mut()?.child, limit)
    }

    /// Waits (20 s at most) for a stderr line that has every one of `parts`.
    pub async fn wait_for_line(&self, what: &str, parts: &[&str]) {
        wait_for(what, Duration::from_secs(20), || async {
            self.stderr_lines()
                .iter()
                .any(|l| parts.iter().all(|p| l.contains(p)))
                .then_some(())
        })
        .await;
    }

    /// Captured stderr lines so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.proc
            .as_ref()
            .map(|p| p.stderr.lock().unwrap().clone())
            .unwrap_or_default()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(proc) = &self.proc {
                eprintln!("--- balancer stderr tail ---\n{}", stderr_tail(proc, 60));
            }
        }
        if let Some(proc) = self.proc.take() {
            kill9(proc);
        }
    }
}

/// Sends `SIG{name}` to `pid`, with the shell's builtin `kill`: no dependency on a procps
/// binary.
fn signal(pid: u32, name: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{name} {pid}"))
        .status()
        .expect("run sh -c kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// One request an [`EchoUpstream`] received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Lower-cased header names.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted HTTP/1.1 upstream: `GET /health/` is 200; `/drop...` closes the connection
/// without answering; `/stall...` sends a head and part of its body, then nothing for 20 s;
/// `/slow...` answers after a second (and tells `slow_started`); anything
/// else is 200 with `{"upstream": NAME, "method", "path", "headers": {...}}` and the header
/// `X-Echo: NAME`. Every request but the probes is recorded.
pub struct EchoUpstream {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    pub slow_started: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
}

impl EchoUpstream {
    pub fn start(name: &str) -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo upstream");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (slow_tx, slow_rx) = mpsc::channel();
        let echo = EchoUpstream {
            name: name.to_owned(),
            addr,
            seen: seen.clone(),
            stop: stop.clone(),
            slow_started: Arc::new(Mutex::new(Some(slow_rx))),
        };
        let name = name.to_owned();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (seen, name, slow_tx) = (seen.clone(), name.clone(), slow_tx.clone());
                        std::thread::spawn(move || serve_echo(stream, &name, &seen, &slow_tx));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        echo
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_echo(stream: TcpStream, name: &str, seen: &Mutex<Vec<Seen>>, slow_tx: &mpsc::Sender<()>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if path == "/health/" {
            let body = r#"{"status":"ok"}"#;
            let _ = write!(
                writer,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            continue;
        }
        let request = Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
        };
        seen.lock().unwrap().push(request);
        if path.starts_with("/drop") {
            return;
        }
        if path.starts_with("/stall") {
            // A head and a tenth of the body, then nothing for 20 s.
            let _ = write!(
                writer,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789"
            );
            std::thread::sleep(Duration::from_secs(20));
            return;
        }
        if path.starts_with("/slow") {
            let _ = slow_tx.send(());
            std::thread::sleep(Duration::from_millis(1000));
        }
        let map: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let body =
            json!({"upstream": name, "method": method, "path": path, "headers": map}).to_string();
        let sent = write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Echo: {name}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if sent.is_err() {
            return;
        }
    }
}

/// Fast probes so that health changes are seen within a second or so.
pub fn fast_health(fall: usize, max_fails: u32) -> String {
    format!(
        "health_interval_ms = 200\nhealth_timeout_ms = 500\nrise = 2\nfall = {fall}\n\
         max_fails = {max_fails}\nfail_timeout_secs = 5\ngrace_period_secs = 2\n\
         graceful_shutdown_timeout_secs = 2\nthreads = 2\n"
    )
}

pub type Clients = Vec<(IpAddr, reqwest::Client)>;

pub fn clients(n: u8) -> Clients {
    client_ips(n)
        .into_iter()
        .map(|ip| (ip, client_from(ip)))
        .collect()
}

/// A balancer over the one primary `echo`, with `extra` in its `[lb]`.
pub fn over_one_primary(echo: &EchoUpstream, extra: &str) -> Balancer {
    Balancer::start(
        local(free_port()),
        Some(local(free_port())),
        &format!(
            "primaries = [\"{}\"]\nbackups = []\n{extra}{}",
            echo.addr,
            fast_health(2, 3)
        ),
    )
}
