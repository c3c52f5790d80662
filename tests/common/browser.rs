//! A real headless Chromium for the browser tests, driven over WebDriver: the test starts
//! Debian's `chromedriver` on a free loopback port (its own process group, killed at the end)
//! and talks to it with fantoccini over plain HTTP. Every wait is bounded.
//!
//! Binaries: `$CHROMEDRIVER` and `$CHROME_BIN` when set, else `chromedriver` and `chromium` on
//! the `PATH` (`scripts/test` and `.ci/run` install them when missing).

use std::future::Future;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::node::Node;

/// How long any single wait for the page may take.
pub const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// Window sizes.
pub const DESKTOP: (u32, u32) = (1280, 900);
pub const PHONE: (u32, u32) = (390, 844);

pub struct Browser {
    pub client: Client,
    driver: Child,
    /// Kept for its drop: the directory goes with the browser.
    _dir: tempfile::TempDir,
}

/// An executable: `$var` when set, else the first of `names` found on the `PATH`.
fn executable(var: &str, names: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{} not found (looked for {names:?} on PATH; set {var} to override). The browser \
         tests need Debian's chromium and chromium-driver: run scripts/test, which installs \
         them, or apt-get install -y chromium chromium-driver",
        names[0]
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free loopback port")
        .port()
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium session (empty profile) with a
    /// window of `size` CSS pixels.
    pub async fn start(size: (u32, u32)) -> Browser {
        let chromium = executable("CHROME_BIN", &["chromium", "chromium-browser"]);
        let chromedriver = executable("CHROMEDRIVER", &["chromedriver"]);
        let dir = tempfile::Builder::new()
            .prefix("soundwave-browser-")
            .tempdir()
            .expect("temp dir for the browser");
        let log = dir.path().join("chromedriver.log");
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that the browser it starts goes down with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let mut guard = DriverGuard(Some(driver));
        guard.wait_until_ready(port, &log).await;

        let profile = dir.path().join("profile");
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--password-store=basic".to_owned(),
            "--hide-scrollbars".to_owned(),
            "--force-device-scale-factor=1".to_owned(),
            "--lang=en-US".to_owned(),
            format!("--window-size={},{}", size.0, size.1),
            format!("--user-data-dir={}", profile.display()),
        ];
        let mut options = json!({
            "binary": chromium.display().to_string(),
            "args": args,
        });
        if size.0 < 500 {
            // A desktop window cannot be that narrow: emulate the phone's screen instead.
            options["mobileEmulation"] = json!({
                "deviceMetrics": {"width": size.0, "height": size.1, "pixelRatio": 1.0, "touch": true},
            });
        }
        let capabilities = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": options,
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let capabilities: Capabilities = capabilities;
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start a Chromium session ({}): {e}\n{}",
                    chromium.display(),
                    tail(&log)
                )
            });
        Browser {
            client,
            driver: guard.0.take().expect("chromedriver is running"),
            _dir: dir,
        }
    }

    /// Ends the session (chromedriver closes Chromium) and stops chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
        // Drop kills chromedriver's process group.
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The first element matching `css`, once there is one.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .every(POLL)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element `{css}` within {WAIT:?}: {e}"))
    }

    /// Waits until an element matching `css` is displayed.
    pub async fn visible(&self, css: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(el) = self.client.find(Locator::Css(css)).await
                && el.is_displayed().await.unwrap_or(false)
            {
                return el;
            }
            if Instant::now() > deadline {
                panic!(
                    "`{css}` not visible within {WAIT:?}; page text:\n{}",
                    self.body_text().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the element matching `css` shows `needle`; returns its whole text.
    pub async fn text_contains(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut seen = String::new();
            if let Ok(el) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = el.text().await
            {
                if text.contains(needle) {
                    return text;
                }
                seen = text;
            }
            if Instant::now() > deadline {
                panic!(
                    "`{css}` did not show {needle:?} within {WAIT:?} (it shows {seen:?}); \
                     page text:\n{}",
                    self.body_text().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Finds the element matching `css` and acts on it, finding it again while the action
    /// fails (the pages re-render, so an element may go stale between finding and acting),
    /// up to `WAIT`.
    async fn act_on<F, Fut>(&self, css: &str, what: &str, act: F)
    where
        F: Fn(Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            let error = match self.client.find(Locator::Css(css)).await {
                Ok(el) => match act(el).await {
                    Ok(()) => return,
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!("cannot {what} `{css}` within {WAIT:?}: {error}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Clicks the element matching `css`, once it exists and takes the click.
    pub async fn click(&self, css: &str) {
        self.act_on(css, "click", |el| async move { el.click().await })
            .await;
    }

    /// Clicks the element matching `css` whose text is `text`.
    pub async fn click_text(&self, css: &str, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(all) = self.client.find_all(Locator::Css(css)).await {
                for el in all {
                    if el.text().await.is_ok_and(|t| t.trim() == text) && el.click().await.is_ok() {
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("no clickable `{css}` showing {text:?} within {WAIT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Replaces the value of the input matching `css` by typing `text` (WebDriver key codes
    /// such as `\u{E007}` for Enter work too).
    pub async fn fill(&self, css: &str, text: &str) {
        self.act_on(css, "type into", |el| async move {
            el.clear().await?;
            el.send_keys(text).await
        })
        .await;
    }

    pub async fn select(&self, css: &str, value: &str) {
        self.act_on(css, &format!("select {value:?} in"), |el| async move {
            el.select_by_value(value).await.map(|_| ())
        })
        .await;
    }

    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.find(css)
            .await
            .attr(name)
            .await
            .unwrap_or_else(|e| panic!("attribute {name} of `{css}`: {e}"))
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    pub async fn body_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(e) => format!("(no body: {e})"),
        }
    }

    /// Opens `url` in a new tab of the same browser and switches to it: cookies and
    /// localStorage are shared with the other tabs, sessionStorage is not.
    pub async fn open_in_new_tab(&self, url: &str) {
        let tab = self
            .client
            .new_window(true)
            .await
            .unwrap_or_else(|e| panic!("open a new tab: {e}"));
        self.client
            .switch_to_window(tab.handle)
            .await
            .unwrap_or_else(|e| panic!("switch to the new tab: {e}"));
        self.goto(url).await;
    }

    /// Switches to the browser's first tab.
    pub async fn switch_to_first_tab(&self) {
        let tabs = self
            .client
            .windows()
            .await
            .unwrap_or_else(|e| panic!("list the tabs: {e}"));
        let first = tabs.into_iter().next().expect("a tab");
        self.client
            .switch_to_window(first)
            .await
            .unwrap_or_else(|e| panic!("switch to the first tab: {e}"));
    }

    /// The value of the cookie `name` that the browser sends to `url` (HttpOnly ones too),
    /// if any. Navigates to `url` to read it, so the current page is left.
    pub async fn cookie_at(&self, url: &str, name: &str) -> Option<String> {
        self.goto(url).await;
        self.client
            .get_named_cookie(name)
            .await
            .ok()
            .map(|cookie| cookie.value().to_owned())
            .filter(|value| !value.is_empty())
    }

    /// Chooses the file at `path` in the file input `css`.
    pub async fn choose_file(&self, css: &str, path: &Path) {
        self.find(css)
            .await
            .send_keys(&path.display().to_string())
            .await
            .unwrap_or_else(|e| panic!("choose {} in `{css}`: {e}", path.display()));
    }

    /// Saves a PNG of the viewport as `target/screenshots/NAME.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = crate::process::target_tmpdir()
            .parent()
            .expect("target dir")
            .join("screenshots");
        std::fs::create_dir_all(&dir).expect("create target/screenshots");
        let path = dir.join(format!("{name}.png"));
        match self.client.screenshot().await {
            Ok(png) => std::fs::write(&path, png).expect("write screenshot"),
            Err(e) => eprintln!("screenshot {name} failed: {e}"),
        }
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The profile directory (`dir`) is removed after this, once nothing uses it.
        kill_group(&mut self.driver);
    }
}

/// chromedriver while the session starts: killed if the start fails half-way.
struct DriverGuard(Option<Child>);

impl DriverGuard {
    async fn wait_until_ready(&mut self, port: u16, log: &Path) {
        let status = format!("http://127.0.0.1:{port}/status");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(Ok(Some(exit))) = self.0.as_mut().map(Child::try_wait) {
                panic!("chromedriver exited at start: {exit}\n{}", tail(log));
            }
            if let Ok(resp) = http.get(&status).send().await
                && let Ok(body) = resp.json::<Value>().await
                && body["value"]["ready"] == json!(true)
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "chromedriver did not answer {status} within {WAIT:?}\n{}",
                    tail(log)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            kill_group(child);
        }
    }
}

/// SIGKILL chromedriver's process group (chromedriver and the Chromium it started), then reap.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- chromedriver log tail ---\n{}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// Runs a scenario in a fresh browser; whatever happens, saves a screenshot of the final page
/// as `name` and closes the browser, then passes the scenario's panic on.
pub async fn in_browser<F, Fut>(name: &str, size: (u32, u32), node: Arc<Node>, scenario: F)
where
    F: FnOnce(Arc<Browser>, Arc<Node>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let browser = Arc::new(Browser::start(size).await);
    let outcome = tokio::spawn(scenario(browser.clone(), node)).await;
    let shot = browser.screenshot(name).await;
    eprintln!("screenshot: {}", shot.display());
    if let Some(browser) = Arc::into_inner(browser) {
        browser.close().await;
    }
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}
