//! Multi-device delivery: every session of a user gets every message, each
//! session numbers its Delivers 1, 2, 3, ... on its own.

use ringrouter_client::{Client, Status};
use ringrouter_proto::v1::server_frame;
use ringrouter_tests::{users_on_shards, RouterProc, T};

/// Receives the next message on `c` and checks it.
fn expect_msg(c: &mut Client, who: &str, sender: &str, payload: &[u8], seq: u64) {
    let m = c
        .recv(Some(T))
        .unwrap_or_else(|e| panic!("{who}: {e}"))
        .unwrap_or_else(|| panic!("{who}: no message {payload:?} (seq {seq})"));
    assert_eq!(m.sender, sender, "{who}: sender");
    assert_eq!(
        &m.payload[..],
        payload,
        "{who}: payload (seq {} expected {seq})",
        m.seq
    );
    assert_eq!(m.seq, seq, "{who}: per-session seq");
    assert_ne!(m.msg_id, 0, "{who}: msg_id");
}

#[test]
fn every_device_gets_every_message_with_its_own_seq() {
    // Two shards, sender and recipient homed apart: the recipient's devices may
    // be accepted on either shard and are handed over to the home shard.
    let r = RouterProc::start(&["--shards", "2"]);
    let u = users_on_shards("dev", 2);
    let (alice, carol) = (&u[0], &u[1]);
    let mut a = r.client(alice);
    let mut devs: Vec<Client> = ["phone", "laptop", "tablet"]
        .iter()
        .map(|d| r.device(carol, d))
        .collect();
    for d in &devs {
        assert_eq!(d.user(), carol);
        assert_eq!(
            d.shard(),
            1,
            "all of carol's sessions live on her home shard"
        );
    }
    let ids: std::collections::HashSet<u64> = devs.iter().map(Client::session_id).collect();
    assert_eq!(ids.len(), 3, "three distinct sessions");

    // alice -> carol: each of carol's three sessions gets all three, seq 1, 2, 3.
    let mut msg_ids = Vec::new();
    for i in 1..=3u64 {
        msg_ids.push(
            a.send_wait(carol, format!("to carol {i}").as_bytes())
                .expect("send to carol"),
        );
    }
    for (k, d) in devs.iter_mut().enumerate() {
        for i in 1..=3u64 {
            let who = format!("carol device {k}");
            let m = d
                .recv(Some(T))
                .unwrap_or_else(|e| panic!("{who}: {e}"))
                .unwrap_or_else(|| panic!("{who}: message {i} missing"));
            assert_eq!(m.sender, *alice);
            assert_eq!(&m.payload[..], format!("to carol {i}").as_bytes());
            assert_eq!(m.seq, i, "{who}: per-session seq");
            assert_eq!(
                m.msg_id,
                msg_ids[i as usize - 1],
                "same msg_id on every device"
            );
        }
    }

    // carol (phone) -> carol: every session of carol gets it, the other devices
    // and the sending one; seq 4 on each.
    devs[0]
        .send_wait(carol, b"note to self")
        .expect("send to self");
    for (k, d) in devs.iter_mut().enumerate() {
        expect_msg(d, &format!("carol device {k}"), carol, b"note to self", 4);
    }

    // A device logging in now starts its own numbering at 1, while the others go on at 5.
    let mut late = r.device(carol, "watch");
    a.send_wait(carol, b"after the watch joined")
        .expect("send to carol");
    expect_msg(
        &mut late,
        "carol watch",
        alice,
        b"after the watch joined",
        1,
    );
    for (k, d) in devs.iter_mut().enumerate() {
        expect_msg(
            d,
            &format!("carol device {k}"),
            alice,
            b"after the watch joined",
            5,
        );
    }

    // A device that leaves gets nothing more; the others still get everything.
    let gone = devs.pop().expect("three devices");
    gone.close().expect("logout");
    a.send_wait(carol, b"after logout").expect("send to carol");
    expect_msg(&mut late, "carol watch", alice, b"after logout", 2);
    for (k, d) in devs.iter_mut().enumerate() {
        expect_msg(d, &format!("carol device {k}"), alice, b"after logout", 6);
    }
    // alice got nothing of carol's own traffic.
    assert!(
        a.recv(Some(std::time::Duration::from_millis(50)))
            .expect("alice recv")
            .is_none(),
        "the sender does not get copies of what it sends to others"
    );
}

#[test]
fn sending_to_self_reaches_every_device_on_one_shard() {
    let r = RouterProc::start(&["--shards", "1"]);
    let mut devs: Vec<Client> = (0..3).map(|i| r.device("solo", &format!("d{i}"))).collect();
    for round in 1..=3u64 {
        // Each device in turn sends to its own user.
        let from = (round as usize - 1) % 3;
        devs[from]
            .send_wait("solo", format!("self {round}").as_bytes())
            .expect("send to self");
        for (k, d) in devs.iter_mut().enumerate() {
            expect_msg(
                d,
                &format!("solo d{k}"),
                "solo",
                format!("self {round}").as_bytes(),
                round,
            );
        }
    }
}

/// Sync mode, two devices of bob. S1 is live (1100 journaled messages, not acked yet);
/// S2 logs in and pauses after its first backlog page (1024 > max_unacked/2). A new
/// message m is journaled: S1 gets it live, S2 is `loading` so it was skipped ("already
/// in the queue behind it"). S1 acks everything -> `remove_up_to(top)` deleted m from
/// the queue. S2 acks its page, loads the next one from 1025: m was gone. S2 was
/// connected when m was sent and never received it (in memory mode it would be held and
/// delivered).
#[test]
fn sync_mode_a_paging_device_gets_a_live_message_another_device_acked() {
    let r = RouterProc::start(&[
        "--shards",
        "1",
        "--durability",
        "sync",
        "--max-unacked-per-session",
        "1500",
    ]);
    r.visit("fence-user");
    let mut s1 = r.raw_login("bob");
    let mut a = r.raw_login("alice");
    crate::offline::queue_numbered(&mut a, "bob", 1100);
    let got1 = s1.delivers(1101, T);
    assert_eq!(got1.len(), 1101);
    let mut s2 = r.raw_login("bob");
    let page = s2.delivers(1024, T);
    a.send_to("bob", b"MMMM", 100);
    assert_eq!(a.wait_send_result(100), Status::Ok as i32);
    let m1 = s1.delivers(1, T);
    assert_eq!(&m1[0].payload[..], b"MMMM");
    s1.ack(m1[0].seq);
    // The removal must reach the store before S2 asks for its next page. The Pong
    // says the shard handled the ack (and sent the store its removal); the store
    // takes requests in order, so a sync-mode send that it confirms after that
    // (journaled: it went through the store) comes after the removal.
    s1.ping_pong(1);
    s1.send_to("fence-user", b"store fence", 101);
    assert_eq!(s1.wait_send_result(101), Status::Ok as i32);
    s2.ack(page.last().unwrap().seq);
    // The rest of S2's backlog: 1024..1100, alice's fence, then m, once.
    let rest: Vec<Vec<u8>> = s2
        .delivers(1100 - 1024 + 2, T)
        .iter()
        .map(|d| d.payload.to_vec())
        .collect();
    let mut want: Vec<Vec<u8>> = (1024..1100u32).map(|i| i.to_be_bytes().to_vec()).collect();
    want.push(b"fence".to_vec());
    want.push(b"MMMM".to_vec());
    assert!(
        rest == want,
        "S2 after its first page: {} messages, last {:?}; want the backlog, fence, MMMM",
        rest.len(),
        rest.last()
    );
    // ... and the copy of the fence S1 sent (a live copy of bob's own message, for
    // bob's other devices: unsequenced, not part of the backlog).
    let more = s2.ping_pong(2);
    assert!(
        matches!(&more[..], [server_frame::Kind::Deliver(d)]
            if d.outgoing && d.seq == 0 && d.to_user == "fence-user" && &d.payload[..] == b"store fence"),
        "S2 got more than was sent: {more:?}"
    );
}
