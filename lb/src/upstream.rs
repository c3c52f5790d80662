//! The upstream table: the current set of upstreams (replaceable while the balancer runs:
//! [`Upstreams::replace`]), the ketama choice over it, and for each upstream its role, its
//! active health (rise / fall), its passive failure window and ejection (nginx's
//! `max_fails` / `fail_timeout`), the operator's drain, request counters and the last probe.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use pingora_load_balancing::Backend;
use pingora_load_balancing::selection::{BackendIter, BackendSelection, Consistent};
use serde_json::{Value, json};

use crate::error::LbError;
use crate::metrics;

/// Which tier an upstream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
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

/// The active health of an upstream as the probes found it: down until a probe passes
/// (never probed, or never seen up: not sent traffic), then down or up again after `fall`
/// or `rise` probes in a row.
#[derive(Debug, Default)]
struct ProbeHealth {
    healthy: bool,
    /// Seen up once: from then on `rise` good probes in a row bring it back.
    seen_up: bool,
    /// Probes in a row that disagree with `healthy`.
    streak: usize,
}

/// One upstream and everything the balancer knows about it. Shared (`Arc`) between the
/// table and the requests in flight to it: a request holds its upstream to the end even
/// when a reload removed it meanwhile.
pub struct Upstream {
    pub addr: SocketAddr,
    /// `addr` as text, the `upstream` label of the metrics.
    pub label: String,
    /// 0: primary, 1: backup (a reload may move an upstream between tiers).
    role: AtomicU8,
    /// Milliseconds since the table's epoch until which it is ejected; 0: not ejected.
    ejected_until_ms: AtomicU64,
    /// Failures within the current `fail_timeout` window.
    failures: Mutex<VecDeque<Instant>>,
    failures_total: AtomicU64,
    requests_total: AtomicU64,
    ejections_total: AtomicU64,
    /// Healthy by the active probes: false until a probe passed.
    active_healthy: AtomicBool,
    probe_health: Mutex<ProbeHealth>,
    /// Drained by the operator: no new client is sent to it.
    drained: AtomicBool,
    probe: Mutex<Option<ProbeRecord>>,
}

impl Upstream {
    fn new(addr: SocketAddr, role: Role) -> Upstream {
        Upstream {
            addr,
            label: addr.to_string(),
            role: AtomicU8::new(role as u8),
            ejected_until_ms: AtomicU64::new(0),
            failures: Mutex::new(VecDeque::new()),
            failures_total: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
            ejections_total: AtomicU64::new(0),
            active_healthy: AtomicBool::new(false),
            probe_health: Mutex::new(ProbeHealth::default()),
            drained: AtomicBool::new(false),
            probe: Mutex::new(None),
        }
    }

    pub fn role(&self) -> Role {
        if self.role.load(Ordering::Relaxed) == Role::Backup as u8 {
            Role::Backup
        } else {
            Role::Primary
        }
    }

    /// Healthy by the active probes (false until the first probe passed).
    pub fn active_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }

    /// Is it drained by the operator?
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }
}

/// One published set of upstreams: primaries then backups in configuration order, and a
/// ketama ring per tier built over their addresses.
struct UpstreamSet {
    list: Vec<Arc<Upstream>>,
    by_addr: HashMap<SocketAddr, usize>,
    primary_ring: Arc<Consistent>,
    backup_ring: Arc<Consistent>,
    /// Bound on ring steps of one selection (every point of the largest ring).
    max_ring_steps: usize,
}

impl UpstreamSet {
    fn build(list: Vec<Arc<Upstream>>) -> UpstreamSet {
        let ring = |role: Role| {
            let backends: BTreeSet<Backend> = list
                .iter()
                .filter(|u| u.role() == role)
                .map(|u| backend_of(u.addr))
                .collect();
            (backends.len(), Arc::new(Consistent::build(&backends)))
        };
        let (primaries, primary_ring) = ring(Role::Primary);
        let (backups, backup_ring) = ring(Role::Backup);
        let by_addr = list.iter().enumerate().map(|(i, u)| (u.addr, i)).collect();
        UpstreamSet {
            list,
            by_addr,
            primary_ring,
            backup_ring,
            max_ring_steps: RING_POINTS_PER_UPSTREAM * primaries.max(backups) + 1,
        }
    }

    /// The first upstream on `ring` from `key` that `accept` takes.
    fn walk(
        &self,
        ring: &Arc<Consistent>,
        key: &[u8],
        accept: &impl Fn(&Arc<Upstream>) -> bool,
    ) -> Option<Arc<Upstream>> {
        let mut iter = ring.iter(key);
        for _ in 0..self.max_ring_steps {
            let backend = iter.next()?;
            let addr = backend.addr.as_inet()?;
            let upstream = &self.list[*self.by_addr.get(addr)?];
            if accept(upstream) {
                return Some(upstream.clone());
            }
        }
        None
    }
}

/// Points per upstream on pingora's ketama ring (as nginx).
const RING_POINTS_PER_UPSTREAM: usize = 160;

/// Where the upstreams come from: the configured tiers, and the API addresses of a
/// cluster's members (primaries).
#[derive(Debug, Default)]
struct Sources {
    primaries: Vec<SocketAddr>,
    backups: Vec<SocketAddr>,
    discovered: Vec<SocketAddr>,
}

impl Sources {
    /// The configured tiers, and every discovered address that is in neither as a primary.
    fn tiers(&self) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let mut primaries = self.primaries.clone();
        for addr in &self.discovered {
            if !primaries.contains(addr) && !self.backups.contains(addr) {
                primaries.push(*addr);
            }
        }
        (primaries, self.backups.clone())
    }
}

/// What [`Upstreams::replace`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpstreamChange {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
    /// Kept, but moved to the other tier.
    pub moved: Vec<SocketAddr>,
}

impl UpstreamChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.moved.is_empty()
    }
}

/// The upstream table: the current set (replaceable at run time, [`Upstreams::replace`]),
/// the passive-failure settings, and the choice of an upstream for a client.
pub struct Upstreams {
    epoch: Instant,
    epoch_wall: SystemTime,
    set: ArcSwap<UpstreamSet>,
    /// Where the set comes from: the configured tiers and the addresses discovered from a
    /// cluster (see `discovery.rs`). Held while a set is installed: replacements one at a
    /// time (readers never wait for it).
    sources: Mutex<Sources>,
    /// Woken when upstreams are added, so the probes see them at once.
    added: tokio::sync::Notify,
    max_fails: AtomicU32,
    fail_timeout_ms: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Checks a tier pair: at least one primary, no address twice, concrete addresses.
pub fn check_tiers(primaries: &[SocketAddr], backups: &[SocketAddr]) -> Result<(), String> {
    if primaries.is_empty() {
        return Err("lb.primaries needs at least one address".to_owned());
    }
    let mut seen = HashSet::new();
    for addr in primaries.iter().chain(backups) {
        if !seen.insert(*addr) {
            return Err(format!("upstream {addr} is listed twice"));
        }
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(format!("upstream {addr} needs a concrete address and port"));
        }
    }
    Ok(())
}

impl Upstreams {
    /// A table over `primaries` and `backups`; every upstream starts unprobed, so it is not
    /// sent traffic before a probe passed.
    pub fn new(
        primaries: &[SocketAddr],
        backups: &[SocketAddr],
        max_fails: u32,
        fail_timeout: Duration,
    ) -> Upstreams {
        let upstreams = Upstreams {
            epoch: Instant::now(),
            epoch_wall: SystemTime::now(),
            set: ArcSwap::from_pointee(UpstreamSet::build(Vec::new())),
            sources: Mutex::new(Sources::default()),
            added: tokio::sync::Notify::new(),
            max_fails: AtomicU32::new(0),
            fail_timeout_ms: AtomicU64::new(0),
        };
        upstreams.set_passive(max_fails, fail_timeout);
        upstreams.update(|sources| {
            sources.primaries = primaries.to_vec();
            sources.backups = backups.to_vec();
        });
        upstreams
    }

    /// Replaces the set of upstreams: an address already known keeps its record (health,
    /// failures, ejection, drain, counters), even across tiers; a new one starts unprobed
    /// (no traffic until a probe passes); a removed one leaves the rings at once while
    /// requests in flight to it finish (they hold it), and connections kept to it are
    /// dropped at their next request. Each tier's ring is built over its addresses alone,
    /// so an added upstream takes only its share of clients (ketama). Upstreams discovered
    /// from a cluster stay, as primaries, unless configured.
    pub fn replace(
        &self,
        primaries: &[SocketAddr],
        backups: &[SocketAddr],
    ) -> Result<UpstreamChange, LbError> {
        check_tiers(primaries, backups).map_err(LbError::Invalid)?;
        Ok(self.update(|sources| {
            sources.primaries = primaries.to_vec();
            sources.backups = backups.to_vec();
        }))
    }

    /// Replaces the upstreams discovered from a cluster: they are primaries beside the
    /// configured ones (an address also configured keeps its configured tier), with the
    /// same rules as [`Upstreams::replace`].
    pub fn set_discovered(&self, discovered: &[SocketAddr]) -> UpstreamChange {
        self.update(|sources| sources.discovered = discovered.to_vec())
    }

    /// Changes the sources and installs the set they make.
    fn update(&self, change: impl FnOnce(&mut Sources)) -> UpstreamChange {
        let mut sources = lock(&self.sources);
        change(&mut sources);
        let (primaries, backups) = sources.tiers();
        self.install(&primaries, &backups)
    }

    /// Installs a set; called with `sources` held.
    fn install(&self, primaries: &[SocketAddr], backups: &[SocketAddr]) -> UpstreamChange {
        let old = self.set.load_full();
        let mut change = UpstreamChange::default();
        let tiers = primaries
            .iter()
            .map(|a| (*a, Role::Primary))
            .chain(backups.iter().map(|a| (*a, Role::Backup)));
        let list: Vec<Arc<Upstream>> = tiers
            .map(|(addr, role)| match old.by_addr.get(&addr) {
                Some(&i) => {
                    let kept = old.list[i].clone();
                    if kept.role.swap(role as u8, Ordering::Relaxed) != role as u8 {
                        change.moved.push(addr);
                    }
                    kept
                }
                None => {
                    change.added.push(addr);
                    Arc::new(Upstream::new(addr, role))
                }
            })
            .collect();
        let new = UpstreamSet::build(list);
        for upstream in &old.list {
            if !new.by_addr.contains_key(&upstream.addr) {
                change.removed.push(upstream.addr);
                metrics::upstream_up(&upstream.label, upstream.role().as_str(), false);
            }
        }
        self.set.store(Arc::new(new));
        for upstream in self.set.load().list.iter() {
            self.publish_availability(upstream);
        }
        if !change.added.is_empty() {
            self.added.notify_one();
        }
        change
    }

    /// Sets the passive-failure settings (`max_fails` within `fail_timeout`).
    pub fn set_passive(&self, max_fails: u32, fail_timeout: Duration) {
        self.max_fails.store(max_fails, Ordering::Relaxed);
        let ms = u64::try_from(fail_timeout.as_millis()).unwrap_or(u64::MAX);
        self.fail_timeout_ms.store(ms, Ordering::Relaxed);
    }

    fn fail_timeout(&self) -> Duration {
        Duration::from_millis(self.fail_timeout_ms.load(Ordering::Relaxed))
    }

    /// Every upstream of the current set, primaries first, in configuration order.
    pub fn list(&self) -> Vec<Arc<Upstream>> {
        self.set.load().list.clone()
    }

    /// The upstream at `addr` in the current set.
    pub fn find(&self, addr: SocketAddr) -> Option<Arc<Upstream>> {
        let set = self.set.load();
        set.by_addr.get(&addr).map(|&i| set.list[i].clone())
    }

    /// Waits until upstreams are added (the probes then run at once).
    pub async fn added(&self) {
        self.added.notified().await;
    }

    /// The upstream for `key`: the first available primary on its ring, else the first
    /// available backup. Available: healthy by the probes, not ejected, not drained, not in
    /// `exclude`. A drained upstream is skipped on the ring as a down one is: only its
    /// clients move.
    pub fn choose(&self, key: &[u8], exclude: &[Arc<Upstream>]) -> Option<Arc<Upstream>> {
        let set = self.set.load();
        let accept = |u: &Arc<Upstream>| {
            u.active_healthy()
                && !u.is_drained()
                && !self.is_ejected(u)
                && !exclude.iter().any(|e| Arc::ptr_eq(e, u))
        };
        set.walk(&set.primary_ring, key, &accept)
            .or_else(|| set.walk(&set.backup_ring, key, &accept))
    }

    /// Drains the upstream (no new client goes to it; requests in flight finish, and the
    /// clients on its kept connections move at their next request) or brings it back.
    /// Returns whether that changed anything.
    pub fn set_drained(&self, upstream: &Upstream, drained: bool) -> bool {
        let changed = upstream.drained.swap(drained, Ordering::Relaxed) != drained;
        if changed {
            let what = if drained { "drained" } else { "undrained" };
            tracing::info!(target: "soundwave::lb", upstream = %upstream.addr, role = upstream.role().as_str(), "upstream {what} by the operator");
            self.publish_availability(upstream);
        }
        changed
    }

    fn now_ms(&self) -> u64 {
        // +1: 0 stands for "not ejected".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Is the upstream passively ejected right now?
    pub fn is_ejected(&self, upstream: &Upstream) -> bool {
        let until = upstream.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// Counts a request that was sent (or tried) to the upstream.
    pub fn record_request(&self, upstream: &Upstream) {
        upstream.requests_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure; `max_fails` of them within `fail_timeout` eject the upstream for
    /// `fail_timeout`. Returns whether this failure ejected it.
    pub fn record_failure(&self, upstream: &Upstream, phase: FailurePhase) -> bool {
        upstream.failures_total.fetch_add(1, Ordering::Relaxed);
        metrics::upstream_failure(&upstream.label, phase.as_str());
        let max_fails = self.max_fails.load(Ordering::Relaxed);
        if max_fails == 0 {
            return false;
        }
        let fail_timeout = self.fail_timeout();
        let now = Instant::now();
        let mut window = lock(&upstream.failures);
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= fail_timeout)
        {
            window.pop_front();
        }
        window.push_back(now);
        if window.len() < max_fails as usize || self.is_ejected(upstream) {
            return false;
        }
        let until = self.now_ms() + fail_timeout.as_millis() as u64;
        upstream.ejected_until_ms.store(until, Ordering::Relaxed);
        upstream.ejections_total.fetch_add(1, Ordering::Relaxed);
        drop(window);
        metrics::ejection(&upstream.label);
        tracing::warn!(
            target: "soundwave::lb",
            upstream = %upstream.addr,
            role = upstream.role().as_str(),
            max_fails,
            fail_timeout_secs = fail_timeout.as_secs(),
            "upstream ejected after repeated failures"
        );
        self.publish_availability(upstream);
        true
    }

    /// Records the result of an active probe and counts it towards `rise` or `fall`: an
    /// upstream never seen up comes up at its first good probe; after that, `fall` bad
    /// probes in a row take it down and `rise` good ones bring it back. Coming up also
    /// lifts a passive ejection: the upstream was seen down and recovered.
    pub fn record_probe(
        &self,
        upstream: &Upstream,
        error: Option<String>,
        latency: Duration,
        rise: usize,
        fall: usize,
    ) {
        let ok = error.is_none();
        let flipped = {
            let mut health = lock(&upstream.probe_health);
            if health.healthy == ok {
                health.streak = 0;
                false
            } else {
                health.streak += 1;
                let threshold = match (ok, health.seen_up) {
                    (true, false) => 1,
                    (true, true) => rise,
                    (false, _) => fall,
                };
                if health.streak >= threshold.max(1) {
                    health.healthy = ok;
                    health.seen_up |= ok;
                    health.streak = 0;
                    true
                } else {
                    false
                }
            }
        };
        let why = error.clone();
        *lock(&upstream.probe) = Some(ProbeRecord {
            at: SystemTime::now(),
            ok,
            error,
            latency,
        });
        if flipped {
            upstream.active_healthy.store(ok, Ordering::Relaxed);
            if ok {
                upstream.ejected_until_ms.store(0, Ordering::Relaxed);
                lock(&upstream.failures).clear();
                tracing::info!(target: "soundwave::lb", upstream = %upstream.addr, role = upstream.role().as_str(), "upstream is up (active probes)");
            } else {
                tracing::warn!(target: "soundwave::lb", upstream = %upstream.addr, role = upstream.role().as_str(), error = why.as_deref().unwrap_or(""), "upstream is down (active probes)");
            }
        }
        // Also notices an ejection that ran out since the last probe.
        self.publish_availability(upstream);
    }

    /// Has every upstream been probed at least once?
    pub fn all_probed(&self) -> bool {
        self.set
            .load()
            .list
            .iter()
            .all(|u| lock(&u.probe).is_some())
    }

    fn publish_availability(&self, upstream: &Upstream) {
        let up = upstream.active_healthy() && !self.is_ejected(upstream) && !upstream.is_drained();
        metrics::upstream_up(&upstream.label, upstream.role().as_str(), up);
    }

    /// `GET /_lb/status`: each upstream with its role, health, drain, failures and last
    /// probe.
    pub fn status(&self) -> Value {
        let now_ms = self.now_ms();
        let fail_timeout = self.fail_timeout();
        let upstreams: Vec<Value> = self
            .list()
            .iter()
            .map(|u| {
                let active_healthy = u.active_healthy();
                let until = u.ejected_until_ms.load(Ordering::Relaxed);
                let ejected = until != 0 && now_ms < until;
                let recent_failures = {
                    let now = Instant::now();
                    lock(&u.failures)
                        .iter()
                        .filter(|t| now.duration_since(**t) < fail_timeout)
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
                    "role": u.role().as_str(),
                    "healthy": active_healthy && !ejected,
                    "active_healthy": active_healthy,
                    "ejected": ejected,
                    "ejected_until": ejected_until,
                    "drained": u.is_drained(),
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
mod tests;
