//! The load engine against ringrouter: login (and joining the fan-out room),
//! the Send frames it writes, the frames it reads, its cumulative acks, and the
//! fan-out rooms created before a run and deleted after it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use monoio::net::TcpStream;
use ringrouter_proto::codec::{decode_server, peek_varint};
use ringrouter_proto::fast::{deliver_seq_payload, parse_server, ServerView};
use ringrouter_proto::send::{put_send_header, SendHeader, Target};
use ringrouter_proto::v1::{client_frame, server_frame, JoinRoom, Login};

use super::engine::{Conn, Dest, Item};
use super::link::{self, LinkConfig, Rx, Tx};
use crate::core::{self, AckPolicy, Acks, Frame};
use crate::{Client, ClientConfig, ClientError, Status};

/// Ack after this many unacked deliveries...
pub(super) const ACK_EVERY: u64 = 1024;
/// ... or once the oldest unacked one is this old (checked after each read).
pub(super) const ACK_INTERVAL: Duration = Duration::from_millis(100);

/// Appends the Send header for `to` (`len` payload bytes follow), numbered with
/// `client_seq` (0: not numbered).
#[inline]
pub(super) fn begin_message(out: &mut BytesMut, to: &Dest, len: usize, client_seq: u64) {
    let to = match to {
        Dest::User(u) => Target::User(u),
        Dest::Room(r) => Target::Room(r),
    };
    let h = SendHeader {
        client_seq,
        ..SendHeader::to(to)
    };
    put_send_header(out, &h, len)
}

/// Numbered Sends (`LoadConfig::client_seq`) count from here: every client_seq
/// of a run (up to 2^28 - 2^21 Sends per connection) then takes 4 varint bytes, as
/// a long-lived session's do, so a template header is patched in place.
pub(super) const CLIENT_SEQ_BASE: u64 = 1 << 21;

/// The varint bytes of a numbered header's client_seq.
pub(super) const CLIENT_SEQ_WIDTH: usize = 4;

/// Writes client_seq number `n` (from 1) into a numbered header's varint bytes.
#[inline]
pub(super) fn patch_client_seq(slot: &mut [u8], n: u64) {
    let v = CLIENT_SEQ_BASE + n;
    for (i, b) in slot.iter_mut().enumerate() {
        let more = if i + 1 < CLIENT_SEQ_WIDTH { 0x80 } else { 0 };
        *b = ((v >> (7 * i)) & 0x7F) as u8 | more;
    }
}

/// Where the client_seq bytes sit in a numbered header for a payload of `len`
/// bytes (> 0): just before the payload's tag and length.
pub(super) fn client_seq_at(head_len: usize, len: usize) -> usize {
    head_len - 1 - ringrouter_proto::codec::varint_len(len as u64) - CLIENT_SEQ_WIDTH
}

/// Scans the frame at `*pos` (and moves past it): `Ok(None)` if it is not
/// complete. Pings are answered into `out`; an Error frame fails the run.
#[inline]
pub(super) fn next_item<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    out: &mut BytesMut,
) -> Result<Option<Item<'a>>, String> {
    let rest = &buf[*pos..];
    let Some((flen, n)) = peek_varint(rest).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let end = n + flen as usize;
    if end > rest.len() {
        return Ok(None);
    }
    let body = &rest[n..end];
    *pos += end;
    // The router's own layout first: seq and payload only (what the engine reads of
    // a delivery); anything else through the full parse.
    if let Some((seq, payload)) = deliver_seq_payload(body) {
        return Ok(Some(Item::Msg(payload, seq)));
    }
    match parse_server(body).map_err(|e| e.to_string())? {
        ServerView::Deliver { seq, payload, .. } => Ok(Some(Item::Msg(payload, seq))),
        ServerView::Other => {
            control(body, out)?;
            Ok(Some(Item::Control))
        }
    }
}

/// A frame other than Deliver: answers a Ping, fails on an Error.
#[cold]
fn control(body: &[u8], out: &mut BytesMut) -> Result<(), String> {
    let f = decode_server(bytes::Bytes::copy_from_slice(body)).map_err(|e| e.to_string())?;
    match f.kind {
        Some(server_frame::Kind::Ping(p)) => core::put_pong(out, p.nonce),
        Some(server_frame::Kind::Error(e)) => return Err(format!("router error: {}", e.reason)),
        _ => {}
    }
    Ok(())
}

/// Cumulative acks of a connection's deliveries (all of them are handed to
/// the engine as they are read): every [`ACK_EVERY`] or after [`ACK_INTERVAL`].
pub(super) struct Acker(Acks);

impl Acker {
    pub(super) fn new() -> Self {
        Self::at(Instant::now())
    }

    pub(super) fn at(now: Instant) -> Self {
        let policy = AckPolicy {
            every: ACK_EVERY,
            interval: ACK_INTERVAL,
        };
        Acker(Acks::new(policy, now))
    }

    /// Appends an Ack to `out` if one is due for deliveries up to `last_seq`
    /// (or, with `force`, if anything is unacked).
    pub(super) fn maybe_ack(
        &mut self,
        last_seq: u64,
        now: Instant,
        force: bool,
        out: &mut BytesMut,
    ) {
        self.0.handed(last_seq);
        if let Some(seq) = self.0.poll(now, force) {
            core::put_ack(out, seq);
        }
    }
}

/// Logs in as `user` (and joins the room with join code `join`), returning the
/// connection with whatever arrived behind the answers (room events of other
/// receivers joining, say), which belongs to the stream that follows.
pub(super) async fn connect(
    addr: SocketAddr,
    link_cfg: &LinkConfig,
    user: &str,
    join: Option<&str>,
) -> Result<Conn, String> {
    let mut s = TcpStream::connect_addr(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let (wire, frames) = link::handshake(&mut s, link_cfg)
        .await
        .map_err(|e| format!("{user}: {e}"))?;
    let (mut rx, mut tx) = link::halves(wire);
    let mut io = Io {
        s: &mut s,
        rx: &mut rx,
        tx: &mut tx,
    };
    let login = client_frame::Kind::Login(Login {
        user: user.to_owned(),
        device: "load".into(),
        request_id: 1,
        ..Default::default()
    });
    let mut buf = frames;
    buf.reserve(4096);
    buf = request(&mut io, buf, login, &format!("login {user}"), |k| match k {
        server_frame::Kind::LoginResult(r) => Some((r.status, r.reason)),
        _ => None,
    })
    .await?;
    if let Some(code) = join {
        let join = client_frame::Kind::JoinRoom(JoinRoom {
            request_id: 2,
            room: code.to_owned(),
            password: String::new(),
        });
        let what = format!("{user} joining the fan-out room");
        buf = request(&mut io, buf, join, &what, |k| match k {
            server_frame::Kind::RoomResult(r) if r.request_id == 2 => Some((r.status, r.reason)),
            _ => None,
        })
        .await?;
    }
    Ok(Conn {
        stream: s,
        buf,
        rx,
        tx,
    })
}

/// A connection during login: the socket and its transport's halves.
struct Io<'a> {
    s: &'a mut TcpStream,
    rx: &'a mut Rx,
    tx: &'a mut Tx,
}

/// Sends `req` and reads until `answer` recognises the answer (its status and
/// reason); frames before it are skipped, an Error frame is a failure. Returns
/// the bytes read past the answer.
async fn request(
    io: &mut Io<'_>,
    mut buf: BytesMut,
    req: client_frame::Kind,
    what: &str,
    answer: impl Fn(server_frame::Kind) -> Option<(i32, String)>,
) -> Result<BytesMut, String> {
    let mut out = BytesMut::new();
    Frame::of(req).put(&mut out);
    let (r, _) = io.tx.write_all(io.s, out).await;
    r.map_err(|e| format!("{what}: {e}"))?;
    loop {
        while let Some((len, n)) = peek_varint(&buf).map_err(|e| format!("{what}: {e}"))? {
            if buf.len() < n + len as usize {
                break;
            }
            buf.advance(n);
            let body = buf.split_to(len as usize).freeze();
            let f = decode_server(body).map_err(|e| format!("{what}: {e}"))?;
            match f.kind {
                Some(server_frame::Kind::Error(e)) => {
                    return Err(format!(
                        "{what}: {}: {}",
                        core::status(e.code).short_name(),
                        e.reason
                    ))
                }
                Some(k) => {
                    if let Some((status, reason)) = answer(k) {
                        let st = core::status(status);
                        if st != Status::Ok {
                            return Err(format!("{what}: {}: {reason}", st.short_name()));
                        }
                        return Ok(buf);
                    }
                }
                None => {}
            }
        }
        buf = io.rx.read_more(io.s, buf, what).await?;
    }
}

/// The fan-out room of sender `i`: named after the user prefix, so that
/// concurrent runs (each with its own prefix) never share one.
pub(super) fn room_name(prefix: &str, i: usize) -> String {
    format!("{prefix}room{i}")
}

/// The fan-out rooms of a run, created before it and deleted (best effort)
/// when this is dropped, however the run ends.
pub(super) struct Rooms {
    pub(super) addr: SocketAddr,
    /// The run's transport (server name set).
    pub(super) transport: crate::Transport,
    pub(super) timeout: Duration,
    /// (owner, room).
    pub(super) created: Vec<(String, String)>,
}

impl Rooms {
    fn owner_client(&self, owner: &str) -> Result<Client, ClientError> {
        let mut cfg = ClientConfig::new(owner);
        cfg.device = "load-setup".into();
        cfg.timeout = self.timeout;
        cfg.transport = self.transport.clone();
        Client::connect(self.addr, cfg)
    }

    /// Creates `room` owned by `owner`; returns its join code. A room of that
    /// name left behind by an earlier run with the same prefix (same owner) is
    /// deleted and created afresh.
    pub(super) fn create(&mut self, owner: &str, room: &str) -> Result<String, String> {
        let what = |e: ClientError| format!("creating fan-out room {room} as {owner}: {e}");
        let mut c = self.owner_client(owner).map_err(what)?;
        let code = match c.create_room(room, None) {
            Err(e) if e.code() == Some(Status::Conflict) => {
                match c.delete_room(room) {
                    Err(e) if e.code() == Some(Status::Forbidden) => {
                        return Err(format!(
                            "creating fan-out room {room}: the name is taken by another \
                             user's room (choose another user prefix)"
                        ))
                    }
                    other => other.map_err(what)?,
                }
                c.create_room(room, None)
            }
            other => other,
        }
        .map_err(what)?;
        self.created.push((owner.to_owned(), room.to_owned()));
        let _ = c.close();
        Ok(code)
    }
}

impl Drop for Rooms {
    fn drop(&mut self) {
        for (owner, room) in std::mem::take(&mut self.created) {
            if let Ok(mut c) = self.owner_client(&owner) {
                let _ = c.delete_room(&room);
                let _ = c.close();
            }
        }
    }
}
