//! Frame codec: encode and decode of the hot frames at 64 B, 1 KiB and 64 KiB payloads.
//!
//! - `codec/encode_send`: a `ClientFrame{send}` through prost via `encode_frame`.
//! - `codec/decode_send_chunk`: the router's read path: a buffer of many Send frames ->
//!   `split_frames` + `frames` + `parse_client_at` for each frame.
//! - `codec/put_deliver`: `put_deliver_header` + payload append (the router's write path
//!   when a payload is copied inline).
//! - `codec/parse_deliver`: `parse_server` of one Deliver body (the load engine's receive path).
//!
//! Throughput is in frame bytes (length prefix, header and payload).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ringrouter_proto::codec::{encode_frame, frames, next_frame, split_frames};
use ringrouter_proto::fast::{
    deliver_seq_payload, parse_client_at, parse_server, put_deliver_header, DeliverStamp, Inbound,
    ServerView,
};
use ringrouter_proto::v1::{client_frame, ClientFrame, Send};
use ringrouter_proto::DEFAULT_MAX_FRAME_BYTES;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (64 * 1024, "64KiB")];

/// Bytes of frames in one decode buffer (at least `MIN_FRAMES` frames).
const DECODE_BUF_BYTES: usize = 256 * 1024;
const MIN_FRAMES: usize = 16;

fn payload(size: usize) -> Bytes {
    Bytes::from((0..size).map(|i| (i * 31 + 7) as u8).collect::<Vec<u8>>())
}

fn send_frame(size: usize, i: u64) -> ClientFrame {
    ClientFrame {
        kind: Some(client_frame::Kind::Send(Send {
            request_id: 1000 + i,
            to_user: "user-recipient-0042".into(),
            to_room: String::new(),
            payload: payload(size),
            want_result: false,
            msg_id: 0,
            ephemeral: false,
            client_seq: 0,
        })),
    }
}

fn stamp() -> DeliverStamp<'static> {
    DeliverStamp {
        seq: 123_456,
        from_user: b"user-sender-0042",
        to_room: b"",
        server_ts_us: 1_760_000_000_000_000,
        // (Shard 0's id layout: the shard + 1 in the top 10 bits, a clock-seeded counter.)
        msg_id: (1u64 << 54) | 452_250_000_987_654,
    }
}

fn encode_send(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec/encode_send");
    for (size, name) in SIZES {
        let frame = send_frame(size, 1);
        let mut out = BytesMut::with_capacity(size + 128);
        encode_frame(&frame, &mut out);
        g.throughput(Throughput::Bytes(out.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &frame, |b, frame| {
            b.iter(|| {
                out.clear();
                encode_frame(black_box(frame), &mut out);
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn decode_send_chunk(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec/decode_send_chunk");
    for (size, name) in SIZES {
        let mut stream = BytesMut::new();
        let mut n = 0u64;
        while stream.len() < DECODE_BUF_BYTES || n < MIN_FRAMES as u64 {
            encode_frame(&send_frame(size, n), &mut stream);
            n += 1;
        }
        let stream = stream.freeze();
        g.throughput(Throughput::Bytes(stream.len() as u64));
        g.bench_with_input(
            BenchmarkId::new(name, format!("{n}frames")),
            &stream,
            |b, stream| {
                b.iter_batched_ref(
                    // The copy into a fresh read buffer is setup, not measured.
                    || BytesMut::from(&stream[..]),
                    |buf| {
                        let (chunk, err) = split_frames(buf, DEFAULT_MAX_FRAME_BYTES);
                        assert!(err.is_none());
                        let mut got = 0u64;
                        let mut payload_bytes = 0usize;
                        for range in frames(&chunk) {
                            match parse_client_at(&chunk, range) {
                                Ok(Inbound::Send(v)) => {
                                    payload_bytes += v.payload.len();
                                    got += black_box(v).request_id & 1;
                                }
                                other => panic!("not a send: {other:?}"),
                            }
                        }
                        black_box((got, payload_bytes));
                    },
                    BatchSize::LargeInput,
                )
            },
        );
    }
    g.finish();
}

fn put_deliver(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec/put_deliver");
    let st = stamp();
    for (size, name) in SIZES {
        let p = payload(size);
        let mut out = BytesMut::with_capacity(size + 128);
        put_deliver_header(&mut out, &st, size);
        out.extend_from_slice(&p);
        g.throughput(Throughput::Bytes(out.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &p, |b, p| {
            b.iter(|| {
                out.clear();
                let p = black_box(p);
                put_deliver_header(&mut out, black_box(&st), p.len());
                out.extend_from_slice(p);
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn parse_deliver(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec/parse_deliver");
    let st = stamp();
    for (size, name) in SIZES {
        let mut out = BytesMut::new();
        put_deliver_header(&mut out, &st, size);
        out.extend_from_slice(&payload(size));
        let framed = out.len();
        let body = next_frame(&mut out, usize::MAX).unwrap().unwrap();
        g.throughput(Throughput::Bytes(framed as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| match parse_server(black_box(&body[..])) {
                Ok(ServerView::Deliver {
                    seq,
                    payload,
                    msg_id,
                    ..
                }) => black_box((seq, payload, msg_id)),
                other => panic!("not a deliver: {other:?}"),
            })
        });
        // What the load engine reads of each delivery: the seq and the payload only.
        g.bench_with_input(BenchmarkId::new("seq_payload", name), &body, |b, body| {
            match deliver_seq_payload(black_box(&body[..])) {
                Some(_) => b.iter(|| black_box(deliver_seq_payload(black_box(&body[..])))),
                None => panic!("not the router's layout: {v:?}", v = parse_server(body)),
            }
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    encode_send,
    decode_send_chunk,
    put_deliver,
    parse_deliver
);
criterion_main!(benches);
