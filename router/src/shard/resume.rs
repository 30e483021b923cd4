//! Resume (issue 12): a client that lost its connection takes its session back.
//!
//! - A client numbers its Sends (`Send.client_seq`). The session keeps the highest
//!   number it took ([`Session::client_seq_taken`]); a Send numbered at or below it is
//!   a copy the client sent again after a cut: it is dropped and acknowledged again.
//!   The writer tells the client how far the router took its Sends with one `SendAck`
//!   per write batch, only when the number moved (`net::session::write_loop`). A
//!   session that only sends has no write batches of its own: its writer is woken for
//!   a SendAck once [`SEND_ACK_EVERY`] Sends are unacknowledged, else by the tick
//!   (every 100 ms at most), so acknowledgements cost one small write per 128 Sends.
//! - A Login with `resume` gets a random, single-use token in its LoginResult. When the
//!   session ends, its token, user, device and `client_seq_taken` are kept here for
//!   `--resume-window` ([`Resumable`], at most `--max-resumable-sessions` per shard:
//!   past it, the one that ended first is forgotten). A Login that gives the token back
//!   (credentials are checked as for any Login first) continues that numbering; a token
//!   still held by a live session (the router has not seen the cut yet) ends that
//!   session first.
//! - What the router had delivered and the client had not acked goes back to the
//!   user's offline queue when the session ends, as for any session, and comes again
//!   at the resumed session's start, ahead of anything new; the client drops what it
//!   had already handed out by (from_user, msg_id).
//!
//! Runs on the user's home shard, like the user's sessions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringrouter_proto::v1::Login;

use super::{CloseReason, Session, SessionKey, Shard};

/// Unacknowledged Sends after which a session's writer is woken for a SendAck (below
/// it, the SendAck rides with the next write batch or the tick).
pub const SEND_ACK_EVERY: u64 = 128;

/// A resume token: 128 random bits.
pub type ResumeToken = [u8; 16];

/// What a Login asks about resuming.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumeAsk {
    /// `Login.resume`: the LoginResult should carry a token.
    pub wanted: bool,
    /// `Login.resume_token`, when it has the size of one (any other is no token).
    pub token: Option<ResumeToken>,
}

impl ResumeAsk {
    /// The resume part of a Login.
    pub fn of(l: &Login) -> ResumeAsk {
        ResumeAsk {
            wanted: l.resume,
            token: <ResumeToken>::try_from(&l.resume_token[..]).ok(),
        }
    }
}

/// The resume part of a LoginResult.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeGrant {
    /// The new token (empty: none asked for, or no random source).
    pub token: Vec<u8>,
    /// The Login's token was taken: the client_seq numbering goes on.
    pub resumed: bool,
    /// The highest client_seq the router took.
    pub client_seq_acked: u64,
}

/// A session that ended and may be resumed.
#[derive(Debug)]
struct Ended {
    user: Bytes,
    device: String,
    client_seq_taken: u64,
    at: Instant,
}

/// The sessions of one shard that ended within the resume window, by token; bounded.
#[derive(Debug, Default)]
pub struct Resumable {
    by_token: std::collections::HashMap<ResumeToken, Ended>,
    /// Tokens in the order their sessions ended (a token taken early stays here until
    /// its turn comes: `by_token` says whether it is still kept).
    order: VecDeque<(ResumeToken, Instant)>,
}

impl Resumable {
    /// Sessions kept.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// True when none is kept.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// Keeps an ended session; past `max`, forgets the ones that ended first.
    fn keep(&mut self, token: ResumeToken, e: Ended, max: usize) {
        self.order.push_back((token, e.at));
        self.by_token.insert(token, e);
        while self.by_token.len() > max {
            let Some((t, at)) = self.order.pop_front() else {
                break;
            };
            self.forget(&t, at);
        }
        // Tokens taken early leave stale entries behind: drop them once they dominate.
        if self.order.len() > 2 * self.by_token.len() + 64 {
            let by_token = &self.by_token;
            self.order
                .retain(|(t, at)| by_token.get(t).is_some_and(|e| e.at == *at));
        }
    }

    fn forget(&mut self, token: &ResumeToken, at: Instant) {
        if self.by_token.get(token).is_some_and(|e| e.at == at) {
            self.by_token.remove(token);
        }
    }

    /// Takes the session of `token` if it ended within `window` and was `user`'s on
    /// `device`: its highest client_seq taken. Single use: a token is gone once given.
    fn take(
        &mut self,
        token: &ResumeToken,
        user: &[u8],
        device: &str,
        now: Instant,
        window: Duration,
    ) -> Option<u64> {
        let e = self.by_token.get(token)?;
        if e.user != user || e.device != device {
            // Someone else's token: it stays its owner's.
            return None;
        }
        let e = self.by_token.remove(token)?;
        (now.duration_since(e.at) <= window).then_some(e.client_seq_taken)
    }

    /// Forgets the sessions that ended more than `window` ago.
    pub fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&(t, at)) = self.order.front() {
            if now.duration_since(at) <= window {
                break;
            }
            self.order.pop_front();
            self.forget(&t, at);
        }
    }
}

fn new_token() -> Option<ResumeToken> {
    let mut t = [0u8; 16];
    getrandom::fill(&mut t).ok()?;
    Some(t)
}

impl Shard {
    /// Resume at login, for the session `key` just registered: takes the session of the
    /// Login's token back (ending a live one that still holds it), and gives the session
    /// a new token if one was asked for. Runs before the session's backlog is loaded, so
    /// what an ended session gave back to the offline queue is in it.
    pub fn resume_login(&mut self, key: SessionKey, ask: ResumeAsk) -> ResumeGrant {
        let mut grant = ResumeGrant::default();
        let Some(s) = self.sessions.get(key) else {
            return grant;
        };
        let (user, device) = (s.user.clone(), s.device.clone());
        if let Some(token) = ask.token {
            let live = self
                .user_session_keys(&user)
                .iter()
                .copied()
                .find(|&k| k != key && self.sessions[k].resume_token == Some(token));
            if let Some(k) = live {
                // The router had not seen the cut yet: that connection is over.
                self.close(
                    k,
                    CloseReason::Kicked,
                    Some((
                        ringrouter_proto::Status::Conflict,
                        "session resumed on another connection",
                    )),
                );
            }
            let now = Instant::now();
            if let Some(taken) =
                self.resumable
                    .take(&token, &user, &device, now, self.cfg.resume_window)
            {
                grant.resumed = true;
                grant.client_seq_acked = taken;
                self.counters.resumes += 1;
            }
        }
        let token = if ask.wanted { new_token() } else { None };
        let s = &mut self.sessions[key];
        s.client_seq_taken = grant.client_seq_acked;
        s.client_seq_acked = grant.client_seq_acked;
        s.resume_token = token;
        grant.token = token.map(|t| t.to_vec()).unwrap_or_default();
        grant
    }

    /// Keeps a closing session resumable (when it has a token and may come back).
    pub(crate) fn keep_resumable(&mut self, key: SessionKey, reason: CloseReason) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(token) = s.resume_token.take() else {
            return;
        };
        if reason == CloseReason::Logout || reason == CloseReason::Shutdown || s.discard_unacked {
            return;
        }
        let e = Ended {
            user: s.user.clone(),
            device: s.device.clone(),
            client_seq_taken: s.client_seq_taken,
            at: Instant::now(),
        };
        let max = self.cfg.max_resumable_sessions;
        self.resumable.keep(token, e, max);
    }

    /// Resume's part of a Send numbered `client_seq` (not 0): false when the session
    /// took it already (a copy sent again after a cut: drop it; it is acknowledged
    /// again, at once). Wakes the writer for a SendAck once [`SEND_ACK_EVERY`] Sends
    /// wait for one.
    #[inline]
    pub(crate) fn take_client_seq(s: &mut Session, client_seq: u64) -> bool {
        if client_seq <= s.client_seq_taken {
            s.client_seq_acked = s.client_seq_acked.min(client_seq - 1);
            s.wake_writer();
            return false;
        }
        s.client_seq_taken = client_seq;
        if client_seq - s.client_seq_acked >= SEND_ACK_EVERY {
            s.wake_writer();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(user: &'static str, device: &str, taken: u64, at: Instant) -> Ended {
        Ended {
            user: Bytes::from_static(user.as_bytes()),
            device: device.into(),
            client_seq_taken: taken,
            at,
        }
    }

    #[test]
    fn a_token_resumes_its_own_user_and_device_once_within_the_window() {
        let mut r = Resumable::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        r.keep([1; 16], ended("ann", "phone", 7, t0), 10);
        // Another user or device: refused, and the token stays its owner's.
        assert_eq!(r.take(&[1; 16], b"bob", "phone", t0, w), None);
        assert_eq!(r.take(&[1; 16], b"ann", "laptop", t0, w), None);
        assert_eq!(r.take(&[1; 16], b"ann", "phone", t0, w), Some(7));
        // Single use.
        assert_eq!(r.take(&[1; 16], b"ann", "phone", t0, w), None);
        // Past the window: gone.
        r.keep([2; 16], ended("ann", "phone", 9, t0), 10);
        assert_eq!(r.take(&[2; 16], b"ann", "phone", t0 + w * 2, w), None);
        assert!(r.is_empty());
    }

    #[test]
    fn past_the_bound_the_session_that_ended_first_is_forgotten() {
        let mut r = Resumable::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        for i in 0..5u8 {
            r.keep([i; 16], ended("ann", "d", u64::from(i), t0), 3);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.take(&[0; 16], b"ann", "d", t0, w), None);
        assert_eq!(r.take(&[1; 16], b"ann", "d", t0, w), None);
        assert_eq!(r.take(&[4; 16], b"ann", "d", t0, w), Some(4));
        // Expiry walks the end order.
        r.expire(t0 + w * 2, w);
        assert!(r.is_empty());
        // Many taken early: the order queue does not grow without bound.
        for i in 0..1000u32 {
            let mut t = [0u8; 16];
            t[..4].copy_from_slice(&i.to_le_bytes());
            r.keep(t, ended("ann", "d", 1, t0), 3);
            assert_eq!(r.take(&t, b"ann", "d", t0, w), Some(1));
        }
        assert!(r.order.len() <= 64 + 6, "{}", r.order.len());
    }
}
