//! Offline appends behind the other requests (bulk lane).
//!
//! One room message to a room of 10 000 offline members is 10 000 appends to offline
//! queues, ~2 µs of this thread each; a burst of 300 such messages kept the storage
//! thread busy for 6 s, and every other user's request waited its turn behind up to the
//! ~40 000 appends the shards may have queued (their store marks): logins 98 ms at the
//! median, 625 ms at worst, a ListConversations 3.9 s.
//!
//! So appends to offline queues (`Enqueue`, `EnqueueEach`: offline messages, room
//! messages and notices for offline members, journaled messages) wait in [`Lanes`]
//! when they come, and each round handles the other requests first, then at most
//! [`BULK_ROUND`] of them. A request jumps the appends waiting only where that changes
//! nothing it sees or does:
//! - it touches no offline queue and no account ([`Lane::Free`]: history, rooms by name,
//!   password hashes);
//! - or it concerns named users ([`Lane::Users`]) none of which has an append waiting
//!   (a login's `Load` must find the messages queued for it before it came, a
//!   DeleteAccount must come after them).
//!
//! `Flush` and shutdown ([`Lane::InOrder`]), and a request naming a user with an append
//! waiting, are handled after every append that came before them, as before (committed
//! a round's bytes at a time). Appends keep their own order. The idle-user sweep counts
//! a user's waiting appends as queued. Users are noted
//! by a hash of their name: two names with one hash cost an append's wait, never its
//! order.

use std::collections::VecDeque;
use std::hash::{BuildHasher, BuildHasherDefault};

use rustc_hash::{FxHashMap, FxHasher};

use crate::store::Msg;

/// Most messages appended in a round (besides the round's other requests; at least one
/// request): ~2 ms of this thread at ~2 µs each, so a request that jumps the appends
/// waits at most about that (and the round's commit). Sync durability still commits
/// hundreds per fsync.
pub(crate) const BULK_ROUND: usize = 1024;

/// Sealed memtables of the offline queues' keyspace (waiting for fjall's flush) past
/// which the appends wait: fjall holds every write of the keyspace at 4 (100 ms sleeps
/// in the commit, with this thread and every request in its round), which a storm of
/// room messages to offline members reached every second or so (others' requests held
/// 300-540 ms each time). The other requests go on meanwhile: their writes are small.
pub(crate) const BULK_SEALED_MAX: usize = 2;

/// How long the storage thread waits for a request while the appends are held back
/// (then it looks at fjall's flushes again).
pub(crate) const BULK_HOLD_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// What a request may jump (see the module doc).
pub(crate) enum Lane<'a> {
    /// An append to offline queues: waits in the bulk lane.
    Bulk,
    /// Touches no offline queue or account.
    Free,
    /// Concerns only these users' queues, accounts, lists and memberships.
    Users(&'a [String]),
    /// Concerns this user only.
    User(&'a str),
    /// After every append before it.
    InOrder,
}

impl Msg {
    /// This request's lane (see the module doc).
    pub(crate) fn lane(&self) -> Lane<'_> {
        match self {
            Msg::Enqueue { .. } | Msg::EnqueueEach { .. } => Lane::Bulk,
            Msg::HistoryAppend { .. }
            | Msg::HistoryQuery { .. }
            | Msg::HistoryMark { .. }
            | Msg::HashPassword { .. }
            | Msg::CheckPassword { .. }
            | Msg::Hashed { .. }
            | Msg::GetRoom { .. }
            | Msg::RoomByCode { .. }
            // Rooms as a whole and the account list: no queue, no account an append
            // changes (an append reads accounts, never writes them).
            | Msg::ListUsers { .. }
            | Msg::CreateRoom { .. }
            | Msg::PutRoom { .. }
            | Msg::DeleteRoom { .. } => Lane::Free,
            Msg::Append { user, .. }
            | Msg::EnsureUser { user, .. }
            | Msg::Load { user, .. }
            | Msg::RemoveUpTo { user, .. }
            | Msg::Count { user, .. }
            | Msg::Clear { user, .. }
            | Msg::Register { user, .. }
            | Msg::Verify { user, .. }
            | Msg::UserExists { user, .. }
            | Msg::DeleteAccount { user, .. }
            | Msg::GetContacts { user, .. }
            | Msg::BlockersAmong { user, .. }
            | Msg::BlockersAfter { user, .. }
            | Msg::SaveContacts { user, .. }
            | Msg::NoteBlocker { user, .. }
            | Msg::RoomsOf { user, .. }
            | Msg::OwnRooms { user, .. }
            | Msg::AddMember { user, .. }
            | Msg::RemoveMember { user, .. }
            | Msg::Conversations { user, .. } => Lane::User(user),
            Msg::CheckMembers { users, .. } => Lane::Users(users),
            Msg::Flush { .. } | Msg::Shutdown => Lane::InOrder,
        }
    }

    /// Messages an append writes (1 for others), counted against [`BULK_ROUND`].
    pub(crate) fn bulk_weight(&self) -> usize {
        match self {
            Msg::Enqueue { msgs, .. } => msgs.len().max(1),
            Msg::EnqueueEach { items, .. } => items.len().max(1),
            _ => 1,
        }
    }

    /// The users an append writes to (bulk requests; none for others).
    fn bulk_users(&self) -> impl Iterator<Item = &str> {
        let (one, each) = match self {
            Msg::Enqueue { user, .. } => (Some(user.as_str()), None),
            Msg::EnqueueEach { items, .. } => (None, Some(items)),
            _ => (None, None),
        };
        one.into_iter()
            .chain(each.into_iter().flatten().map(|(u, _)| u.as_str()))
    }
}

/// The appends waiting, and how many of them each user (by name hash) has.
#[derive(Default)]
pub(crate) struct Lanes {
    bulk: VecDeque<Msg>,
    pending: FxHashMap<u64, u32>,
}

fn name_hash(user: &str) -> u64 {
    BuildHasherDefault::<FxHasher>::default().hash_one(user.as_bytes())
}

impl Lanes {
    /// Whether any append waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.bulk.is_empty()
    }

    /// Appends waiting.
    pub(crate) fn len(&self) -> usize {
        self.bulk.len()
    }

    /// `msg` (a [`Lane::Bulk`] request) waits behind the others.
    pub(crate) fn push(&mut self, msg: Msg) {
        for u in msg.bulk_users() {
            *self.pending.entry(name_hash(u)).or_insert(0) += 1;
        }
        self.bulk.push_back(msg);
    }

    /// The append that came first.
    pub(crate) fn pop(&mut self) -> Option<Msg> {
        let msg = self.bulk.pop_front()?;
        for u in msg.bulk_users() {
            let h = name_hash(u);
            if let Some(n) = self.pending.get_mut(&h) {
                *n -= 1;
                if *n == 0 {
                    self.pending.remove(&h);
                }
            }
        }
        if self.bulk.is_empty() {
            // (Emptied whole: a storm's map does not stay at its peak size.)
            self.pending = FxHashMap::default();
        }
        Some(msg)
    }

    /// Whether `user` has an append waiting.
    pub(crate) fn pending(&self, user: &str) -> bool {
        !self.bulk.is_empty() && self.pending.contains_key(&name_hash(user))
    }

    /// Whether a request in `lane` must wait for the appends before it (see the module
    /// doc).
    pub(crate) fn must_wait(&self, lane: &Lane<'_>) -> bool {
        if self.bulk.is_empty() {
            return false;
        }
        match lane {
            Lane::Bulk => false,
            Lane::Free => false,
            Lane::User(u) => self.pending(u),
            Lane::Users(us) => us.iter().any(|u| self.pending(u)),
            Lane::InOrder => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Cb, StoredMsg};

    fn enqueue(user: &str) -> Msg {
        Msg::Enqueue {
            user: user.into(),
            msgs: vec![StoredMsg::default()],
            cap: None,
            require_account: true,
            cb: Cb::new(|_| {}),
        }
    }

    fn load(user: &str) -> Msg {
        Msg::Load {
            user: user.into(),
            from_seq: 0,
            limit: 1,
            max_bytes: 1,
            cb: Cb::new(|_| {}),
        }
    }

    #[test]
    fn a_request_waits_only_for_appends_to_its_users() {
        let mut l = Lanes::default();
        assert!(!l.must_wait(&Lane::InOrder), "nothing waits");
        l.push(enqueue("bob"));
        l.push(Msg::EnqueueEach {
            items: vec![("carol".into(), StoredMsg::default())],
            cap: None,
            cb: Cb::new(|_| {}),
        });
        assert_eq!(l.len(), 2);
        let (al, bob, carol) = (load("al"), load("bob"), load("carol"));
        assert!(!l.must_wait(&al.lane()));
        assert!(l.must_wait(&bob.lane()));
        assert!(l.must_wait(&carol.lane()));
        assert!(l.must_wait(&Lane::InOrder));
        assert!(!l.must_wait(&Lane::Free));
        let both = ["al".to_string(), "carol".to_string()];
        assert!(l.must_wait(&Lane::Users(&both)));
        // In the order they came; each user's count goes with its append.
        assert!(matches!(l.pop(), Some(Msg::Enqueue { user, .. }) if user == "bob"));
        assert!(!l.must_wait(&bob.lane()));
        assert!(l.must_wait(&carol.lane()));
        assert!(matches!(l.pop(), Some(Msg::EnqueueEach { .. })));
        assert!(l.is_empty() && l.pop().is_none());
        assert!(!l.must_wait(&Lane::InOrder));
    }

    #[test]
    fn two_appends_to_one_user_keep_it_waiting_until_both_are_handled() {
        let mut l = Lanes::default();
        l.push(enqueue("bob"));
        l.push(enqueue("zed"));
        l.push(enqueue("bob"));
        let bob = load("bob");
        let _ = l.pop();
        assert!(l.must_wait(&bob.lane()), "its second append still waits");
        let _ = l.pop();
        assert!(l.must_wait(&bob.lane()));
        let _ = l.pop();
        assert!(!l.must_wait(&bob.lane()));
    }
}
