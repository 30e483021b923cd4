//! The backend API (`/api/v1/...`): a bearer key (`--api-key-file`), JSON in and out,
//! errors as `{"code": "<STATUS_NAME>", "reason": "..."}`.
//!
//! A request runs in its HTTP connection's task on the shard that accepted it. What it
//! needs from another shard travels as mail ([`Mail::Call`] runs a closure on the
//! user's home shard; a published message travels the normal routing as
//! [`Mail::Deliver`] / [`Mail::RoomSend`] with a pseudo sender, `shard::api`); what it
//! needs from the store is a store request. Every answer comes back through a one-shot
//! answer (`turns::answer`, taken in while the shard is busy too) awaited with
//! `--http-api-timeout`: a shard thread never blocks.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use ringrouter_proto::names::{check_name, check_room_name, check_send};
use ringrouter_proto::Status;

use super::request::{Head, Response};
use super::routes::Route;
use crate::config::{AuthMode, Config};
use crate::shard::mail::RoomSend;
use crate::shard::{now_us, CloseReason, Mail, Routed, Shard};
use crate::shared::Shared;
use crate::turns::{answer, AnswerRx};

/// Longest token lifetime `POST /api/v1/tokens` issues (one year).
pub(crate) const MAX_TOKEN_TTL_S: u64 = 366 * 24 * 3600;

/// What the API needs to start: its key, and the JWT signing key in `--auth jwt`.
pub(crate) struct ApiAuth {
    key: Vec<u8>,
    jwt: Option<jsonwebtoken::EncodingKey>,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiAuth")
    }
}

fn read_secret(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    let raw =
        std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    let s = raw.trim_ascii();
    if s.is_empty() {
        return Err(format!("{what} {} is empty", path.display()));
    }
    Ok(s.to_vec())
}

impl ApiAuth {
    /// The API's keys from `cfg`; `None` without `--api-key-file` (the API is off).
    pub(crate) fn from_config(cfg: &Config) -> Result<Option<ApiAuth>, String> {
        let Some(path) = &cfg.api_key_file else {
            return Ok(None);
        };
        let key = read_secret(path, "--api-key-file")?;
        let jwt = match (&cfg.auth, &cfg.jwt_secret_file) {
            (AuthMode::Jwt, Some(p)) => Some(jsonwebtoken::EncodingKey::from_secret(&read_secret(
                p,
                "--jwt-secret-file",
            )?)),
            _ => None,
        };
        Ok(Some(ApiAuth { key, jwt }))
    }

    /// True when the request carries `authorization: Bearer <the key>`.
    pub(crate) fn allows(&self, head: &Head) -> bool {
        let Some(v) = head.header("authorization") else {
            return false;
        };
        let Some((scheme, token)) = v.split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer") && ct_eq(token.trim().as_bytes(), &self.key)
    }
}

/// Compares in a time that depends on the lengths only.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Runs one API request (the key was checked).
pub(crate) async fn handle(
    route: Route,
    body: &[u8],
    api: &ApiAuth,
    shard: &Rc<RefCell<Shard>>,
    shared: &Arc<Shared>,
) -> Response {
    let r = match route {
        Route::Publish => publish(body, shard, shared).await,
        Route::Tokens => tokens(body, api),
        Route::Disconnect(user) => disconnect(user, shard, shared).await,
        Route::User(user) => user_info(user, shard, shared).await,
        Route::Room(room) => room_info(room, shard, shared).await,
        _ => Err(Response::status(Status::NotFound, "no such API path")),
    };
    r.unwrap_or_else(|e| e)
}

type Answer = Result<Response, Response>;

fn bad(reason: impl Into<String>) -> Response {
    Response::status(Status::BadRequest, reason)
}

/// A JSON object body as `T`. Only an object: serde's derive would also take an array
/// of the fields in order (`["bob", null, "hi"]` published a message).
fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        // (A BOM, an array, a string or nothing: the parser words the error.)
        if let Err(e) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) {
            return Err(bad(format!("bad JSON body: {e}")));
        }
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("bad JSON body: {e}")))
}

/// Awaits an answer for at most `--http-api-timeout`.
async fn within<T>(t: Duration, rx: AnswerRx<T>) -> Result<T, Response> {
    match monoio::time::timeout(t, rx).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(Response::status(
            Status::Unavailable,
            "the request was dropped (the router is shutting down)",
        )),
        Err(_) => Err(timed_out()),
    }
}

fn timed_out() -> Response {
    Response::status(Status::Unavailable, "no answer within --http-api-timeout")
}

/// Runs `f` on shard `home` (this one or another, through the mailboxes).
fn call<T: Send + 'static>(
    shard: &Rc<RefCell<Shard>>,
    home: usize,
    f: impl FnOnce(&mut Shard) -> T + Send + 'static,
) -> AnswerRx<T> {
    let (tx, rx) = answer();
    let job = Box::new(move |sh: &mut Shard| {
        // The receiver is gone only when the request timed out.
        let _ = tx.send(f(sh));
    });
    shard.borrow_mut().post(home, Mail::Call(job));
    rx
}

/// A store request of the API, its answer sent back to the HTTP task, through the
/// shard's page-read gate ([`Shard::api_read`]); 503 when too many wait there. The
/// request is not made if the HTTP task gave up meanwhile (timed out: it dropped the
/// returned token), so that a waiting read nobody will see takes no turn's work.
fn gated_store_call<T: Send + 'static>(
    shard: &Rc<RefCell<Shard>>,
    submit: impl crate::shard::store_link::Submit<T>,
) -> Result<(AnswerRx<crate::store::StoreResult<T>>, Arc<()>), Response> {
    let (tx, rx) = answer();
    let alive = Arc::new(());
    let asker = Arc::downgrade(&alive);
    let submit = move |st: &crate::store::StoreHandle, cb| {
        if asker.strong_count() == 0 {
            // (`cb` dropped uncalled: answered Closed, its turn given back.)
            return Err(crate::store::StoreError::Closed);
        }
        submit(st, cb)
    };
    let made = shard.borrow_mut().api_read(submit, move |_, r| {
        // The receiver is gone only when the request timed out.
        let _ = tx.send(r);
    });
    if !made {
        return Err(Response::status(
            Status::Unavailable,
            "too many API reads wait for the store on this shard",
        ));
    }
    Ok((rx, alive))
}

fn refuse_name(e: ringrouter_proto::names::NameError) -> Response {
    bad(e.to_string())
}

fn check_serving(shared: &Shared) -> Result<(), Response> {
    if shared.shutdown.load(std::sync::atomic::Ordering::Acquire) {
        return Err(Response::status(Status::Unavailable, "shutting down"));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishReq {
    #[serde(default)]
    to_user: Option<String>,
    #[serde(default)]
    to_room: Option<String>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_b64: Option<String>,
    #[serde(default)]
    from_user: Option<String>,
}

/// A publish's place among the messages waiting for room in the store's queue
/// (`Shard::poll_api_room_send`), given back when dropped.
struct ApiRoomWait<'a> {
    shard: &'a Rc<RefCell<Shard>>,
    ticket: Option<u64>,
}

impl Drop for ApiRoomWait<'_> {
    fn drop(&mut self) {
        // (Never dropped inside a borrow of the shard; were it, the ticket would go
        // past `--http-api-timeout`: `Shard::local_waits_changed`.)
        if let (Some(t), Ok(mut sh)) = (self.ticket.take(), self.shard.try_borrow_mut()) {
            sh.api_room_wait_done(t);
        }
    }
}

/// `POST /api/v1/publish`: a message from `from_user` (default `system`) to a user or
/// a room, routed like a client's Send with a result: delivered to every session, or
/// stored for a user with none; a room's members each get it (the API may publish to
/// any room). The answer waits for that outcome.
async fn publish(body: &[u8], shard: &Rc<RefCell<Shard>>, shared: &Arc<Shared>) -> Answer {
    let req: PublishReq = parse_json(body)?;
    if req.to_user.is_some() == req.to_room.is_some() {
        return Err(bad("give one of to_user and to_room"));
    }
    // A name given empty is a bad name, not a missing one.
    let to_user = req.to_user.unwrap_or_default();
    let to_room = req.to_room.unwrap_or_default();
    if to_user.is_empty() && to_room.is_empty() {
        return Err(bad("to_user / to_room: a name may not be empty"));
    }
    check_send(to_user.as_bytes(), to_room.as_bytes()).map_err(refuse_name)?;
    let from_user = req.from_user.unwrap_or_else(|| "system".to_owned());
    check_name("from_user", &from_user).map_err(refuse_name)?;
    let payload = match (req.payload, req.payload_b64) {
        (Some(p), None) => Bytes::from(p.into_bytes()),
        (None, Some(b)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| bad(format!("payload_b64: {e}")))?,
        ),
        _ => return Err(bad("give one of payload and payload_b64")),
    };
    let max = shared.cfg.max_payload_bytes;
    if payload.len() > max {
        return Err(Response::status(
            Status::TooLarge,
            format!(
                "payload of {} bytes exceeds --max-payload-bytes {max}",
                payload.len()
            ),
        ));
    }
    check_serving(shared)?;
    // One deadline for the wait for room and the wait for the outcome.
    let deadline = std::time::Instant::now() + shared.cfg.http_api_timeout;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    // Backpressure as for a session's reader: wait while the pipeline to the other
    // shards or the store requests are over their marks.
    let room = poll_fn(|cx| {
        shard
            .borrow_mut()
            .poll_api_intake(to_room.as_bytes(), cx.waker())
    });
    if monoio::time::timeout(left(), room).await.is_err() {
        return Err(timed_out());
    }
    let to_a_room = !to_room.is_empty();
    if to_a_room {
        // A message to a room homed here is handled at once (below), so it waits first
        // until its store requests fit in the store's queue, as a session's does
        // (`Shard::room_send_may_go`): handled as they came, 20 publishers pipelining to a
        // room of 10 000 offline members took a shard's queue to 59 462 requests, past
        // its bound (16 384) and the reserve kept for sessions with nothing in it.
        // (Its ticket is given back however the wait ends: this future dropped too.)
        let mut wait = ApiRoomWait {
            shard,
            ticket: None,
        };
        let room = poll_fn(|cx| {
            shard
                .borrow_mut()
                .poll_api_room_send(to_room.as_bytes(), cx.waker(), &mut wait.ticket)
        });
        let waited = monoio::time::timeout(left(), room).await;
        drop(wait);
        if waited.is_err() {
            return Err(timed_out());
        }
    }
    let (tx, rx) = answer();
    let id = {
        let mut sh = shard.borrow_mut();
        sh.counters.api_publishes += 1;
        let id = sh.api_sender(tx);
        let msg_id = sh.next_msg_id();
        let ts_us = now_us();
        let from_user = Bytes::from(from_user.into_bytes());
        if !to_a_room {
            let home = sh.home(to_user.as_bytes());
            let m = Routed {
                to_user: Some(Bytes::from(to_user.into_bytes())),
                from_user: Some(from_user),
                payload,
                msg_id,
                ts_us,
                reply: Some((id, 0)),
                sender: id,
            };
            sh.post(home, Mail::Deliver(m));
            // The next Deliver in that batch names its users again (elided names refer
            // to the previous Deliver of the batch).
            sh.outbox_last[home] = None;
        } else {
            let home = sh.home(to_room.as_bytes());
            let m = RoomSend {
                room: Bytes::from(to_room.into_bytes()),
                from_user,
                payload,
                msg_id,
                ts_us,
                reply: Some((id, 0)),
                sender: id,
                live: crate::shard::mail::Live::No,
            };
            if home == sh.id {
                sh.on_room_send(m);
            } else {
                sh.post(home, Mail::RoomSend(m));
            }
        }
        id
    };
    match monoio::time::timeout(left(), rx).await {
        Ok(Ok((Status::Ok, msg_id))) => Ok(Response::json(
            200,
            // (`msg_id_str`: ids pass 2^53, past which JavaScript's numbers round.)
            &json!({ "msg_id": msg_id, "msg_id_str": msg_id.to_string(), "status": "OK" }),
        )),
        Ok(Ok((status, _))) => Err(Response::status(
            status,
            match status {
                Status::NotFound if to_a_room => "no such room",
                other => ringrouter_proto::reply::send_status_reason(other),
            },
        )),
        Ok(Err(_)) => Err(Response::status(
            Status::Unavailable,
            "the request was dropped (the router is shutting down)",
        )),
        Err(_) => {
            shard.borrow_mut().api_forget(id);
            Err(timed_out())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenReq {
    user: String,
    ttl_s: u64,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// `POST /api/v1/tokens`: a JWT for `user` valid `ttl_s` seconds (`--auth jwt` only).
fn tokens(body: &[u8], api: &ApiAuth) -> Answer {
    let req: TokenReq = parse_json(body)?;
    let Some(key) = &api.jwt else {
        return Err(bad(
            "tokens are issued in --auth jwt only (this router runs another auth mode)",
        ));
    };
    check_name("user", &req.user).map_err(refuse_name)?;
    if req.ttl_s == 0 || req.ttl_s > MAX_TOKEN_TTL_S {
        return Err(bad(format!("ttl_s must be 1 to {MAX_TOKEN_TTL_S}")));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let exp = now + req.ttl_s;
    let claims = Claims {
        sub: &req.user,
        iat: now,
        exp,
    };
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, key)
        .map_err(|e| Response::status(Status::Internal, format!("cannot sign: {e}")))?;
    Ok(Response::json(
        200,
        &json!({ "token": token, "expires_at": exp }),
    ))
}

/// `DELETE /api/v1/users/{user}/sessions`: closes every session of the user (each gets
/// Error UNAUTHORIZED first); answers how many.
async fn disconnect(user: String, shard: &Rc<RefCell<Shard>>, shared: &Arc<Shared>) -> Answer {
    check_name("user", &user).map_err(refuse_name)?;
    check_serving(shared)?;
    let home = shard.borrow().home(user.as_bytes());
    let name = user.clone();
    let rx = call(shard, home, move |sh| {
        let keys = sh.live_sessions(name.as_bytes());
        for &k in &keys {
            sh.close(
                k,
                CloseReason::Kicked,
                Some((Status::Unauthorized, "disconnected by the server")),
            );
        }
        keys.len()
    });
    let n = within(shared.cfg.http_api_timeout, rx).await?;
    Ok(Response::json(
        200,
        &json!({ "user": user, "disconnected": n }),
    ))
}

/// `GET /api/v1/users/{user}`: sessions online and messages queued offline; 404 for a
/// user the router does not know.
async fn user_info(user: String, shard: &Rc<RefCell<Shard>>, shared: &Arc<Shared>) -> Answer {
    check_name("user", &user).map_err(refuse_name)?;
    let t = shared.cfg.http_api_timeout;
    let home = shard.borrow().home(user.as_bytes());
    let name = user.clone();
    let sessions = call(shard, home, move |sh| sh.user_sessions(name.as_bytes()));
    let u = user.clone();
    let (exists, _asking) = gated_store_call(shard, move |st, cb| st.user_exists(&u, cb))?;
    let u = user.clone();
    let (queued, _asking_too) = gated_store_call(shard, move |st, cb| st.count(&u, cb))?;
    // One deadline for the three answers: the request waits `--http-api-timeout` at
    // most, not once per answer.
    let deadline = std::time::Instant::now() + t;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    let sessions = within(left(), sessions).await?;
    let store_err = |e: crate::store::StoreError| {
        Response::status(
            crate::shard::store_link::store_status(&e),
            format!("store: {e}"),
        )
    };
    let exists = within(left(), exists).await?.map_err(store_err)?;
    let queued = within(left(), queued).await?.map_err(store_err)?;
    if !exists && sessions == 0 {
        return Err(Response::status(Status::NotFound, "no such user"));
    }
    Ok(Response::json(
        200,
        &json!({ "user": user, "sessions": sessions, "queued": queued }),
    ))
}

/// `GET /api/v1/rooms/{room}`: owner and members (from the store, which every change of
/// a room reaches before its members hear of it).
async fn room_info(room: String, shard: &Rc<RefCell<Shard>>, shared: &Arc<Shared>) -> Answer {
    check_room_name("room", &room).map_err(refuse_name)?;
    let name = room.clone();
    let (rx, _asking) = gated_store_call(shard, move |st, cb| st.get_room(&name, cb))?;
    let rec = within(shared.cfg.http_api_timeout, rx)
        .await?
        .map_err(|e| {
            Response::status(
                crate::shard::store_link::store_status(&e),
                format!("store: {e}"),
            )
        })?;
    match rec {
        Some(rec) if rec.name == room => {
            let mut members = rec.members.clone();
            members.sort();
            Ok(Response::json(
                200,
                &json!({
                    "room": rec.name,
                    "owner": rec.owner,
                    "members": members,
                    "join_code": rec.join_code,
                    "has_password": rec.password_hash.is_some(),
                }),
            ))
        }
        _ => Err(Response::status(Status::NotFound, "no such room")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[monoio::test(driver = "legacy", timer_enabled = true)]
    async fn answers_not_back_within_the_api_timeout_are_503() {
        let (tx, rx) = answer::<u32>();
        let resp = within(Duration::from_millis(20), rx)
            .await
            .expect_err("no answer came");
        assert_eq!(resp.code, 503);
        assert!(String::from_utf8_lossy(&resp.body).contains("UNAVAILABLE"));
        drop(tx);
        let (tx, rx) = answer::<u32>();
        assert!(tx.send(7), "the receiver waits");
        assert_eq!(within(Duration::from_millis(20), rx).await.ok(), Some(7));
        let (tx, rx) = answer::<u32>();
        drop(tx);
        let dropped = within(Duration::from_secs(5), rx).await;
        assert_eq!(dropped.map_err(|r| r.code).err(), Some(503));
    }

    #[test]
    fn keys_compare_whole() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"", b"a"));
    }

    #[test]
    fn bearer_header() {
        let auth = ApiAuth {
            key: b"s3cret".to_vec(),
            jwt: None,
        };
        let head = |v: &str| {
            let raw = format!("GET / HTTP/1.1\r\nAuthorization: {v}\r\n\r\n");
            super::super::request::parse_head(raw.as_bytes(), 1024)
                .unwrap()
                .unwrap()
        };
        assert!(auth.allows(&head("Bearer s3cret")));
        assert!(auth.allows(&head("bearer s3cret")));
        assert!(!auth.allows(&head("Bearer s3cre")));
        assert!(!auth.allows(&head("Basic s3cret")));
        assert!(!auth.allows(&head("s3cret")));
    }
}
