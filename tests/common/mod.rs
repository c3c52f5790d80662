//! Shared black-box harness for the Soundwave integration tests.
//!
//! Every test starts its own `soundwave node` process (the real binary, via
//! `CARGO_BIN_EXE_soundwave`) on `127.0.0.1:0` with a fresh data directory, waits for the
//! `listening on http://...` line on stdout and then talks HTTP/JSON to it with reqwest.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use reqwest::Method;
use reqwest::header::HeaderMap;
use reqwest::{Client, RequestBuilder};
pub use serde_json::{Value, json};

/// How long a node may take to print its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout of the test client (a hung server fails the test instead of hanging it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub const ADMIN_USERNAME: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-Passw0rd-for-tests";
pub const PASSWORD: &str = "s3cret-Passw0rd";

pub const MSG_NO_CREDENTIALS: &str = "Authentication credentials were not provided.";
pub const MSG_BAD_TOKEN: &str = "Given token not valid for any token type";
pub const MSG_FORBIDDEN: &str = "You do not have permission to perform this action.";
pub const MSG_NOT_FOUND: &str = "Not found.";
pub const MSG_BAD_LOGIN: &str = "No active account found with the given credentials";

// ---------------------------------------------------------------------------------------------
// Node options and process management
// ---------------------------------------------------------------------------------------------

/// Options for starting a node. `Node::builder()` gives the defaults: node id 1, no config file,
/// the test admin user (`ADMIN_USERNAME` / `ADMIN_PASSWORD`) created from the environment, no demo.
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    node_id: u64,
    listen: String,
    config: String,
    env: Vec<(String, String)>,
    demo: bool,
    admin: Option<(String, String)>,
    data_dir: Option<PathBuf>,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        NodeBuilder {
            node_id: 1,
            listen: "127.0.0.1:0".to_string(),
            config: String::new(),
            // Tests sign up many users from one loopback address; the limit is tested on its
            // own (tests/security.rs sets it back).
            env: vec![(
                "SOUNDWAVE_SIGNUPS_PER_IP_PER_HOUR".to_string(),
                "1000000".to_string(),
            )],
            demo: false,
            admin: Some((ADMIN_USERNAME.to_string(), ADMIN_PASSWORD.to_string())),
            data_dir: None,
        }
    }
}

impl NodeBuilder {
    /// A fixed API address (cluster members and balancer upstreams need stable addresses).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.to_string();
        self
    }
    pub fn node_id(mut self, id: u64) -> Self {
        self.node_id = id;
        self
    }
    /// Extra TOML text for the config file (the file is only written and passed with `--config`
    /// when some config text was given). Several calls are concatenated.
    pub fn config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    pub fn demo(mut self) -> Self {
        self.demo = true;
        self
    }
    /// A data directory of the test's own (e.g. on a small filesystem) instead of a fresh one.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }
    /// Do not create the test admin user through `SOUNDWAVE_ADMIN_*`.
    pub fn no_admin(mut self) -> Self {
        self.admin = None;
        self
    }
    /// Start the node (blocks until it prints `listening on`, at most `START_TIMEOUT`).
    pub fn start(self) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("soundwave-test-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        let config_path = if self.config.trim().is_empty() {
            None
        } else {
            let p = dir.path().join("soundwave.toml");
            std::fs::write(&p, &self.config).expect("write config file");
            Some(p)
        };
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(64)
            .build()
            .expect("build reqwest client");
        let mut node = Node {
            opts: self,
            dir,
            data_dir,
            config_path,
            proc: None,
            base: String::new(),
            client,
            starts: 0,
        };
        node.spawn();
        node
    }
}

struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

/// A running `soundwave node` child process plus an HTTP client pointed at it.
pub struct Node {
    opts: NodeBuilder,
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    config_path: Option<PathBuf>,
    proc: Option<Proc>,
    base: String,
    pub client: Client,
    starts: u32,
}

fn spawn_line_reader<R: Read + Send + 'static>(
    src: R,
    sink: Arc<Mutex<Vec<String>>>,
    notify: Option<mpsc::Sender<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(src);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if let Some(tx) = &notify {
                        let _ = tx.send(line.clone());
                    }
                    sink.lock().unwrap().push(line);
                }
            }
        }
    })
}

impl Node {
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// A node with default options.
    pub fn start() -> Node {
        NodeBuilder::default().start()
    }

    fn spawn(&mut self) {
        assert!(self.proc.is_none(), "spawn while a child is running");
        let mut cmd = soundwave_command();
        cmd.arg("node")
            .arg("--listen")
            .arg(&self.opts.listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--node-id")
            .arg(self.opts.node_id.to_string());
        if let Some(p) = &self.config_path {
            cmd.arg("--config").arg(p);
        }
        if self.opts.demo {
            cmd.arg("--demo");
        }
        if let Some((u, p)) = &self.opts.admin {
            cmd.env("SOUNDWAVE_ADMIN_USERNAME", u)
                .env("SOUNDWAVE_ADMIN_PASSWORD", p);
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", env!("CARGO_BIN_EXE_soundwave")));
        self.starts += 1;

        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let t_out = spawn_line_reader(child.stdout.take().unwrap(), stdout_lines.clone(), Some(tx));
        let t_err = spawn_line_reader(child.stderr.take().unwrap(), stderr_lines.clone(), None);
        let mut proc = Proc {
            child,
            stdout: stdout_lines,
            stderr: stderr_lines,
            threads: vec![t_out, t_err],
        };

        let deadline = Instant::now() + START_TIMEOUT;
        let base = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(pos) = line.find("listening on http://") {
                        let url = line[pos + "listening on ".len()..]
                            .split_whitespace()
                            .next()
                            .unwrap()
                            .trim_end_matches('/')
                            .to_string();
                        break url;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = proc.child.kill();
                    let status = proc.child.wait().ok();
                    let report = Self::describe(&mut proc, status);
                    panic!(
                        "node did not print `listening on http://...` within {START_TIMEOUT:?}\n{report}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the child is exiting.
                    let status = wait_timeout(&mut proc.child, Duration::from_secs(5));
                    if status.is_none() {
                        let _ = proc.child.kill();
                    }
                    let report = Self::describe(&mut proc, status);
                    panic!("node closed stdout before listening\n{report}");
                }
            }
        };
        self.base = base;
        self.proc = Some(proc);
    }

    fn describe(proc: &mut Proc, status: Option<ExitStatus>) -> String {
        for t in proc.threads.drain(..) {
            let _ = t.join();
        }
        format!(
            "exit status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            status,
            proc.stdout.lock().unwrap().join("\n"),
            proc.stderr.lock().unwrap().join("\n")
        )
    }

    /// `http://127.0.0.1:PORT` of the current run (changes on restart).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Absolute URL for a path such as `/api/products/`. Absolute URLs are passed through.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else if path.starts_with('/') {
            format!("{}{}", self.base, path)
        } else {
            format!("{}/{}", self.base, path)
        }
    }

    pub fn node_id(&self) -> u64 {
        self.opts.node_id
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// How many times the process was started (1 after `start`, 2 after one restart, ...).
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Stdout lines of the current run captured so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.proc
            .as_ref()
            .map(|p| p.stdout.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Stderr of the current run captured so far.
    pub fn stderr_text(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| p.stderr.lock().unwrap().join("\n"))
            .unwrap_or_default()
    }

    /// Whether stderr of the current run contains `needle` within a second (stderr is read
    /// by another thread, so a line written just before may not be there yet).
    pub async fn stderr_contains_soon(&self, needle: &str) -> bool {
        for _ in 0..50 {
            if self.stderr_text().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The value after `key=` in the first stdout line containing `line_marker`
    /// (e.g. `stdout_value("demo shopper:", "password")`).
    pub fn stdout_value(&self, line_marker: &str, key: &str) -> Option<String> {
        let needle = format!("{key}=");
        self.stdout_lines()
            .iter()
            .filter(|l| l.contains(line_marker))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(needle.as_str()).map(|v| v.to_string()))
            })
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// Is the child still running?
    pub fn is_running(&mut self) -> bool {
        match &mut self.proc {
            Some(p) => matches!(p.child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL the child (std's `Child::kill` is SIGKILL on Unix) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
            for t in p.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    /// SIGTERM the child and wait (bounded) for it to exit; `None` if it did not exit in time
    /// (it is then killed).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut p = self.proc.take()?;
        let sent = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(sent, "could not send SIGTERM");
        let status = wait_timeout(&mut p.child, Duration::from_secs(15));
        if status.is_none() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        for t in p.threads.drain(..) {
            let _ = t.join();
        }
        status
    }

    /// The admin user (`SOUNDWAVE_ADMIN_*`) of the next start; `None`: no admin settings.
    pub fn set_admin(&mut self, admin: Option<(&str, &str)>) {
        self.opts.admin = admin.map(|(u, p)| (u.to_string(), p.to_string()));
    }

    /// Start the node again on the same data dir and listen address (a fresh ephemeral port
    /// unless `listen` fixed one). Kills it first if still running.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    // -----------------------------------------------------------------------------------------
    // HTTP
    // -----------------------------------------------------------------------------------------

    /// A request builder for `path`, with a bearer token when given.
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let rb = self.client.request(method, self.url(path));
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Send any request and capture status, headers and body.
    pub async fn send(&self, rb: RequestBuilder) -> Resp {
        self.send_with(&self.client, rb).await
    }

    /// Send on a new, unpooled connection (so a connection the server closes cannot affect
    /// later requests of the shared client).
    pub async fn send_unpooled(&self, rb: RequestBuilder) -> Resp {
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(0)
            .build()
            .expect("build reqwest client");
        self.send_with(&client, rb).await
    }

    /// Send with the given client; panics (with the node's stderr tail) if no response arrives.
    pub async fn send_with(&self, client: &Client, rb: RequestBuilder) -> Resp {
        let req = rb.build().expect("build request");
        let method = req.method().to_string();
        let url = req.url().to_string();
        let resp = client.execute(req).await.unwrap_or_else(|e| {
            panic!(
                "{method} {url}: request failed: {e:?}\n--- node stderr ---\n{}",
                self.stderr_tail(40)
            )
        });
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading body failed: {e:?}"));
        let text = String::from_utf8_lossy(&bytes).to_string();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            method,
            url,
            status,
            headers,
            text,
            json,
        }
    }

    /// Method + path + optional token + optional JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut rb = self.request(method, path, token);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        self.send(rb).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.call(Method::GET, path, token, None).await
    }
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.call(Method::POST, path, token, Some(body)).await
    }
    /// POST without a body (e.g. the cancel action).
    pub async fn post_empty(&self, path: &str, token: Option<&str>) -> Resp {
        self.call(Method::POST, path, token, None).await
    }
    pub async fn put(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.call(Method::PUT, path, token, Some(body)).await
    }
    pub async fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.call(Method::PATCH, path, token, Some(body)).await
    }
    pub async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.call(Method::DELETE, path, token, None).await
    }

    /// POST a raw body with the given Content-Type.
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Resp {
        let rb = self
            .request(Method::POST, path, token)
            .header("Content-Type", content_type)
            .body(body);
        self.send(rb).await
    }

    fn stderr_tail(&self, n: usize) -> String {
        let all = self.stderr_text();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    // -----------------------------------------------------------------------------------------
    // API helpers
    // -----------------------------------------------------------------------------------------

    /// `POST /api/token/` → the raw response.
    pub async fn token_resp(&self, username: &str, password: &str) -> Resp {
        self.post(
            "/api/token/",
            None,
            &json!({"username": username, "password": password}),
        )
        .await
    }

    /// Log in; panics unless 200. Returns (access, refresh).
    pub async fn login(&self, username: &str, password: &str) -> (String, String) {
        let r = until_not_busy(|| self.token_resp(username, password)).await;
        let b = r.expect(200);
        (
            b["access"]
                .as_str()
                .expect("access token string")
                .to_string(),
            b["refresh"]
                .as_str()
                .expect("refresh token string")
                .to_string(),
        )
    }

    /// Access token of the env-created staff user.
    pub async fn admin_token(&self) -> String {
        let (u, p) = self
            .opts
            .admin
            .clone()
            .expect("node started with no_admin(): no admin credentials");
        self.login(&u, &p).await.0
    }

    /// `POST /api/users/`; panics unless 201. Returns the user JSON.
    pub async fn signup(&self, username: &str, password: &str) -> Value {
        let body = json!({"username": username, "password": password});
        let r = until_not_busy(|| self.post("/api/users/", None, &body)).await;
        r.expect(201).clone()
    }

    /// Sign up a fresh user (unique name from `prefix`) and log in.
    pub async fn new_user(&self, prefix: &str) -> TestUser {
        let username = unique_name(prefix);
        let user = self.signup(&username, PASSWORD).await;
        let (access, refresh) = self.login(&username, PASSWORD).await;
        TestUser {
            id: user["id"].as_i64().expect("user id"),
            username,
            password: PASSWORD.to_string(),
            access,
            refresh,
        }
    }

    /// `POST /api/categories/`; panics unless 201. Returns the id.
    pub async fn create_category(&self, token: &str, name: &str) -> i64 {
        let r = self
            .post("/api/categories/", Some(token), &json!({"name": name}))
            .await;
        r.expect(201);
        r.id()
    }

    /// `POST /api/products/`; panics unless 201. Returns the id.
    pub async fn create_product(
        &self,
        token: &str,
        name: &str,
        stock: i64,
        price: &str,
        category: i64,
    ) -> i64 {
        let r = self
            .post(
                "/api/products/",
                Some(token),
                &product_body(name, stock, price, category),
            )
            .await;
        r.expect(201);
        r.id()
    }

    /// `GET /api/products/{id}/` as anyone; panics unless 200.
    pub async fn product(&self, id: i64) -> Value {
        self.get(&format!("/api/products/{id}/"), None)
            .await
            .expect(200)
            .clone()
    }

    /// Current stock of a product (panics unless the product is readable).
    pub async fn stock(&self, id: i64) -> i64 {
        self.product(id).await["stock"]
            .as_i64()
            .expect("stock is an integer")
    }

    /// `POST /api/orders/` with `{"items": [...]}` (raw response).
    pub async fn order(&self, token: &str, items: &[(i64, i64)]) -> Resp {
        self.post("/api/orders/", Some(token), &items_body(items))
            .await
    }

    /// `POST /api/orders/` with `{"items": [...]}`; panics unless 201. Returns the order JSON.
    pub async fn place_order(&self, token: &str, items: &[(i64, i64)]) -> Value {
        self.order(token, items).await.expect(201).clone()
    }

    /// `POST /api/orderitems/`; panics unless 201. Returns the item JSON.
    pub async fn add_cart_item(&self, token: &str, product: i64, quantity: i64) -> Value {
        self.post(
            "/api/orderitems/",
            Some(token),
            &json!({"product": product, "quantity": quantity}),
        )
        .await
        .expect(201)
        .clone()
    }

    /// GET a JSON array (panics unless 200 and an array).
    pub async fn list(&self, path: &str, token: Option<&str>) -> Vec<Value> {
        let r = self.get(path, token).await;
        r.expect(200);
        r.array().clone()
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released), never the same twice in a process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<std::collections::HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        let mut given = GIVEN.lock().unwrap();
        if given.get_or_insert_with(Default::default).insert(port) {
            return port;
        }
    }
}

/// Polls `probe` until it returns `Some`, at most `limit`; panics with `what` otherwise.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `soundwave` binary under test, hermetic: no `SOUNDWAVE_*` setting leaks in from the
/// environment running the tests.
pub fn soundwave_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_soundwave"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SOUNDWAVE_") {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// What a `soundwave` run that is expected to end printed, and how it ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `soundwave ARGS...` (no `SOUNDWAVE_*` settings from the environment, `env` added)
/// to its end; kills it and panics if it is still running after `limit`.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Finished {
    let mut cmd = soundwave_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn soundwave");
    let stdout_lines = Arc::new(Mutex::new(Vec::new()));
    let stderr_lines = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        spawn_line_reader(child.stdout.take().unwrap(), stdout_lines.clone(), None),
        spawn_line_reader(child.stderr.take().unwrap(), stderr_lines.clone(), None),
    ];
    let Some(status) = wait_timeout(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "soundwave {args:?} still ran after {limit:?}; stderr:\n{}",
            stderr_lines.lock().unwrap().join("\n")
        );
    };
    for reader in readers {
        let _ = reader.join();
    }
    let text = |lines: &Arc<Mutex<Vec<String>>>| lines.lock().unwrap().join("\n");
    Finished {
        status,
        stdout: text(&stdout_lines),
        stderr: text(&stderr_lines),
    }
}

fn wait_timeout(child: &mut Child, dur: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + dur;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(p) = &self.proc {
                let err = p.stderr.lock().unwrap();
                let tail = &err[err.len().saturating_sub(60)..];
                eprintln!(
                    "--- soundwave node {} (run {}) stderr tail ---\n{}\n--- end of node stderr ---",
                    self.opts.node_id,
                    self.starts,
                    tail.join("\n")
                );
            }
        }
        self.kill9();
    }
}

/// A signed-up, logged-in user.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: i64,
    pub username: String,
    pub password: String,
    pub access: String,
    pub refresh: String,
}

impl TestUser {
    pub fn tok(&self) -> Option<&str> {
        Some(&self.access)
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies and names
// ---------------------------------------------------------------------------------------------

pub fn product_body(name: &str, stock: i64, price: &str, category: i64) -> Value {
    json!({
        "name": name,
        "stock": stock,
        "price": price,
        "description": format!("{name} description"),
        "category": category,
    })
}

pub fn items_body(items: &[(i64, i64)]) -> Value {
    json!({
        "items": items
            .iter()
            .map(|(p, q)| json!({"product": p, "quantity": q}))
            .collect::<Vec<_>>()
    })
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A username-safe unique name: `prefix_<pid>_<nanos>_<n>` (letters, digits, `_` only).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{nanos}_{n}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Responses and assertions
// ---------------------------------------------------------------------------------------------

/// Sends again, as a polite client does, while the node answers 503 because its password
/// work is at its bound (many sign-ups or logins at once); gives up after 60 s.
pub async fn until_not_busy<F, Fut>(send: F) -> Resp
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt: u64 = 0;
    loop {
        let r = send().await;
        let busy = r.status == 503 && r.text.contains("busy checking passwords");
        if !busy || Instant::now() > deadline {
            return r;
        }
        attempt += 1;
        // Spread the retries, so the waiting clients do not all come back at once.
        let pause = 20 + (attempt * 37 + u64::from(std::process::id())) % 150;
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub json: Value,
}

impl Resp {
    fn ctx(&self) -> String {
        format!(
            "{} {} -> {} body: {}",
            self.method,
            self.url,
            self.status,
            truncate(&self.text, 2000)
        )
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[track_caller]
    pub fn header_required(&self, name: &str) -> &str {
        self.header(name).unwrap_or_else(|| {
            panic!(
                "missing header {name}: {}\nheaders: {:?}",
                self.ctx(),
                self.headers
            )
        })
    }

    /// Assert the status; return the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "unexpected status: {}", self.ctx());
        &self.json
    }

    /// Assert the status is one of `statuses`; return the JSON body.
    #[track_caller]
    pub fn expect_one_of(&self, statuses: &[u16]) -> &Value {
        assert!(
            statuses.contains(&self.status),
            "expected one of {statuses:?}: {}",
            self.ctx()
        );
        &self.json
    }

    /// Assert status and that the JSON body equals `expected` exactly.
    #[track_caller]
    pub fn expect_json(&self, status: u16, expected: &Value) {
        self.expect(status);
        assert_eq!(&self.json, expected, "unexpected body: {}", self.ctx());
    }

    /// Assert status and that the body is a JSON object whose `detail` is a non-empty string.
    #[track_caller]
    pub fn expect_detail(&self, status: u16) -> String {
        self.expect(status);
        match self.json.get("detail").and_then(Value::as_str) {
            Some(d) if !d.is_empty() => d.to_string(),
            _ => panic!(
                "expected a JSON body with a string `detail`: {}",
                self.ctx()
            ),
        }
    }

    /// Assert status and that `detail` is exactly `msg`.
    #[track_caller]
    pub fn expect_detail_eq(&self, status: u16, msg: &str) {
        let d = self.expect_detail(status);
        assert_eq!(d, msg, "unexpected detail: {}", self.ctx());
    }

    /// Assert a 400 whose JSON body has `field` as a non-empty array of strings.
    #[track_caller]
    pub fn expect_field_error(&self, field: &str) {
        self.expect(400);
        let ok = self
            .json
            .get(field)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
        assert!(
            ok,
            "expected 400 with field error {{\"{field}\": [\"...\"]}}: {}",
            self.ctx()
        );
    }

    /// 401 without credentials, exact body, `WWW-Authenticate: Bearer...`.
    #[track_caller]
    pub fn expect_unauthenticated(&self) {
        self.expect_json(401, &json!({"detail": MSG_NO_CREDENTIALS}));
        self.expect_www_authenticate();
    }

    /// 401 for a bad token, exact body, `WWW-Authenticate: Bearer...`.
    #[track_caller]
    pub fn expect_bad_token(&self) {
        self.expect_json(
            401,
            &json!({"detail": MSG_BAD_TOKEN, "code": "token_not_valid"}),
        );
        self.expect_www_authenticate();
    }

    #[track_caller]
    pub fn expect_www_authenticate(&self) {
        let h = self.header_required("www-authenticate");
        assert!(
            h.starts_with("Bearer"),
            "WWW-Authenticate should start with Bearer, got {h:?}: {}",
            self.ctx()
        );
    }

    #[track_caller]
    pub fn expect_forbidden(&self) {
        self.expect_json(403, &json!({"detail": MSG_FORBIDDEN}));
    }

    #[track_caller]
    pub fn expect_not_found(&self) {
        self.expect_json(404, &json!({"detail": MSG_NOT_FOUND}));
    }

    /// The body as a JSON array (panics otherwise).
    #[track_caller]
    pub fn array(&self) -> &Vec<Value> {
        self.json
            .as_array()
            .unwrap_or_else(|| panic!("expected a JSON array: {}", self.ctx()))
    }

    /// `id` of the JSON body (panics if missing / not an integer).
    #[track_caller]
    pub fn id(&self) -> i64 {
        self.json["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("expected an integer `id`: {}", self.ctx()))
    }

    /// `X-Total-Count` as a number (panics if missing or not a number).
    #[track_caller]
    pub fn total_count(&self) -> u64 {
        let h = self.header_required("x-total-count");
        h.trim()
            .parse()
            .unwrap_or_else(|_| panic!("X-Total-Count not a number: {h:?}: {}", self.ctx()))
    }

    /// The URL of the `rel="next"` link in the `Link` header, if any.
    pub fn next_link(&self) -> Option<String> {
        let mut found = None;
        for value in self.headers.get_all("link") {
            let v = value.to_str().ok()?;
            for part in v.split(',') {
                let part = part.trim();
                let is_next = part
                    .split(';')
                    .skip(1)
                    .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
                if is_next {
                    let start = part.find('<')?;
                    let end = part.find('>')?;
                    found = Some(part[start + 1..end].to_string());
                }
            }
        }
        found
    }
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    }
}

/// Ids of a JSON array of objects.
pub fn ids(items: &[Value]) -> Vec<i64> {
    items
        .iter()
        .map(|v| v["id"].as_i64().expect("object with integer id"))
        .collect()
}

/// `name`s of a JSON array of objects.
pub fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|v| {
            v["name"]
                .as_str()
                .expect("object with string name")
                .to_string()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// JWT helpers (hand-rolled base64url so tests can forge tokens)
// ---------------------------------------------------------------------------------------------

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url.
pub fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(B64URL[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes unpadded (or padded) base64url; panics on invalid input.
pub fn b64url_decode(s: &str) -> Vec<u8> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64URL
            .iter()
            .position(|&x| x == c)
            .unwrap_or_else(|| panic!("invalid base64url char {:?} in {s:?}", c as char))
            as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// (header, payload, signature segment) of a compact JWT.
pub fn jwt_parts(token: &str) -> (Value, Value, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(
        parts.len(),
        3,
        "a JWT has three dot-separated parts: {token}"
    );
    let header = serde_json::from_slice(&b64url_decode(parts[0])).expect("JWT header is JSON");
    let payload = serde_json::from_slice(&b64url_decode(parts[1])).expect("JWT payload is JSON");
    (header, payload, parts[2].to_string())
}

/// Build `b64(header).b64(payload).signature` from JSON values and a given signature segment.
pub fn jwt_assemble(header: &Value, payload: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        b64url_encode(header.to_string().as_bytes()),
        b64url_encode(payload.to_string().as_bytes()),
        signature
    )
}

/// Sign `payload` with an HMAC algorithm ("HS256", "HS384", "HS512") and `secret`.
pub fn jwt_sign_hmac(alg: &str, payload: &Value, secret: &[u8]) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let alg = match alg {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        other => panic!("unsupported alg {other}"),
    };
    encode(
        &Header::new(alg),
        payload,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign JWT")
}

/// Current Unix time in seconds.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// JSON number or string id equality (`user_id` may be either, as simplejwt versions differ).
pub fn json_id_eq(v: &Value, id: i64) -> bool {
    match v {
        Value::Number(n) => n.as_i64() == Some(id),
        Value::String(s) => s == &id.to_string(),
        _ => false,
    }
}

pub mod browser;
pub mod cluster;

// ---------------------------------------------------------------------------------------------
// The load balancer harness (tests/common/lb.rs)
// ---------------------------------------------------------------------------------------------

pub mod lb;
