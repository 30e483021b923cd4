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

/// The router's CPU time (user + system), from /proc/PID/stat.
fn router_cpu(r: &RouterProc) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", r.pid())).expect("/proc/PID/stat");
    // The fields after the command's closing parenthesis; utime and stime are the
    // 14th and 15th of the whole line.
    let rest = &stat[stat.rfind(')').expect("comm ends with ')'") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().expect("a tick count"))
        .collect();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((f[0] + f[1]) * 1000 / hz)
}

/// `--busy-poll`: a conversation across shards goes on as without it (every message,
/// in order, on both drivers), the shards poll after it, and sleep again past the window.
#[test]
fn busy_polling_shards_deliver_and_sleep_again() {
    for driver in [Driver::Default, Driver::Legacy] {
        let r = RouterProc::start_with(&["--shards", "2", "--busy-poll", "20ms"], driver);
        let users = users_on_shards("bp", 2);
        let (a, b) = (&users[0], &users[1]);
        let mut ca = r.client(a);
        let mut cb = r.client(b);
        for i in 0..200u32 {
            ca.send(b, &i.to_le_bytes()).unwrap();
            let m = cb.recv(T).unwrap().expect("message");
            assert_eq!(&m.payload[..], i.to_le_bytes(), "{driver:?}");
            cb.send(a, &i.to_le_bytes()).unwrap();
            let m = ca.recv(T).unwrap().expect("reply");
            assert_eq!(&m.payload[..], i.to_le_bytes(), "{driver:?}");
        }
        // Past the window (the heartbeats are 15 s apart): the shards sleep.
        std::thread::sleep(Duration::from_millis(200));
        let cpu = router_cpu(&r);
        std::thread::sleep(Duration::from_millis(500));
        let idle = router_cpu(&r) - cpu;
        assert!(
            idle < Duration::from_millis(100),
            "{driver:?}: the router took {idle:?} of CPU in 500 ms without traffic"
        );
    }
}
