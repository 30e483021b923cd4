//! Before login (issue 9, "nothing unbounded"): the pre-login frame bound, the login
//! deadline over writes as well as reads, the failed-login bound, and logins for
//! unknown users costing what a wrong password costs.
//!
//! Each test's comment says what the router did before it was fixed.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use prost::Message as _;
use ringrouter_client::Status;
use ringrouter_proto::codec::frame_to_vec;
use ringrouter_proto::v1::{client_frame, server_frame, ClientFrame, Login, Ping, Register};
use ringrouter_tests::{
    assert_error, cfg, client_frame_bytes, connect_small_rcvbuf, wait_until, wire, RouterProc, T,
};

/// Default `--max-prelogin-frame-bytes`.
const PRELOGIN_MAX: usize = 16 << 10;

/// Before: a pre-login frame was bounded by `max_frame_bytes` (1 MiB) alone, so the router
/// waited for (and buffered) its body; over 1 MiB the answer was BAD_FRAME.
#[test]
fn prelogin_frame_over_its_bound_is_too_large_and_closes() {
    let r = RouterProc::start(&["--shards", "2"]);
    // The length prefix alone is refused: the body never comes.
    let mut c = r.raw();
    c.write(&wire::length_prefix(PRELOGIN_MAX as u64 + 1))
        .expect("write");
    let e = c.expect_error(T);
    assert_error(&e, Status::TooLarge);
    assert!(e.reason.contains("16384"), "{e:?}");
    let rest = c.read_until_closed(T);
    assert!(rest.is_empty(), "frames after TOO_LARGE: {rest:?}");

    // A whole Login over the bound, sent at once: the same.
    let mut c = r.raw();
    c.write(&login_of_size("big", PRELOGIN_MAX + 1))
        .expect("write");
    assert_error(&c.expect_error(T), Status::TooLarge);
    assert!(c.read_until_closed(T).is_empty());

    // A Login exactly at the bound is fine.
    let mut c = r.raw();
    c.write(&login_of_size("big", PRELOGIN_MAX)).expect("write");
    match c.next_kind(T) {
        server_frame::Kind::LoginResult(lr) => assert_eq!(lr.status, Status::Ok as i32, "{lr:?}"),
        other => panic!("expected a LoginResult, got {other:?}"),
    }
    // After login the bound is max_frame_bytes: a larger Ping is fine.
    c.send(client_frame::Kind::Ping(Ping { nonce: 1 }));
    let mut body = Vec::new();
    wire::len_field(&mut body, wire::CLIENT_FRAME_PING, &[]); // ping {}
    wire::len_field(&mut body, 50, &vec![b'x'; PRELOGIN_MAX]); // and an unknown field, skipped
    c.write(&wire::frame(&body)).expect("write");
    for _ in 0..2 {
        assert!(matches!(c.next_kind(T), server_frame::Kind::Pong(_)));
    }
}

/// The bytes of a Login frame whose body is exactly `body_len` bytes (padded with a
/// password, which open auth ignores).
fn login_of_size(user: &str, body_len: usize) -> Vec<u8> {
    let mut password_len = body_len;
    loop {
        let f = ClientFrame {
            kind: Some(client_frame::Kind::Login(Login {
                request_id: 1,
                user: user.into(),
                password: "p".repeat(password_len),
                ..Default::default()
            })),
        };
        match f.encoded_len() {
            n if n == body_len => return frame_to_vec(&f),
            n if n > body_len => password_len -= (n - body_len).min(password_len),
            _ => password_len += 1,
        }
    }
}

/// A connection that sends Pings as fast as it can and never reads its Pongs, until the
/// router stops reading it. Returns how many bytes it got through.
/// Gives up after `limit`.
fn flood_without_reading(s: &mut std::net::TcpStream, limit: Duration) -> usize {
    let ping = client_frame_bytes(client_frame::Kind::Ping(Ping { nonce: u64::MAX }));
    let chunk: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 4096)
        .collect();
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .expect("SO_SNDTIMEO");
    let t0 = Instant::now();
    let mut sent = 0;
    loop {
        if t0.elapsed() >= limit {
            // On a very busy machine the router may not have filled its buffers yet: the
            // test then proves less (a blocked write is what the old code never left).
            eprintln!("note: the router still reads a flood after {sent} bytes");
            return sent;
        }
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return sent
            }
            Err(e) => panic!("flood write failed after {sent} bytes: {e}"),
        }
    }
}

/// Before: the deadline bounded reads only. A client that pipelines Pings and never
/// reads blocks the router's `write_all` of the Pongs, which had no deadline: the
/// connection stayed forever, and with `--max-connections 2` two such clients locked
/// everyone else out.
#[test]
fn prelogin_flood_that_never_reads_is_closed_at_the_deadline_and_frees_its_slot() {
    // The floods must fill the router's socket buffers (MBs: the send buffer grows to
    // tcp_wmem's 4 MiB) before the deadline, on a debug build sharing two cores.
    const DEADLINE: Duration = Duration::from_secs(5);
    let r = RouterProc::start(&[
        "--shards",
        "2",
        "--max-connections",
        "2",
        "--login-timeout",
        "5s",
    ]);
    let t0 = Instant::now();
    let addr = r.connect_addr();
    let floods: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = connect_small_rcvbuf(addr, 4096);
                let sent = flood_without_reading(&mut s, DEADLINE - Duration::from_millis(500));
                (s, sent)
            })
        })
        .collect();
    let mut flooders = Vec::new();
    for f in floods {
        let (s, sent) = f.join().expect("flood thread");
        eprintln!("a flooder blocked after {sent} bytes, {:?}", t0.elapsed());
        flooders.push(s);
    }
    // Both slots are taken until the deadline.
    match r.client_with(cfg("third")) {
        Err(ringrouter_client::ClientError::Auth { code, .. }) => {
            assert_eq!(code, Status::Unavailable)
        }
        Err(e) => panic!("expected UNAVAILABLE while both slots are held, got {e}"),
        Ok(_) => panic!("a third connection logged in with --max-connections 2"),
    }
    // After the deadline a well-behaved client gets in.
    let mut third = None;
    assert!(
        wait_until(Duration::from_secs(6), || {
            third = r.client_with(cfg("third")).ok();
            third.is_some()
        }),
        "no connection slot {:?} after the flooders' login deadline",
        t0.elapsed()
    );
    eprintln!("third client logged in after {:?}", t0.elapsed());
    assert!(t0.elapsed() >= DEADLINE);
    third
        .expect("logged in")
        .ping()
        .expect("the third client works");
    // The flooders were closed: what they read ends (EOF or reset) after their Pongs.
    for f in &mut flooders {
        f.set_read_timeout(Some(T)).expect("SO_RCVTIMEO");
        let mut buf = vec![0u8; 256 << 10];
        let end = Instant::now() + T;
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => assert!(Instant::now() < end, "a flooder still open"),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("a flooder is still open after the deadline")
                }
                Err(_) => break,
            }
        }
    }
}

/// Before: a connection could try passwords for as long as its login timeout allowed.
#[test]
fn third_failed_login_closes_the_connection() {
    let r = RouterProc::start(&["--auth", "accounts"]);
    assert_eq!(r.register("alice", "right").status, Status::Ok as i32);
    let mut c = r.raw();
    for i in 1..=3 {
        let lr = c.login_password("alice", &format!("wrong{i}"), "");
        assert_eq!(
            lr.status,
            Status::Unauthorized as i32,
            "attempt {i}: {lr:?}"
        );
    }
    let e = c.expect_error(T);
    assert_error(&e, Status::Unauthorized);
    assert_eq!(e.reason, "too many failed logins");
    let rest = c.read_until_closed(T);
    assert!(rest.is_empty(), "{rest:?}");
    // The bound is per connection: the right password works on a new one.
    let (_c, lr) = r.login_password("alice", "right");
    assert_eq!(lr.status, Status::Ok as i32, "{lr:?}");
    // Two failures leave the connection open for a third try.
    let mut c = r.raw();
    for _ in 0..2 {
        assert_eq!(
            c.login_password("alice", "wrong", "").status,
            Status::Unauthorized as i32
        );
    }
    assert_eq!(
        c.login_password("alice", "right", "").status,
        Status::Ok as i32
    );
}

/// A Login one byte over `bound` gets TOO_LARGE (naming the bound) and the connection
/// closed; one of `bound` bytes is answered OK.
fn assert_prelogin_bound(r: &RouterProc, bound: usize) {
    let mut c = r.raw();
    c.write(&login_of_size("big", bound + 1)).expect("write");
    let e = c.expect_error(T);
    assert_error(&e, Status::TooLarge);
    assert!(e.reason.contains(&bound.to_string()), "{e:?}");
    assert!(c.read_until_closed(T).is_empty());
    let mut c = r.raw();
    c.write(&login_of_size("big", bound)).expect("write");
    match c.next_kind(T) {
        server_frame::Kind::LoginResult(lr) => assert_eq!(lr.status, Status::Ok as i32, "{lr:?}"),
        other => panic!("expected a LoginResult, got {other:?}"),
    }
}

/// The flags themselves, away from their defaults. Before: `--max-prelogin-frame-bytes`
/// above `--max-frame-bytes` let a Login larger than every frame's bound in (60 000 bytes
/// against 4 096), and these flags were tested only at their defaults.
#[test]
fn prelogin_bounds_follow_their_flags_and_never_pass_the_frame_bound() {
    let r = RouterProc::start(&["--shards", "1", "--max-prelogin-frame-bytes", "1024"]);
    assert_prelogin_bound(&r, 1024);
    drop(r);
    // A pre-login bound over the frame bound: the frame bound holds.
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--max-frame-bytes",
        "4096",
        "--max-payload-bytes",
        "2048",
        "--max-prelogin-frame-bytes",
        "65536",
    ]);
    assert_prelogin_bound(&r, 4096);
    drop(r);

    // `--max-failed-logins 1`: the first refused Login closes the connection.
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--auth",
        "accounts",
        "--max-failed-logins",
        "1",
    ]);
    assert_eq!(r.register("alice", "right").status, Status::Ok as i32);
    let mut c = r.raw();
    let lr = c.login_password("alice", "wrong", "");
    assert_eq!(lr.status, Status::Unauthorized as i32, "{lr:?}");
    assert_error(&c.expect_error(T), Status::Unauthorized);
    assert!(c.read_until_closed(T).is_empty());
}

/// Settings that would leave the router unable to serve are refused at start, with
/// the flag named (exit 2). Before: both were accepted, and every Login (or every
/// History page) was then refused.
#[test]
fn bounds_that_refuse_everything_are_refused_at_start() {
    for (flag, value) in [
        ("--max-prelogin-frame-bytes", "0"),
        ("--history-page-max", "0"),
    ] {
        // (`--print-config` answers what a start would, and exits either way.)
        let out = std::process::Command::new(ringrouter_tests::router_bin())
            .args(["--print-config", flag, value])
            .output()
            .expect("run the router");
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
    // With history off, no page is asked for: a page bound of 0 is fine.
    let out = std::process::Command::new(ringrouter_tests::router_bin())
        .args([
            "--print-config",
            "--history-per-conversation",
            "0",
            "--history-page-max",
            "0",
        ])
        .output()
        .expect("run the router");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// Before: `--max-failed-logins` closed a connection after its third wrong password, and a
/// client that reconnected guessed on, as fast as the hashing pool went.
#[test]
fn wrong_passwords_for_one_name_are_bounded_across_connections() {
    let r = RouterProc::start(&[
        "--shards",
        "2",
        "--auth",
        "accounts",
        "--max-failed-logins-per-user",
        "4",
    ]);
    assert_eq!(r.register("alice", "right").status, Status::Ok as i32);
    assert_eq!(r.register("bob", "right").status, Status::Ok as i32);
    // Four wrong passwords for `name`, each on a fresh connection, each checked.
    let four_wrong = |name: &str| {
        for i in 0..4 {
            let (_c, lr) = r.login_password(name, &format!("wrong{i}"));
            assert_eq!(
                lr.status,
                Status::Unauthorized as i32,
                "{name}, attempt {i}: {lr:?}"
            );
        }
    };
    // A right password takes no token: it never counts.
    for _ in 0..6 {
        let (_c, lr) = r.login_password("alice", "right");
        assert_eq!(lr.status, Status::Ok as i32, "{lr:?}");
    }
    four_wrong("alice");
    // The fifth, on a fresh connection, is refused before its password is checked (the
    // right one too), and a name without an account counts the same.
    for password in ["wrong", "right"] {
        let (_c, lr) = r.login_password("alice", password);
        assert_eq!(lr.status, Status::RateLimited as i32, "{lr:?}");
        assert_eq!(
            lr.reason,
            "too many failed logins for this user, try again later"
        );
    }
    // A busy answer is not a failed login: the connection stays open past
    // --max-failed-logins (3), for a retry within the login deadline.
    let mut c = r.raw();
    for _ in 0..4 {
        let lr = c.login_password("alice", "right", "");
        assert_eq!(lr.status, Status::RateLimited as i32, "{lr:?}");
    }
    four_wrong("nobody");
    let (_c, lr) = r.login_password("nobody", "wrong");
    assert_eq!(lr.status, Status::RateLimited as i32, "{lr:?}");
    // Other names are not affected.
    let (_c, lr) = r.login_password("bob", "right");
    assert_eq!(lr.status, Status::Ok as i32, "{lr:?}");
}

/// Milliseconds from sending a password Login on a fresh connection to its LoginResult
/// (which must be UNAUTHORIZED).
fn refused_login_ms(r: &RouterProc, user: &str, password: &str) -> f64 {
    let mut c = r.raw();
    let t = Instant::now();
    let lr = c.login_password(user, password, "");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(lr.status, Status::Unauthorized as i32, "{user}: {lr:?}");
    ms
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Before: a Login for an unknown user (or for a user made by open or jwt auth, which has
/// no password) was refused at once, while a wrong password cost an Argon2id
/// verification (≈35 ms): the answer's timing told which users exist.
#[test]
fn unknown_user_login_costs_what_a_wrong_password_costs() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().to_str().expect("UTF-8 path");
    // A user record with no password: made by a first login under open auth.
    {
        let r = RouterProc::start(&[
            "--shards",
            "1",
            "--data-dir",
            dir,
            "--shutdown-timeout",
            "2s",
        ]);
        let mut c = r.client("openuser");
        c.ping().expect("ping");
        drop(c);
        let (code, err) = r.terminate(3 * T);
        assert_eq!(code, Some(0), "{err}");
    }
    // (Ten wrong passwords for one name: at the per-name bound, which is not measured here.)
    let r = RouterProc::start_real_argon2(&[
        "--shards",
        "1",
        "--auth",
        "accounts",
        "--data-dir",
        dir,
        "--max-failed-logins-per-user",
        "0",
    ]);
    assert_eq!(r.register("known", "right").status, Status::Ok as i32);
    let (mut known, mut unknown, mut nopw) = (Vec::new(), Vec::new(), Vec::new());
    // Warm up (connection setup, the hashing thread's dummy hash).
    refused_login_ms(&r, "known", "wrong");
    refused_login_ms(&r, "nobody", "wrong");
    for i in 0..9 {
        known.push(refused_login_ms(&r, "known", &format!("wrong{i}")));
        unknown.push(refused_login_ms(&r, &format!("nobody{i}"), "wrong"));
        nopw.push(refused_login_ms(&r, "openuser", "wrong"));
    }
    let (k, u, n) = (median(known), median(unknown), median(nopw));
    eprintln!(
        "median refused login: known user {k:.2} ms, unknown {u:.2} ms, no password {n:.2} ms"
    );
    // A real hash takes milliseconds; a lookup alone well under one.
    assert!(
        k > 2.0,
        "a wrong password took {k:.2} ms: is Argon2id cheap?"
    );
    for (what, ms) in [("an unknown user", u), ("a user without a password", n)] {
        assert!(
            ms > k / 3.0 && ms < k * 3.0,
            "a login for {what} took {ms:.2} ms, a wrong password {k:.2} ms"
        );
    }
}

/// Register followed by Login in one write: after handling Register, `serve` falls
/// through to a socket read instead of parsing what is already buffered, so the
/// pipelined Login sits there until more bytes come (or the login timeout fires).
#[test]
fn a_login_pipelined_after_register_is_answered_without_more_input() {
    let r = RouterProc::start(&["--auth", "accounts", "--login-timeout", "4s"]);
    let mut c = r.raw();
    let mut bytes = client_frame_bytes(client_frame::Kind::Register(Register {
        request_id: 1,
        user: "pipe".into(),
        password: "pw".into(),
    }));
    bytes.extend(client_frame_bytes(client_frame::Kind::Login(Login {
        request_id: 2,
        user: "pipe".into(),
        password: "pw".into(),
        device: "d".into(),
        ..Default::default()
    })));
    c.write(&bytes).unwrap();
    match c.next_kind(Duration::from_secs(2)) {
        server_frame::Kind::AccountResult(a) => assert_eq!(a.status, Status::Ok as i32, "{a:?}"),
        other => panic!("expected AccountResult, got {other:?}"),
    }
    match c.next(Duration::from_secs(2)) {
        Ok(f) => match f.kind {
            Some(server_frame::Kind::LoginResult(l)) => {
                assert_eq!(l.status, Status::Ok as i32, "{l:?}")
            }
            other => panic!("expected LoginResult, got {other:?}"),
        },
        Err(e) => panic!("no LoginResult for the pipelined Login within 2 s: {e:?}"),
    }
}

/// Same with a Ping after Register: no Pong until the client sends more.
#[test]
fn a_ping_pipelined_after_register_is_answered_without_more_input() {
    let r = RouterProc::start(&["--auth", "accounts"]);
    let mut c = r.raw();
    let mut bytes = client_frame_bytes(client_frame::Kind::Register(Register {
        request_id: 1,
        user: "pipe2".into(),
        password: "pw".into(),
    }));
    bytes.extend(client_frame_bytes(client_frame::Kind::Ping(Ping {
        nonce: 5,
    })));
    c.write(&bytes).unwrap();
    assert!(matches!(
        c.next_kind(Duration::from_secs(2)),
        server_frame::Kind::AccountResult(_)
    ));
    match c.next(Duration::from_secs(2)) {
        Ok(f) => assert!(matches!(f.kind, Some(server_frame::Kind::Pong(_))), "{f:?}"),
        Err(e) => panic!("no Pong for the pipelined Ping within 2 s: {e:?}"),
    }
}
