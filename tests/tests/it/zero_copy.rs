//! Payloads over `--inline-payload-max` (256 B by default) go from the sender's read
//! buffer to the recipient's socket without being copied; smaller ones are copied next
//! to their header. The router's counters say how many payload bytes it wrote by
//! reference and how many it copied. (The byte-level proof that the queued
//! iovec points into the read buffer is the unit test
//! `outbuf::tests::large_payloads_are_written_from_the_senders_buffer`.)

use std::time::Duration;

use ringrouter::{Config, Router};
use ringrouter_client::{Client, ClientConfig};
use ringrouter_tests::{users_on_shards, wait_until, T};

#[test]
fn large_payloads_are_never_copied_by_default() {
    let data = tempfile::tempdir().expect("data dir");
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        pin_threads: false,
        http_listen: None,
        data_dir: data.path().to_path_buf(),
        ..Config::default()
    };
    let router = Router::start(cfg).expect("router starts");
    let users = users_on_shards("zc", 2);
    let mut a = Client::connect(router.local_addr(), ClientConfig::new(&users[0])).unwrap();
    let mut b = Client::connect(router.local_addr(), ClientConfig::new(&users[1])).unwrap();
    // same-shard and cross-shard recipients, small and large payloads
    let (mut expected, mut copied) = (0u64, 0u64);
    for size in [1usize, 64, 256, 257, 1024, 64 * 1024] {
        let payload = vec![7u8; size];
        a.send_wait(&users[1], &payload).unwrap();
        let m = b
            .recv(Some(Duration::from_secs(5)))
            .unwrap()
            .expect("delivered");
        assert_eq!(m.payload.len(), size);
        b.send_wait(&users[1], &payload).unwrap(); // to self: same shard
        let m = b
            .recv(Some(Duration::from_secs(5)))
            .unwrap()
            .expect("delivered to self");
        assert_eq!(m.payload.len(), size);
        if size > 256 {
            expected += 2 * size as u64;
        } else {
            copied += 2 * size as u64;
        }
    }
    assert!(
        wait_until(T, || router.stats().payload_zero_copy_bytes == expected),
        "zero-copy bytes {} != {expected}",
        router.stats().payload_zero_copy_bytes
    );
    assert_eq!(router.stats().payload_copied_bytes, copied);
    drop((a, b));
    assert!(router.shutdown());
}

#[test]
fn inline_threshold_copies_only_small_payloads() {
    let data = tempfile::tempdir().expect("data dir");
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        pin_threads: false,
        http_listen: None,
        inline_payload_max: 100,
        data_dir: data.path().to_path_buf(),
        ..Config::default()
    };
    let router = Router::start(cfg).expect("router starts");
    let mut a = Client::connect(router.local_addr(), ClientConfig::new("inl")).unwrap();
    a.send_wait("inl", &[1u8; 50]).unwrap();
    a.send_wait("inl", &[1u8; 500]).unwrap();
    for _ in 0..2 {
        a.recv(Some(Duration::from_secs(5)))
            .unwrap()
            .expect("delivered");
    }
    assert!(wait_until(T, || router.stats().payload_copied_bytes == 50
        && router.stats().payload_zero_copy_bytes == 500));
    assert!(router.shutdown());
}
