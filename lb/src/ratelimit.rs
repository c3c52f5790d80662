//! Requests per second per client IP, with a burst: a token bucket kept as one number per
//! client (GCRA, the "theoretical arrival time": the bucket is full again at `tat`).
//!
//! Why not `pingora-limits`: its `Rate` counts requests per fixed interval in a count-min
//! sketch, which has no burst and can count two clients as one (a collision limits an
//! innocent client); its `Inflight` bounds concurrency, not rate. Here the table is exact,
//! bounded and allocated once: 16 shards, each a map made with room for all it may hold
//! (so an insert never reallocates), locked only for one lookup and one store. A client
//! whose bucket is full again (`tat` passed) is the same as one never seen, so full shards
//! forget those; a shard full of clients that are all still limited lets a new client in
//! untracked (its connections are still bounded by `max_connections_per_ip`) rather than
//! forgetting a limited one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shards of the table: locks taken by different clients rarely meet.
const SHARDS: usize = 16;
/// Clients tracked at most per shard (65,536 in all: a few MiB).
const CLIENTS_PER_SHARD: usize = 4096;

/// The decision on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit: a token is due in this many whole seconds (at least 1).
    Limited {
        retry_after_secs: u64,
    },
}

struct Shard {
    /// Nanoseconds since `epoch` at which each client's bucket is full again.
    tat: HashMap<IpAddr, u64>,
    /// Before this, a full shard is not swept again (nothing in it can have expired).
    next_sweep: u64,
}

/// The per-IP token buckets of the balancer.
pub struct RateLimiter {
    epoch: Instant,
    /// Nanoseconds per token.
    interval: u64,
    /// Nanoseconds a full bucket is worth (`burst` tokens).
    tolerance: u64,
    shards: Box<[Mutex<Shard>]>,
}

impl RateLimiter {
    /// `per_sec` tokens a second, at most `burst` at once; `None` when `per_sec` is 0 (off).
    pub fn new(per_sec: u32, burst: u32) -> Option<RateLimiter> {
        if per_sec == 0 {
            return None;
        }
        let interval = 1_000_000_000 / u64::from(per_sec);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    tat: HashMap::with_capacity(CLIENTS_PER_SHARD),
                    next_sweep: 0,
                })
            })
            .collect();
        Some(RateLimiter {
            epoch: Instant::now(),
            interval: interval.max(1),
            tolerance: interval.max(1) * u64::from(burst.max(1)),
            shards,
        })
    }

    /// Takes a token for `ip`, if it has one.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.check_at(ip, now)
    }

    fn check_at(&self, ip: IpAddr, now: u64) -> Verdict {
        let mut shard = self.shards[shard_of(ip)]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tat = shard.tat.get(&ip).copied().unwrap_or(0).max(now);
        let next = tat + self.interval;
        if next - now > self.tolerance {
            let wait = Duration::from_nanos(next - now - self.tolerance);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Verdict::Limited {
                retry_after_secs: secs.max(1),
            };
        }
        if let Some(slot) = shard.tat.get_mut(&ip) {
            *slot = next;
            return Verdict::Allowed;
        }
        if shard.tat.len() >= CLIENTS_PER_SHARD {
            if now < shard.next_sweep {
                return Verdict::Allowed;
            }
            shard.tat.retain(|_, tat| *tat > now);
            // Whatever is left is full again within one bucket's worth of time.
            shard.next_sweep = now + self.tolerance;
            if shard.tat.len() >= CLIENTS_PER_SHARD {
                return Verdict::Allowed;
            }
        }
        shard.tat.insert(ip, next);
        Verdict::Allowed
    }
}

/// The shard of an address: its last octets, which differ most between clients.
fn shard_of(ip: IpAddr) -> usize {
    let low = match ip {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            // The /64 prefix's end and the interface id's end both vary.
            u32::from_be_bytes([o[7], o[13], o[14], o[15]])
        }
    };
    (low ^ (low >> 8) ^ (low >> 16)) as usize % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_burst_then_one_token_per_interval() {
        let limiter = RateLimiter::new(2, 3).expect("on");
        let start = 10 * SECOND;
        for _ in 0..3 {
            assert_eq!(limiter.check_at(ip(1), start), Verdict::Allowed);
        }
        assert_eq!(
            limiter.check_at(ip(1), start),
            Verdict::Limited {
                retry_after_secs: 1
            }
        );
        // Another client has its own bucket.
        assert_eq!(limiter.check_at(ip(2), start), Verdict::Allowed);
        // Half a second later, one token is back, and only one.
        assert_eq!(
            limiter.check_at(ip(1), start + SECOND / 2),
            Verdict::Allowed
        );
        assert!(matches!(
            limiter.check_at(ip(1), start + SECOND / 2),
            Verdict::Limited { .. }
        ));
        // Long after, the whole burst is back.
        for _ in 0..3 {
            assert_eq!(
                limiter.check_at(ip(1), start + 60 * SECOND),
                Verdict::Allowed
            );
        }
    }

    #[test]
    fn retry_after_counts_whole_seconds_to_the_next_token() {
        let limiter = RateLimiter::new(1, 1).expect("on");
        assert_eq!(limiter.check_at(ip(1), SECOND), Verdict::Allowed);
        assert_eq!(
            limiter.check_at(ip(1), SECOND + SECOND / 10),
            Verdict::Limited {
                retry_after_secs: 1
            }
        );
        let slow = RateLimiter::new(1, 1).expect("on");
        let mut limited = None;
        for _ in 0..4 {
            if let Verdict::Limited { retry_after_secs } = slow.check_at(ip(3), SECOND) {
                limited = Some(retry_after_secs);
            }
        }
        // Refused requests take no token: the next one is still one second away.
        assert_eq!(limited, Some(1));
    }

    #[test]
    fn zero_is_off() {
        assert!(RateLimiter::new(0, 10).is_none());
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_full_buckets() {
        let limiter = RateLimiter::new(1, 1).expect("on");
        let now = SECOND;
        let clients =
            (0..(SHARDS * CLIENTS_PER_SHARD * 2) as u32).map(|n| IpAddr::from(n.to_be_bytes()));
        for client in clients {
            assert_eq!(limiter.check_at(client, now), Verdict::Allowed);
        }
        let tracked: usize = limiter
            .shards
            .iter()
            .map(|s| s.lock().unwrap().tat.len())
            .sum();
        assert!(tracked <= SHARDS * CLIENTS_PER_SHARD, "{tracked}");
        // Two seconds on, every bucket is full again: new clients are tracked and limited.
        let later = now + 2 * SECOND;
        let newcomer = IpAddr::from([192, 168, 1, 1]);
        assert_eq!(limiter.check_at(newcomer, later), Verdict::Allowed);
        assert!(matches!(
            limiter.check_at(newcomer, later),
            Verdict::Limited { .. }
        ));
    }
}
