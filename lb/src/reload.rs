//! SIGHUP: the balancer reads its configuration again and takes, without a restart and
//! without dropping a connection, the upstreams (both tiers), the probe settings (path,
//! interval, timeout, rise, fall), the passive-failure settings (`max_fails`,
//! `fail_timeout_secs`) and the rate limit. A configuration that does not load or validate
//! is logged and the running one kept. What cannot change in a running process (listeners,
//! timeouts, connection and size limits, worker threads, the run directory) is named in a
//! warning and kept; an upgrade (`--upgrade`) takes those.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

use crate::config::LbConfig;
use crate::error::LbError;
use crate::health::Prober;
use crate::metrics;
use crate::ratelimit::RateLimiter;
use crate::upstream::{UpstreamChange, Upstreams};

/// Loads the configuration again, as it was loaded at start (file, environment, flags),
/// validated; the error says what is wrong.
pub type ConfigSource = Box<dyn Fn() -> Result<LbConfig, String> + Send + Sync>;

/// The rate limiter the relay consults, replaced whole when the limit changes (`None`:
/// no limit).
pub type SharedLimiter = Arc<ArcSwapOption<RateLimiter>>;

/// What a reload changed.
#[derive(Debug, Default)]
pub struct Reloaded {
    pub upstreams: UpstreamChange,
    /// Reloadable settings whose value changed (`lb.` keys).
    pub settings: Vec<&'static str>,
    /// Settings that differ but cannot change without a restart: kept.
    pub kept: Vec<&'static str>,
}

/// Applies a configuration loaded again to the running balancer.
pub struct Reloader {
    source: ConfigSource,
    /// The configuration in force: the one the balancer started with, with the reloadable
    /// settings of the last successful reload.
    running: Mutex<LbConfig>,
    upstreams: Arc<Upstreams>,
    prober: Arc<Prober>,
    limiter: SharedLimiter,
}

/// Names of the `[lb]` keys whose values differ between `a` and `b`, among `fields`.
macro_rules! differing {
    ($a:expr, $b:expr, $($field:ident),+ $(,)?) => {{
        let mut names: Vec<&'static str> = Vec::new();
        $(if $a.$field != $b.$field {
            names.push(concat!("lb.", stringify!($field)));
        })+
        names
    }};
}

/// The reloadable keys whose values differ.
fn reloadable_differences(a: &LbConfig, b: &LbConfig) -> Vec<&'static str> {
    // Every key is in this list or in `fixed_differences`: a key added to `LbConfig`
    // does not compile here until it is put in one of them.
    let LbConfig {
        primaries: _,
        backups: _,
        health_path: _,
        health_interval_ms: _,
        health_timeout_ms: _,
        rise: _,
        fall: _,
        max_fails: _,
        fail_timeout_secs: _,
        rate_limit_per_sec: _,
        rate_limit_burst: _,
        listen: _,
        metrics_listen: _,
        tls_listen: _,
        tls_cert: _,
        tls_key: _,
        connect_timeout_ms: _,
        read_timeout_secs: _,
        idle_timeout_secs: _,
        max_header_bytes: _,
        header_timeout_secs: _,
        body_timeout_secs: _,
        max_body_bytes: _,
        max_connections: _,
        max_connections_per_ip: _,
        trusted_proxies: _,
        threads: _,
        grace_period_secs: _,
        graceful_shutdown_timeout_secs: _,
        run_dir: _,
        discover_from: _,
        discover_interval_ms: _,
        discover_secret: _,
    } = a;
    differing!(
        a,
        b,
        primaries,
        backups,
        health_path,
        health_interval_ms,
        health_timeout_ms,
        rise,
        fall,
        max_fails,
        fail_timeout_secs,
        rate_limit_per_sec,
        rate_limit_burst,
    )
}

/// The keys that differ but that a running balancer cannot take.
fn fixed_differences(a: &LbConfig, b: &LbConfig) -> Vec<&'static str> {
    differing!(
        a,
        b,
        listen,
        metrics_listen,
        tls_listen,
        tls_cert,
        tls_key,
        connect_timeout_ms,
        read_timeout_secs,
        idle_timeout_secs,
        max_header_bytes,
        header_timeout_secs,
        body_timeout_secs,
        max_body_bytes,
        max_connections,
        max_connections_per_ip,
        trusted_proxies,
        threads,
        grace_period_secs,
        graceful_shutdown_timeout_secs,
        run_dir,
        discover_from,
        discover_interval_ms,
        discover_secret,
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Reloader {
    pub fn new(
        source: ConfigSource,
        started_with: LbConfig,
        upstreams: Arc<Upstreams>,
        prober: Arc<Prober>,
        limiter: SharedLimiter,
    ) -> Reloader {
        Reloader {
            source,
            running: Mutex::new(started_with),
            upstreams,
            prober,
            limiter,
        }
    }

    /// Loads the configuration again and applies what may change; logs the outcome and
    /// counts it (`soundwave_lb_reloads_total{result}`).
    pub fn reload(&self) -> Result<Reloaded, LbError> {
        let outcome = self.try_reload();
        match &outcome {
            Ok(reloaded) => {
                metrics::reload("ok");
                if !reloaded.kept.is_empty() {
                    tracing::warn!(
                        target: "soundwave::lb",
                        kept = ?reloaded.kept,
                        "reload: these settings cannot change without a restart or an upgrade (--upgrade); their running values are kept"
                    );
                }
                let change = &reloaded.upstreams;
                tracing::info!(
                    target: "soundwave::lb",
                    changed = ?reloaded.settings,
                    added = ?change.added,
                    removed = ?change.removed,
                    moved = ?change.moved,
                    "configuration reloaded"
                );
            }
            Err(error) => {
                metrics::reload("failed");
                tracing::error!(
                    target: "soundwave::lb",
                    %error,
                    "reload refused: the running configuration is kept"
                );
            }
        }
        outcome
    }

    fn try_reload(&self) -> Result<Reloaded, LbError> {
        let loaded = (self.source)().map_err(LbError::Invalid)?;
        loaded.validate()?;
        let mut running = lock(&self.running);
        let kept = fixed_differences(&running, &loaded);
        let settings = reloadable_differences(&running, &loaded);
        // Everything that can fail comes before the first change.
        let limiter_changed = (running.rate_limit_per_sec, running.rate_limit_burst)
            != (loaded.rate_limit_per_sec, loaded.rate_limit_burst);
        self.prober.reconfigure(&loaded)?;
        let upstreams = self.upstreams.replace(&loaded.primaries, &loaded.backups)?;
        self.upstreams
            .set_passive(loaded.max_fails, loaded.fail_timeout());
        if limiter_changed {
            // Buckets start full again under the new limit.
            let limiter = RateLimiter::new(loaded.rate_limit_per_sec, loaded.rate_limit_burst);
            self.limiter.store(limiter.map(Arc::new));
        }
        running.primaries = loaded.primaries;
        running.backups = loaded.backups;
        running.health_path = loaded.health_path;
        running.health_interval_ms = loaded.health_interval_ms;
        running.health_timeout_ms = loaded.health_timeout_ms;
        running.rise = loaded.rise;
        running.fall = loaded.fall;
        running.max_fails = loaded.max_fails;
        running.fail_timeout_secs = loaded.fail_timeout_secs;
        running.rate_limit_per_sec = loaded.rate_limit_per_sec;
        running.rate_limit_burst = loaded.rate_limit_burst;
        Ok(Reloaded {
            upstreams,
            settings,
            kept,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_named_by_their_keys() {
        let a = LbConfig::default();
        let mut b = a.clone();
        b.rate_limit_per_sec = 10;
        b.listen = "127.0.0.1:1".parse().unwrap();
        b.max_body_bytes = 1;
        assert_eq!(
            reloadable_differences(&a, &b),
            vec!["lb.rate_limit_per_sec"]
        );
        assert_eq!(
            fixed_differences(&a, &b),
            vec!["lb.listen", "lb.max_body_bytes"]
        );
    }
}
