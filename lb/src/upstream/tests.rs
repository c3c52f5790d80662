//! Tests of the upstream set: replacement, ketama shares, probes and failure accounting.

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Probed once and found healthy.
fn probed_up(t: &Upstreams, u: &Upstream) {
    t.record_probe(u, None, Duration::ZERO, 2, 2);
}

fn table(max_fails: u32) -> Upstreams {
    let t = Upstreams::new(&[addr(1)], &[addr(2)], max_fails, Duration::from_secs(30));
    for u in t.list() {
        probed_up(&t, &u);
    }
    t
}

#[test]
fn max_fails_within_the_window_eject() {
    let t = table(3);
    let (a, b) = (t.find(addr(1)).unwrap(), t.find(addr(2)).unwrap());
    assert!(!t.record_failure(&a, FailurePhase::Connect));
    assert!(!t.record_failure(&a, FailurePhase::Proxy));
    assert!(!t.is_ejected(&a));
    assert!(t.record_failure(&a, FailurePhase::Connect));
    assert!(t.is_ejected(&a));
    assert!(!t.is_ejected(&b));
    let status = t.status();
    assert_eq!(status["upstreams"][0]["ejected"], true);
    assert_eq!(status["upstreams"][0]["healthy"], false);
    assert_eq!(status["upstreams"][0]["failures_total"], 3);
    assert_eq!(status["upstreams"][1]["role"], "backup");
}

#[test]
fn coming_back_up_lifts_an_ejection() {
    let t = table(1);
    let a = t.find(addr(1)).unwrap();
    assert!(t.record_failure(&a, FailurePhase::Connect));
    for _ in 0..2 {
        t.record_probe(&a, Some("down".into()), Duration::ZERO, 2, 2);
    }
    assert!(!a.active_healthy());
    assert!(t.is_ejected(&a));
    t.record_probe(&a, None, Duration::ZERO, 2, 2);
    assert!(!a.active_healthy(), "rise is 2");
    t.record_probe(&a, None, Duration::ZERO, 2, 2);
    assert!(a.active_healthy());
    assert!(!t.is_ejected(&a));
}

#[test]
fn an_upstream_gets_no_client_before_a_probe_passed() {
    let t = Upstreams::new(&[addr(1)], &[addr(2)], 3, Duration::from_secs(30));
    assert!(t.choose(b"client", &[]).is_none(), "nothing probed yet");
    let backup = t.find(addr(2)).unwrap();
    probed_up(&t, &backup);
    assert_eq!(t.choose(b"client", &[]).unwrap().addr, addr(2));
    let primary = t.find(addr(1)).unwrap();
    t.record_probe(&primary, Some("503".into()), Duration::ZERO, 2, 2);
    assert_eq!(
        t.choose(b"client", &[]).unwrap().addr,
        addr(2),
        "failed probe"
    );
    probed_up(&t, &primary);
    assert_eq!(
        t.choose(b"client", &[]).unwrap().addr,
        addr(1),
        "first good probe"
    );
    for _ in 0..2 {
        t.record_probe(&primary, Some("503".into()), Duration::ZERO, 2, 2);
    }
    assert_eq!(t.choose(b"client", &[]).unwrap().addr, addr(2), "fall 2");
    probed_up(&t, &primary);
    assert_eq!(
        t.choose(b"client", &[]).unwrap().addr,
        addr(2),
        "seen up: rise 2"
    );
    probed_up(&t, &primary);
    assert_eq!(t.choose(b"client", &[]).unwrap().addr, addr(1));
    assert!(t.all_probed());
}

#[test]
fn draining_is_shown_and_undone() {
    let t = table(3);
    let a = t.find(addr(1)).unwrap();
    assert!(t.set_drained(&a, true));
    assert!(!t.set_drained(&a, true), "already drained");
    assert!(a.is_drained() && !t.find(addr(2)).unwrap().is_drained());
    let status = t.status();
    assert_eq!(status["upstreams"][0]["drained"], true);
    assert_eq!(
        status["upstreams"][0]["healthy"], true,
        "drained is not unhealthy"
    );
    assert!(t.set_drained(&a, false));
    assert!(!a.is_drained());
}

#[test]
fn zero_max_fails_never_ejects() {
    let t = table(0);
    let a = t.find(addr(1)).unwrap();
    for _ in 0..10 {
        assert!(!t.record_failure(&a, FailurePhase::Connect));
    }
    assert!(!t.is_ejected(&a));
}

/// The primary each of `clients` keys is sent to.
fn choices(t: &Upstreams, clients: u32) -> Vec<SocketAddr> {
    (0..clients)
        .map(|c| t.choose(&c.to_be_bytes(), &[]).unwrap().addr)
        .collect()
}

#[test]
fn replacing_keeps_what_stays_and_moves_only_the_added_share() {
    let t = Upstreams::new(
        &[addr(1), addr(2), addr(3)],
        &[addr(9)],
        3,
        Duration::from_secs(30),
    );
    for u in t.list() {
        probed_up(&t, &u);
    }
    let kept = t.find(addr(2)).unwrap();
    t.set_drained(&kept, true);
    t.record_failure(&kept, FailurePhase::Connect);
    t.set_drained(&kept, false);
    let before = choices(&t, 2000);

    let change = t
        .replace(&[addr(1), addr(2), addr(3), addr(4)], &[addr(9)])
        .unwrap();
    assert_eq!(change.added, vec![addr(4)]);
    assert!(change.removed.is_empty() && change.moved.is_empty());
    let same = t.find(addr(2)).unwrap();
    assert!(Arc::ptr_eq(&kept, &same), "the record is kept");
    assert_eq!(t.status()["upstreams"][1]["failures_total"], 1);
    assert_eq!(choices(&t, 2000), before, "the new one is not probed yet");

    probed_up(&t, &t.find(addr(4)).unwrap());
    let after = choices(&t, 2000);
    let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
    assert!(
        moved.iter().all(|(_, a)| **a == addr(4)),
        "only to the new one"
    );
    // About a quarter of the clients move; well within 10% and 40%.
    assert!((200..800).contains(&moved.len()), "{} moved", moved.len());
}

#[test]
fn discovered_upstreams_are_primaries_beside_the_configured_and_outlive_a_reload() {
    let t = Upstreams::new(&[addr(1)], &[addr(9)], 3, Duration::from_secs(30));
    let change = t.set_discovered(&[addr(1), addr(2), addr(9)]);
    assert_eq!(
        change.added,
        vec![addr(2)],
        "configured ones keep their tier"
    );
    assert_eq!(t.find(addr(9)).unwrap().role(), Role::Backup);
    assert_eq!(t.find(addr(2)).unwrap().role(), Role::Primary);
    // A reload replaces the configured tiers; the discovered ones stay, as primaries.
    let change = t.replace(&[addr(3)], &[]).unwrap();
    assert_eq!(change.added, vec![addr(3)]);
    assert!(change.removed.is_empty());
    assert_eq!(change.moved, vec![addr(9)]);
    assert!(t.find(addr(2)).is_some());
    // Members that leave the cluster leave the set.
    let change = t.set_discovered(&[addr(2)]);
    assert_eq!(change.removed, vec![addr(1), addr(9)]);
    let change = t.set_discovered(&[]);
    assert_eq!(change.removed, vec![addr(2)]);
    assert_eq!(t.list().len(), 1);
}

#[test]
fn a_removed_upstream_leaves_the_ring_but_stays_usable_by_its_holders() {
    let t = table(3);
    let held = t.choose(b"client", &[]).unwrap();
    assert_eq!(held.addr, addr(1));
    let change = t.replace(&[addr(2)], &[addr(1)]).unwrap();
    assert_eq!(change.moved, vec![addr(2), addr(1)]);
    assert_eq!(held.role(), Role::Backup);
    assert_eq!(t.choose(b"client", &[]).unwrap().addr, addr(2));

    let change = t.replace(&[addr(2)], &[]).unwrap();
    assert_eq!(change.removed, vec![addr(1)]);
    assert!(t.find(addr(1)).is_none());
    // A request in flight still records on the record it holds.
    t.record_request(&held);
    t.record_failure(&held, FailurePhase::Proxy);
    assert_eq!(held.failures_total.load(Ordering::Relaxed), 1);
    assert_eq!(t.list().len(), 1);
}

#[test]
fn an_invalid_set_is_refused_and_the_old_one_kept() {
    let t = table(3);
    assert!(t.replace(&[], &[addr(2)]).is_err());
    assert!(t.replace(&[addr(1)], &[addr(1)]).is_err());
    assert!(t.replace(&["0.0.0.0:80".parse().unwrap()], &[]).is_err());
    assert_eq!(t.list().len(), 2);
}
