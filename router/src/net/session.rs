//! A session's tasks on its home shard: adopting a handed-over connection, the
//! reader and the writer, inside one tracing span per session.
//!
//! A session's reader follows the nats-server rhythm: read a buffer, decode every
//! frame in it, route each one (queue Delivers on local sessions, append to the
//! outgoing batch of other shards), and only then await: the woken writers and
//! the flusher run after it, so each dirty session is flushed by one writev per
//! loop turn and each target shard gets one batch.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use bytes::BytesMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncWriteRent, Canceller, Splitable,
};
use monoio::net::tcp::TcpOwnedReadHalf;
use monoio::net::TcpStream;
use prost::Message;
use ringrouter_proto::codec::{encode_frame, frame_bytes_needed, frames, split_frames};
use ringrouter_proto::fast::parse_client_in;
use ringrouter_proto::reply;
use ringrouter_proto::v1::{client_frame, server_frame, ClientFrame, LoginResult, ServerFrame};
use ringrouter_proto::Status;
use tracing::Instrument;

use super::stream::Conn;
use super::CLOSE_FLUSH;
use crate::bufpool::{self, MIN_READ, READ_BUF};
use crate::outbuf::WriteBatch;
use crate::prelogin::truncated_reason;
use crate::shard::resume::ResumeAsk;
use crate::shard::{
    now_us, CloseReason, Flow, Handover, LastDest, PinningWrite, SessionKey, Shard,
};
use crate::shared::ConnGuard;
use crate::transport::{ws, Ingested, Layers};

/// Starts a connection handed over by another shard: registers its session here and
/// spawns the session's tasks (see [`start_session`]).
pub(crate) fn adopt(shard: &Rc<RefCell<Shard>>, h: Handover) {
    let Handover {
        fd,
        user,
        device,
        request_id,
        resume,
        leftover,
        layers,
        guard,
    } = h;
    let std_stream = std::net::TcpStream::from(fd);
    if let Err(e) = std_stream.set_nonblocking(true) {
        tracing::warn!(error = %e, "adopting a connection failed");
        return;
    }
    let stream = match TcpStream::from_std(std_stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "adopting a connection failed");
            return;
        }
    };
    shard.borrow_mut().counters.handovers_in += 1;
    start_session(
        shard, stream, user, device, request_id, resume, leftover, layers, guard,
    );
}

/// Registers the session on this (home) shard and queues its LoginResult, then
/// spawns its reader and writer as two tasks of their own.
///
/// Nothing here is async: the pre-login task (or the mail loop, for a handed-over
/// connection) ends once the session is registered, so an idle session holds only
/// its two small task futures and its [`Session`](crate::shard::Session) slot, not
/// the pre-login conversation's state (its futures hold timers and are kilobytes).
#[allow(clippy::too_many_arguments)]
pub(super) fn start_session(
    shard: &Rc<RefCell<Shard>>,
    stream: TcpStream,
    user: String,
    device: String,
    request_id: u64,
    resume: ResumeAsk,
    buf: BytesMut,
    layers: Option<Box<Layers>>,
    guard: ConnGuard,
) {
    let fd = stream.as_raw_fd();
    let registered = shard.borrow_mut().register(&user, device.clone(), fd);
    let key = match registered {
        Ok(k) => k,
        Err(e) => {
            shard.borrow_mut().counters.login_failed(e.status());
            let f = reply::login_result_frame(request_id, e.status(), e.to_string());
            let mut out = BytesMut::new();
            encode_frame(&f, &mut out);
            let mut conn = Conn::with_layers(stream, layers);
            monoio::spawn(async move {
                conn.close_bounded_with(out, ws::code::POLICY, "login refused")
                    .await;
                drop(guard);
            });
            return;
        }
    };
    let span = {
        let mut sh = shard.borrow_mut();
        let session_id = sh.session_id(key).map_or(0, |id| id.to_u64());
        // One span per session around its reader and writer (level DEBUG: a disabled
        // span costs nothing per poll, see `RUST_LOG`).
        let span = tracing::debug_span!(
            "session",
            user = %user,
            device = %device,
            session = session_id,
            shard = sh.id
        );
        let grant = sh.resume_login(key, resume);
        let lr = LoginResult {
            request_id,
            status: Status::Ok as i32,
            reason: String::new(),
            session_id,
            user,
            shard: sh.id as u32,
            device,
            heartbeat_ms: sh.cfg.heartbeat_interval.as_millis().min(u32::MAX as u128) as u32,
            max_frame_bytes: sh.cfg.max_frame_bytes.min(u32::MAX as usize) as u32,
            resume_token: grant.token.into(),
            resumed: grant.resumed,
            client_seq_acked: grant.client_seq_acked,
            resume_window_ms: sh.cfg.resume_window.as_millis().min(u32::MAX as u128) as u32,
        };
        // The LoginResult goes out with the first page of the offline backlog: once a
        // client holds it, what it missed is already on its way, ahead of anything new.
        sh.start_backlog(
            key,
            ServerFrame {
                kind: Some(server_frame::Kind::LoginResult(lr)),
            },
        );
        span
    };
    let max_frame = shard.borrow().cfg.max_frame_bytes;
    let layers = layers.map(|mut l| {
        l.set_max_frame(max_frame);
        Rc::new(RefCell::new(*l))
    });
    let (reader, writer) = stream.into_split();
    let writer = monoio::spawn(
        write_loop(shard.clone(), key, writer, layers.clone()).instrument(span.clone()),
    );
    let reader = Reader {
        shard: shard.clone(),
        key,
        fd,
        reader,
        buf,
        layers,
        _guard: guard,
    };
    monoio::spawn(reader.run(writer).instrument(span));
}

/// What a session's reader task owns.
struct Reader {
    shard: Rc<RefCell<Shard>>,
    key: SessionKey,
    fd: RawFd,
    reader: TcpOwnedReadHalf,
    /// Bytes read and not parsed yet (the Login's leftover at first).
    buf: BytesMut,
    layers: Option<Rc<RefCell<Layers>>>,
    /// Keeps the connection counted until the session ends.
    _guard: ConnGuard,
}

impl Reader {
    /// Runs the reader until the connection ends; then waits for the writer and
    /// forgets the session. (An `async move` block, not an `async fn`: see `read_loop`.)
    #[allow(clippy::manual_async_fn)] // on purpose: see the note above
    fn run(self, writer: monoio::task::JoinHandle<()>) -> impl Future<Output = ()> {
        let Reader {
            shard,
            key,
            fd,
            reader,
            buf,
            layers,
            _guard: guard,
        } = self;
        async move {
            // Frames pipelined after the Login are answered after the LoginResult.
            poll_fn(|cx| {
                let mut sh = shard.borrow_mut();
                match sh.sessions.get_mut(key) {
                    Some(s) if s.login_frame.is_some() && s.closing.is_none() => {
                        s.drain_waiters.push(cx.waker().clone());
                        Poll::Pending
                    }
                    _ => Poll::Ready(()),
                }
            })
            .await;
            read_loop(&shard, key, fd, reader, buf, layers.as_ref()).await;
            // Over TLS / WebSocket the writer answers the close (close frame,
            // close_notify).
            let reason = if layers.is_some() {
                CloseReason::PeerClosing
            } else {
                CloseReason::PeerClosed
            };
            shard.borrow_mut().close(key, reason, None);
            let _ = writer.await;
            shard.borrow_mut().remove(key);
            // Counted until here. (This use also moves the guard into the block: without
            // it the guard would go when `run` returns, before the task starts.)
            drop(guard);
        }
    }
}

/// A read chunk with frames left (see `read_loop`): the chunk, where its next frame
/// starts, and the chunk's framing error (told once the frames before it are handled).
type Held = (bytes::Bytes, usize, Option<(Status, String)>);

/// A read chunk past this size whose Send payloads were under a quarter of it makes its
/// session's payloads copied from then on (see `read_loop`).
const SPARSE_CHUNK: usize = 8 << 10;

/// Deliveries (and live frames, and frames other than Sends: `Shard::fan_work`) one
/// reader's frames may make before the rest of its chunk waits for the shard's other
/// ready tasks: a 64 KiB chunk of small room messages
/// to a room of 500 is 1.3 M deliveries, which held every other session of the shard
/// (their reads, writes and answers) for up to seconds. About 20 ms of work at most; a
/// fan-out benchmark chunk (64 KiB to 64 members, ~51 000 deliveries) is not split.
const TURN_DELIVERIES: u64 = 64 * 1024;

/// Bytes of frames other than Sends (decoded whole by prost: a CreateRoom's member list
/// is a string each) one reader's chunks may hold before the rest waits for the shard's
/// other ready tasks. A CreateRoom of 500 000 empty member names is 1 MB, under
/// `--max-frame-bytes`, and took ~6 ms to decode before its count was refused: 16 reads
/// of them a turn, 4 connections sending them held others' Pings 25-38 ms (p50).
const SLOW_TURN_BYTES: usize = 64 << 10;

/// Frames from this size on count for [`SLOW_TURN_BYTES`].
const SLOW_FRAME_MIN: usize = 4 << 10;

/// Bytes of a write batch a TLS or WebSocket session encodes and writes at a time.
const EGRESS_SLICE: usize = 256 << 10;

/// Most reads a session's reader makes (socket reads, or passes of the TLS / WebSocket
/// layers) before it lets the rest of its shard run ([`let_the_shard_run`]; a plain
/// reader fewer, see `read_loop`). Its reads do not wait while bytes are there: a client
/// that keeps its socket full (sends faster than the shard takes its bytes: a WebSocket
/// stream of many-frame messages or pings, ...) kept its reader always ready, and so every
/// other task of the shard (other sessions, accept loops, logins handed over, mail) from
/// running for as long as it sent. (Timers, and what other threads wake, come in at the
/// runtime's park, or the pump: `turns` makes a busy shard park every 10 ms.)
const READS_PER_YIELD: u32 = 16;

use crate::turns::let_the_shard_run;

/// Whether `frame` is one Send and nothing else (its kind's tag, field 2 length-delimited,
/// whose length ends the frame): any other frame counts for SLOW_TURN_BYTES. Told from the
/// bytes before the frame is parsed (matched on the parsed frame, the Send path took ~50
/// instructions more a message); a frame that only begins as a Send (an empty Send, then a
/// CreateRoom that prost decodes whole, the last kind winning) counts.
#[inline(always)]
fn one_send(frame: &[u8]) -> bool {
    const SEND_TAG: u8 = (2 << 3) | 2;
    match frame.split_first() {
        Some((&SEND_TAG, rest)) => matches!(
            ringrouter_proto::codec::peek_varint(rest),
            Ok(Some((len, n))) if (n as u64).checked_add(len) == Some(rest.len() as u64)
        ),
        _ => false,
    }
}

/// (A plain fn returning an `async move` block, not an `async fn`: an async fn's future
/// keeps its arguments twice, as they came and as the body's locals, and this one is
/// in every session's reader: 64 bytes.)
#[allow(clippy::manual_async_fn)] // on purpose: see the note above
fn read_loop<'a>(
    shard: &'a Rc<RefCell<Shard>>,
    key: SessionKey,
    fd: RawFd,
    mut reader: TcpOwnedReadHalf,
    mut buf: BytesMut,
    layers: Option<&'a Rc<RefCell<Layers>>>,
) -> impl Future<Output = ()> + 'a {
    async move {
        let max_frame = shard.borrow().cfg.max_frame_bytes;
        let mut blocked: Vec<SessionKey> = Vec::new();
        // A chunk whose frames were not all handled: the session reached its budget
        // mid-chunk.
        // (Boxed: the reader future of every session, idle ones included, carries 8 bytes
        // for it, not the chunk's 80.)
        let mut held: Option<Box<Held>> = None;
        // How far the held chunk's Acks were taken ahead (its frames are scanned once).
        let mut acks_taken_to = 0;
        // Bytes were read ahead into `buf` while a chunk was held: once the held chunk is
        // done, they are handled before the socket is read again (they may be all there is).
        let mut read_ahead_left = false;
        // A payload slice kept from a read chunk (queued by reference, unacked) keeps the
        // whole chunk alive while the bounds count only the payload. Once a chunk of this
        // session held mostly other bytes (padding, pings, acks: its Send payloads under a
        // quarter of it), its payloads are copied out of their chunks from then on: at most
        // one chunk per session is ever kept by few payload bytes.
        let mut copy = false;
        // How the connection ended, when a read ahead found it (see `read_acks_ahead`).
        let mut end: Option<io::Result<usize>> = None;
        // Reads since the reader last let its shard run (see READS_PER_YIELD).
        let mut reads: u32 = 0;
        // The shard counts bytes this reader holds of a frame bigger than a read buffer
        // (`account_input`).
        let mut input_counted = false;
        loop {
            // This chunk's frames made a turn's worth of deliveries (see `TURN_DELIVERIES`).
            let mut turn_over = false;
            let flow = {
                let mut sh = shard.borrow_mut();
                let (work, stored, posted) = (sh.fan_work(), sh.store_work(), sh.posted);
                let now = Instant::now();
                let ts = now_us();
                let mut flow = Flow::Continue;
                // This session was closed past the input budget as its chunk was split.
                let mut input_closed = false;
                // Every complete frame in one chunk: one reference count for all of
                // them; payloads become slices of it.
                let (chunk, start, framing_error) = match held.take() {
                    Some(h) => *h,
                    None => {
                        acks_taken_to = 0;
                        read_ahead_left = false;
                        let (chunk, e) = split_frames(&mut buf, max_frame);
                        if chunk.len() > READ_BUF {
                            // `buf` is the rest of a big frame's allocation, which it would
                            // keep (reads and the layers' frames go on in it: 1 MiB an idle
                            // WebSocket or TLS session after one big frame, counted nowhere):
                            // what follows the frame is moved out, if anything.
                            buf = if buf.is_empty() {
                                BytesMut::new()
                            } else {
                                BytesMut::from(&buf[..])
                            };
                        }
                        if input_counted || buf.len() >= COUNTED_FROM {
                            // What is left is the start of a frame still arriving: counted
                            // from its size (a big frame that completed is not any more).
                            let bytes = big_input(&buf, layers);
                            input_counted = bytes > 0;
                            input_closed = !sh.hold_input(key, bytes);
                        }
                        sh.chunk_payload = 0;
                        (chunk, 0, e.map(|e| (e.status(), e.to_string())))
                    }
                };
                let mut bad = None;
                let mut rest = None;
                // Whether a frame of this chunk queued an answer on a session over its bound
                // or took this session to `max_requests_in_flight` (the shard's flag, left by
                // work done between chunks, is not this chunk's), or this session got an
                // answer over its bound since its queue last drained (`answered_over`: also
                // one from the store, between chunks).
                let mut answered_over = sh.sessions.get(key).is_some_and(|s| s.answered_over);
                sh.answers_over = false;
                // The intake was open when this read began, but other readers may have
                // filled the store queue since: all of them woken together, each handled a
                // chunk's first frame past the bound. So a chunk waits whole now.
                let waits = input_closed || (start < chunk.len() && !sh.store_open_to(key));
                if waits {
                    rest = Some(start);
                }
                let mut frame_at = start;
                // Bytes of frames decoded whole (see SLOW_TURN_BYTES).
                let mut slow = 0usize;
                for r in frames(&chunk[start..]).take_while(|_| !waits) {
                    let range = start + r.start..start + r.end;
                    let end = range.end;
                    // Where the frame's length prefix begins.
                    let begin = std::mem::replace(&mut frame_at, end);
                    // The session's last recipient is known to be valid: a Send to it again
                    // skips the parser's UTF-8 check.
                    let checked = sh
                        .sessions
                        .get(key)
                        .and_then(|s| s.last_dest.as_deref())
                        .map_or(&[][..], LastDest::name);
                    // (Smaller ones cost at most what a read buffer's worth of them does,
                    // READS_PER_YIELD times a turn, as before.)
                    if range.len() >= SLOW_FRAME_MIN && !one_send(&chunk[range.clone()]) {
                        slow += range.len();
                    }
                    match parse_client_in(&chunk, range, copy, checked) {
                        Ok(frame) => match sh.on_frame(key, frame, now, ts, &mut blocked) {
                            Flow::Continue => {}
                            Flow::Stop => {
                                flow = Flow::Stop;
                                break;
                            }
                            Flow::Again => {
                                // Handled again once the session's wait (below) ends.
                                rest = Some(begin);
                                break;
                            }
                        },
                        Err(e) => {
                            bad = Some((Status::BadFrame, e.to_string()));
                            break;
                        }
                    }
                    // Past its budget (its own answers queued over `max_pending_bytes`, or
                    // `max_requests_in_flight` requests waiting on the store), the session's
                    // next frames wait for it to drain: a chunk of cheap requests with big
                    // answers queues at most one answer past the bound.
                    // (An answer queued on this session over its bound sets the shard's flag
                    // too: the session's own mark is read once, at the chunk's start.)
                    if sh.answers_over {
                        sh.answers_over = false;
                        answered_over = true;
                    }
                    if answered_over && end < chunk.len() {
                        if sh.sessions.get(key).is_none_or(|s| s.closing.is_some()) {
                            // Closed by that answer (past its hard cap).
                            flow = Flow::Stop;
                            break;
                        }
                        if !sh.drained(key) || sh.requests_full(key) || sh.answer_waits(key) {
                            rest = Some(end);
                            break;
                        }
                    }
                    if end < chunk.len()
                        && (sh.fan_work().wrapping_sub(work) >= TURN_DELIVERIES
                            || slow >= SLOW_TURN_BYTES)
                    {
                        rest = Some(end);
                        turn_over = true;
                        break;
                    }
                    // The store's queue reached its bound: the rest of the chunk once it is
                    // under it again (the intake wait below). A chunk of room messages to a
                    // room whose members are offline is a store request per message and
                    // member: checked only between chunks, one chunk put 96 000 requests in
                    // a queue bounded at 16 384. (Looked at only once this chunk has made
                    // store requests or put records behind waiting requeues: a plain message
                    // does neither.)
                    if end < chunk.len() && sh.store_work() != stored && sh.store_full() {
                        rest = Some(end);
                        break;
                    }
                }
                // (A chunk of one big such frame: the shard's other tasks before the next.)
                turn_over |= slow >= SLOW_TURN_BYTES;
                match rest {
                    Some(at) if flow == Flow::Continue && bad.is_none() => {
                        held = Some(Box::new((chunk, at, framing_error)));
                    }
                    _ => {
                        bad = bad.or(framing_error);
                        if chunk.len() > SPARSE_CHUNK && sh.chunk_payload * 4 < chunk.len() {
                            copy = true;
                        }
                    }
                }
                if let Some((code, reason)) = bad {
                    if flow == Flow::Continue {
                        sh.close(key, CloseReason::BadFrame, Some((code, &reason)));
                        flow = Flow::Stop;
                    }
                }
                // The session's own answers (errors, Pongs, results) count against its
                // budget like deliveries do: a chunk that queued one while the session is
                // over it is the last read until its queue drains (or it is closed as a slow
                // consumer). A chunk that asked for nothing (acks) does not stop the reader:
                // a receiver whose queue its senders keep at the bound must still have its
                // acks taken, or it is cut at `max_unacked_per_session` while it keeps up.
                if answered_over && !sh.drained(key) && !blocked.contains(&key) {
                    blocked.push(key);
                }
                if sh.posted != posted && sh.pipe_filling() {
                    // (See `Shard::pipe_lane_open`.)
                    sh.pipe_posted.insert(key);
                }
                if sh.sessions.get(key).is_none_or(|s| s.closing.is_some()) {
                    flow = Flow::Stop;
                }
                flow
            };
            if flow == Flow::Stop {
                return;
            }
            if turn_over {
                // The rest of the chunk after the shard's other ready tasks.
                let_the_shard_run().await;
            }
            // Backpressure: stop reading while a local recipient is over its bound,
            // or while the outgoing batches to other shards are piling up.
            // Remote recipients pause this reader through its shard's pause table
            // (`shard::pause`) and take the pause back with `Mail::Resume`.
            // A session at `max_requests_in_flight` waits for a store answer the same way,
            // and one that asked for a big answer (a History page) until it is written.
            // Its own queue (its answers went over the bound) is waited for until it drains
            // once: senders may refill it before this reader runs, and a reader that waited
            // for it to be found under the bound would not read (acks included) while they
            // keep it there. Waiting on others, it reads its socket ahead (see
            // `read_acks_ahead`): bytes read then are handled in order once the wait ends,
            // before the next read.
            let waits =
                |sh: &Shard| sh.paused(key) || sh.requests_full(key) || sh.answer_waits(key);
            let mut ahead = false;
            if !blocked.is_empty() || waits(&shard.borrow()) {
                let own_drains = shard.borrow().sessions.get(key).map_or(0, |s| s.drains);
                // Read ahead only for a wait on others: a session waiting on its own queue
                // goes on after one drain (above), and one waiting on the store soon.
                // A wait for its own big answer reads acks ahead too, a chunk held or not: it
                // lasts the store's answer and the writing of what is queued ahead of it,
                // while deliveries go on. The held chunk's own Acks are taken first (they
                // are handled again, in order, after the wait: an Ack again changes nothing).
                let answer_wait = shard.borrow().answer_waits(key);
                if let (true, Some(h)) = (answer_wait, held.as_deref()) {
                    let (chunk, at) = (&h.0, h.1.max(acks_taken_to));
                    let mut sh = shard.borrow_mut();
                    for f in frames(chunk.get(at..).unwrap_or_default()) {
                        if let Some(up_to) = chunk.get(at + f.start..at + f.end).and_then(ack_of) {
                            sh.ack_ahead(key, up_to);
                        }
                    }
                    acks_taken_to = chunk.len();
                }
                let on_others = answer_wait
                    || (held.is_none()
                        && (blocked.iter().any(|&k| k != key) || shard.borrow().paused(key)));
                let mut wait = std::pin::pin!(poll_fn(|cx| {
                    let mut sh = shard.borrow_mut();
                    let drained_once = sh.sessions.get(key).is_some_and(|s| s.drains != own_drains);
                    blocked.retain(|&k| !sh.drained(k) && (k != key || !drained_once));
                    match blocked.last() {
                        Some(&k) => {
                            sh.wait_drain(k, cx.waker());
                            Poll::Pending
                        }
                        None if waits(&sh) => {
                            sh.wait_drain(key, cx.waker());
                            Poll::Pending
                        }
                        None => Poll::Ready(()),
                    }
                }));
                // Until the session holds deliveries to ack, a plain wait (its own writer's
                // writes wake it to look again); then a wait that reads ahead.
                let read_ahead = poll_fn(|cx| {
                    if wait.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                    if !on_others {
                        return Poll::Pending;
                    }
                    let mut sh = shard.borrow_mut();
                    if sh
                        .sessions
                        .get(key)
                        .is_some_and(|s| s.closing.is_none() && !s.unacked.is_empty())
                    {
                        return Poll::Ready(true);
                    }
                    sh.wait_drain(key, cx.waker());
                    Poll::Pending
                })
                .await;
                if read_ahead {
                    let read = Reading {
                        shard,
                        key,
                        fd,
                        reader: &reader,
                        layers,
                        input_counted: &mut input_counted,
                    };
                    let found;
                    (ahead, found) = Box::pin(read_acks_ahead(read, &mut buf, wait)).await;
                    end = end.or(found);
                }
            }
            poll_fn(|cx| {
                let mut sh = shard.borrow_mut();
                if sh.sessions.get(key).is_none_or(|s| s.closing.is_some()) {
                    Poll::Ready(())
                } else {
                    let p = sh.poll_session_intake(key, cx.waker());
                    if p.is_pending() {
                        // Also woken if the session closes meanwhile (closing wakes its
                        // drain waiters), so it ends and frees its socket even while the
                        // shard's intake stays paused.
                        sh.wait_drain(key, cx.waker());
                    }
                    p
                }
            })
            .await;
            read_ahead_left |= ahead;
            if held.is_some() || read_ahead_left {
                // The rest of the chunk first, or what was read ahead; no read meanwhile. A
                // session closed while it waited (kicked, slow consumer, shutdown) handles
                // none of it.
                if shard
                    .borrow()
                    .sessions
                    .get(key)
                    .is_none_or(|s| s.closing.is_some())
                {
                    return;
                }
                continue;
            }
            // As many reads in a row as the shard has always-ready tasks taking turns, up to
            // READS_PER_YIELD. With one busy connection a turn of the shard is short, and the
            // writers' turn after each of its chunks is what its latency (and a windowed
            // sender's rate) needs: it goes behind the others after every read (16 reads a
            // turn: 1 pair x 64 B -10% msgs/s). With many, a turn is long, reads in a row save
            // turns, and a read that waited for bytes (the shard's other tasks ran meanwhile)
            // starts the count again: 16 x 64 B +4%, 256 x 64 B +2% (with the parks of
            // `turns`). The
            // layers' readers (TLS, WebSocket), whose reads may only decode bytes already
            // read: READS_PER_YIELD reads of any kind.
            let every = if layers.is_some() {
                READS_PER_YIELD
            } else {
                (crate::turns::taking_turns() as u32).clamp(1, READS_PER_YIELD)
            };
            reads = reads.wrapping_add(1);
            if reads >= every {
                reads = 0;
                let_the_shard_run().await;
            }
            // The read waited for bytes: the task was suspended, the shard's other tasks ran.
            let mut waited = false;
            let res = if let Some(end) = end.take() {
                // Found by a read ahead (the bytes before it are handled).
                end
            } else if let Some(layers) = layers {
                // Boxed: a plain session's reader future does not carry its state.
                let counted = &mut input_counted;
                Box::pin(read_layered(
                    shard, key, fd, &reader, layers, &mut buf, counted,
                ))
                .await
            } else if buf.is_empty() {
                read_fresh(fd, &reader, &mut buf, &mut waited).await
            } else {
                // The rest of a frame: it is on its way, the buffer is needed.
                let want = frame_bytes_needed(&buf).unwrap_or(0).max(MIN_READ);
                if buf.capacity() - buf.len() < want {
                    // Room for a read buffer's worth in all, not on top of what is there:
                    // a buffer whose front was taken then moves the partial frame to its
                    // start in place (asking for READ_BUF more made `bytes` reallocate and
                    // copy the whole 64 KiB, the taken front included).
                    buf.reserve(want.max(READ_BUF.saturating_sub(buf.len())));
                }
                // Bytes already there are read at once (a nonblocking recv); the read op
                // (io_uring: a RECV the reader waits on, letting every writer run in
                // between) only when there are none.
                match recv_into(fd, &mut buf) {
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) =>
                    {
                        let (len, cap) = (buf.len(), buf.capacity());
                        let read = reader.read(monoio::buf::IoBufMut::slice_mut(buf, len..cap));
                        let (res, slice) = crate::turns::noting_wait(read, &mut waited).await;
                        buf = slice.into_inner();
                        res
                    }
                    res => res,
                }
            };
            if waited && every > 1 {
                reads = 0;
            }
            match res {
                Ok(0) if !buf.is_empty() => {
                    // The peer closed its sending side inside a frame: a truncated
                    // frame is a BAD_FRAME like any other (it may still read it).
                    let mut sh = shard.borrow_mut();
                    let reason = truncated_reason(buf.len());
                    sh.close(
                        key,
                        CloseReason::BadFrame,
                        Some((Status::BadFrame, &reason)),
                    );
                    return;
                }
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    crate::turns::note_work();
                    shard.borrow_mut().counters.bytes_in += n as u64;
                }
            }
            if !account_input(shard, key, &buf, layers, &mut input_counted) {
                return;
            }
        }
    }
}

/// Bytes of a frame still arriving from which a reader's holding counts against the
/// shard's `--max-input-bytes`. Under it, a connection holds about what its socket's
/// receive buffer does; counted from 64 KiB, 100 000 connections each holding a 60 KB
/// partial frame could hold 6 GB.
const COUNTED_FROM: usize = 16 * 1024;

/// Bytes a reader holds of a frame still arriving (`shard::input`), from
/// [`COUNTED_FROM`]: its buffer when it starts with such a frame (its bytes so far),
/// and a WebSocket message still arriving.
fn big_input(buf: &BytesMut, layers: Option<&Rc<RefCell<Layers>>>) -> usize {
    // Only a frame still arriving: complete frames waiting in `buf` (decoded by the
    // layers during a read ahead) are not an input held open.
    let own = if buf.len() >= COUNTED_FROM && frame_bytes_needed(buf).is_some_and(|n| n > 0) {
        buf.len()
    } else {
        0
    };
    let message = layers.map_or(0, |l| l.borrow().message_held());
    own + if message >= COUNTED_FROM { message } else { 0 }
}

/// Tells the shard what this reader holds of big frames after a read, when it holds
/// some or did before (`counted`). False once the session is closed (past the shard's
/// `--max-input-bytes`, its frame among the first begun).
fn account_input(
    shard: &Rc<RefCell<Shard>>,
    key: SessionKey,
    buf: &BytesMut,
    layers: Option<&Rc<RefCell<Layers>>>,
    counted: &mut bool,
) -> bool {
    let bytes = big_input(buf, layers);
    if bytes == 0 && !*counted {
        return true;
    }
    *counted = bytes > 0;
    shard.borrow_mut().hold_input(key, bytes)
}

/// What a read of a session's socket needs.
struct Reading<'a> {
    shard: &'a Rc<RefCell<Shard>>,
    key: SessionKey,
    fd: RawFd,
    reader: &'a TcpOwnedReadHalf,
    layers: Option<&'a Rc<RefCell<Layers>>>,
    /// The reader's `input_counted` (see `account_input`).
    input_counted: &'a mut bool,
}

/// Bytes a waiting reader reads ahead, at most (beyond them it only waits).
const READ_AHEAD_MAX: usize = READ_BUF;

/// Waits for `wait` (the recipients a reader waits on, other sessions) while reading the
/// socket ahead into `buf`, up to [`READ_AHEAD_MAX`] bytes, and taking the valid Acks
/// of the complete frames read (`Shard::ack_ahead`); the frames stay in `buf`, to be
/// handled in order after the wait (an Ack again, which changes nothing). A session
/// sending to a stalled recipient keeps receiving meanwhile: without its acks it would
/// reach `--max-unacked-per-session` and be cut while keeping up. It reads ahead only
/// while it holds deliveries not acked (a sender that receives nothing waits as
/// before, holding no buffer); a client whose frames before its acks exceed the
/// read-ahead (no window on its sends) is not helped. Returns whether bytes were read,
/// and how the connection ended if a read found it ended (for the reader to handle
/// after the bytes before it).
async fn read_acks_ahead<W: Future<Output = ()>>(
    r: Reading<'_>,
    buf: &mut BytesMut,
    mut wait: Pin<&mut W>,
) -> (bool, Option<io::Result<usize>>) {
    // `buf[..scanned]`: complete frames whose acks were taken (bytes before the wait
    // are a partial frame, if any: they are scanned with the rest once complete).
    let (mut scanned, mut ahead) = (0, false);
    loop {
        if buf.len() >= READ_AHEAD_MAX {
            wait.as_mut().await;
            return (ahead, None);
        }
        let (unacked, drains) = match r.shard.borrow().sessions.get(r.key) {
            Some(s) if s.closing.is_none() => (!s.unacked.is_empty(), s.drains),
            // Closed meanwhile: its reader ends.
            _ => return (ahead, None),
        };
        if !unacked {
            // Nothing to ack: until the wait ends or this session's writer writes
            // (deliveries, maybe).
            let written = poll_fn(|cx| {
                let mut sh = r.shard.borrow_mut();
                match sh.sessions.get(r.key) {
                    Some(s) if s.drains == drains && s.closing.is_none() => {
                        sh.wait_drain(r.key, cx.waker());
                        Poll::Pending
                    }
                    _ => Poll::Ready(()),
                }
            });
            monoio::select! {
                () = wait.as_mut() => return (ahead, None),
                () = written => continue,
            }
        }
        let before = buf.len();
        let read = async {
            match r.layers {
                Some(l) => {
                    let counted = &mut *r.input_counted;
                    read_layered(r.shard, r.key, r.fd, r.reader, l, buf, counted).await
                }
                None => read_some(r.fd, r.reader, buf, READ_AHEAD_MAX - before).await,
            }
        };
        monoio::select! {
            () = wait.as_mut() => return (ahead || buf.len() > before, None),
            res = read => match res {
                Ok(n) if n > 0 => {
                    ahead = true;
                    r.shard.borrow_mut().counters.bytes_in += n as u64;
                    if !account_input(r.shard, r.key, buf, r.layers, &mut *r.input_counted) {
                        // Closed past the input budget: its reader ends.
                        return (true, None);
                    }
                }
                end => {
                    wait.as_mut().await;
                    return (ahead, Some(end));
                }
            },
        }
        let mut sh = r.shard.borrow_mut();
        if let Some(s) = sh.sessions.get_mut(r.key) {
            s.heard(Instant::now());
        }
        let base = scanned;
        for f in frames(&buf[base..]) {
            if let Some(up_to) = buf.get(base + f.start..base + f.end).and_then(ack_of) {
                sh.ack_ahead(r.key, up_to);
            }
            scanned = base + f.end;
        }
    }
}

/// The `up_to_seq` of a client frame body that is an Ack (field 3), else `None`.
fn ack_of(body: &[u8]) -> Option<u64> {
    const ACK_TAG: u8 = (3 << 3) | 2;
    if body.first() != Some(&ACK_TAG) {
        return None;
    }
    match ClientFrame::decode(body).ok()?.kind? {
        client_frame::Kind::Ack(a) => Some(a.up_to_seq),
        _ => None,
    }
}

/// One read of at most `max` bytes of a plain socket onto the end of `buf` (grown when
/// nearly full): at once if bytes are there, else once the socket is readable.
async fn read_some(
    fd: RawFd,
    reader: &TcpOwnedReadHalf,
    buf: &mut BytesMut,
    max: usize,
) -> io::Result<usize> {
    if buf.is_empty() && buf.capacity() < MIN_READ {
        // No buffer held while nothing arrives.
        wait_readable(reader).await?;
    }
    loop {
        if buf.capacity() - buf.len() < MIN_READ {
            // (A read buffer's worth in all, as in the read loop.)
            buf.reserve(READ_BUF.saturating_sub(buf.len()).max(MIN_READ));
        }
        match recv_at_most(fd, buf, max) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(reader).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A read with no partial frame buffered (`buf` is empty). Bytes already there are
/// read at once (one nonblocking recv into a buffer from the shard's pool); otherwise
/// the buffer goes back to the pool and the reader waits for readability holding no
/// buffer (io_uring: a poll op; epoll: the fd's readiness), so an idle session keeps
/// no read buffer.
/// `waited`: set when it waited for the socket to be readable (the task was suspended:
/// on epoll a readiness wait may finish at once).
#[allow(clippy::manual_async_fn)] // on purpose: see `read_loop`
fn read_fresh<'a>(
    fd: RawFd,
    reader: &'a TcpOwnedReadHalf,
    buf: &'a mut BytesMut,
    waited: &'a mut bool,
) -> impl Future<Output = io::Result<usize>> + 'a {
    async move {
        // Whether the socket was seen readable: a fresh buffer is only allocated then.
        let mut ready = false;
        loop {
            if buf.capacity() - buf.len() < MIN_READ {
                match bufpool::take_pooled() {
                    Some(b) => *buf = b,
                    None if ready => *buf = BytesMut::with_capacity(READ_BUF),
                    None => {
                        *buf = BytesMut::new();
                        crate::turns::noting_wait(wait_readable(reader), waited).await?;
                        ready = true;
                        continue;
                    }
                }
            }
            let e = match recv_into(fd, buf) {
                Ok(n) => return Ok(n),
                Err(e) => e,
            };
            match e.kind() {
                io::ErrorKind::WouldBlock => {
                    bufpool::give_read(std::mem::take(buf));
                    crate::turns::noting_wait(wait_readable(reader), waited).await?;
                    ready = true;
                }
                io::ErrorKind::Interrupted => {}
                _ => return Err(e),
            }
        }
    }
}

/// A read through TLS / WebSocket layers: raw bytes into the layers' buffer, the
/// client frames they carry appended to `buf`. Bytes the layers want written
/// (handshake records, pongs, a close answer) wake the writer.
/// What a WebSocket message still arriving holds is told to the shard as it grows
/// (`account_input`, `input_counted`).
async fn read_layered(
    shard: &Rc<RefCell<Shard>>,
    key: SessionKey,
    fd: RawFd,
    reader: &TcpOwnedReadHalf,
    layers: &Rc<RefCell<Layers>>,
    buf: &mut BytesMut,
    input_counted: &mut bool,
) -> io::Result<usize> {
    let before = buf.len();
    let mut passes: u32 = 0;
    loop {
        // Control frames only (pings, empty fragments) give the caller nothing: this loop
        // goes on reading them, so it yields on its own too (see READS_PER_YIELD).
        passes += 1;
        if passes.is_multiple_of(READS_PER_YIELD) {
            let_the_shard_run().await;
        }
        let step = {
            let mut l = layers.borrow_mut();
            let l = &mut *l;
            let mut raw = std::mem::take(&mut l.raw);
            if raw.is_empty() && raw.capacity() > 2 * READ_BUF {
                // (The layers' buffers trade places: one grown past a read is let go.)
                raw = BytesMut::new();
            }
            if raw.capacity() - raw.len() < MIN_READ {
                match raw.is_empty().then(bufpool::take_pooled).flatten() {
                    Some(b) => raw = b,
                    // (A read buffer's worth in all, as in the read loop.)
                    None => raw.reserve(READ_BUF.saturating_sub(raw.len()).max(MIN_READ)),
                }
            }
            // What the pre-login decode left (frames pipelined behind the Login), or
            // the peer's end seen in the read before, is taken before the socket is
            // read: no more bytes may come for it.
            let read = if passes == 1 && l.has_unread() {
                Ok(usize::MAX)
            } else {
                // At most a read buffer's worth: what one pass decodes, and the
                // WebSocket input it is appended to, stay that size.
                recv_at_most(fd, &mut raw, READ_BUF)
            };
            match read {
                Ok(n) => {
                    let res = l.ingest(&mut raw, buf);
                    l.raw = raw;
                    Ok((n == 0, res, l.has_pending()))
                }
                Err(e) => {
                    l.raw = raw;
                    Err(e)
                }
            }
        };
        let (eof, res, pending) = match step {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                layers.borrow_mut().release_idle_buffers();
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
                wait_readable(reader).await?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if pending {
            if let Some(w) = shard
                .borrow_mut()
                .sessions
                .get_mut(key)
                .and_then(|s| s.writer.take())
            {
                w.wake();
            }
        }
        let got = buf.len() - before;
        match res {
            Err(reason) => return Err(io::Error::new(io::ErrorKind::InvalidData, reason)),
            Ok(_) if got > 0 => return Ok(got),
            Ok(Ingested::End) => return Ok(0),
            Ok(Ingested::More) if eof => return Ok(0),
            Ok(Ingested::More) => {
                // A message still arriving (its frames so far held in the decoder).
                if !account_input(shard, key, buf, Some(layers), input_counted) {
                    return Err(io::Error::other("closed past --max-input-bytes"));
                }
            }
        }
    }
}

/// The WebSocket close code and reason a session's end gives (a violation of the
/// client's keeps its own): a browser sees why it was cut, not a normal closure.
fn ws_close(why: Option<CloseReason>) -> (u16, &'static str) {
    match why {
        Some(CloseReason::Shutdown) => (ws::code::GOING_AWAY, "shutting down"),
        Some(CloseReason::HeartbeatTimeout) => (ws::code::POLICY, "heartbeat timeout"),
        Some(CloseReason::SlowConsumer | CloseReason::Unacked) => {
            (ws::code::POLICY, "slow consumer")
        }
        Some(CloseReason::Kicked) => (ws::code::POLICY, "session ended by the router"),
        Some(CloseReason::InputBudget) => (ws::code::TRY_AGAIN_LATER, "input budget"),
        // A message that is not a frame of its subprotocol (its Error frame says why).
        Some(CloseReason::BadFrame) => (ws::code::INVALID, "bad frame"),
        _ => (ws::code::NORMAL, ""),
    }
}

/// One nonblocking recv into the spare capacity of `buf`.
fn recv_into(fd: RawFd, buf: &mut BytesMut) -> io::Result<usize> {
    recv_at_most(fd, buf, usize::MAX)
}

/// One nonblocking recv of at most `max` bytes into the spare capacity of `buf`.
fn recv_at_most(fd: RawFd, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let len = max.min(spare.len());
    let spare = &mut spare[..len];
    // Safety: recv writes at most `spare.len()` bytes into the buffer's spare
    // capacity; the socket stays open while its session's reader runs.
    let n = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // Safety: the kernel initialised these `n` bytes after the buffer's length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Waits until the socket is readable (or closed), holding no buffer.
async fn wait_readable(reader: &TcpOwnedReadHalf) -> io::Result<()> {
    // Safety: a shared borrow of the stream for the poll op, as monoio's own
    // `TcpOwnedReadHalf::peer_addr` takes it; the write half only submits its own ops
    // on the same fd.
    let stream = unsafe { &*reader.0.get() };
    stream.readable(false).await
}

/// A write of a batch that keeps payloads by reference ([`WriteBatch::pins`]) is
/// about to wait: the handle that lets the shard's ticker cancel it once the batch has
/// been written for `retention::PIN_MAX_US` (the peer does not read, or reads a
/// trickle; `Shard::unpin_payloads`), after which the writer goes on with a copy of
/// what is left ([`WriteBatch::compact`]). A peer that stopped reading kept a read
/// buffer (up to 64 KiB) for each small payload the batch held, and the batch as long
/// as the connection lived (a hostile review: 100 senders each sending one 300-byte
/// message a chunk to a session that stopped reading, ~100 MiB; its queue's bounds
/// counted 480 KB). The age is the batch's, from its first such write, not the write's:
/// a peer reading a little every 100 ms ends each write quickly. None: the session is
/// gone.
fn pinning_write_start(shard: &Rc<RefCell<Shard>>, key: SessionKey) -> Option<CancelHandle> {
    let mut sh = shard.borrow_mut();
    let s = sh.sessions.get_mut(key)?;
    let p = s.pinning.get_or_insert_with(|| {
        Box::new(PinningWrite {
            since: None,
            cancel: Canceller::new(),
        })
    });
    p.since.get_or_insert_with(Instant::now);
    Some(p.cancel.handle())
}

/// True for the error of a write the ticker cancelled: ECANCELED, or EINTR from a
/// write io_uring had handed to a worker thread (kernels before 5.19), which the cancel
/// interrupts.
fn cancelled(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ECANCELED | libc::EINTR))
}

/// What is left of `batch` is compacted ([`WriteBatch::compact`]): the ticker no longer
/// cancels its writes.
fn compacted(shard: &Rc<RefCell<Shard>>, key: SessionKey, batch: &mut WriteBatch) {
    batch.compact();
    let mut sh = shard.borrow_mut();
    sh.counters.writes_compacted += 1;
    if let Some(p) = sh
        .sessions
        .get_mut(key)
        .and_then(|s| s.pinning.as_deref_mut())
    {
        p.since = None;
    }
}

/// Writes all of `wire` (a TLS / WebSocket encoding of `batch`'s bytes), cancellable
/// while `batch` still keeps payloads by reference: a cancelled write compacts `batch`
/// and goes on. Gives `wire` back for reuse.
async fn write_wire<W: CancelableAsyncWriteRent>(
    shard: &Rc<RefCell<Shard>>,
    key: SessionKey,
    writer: &mut W,
    mut wire: BytesMut,
    batch: &mut WriteBatch,
) -> (io::Result<()>, BytesMut) {
    while !wire.is_empty() {
        let (res, w) = match batch.pins().then(|| pinning_write_start(shard, key)) {
            Some(Some(h)) => writer.cancelable_write(wire, h).await,
            _ => writer.write(wire).await,
        };
        wire = w;
        match res {
            Ok(n) if n > 0 => bytes::Buf::advance(&mut wire, n),
            Err(e) if cancelled(&e) => compacted(shard, key, batch),
            Err(e) => return (Err(e), wire),
            Ok(_) => return (Err(io::ErrorKind::WriteZero.into()), wire),
        }
    }
    (Ok(()), wire)
}

/// A session's writer. (An `async move` block, not an `async fn`: see `read_loop`.)
#[allow(clippy::manual_async_fn)] // on purpose: see the note above
fn write_loop<W: CancelableAsyncWriteRent>(
    shard: Rc<RefCell<Shard>>,
    key: SessionKey,
    mut writer: W,
    layers: Option<Rc<RefCell<Layers>>>,
) -> impl Future<Output = ()> {
    async move {
        let mut wire = BytesMut::new();
        loop {
            let next = poll_fn(|cx| {
                let mut sh = shard.borrow_mut();
                let sh = &mut *sh;
                let Some(s) = sh.sessions.get_mut(key) else {
                    return Poll::Ready(None);
                };
                let control = layers.as_ref().is_some_and(|l| l.borrow().has_pending());
                // Resume: one SendAck per write batch, when the client_seq taken moved.
                if s.client_seq_acked != s.client_seq_taken && s.login_frame.is_none() {
                    s.client_seq_acked = s.client_seq_taken;
                    s.out.push_frame(&reply::send_ack(s.client_seq_taken));
                }
                if !s.out.is_empty() || control {
                    let spare = s.spare.take();
                    let batch = s.out.take(spare);
                    s.inflight += batch.total();
                    let oldest = std::mem::take(&mut s.oldest_ts_us);
                    sh.counters.payload_zero_copy_bytes +=
                        std::mem::take(&mut s.out.zero_copy_bytes);
                    sh.counters.payload_copied_bytes += std::mem::take(&mut s.out.copied_bytes);
                    Poll::Ready(Some((batch, oldest)))
                } else if s.closing.is_some() {
                    Poll::Ready(None)
                } else {
                    s.writer = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            let Some((mut batch, oldest)) = next else {
                break;
            };
            let total = batch.total();
            let mut ok = true;
            let mut writes = 0u64;
            if let Some(l) = &layers {
                // TLS / WebSocket: the batch is encoded and written a slice at a time, so
                // what a session holds beyond its accounted queue is two slices (the copy
                // and its encoding), not two more copies of the whole batch. A frame cut at
                // a slice's end is carried over to the next.
                let mut app = BytesMut::new();
                loop {
                    let took = batch.gather_into(&mut app, EGRESS_SLICE);
                    batch.advance(took);
                    wire.clear();
                    let used = l.borrow_mut().egress(&app, &mut wire);
                    let used = used.min(app.len());
                    bytes::Buf::advance(&mut app, used);
                    if !wire.is_empty() {
                        // Boxed: a plain session's writer future does not carry this state.
                        let (res, w) = Box::pin(write_wire(
                            &shard,
                            key,
                            &mut writer,
                            std::mem::take(&mut wire),
                            &mut batch,
                        ))
                        .await;
                        wire = w;
                        writes += 1;
                        if res.is_err() {
                            ok = false;
                            break;
                        }
                    }
                    if batch.remaining() == 0 && (app.is_empty() || (took == 0 && used == 0)) {
                        break;
                    }
                }
                batch.advance(batch.remaining());
            }
            while batch.remaining() > 0 {
                let (res, b) = match batch.pins().then(|| pinning_write_start(&shard, key)) {
                    // Boxed: the writer's future (every session's, idle ones too) does not
                    // carry this op's state (~70 bytes more).
                    Some(Some(h)) => Box::pin(writer.cancelable_writev(batch, h)).await,
                    _ => writer.writev(batch).await,
                };
                batch = b;
                writes += 1;
                match res {
                    Ok(n) if n > 0 => batch.advance(n),
                    // Held too long by a peer not reading (`Shard::unpin_payloads`): what is
                    // left keeps only its own bytes from now on.
                    Err(e) if cancelled(&e) => compacted(&shard, key, &mut batch),
                    _ => {
                        ok = false;
                        break;
                    }
                }
            }
            let mut sh = shard.borrow_mut();
            if ok && oldest != 0 {
                sh.counters.latency.record(now_us().saturating_sub(oldest));
            }
            sh.counters.bytes_out += total as u64;
            sh.counters.writes += writes;
            let max = sh.cfg.max_pending_bytes;
            if let Some(s) = sh.sessions.get_mut(key) {
                s.inflight -= total;
                if let Some(p) = s.pinning.as_deref_mut() {
                    p.since = None;
                }
                s.out.recycle(&mut batch);
                s.spare = Some(batch);
                if s.answer_unwritten > 0 {
                    let left = (s.answer_unwritten as usize).saturating_sub(total);
                    s.answer_unwritten = left as u32; // at most what it was
                    if left == 0 {
                        s.wake_drain_waiters();
                    }
                }
                if s.pending() <= max {
                    s.over_since = None;
                    s.drains = s.drains.wrapping_add(1);
                    s.answered_over = false;
                    s.wake_drain_waiters();
                    sh.release_throttles(key);
                    sh.continue_loading(key);
                }
            }
            if !ok {
                sh.close(key, CloseReason::PeerClosed, None);
                break;
            }
        }
        if let Some(l) = &layers {
            // The WebSocket close frame and TLS close_notify, best effort.
            let why = shard.borrow().sessions.get(key).and_then(|s| s.closing);
            let (code, reason) = ws_close(why);
            wire.clear();
            {
                let mut l = l.borrow_mut();
                l.end(code, reason);
                l.take_pending(&mut wire);
            }
            if !wire.is_empty() {
                let _ = Box::pin(monoio::time::timeout(CLOSE_FLUSH, writer.write_all(wire))).await;
            }
        }
        let sh = shard.borrow();
        if let Some(s) = sh.sessions.get(key) {
            // Wakes the reader if the peer is still connected.
            // Safety: the session's socket stays open until the session is removed.
            unsafe { libc::shutdown(s.fd, libc::SHUT_RDWR) };
        }
    }
}
