//! Direct messages between users, across shards, on both I/O drivers.

use std::time::Duration;

use ringrouter_client::Status;
use ringrouter_tests::{users_on_shards, Driver, RouterProc};

const T: Option<Duration> = Some(Duration::from_secs(5));

fn dm_across_shards(driver: Driver) {
    let r = RouterProc::start_with(&["--shards", "2"], driver);
    let users = users_on_shards("dm", 2);
    let (a, b) = (&users[0], &users[1]);
    let mut ca = r.client(a);
    let mut cb = r.client(b);
    assert_eq!(ca.shard(), 0);
    assert_eq!(cb.shard(), 1);
    ca.send_wait(b, b"hello").unwrap();
    let m = cb.recv(T).unwrap().expect("message");
    assert_eq!(m.sender, *a);
    assert_eq!(&m.payload[..], b"hello");
    assert_eq!(m.seq, 1);
    assert!(m.timestamp_us > 0);
    cb.send(a, b"back").unwrap();
    let m = ca.recv(T).unwrap().expect("reply");
    assert_eq!(
        (m.sender.as_str(), &m.payload[..]),
        (b.as_str(), &b"back"[..])
    );
    // unknown recipient: NOT_FOUND
    let err = ca.send_wait("nobody-here", b"x").unwrap_err();
    assert_eq!(err.code(), Some(Status::NotFound));
}

#[test]
fn dm_across_shards_io_uring() {
    dm_across_shards(Driver::Default);
}

#[test]
fn dm_across_shards_epoll() {
    dm_across_shards(Driver::Legacy);
}
