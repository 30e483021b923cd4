//! The receiving side's checks: no loss, per-sender order, dedupe, integrity.
//!
//! A [`Checker`] belongs to one receiving user (all of its devices). It dedupes
//! by (stream, counter) from the payload and checks that a client deduping by
//! `msg_id` would take the same decisions: a redelivered message keeps its
//! `msg_id`, and two different messages never share one. Order is checked per
//! session: within one connection, a message new to the user must come after
//! every message of its stream that session already saw.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::AddAssign;

use ringrouter_client::Message;

use crate::payload::{decode, Header, Kind, Names, StreamKey};

/// (counter, msg_id) remembered per stream for the msg_id consistency check.
const RING: usize = 512;
/// Recent msg_ids remembered per user for the collision check.
const RECENT_IDS: usize = 1 << 16;
/// Problem descriptions kept per checker.
const MAX_DETAILS: usize = 20;

/// What one user received of one stream.
#[derive(Debug, Clone)]
pub struct StreamState {
    /// Every counter up to this one was received.
    pub contig: u64,
    /// Counters received above `contig + 1`.
    pub above: BTreeSet<u64>,
    pub max: u64,
    ring: Vec<(u64, u64)>,
}

impl StreamState {
    fn new(start: u64) -> StreamState {
        StreamState {
            contig: start,
            above: BTreeSet::new(),
            max: start,
            ring: Vec::new(),
        }
    }

    pub fn has(&self, c: u64) -> bool {
        c <= self.contig || self.above.contains(&c)
    }

    fn insert(&mut self, c: u64) {
        if c == self.contig + 1 {
            self.contig = c;
            while self.above.remove(&(self.contig + 1)) {
                self.contig += 1;
            }
        } else {
            self.above.insert(c);
        }
        self.max = self.max.max(c);
    }

    /// Counters in `contig+1 ..= upto` not received, not counting `uncertain`
    /// ones: (how many, the first).
    pub fn missing(&self, upto: u64, uncertain: &BTreeSet<u64>) -> (u64, Option<u64>) {
        let mut n = 0;
        let mut first = None;
        let mut c = self.contig + 1;
        while c <= upto {
            if !self.above.contains(&c) && !uncertain.contains(&c) {
                n += 1;
                first.get_or_insert(c);
            }
            c += 1;
        }
        (n, first)
    }

    /// The first `n` runs of counters missing in `contig+1 ..= upto` (not counting
    /// `uncertain` ones), as "a-b" strings.
    pub fn missing_runs(&self, upto: u64, uncertain: &BTreeSet<u64>, n: usize) -> Vec<String> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut c = self.contig + 1;
        while c <= upto && runs.len() <= n {
            if !self.above.contains(&c) && !uncertain.contains(&c) {
                match runs.last_mut() {
                    Some(r) if r.1 + 1 == c => r.1 = c,
                    _ => runs.push((c, c)),
                }
            }
            c += 1;
        }
        runs.truncate(n);
        runs.iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect()
    }

    /// Counters missing between the first and the last received (window mode).
    pub fn gaps(&self) -> u64 {
        (self.max - self.contig) - self.above.len() as u64
    }
}

/// Counts kept by a checker (summed over checkers for the summary).
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckStats {
    /// Deliveries handed to the checker.
    pub received: u64,
    /// Messages new to their user.
    pub unique: u64,
    /// Redeliveries (already seen by the user).
    pub dups: u64,
    /// New messages that came after a later one of their stream in the same session.
    pub reorders: u64,
    /// New messages older than one the user saw on another device (not a failure).
    pub late_across_devices: u64,
    /// A redelivered message with another msg_id than its first delivery.
    pub msgid_changed: u64,
    /// Two different messages with the same msg_id (or msg_id 0).
    pub msgid_collision: u64,
    /// A payload whose bytes are not what was sent.
    pub corrupt: u64,
    /// Wrong from_user, room, or recipient.
    pub misrouted: u64,
    /// Copies of the user's own room messages on another of its devices.
    pub own_copies: u64,
}

impl AddAssign for CheckStats {
    fn add_assign(&mut self, o: CheckStats) {
        self.received += o.received;
        self.unique += o.unique;
        self.dups += o.dups;
        self.reorders += o.reorders;
        self.late_across_devices += o.late_across_devices;
        self.msgid_changed += o.msgid_changed;
        self.msgid_collision += o.msgid_collision;
        self.corrupt += o.corrupt;
        self.misrouted += o.misrouted;
        self.own_copies += o.own_copies;
    }
}

/// Per session: the last counter of each stream this session saw.
pub type SessionOrder = HashMap<StreamKey, u64>;

/// Everything one user received.
#[derive(Debug)]
pub struct Checker {
    pub me: u32,
    /// Window mode: a stream starts at its first message (a room visitor sees
    /// only what was sent while it was a member).
    window: bool,
    pub streams: HashMap<StreamKey, StreamState>,
    recent: HashMap<u64, (StreamKey, u64)>,
    recent_order: VecDeque<u64>,
    pub st: CheckStats,
    pub details: Vec<String>,
}

impl Checker {
    pub fn new(me: u32) -> Checker {
        Checker {
            me,
            window: false,
            streams: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            st: CheckStats::default(),
            details: Vec::new(),
        }
    }

    pub fn window(me: u32) -> Checker {
        Checker {
            window: true,
            ..Checker::new(me)
        }
    }

    fn detail(&mut self, names: &Names, s: String) {
        if self.details.len() < MAX_DETAILS {
            self.details
                .push(format!("{}: {s}", names.users[self.me as usize]));
        }
    }

    /// Checks one delivered message; returns its header if it is well formed and
    /// meant for this user.
    pub fn on_message(
        &mut self,
        names: &Names,
        sess: &mut SessionOrder,
        m: &Message,
    ) -> Option<Header> {
        self.st.received += 1;
        let h = match decode(&m.payload) {
            Ok(h) => h,
            Err(e) => {
                self.st.corrupt += 1;
                self.detail(
                    names,
                    format!(
                        "corrupt payload from {} ({e}), {} bytes",
                        m.sender,
                        m.payload.len()
                    ),
                );
                return None;
            }
        };
        let k = h.key;
        let sender_ok = names.users.get(k.sender as usize) == Some(&m.sender);
        let target_ok = match k.kind {
            Kind::Dm => m.room.is_none() && k.target == self.me,
            Kind::SelfSend => m.room.is_none() && k.sender == self.me,
            Kind::Room => {
                m.room.as_deref() == names.rooms.get(k.target as usize).map(|s| s.as_str())
            }
            Kind::Temp => m.room.as_deref() == Some(names.temp_room(k.target).as_str()),
        };
        if !sender_ok || !target_ok {
            self.st.misrouted += 1;
            self.detail(
                names,
                format!(
                    "misrouted: from_user {:?} room {:?}, payload says {k:?}",
                    m.sender, m.room
                ),
            );
            return None;
        }
        if matches!(k.kind, Kind::Room | Kind::Temp) && k.sender == self.me {
            self.st.own_copies += 1;
            return None;
        }
        let c = h.counter;
        let window = self.window;
        let st = self
            .streams
            .entry(k)
            .or_insert_with(|| StreamState::new(if window { c.saturating_sub(1) } else { 0 }));
        let dup = st.has(c);
        let slot = c as usize % RING;
        let mut problem = None;
        if dup {
            self.st.dups += 1;
            if st.ring.len() == RING && st.ring[slot].0 == c && st.ring[slot].1 != m.msg_id {
                self.st.msgid_changed += 1;
                problem = Some(format!(
                    "{k:?} #{c} redelivered with msg_id {} (first {})",
                    m.msg_id, st.ring[slot].1
                ));
            }
        } else {
            self.st.unique += 1;
            if c < st.max {
                self.st.late_across_devices += 1;
            }
            st.insert(c);
            if st.ring.is_empty() {
                st.ring = vec![(0, 0); RING];
            }
            st.ring[slot] = (c, m.msg_id);
            if m.msg_id == 0 {
                self.st.msgid_collision += 1;
                problem = Some(format!("{k:?} #{c} has msg_id 0"));
            } else if let Some(&(k2, c2)) = self.recent.get(&m.msg_id) {
                self.st.msgid_collision += 1;
                problem = Some(format!(
                    "{k:?} #{c} has msg_id {} of {k2:?} #{c2}",
                    m.msg_id
                ));
            } else {
                self.recent.insert(m.msg_id, (k, c));
                self.recent_order.push_back(m.msg_id);
                if self.recent_order.len() > RECENT_IDS {
                    if let Some(old) = self.recent_order.pop_front() {
                        self.recent.remove(&old);
                    }
                }
            }
        }
        let last = sess.entry(k).or_insert(0);
        if c <= *last {
            if !dup {
                self.st.reorders += 1;
                problem.get_or_insert(format!(
                    "reordered: {k:?} #{c} (epoch {}) after #{} in the same session",
                    h.epoch, *last
                ));
            }
        } else {
            *last = c;
        }
        if let Some(p) = problem {
            self.detail(names, p);
        }
        Some(h)
    }
}

/// What a sender sent in one stream.
#[derive(Debug, Default, Clone)]
pub struct SentInfo {
    /// Highest counter written (or attempted).
    pub max: u64,
    /// Counters whose fate is unknown: written just before the router closed
    /// the connection unexpectedly (the router may never have read them).
    pub uncertain: BTreeSet<u64>,
}

pub type SentMap = HashMap<StreamKey, SentInfo>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::encode;
    use bytes::Bytes;

    fn names() -> Names {
        Names::new("t", 3, 0, 0, 0, 1)
    }

    fn msg(names: &Names, sender: u32, target: u32, counter: u64, msg_id: u64) -> Message {
        let h = Header {
            key: StreamKey {
                kind: Kind::Dm,
                sender,
                device: 0,
                target,
            },
            epoch: 1,
            counter,
        };
        let mut p = Vec::new();
        encode(&h, 40, &mut p);
        Message {
            sender: names.users[sender as usize].clone(),
            room: None,
            payload: Bytes::from(p),
            seq: counter,
            msg_id,
            timestamp_us: 0,
            ephemeral: false,
            outgoing: false,
            to_user: None,
        }
    }

    #[test]
    fn loss_dups_and_order() {
        let n = names();
        let mut c = Checker::new(1);
        let mut s1 = SessionOrder::new();
        for i in [1, 2, 4] {
            c.on_message(&n, &mut s1, &msg(&n, 0, 1, i, 100 + i));
        }
        // A redelivery in a new session: a dup, not a reorder.
        let mut s2 = SessionOrder::new();
        c.on_message(&n, &mut s2, &msg(&n, 0, 1, 2, 102));
        assert_eq!((c.st.dups, c.st.reorders), (1, 0));
        // 3 after 4 in the first session: reordered.
        c.on_message(&n, &mut s1, &msg(&n, 0, 1, 3, 103));
        assert_eq!(c.st.reorders, 1);
        let key = StreamKey {
            kind: Kind::Dm,
            sender: 0,
            device: 0,
            target: 1,
        };
        let st = &c.streams[&key];
        assert_eq!(st.contig, 4);
        assert_eq!(st.missing(6, &BTreeSet::new()), (2, Some(5)));
        assert_eq!(st.missing(6, &BTreeSet::from([5])), (1, Some(6)));
        // A redelivery with another msg_id; a new message with a used one.
        c.on_message(&n, &mut s2, &msg(&n, 0, 1, 4, 999));
        assert_eq!(c.st.msgid_changed, 1);
        c.on_message(&n, &mut s2, &msg(&n, 0, 1, 5, 101));
        assert_eq!(c.st.msgid_collision, 1);
        // Sent to someone else, or with a forged sender.
        c.on_message(&n, &mut s2, &msg(&n, 0, 2, 1, 500));
        let mut forged = msg(&n, 0, 1, 6, 501);
        forged.sender = "tu2".into();
        c.on_message(&n, &mut s2, &forged);
        assert_eq!(c.st.misrouted, 2);
    }

    #[test]
    fn window_mode_counts_gaps_from_the_first_message() {
        let n = names();
        let mut c = Checker::window(1);
        let mut s = SessionOrder::new();
        for i in [50, 51, 53, 55] {
            c.on_message(&n, &mut s, &msg(&n, 0, 1, i, i));
        }
        let st = c.streams.values().next().expect("one stream");
        assert_eq!(st.gaps(), 2);
    }
}
