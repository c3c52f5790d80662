//! Active health checks: pingora's [`HttpHealthCheck`] probing `GET /health/`, wrapped so
//! that every probe result and every health flip is recorded in the upstream table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_http::RequestHeader;
use pingora_load_balancing::Backend;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};

use crate::config::LbConfig;
use crate::error::LbError;
use crate::upstream::Upstreams;

/// [`HttpHealthCheck`] plus bookkeeping in [`Upstreams`].
pub struct RecordingCheck {
    inner: HttpHealthCheck,
    upstreams: Arc<Upstreams>,
}

impl RecordingCheck {
    pub fn new(config: &LbConfig, upstreams: Arc<Upstreams>) -> Result<RecordingCheck, LbError> {
        let mut inner = HttpHealthCheck::new("localhost", false);
        let mut req = RequestHeader::build("GET", config.health_path.as_bytes(), None)
            .map_err(|e| LbError::Invalid(format!("lb.health_path: {e}")))?;
        req.append_header("Host", "localhost")
            .and_then(|_| req.append_header("User-Agent", "soundwave-lb-health"))
            .map_err(|e| LbError::Invalid(format!("health probe request: {e}")))?;
        inner.req = req;
        inner.consecutive_success = config.rise;
        inner.consecutive_failure = config.fall;
        let timeout = Some(Duration::from_millis(config.health_timeout_ms));
        inner.peer_template.options.connection_timeout = timeout;
        inner.peer_template.options.read_timeout = timeout;
        inner.peer_template.options.write_timeout = timeout;
        Ok(RecordingCheck { inner, upstreams })
    }
}

#[async_trait]
impl HealthCheck for RecordingCheck {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        let started = Instant::now();
        let result = self.inner.check(target).await;
        let error = result.as_ref().err().map(|e| e.to_string());
        self.upstreams
            .record_probe(target, error, started.elapsed());
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.upstreams.active_health_changed(target, healthy);
    }

    fn backend_summary(&self, target: &Backend) -> String {
        target.addr.to_string()
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}
