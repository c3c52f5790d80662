//! `soundwave-lb`: the load balancer in front of Soundwave nodes, on
//! [Pingora](https://github.com/cloudflare/pingora). `soundwave lb` runs [`run`].
//!
//! What it does, beyond what `pingora-load-balancing` gives:
//!
//! - **IP hash** with ketama consistent hashing ([`selection::Consistent`]) over the
//!   primaries, keyed on the client IP, so a client stays on one primary while it is
//!   available and only the clients of a failed primary move. Selection walks the ring and
//!   skips upstreams that are down, ejected or drained.
//! - **A backup tier**: a second ring whose upstreams are chosen only when no primary is
//!   available.
//! - **A replaceable upstream set** ([`Upstreams::replace`]): the tiers can change while
//!   the balancer runs; upstreams that stay keep their state, an added one takes only its
//!   share of clients, requests in flight to a removed one finish.
//! - **Active health checks**: `GET /health/` on every upstream every `health_interval_ms`
//!   (pingora's `HttpHealthCheck`), with `rise` / `fall` counts; an upstream gets no client
//!   before a probe passed (at start, or when added).
//! - **Passive ejection** as nginx does it: `max_fails` failures within `fail_timeout_secs`
//!   take an upstream out for `fail_timeout_secs`, or until the probes see it come back up.
//! - **One retry**: a failed connect is retried at once on the next available upstream,
//!   whatever the method (it surely never reached the upstream); a failure after the
//!   request was sent is retried only for idempotent methods, before any response byte went
//!   to the client. No request is sent more than [`MAX_ATTEMPTS`] times.
//! - **Forwarding headers** (`X-Real-IP`, `X-Forwarded-For` appended, `X-Forwarded-Proto`;
//!   `Host` kept) with the client IP taken from the TCP peer unless the peer is a trusted
//!   proxy.
//! - **Safety**: paths under [`RESERVED_PREFIXES`] and the operator endpoints
//!   ([`OPERATOR_PREFIXES`]) are never forwarded (404); timeouts for connect, read and
//!   idle; before Pingora sees a connection, a guard bounds open connections in all and per
//!   client IP (503), and each request's head and body in total time (408) and the head in
//!   size (431, 414) and syntax (400), all answered in JSON; SIGTERM drains in-flight
//!   requests for `grace_period_secs`; requests per second per client IP with a burst
//!   (`ratelimit.rs`, JSON 429 with `Retry-After`).
//! - **Operations**: an upstream can be drained (`POST /_lb/upstreams/{addr}/drain`, on the
//!   operator listener; ketama skips it as it skips a down one) and brought back; `run`
//!   with `upgrade` takes the listening sockets from the running balancer (Pingora's
//!   hand-off on SIGQUIT), so a new binary replaces the old without refusing a connection.
//! - **Visibility**: on the operator listener `metrics_listen` only, `GET /_lb/status`
//!   (JSON) and Prometheus `GET /metrics`; one
//!   access line per request, through the [`AccessLog`] the caller passes to [`run`].
//!
//! [`selection::Consistent`]: pingora_load_balancing::selection::Consistent

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownWatch};
use pingora_core::services::background::{BackgroundService, background_service};
use pingora_core::services::listening::Service;

mod config;
mod connection;
mod discovery;
mod error;
mod health;
mod http1;
mod metrics;
mod operator;
mod proxy;
mod ratelimit;
mod relay;
mod reload;
mod tls;
mod upstream;

pub use config::{LbConfig, Secret};
pub use connection::{ConnectionCounter, ConnectionSlot};
pub use error::LbError;
pub use proxy::{
    AccessLog, AccessRecord, MAX_ATTEMPTS, OPERATOR_PREFIXES, Protocol, RESERVED_PREFIXES,
    client_ip, is_internal,
};
pub use reload::{ConfigSource, Reloaded};
pub use upstream::{Role, Upstream, UpstreamChange, Upstreams};

/// Fails early, with a clear message, when an address is taken.
fn check_bindable(what: &'static str, addr: SocketAddr) -> Result<(), LbError> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| LbError::Listen { what, addr, source })
}

/// The pid file in the run directory: written once the balancer holds its listeners, read
/// by `--upgrade` to find the process it takes them from.
fn pid_file(run_dir: &std::path::Path) -> PathBuf {
    run_dir.join("lb.pid")
}

fn pingora_conf(config: &LbConfig, run_dir: &std::path::Path) -> ServerConf {
    ServerConf {
        threads: config.worker_threads(),
        pid_file: pid_file(run_dir).to_string_lossy().into_owned(),
        upgrade_sock: run_dir
            .join("lb-upgrade.sock")
            .to_string_lossy()
            .into_owned(),
        grace_period_seconds: Some(config.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(config.graceful_shutdown_timeout_secs),
        // A fail-safe: the retry policy itself stops at MAX_ATTEMPTS.
        max_retries: usize::from(MAX_ATTEMPTS),
        // One single-threaded runtime per worker thread: a client connection's task, and
        // with it its upstream connections (`links`), stays on the thread it started on.
        // Measured on two cores against a work-stealing runtime: about 30 against 37 µs
        // of CPU per proxied request.
        work_stealing: false,
        ..ServerConf::default()
    }
}

/// Prints the ready line once the listener accepts connections and every upstream has been
/// probed once (or the first probes ran out of time), then reloads the configuration on
/// each SIGHUP. SIGHUP is taken before the ready line: a balancer said ready never dies of
/// one.
struct Announcer {
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    tls_listen: Option<SocketAddr>,
    upstreams: Arc<upstream::Upstreams>,
    probe_wait: Duration,
    reloader: Option<reload::Reloader>,
}

#[async_trait]
impl BackgroundService for Announcer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match &self.reloader {
            Some(_) => match signal(SignalKind::hangup()) {
                Ok(hangups) => Some(hangups),
                Err(error) => {
                    tracing::error!(target: "soundwave::lb", %error, "cannot take SIGHUP: no reloads");
                    None
                }
            },
            None => None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let wanted = std::iter::once(self.listen)
            .chain(self.metrics_listen)
            .chain(self.tls_listen);
        for addr in wanted {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if Instant::now() > deadline {
                    tracing::error!(target: "soundwave::lb", %addr, "the listener did not come up");
                    std::process::exit(1);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let deadline = Instant::now() + self.probe_wait;
        while !self.upstreams.all_probed() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(addr) = self.metrics_listen {
            println!("soundwave lb metrics on http://{addr}/metrics");
        }
        // Before the plain line, which callers wait for: both are up when it comes.
        if let Some(addr) = self.tls_listen {
            println!("soundwave lb listening on https://{addr}");
        }
        println!("soundwave lb listening on http://{}", self.listen);
        use std::io::Write;
        let _ = std::io::stdout().flush();

        let (Some(reloader), Some(hangups)) = (&self.reloader, hangups.as_mut()) else {
            return;
        };
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                signal = hangups.recv() => {
                    if signal.is_none() {
                        return;
                    }
                    tracing::info!(target: "soundwave::lb", "SIGHUP: reloading the configuration");
                    // A small file read and a few swaps: short enough for this task.
                    let _ = reloader.reload();
                }
            }
        }
    }
}

/// Descriptors kept for everything but client and upstream connections (listeners, probes,
/// logs, the run directory).
const RESERVED_DESCRIPTORS: u64 = 64;

/// `configured`, lowered to what the descriptor limit allows: the soft limit is raised to
/// the hard one first (as nginx's `worker_rlimit_nofile`), then each client connection is
/// counted with the upstream connection it may need.
fn within_descriptor_limit(configured: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !known {
        return configured;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let allowed = limit.rlim_cur.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    let allowed = usize::try_from(allowed).unwrap_or(usize::MAX).max(1);
    if allowed < configured {
        tracing::warn!(
            target: "soundwave::lb",
            configured,
            allowed,
            descriptors = limit.rlim_cur,
            "lb.max_connections lowered to fit the descriptor limit"
        );
    }
    configured.min(allowed)
}

/// The process named by the pid file of `run_dir`, when it is alive: the balancer an
/// upgrade takes the listeners from.
fn running_balancer(run_dir: &std::path::Path) -> Result<libc::pid_t, LbError> {
    let path = pid_file(run_dir);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        LbError::Upgrade(format!(
            "no running balancer: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let pid: libc::pid_t = text
        .trim()
        .parse()
        .map_err(|_| LbError::Upgrade(format!("{} does not hold a process id", path.display())))?;
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return Err(LbError::Upgrade(format!(
            "the balancer of {} (pid {pid}) is not running",
            path.display()
        )));
    }
    Ok(pid)
}

/// Runs the balancer until SIGTERM (drains in-flight requests for `grace_period_secs`),
/// SIGINT (stops at once) or SIGQUIT (hands its listening sockets to a new balancer started
/// with `upgrade`, then drains). Pingora builds its own runtimes: call this from a plain
/// thread, not from inside an async runtime. `metrics_handle` renders the process's
/// Prometheus recorder, where the balancer records its metrics; `access_log` writes the
/// line of each finished request.
///
/// With `upgrade`, the listeners are not bound but taken from the balancer named by the pid
/// file of the run directory (Pingora's hand-off over the upgrade socket there), once that
/// one gets SIGQUIT; if it does not hand them over within about five seconds, this process
/// exits with status 1.
///
/// With `reload`, SIGHUP loads the configuration again through it and applies the
/// upstreams, probe, passive-failure and rate-limit settings (see `reload.rs`); without,
/// SIGHUP is ignored.
pub fn run(
    config: LbConfig,
    metrics_handle: PrometheusHandle,
    access_log: AccessLog,
    upgrade: bool,
    reload: Option<ConfigSource>,
) -> Result<(), LbError> {
    config.validate()?;
    // Until the SIGHUP handler is in place (before the ready line), a SIGHUP must not end
    // the process, as its default action would.
    // SAFETY: setting a signal's disposition to "ignore" has no other effect.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // A bad certificate or key stops the start, naming the file.
    let tls_acceptor = match config.tls_listen {
        Some(_) => Some(tls::acceptor(&config.tls_cert, &config.tls_key)?),
        None => None,
    };
    let run_dir = config.effective_run_dir();
    if upgrade {
        let old = running_balancer(&run_dir)?;
        tracing::info!(
            target: "soundwave::lb",
            old_pid = old,
            "upgrading: waiting for the running balancer's sockets (send it SIGQUIT)"
        );
    } else {
        check_bindable("listen", config.listen)?;
        if let Some(addr) = config.metrics_listen {
            check_bindable("metrics_listen", addr)?;
        }
        if let Some(addr) = config.tls_listen {
            check_bindable("tls_listen", addr)?;
        }
    }
    std::fs::create_dir_all(&run_dir).map_err(|source| LbError::RunDir {
        path: run_dir.clone(),
        source,
    })?;

    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, pingora_conf(&config, &run_dir));
    server.bootstrap();
    let pid_path = pid_file(&run_dir);
    std::fs::write(&pid_path, format!("{}\n", std::process::id())).map_err(|source| {
        LbError::PidFile {
            path: pid_path,
            source,
        }
    })?;

    let config = Arc::new(config);
    let upstreams = Arc::new(upstream::Upstreams::new(
        &config.primaries,
        &config.backups,
        config.max_fails,
        config.fail_timeout(),
    ));
    let prober = background_service(
        "lb probes",
        health::Prober::new(&config, upstreams.clone())?,
    );
    let balancer = proxy::Balancer {
        upstreams: upstreams.clone(),
        config: config.clone(),
        access_log,
    };
    let operator_view = balancer.clone();
    let max_connections = within_descriptor_limit(config.max_connections);
    let counter = connection::ConnectionCounter::new(
        max_connections,
        config.max_connections_per_ip,
        config.trusted_proxies.clone(),
    );
    let relay = relay::Relay::new(balancer, counter, config.request_limits());
    let reloader = reload.map(|source| {
        reload::Reloader::new(
            source,
            LbConfig::clone(&config),
            upstreams.clone(),
            prober.task(),
            relay.limiter(),
        )
    });
    // The HTTPS listener: the same relay (balancer, bounds, rate limits) behind rustls.
    if let (Some(addr), Some(acceptor)) = (config.tls_listen, tls_acceptor) {
        let mut tls_service = Service::new("soundwave lb tls".to_owned(), relay.over_tls(acceptor));
        tls_service.add_listener(
            ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::unbuffered()),
        );
        server.add_service(tls_service);
    }
    let mut proxy_service = Service::new("soundwave lb".to_owned(), relay);
    // Unbuffered: the relay keeps buffers of its own, and Pingora's (64 KiB for reads, one
    // MSS for writes) would copy every request and answer once more.
    proxy_service.add_listener(
        ListenerConfig::tcp(config.listen.to_string()).l4_buffer(L4BufferSettings::unbuffered()),
    );
    server.add_service(proxy_service);
    server.add_service(prober);
    if !config.discover_from.is_empty() {
        server.add_service(background_service(
            "lb discovery",
            discovery::Discovery::new(&config, upstreams.clone()),
        ));
    }

    if let Some(addr) = config.metrics_listen {
        let mut service = Service::new(
            "lb metrics".to_owned(),
            operator::OperatorApp {
                handle: metrics_handle,
                balancer: operator_view,
            },
        );
        service.threads = Some(1);
        service.add_tcp(&addr.to_string());
        server.add_service(service);
    }
    let probe_wait = Duration::from_millis(2 * config.health_timeout_ms + 500);
    server.add_service(background_service(
        "lb ready",
        Announcer {
            listen: config.listen,
            metrics_listen: config.metrics_listen,
            tls_listen: config.tls_listen,
            upstreams,
            probe_wait,
            reloader,
        },
    ));

    tracing::info!(
        target: "soundwave::lb",
        listen = %config.listen,
        primaries = ?config.primaries,
        backups = ?config.backups,
        max_connections,
        "starting the load balancer"
    );
    server.run(RunArgs::default());
    Ok(())
}
