//! Regression tests from the review of offline delivery, rooms and accounts: DeleteAccount racing a session end.
//!
//! Each test's comment describes the bug it was written against; all of them are fixed.

use std::time::{Duration, Instant};

use ringrouter_client::Status;
use ringrouter_proto::v1::{client_frame::Kind as C, server_frame::Kind as S, DeleteAccount};
use ringrouter_tests::{Raw, ReadEnd, RouterProc, T};

/// A password login as device "d" that must succeed.
fn login(r: &RouterProc, user: &str, password: &str) -> Raw {
    let mut c = r.raw();
    let lr = c.login_password(user, password, "d");
    assert_eq!(lr.status, Status::Ok as i32, "{lr:?}");
    c
}

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// A session of the user ends while DeleteAccount is in the store: `requeue` appends its
/// unacked messages with `require_account = false` after the account and queue were
/// deleted. Whoever registers the name next receives the old owner's messages.
#[test]
fn review_delete_account_racing_a_disconnect_leaves_an_orphan_queue() {
    let r = RouterProc::start(&["--shards", "1", "--auth", "accounts"]);
    assert_eq!(r.register("sender", "pw").status, Status::Ok as i32);
    let mut y = login(&r, "sender", "pw");
    let mut leaked = Vec::new();
    for trial in 0..150u32 {
        let x = format!("victim{trial}");
        assert_eq!(r.register(&x, "old-pw").status, Status::Ok as i32);
        let mut s1 = login(&r, &x, "old-pw");
        let mut s2 = login(&r, &x, "old-pw");
        y.send_to(&x, format!("secret for {x}").as_bytes(), 10);
        match y.next_non_ping(T) {
            S::SendResult(s) => assert_eq!(s.status, Status::Ok as i32),
            other => panic!("{other:?}"),
        }
        // Both devices got it; neither acks.
        assert_eq!(s1.delivers(1, T).len(), 1);
        assert_eq!(s2.delivers(1, T).len(), 1);
        s2.send(C::DeleteAccount(DeleteAccount { request_id: 4 }));
        spin(Duration::from_micros(u64::from(trial % 30) * 40));
        drop(s1);
        // Wait for the deletion to finish.
        loop {
            match s2.next(T) {
                Ok(f) => {
                    if let Some(S::AccountResult(a)) = f.kind {
                        assert_eq!(a.status, Status::Ok as i32, "{a:?}");
                    }
                }
                Err(ReadEnd::Closed(_)) | Err(ReadEnd::Bad(_)) => break,
                Err(ReadEnd::Timeout) => panic!("session not closed after DeleteAccount"),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
        // Someone else takes the name.
        assert_eq!(r.register(&x, "new-owner").status, Status::Ok as i32);
        let mut n = login(&r, &x, "new-owner");
        if let Ok(f) = n.next(Duration::from_millis(100)) {
            if let Some(S::Deliver(d)) = f.kind {
                leaked.push((trial, d));
            }
        }
    }
    assert!(
        leaked.is_empty(),
        "new owners of deleted names got the old owner's messages: {leaked:?}"
    );
}
