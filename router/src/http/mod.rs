//! The HTTP port (`--http-listen`): `/healthz`, `/readyz`, `/metrics`, `/ws` (handed to
//! `crate::net::ws`), the browser page (`crate::web`) and the backend API (`api`).
//!
//! Like the TCP listener, every shard has its own SO_REUSEPORT listener and accept
//! loop; a connection is served by a task of the shard that accepted it, on
//! `crate::net::stream::Conn` (plain TCP, or TLS). HTTP/1.1 with keep-alive and
//! pipelining, hand-written on `httparse`; every connection holds a [`ConnGuard`]
//! (the `--max-connections` and `--max-connections-per-ip` shared with the TCP listener,
//! carried on by a WebSocket).
//!
//! Bounds: the head (`--http-max-head-bytes`, 431), the body (`--http-max-body-bytes`,
//! 413), the time to send a whole request once one is awaited, which also bounds an idle
//! keep-alive connection and writing an answer (`--http-idle-timeout`, 408 or a
//! silent close), the API's waits (`--http-api-timeout`, 503). Refused and malformed
//! requests are answered and the connection closed.
//!
//! Modules: `request` (sans-IO parsing and answers), `routes` (which handler),
//! `metrics` (the Prometheus exposition), `api` (the backend API).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use monoio::net::{TcpListener, TcpStream};
use ringrouter_proto::Status;

use crate::net::stream::Conn;
use crate::shard::Shard;
use crate::shared::{ConnGuard, LocalSignal, Shared};
use crate::stats::ShardStats;

pub(crate) mod api;
pub(crate) mod metrics;
pub(crate) mod request;
pub(crate) mod routes;

use request::{parse_head, Head, Response};
use routes::Route;

/// Bytes asked of one read.
const READ_CHUNK: usize = 16 << 10;

/// A body up to this many bytes is written in one buffer with its head; a bigger one
/// after it, as it is (a page asset from the binary, the `/metrics` text).
const INLINE_BODY: usize = 4 << 10;

/// How long an answer may take to be written when it begins while this shard's other
/// answers not yet written are over half of `--http-max-unsent-bytes` (else
/// `--http-idle-timeout`): a peer that does not read its answers is cut sooner while
/// they pile up.
const STALLED_WRITE: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    /// Bytes of answers this shard's HTTP connections hold not yet written (each shard
    /// serves its own connections on its thread): see [`Unsent`].
    static UNSENT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// An answer's bytes, counted in [`UNSENT`] while it is being written. 18 000
/// connections each sending 8 pipelined `GET /metrics` and never reading held ~58 KiB
/// each (1 GiB, with the body kept twice while written), past `--max-memory`, where every
/// new login was refused; now the shard's answers not written are bounded by
/// `--http-max-unsent-bytes`, past which a request is answered 503 and its connection
/// closed.
struct Unsent(usize);

impl Unsent {
    fn hold(n: usize) -> Unsent {
        UNSENT.with(|u| u.set(u.get() + n));
        Unsent(n)
    }

    /// This shard's answers not yet written, in bytes.
    fn total() -> usize {
        UNSENT.with(|u| u.get())
    }
}

impl Drop for Unsent {
    fn drop(&mut self) {
        UNSENT.with(|u| u.set(u.get().saturating_sub(self.0)));
    }
}

/// What every shard's HTTP server shares.
pub(crate) struct HttpCtx {
    /// Every shard's published counters (for `/metrics`).
    pub(crate) stats: Vec<Arc<ShardStats>>,
    /// Set once every shard runs (the store is open before they start).
    pub(crate) ready: AtomicBool,
    /// The backend API (`None`: off).
    pub(crate) api: Option<api::ApiAuth>,
}

impl HttpCtx {
    /// The context for `cfg` (reads the API key file).
    pub(crate) fn new(
        cfg: &crate::config::Config,
        stats: Vec<Arc<ShardStats>>,
    ) -> Result<Self, String> {
        Ok(HttpCtx {
            stats,
            ready: AtomicBool::new(false),
            api: api::ApiAuth::from_config(cfg)?,
        })
    }
}

/// Accepts HTTP connections for as long as the shard runs: through a shutdown's drain
/// too, so that `/readyz` says 503 and `/metrics` can be read meanwhile.
pub(crate) async fn accept_loop(
    shard: Rc<RefCell<Shard>>,
    shared: Arc<Shared>,
    ctx: Arc<HttpCtx>,
    listener: TcpListener,
    local: Rc<LocalSignal>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                match ConnGuard::try_new(&shared.conns, peer.ip()) {
                    Ok(guard) => {
                        monoio::spawn(serve(
                            shard.clone(),
                            shared.clone(),
                            ctx.clone(),
                            stream,
                            guard,
                            local.clone(),
                        ));
                    }
                    // Over TLS the answer would need a handshake: just close.
                    Err(_) if shared.tls.is_some() => drop(stream),
                    Err(full) => {
                        // At most MAX_REFUSING at a time; past it, closed unanswered.
                        crate::net::Refusing::spawn(refuse(stream, full.reason()));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                // EMFILE and friends: do not spin.
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// How waiting for the next request's bytes ended.
enum Read {
    /// More bytes arrived.
    More,
    /// The peer closed, or the read failed.
    Ended,
    /// The request deadline passed; `partial`: part of a request had arrived.
    TimedOut { partial: bool },
}

async fn read_more(conn: &mut Conn, buf: &mut BytesMut, deadline: Instant) -> Read {
    let left = deadline.saturating_duration_since(Instant::now());
    let partial = !buf.is_empty();
    if !partial {
        // Waiting for the next request holds no read buffer (an idle keep-alive
        // connection held 16 KiB: 10 000 of them asking for /healthz every 10 s, 110 MiB).
        match monoio::time::timeout(left, conn.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Read::Ended,
            Err(_) => return Read::TimedOut { partial },
        }
    }
    let b = std::mem::take(buf);
    match monoio::time::timeout(left, conn.read(b, READ_CHUNK)).await {
        Ok((Ok(n), b)) => {
            *buf = b;
            if n == 0 {
                Read::Ended
            } else {
                Read::More
            }
        }
        Ok((Err(_), _)) => Read::Ended,
        // The read future was dropped with the buffer: the connection is closed next.
        Err(_) => Read::TimedOut { partial },
    }
}

/// Serves one accepted connection (TLS with `--tls-cert`; the one place a [`Conn`] is
/// made for the HTTP port).
async fn serve(
    shard: Rc<RefCell<Shard>>,
    shared: Arc<Shared>,
    ctx: Arc<HttpCtx>,
    stream: TcpStream,
    guard: ConnGuard,
    local: Rc<LocalSignal>,
) {
    match Conn::accepted(stream, &shared, true) {
        Ok(conn) => serve_conn(shard, shared, ctx, conn, guard, local).await,
        Err(e) => tracing::warn!(error = %e, "cannot start TLS on an HTTP connection"),
    }
}

/// Over `--max-connections` or `--max-connections-per-ip` (plain TCP): 503 and close.
async fn refuse(stream: TcpStream, reason: &'static str) {
    let mut conn = Conn::plain(stream);
    let r = Response::status(Status::Unavailable, reason);
    close_with(&mut conn, r).await;
}

/// Answers `r` and closes the connection.
async fn close_with(conn: &mut Conn, r: Response) {
    conn.close_bounded(r.encode(false, false)).await;
    linger(conn).await;
}

/// How long, and how many bytes, a refused request's connection is still read (and
/// the bytes dropped) after its answer.
const LINGER: std::time::Duration = std::time::Duration::from_millis(250);
const LINGER_BYTES: usize = 256 << 10;

/// Reads and drops what the peer still sends, for at most [`LINGER`] and
/// [`LINGER_BYTES`] or until it closes: a socket closed with unread bytes is reset, and
/// the reset can destroy the answer before the peer reads it (a client still sending
/// the rest of an oversized or slow request).
async fn linger(conn: &mut Conn) {
    let deadline = Instant::now() + LINGER;
    let mut dropped = 0;
    let mut buf = BytesMut::new();
    while dropped < LINGER_BYTES {
        buf.clear();
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, conn.read(buf, READ_CHUNK)).await {
            Ok((Ok(n), b)) if n > 0 => {
                dropped += n;
                buf = b;
            }
            _ => return,
        }
    }
}

/// Requests on one connection, one after the other (pipelined ones included), until
/// the peer closes, a request is refused, or the connection idles out.
async fn serve_conn(
    shard: Rc<RefCell<Shard>>,
    shared: Arc<Shared>,
    ctx: Arc<HttpCtx>,
    mut conn: Conn,
    guard: ConnGuard,
    local: Rc<LocalSignal>,
) {
    let cfg = shared.cfg.clone();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let deadline = Instant::now() + cfg.http_idle_timeout;
        let head = loop {
            match parse_head(&buf, cfg.http_max_head_bytes) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => {
                    let (code, status) = e.status();
                    let reason = e.reason(cfg.http_max_head_bytes);
                    return close_with(&mut conn, Response::error(code, status, reason)).await;
                }
            }
            match read_more(&mut conn, &mut buf, deadline).await {
                Read::More => {}
                Read::Ended => return conn.shutdown().await,
                Read::TimedOut { partial: false } => return conn.shutdown().await,
                Read::TimedOut { partial: true } => {
                    return close_with(&mut conn, request_timeout()).await
                }
            }
        };
        let route = routes::route(&head.method, &head.path);
        if head.body_len > cfg.http_max_body_bytes {
            // A request refused whatever its body (no API key: 401, before anything else
            // about it is told) is answered so before its size is.
            if let Some(r) = refusal(&route, &head, &ctx) {
                return close_with(&mut conn, r).await;
            }
            let r = Response::status(
                Status::TooLarge,
                format!(
                    "body over {} bytes (--http-max-body-bytes)",
                    cfg.http_max_body_bytes
                ),
            );
            return close_with(&mut conn, r).await;
        }
        if head.body_len > 0 && takes_no_body(&route, &head) {
            // An upgrade has no body; its bytes would reach the WebSocket decoder as
            // frames sent before the upgrade, past the pre-login frame bound (a 1 MiB body
            // of tiny frames held ~1.5 MiB per connection before login). Nor do health,
            // metrics or the page's assets take one: their bodies were read whole and
            // dropped, so anyone could make each connection hold `--http-max-body-bytes`
            // (500 connections sending a 1 MiB body to GET /healthz: 607 MiB RSS).
            let r = Response::status(
                Status::BadRequest,
                format!("{} {} takes no body", head.method, head.path),
            );
            return close_with(&mut conn, r).await;
        }
        if head.body_len > 0 {
            // Refused whatever its body says (the API off or the key wrong, a method or
            // path that has no handler): answered before the body is asked for (no
            // 100 Continue) or read, and the connection closed.
            if let Some(r) = refusal(&route, &head, &ctx) {
                return close_with(&mut conn, r).await;
            }
        }
        let end = head.len + head.body_len;
        if buf.len() < end && head.minor >= 1 && head.has_token("expect", "100-continue") {
            // The client waits for this before it sends the body (curl, for bodies over
            // 1 KiB): the body is within its bound.
            let go = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
            let w = monoio::time::timeout(cfg.http_idle_timeout, conn.write_all(go)).await;
            if !matches!(w, Ok(Ok(()))) {
                return;
            }
        }
        while buf.len() < end {
            match read_more(&mut conn, &mut buf, deadline).await {
                Read::More => {}
                Read::Ended => return conn.shutdown().await,
                Read::TimedOut { .. } => return close_with(&mut conn, request_timeout()).await,
            }
        }
        if route == Route::Ws {
            if !head.has_token("upgrade", "websocket") {
                let r =
                    Response::error(426, Status::BadRequest, "GET /ws needs Upgrade: websocket")
                        .with_header("upgrade", "websocket");
                // (Closed after it: the answer says so rather than keep-alive.)
                return close_with(&mut conn, r).await;
            }
            if head.minor == 0 {
                // RFC 6455 4.1: the opening handshake is HTTP/1.1 or higher.
                let r = Response::error(
                    400,
                    Status::BadRequest,
                    "a WebSocket upgrade needs HTTP/1.1 (RFC 6455 4.1)",
                );
                return close_with(&mut conn, r).await;
            }
            buf.advance(head.len);
            let Head { headers, .. } = head;
            crate::net::ws::serve(shard, shared, conn, headers, buf, guard, local).await;
            return;
        }
        if Unsent::total() >= cfg.http_max_unsent_bytes {
            let r = Response::status(
                Status::Unavailable,
                "answers not read by their peers (--http-max-unsent-bytes), try again later",
            );
            return close_with(&mut conn, r).await;
        }
        let mut request = buf.split_to(end);
        request.advance(head.len);
        let r = answer(route, &head, &request, &shard, &shared, &ctx).await;
        drop(request);
        // What is left of the read buffer is kept at its size (pipelined requests), not
        // the read's whole allocation, while the answer is written.
        buf = if buf.is_empty() {
            BytesMut::new()
        } else {
            BytesMut::from(&buf[..])
        };
        if !write_answer(&mut conn, &head, r, &cfg).await {
            return;
        }
    }
}

/// True for a request whose route never reads a body: every one outside the API (the API
/// checks its key first, see [`refusal`]).
fn takes_no_body(route: &Route, head: &Head) -> bool {
    let api = route.is_api() || head.path == "/api" || head.path.starts_with("/api/");
    !api && matches!(
        route,
        Route::Ws | Route::Healthz | Route::Readyz | Route::Metrics | Route::Asset(_)
    )
}

fn request_timeout() -> Response {
    Response::error(
        408,
        Status::Timeout,
        "request not received within --http-idle-timeout",
    )
}

/// Writes `r`; false when the connection is done (closed after it, or the write
/// failed or timed out).
async fn write_answer(
    conn: &mut Conn,
    head: &Head,
    r: Response,
    cfg: &crate::config::Config,
) -> bool {
    let keep = head.keep_alive;
    let (mut out, body, own) = r.into_parts(keep, head.method == "HEAD");
    // (Others' answers: one big answer alone is not hurried.)
    let limit = if Unsent::total() > cfg.http_max_unsent_bytes / 2 {
        STALLED_WRITE.min(cfg.http_idle_timeout)
    } else {
        cfg.http_idle_timeout
    };
    let held = Unsent::hold(own);
    let write = async {
        if body.len() <= INLINE_BODY {
            out.extend_from_slice(&body);
            return conn.write_all(out).await;
        }
        conn.write_all(out).await?;
        conn.write_bytes(body).await
    };
    let w = monoio::time::timeout(limit, write).await;
    drop(held);
    if !matches!(w, Ok(Ok(()))) {
        return false;
    }
    if !keep {
        conn.shutdown().await;
    }
    keep
}

/// The answer to a request that is refused whatever its body: under `/api/`, the API off
/// (404, every path) or the key missing or wrong (401), checked before the method and
/// the path so that nobody without the key learns which routes and methods exist;
/// elsewhere a method the path does not allow (405), a path that does not decode (400)
/// or nothing there (404).
fn refusal(route: &Route, head: &Head, ctx: &HttpCtx) -> Option<Response> {
    if route.is_api() || head.path == "/api" || head.path.starts_with("/api/") {
        let Some(api) = &ctx.api else {
            return Some(Response::status(
                Status::NotFound,
                "the API is off (no --api-key-file)",
            ));
        };
        if !api.allows(head) {
            return Some(
                Response::status(Status::Unauthorized, "missing or wrong API key")
                    .with_header("www-authenticate", "Bearer"),
            );
        }
    }
    match route {
        Route::MethodNotAllowed(allow) => Some(
            Response::error(405, Status::BadRequest, "method not allowed")
                .with_header("allow", *allow),
        ),
        Route::BadPath(why) => Some(Response::status(Status::BadRequest, why.clone())),
        Route::NotFound | Route::ApiNotFound => {
            Some(Response::status(Status::NotFound, "not found"))
        }
        _ => None,
    }
}

/// The answer to one request.
async fn answer(
    route: Route,
    head: &Head,
    body: &[u8],
    shard: &Rc<RefCell<Shard>>,
    shared: &Arc<Shared>,
    ctx: &HttpCtx,
) -> Response {
    const TEXT: &str = "text/plain; charset=utf-8";
    if let Some(r) = refusal(&route, head, ctx) {
        return r;
    }
    if route.is_api() {
        if let Some(api) = &ctx.api {
            return api::handle(route, body, api, shard, shared).await;
        }
    }
    match route {
        Route::Healthz => Response::new(200, TEXT, "ok\n"),
        Route::Readyz => {
            if ctx.ready.load(Ordering::Acquire)
                && !shared.shutdown.load(Ordering::Acquire)
                && !shared.store.is_closed()
                && !shared.store.failed()
            {
                Response::new(200, TEXT, "ready\n")
            } else {
                Response::new(503, TEXT, "not ready\n")
            }
        }
        // (Counted as its own: the text is made again whenever a figure changed, the
        // connections open among them, so stalled answers seldom share one.)
        Route::Metrics => Response::new(
            200,
            metrics::CONTENT_TYPE,
            metrics::render(
                &ctx.stats,
                shared.store.stats(),
                shared.handshakes.as_ref().map(|h| metrics::TlsStats {
                    in_progress: h.in_progress() as u64,
                    refused: h.refused(),
                }),
                shared.conns.figures(),
            ),
        ),
        Route::Asset(path) => match crate::web::asset(&path) {
            Some((content_type, bytes)) => {
                Response::shared(200, content_type, Bytes::from_static(bytes))
            }
            None => Response::status(Status::NotFound, "not found"),
        },
        _ => Response::status(Status::NotFound, "not found"),
    }
}
