//! Presence (issue 11): each live device's status and text, the user's presence made
//! from them, and the notices to the user's accepted contacts. Runs on the user's home
//! shard, which owns its sessions and its contact list.
//!
//! # Rules
//! - A device is online from its login until it says otherwise (SetPresence). The
//!   user's status is the most present of its live devices' (online > dnd > away >
//!   offline), with the text of the device that has it (the one that set it last, on
//!   a tie); offline once the last device is gone, `last_seen_us` being when that was
//!   (kept in the user's contact record, so it outlives the shard's memory).
//! - A change goes to the live sessions of the user's accepted contacts only (one
//!   `Mail::Live` per destination shard); it is never stored or queued for later.
//!   Two users who become contacts are each sent the other's presence.
//! - Coalescing: at most one notice per user per second. A change within the second
//!   after a notice is held (only the latest kept) and sent by the shard's tick once
//!   the second is up, if it still differs from what the contacts were last told.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringrouter_proto::reply;
use ringrouter_proto::v1::{Presence, PresenceStatus, ServerFrame};

use super::contacts::ContactWaiter;
use super::mail::LiveFrame;
use super::session::SessionKey;
use super::Shard;

/// The shortest time between two notices of one user's presence.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(1);

/// How present a status is (the user shows its devices' highest).
fn rank(s: PresenceStatus) -> u8 {
    match s {
        PresenceStatus::Online => 3,
        PresenceStatus::Dnd => 2,
        PresenceStatus::Away => 1,
        PresenceStatus::Offline => 0,
    }
}

/// One user's presence state on its home shard.
#[derive(Debug, Default)]
struct UserPresence {
    /// Live devices: session, status, text, when it was set (a counter).
    devices: Vec<(SessionKey, PresenceStatus, String, u64)>,
    /// What the contacts were last told (status, text, last seen).
    told: Option<(PresenceStatus, String, u64)>,
    /// When they were told.
    told_at: Option<Instant>,
    /// Set when the last device went away.
    last_seen_us: u64,
    /// A change waits for the tick.
    held: bool,
    /// Offline, kept until a second has passed since the contacts were told (in
    /// `Presences::fading`), so a login right after is coalesced too.
    fading: bool,
}

impl UserPresence {
    /// The user's status and text from its devices'.
    fn now(&self) -> (PresenceStatus, String, u64) {
        match self
            .devices
            .iter()
            .max_by_key(|(_, st, _, at)| (rank(*st), *at))
        {
            Some((_, st, text, _)) => (*st, text.clone(), 0),
            None => (PresenceStatus::Offline, String::new(), self.last_seen_us),
        }
    }
}

/// Presence of the users homed on one shard: those with a live session, and those
/// whose last change still waits to be told.
#[derive(Debug, Default)]
pub struct Presences {
    users: HashMap<String, UserPresence>,
    /// Users with a held change.
    held: Vec<String>,
    /// Offline users told less than a second ago, with when they were told, about in
    /// that order (their entry kept for the coalescing; dropped by the tick once the
    /// second is up).
    fading: VecDeque<(Instant, String)>,
    next_at: u64,
}

impl Presences {
    /// The presence of `user` if it is known here (a live session, or a change held).
    fn get(&self, user: &str) -> Option<(PresenceStatus, String, u64)> {
        self.users.get(user).map(UserPresence::now)
    }
}

impl Shard {
    /// A device of `user` (homed here) logged in: online.
    pub(crate) fn presence_joined(&mut self, user: &str, key: SessionKey) {
        self.set_device_presence(user, key, PresenceStatus::Online, String::new());
    }

    /// Device `key` of `user` set its status and text.
    pub(crate) fn set_device_presence(
        &mut self,
        user: &str,
        key: SessionKey,
        status: PresenceStatus,
        text: String,
    ) {
        let p = &mut self.presence;
        p.next_at += 1;
        let at = p.next_at;
        let up = p.users.entry(user.to_owned()).or_default();
        match up.devices.iter_mut().find(|d| d.0 == key) {
            Some(d) => (d.1, d.2, d.3) = (status, text, at),
            None => {
                // Most users have one device: room for one, not the four a first push
                // would allocate (144 bytes less per logged-in user).
                up.devices.reserve_exact(1);
                up.devices.push((key, status, text, at));
            }
        }
        self.presence_changed(user);
    }

    /// Device `key` of `user` is gone; the last one makes the user offline.
    pub(crate) fn presence_left(&mut self, user: &str, key: SessionKey) {
        let Some(up) = self.presence.users.get_mut(user) else {
            return;
        };
        up.devices.retain(|d| d.0 != key);
        if up.devices.is_empty() {
            let now = super::now_us();
            up.last_seen_us = now;
            if self
                .contacts
                .update(user, |r| r.last_seen_us = now)
                .is_some()
            {
                self.save_contacts(user);
            }
        }
        self.presence_changed(user);
    }

    /// `user`'s presence may have changed: tell its contacts now, or hold it for the
    /// tick if they were told less than a second ago.
    fn presence_changed(&mut self, user: &str) {
        let Some(up) = self.presence.users.get_mut(user) else {
            return;
        };
        let now = up.now();
        if up.told.as_ref() == Some(&now) {
            up.held = false;
            self.forget_presence(user);
            return;
        }
        let recent = up.told_at.is_some_and(|t| t.elapsed() < PRESENCE_INTERVAL);
        if recent {
            if !up.held {
                up.held = true;
                self.presence.held.push(user.to_owned());
            }
            return;
        }
        up.held = false;
        up.told = Some(now.clone());
        up.told_at = Some(Instant::now());
        let u = user.to_owned();
        let (status, text, last_seen_us) = now;
        let frame = reply::presence(Presence {
            user: u.clone(),
            status: status as i32,
            text,
            last_seen_us,
        });
        let tell: ContactWaiter = Box::new(move |sh: &mut Shard| sh.tell_presence(&u, frame));
        self.with_contacts(user, tell);
        self.forget_presence(user);
    }

    /// Drops what is kept of an offline user once nothing is held for it and its
    /// contacts were told more than a second ago (until then the tick looks again: a
    /// user logging in and out in a loop made two notices a second, its told time going
    /// with the entry at each offline notice).
    fn forget_presence(&mut self, user: &str) {
        let p = &mut self.presence;
        let Some(up) = p.users.get_mut(user) else {
            return;
        };
        if !up.devices.is_empty() || up.held {
            return;
        }
        match up.told_at {
            Some(t) if t.elapsed() < PRESENCE_INTERVAL => {
                if !up.fading {
                    up.fading = true;
                    p.fading.push_back((t, user.to_owned()));
                }
            }
            _ => {
                p.users.remove(user);
            }
        }
    }

    /// Sends `frame` to the live sessions of `user`'s accepted contacts (its list
    /// loaded): one live frame per destination shard.
    fn tell_presence(&mut self, user: &str, frame: ServerFrame) {
        let Some(rec) = self.contacts.get(user) else {
            return;
        };
        let mut per_shard: Vec<Vec<Bytes>> = vec![Vec::new(); self.n];
        for c in rec.accepted() {
            per_shard[self.home(c.as_bytes())].push(Bytes::copy_from_slice(c.as_bytes()));
        }
        for users in per_shard.into_iter().filter(|u| !u.is_empty()) {
            let weight = 64 + 16 * users.len();
            self.route_live(LiveFrame {
                users,
                frame: frame.clone(),
                skip: None,
                weight,
                from: None,
            });
        }
    }

    /// Sends `user`'s presence (homed here) to the live sessions of `peer`, a new
    /// contact.
    pub(crate) fn share_presence(&mut self, user: &str, peer: &str) {
        let frame = reply::presence(self.presence_of(user));
        self.route_live(LiveFrame {
            users: vec![Bytes::copy_from_slice(peer.as_bytes())],
            frame,
            skip: None,
            weight: 128,
            from: None,
        });
    }

    /// The tick: sends the held changes whose second is up, and forgets the offline
    /// users whose second is.
    pub(crate) fn presence_tick(&mut self) {
        while let Some((t, _)) = self.presence.fading.front() {
            if t.elapsed() < PRESENCE_INTERVAL {
                break;
            }
            let Some((_, user)) = self.presence.fading.pop_front() else {
                break;
            };
            if let Some(up) = self.presence.users.get_mut(&user) {
                up.fading = false;
                // Dropped, or queued again if told since.
                self.forget_presence(&user);
            }
        }
        if self.presence.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.presence.held);
        for user in held {
            let due = match self.presence.users.get_mut(&user) {
                Some(up) if up.held => up.told_at.is_none_or(|t| t.elapsed() >= PRESENCE_INTERVAL),
                _ => continue,
            };
            if due {
                if let Some(up) = self.presence.users.get_mut(&user) {
                    up.told_at = None;
                    up.held = false;
                }
                self.presence_changed(&user);
            } else {
                self.presence.held.push(user);
            }
        }
    }

    /// `user`'s presence as it is now (homed here; its list loaded for `last_seen`).
    pub(crate) fn presence_of(&self, user: &str) -> Presence {
        self.presence_with(user, self.contacts.get(user))
    }

    /// [`Shard::presence_of`] with `user`'s contact list `rec` (when it has no session
    /// here, its last-seen time is the list's).
    pub(crate) fn presence_with(
        &self,
        user: &str,
        rec: Option<&crate::store::contacts::ContactRecord>,
    ) -> Presence {
        let (status, text, last_seen_us) = self.presence.get(user).unwrap_or_else(|| {
            let seen = rec.map_or(0, |r| r.last_seen_us);
            (PresenceStatus::Offline, String::new(), seen)
        });
        Presence {
            user: user.to_owned(),
            status: status as i32,
            text,
            last_seen_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_present_device_wins_and_ties_go_to_the_latest() {
        let mut up = UserPresence::default();
        assert_eq!(up.now(), (PresenceStatus::Offline, String::new(), 0));
        up.last_seen_us = 7;
        assert_eq!(up.now().2, 7, "offline shows when it was last seen");
        up.devices
            .push((1, PresenceStatus::Away, "lunch".into(), 1));
        up.devices.push((2, PresenceStatus::Dnd, "call".into(), 2));
        assert_eq!(up.now(), (PresenceStatus::Dnd, "call".into(), 0));
        up.devices.push((3, PresenceStatus::Online, "".into(), 3));
        assert_eq!(up.now().0, PresenceStatus::Online);
        up.devices
            .push((4, PresenceStatus::Online, "here".into(), 4));
        assert_eq!(up.now(), (PresenceStatus::Online, "here".into(), 0));
        assert!(rank(PresenceStatus::Dnd) > rank(PresenceStatus::Away));
    }
}
