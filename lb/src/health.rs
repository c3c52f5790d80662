//! Active health checks: every `health_interval_ms`, pingora's [`HttpHealthCheck`] sends
//! `GET /health/` to every upstream of the current set at once, and each result is
//! recorded in the upstream table ([`Upstreams::record_probe`]: rise / fall, the last
//! probe). The settings (path, interval, timeout, rise, fall) can be replaced while it
//! runs ([`Prober::reconfigure`]); upstreams added to the table are probed at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};

use crate::config::LbConfig;
use crate::error::LbError;
use crate::upstream::{Upstreams, backend_of};

/// The probe and how often and how strictly it runs.
struct ProbeSettings {
    check: HttpHealthCheck,
    interval: Duration,
    rise: usize,
    fall: usize,
}

impl ProbeSettings {
    fn new(config: &LbConfig) -> Result<ProbeSettings, LbError> {
        let mut check = HttpHealthCheck::new("localhost", false);
        let mut req = RequestHeader::build("GET", config.health_path.as_bytes(), None)
            .map_err(|e| LbError::Invalid(format!("lb.health_path: {e}")))?;
        req.append_header("Host", "localhost")
            .and_then(|_| req.append_header("User-Agent", "soundwave-lb-health"))
            .map_err(|e| LbError::Invalid(format!("health probe request: {e}")))?;
        check.req = req;
        let timeout = Some(Duration::from_millis(config.health_timeout_ms));
        check.peer_template.options.connection_timeout = timeout;
        check.peer_template.options.read_timeout = timeout;
        check.peer_template.options.write_timeout = timeout;
        Ok(ProbeSettings {
            check,
            interval: Duration::from_millis(config.health_interval_ms),
            rise: config.rise,
            fall: config.fall,
        })
    }
}

/// The background service that probes every upstream.
pub struct Prober {
    upstreams: Arc<Upstreams>,
    settings: ArcSwap<ProbeSettings>,
    /// Woken by `reconfigure`, so a new interval takes effect at once.
    reconfigured: tokio::sync::Notify,
}

impl Prober {
    pub fn new(config: &LbConfig, upstreams: Arc<Upstreams>) -> Result<Prober, LbError> {
        Ok(Prober {
            upstreams,
            settings: ArcSwap::from_pointee(ProbeSettings::new(config)?),
            reconfigured: tokio::sync::Notify::new(),
        })
    }

    /// Takes the probe settings of `config` from the next round on (each upstream's health
    /// so far is kept).
    pub fn reconfigure(&self, config: &LbConfig) -> Result<(), LbError> {
        self.settings.store(Arc::new(ProbeSettings::new(config)?));
        self.reconfigured.notify_one();
        Ok(())
    }

    /// Probes every upstream of the current set at once and records the results.
    async fn round(&self) {
        let settings = self.settings.load_full();
        let mut probes = tokio::task::JoinSet::new();
        for upstream in self.upstreams.list() {
            let settings = settings.clone();
            let upstreams = self.upstreams.clone();
            probes.spawn(async move {
                let started = Instant::now();
                let result = settings.check.check(&backend_of(upstream.addr)).await;
                let error = result.err().map(|e| e.to_string());
                upstreams.record_probe(
                    &upstream,
                    error,
                    started.elapsed(),
                    settings.rise,
                    settings.fall,
                );
            });
        }
        while probes.join_next().await.is_some() {}
    }
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = self.round() => {}
            }
            let interval = self.settings.load().interval;
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(interval) => {}
                _ = self.upstreams.added() => {}
                _ = self.reconfigured.notified() => {}
            }
        }
    }
}
