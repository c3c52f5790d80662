//! The upstream table: each upstream's role, its passive failure window and ejection (nginx's
//! `max_fails` / `fail_timeout`), request counters and the last active probe.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use pingora_load_balancing::Backend;
use serde_json::{Value, json};

use crate::metrics;

/// Which tier an upstream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Chosen by consistent hashing of the client IP.
    Primary,
    /// Used only while no primary is available.
    Backup,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }
}

/// Where a request failed on an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePhase {
    /// The connection could not be established: the request surely never reached it.
    Connect,
    /// The connection broke or timed out while the request was in flight.
    Proxy,
}

impl FailurePhase {
    fn as_str(self) -> &'static str {
        match self {
            FailurePhase::Connect => "connect",
            FailurePhase::Proxy => "proxy",
        }
    }
}

/// The last active probe of an upstream.
#[derive(Debug, Clone)]
struct ProbeRecord {
    at: SystemTime,
    ok: bool,
    error: Option<String>,
    latency: Duration,
}

/// One upstream and everything the balancer knows about it.
pub struct Upstream {
    pub addr: SocketAddr,
    /// `addr` as text, the `upstream` label of the metrics.
    pub label: String,
    pub role: Role,
    /// The pingora backend of this address (to ask its load balancer for active health).
    pub backend: Backend,
    /// Milliseconds since the table's epoch until which it is ejected; 0: not ejected.
    ejected_until_ms: AtomicU64,
    /// Failures within the current `fail_timeout` window.
    failures: Mutex<VecDeque<Instant>>,
    failures_total: AtomicU64,
    requests_total: AtomicU64,
    ejections_total: AtomicU64,
    active_healthy: AtomicBool,
    /// Drained by the operator: no new client is sent to it.
    drained: AtomicBool,
    probe: Mutex<Option<ProbeRecord>>,
}

/// Every upstream, primaries first, in configuration order.
pub struct Upstreams {
    epoch: Instant,
    epoch_wall: SystemTime,
    list: Vec<Upstream>,
    max_fails: u32,
    fail_timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Upstreams {
    pub fn new(
        primaries: &[SocketAddr],
        backups: &[SocketAddr],
        max_fails: u32,
        fail_timeout: Duration,
    ) -> Upstreams {
        let tiers = primaries
            .iter()
            .map(|a| (*a, Role::Primary))
            .chain(backups.iter().map(|a| (*a, Role::Backup)));
        let list = tiers
            .map(|(addr, role)| Upstream {
                addr,
                label: addr.to_string(),
                role,
                backend: backend_of(addr),
                ejected_until_ms: AtomicU64::new(0),
                failures: Mutex::new(VecDeque::new()),
                failures_total: AtomicU64::new(0),
                requests_total: AtomicU64::new(0),
                ejections_total: AtomicU64::new(0),
                active_healthy: AtomicBool::new(true),
                drained: AtomicBool::new(false),
                probe: Mutex::new(None),
            })
            .collect();
        let upstreams = Upstreams {
            epoch: Instant::now(),
            epoch_wall: SystemTime::now(),
            list,
            max_fails,
            fail_timeout,
        };
        for index in 0..upstreams.list.len() {
            upstreams.publish_availability(index);
        }
        upstreams
    }

    pub fn get(&self, index: usize) -> &Upstream {
        &self.list[index]
    }

    /// The index of the upstream a pingora backend stands for.
    pub fn index_of(&self, backend: &Backend) -> Option<usize> {
        self.position(*backend.addr.as_inet()?)
    }

    /// The index of the upstream at `addr`.
    pub fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.list.iter().position(|u| u.addr == addr)
    }

    /// Is the upstream drained by the operator?
    pub fn is_drained(&self, index: usize) -> bool {
        self.list[index].drained.load(Ordering::Relaxed)
    }

    /// Drains the upstream (no new client goes to it; requests in flight finish, and the
    /// clients on its kept connections move at their next request) or brings it back.
    /// Returns whether that changed anything.
    pub fn set_drained(&self, index: usize, drained: bool) -> bool {
        let upstream = &self.list[index];
        let changed = upstream.drained.swap(drained, Ordering::Relaxed) != drained;
        if changed {
            let what = if drained { "drained" } else { "undrained" };
            tracing::info!(target: "soundwave::lb", upstream = %upstream.addr, role = upstream.role.as_str(), "upstream {what} by the operator");
            self.publish_availability(index);
        }
        changed
    }

    fn now_ms(&self) -> u64 {
        // +1: 0 stands for "not ejected".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Is the upstream passively ejected right now?
    pub fn is_ejected(&self, index: usize) -> bool {
        let until = self.list[index].ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// Counts a request that was sent (or tried) to the upstream.
    pub fn record_request(&self, index: usize) {
        self.list[index]
            .requests_total
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure; `max_fails` of them within `fail_timeout` eject the upstream for
    /// `fail_timeout`. Returns whether this failure ejected it.
    pub fn record_failure(&self, index: usize, phase: FailurePhase) -> bool {
        let upstream = &self.list[index];
        upstream.failures_total.fetch_add(1, Ordering::Relaxed);
        metrics::upstream_failure(&upstream.label, phase.as_str());
        if self.max_fails == 0 {
            return false;
        }
        let now = Instant::now();
        let mut window = lock(&upstream.failures);
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.fail_timeout)
        {
            window.pop_front();
        }
        window.push_back(now);
        if window.len() < self.max_fails as usize || self.is_ejected(index) {
            return false;
        }
        let until = self.now_ms() + self.fail_timeout.as_millis() as u64;
        upstream.ejected_until_ms.store(until, Ordering::Relaxed);
        upstream.ejections_total.fetch_add(1, Ordering::Relaxed);
        drop(window);
        metrics::ejection(&upstream.label);
        tracing::warn!(
            target: "soundwave::lb",
            upstream = %upstream.addr,
            role = upstream.role.as_str(),
            max_fails = self.max_fails,
            fail_timeout_secs = self.fail_timeout.as_secs(),
            "upstream ejected after repeated failures"
        );
        self.publish_availability(index);
        true
    }

    /// Records the result of an active probe.
    pub fn record_probe(&self, backend: &Backend, error: Option<String>, latency: Duration) {
        let Some(index) = self.index_of(backend) else {
            return;
        };
        *lock(&self.list[index].probe) = Some(ProbeRecord {
            at: SystemTime::now(),
            ok: error.is_none(),
            error,
            latency,
        });
        // Also notices an ejection that ran out since the last probe.
        self.publish_availability(index);
    }

    /// The active checker flipped the upstream's health. Coming back up (after `rise`
    /// good probes) also lifts a passive ejection: the upstream was seen down and recovered.
    pub fn active_health_changed(&self, backend: &Backend, healthy: bool) {
        let Some(index) = self.index_of(backend) else {
            return;
        };
        let upstream = &self.list[index];
        upstream.active_healthy.store(healthy, Ordering::Relaxed);
        if healthy {
            upstream.ejected_until_ms.store(0, Ordering::Relaxed);
            lock(&upstream.failures).clear();
            tracing::info!(target: "soundwave::lb", upstream = %upstream.addr, role = upstream.role.as_str(), "upstream is up (active probes)");
        } else {
            tracing::warn!(target: "soundwave::lb", upstream = %upstream.addr, role = upstream.role.as_str(), "upstream is down (active probes)");
        }
        self.publish_availability(index);
    }

    /// Has every upstream been probed at least once?
    pub fn all_probed(&self) -> bool {
        self.list.iter().all(|u| lock(&u.probe).is_some())
    }

    fn publish_availability(&self, index: usize) {
        let upstream = &self.list[index];
        let up = upstream.active_healthy.load(Ordering::Relaxed)
            && !self.is_ejected(index)
            && !self.is_drained(index);
        metrics::upstream_up(&upstream.label, upstream.role.as_str(), up);
    }

    /// `GET /_lb/status`: each upstream with its role, health, drain, failures and last
    /// probe.
    /// `active` answers the active health of an upstream (from its pingora load balancer).
    pub fn status(&self, active: impl Fn(&Upstream) -> bool) -> Value {
        let now_ms = self.now_ms();
        let upstreams: Vec<Value> = self
            .list
            .iter()
            .map(|u| {
                let active_healthy = active(u);
                let until = u.ejected_until_ms.load(Ordering::Relaxed);
                let ejected = until != 0 && now_ms < until;
                let recent_failures = {
                    let now = Instant::now();
                    lock(&u.failures)
                        .iter()
                        .filter(|t| now.duration_since(**t) < self.fail_timeout)
                        .count()
                };
                let probe = lock(&u.probe).clone();
                let last_probe = probe.map(|p| {
                    json!({
                        "at": rfc3339(p.at),
                        "ok": p.ok,
                        "error": p.error,
                        "latency_ms": (p.latency.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
                    })
                });
                let ejected_until = ejected.then(|| {
                    rfc3339(self.epoch_wall + Duration::from_millis(until.saturating_sub(1)))
                });
                json!({
                    "address": u.label,
                    "role": u.role.as_str(),
                    "healthy": active_healthy && !ejected,
                    "active_healthy": active_healthy,
                    "ejected": ejected,
                    "ejected_until": ejected_until,
                    "drained": u.drained.load(Ordering::Relaxed),
                    "recent_failures": recent_failures,
                    "failures_total": u.failures_total.load(Ordering::Relaxed),
                    "ejections_total": u.ejections_total.load(Ordering::Relaxed),
                    "requests_total": u.requests_total.load(Ordering::Relaxed),
                    "last_probe": last_probe,
                })
            })
            .collect();
        json!({ "upstreams": upstreams })
    }
}

/// The pingora backend for an address (weight 1).
pub fn backend_of(addr: SocketAddr) -> Backend {
    Backend {
        addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(addr),
        weight: 1,
        ext: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max_fails: u32) -> Upstreams {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        Upstreams::new(&[a], &[b], max_fails, Duration::from_secs(30))
    }

    #[test]
    fn max_fails_within_the_window_eject() {
        let t = table(3);
        assert!(!t.record_failure(0, FailurePhase::Connect));
        assert!(!t.record_failure(0, FailurePhase::Proxy));
        assert!(!t.is_ejected(0));
        assert!(t.record_failure(0, FailurePhase::Connect));
        assert!(t.is_ejected(0));
        assert!(!t.is_ejected(1));
        let status = t.status(|_| true);
        assert_eq!(status["upstreams"][0]["ejected"], true);
        assert_eq!(status["upstreams"][0]["healthy"], false);
        assert_eq!(status["upstreams"][0]["failures_total"], 3);
        assert_eq!(status["upstreams"][1]["role"], "backup");
    }

    #[test]
    fn coming_back_up_lifts_an_ejection() {
        let t = table(1);
        assert!(t.record_failure(0, FailurePhase::Connect));
        let backend = t.get(0).backend.clone();
        t.active_health_changed(&backend, false);
        assert!(t.is_ejected(0));
        t.active_health_changed(&backend, true);
        assert!(!t.is_ejected(0));
    }

    #[test]
    fn draining_is_shown_and_undone() {
        let t = table(3);
        let addr = t.get(0).addr;
        assert_eq!(t.position(addr), Some(0));
        assert!(t.set_drained(0, true));
        assert!(!t.set_drained(0, true), "already drained");
        assert!(t.is_drained(0) && !t.is_drained(1));
        let status = t.status(|_| true);
        assert_eq!(status["upstreams"][0]["drained"], true);
        assert_eq!(
            status["upstreams"][0]["healthy"], true,
            "drained is not unhealthy"
        );
        assert!(t.set_drained(0, false));
        assert!(!t.is_drained(0));
    }

    #[test]
    fn zero_max_fails_never_ejects() {
        let t = table(0);
        for _ in 0..10 {
            assert!(!t.record_failure(0, FailurePhase::Connect));
        }
        assert!(!t.is_ejected(0));
    }
}
