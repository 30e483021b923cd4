//! Test support: a scripted fake router on loopback, to check what the clients
//! write, frame by frame, and how they react to what the router sends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ringrouter_proto::codec::{decode_client, encode_frame, next_frame};
use ringrouter_proto::v1::{
    client_frame, server_frame, AccountResult, ClientFrame, Deliver, LoginResult, RoomEvent,
    RoomResult, ServerFrame,
};
use ringrouter_proto::Status;

/// How long a test waits for anything.
pub(crate) const T: Duration = Duration::from_secs(5);

/// The router side of one connection.
pub(crate) struct Fake {
    pub(crate) stream: TcpStream,
    rbuf: BytesMut,
    /// Most frames one read() completed.
    pub(crate) most_frames_per_read: usize,
}

impl Fake {
    /// The router side of `stream`.
    pub(crate) fn new(stream: TcpStream) -> Fake {
        Fake {
            stream,
            rbuf: BytesMut::new(),
            most_frames_per_read: 0,
        }
    }

    /// The next frame from the client; None once it closed the connection.
    pub(crate) fn frame(&mut self) -> Option<ClientFrame> {
        let mut frames_this_read = 0;
        loop {
            if let Some(body) = next_frame(&mut self.rbuf, 1 << 20).expect("framing") {
                return Some(decode_client(body).expect("client frame"));
            }
            let mut buf = [0u8; 65536];
            let n = self.stream.read(&mut buf).expect("read");
            if n == 0 {
                return None;
            }
            self.rbuf.extend_from_slice(&buf[..n]);
            // Count the complete frames this read brought in.
            let mut probe = self.rbuf.clone();
            while let Ok(Some(_)) = next_frame(&mut probe, 1 << 20) {
                frames_this_read += 1;
            }
            self.most_frames_per_read = self.most_frames_per_read.max(frames_this_read);
        }
    }

    /// The next frame's kind, skipping Acks; panics when the connection closed.
    pub(crate) fn request(&mut self) -> client_frame::Kind {
        loop {
            match self.frame().and_then(|f| f.kind) {
                Some(client_frame::Kind::Ack(_)) => continue,
                Some(k) => return k,
                None => panic!("the client closed the connection; expected a request"),
            }
        }
    }

    /// Writes `frames` in one write.
    pub(crate) fn write(&mut self, frames: &[server_frame::Kind]) {
        let mut out = BytesMut::new();
        for k in frames {
            encode_frame(
                &ServerFrame {
                    kind: Some(k.clone()),
                },
                &mut out,
            );
        }
        self.stream.write_all(&out).expect("write");
    }

    /// Reads until the client closes the connection.
    pub(crate) fn drain(&mut self) {
        while self.frame().is_some() {}
    }
}

/// Starts a fake router that accepts one connection and runs `script` on it.
pub(crate) fn serve(
    script: impl FnOnce(&mut Fake) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut f = Fake {
            stream,
            rbuf: BytesMut::new(),
            most_frames_per_read: 0,
        };
        script(&mut f);
    });
    (addr, server)
}

/// [`serve`], answering the Login of `user` first, with `after_login` in the
/// same write.
pub(crate) fn serve_logged_in(
    user: &'static str,
    after_login: Vec<server_frame::Kind>,
    script: impl FnOnce(&mut Fake) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    serve(move |f| {
        match f.frame().and_then(|f| f.kind) {
            Some(client_frame::Kind::Login(l)) => assert_eq!(l.user, user),
            other => panic!("expected Login, got {other:?}"),
        }
        let mut first = vec![login_ok(user)];
        first.extend(after_login);
        f.write(&first);
        script(f);
    })
}

pub(crate) fn login_ok(user: &str) -> server_frame::Kind {
    server_frame::Kind::LoginResult(LoginResult {
        status: Status::Ok as i32,
        user: user.into(),
        session_id: 42,
        ..Default::default()
    })
}

/// A Deliver from "bob" (msg_id 1000 + seq).
pub(crate) fn deliver(seq: u64, payload: &'static [u8]) -> server_frame::Kind {
    server_frame::Kind::Deliver(Deliver {
        seq,
        from_user: "bob".into(),
        payload: Bytes::from_static(payload),
        msg_id: 1000 + seq,
        server_ts_us: 7,
        ..Default::default()
    })
}

/// A Deliver from "bob" to `room`.
pub(crate) fn room_deliver(seq: u64, room: &str, payload: &'static [u8]) -> server_frame::Kind {
    server_frame::Kind::Deliver(Deliver {
        seq,
        from_user: "bob".into(),
        to_room: room.into(),
        payload: Bytes::from_static(payload),
        msg_id: 2000 + seq,
        server_ts_us: 7,
        ..Default::default()
    })
}

pub(crate) fn room_ok(request_id: u64, room: &str, join_code: &str) -> server_frame::Kind {
    server_frame::Kind::RoomResult(RoomResult {
        request_id,
        status: Status::Ok as i32,
        room: room.into(),
        join_code: join_code.into(),
        ..Default::default()
    })
}

pub(crate) fn room_list(request_id: u64, rooms: &[&str]) -> server_frame::Kind {
    server_frame::Kind::RoomResult(RoomResult {
        request_id,
        status: Status::Ok as i32,
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    })
}

pub(crate) fn room_refused(request_id: u64, status: Status, reason: &str) -> server_frame::Kind {
    server_frame::Kind::RoomResult(RoomResult {
        request_id,
        status: status as i32,
        reason: reason.into(),
        ..Default::default()
    })
}

pub(crate) fn account(
    request_id: u64,
    status: Status,
    user: &str,
    users: &[&str],
) -> server_frame::Kind {
    server_frame::Kind::AccountResult(AccountResult {
        request_id,
        status: status as i32,
        reason: if status == Status::Ok {
            String::new()
        } else {
            format!("refused: {}", status.short_name())
        },
        user: user.into(),
        users: users.iter().map(|u| u.to_string()).collect(),
    })
}

pub(crate) fn room_event(
    kind: ringrouter_proto::v1::RoomEventKind,
    room: &str,
    user: &str,
) -> server_frame::Kind {
    server_frame::Kind::RoomEvent(RoomEvent {
        kind: kind as i32,
        room: room.into(),
        user: user.into(),
        seq: 0,
    })
}

pub(crate) fn error(code: Status, reason: &str, request_id: u64) -> server_frame::Kind {
    server_frame::Kind::Error(ringrouter_proto::v1::Error {
        code: code as i32,
        reason: reason.into(),
        request_id,
    })
}
