//! A well-behaved device session ([`Dev`]) and the sending side's bookkeeping
//! ([`Sender`]).
//!
//! A message counts as sent once it is written; the messages written since the
//! last Ping round trip are "unconfirmed". A session the driver ends on purpose
//! is synced first (Ping, Pong: the router has read everything before it), and
//! what already arrived is checked before the socket goes, so every delivery the
//! client acked was looked at. If the router ends a session unexpectedly, its
//! unconfirmed messages become "uncertain" (the router may never have read them)
//! and the close itself is reported.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ringrouter_client::{Client, ClientConfig, ClientError};

use crate::check::{Checker, SentMap, SessionOrder};
use crate::payload::{encode, Header, StreamKey};
use crate::shared::Shared;

/// Connect / login / request timeout of the driver's clients (a loaded 2-core box).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
pub enum To<'a> {
    User(&'a str),
    Room(&'a str),
}

/// Counters of the streams one actor sends, and what it sent.
#[derive(Debug, Default)]
pub struct Sender {
    next: HashMap<StreamKey, u64>,
    pub sent: SentMap,
    buf: Vec<u8>,
}

impl Sender {
    fn mark_uncertain(&mut self, msgs: impl IntoIterator<Item = (StreamKey, u64)>) {
        for (k, c) in msgs {
            self.sent.entry(k).or_default().uncertain.insert(c);
        }
    }
}

/// Sets SO_RCVBUF on a connected socket (a reader with a small window).
pub fn set_rcvbuf(fd: &impl AsRawFd, bytes: usize) {
    let v = bytes as libc::c_int;
    // Safety: a valid fd and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

pub fn client_config(sh: &Shared, user: u32, device: u8) -> ClientConfig {
    let mut cfg = ClientConfig::new(sh.names.users[user as usize].clone());
    cfg.device = format!("d{device}");
    cfg.timeout = CLIENT_TIMEOUT;
    cfg
}

/// One logged-in device of a well-behaved user.
pub struct Dev {
    pub c: Client,
    pub device: u8,
    pub epoch: u32,
    /// What this session saw, for the order check.
    pub order: SessionOrder,
    queued: Vec<(StreamKey, u64)>,
    unconfirmed: Vec<(StreamKey, u64)>,
    pub since: Instant,
    /// Deliveries this session handed to the checker, and the highest seq.
    received: u64,
    max_seq: u64,
    /// First counter of each stream this session saw (for `SOAK_TRACE`).
    first: HashMap<StreamKey, u64>,
}

impl Dev {
    pub fn connect(
        sh: &Shared,
        user: u32,
        device: u8,
        epoch: u32,
        rcvbuf: Option<usize>,
    ) -> Result<Dev, ClientError> {
        let c = Client::connect(sh.addr, client_config(sh, user, device))?;
        if let Some(b) = rcvbuf {
            set_rcvbuf(c.stream(), b);
        }
        sh.count(&sh.ev.logins);
        Ok(Dev {
            c,
            device,
            epoch,
            order: SessionOrder::new(),
            queued: Vec::new(),
            unconfirmed: Vec::new(),
            since: Instant::now(),
            received: 0,
            max_seq: 0,
            first: HashMap::new(),
        })
    }

    /// Queues the next message of stream `key` (`size` bytes of payload).
    pub fn send(&mut self, s: &mut Sender, key: StreamKey, to: To<'_>, size: usize) {
        let counter = {
            let n = s.next.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        s.buf.clear();
        encode(
            &Header {
                key,
                epoch: self.epoch,
                counter,
            },
            size,
            &mut s.buf,
        );
        match to {
            To::User(u) => self.c.queue_send(u, &s.buf, false, 0),
            To::Room(r) => self.c.queue_send_room(r, &s.buf, false, 0),
        };
        let e = s.sent.entry(key).or_default();
        e.max = e.max.max(counter);
        self.queued.push((key, counter));
    }

    /// Writes what is queued.
    pub fn flush(&mut self, sh: &Shared, s: &mut Sender) -> Result<(), String> {
        if self.queued.is_empty() {
            return Ok(());
        }
        match self.c.flush() {
            Ok(()) => {
                sh.sent.fetch_add(
                    self.queued.len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                self.unconfirmed.append(&mut self.queued);
                Ok(())
            }
            Err(e) => {
                s.mark_uncertain(self.queued.drain(..));
                s.mark_uncertain(self.unconfirmed.drain(..));
                Err(format!("write failed: {e}"))
            }
        }
    }

    /// A Ping round trip: everything written before it has been read by the
    /// router (nothing to do if nothing was written since the last one).
    ///
    /// While it waits for the Pong the client reads, acks and sets aside what
    /// arrives; if the Ping fails, what was set aside is checked before the
    /// error is returned (the router forgets what was acked).
    pub fn sync(&mut self, sh: &Shared, s: &mut Sender) -> Result<(), String> {
        self.flush(sh, s)?;
        if self.unconfirmed.is_empty() {
            return Ok(());
        }
        match self.c.ping() {
            Ok(_) => {
                self.unconfirmed.clear();
                Ok(())
            }
            Err(e) => {
                s.mark_uncertain(self.unconfirmed.drain(..));
                Err(format!("ping failed: {e}"))
            }
        }
    }

    /// Checks what arrived: waits up to `first_wait` for something, then takes
    /// whatever else is there (at most `max` messages). Returns how many.
    pub fn pump(
        &mut self,
        sh: &Shared,
        chk: &mut Checker,
        first_wait: Duration,
        max: usize,
    ) -> Result<usize, String> {
        let mut n = 0;
        let mut wait = first_wait;
        // Zero: only frames already buffered; a tiny wait: one read of the socket.
        let mut read_socket_again = true;
        while n < max {
            match self.c.recv(Some(wait)) {
                // Copies of this user's own messages sent from its other device: not
                // deliveries the checker counts (live only, unsequenced).
                Ok(Some(m)) if m.outgoing => {
                    n += 1;
                    wait = Duration::ZERO;
                    read_socket_again = true;
                }
                Ok(Some(m)) => {
                    n += 1;
                    self.received += 1;
                    self.max_seq = self.max_seq.max(m.seq);
                    sh.delivered
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(h) = chk.on_message(&sh.names, &mut self.order, &m) {
                        self.first.entry(h.key).or_insert(h.counter);
                    }
                    wait = Duration::ZERO;
                    read_socket_again = true;
                }
                Ok(None) => {
                    if wait == Duration::ZERO && read_socket_again {
                        wait = Duration::from_micros(1);
                        read_socket_again = false;
                        continue;
                    }
                    break;
                }
                Err(ClientError::Router {
                    code,
                    reason,
                    request_id,
                }) => sh.notes.note(
                    "router-error-to-good-client",
                    format!(
                        "{} d{}: {} {reason} (request {request_id})",
                        chk_name(sh, chk),
                        self.device,
                        code.short_name()
                    ),
                ),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(n)
    }

    /// Ends the session on purpose: sync, check what arrived, then Logout
    /// (`clean`) or just drop the socket.
    pub fn finish(mut self, sh: &Shared, s: &mut Sender, chk: &mut Checker, clean: bool) {
        let r = self
            .sync(sh, s)
            .and_then(|()| self.pump(sh, chk, Duration::ZERO, usize::MAX).map(drop));
        self.trace();
        if let Err(e) = r {
            let _ = self.pump(sh, chk, Duration::ZERO, usize::MAX);
            report_lost(sh, chk, &self, &e);
            return;
        }
        if clean {
            let what = describe(sh, chk, &self);
            match self.c.close() {
                Ok(()) => sh.count(&sh.ev.logouts),
                Err(e) => note_lost(sh, what, &e.to_string()),
            }
        } else {
            sh.count(&sh.ev.drops);
        }
    }

    /// The router ended (or broke) the session: what was unconfirmed is uncertain.
    /// What the client read (and may have acked) but not handed out yet is
    /// checked first.
    pub fn lost(mut self, sh: &Shared, s: &mut Sender, chk: &mut Checker, why: &str) {
        let _ = self.pump(sh, chk, Duration::ZERO, usize::MAX);
        s.mark_uncertain(self.queued.drain(..));
        s.mark_uncertain(self.unconfirmed.drain(..));
        self.trace();
        report_lost(sh, chk, &self, why);
    }
}

impl Dev {
    /// With `SOAK_TRACE` set, every session prints what it saw of each stream
    /// when it ends.
    fn trace(&self) {
        if std::env::var_os("SOAK_TRACE").is_none() {
            return;
        }
        let mut streams: Vec<String> = self
            .order
            .iter()
            .map(|(k, last)| {
                format!(
                    "{:?}{}d{}>{}:{}-{}",
                    k.kind,
                    k.sender,
                    k.device,
                    k.target,
                    self.first.get(k).copied().unwrap_or(0),
                    last
                )
            })
            .collect();
        streams.sort();
        eprintln!(
            "trace: {:?} d{} epoch {} ended after {:.1} s: {} received, seq <= {}; {}",
            self.c.user(),
            self.device,
            self.epoch,
            self.since.elapsed().as_secs_f64(),
            self.received,
            self.max_seq,
            streams.join(" ")
        );
    }
}

fn describe(sh: &Shared, chk: &Checker, d: &Dev) -> String {
    format!(
        "{} d{} (epoch {}, {:.1} s old, {} received, seq up to {})",
        chk_name(sh, chk),
        d.device,
        d.epoch,
        d.since.elapsed().as_secs_f64(),
        d.received,
        d.max_seq
    )
}

fn report_lost(sh: &Shared, chk: &Checker, d: &Dev, why: &str) {
    note_lost(sh, describe(sh, chk, d), why);
}

fn note_lost(sh: &Shared, what: String, why: &str) {
    sh.count(&sh.ev.unexpected_closes);
    sh.notes.note(
        "good-session-closed",
        format!("{what} at t={:.1}s: {why}", sh.secs()),
    );
}

fn chk_name<'a>(sh: &'a Shared, chk: &Checker) -> &'a str {
    &sh.names.users[chk.me as usize]
}
