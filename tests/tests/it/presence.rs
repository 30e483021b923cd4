//! Presence (issue 11): online at login, offline with a last-seen time when the last
//! device goes, away / dnd / text, the most present device wins, only accepted
//! contacts hear of it or may ask, and a flapping device is coalesced to one notice a
//! second. Users on two shards; what runs through the shard loop on both drivers.

use std::time::{Duration, Instant};

use ringrouter_client::{Client, Event, Presence, PresenceStatus, Status};
use ringrouter_tests::{users_on_shards, Driver, RouterProc, T};

/// The next presence notice (other events skipped).
fn presence(c: &mut Client, who: &str) -> Presence {
    let until = Instant::now() + T;
    while Instant::now() < until {
        match c.next_event(Some(T)) {
            Ok(Some(Event::Presence(p))) => return p,
            Ok(Some(_)) => {}
            other => panic!("{who}: expected a presence notice, got {other:?}"),
        }
    }
    panic!("{who}: no presence notice");
}

/// Every presence notice for `d`.
fn notices(c: &mut Client, d: Duration) -> Vec<Presence> {
    let until = Instant::now() + d;
    let mut out = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        match c.next_event(Some(left)).unwrap() {
            Some(Event::Presence(p)) => out.push(p),
            Some(_) => {}
            None => return out,
        }
    }
}

/// Two users on different shards who are accepted contacts, both logged in.
fn contacts(r: &RouterProc, prefix: &str) -> (String, String, Client, Client) {
    let u = users_on_shards(prefix, 2);
    let (a, b) = (u[0].clone(), u[1].clone());
    let mut ca = r.client(&a);
    let mut cb = r.client(&b);
    ca.contact_request(&b).unwrap();
    cb.contact_accept(&a).unwrap();
    // New contacts are sent each other's presence.
    assert_eq!(presence(&mut ca, "alice").status, PresenceStatus::Online);
    assert_eq!(presence(&mut cb, "bob").status, PresenceStatus::Online);
    (a, b, ca, cb)
}

fn online_then_offline(driver: Driver) {
    let r = RouterProc::start_with(&["--shards", "2"], driver);
    let (a, _b, ca, mut cb) = contacts(&r, "pr");
    drop(ca);
    let p = presence(&mut cb, "bob");
    assert_eq!(
        (p.user.as_str(), p.status),
        (a.as_str(), PresenceStatus::Offline)
    );
    assert!(p.last_seen_us > 0, "{p:?}");
    let seen = p.last_seen_us;
    // Online at login, then a second device changes nothing.
    let ca = r.client(&a);
    let p = presence(&mut cb, "bob");
    assert_eq!((p.status, p.last_seen_us), (PresenceStatus::Online, 0));
    let ca2 = r.device(&a, "phone");
    drop(ca);
    assert!(
        notices(&mut cb, Duration::from_millis(1500)).is_empty(),
        "a device left, another is online"
    );
    drop(ca2);
    let p = presence(&mut cb, "bob");
    assert_eq!(p.status, PresenceStatus::Offline);
    assert!(p.last_seen_us >= seen, "{p:?}");
    // Asked while offline: the last-seen time (kept across the contact list's reload).
    let q = cb.presence(&a).unwrap();
    assert_eq!(
        (q.status, q.last_seen_us),
        (PresenceStatus::Offline, p.last_seen_us)
    );
}

/// An offline contact whose list is not in memory (a fresh router on the store): asked
/// for, its list is read for the answer at the page-read gate, and the answer is the
/// same: offline, since the time the list kept.
#[test]
fn an_offline_contact_not_in_memory_is_answered_from_the_store() {
    let dir = tempfile::tempdir().expect("a data dir");
    let data = dir.path().to_str().expect("a UTF-8 path");
    let args = ["--shards", "2", "--data-dir", data];
    let (a, b, seen) = {
        let r = RouterProc::start(&args);
        let (a, b, ca, mut cb) = contacts(&r, "pst");
        drop(ca);
        let p = presence(&mut cb, "bob");
        assert_eq!(p.status, PresenceStatus::Offline);
        (a, b, p.last_seen_us)
    };
    assert!(seen > 0);
    let r = RouterProc::start(&args);
    let mut cb = r.client(&b);
    for _ in 0..3 {
        let q = cb.presence(&a).unwrap();
        assert_eq!((q.status, q.last_seen_us), (PresenceStatus::Offline, seen));
    }
    // A stranger still learns nothing.
    let mut cs = r.client("pst-stranger");
    assert_eq!(cs.presence(&a).unwrap_err().code(), Some(Status::Forbidden));
}

#[test]
fn online_then_offline_io_uring() {
    online_then_offline(Driver::Default);
}

#[test]
fn online_then_offline_epoll() {
    online_then_offline(Driver::Legacy);
}

#[test]
fn away_dnd_and_text_the_most_present_device_wins() {
    let r = RouterProc::start(&["--shards", "2", "--max-presence-text-bytes", "8"]);
    let (a, b, mut ca, mut cb) = contacts(&r, "prs");
    // Past the login's notice second, so each change goes out at once or on the tick.
    std::thread::sleep(Duration::from_millis(1100));
    ca.set_presence(PresenceStatus::Away, "lunch").unwrap();
    let p = presence(&mut cb, "bob");
    assert_eq!((p.status, p.text.as_str()), (PresenceStatus::Away, "lunch"));
    let q = cb.presence(&a).unwrap();
    assert_eq!(
        (q.user.as_str(), q.status, q.text.as_str()),
        (a.as_str(), PresenceStatus::Away, "lunch")
    );
    // A second device in dnd is more present than away.
    let mut ca2 = r.device(&a, "phone");
    ca2.set_presence(PresenceStatus::Dnd, "busy").unwrap();
    let last = loop {
        let p = presence(&mut cb, "bob");
        if p.status != PresenceStatus::Online {
            break p;
        }
    };
    assert_eq!(
        (last.status, last.text.as_str()),
        (PresenceStatus::Dnd, "busy")
    );
    // The text's bound.
    let e = ca
        .set_presence(PresenceStatus::Online, "123456789")
        .unwrap_err();
    assert_eq!(e.code(), Some(Status::BadRequest));
    ca.set_presence(PresenceStatus::Online, "12345678")
        .expect("at the bound");
    assert_eq!(cb.presence(&a).unwrap().status, PresenceStatus::Online);
    // Own presence may be asked too.
    assert_eq!(ca.presence(&a).unwrap().status, PresenceStatus::Online);
    let _ = b;
}

fn not_to_strangers(driver: Driver) {
    let r = RouterProc::start_with(&["--shards", "2"], driver);
    let (a, b, mut ca, mut cb) = contacts(&r, "prx");
    let mut stranger = r.client("prx-stranger");
    // A pending request is no contact either.
    stranger.contact_request(&a).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    ca.set_presence(PresenceStatus::Away, "").unwrap();
    assert_eq!(presence(&mut cb, "bob").status, PresenceStatus::Away);
    assert!(notices(&mut stranger, Duration::from_millis(500)).is_empty());
    let e = stranger.presence(&a).unwrap_err();
    assert_eq!(e.code(), Some(Status::Forbidden));
    let e = stranger.presence("prx-nobody").unwrap_err();
    assert_eq!(
        e.code(),
        Some(Status::Forbidden),
        "unknown users look like strangers"
    );
    // Removed: no longer told.
    cb.contact_remove(&a).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    ca.set_presence(PresenceStatus::Online, "").unwrap();
    assert!(notices(&mut cb, Duration::from_millis(1500)).is_empty());
    assert_eq!(cb.presence(&a).unwrap_err().code(), Some(Status::Forbidden));
    let _ = b;
}

#[test]
fn not_to_strangers_io_uring() {
    not_to_strangers(Driver::Default);
}

#[test]
fn not_to_strangers_epoll() {
    not_to_strangers(Driver::Legacy);
}

fn flapping_is_coalesced(driver: Driver) {
    let r = RouterProc::start_with(&["--shards", "2"], driver);
    let (_a, _b, mut ca, mut cb) = contacts(&r, "prf");
    std::thread::sleep(Duration::from_millis(1100));
    let t0 = Instant::now();
    for i in 0..10 {
        let st = if i % 2 == 0 {
            PresenceStatus::Away
        } else {
            PresenceStatus::Dnd
        };
        ca.set_presence(st, &format!("t{i}")).unwrap();
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "the flap took {:?}",
        t0.elapsed()
    );
    let got = notices(&mut cb, Duration::from_millis(2500));
    assert!(!got.is_empty() && got.len() <= 2, "{got:?}");
    let last = got.last().unwrap();
    assert_eq!(
        (last.status, last.text.as_str()),
        (PresenceStatus::Dnd, "t9"),
        "the latest is kept"
    );
}

#[test]
fn flapping_is_coalesced_io_uring() {
    flapping_is_coalesced(Driver::Default);
}

#[test]
fn flapping_is_coalesced_epoll() {
    flapping_is_coalesced(Driver::Legacy);
}

/// A device logging in and out in a loop is coalesced as a flapping status is: at most
/// one notice a second reaches a contact (the offline notice's time used to go with the
/// user's entry, and the next login was told at once: two a second).
#[test]
fn login_churn_is_coalesced() {
    let r = RouterProc::start(&["--shards", "2"]);
    let (a, _b, ca, mut cb) = contacts(&r, "prc");
    drop(ca);
    assert_eq!(presence(&mut cb, "bob").status, PresenceStatus::Offline);
    let t0 = Instant::now();
    let mut logins = 0;
    while t0.elapsed() < Duration::from_millis(3500) {
        drop(r.client(&a));
        logins += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    // One notice a second while it churns, and the one held at its end.
    let secs = t0.elapsed().as_secs_f64();
    let got = notices(&mut cb, Duration::from_millis(2500));
    assert!(logins >= 20, "only {logins} logins");
    assert!(
        !got.is_empty() && got.len() as f64 <= secs.ceil() + 1.0,
        "{} notices for {secs:.1} s of {logins} logins: {:?}",
        got.len(),
        got.iter().map(|p| p.status).collect::<Vec<_>>()
    );
    assert_eq!(
        got.last().map(|p| p.status),
        Some(PresenceStatus::Offline),
        "the latest is kept"
    );
}
