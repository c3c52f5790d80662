//! Child processes of the `soundwave` binary under test: finding and starting it (with no
//! `SOUNDWAVE_*` setting from the environment), reading its output, running it to its end;
//! free ports and bounded waits.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a node may take to print its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `soundwave` executable Cargo built for the integration tests:
/// `CARGO_BIN_EXE_soundwave` when set, else the one beside the test binary's `deps/`
/// directory (`target/<profile>/soundwave`).
pub fn soundwave_exe() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_soundwave") {
        return PathBuf::from(path);
    }
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in target/<profile>/deps");
    profile_dir.join("soundwave")
}

/// Cargo's scratch directory for the integration tests (`CARGO_TARGET_TMPDIR` when set, else
/// `target/tmp`).
pub fn target_tmpdir() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_TARGET_TMPDIR") {
        return PathBuf::from(path);
    }
    soundwave_exe()
        .parent()
        .and_then(|profile| profile.parent())
        .expect("the binary is in target/<profile>")
        .join("tmp")
}

/// A child process and the lines it printed so far (read by one thread per stream).
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) stdout: Arc<Mutex<Vec<String>>>,
    pub(crate) stderr: Arc<Mutex<Vec<String>>>,
    pub(crate) threads: Vec<JoinHandle<()>>,
}

/// Reads `src` line by line into `sink` (and `notify`) on a thread of its own.
pub(crate) fn spawn_line_reader<R: Read + Send + 'static>(
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
    let mut cmd = Command::new(soundwave_exe());
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
    command_to_exit(cmd, limit)
}

/// Runs `cmd` to its end; kills it and panics if it is still running after `limit`.
pub fn command_to_exit(mut cmd: Command, limit: Duration) -> Finished {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
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

/// The child's exit status, or `None` if it still runs after `dur`.
pub(crate) fn wait_timeout(child: &mut Child, dur: Duration) -> Option<ExitStatus> {
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
