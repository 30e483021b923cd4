//! WebSocket sessions (`GET /ws` on the HTTP port): the upgrade, then the pre-login
//! conversation and the session over WebSocket messages.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;

use super::stream::Conn;
use crate::shard::Shard;
use crate::shared::{ConnGuard, LocalSignal, Shared};

/// Takes over an HTTP connection whose request was `GET /ws`: `headers` are the
/// request's headers (names lower-case), `rest` the bytes read past the request head.
/// Answers the upgrade (or an HTTP error) itself.
#[allow(clippy::too_many_arguments, dead_code)]
pub(crate) async fn serve(
    shard: Rc<RefCell<Shard>>,
    shared: Arc<Shared>,
    mut conn: Conn,
    headers: Vec<(String, String)>,
    rest: BytesMut,
    guard: ConnGuard,
    local: Rc<LocalSignal>,
) {
    let _ = (shard, shared, headers, rest, guard, local);
    let mut out = BytesMut::new();
    out.extend_from_slice(
        b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    );
    let _ = conn.write_all(out).await;
    conn.shutdown().await;
}
