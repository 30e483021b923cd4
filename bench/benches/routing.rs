//! The routing step on one shard, without I/O: pre-encoded Send frames (as the
//! load engine writes them) go through `parse_client_at` + `Shard::on_frame`,
//! one read chunk of `CHUNK` frames per iteration, exactly as the reader task
//! does it (one `Instant::now()`/`now_us()` per chunk).
//!
//! - `routing/local/{64B,1KiB}`: sender and recipient on the same shard; the
//!   Deliver is queued on the recipient's OutBuf, which is drained with `take`
//!   (and recycled, as the writer does) after every chunk. `64B_inline64` is the
//!   same with `inline_payload_max = 64` (payload copied, not queued by reference).
//! - `routing/remote_post/{64B,1KiB}`: 2 shards, recipient homed on the other one:
//!   the message is posted to `shard.outbox`, which is cleared after every chunk.
//! - `routing/remote_deliver/{64B,1KiB}`: as above, and the posted batch is then
//!   handled by the recipient's shard (`on_mail` -> Deliver queued, drained):
//!   both halves of a cross-shard message, without the ring between them.
//!
//! Throughput is messages routed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringrouter::outbuf::WriteBatch;
use ringrouter::shard::{home_shard, now_us, Flow, SessionKey, Shard};
use ringrouter::stats::ShardStats;
use ringrouter::Config;
use ringrouter_proto::codec::frames;
use ringrouter_proto::fast::parse_client_at;
use ringrouter_proto::send::{put_send_header, SendHeader, Target};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Frames per simulated read chunk (and between two drains).
const CHUNK: usize = 256;

const SIZES: [(usize, &str); 2] = [(64, "64B"), (1024, "1KiB")];

fn shard(id: usize, n: usize) -> Shard {
    shard_with(id, n, Config::default())
}

fn shard_with(id: usize, n: usize, cfg: Config) -> Shard {
    Shard::new(id, n, Arc::new(cfg), Arc::new(ShardStats::default()))
}

/// A user name whose home is shard `home` of `n`.
fn user_homed_on(home: usize, n: usize, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}{i}"))
        .find(|u| home_shard(u.as_bytes(), n) == home)
        .expect("some name hashes to every shard")
}

/// `CHUNK` Send frames to `to`, as one read buffer.
fn send_chunk(to: &str, size: usize) -> (Bytes, Vec<std::ops::Range<usize>>) {
    let mut buf = BytesMut::new();
    for i in 0..CHUNK {
        put_send_header(&mut buf, &SendHeader::to(Target::User(to)), size);
        buf.extend((0..size).map(|j| (i + j) as u8));
    }
    let chunk = buf.freeze();
    let ranges: Vec<_> = frames(&chunk).collect();
    assert_eq!(ranges.len(), CHUNK);
    (chunk, ranges)
}

/// Routes every frame of `chunk` from session `from`, as the reader does.
fn route_chunk(
    sh: &mut Shard,
    from: SessionKey,
    chunk: &Bytes,
    ranges: &[std::ops::Range<usize>],
    blocked: &mut Vec<SessionKey>,
) {
    let now = Instant::now();
    let ts = now_us();
    for r in ranges {
        let frame = parse_client_at(chunk, r.clone()).expect("valid send");
        let flow = sh.on_frame(from, frame, now, ts, blocked);
        debug_assert_eq!(flow, Flow::Continue);
    }
}

/// Drains a session's OutBuf as the writer does (take, then recycle the batch).
fn drain(sh: &mut Shard, key: SessionKey, spare: &mut Option<Box<WriteBatch>>) -> usize {
    let s = sh.sessions.get_mut(key).expect("recipient session");
    let mut batch = s.out.take(spare.take());
    let n = black_box(batch.total());
    s.out.recycle(&mut batch);
    *spare = Some(batch);
    n
}

fn local(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing/local");
    g.throughput(Throughput::Elements(CHUNK as u64));
    // The default config queues every payload by reference (inline_payload_max = 0);
    // `64B_inline64` copies it next to its header instead (one iovec per message).
    let cases = [(64, "64B", 0), (1024, "1KiB", 0), (64, "64B_inline64", 64)];
    for (size, name, inline_max) in cases {
        let cfg = Config {
            inline_payload_max: inline_max,
            ..Config::default()
        };
        let mut sh = shard_with(0, 1, cfg);
        let a = sh.register("alice", "d".into(), -1).unwrap();
        let b = sh.register("bob", "d".into(), -1).unwrap();
        let (chunk, ranges) = send_chunk("bob", size);
        let mut blocked = Vec::new();
        let mut spare = None;
        g.bench_function(BenchmarkId::from_parameter(name), |bn| {
            bn.iter(|| {
                route_chunk(&mut sh, a, black_box(&chunk), &ranges, &mut blocked);
                blocked.clear();
                drain(&mut sh, b, &mut spare)
            });
            assert_eq!(sh.counters.delivered, sh.counters.msgs_in);
            assert_eq!(sh.counters.frames_rejected, 0);
        });
    }
    g.finish();
}

fn remote_post(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing/remote_post");
    g.throughput(Throughput::Elements(CHUNK as u64));
    let to = user_homed_on(1, 2, "bob");
    for (size, name) in SIZES {
        let mut sh = shard(0, 2);
        let a = sh.register("alice", "d".into(), -1).unwrap();
        let (chunk, ranges) = send_chunk(&to, size);
        let mut blocked = Vec::new();
        g.bench_function(BenchmarkId::from_parameter(name), |bn| {
            bn.iter(|| {
                route_chunk(&mut sh, a, black_box(&chunk), &ranges, &mut blocked);
                // What the flusher hands the ring, given back emptied.
                let mut n = 0;
                while let Some((batch, weight)) = sh.next_batch(1) {
                    n += batch.len();
                    sh.batch_sent(1, batch.len(), weight);
                    sh.spare_batch(black_box(batch));
                }
                n
            });
            assert_eq!(sh.counters.frames_rejected, 0);
        });
    }
    g.finish();
}

fn remote_deliver(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing/remote_deliver");
    g.throughput(Throughput::Elements(CHUNK as u64));
    let to = user_homed_on(1, 2, "bob");
    for (size, name) in SIZES {
        let mut s0 = shard(0, 2);
        let mut s1 = shard(1, 2);
        let a = s0.register("alice", "d".into(), -1).unwrap();
        let b = s1.register(&to, "d".into(), -1).unwrap();
        let (chunk, ranges) = send_chunk(&to, size);
        let mut blocked = Vec::new();
        let mut spare = None;
        g.bench_function(BenchmarkId::from_parameter(name), |bn| {
            bn.iter(|| {
                route_chunk(&mut s0, a, black_box(&chunk), &ranges, &mut blocked);
                // What the flusher hands the ring, and the consumer gives back emptied.
                while let Some((mut batch, weight)) = s0.next_batch(1) {
                    s0.batch_sent(1, batch.len(), weight);
                    s1.begin_batch();
                    for mail in batch.drain(..) {
                        let h = s1.on_mail(mail, &mut blocked);
                        debug_assert!(h.is_none());
                    }
                    s0.spare_batch(batch);
                }
                blocked.clear();
                drain(&mut s1, b, &mut spare)
            });
            assert_eq!(s1.counters.delivered, s0.counters.msgs_in);
            assert_eq!(s0.counters.frames_rejected, 0);
        });
    }
    g.finish();
}

criterion_group!(benches, local, remote_post, remote_deliver);
criterion_main!(benches);
