//! Order under load: a sender homed on shard 0 floods a receiver homed on
//! shard 1 while the receiver reads concurrently; every message must arrive,
//! once, in the order sent, with consecutive per-session seqs. On both drivers.

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use ringrouter_tests::{cfg, users_on_shards, Driver, RouterProc};

/// The two runs share the machine's cores (CI has two): run them one at a time
/// so each measures the router, not the scheduler.
static SERIAL: Mutex<()> = Mutex::new(());

/// Longest gap between two consecutive messages before the receiver gives up.
const GAP: Duration = Duration::from_secs(10);

fn order_under_load(driver: Driver, total: u64) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let r = RouterProc::start_with(&["--shards", "2"], driver);
    let users = users_on_shards("order", 2);
    let (sender, receiver) = (users[0].clone(), users[1].clone());
    let mut tx = r.client_with(cfg(&sender)).expect("sender login");
    let mut rx = r.client_with(cfg(&receiver)).expect("receiver login");
    assert_eq!(
        (tx.shard(), rx.shard()),
        (0, 1),
        "sender and receiver on different shards"
    );
    // A router that stops reading must fail the test, not hang it.
    tx.stream()
        .set_write_timeout(Some(GAP))
        .expect("set_write_timeout");
    let start = Instant::now();

    let expected_sender = sender.clone();
    // The sender sends counters 0..total, then counter `total` as a confirmed
    // send (SendResult): total + 1 messages in all.
    let reader = thread::spawn(move || -> Result<u64, String> {
        for i in 0..=total {
            let m = match rx.recv(Some(GAP)) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return Err(format!(
                        "message {i} of {total} did not arrive within {GAP:?}"
                    ))
                }
                Err(e) => return Err(format!("receiving message {i}: {e}")),
            };
            if m.sender != expected_sender {
                return Err(format!("message {i}: sender {:?}", m.sender));
            }
            let Ok(counter) = <[u8; 8]>::try_from(&m.payload[..]) else {
                return Err(format!("message {i}: payload of {} bytes", m.payload.len()));
            };
            let counter = u64::from_le_bytes(counter);
            if counter != i {
                return Err(format!(
                    "out of order or lost: expected counter {i}, got {counter}"
                ));
            }
            if m.seq != i + 1 {
                return Err(format!("message {i}: seq {} (expected {})", m.seq, i + 1));
            }
        }
        // Nothing beyond what was sent (no duplicates at the tail).
        match rx.recv(Some(Duration::from_millis(100))) {
            Ok(None) => Ok(total + 1),
            Ok(Some(m)) => Err(format!("extra message after the last: seq {}", m.seq)),
            Err(e) => Err(format!("after the last message: {e}")),
        }
    });

    let to = receiver.clone();
    let writer = thread::spawn(move || -> Result<(), String> {
        const CHUNK: u64 = 1000;
        let mut i = 0u64;
        while i < total {
            let end = (i + CHUNK).min(total);
            let payloads: Vec<[u8; 8]> = (i..end).map(u64::to_le_bytes).collect();
            tx.send_many(&to, payloads.iter().map(|p| &p[..]))
                .map_err(|e| format!("sending {i}..{end}: {e}"))?;
            i = end;
        }
        // The last one confirmed: the router accepted everything before it.
        tx.send_wait(&to, &total.to_le_bytes())
            .map(|_| ())
            .map_err(|e| format!("final confirmed send: {e}"))
    });

    let sent = writer.join().expect("writer thread");
    let got = reader.join().expect("reader thread");
    let elapsed = start.elapsed();
    eprintln!("{driver:?}: {total} messages in {elapsed:?}");
    sent.unwrap_or_else(|e| panic!("{driver:?}: {e}"));
    let n = got.unwrap_or_else(|e| panic!("{driver:?}: {e}"));
    assert_eq!(n, total + 1);
}

#[test]
fn order_under_load_across_shards_io_uring() {
    order_under_load(Driver::Default, 200_000);
}

#[test]
fn order_under_load_across_shards_epoll() {
    order_under_load(Driver::Legacy, 200_000);
}
