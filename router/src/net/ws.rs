//! WebSocket sessions (`GET /ws` on the HTTP port): the upgrade, then the same
//! pre-login conversation and session as a TCP connection, with WebSocket (and TLS)
//! [`crate::transport::Layers`] between the socket and the frames.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;

use super::accept::prelogin;
use super::stream::Conn;
use crate::shard::Shard;
use crate::shared::{ConnGuard, LocalSignal, Shared};
use crate::transport::ws;
use ringrouter_proto::Status;

/// Takes over an HTTP connection whose request was `GET /ws`: `headers` are the
/// request's headers (names lower-case), `rest` the bytes read past the request head.
/// Answers the upgrade (or an HTTP error) itself.
pub(crate) async fn serve(
    shard: Rc<RefCell<Shard>>,
    shared: Arc<Shared>,
    mut conn: Conn,
    headers: Vec<(String, String)>,
    rest: BytesMut,
    guard: ConnGuard,
    local: Rc<LocalSignal>,
) {
    match ws::handshake(&headers) {
        Err(r) => {
            // The same JSON `{code, reason}` as the HTTP port's other refusals.
            let mut answer =
                crate::http::request::Response::error(r.status, Status::BadRequest, r.reason);
            for (name, value) in r.headers {
                answer = answer.with_header(name, value);
            }
            let bytes = answer.encode(false, false);
            let _ = monoio::time::timeout(super::CLOSE_FLUSH, conn.write_raw(&bytes)).await;
            conn.shutdown().await;
        }
        Ok((answer, protocol)) => {
            // Under the HTTP port's deadline, as its other answers: a client that does
            // not read (its earlier pipelined answers filled the socket) held its
            // connection slot with no deadline at all, never logging in.
            let wrote =
                monoio::time::timeout(shared.cfg.http_idle_timeout, conn.write_raw(&answer)).await;
            if !matches!(wrote, Ok(Ok(()))) {
                return;
            }
            // Until Login, frames are bounded like a TCP connection's pre-login frames.
            conn.start_ws(protocol, shared.cfg.prelogin_frame_bytes(), rest);
            prelogin(shard, shared, conn, guard, local).await;
        }
    }
}
