//! One `soundwave node` child process on an ephemeral port with a fresh data directory,
//! and an HTTP client pointed at it: the options it starts with ([`NodeBuilder`]), its
//! output, restarts and kills, and the API calls tests make (sign-up, login, catalog,
//! orders).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Client, Method, RequestBuilder};
use serde_json::{Value, json};

use crate::fixtures::{items_body, product_body, unique_name};
use crate::process::{
    Finished, Proc, START_TIMEOUT, command_to_exit, soundwave_command, soundwave_exe,
    spawn_line_reader, wait_timeout,
};
use crate::response::{Resp, until_not_busy};

/// Per-request timeout of the test client (a hung server fails the test instead of hanging it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
pub const ADMIN_USERNAME: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-Passw0rd-for-tests";
pub const PASSWORD: &str = "s3cret-Passw0rd";

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
            _dir: dir,
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

/// A running `soundwave node` child process plus an HTTP client pointed at it.
pub struct Node {
    opts: NodeBuilder,
    /// Kept for its drop: the directory goes with the node.
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    config_path: Option<PathBuf>,
    proc: Option<Proc>,
    base: String,
    pub client: Client,
    starts: u32,
}

impl Node {
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// A node with default options.
    pub fn start() -> Node {
        NodeBuilder::default().start()
    }

    /// Starts the node's command again (same options and data directory) expecting it to
    /// exit, not to serve: what it printed and how it ended.
    pub fn start_to_exit(&mut self, limit: Duration) -> Finished {
        assert!(self.proc.is_none(), "start while a child is running");
        self.starts += 1;
        command_to_exit(self.command(), limit)
    }

    /// `soundwave node` with this node's options.
    fn command(&self) -> Command {
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
        cmd
    }

    fn spawn(&mut self) {
        assert!(self.proc.is_none(), "spawn while a child is running");
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", soundwave_exe().display()));
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

    /// Leaves the environment variable `key` out of the next start (e.g. `SOUNDWAVE_JOIN`).
    pub fn remove_env(&mut self, key: &str) {
        self.opts.env.retain(|(k, _)| k != key);
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
