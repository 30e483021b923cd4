//! A user's contact list (issue 11, "Contacts"): the versioned record kept per user and
//! the rules for changing it. Pure, no I/O: the router's home shard of the user owns the
//! list (a cache of this record in front of the store), so two changes to one list are
//! never applied to stale copies across store round trips.
//!
//! # Model
//! Each user's list holds, per peer, one [`ContactState`]. A request or an answer is a
//! two-sided exchange: the acting user's list changes on its home shard (the `*_out`
//! side), then the peer's list on the peer's home shard (the `*_in` side). Each side is
//! one call here and never reads the other list.
//!
//! Every change bumps [`ContactRecord::version`] and stamps the entry with it; an entry
//! that goes back to [`ContactState::None`] stays as a tombstone so "what changed since
//! version V" ([`ContactRecord::changes_since`]) reports removals too. Tombstones are
//! bounded: past `max_tombstones` the oldest go and [`ContactRecord::floor`] rises; a
//! device behind the floor must fetch the whole list.
//!
//! Blocking is one-sided and silent: the blocked peer's visible list does not change.
//! Its record does note who blocks it ([`ContactRecord::blocked_by`], never shown), so
//! that its own home shard, where its sends start, can refuse its direct messages and
//! requests without asking the blocker's shard.
//!
//! [`ContactCache`] is the home shard's copy of its users' lists: changes that arrive
//! while a list is loading wait behind the load, and it counts the users whose list
//! says someone blocks them, so the direct-message path can skip the lookup while that
//! is 0. Lists nobody needs (their users offline) stay for a while, least recently used
//! first out, within [`IDLE_LISTS`] and [`IDLE_BYTES`]: see [`ContactCache::release`].

/// Where a peer stands in a user's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ContactState {
    /// Not in the list (a tombstone of an earlier entry).
    None = 0,
    /// Both users accepted each other.
    Accepted = 1,
    /// The peer asked this user; not answered yet.
    Incoming = 2,
    /// This user asked the peer; not answered yet.
    Outgoing = 3,
    /// This user blocked the peer: its messages and requests are refused.
    Blocked = 4,
}

/// One peer in a user's list.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ContactEntry {
    /// The peer's user name.
    #[prost(string, tag = "1")]
    pub user: String,
    /// A [`ContactState`].
    #[prost(enumeration = "ContactState", tag = "2")]
    pub state: i32,
    /// The list version of the entry's last change.
    #[prost(uint64, tag = "3")]
    pub version: u64,
}

/// A user's contact list as stored (in the store's `contacts` records, keyed by user).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ContactRecord {
    /// Grows by one with every change; 0 for a list never changed.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// Entries sorted by user name (tombstones included).
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<ContactEntry>,
    /// Changes at or below this version may have been forgotten (pruned tombstones).
    #[prost(uint64, tag = "3")]
    pub floor: u64,
    /// Users who block this user (sorted; not part of the list a client sees, and no
    /// version change): its direct messages and requests to them are refused. Stored as
    /// keys of their own (one per blocker, see [`ContactSave::blocked_by`]); older
    /// versions kept them here, in the record.
    #[prost(string, repeated, tag = "4")]
    pub blocked_by: Vec<String>,
    /// When the user's last session ended (µs since the epoch; 0: never), for its
    /// presence while it is offline. Kept here: read with the list, by the same shard.
    #[prost(uint64, tag = "5")]
    pub last_seen_us: u64,
    /// The store holds more blockers than `blocked_by` (set when the list is loaded: at
    /// most `--max-loaded-blockers` are, the first by name; or when a block past that
    /// many is noted). A peer not in `blocked_by` may then block this user or not: see
    /// [`ContactRecord::blocked_by_state`]. Never stored (a write leaves it out).
    #[prost(bool, tag = "6")]
    pub blockers_unloaded: bool,
}

/// What one write of a contact list stores: the list's own fields, and its entries as
/// keys of their own (a change writes the entries it changed, not the whole list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContactSave {
    /// The list without its entries and blocked-by (version, floor, last seen).
    pub header: ContactRecord,
    /// Blockers noted (`true`) or dropped (`false`) since the last write, in order: a
    /// user blocked by many is not rewritten whole at every block.
    pub blocked_by: Vec<(String, bool)>,
    /// Entries set since the last write (tombstones included).
    pub upserts: Vec<ContactEntry>,
    /// Entries pruned since the last write.
    pub removed: Vec<String>,
    /// The whole list: every stored entry not in `upserts` goes.
    pub replace: bool,
}

impl ContactSave {
    /// The write of a whole list.
    pub fn whole(rec: &ContactRecord) -> ContactSave {
        ContactSave {
            header: rec.header(),
            blocked_by: rec.blocked_by.iter().map(|u| (u.clone(), true)).collect(),
            upserts: rec.entries.clone(),
            removed: Vec::new(),
            replace: true,
        }
    }
}

/// One change to a list. `*Out` is the acting user's side, `*In` the peer's side of
/// the same exchange (applied on the peer's home shard after the `*Out` succeeded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactOp {
    /// This user asks the peer; a pending request from the peer makes both contacts.
    RequestOut,
    /// The peer asks this user; FORBIDDEN if this user blocked it.
    RequestIn,
    /// This user accepts the peer's request (NOT_FOUND without one).
    AcceptOut,
    /// The peer accepted this user's request (ignored unless it is still out).
    AcceptIn,
    /// This user declines the peer's request (NOT_FOUND without one).
    DeclineOut,
    /// The peer declined this user's request (ignored unless it is still out).
    DeclineIn,
    /// This user removes an accepted peer or withdraws its request (else NOT_FOUND).
    RemoveOut,
    /// The peer removed this user or withdrew its request.
    RemoveIn,
    /// This user blocks the peer (whatever it was); the peer's list is not told.
    Block,
    /// This user unblocks the peer (NOT_FOUND if it was not blocked).
    Unblock,
    /// The peer's account is gone: its entry goes, whatever it was.
    Forget,
}

impl ContactOp {
    /// The state after this op from `now`; `None` if nothing changes.
    fn next(self, now: ContactState) -> Result<Option<ContactState>, ContactError> {
        use ContactOp::*;
        use ContactState::{Accepted as A, Blocked as B, Incoming as I, None as N, Outgoing as O};
        Ok(Some(match (self, now) {
            (RequestOut | RequestIn, B) => return Err(ContactError::Forbidden),
            (RequestOut, N) => O,
            (RequestIn, N) => I,
            (RequestOut, I) | (RequestIn, O) | (AcceptOut, I) | (AcceptIn, O) => A,
            (DeclineOut, I) | (DeclineIn, O) | (RemoveOut, A | O) | (RemoveIn, A | I) => N,
            (Unblock, B) => N,
            (Forget, N) => return Ok(None),
            (Forget, _) => N,
            (Block, B) => return Ok(None),
            (Block, _) => B,
            (AcceptOut, A) => return Ok(None),
            (AcceptOut | DeclineOut | RemoveOut | Unblock, _) => {
                return Err(ContactError::NotFound)
            }
            _ => return Ok(None),
        }))
    }
}

/// Why a change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContactError {
    /// A request to or from a blocked peer (answered FORBIDDEN, no further hint).
    #[error("forbidden")]
    Forbidden,
    /// Nothing to answer, remove or unblock.
    #[error("not found")]
    NotFound,
    /// A new entry past the list's limit.
    #[error("contact list full")]
    Full,
    /// A user naming itself.
    #[error("cannot name oneself")]
    Oneself,
}

/// What a successful change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The list changed; its new version.
    Changed(u64),
    /// Already so: nothing changed (the peer need not be told).
    Unchanged,
}

/// Limits applied to one list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContactLimits {
    /// Most live (not `None`) entries.
    pub max_contacts: usize,
    /// Most tombstones kept for "changed since".
    pub max_tombstones: usize,
    /// Most requests waiting for this user's answer.
    pub max_incoming: usize,
}

/// The list's entries in one state, and where it stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContactView {
    /// The list version.
    pub version: u64,
    /// Accepted contacts, in byte order.
    pub accepted: Vec<String>,
    /// Requests waiting for this user's answer.
    pub incoming: Vec<String>,
    /// This user's requests waiting for the peer.
    pub outgoing: Vec<String>,
    /// Users this user blocked.
    pub blocked: Vec<String>,
}

impl ContactRecord {
    /// This list without its entries and blocked-by.
    pub fn header(&self) -> ContactRecord {
        ContactRecord {
            version: self.version,
            entries: Vec::new(),
            floor: self.floor,
            blocked_by: Vec::new(),
            last_seen_us: self.last_seen_us,
            blockers_unloaded: self.blockers_unloaded,
        }
    }

    /// The state of `peer` in this list.
    pub fn state_of(&self, peer: &str) -> ContactState {
        match self.find(peer) {
            Ok(i) => self.entries[i].state(),
            Err(_) => ContactState::None,
        }
    }

    /// True if `peer` is blocked (its DMs and requests get FORBIDDEN).
    pub fn blocks(&self, peer: &str) -> bool {
        self.state_of(peer) == ContactState::Blocked
    }

    /// True if `peer` is among the blockers loaded (noted by
    /// [`ContactRecord::set_blocked_by`]). With [`blockers_unloaded`](Self::blockers_unloaded)
    /// a `false` does not say that `peer` does not block this user: only for checks the
    /// peer's own list makes again (a contact request, a presence query).
    pub fn is_blocked_by(&self, peer: &str) -> bool {
        self.blocked_by
            .binary_search_by(|u| u.as_str().cmp(peer))
            .is_ok()
    }

    /// Whether `peer` blocks this user, if the blockers loaded can tell: `None` when
    /// more are stored than loaded and `peer` is not among those loaded.
    pub fn blocked_by_state(&self, peer: &str) -> Option<bool> {
        match self.is_blocked_by(peer) {
            false if self.blockers_unloaded => None,
            known => Some(known),
        }
    }

    /// Notes that `peer` blocks (`on`) or no longer blocks this user, keeping at most
    /// `max_loaded` blockers in memory (a block past them marks the list
    /// [`blockers_unloaded`](Self::blockers_unloaded)). No version change: the list a
    /// client sees is the same. Returns whether the store must be told (the blockers
    /// loaded changed, or the store may hold one not loaded).
    pub fn set_blocked_by(&mut self, peer: &str, on: bool, max_loaded: usize) -> bool {
        match (
            self.blocked_by.binary_search_by(|u| u.as_str().cmp(peer)),
            on,
        ) {
            (Err(_), true) if self.blocked_by.len() >= max_loaded => {
                self.blockers_unloaded = true;
            }
            (Err(i), true) => self.blocked_by.insert(i, peer.to_owned()),
            (Ok(i), false) => {
                self.blocked_by.remove(i);
            }
            (Err(_), false) => return self.blockers_unloaded,
            (Ok(_), true) => return false,
        }
        true
    }

    /// True if the direct-message path must look at this list: someone blocks the user.
    pub fn has_blocks(&self) -> bool {
        !self.blocked_by.is_empty() || self.blockers_unloaded
    }

    /// `peer`'s entry (state NONE, version 0 if the list never named it).
    pub fn entry(&self, peer: &str) -> ContactEntry {
        match self.find(peer) {
            Ok(i) => self.entries[i].clone(),
            Err(_) => ContactEntry {
                user: peer.to_owned(),
                ..Default::default()
            },
        }
    }

    /// The users this list names in any state, and those that block its user (what an
    /// account deletion must tell).
    pub fn peers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .entries
            .iter()
            .filter(|e| e.state() != ContactState::None)
            .map(|e| e.user.clone())
            .chain(self.blocked_by.iter().cloned())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The accepted contacts.
    pub fn accepted(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|e| e.state() == ContactState::Accepted)
            .map(|e| e.user.as_str())
    }

    /// The whole list, grouped by state.
    pub fn view(&self) -> ContactView {
        let mut v = ContactView {
            version: self.version,
            ..Default::default()
        };
        for e in &self.entries {
            let list = match e.state() {
                ContactState::None => continue,
                ContactState::Accepted => &mut v.accepted,
                ContactState::Incoming => &mut v.incoming,
                ContactState::Outgoing => &mut v.outgoing,
                ContactState::Blocked => &mut v.blocked,
            };
            list.push(e.user.clone());
        }
        v
    }

    /// The entries changed after version `since` (tombstones included), or `None` when
    /// `since` is below [`floor`](Self::floor) or ahead of the list: the caller must
    /// then take the whole list.
    pub fn changes_since(&self, since: u64) -> Option<Vec<ContactEntry>> {
        if since < self.floor || since > self.version {
            return None;
        }
        Some(
            self.entries
                .iter()
                .filter(|e| e.version > since)
                .cloned()
                .collect(),
        )
    }

    /// Applies `op` to this list of user `me` about `peer` (see [`ContactOp`] for what
    /// each does). A new live entry past `lim.max_contacts` is [`ContactError::Full`].
    pub fn apply(
        &mut self,
        me: &str,
        peer: &str,
        op: ContactOp,
        lim: ContactLimits,
    ) -> Result<Outcome, ContactError> {
        self.apply_noting(me, peer, op, lim, &mut Vec::new())
    }

    /// [`ContactRecord::apply`], adding the peers whose tombstones it pruned to `pruned`.
    pub fn apply_noting(
        &mut self,
        me: &str,
        peer: &str,
        op: ContactOp,
        lim: ContactLimits,
        pruned: &mut Vec<String>,
    ) -> Result<Outcome, ContactError> {
        match self.plan(me, peer, op, lim)? {
            None => Ok(Outcome::Unchanged),
            Some(next) => Ok(self.set(peer, next, lim, pruned)),
        }
    }

    /// What [`ContactRecord::apply`] would do, the list unchanged: the peer's new state
    /// (`None`: nothing changes), or why it is refused. (A request's actor side is
    /// checked before the peer is asked: checking it on a copy cloned the whole list, up
    /// to 5 000 entries, at every request.)
    pub fn plan(
        &self,
        me: &str,
        peer: &str,
        op: ContactOp,
        lim: ContactLimits,
    ) -> Result<Option<ContactState>, ContactError> {
        if me == peer {
            return Err(ContactError::Oneself);
        }
        let now = self.state_of(peer);
        if op == ContactOp::RequestOut && self.is_blocked_by(peer) {
            return Err(ContactError::Forbidden);
        }
        let Some(next) = op.next(now)? else {
            return Ok(None);
        };
        if now == ContactState::None
            && next != ContactState::None
            && self.live() >= lim.max_contacts
        {
            return Err(ContactError::Full);
        }
        if next == ContactState::Incoming && self.incoming() >= lim.max_incoming {
            return Err(ContactError::Full);
        }
        Ok(Some(next))
    }

    fn find(&self, peer: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| e.user.as_str().cmp(peer))
    }

    fn incoming(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state() == ContactState::Incoming)
            .count()
    }

    fn live(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state() != ContactState::None)
            .count()
    }

    /// Sets `peer`'s state, bumps the version and prunes tombstones (noted in `pruned`).
    fn set(
        &mut self,
        peer: &str,
        state: ContactState,
        lim: ContactLimits,
        pruned: &mut Vec<String>,
    ) -> Outcome {
        self.version += 1;
        let e = ContactEntry {
            user: peer.to_owned(),
            state: state as i32,
            version: self.version,
        };
        match self.find(peer) {
            Ok(i) => self.entries[i] = e,
            Err(i) => self.entries.insert(i, e),
        }
        self.prune(lim.max_tombstones, pruned);
        Outcome::Changed(self.version)
    }

    fn prune(&mut self, max_tombstones: usize, pruned: &mut Vec<String>) {
        let mut dead: Vec<u64> = self
            .entries
            .iter()
            .filter(|e| e.state() == ContactState::None)
            .map(|e| e.version)
            .collect();
        if dead.len() <= max_tombstones {
            return;
        }
        dead.sort_unstable();
        let cut = dead[dead.len() - max_tombstones - 1];
        self.floor = self.floor.max(cut);
        self.entries.retain(|e| {
            let keep = e.state() != ContactState::None || e.version > cut;
            if !keep {
                pruned.push(e.user.clone());
            }
            keep
        });
    }
}

/// The contact lists of users homed on one shard, in front of the store: the one copy a
/// change is applied to, so changes that arrive while a list is being loaded (or while a
/// write is in flight) are applied in order to the newest list, never to a stale copy.
/// `W` is whatever waits for a list being loaded (a frame, a mail from another shard).
#[derive(Debug)]
pub struct ContactCache<W> {
    lists: std::collections::HashMap<String, Slot<W>>,
    with_blocks: usize,
    /// The loaded lists nobody needs (see [`ContactCache::release`]), by when they were
    /// last released: the first is the least recently used.
    idle: std::collections::BTreeMap<u64, String>,
    /// What the lists in `idle` weigh ([`list_weight`]), summed.
    idle_bytes: usize,
    /// Counts releases: the key of the next one in `idle`.
    tick: u64,
}

/// Most lists a shard keeps loaded while nobody needs them (their users offline). Each
/// change to an offline user's list (a request to it, its withdrawal) needs the list;
/// loading it walks every key of the list, and in the store's memtable every version of
/// every key not yet compacted away: a request and its withdrawal repeated to one
/// offline user made each load, and so each op, slower (5 000 rounds 4.9 s, 20 000
/// 50.4 s). Kept, a list is loaded once while it is in use.
pub const IDLE_LISTS: usize = 256;

/// Most bytes ([`list_weight`]) the idle lists of one shard weigh together: at most 1 MiB
/// per shard, some 20 000 entries of 10-byte names (a list at the default limits, 5 000
/// contacts and 1 000 tombstones, weighs ~0.3 MiB; a list heavier than this is not kept).
pub const IDLE_BYTES: usize = 1 << 20;

/// What a loaded list weighs in memory, roughly: its slot in the map and in the idle
/// order (with the user's name in each), its entries and blockers with their names.
pub fn list_weight(user: &str, rec: &ContactRecord) -> usize {
    const SLOT: usize = 192;
    let entries: usize = rec
        .entries
        .iter()
        .map(|e| std::mem::size_of::<ContactEntry>() + e.user.len())
        .sum();
    let blockers: usize = rec
        .blocked_by
        .iter()
        .map(|b| std::mem::size_of::<String>() + b.len())
        .sum();
    SLOT + 2 * user.len() + entries + blockers
}

#[derive(Debug)]
enum Slot<W> {
    Loading(Vec<W>),
    Ready(ContactRecord, Saved),
}

/// What the store has of a loaded list.
#[derive(Debug, Default)]
struct Saved {
    /// Every entry up to this version is written.
    version: u64,
    /// What changed since the last write besides the entries' versions (boxed: most
    /// loaded lists, those of idle users, have none, and each costs 8 bytes for it).
    unsaved: Option<Box<Unsaved>>,
    /// A write failed: the next one writes the whole list (until one succeeds, the list
    /// stays loaded: the store's copy may lack entries that only this one has).
    whole: bool,
    /// Writes not answered yet (the list stays loaded meanwhile).
    inflight: u32,
    /// Whole writes that failed in a row.
    failures: u32,
    /// Its key in [`ContactCache::idle`] and its weight there, while nobody needs it.
    idle: Option<(u64, usize)>,
    /// Blockers noted ([`ContactCache::set_blocked_by`]) since the list was loaded: a
    /// lookup asked before one is not kept (its answer may be older than the note).
    blocker_notes: u32,
    /// What a list with [`ContactRecord::blockers_unloaded`] keeps of the blockers it
    /// did not load (boxed: most lists have none).
    checks: Option<Box<Checks>>,
}

/// See [`Saved::checks`].
#[derive(Debug, Default)]
struct Checks {
    /// What lookups (and notes) of blockers not loaded found: `peer → (blocks, when
    /// kept)`, at most [`CHECKS_PER_LIST`]. A map: a frame naming 10 000 members looked
    /// each up in a list of 256 by compare, three times (25 ms of its shard a frame,
    /// found by a hostile probe).
    found: crate::maps::NameMap<String, (bool, u64)>,
    /// The peers in the order they were kept, `(when, peer)`, oldest first: the oldest
    /// go past [`CHECKS_PER_LIST`]. An entry whose `when` is not its peer's in `found`
    /// any more (kept again, or replaced) is stale and skipped; at most as many stale as
    /// live ones are kept (then they are dropped in one pass).
    order: std::collections::VecDeque<(u64, String)>,
    /// The next `when`.
    next: u64,
    /// The blocker changes written since the list's last write that succeeded with none
    /// in flight, in order. A whole write (after a failed one) names them again: the
    /// blockers it did not load are not in the list for it to write.
    sent: Vec<(String, bool)>,
}

/// Lookups of blockers not loaded that one list keeps ([`ContactCache::checked`]): the
/// peers its user last wrote to, so that a conversation does not read the store at
/// every message.
pub const CHECKS_PER_LIST: usize = 256;

impl Checks {
    /// What was found for `peer`, if it is kept.
    fn of(&self, peer: &str) -> Option<bool> {
        self.found.get(peer).map(|&(on, _)| on)
    }

    /// Keeps `on` for `peer` as the newest answer (replacing one kept), the oldest going
    /// past [`CHECKS_PER_LIST`].
    fn keep(&mut self, peer: &str, on: bool) {
        let when = self.next;
        self.next += 1;
        self.found.insert(peer.to_owned(), (on, when));
        self.order.push_back((when, peer.to_owned()));
        while self.found.len() > CHECKS_PER_LIST {
            let Some((w, p)) = self.order.pop_front() else {
                break;
            };
            if self.found.get(p.as_str()).is_some_and(|&(_, at)| at == w) {
                self.found.remove(p.as_str());
            }
        }
        if self.order.len() > 2 * CHECKS_PER_LIST {
            let found = &self.found;
            self.order
                .retain(|(w, p)| found.get(p.as_str()).is_some_and(|&(_, at)| at == *w));
        }
    }

    /// Forgets what was found for `peer`.
    fn forget(&mut self, peer: &str) {
        // (Its place in `order` goes stale.)
        self.found.remove(peer);
    }
}

impl Saved {
    /// What the lookups kept weigh, roughly (see [`list_weight`]).
    fn checks_weight(&self) -> usize {
        self.checks.as_ref().map_or(0, |c| {
            let each = std::mem::size_of::<(String, bool)>();
            let found: usize = c.found.keys().map(|p| 2 * (each + p.len()) + 16).sum();
            let sent: usize = c.sent.iter().map(|(p, _)| each + p.len()).sum();
            found + sent
        })
    }
}

/// See [`Saved::unsaved`].
#[derive(Debug, Default)]
struct Unsaved {
    /// Entries pruned since the last write (their keys are still stored).
    pruned: Vec<String>,
    /// Blockers noted or dropped since the last write.
    blocked_by: Vec<(String, bool)>,
}

/// Whole writes of a list tried again at once after a failed write (past it, the next
/// change writes the whole list).
const SAVE_RETRIES: u32 = 3;

/// What [`ContactCache::wait`] did with a waiter.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait<W> {
    /// The list is here: run the waiter now.
    Ready(W),
    /// The caller must load the list from the store, then call [`ContactCache::loaded`].
    Load,
    /// A load is already under way; the waiter runs when it ends.
    Queued,
}

impl<W> Default for ContactCache<W> {
    fn default() -> Self {
        Self {
            lists: Default::default(),
            with_blocks: 0,
            idle: Default::default(),
            idle_bytes: 0,
            tick: 0,
        }
    }
}

impl<W> ContactCache<W> {
    /// `user`'s list if it is loaded.
    pub fn get(&self, user: &str) -> Option<&ContactRecord> {
        match self.lists.get(user) {
            Some(Slot::Ready(r, _)) => Some(r),
            _ => None,
        }
    }

    /// Whether `user`'s list is loaded or being loaded.
    pub fn present(&self, user: &str) -> bool {
        self.lists.contains_key(user)
    }

    /// Users here whose loaded list blocks someone: while 0, the DM path need not look.
    pub fn with_blocks(&self) -> usize {
        self.with_blocks
    }

    /// Runs `w` now if `user`'s list is loaded, else queues it behind the (maybe new) load.
    pub fn wait(&mut self, user: &str, w: W) -> Wait<W> {
        match self.lists.get_mut(user) {
            Some(Slot::Ready(..)) => Wait::Ready(w),
            Some(Slot::Loading(q)) => {
                q.push(w);
                Wait::Queued
            }
            None => {
                self.lists.insert(user.to_owned(), Slot::Loading(vec![w]));
                Wait::Load
            }
        }
    }

    /// The store answered a load: the list is kept and the waiters, in arrival order, are
    /// returned to be run. A list already loaded is kept as it is (it may be newer).
    pub fn loaded(&mut self, user: &str, rec: ContactRecord) -> Vec<W> {
        match self.lists.get_mut(user) {
            Some(slot @ Slot::Loading(_)) => {
                self.with_blocks += usize::from(rec.has_blocks());
                let saved = Saved {
                    version: rec.version,
                    ..Saved::default()
                };
                match std::mem::replace(slot, Slot::Ready(rec, saved)) {
                    Slot::Loading(q) => q,
                    Slot::Ready(..) => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    /// Keeps `rec`, read from the store, as `user`'s loaded list if none is loaded or
    /// being loaded (the caller knows the store's copy has not changed since the read).
    pub fn install(&mut self, user: &str, rec: ContactRecord) {
        if !self.lists.contains_key(user) {
            self.with_blocks += usize::from(rec.has_blocks());
            let saved = Saved {
                version: rec.version,
                ..Saved::default()
            };
            self.lists.insert(user.to_owned(), Slot::Ready(rec, saved));
        }
    }

    /// A load failed: the waiters are returned (to be refused) and the next wait loads again.
    pub fn load_failed(&mut self, user: &str) -> Vec<W> {
        match self.lists.remove(user) {
            Some(Slot::Loading(q)) => q,
            Some(ready) => {
                self.lists.insert(user.to_owned(), ready);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// Applies `op` to `user`'s loaded list (see [`ContactRecord::apply`]); `None` if it
    /// is not loaded. On a change the caller writes the list back to the store.
    pub fn apply(
        &mut self,
        user: &str,
        peer: &str,
        op: ContactOp,
        lim: ContactLimits,
    ) -> Option<Result<Outcome, ContactError>> {
        let Some(Slot::Ready(rec, saved)) = self.lists.get_mut(user) else {
            return None;
        };
        // (The blocked-by list does not change here: `with_blocks` stays right.)
        let unsaved = saved.unsaved.get_or_insert_with(Box::default);
        Some(rec.apply_noting(user, peer, op, lim, &mut unsaved.pruned))
    }

    /// What to write for `user`'s loaded list since its last write (its fields, the
    /// entries changed and pruned since); `None` if it is not loaded. The list then
    /// counts as written: call [`ContactCache::save_failed`] if the write fails.
    pub fn take_save(&mut self, user: &str) -> Option<ContactSave> {
        let Some(Slot::Ready(rec, saved)) = self.lists.get_mut(user) else {
            return None;
        };
        let save = if std::mem::take(&mut saved.whole) {
            let unsaved = saved.unsaved.take().map(|u| *u).unwrap_or_default();
            let mut save = ContactSave::whole(rec);
            if rec.blockers_unloaded {
                let sent = &mut saved.checks.get_or_insert_with(Box::default).sent;
                sent.extend(unsaved.blocked_by);
                save.blocked_by.extend(sent.iter().cloned());
            }
            save
        } else {
            let unsaved = saved.unsaved.take().map(|u| *u).unwrap_or_default();
            if rec.blockers_unloaded && !unsaved.blocked_by.is_empty() {
                let sent = &mut saved.checks.get_or_insert_with(Box::default).sent;
                sent.extend(unsaved.blocked_by.iter().cloned());
            }
            ContactSave {
                header: rec.header(),
                blocked_by: unsaved.blocked_by,
                upserts: rec
                    .entries
                    .iter()
                    .filter(|e| e.version > saved.version)
                    .cloned()
                    .collect(),
                removed: unsaved.pruned,
                replace: false,
            }
        };
        saved.version = rec.version;
        saved.inflight += 1;
        Some(save)
    }

    /// A write [`ContactCache::take_save`] made was answered (`ok`: it is stored).
    /// Returns true when the caller should write the list again now (whole: a write
    /// failed, and later ones may have been only what changed).
    pub fn save_done(&mut self, user: &str, ok: bool) -> bool {
        let Some(Slot::Ready(_, saved)) = self.lists.get_mut(user) else {
            return false;
        };
        saved.inflight = saved.inflight.saturating_sub(1);
        if ok {
            saved.failures = 0;
            if let Some(c) = saved
                .checks
                .as_mut()
                .filter(|_| saved.inflight == 0 && !saved.whole)
            {
                c.sent = Vec::new();
            }
            return false;
        }
        saved.whole = true;
        saved.failures += 1;
        saved.failures <= SAVE_RETRIES
    }

    /// Runs `f` on `user`'s loaded list (its fields: blockers change through
    /// [`ContactCache::set_blocked_by`], which the next write names); `None` if it is not
    /// loaded.
    pub fn update<R>(&mut self, user: &str, f: impl FnOnce(&mut ContactRecord) -> R) -> Option<R> {
        let Some(Slot::Ready(rec, _)) = self.lists.get_mut(user) else {
            return None;
        };
        let blockers = rec.blocked_by.len();
        let r = f(rec);
        debug_assert_eq!(
            rec.blocked_by.len(),
            blockers,
            "blockers change by set_blocked_by"
        );
        Some(r)
    }

    /// Whether `peer` blocks `user`, if `user`'s list is loaded and can tell: from the
    /// blockers loaded, or from what a lookup of the others found since
    /// ([`ContactCache::checked`]). `None`: not loaded, or look it up.
    pub fn known_blocker(&self, user: &str, peer: &str) -> Option<bool> {
        let Some(Slot::Ready(rec, saved)) = self.lists.get(user) else {
            return None;
        };
        rec.blocked_by_state(peer).or_else(|| {
            let checks = saved.checks.as_ref()?;
            checks.of(peer)
        })
    }

    /// A mark for [`ContactCache::checked`], taken when a lookup of `user`'s blockers is
    /// asked: the notes of blockers so far (`None` if the list is not loaded).
    pub fn blocker_mark(&self, user: &str) -> Option<u32> {
        match self.lists.get(user) {
            Some(Slot::Ready(_, saved)) => Some(saved.blocker_notes),
            _ => None,
        }
    }

    /// Keeps what a lookup of `user`'s blockers asked at `mark` found (`(peer, blocks)`),
    /// unless the list was loaded again or a blocker was noted since (it may be newer
    /// than the answer). Past [`CHECKS_PER_LIST`] the oldest go.
    pub fn checked(&mut self, user: &str, mark: u32, found: &[(String, bool)]) {
        let Some(Slot::Ready(rec, saved)) = self.lists.get_mut(user) else {
            return;
        };
        if saved.blocker_notes != mark || !rec.blockers_unloaded {
            return;
        }
        let checks = saved.checks.get_or_insert_with(Box::default);
        for (peer, on) in found {
            if !rec.is_blocked_by(peer) && checks.of(peer).is_none() {
                checks.keep(peer, *on);
            }
        }
    }

    /// Notes on `user`'s loaded list that `peer` blocks it (`on`) or not, keeping at
    /// most `max_loaded` blockers in memory (see [`ContactRecord::set_blocked_by`]; the
    /// next write names the change). `None` if it is not loaded, else whether the store
    /// must be written.
    pub fn set_blocked_by(
        &mut self,
        user: &str,
        peer: &str,
        on: bool,
        max_loaded: usize,
    ) -> Option<bool> {
        let Some(Slot::Ready(rec, saved)) = self.lists.get_mut(user) else {
            return None;
        };
        saved.blocker_notes = saved.blocker_notes.wrapping_add(1);
        if let Some(checks) = saved.checks.as_mut() {
            checks.forget(peer);
        }
        let before = rec.has_blocks();
        let changed = rec.set_blocked_by(peer, on, max_loaded);
        if rec.blockers_unloaded && !rec.is_blocked_by(peer) {
            // What the note says replaces any lookup's answer (newer than all of them).
            saved.checks.get_or_insert_with(Box::default).keep(peer, on);
        }
        if changed {
            let unsaved = saved.unsaved.get_or_insert_with(Box::default);
            unsaved.blocked_by.push((peer.to_owned(), on));
        }
        let after = rec.has_blocks();
        self.with_blocks = self.with_blocks + usize::from(after) - usize::from(before);
        Some(changed)
    }

    /// Nobody here needs `user`'s loaded list now (its user has no live session): it
    /// stays loaded as the most recently used idle list, and the least recently used
    /// ones past [`IDLE_LISTS`] or [`IDLE_BYTES`] are forgotten (the store has them).
    /// One whose write is unanswered or failed is not forgotten but stops counting as
    /// idle: release it again once its write is answered.
    pub fn release(&mut self, user: &str) {
        let Some(Slot::Ready(rec, saved)) = self.lists.get_mut(user) else {
            return;
        };
        if let Some((at, weight)) = saved.idle.take() {
            self.idle.remove(&at);
            self.idle_bytes -= weight;
        }
        let weight = list_weight(user, rec) + saved.checks_weight();
        if weight > IDLE_BYTES {
            // Kept, it would push every other idle list out.
            if saved.inflight == 0 && !saved.whole {
                self.forget(user);
            }
            return;
        }
        self.tick += 1;
        saved.idle = Some((self.tick, weight));
        self.idle.insert(self.tick, user.to_owned());
        self.idle_bytes += weight;
        while self.idle.len() > IDLE_LISTS || self.idle_bytes > IDLE_BYTES {
            let Some((_, oldest)) = self.idle.pop_first() else {
                break;
            };
            let Some(Slot::Ready(_, saved)) = self.lists.get_mut(&oldest) else {
                continue;
            };
            if let Some((_, weight)) = saved.idle.take() {
                self.idle_bytes -= weight;
            }
            if saved.inflight == 0 && !saved.whole {
                self.forget(&oldest);
            }
        }
    }

    /// `user`'s list is needed (its user has a live session): loaded, it stays so
    /// whatever the idle lists (until [`ContactCache::release`]).
    pub fn hold(&mut self, user: &str) {
        if let Some(Slot::Ready(_, saved)) = self.lists.get_mut(user) {
            if let Some((at, weight)) = saved.idle.take() {
                self.idle.remove(&at);
                self.idle_bytes -= weight;
            }
        }
    }

    /// The idle lists ([`ContactCache::release`]): how many, and what they weigh.
    pub fn idle(&self) -> (usize, usize) {
        (self.idle.len(), self.idle_bytes)
    }

    /// Forgets `user`'s loaded list whatever its writes (the account is gone).
    pub fn forget(&mut self, user: &str) {
        self.hold(user);
        if let Some(Slot::Ready(r, _)) = self.lists.get(user) {
            self.with_blocks -= usize::from(r.has_blocks());
            self.lists.remove(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{decode, encode};
    use super::*;
    use ContactOp::*;

    const LIM: ContactLimits = ContactLimits {
        max_contacts: 3,
        max_tombstones: 2,
        max_incoming: 2,
    };

    #[test]
    fn request_accept_on_both_sides() {
        let (mut a, mut b) = (ContactRecord::default(), ContactRecord::default());
        assert_eq!(a.apply("a", "b", RequestOut, LIM), Ok(Outcome::Changed(1)));
        assert_eq!(b.apply("b", "a", RequestIn, LIM), Ok(Outcome::Changed(1)));
        assert_eq!(a.state_of("b"), ContactState::Outgoing);
        assert_eq!(b.view().incoming, vec!["a".to_owned()]);
        assert_eq!(b.apply("b", "a", AcceptOut, LIM), Ok(Outcome::Changed(2)));
        assert_eq!(
            a.apply("a", "b", AcceptIn, LIM).unwrap(),
            Outcome::Changed(2)
        );
        assert_eq!(a.view().accepted, vec!["b".to_owned()]);
        assert_eq!(b.view().accepted, vec!["a".to_owned()]);
        // Asking again changes nothing.
        assert_eq!(a.apply("a", "b", RequestOut, LIM), Ok(Outcome::Unchanged));
    }

    #[test]
    fn crossing_requests_make_contacts() {
        let mut a = ContactRecord::default();
        a.apply("a", "b", RequestIn, LIM).unwrap();
        assert_eq!(a.apply("a", "b", RequestOut, LIM), Ok(Outcome::Changed(2)));
        assert_eq!(a.state_of("b"), ContactState::Accepted);
    }

    #[test]
    fn decline_and_remove() {
        let (mut a, mut b) = (ContactRecord::default(), ContactRecord::default());
        a.apply("a", "b", RequestOut, LIM).unwrap();
        b.apply("b", "a", RequestIn, LIM).unwrap();
        assert_eq!(
            a.apply("a", "b", DeclineOut, LIM),
            Err(ContactError::NotFound)
        );
        b.apply("b", "a", DeclineOut, LIM).unwrap();
        a.apply("a", "b", DeclineIn, LIM).unwrap();
        assert_eq!(
            a.view(),
            ContactView {
                version: 2,
                ..Default::default()
            }
        );
        assert_eq!(
            a.apply("a", "b", RemoveOut, LIM),
            Err(ContactError::NotFound)
        );
        a.apply("a", "b", RequestOut, LIM).unwrap();
        b.apply("b", "a", RequestIn, LIM).unwrap();
        b.apply("b", "a", AcceptOut, LIM).unwrap();
        a.apply("a", "b", AcceptIn, LIM).unwrap();
        a.apply("a", "b", RemoveOut, LIM).unwrap();
        b.apply("b", "a", RemoveIn, LIM).unwrap();
        assert_eq!(a.state_of("b"), ContactState::None);
        assert_eq!(b.state_of("a"), ContactState::None);
    }

    #[test]
    fn block_refuses_requests_and_is_silent() {
        let (mut a, b) = (ContactRecord::default(), ContactRecord::default());
        a.apply("a", "b", Block, LIM).unwrap();
        assert!(a.blocks("b") && !a.has_blocks());
        assert_eq!(
            a.apply("a", "b", RequestIn, LIM),
            Err(ContactError::Forbidden)
        );
        assert_eq!(
            a.apply("a", "b", RequestOut, LIM),
            Err(ContactError::Forbidden)
        );
        assert_eq!(b, ContactRecord::default());
        a.apply("a", "b", Unblock, LIM).unwrap();
        assert_eq!(a.apply("a", "b", Unblock, LIM), Err(ContactError::NotFound));
        assert_eq!(a.apply("a", "a", Block, LIM), Err(ContactError::Oneself));
    }

    #[test]
    fn blocked_by_refuses_requests_out_and_is_not_listed() {
        let mut b = ContactRecord::default();
        assert!(b.set_blocked_by("a", true, 8));
        assert!(!b.set_blocked_by("a", true, 8));
        assert!(b.has_blocks() && b.is_blocked_by("a"));
        assert_eq!(
            b.apply("b", "a", RequestOut, LIM),
            Err(ContactError::Forbidden)
        );
        assert_eq!(b.view(), ContactView::default());
        assert_eq!(b.peers(), vec!["a".to_owned()]);
        assert!(b.set_blocked_by("a", false, 8));
        assert!(!b.has_blocks());
        assert_eq!(b.apply("b", "a", RequestOut, LIM), Ok(Outcome::Changed(1)));
        assert_eq!(b.apply("b", "a", Forget, LIM), Ok(Outcome::Changed(2)));
        assert_eq!(b.apply("b", "a", Forget, LIM), Ok(Outcome::Unchanged));
    }

    #[test]
    fn blockers_past_those_loaded_are_unknown_not_unblocked() {
        let mut b = ContactRecord::default();
        assert!(b.set_blocked_by("m", true, 2));
        assert!(b.set_blocked_by("c", true, 2));
        assert_eq!(
            (b.blocked_by_state("x"), b.blockers_unloaded),
            (Some(false), false)
        );
        // A third: noted in the store, not in memory.
        assert!(b.set_blocked_by("a", true, 2));
        assert_eq!(b.blocked_by, ["c", "m"]);
        assert!(b.blockers_unloaded && b.has_blocks());
        assert_eq!(b.blocked_by_state("m"), Some(true));
        assert_eq!(b.blocked_by_state("a"), None);
        assert_eq!(b.blocked_by_state("x"), None);
        // Dropping one not loaded still writes (the store may hold it).
        assert!(b.set_blocked_by("x", false, 2));
        assert!(b.set_blocked_by("m", false, 2));
        assert_eq!(b.blocked_by_state("m"), None, "others may still be stored");
        // The flag is never stored.
        assert!(b.header().blockers_unloaded);
    }

    /// A cache with `u`'s list loaded: blocked by `b1` and by more, not loaded.
    fn loaded_past_its_bound() -> ContactCache<()> {
        let mut c: ContactCache<()> = ContactCache::default();
        assert_eq!(c.wait("u", ()), Wait::Load);
        let rec = ContactRecord {
            blocked_by: vec!["b1".into()],
            blockers_unloaded: true,
            ..Default::default()
        };
        c.loaded("u", rec);
        c
    }

    #[test]
    fn lookups_of_blockers_are_kept_until_a_note_and_bounded() {
        let mut c = loaded_past_its_bound();
        assert_eq!(c.with_blocks(), 1);
        assert_eq!(c.known_blocker("u", "b1"), Some(true));
        assert_eq!(c.known_blocker("u", "p"), None);
        let mark = c.blocker_mark("u").unwrap();
        c.checked("u", mark, &[("p".into(), false), ("q".into(), true)]);
        assert_eq!(c.known_blocker("u", "p"), Some(false));
        assert_eq!(c.known_blocker("u", "q"), Some(true));
        // A note after the mark: an answer asked before it is not kept, and the note
        // replaces what a lookup found for its peer.
        let old = c.blocker_mark("u").unwrap();
        assert_eq!(c.set_blocked_by("u", "p", true, 1), Some(true));
        assert_eq!(c.known_blocker("u", "p"), Some(true));
        c.checked("u", old, &[("p".into(), false), ("r".into(), false)]);
        assert_eq!(c.known_blocker("u", "p"), Some(true));
        assert_eq!(c.known_blocker("u", "r"), None);
        assert_eq!(c.set_blocked_by("u", "p", false, 1), Some(true));
        assert_eq!(c.known_blocker("u", "p"), Some(false));
        let mark = c.blocker_mark("u").unwrap();
        let many: Vec<(String, bool)> = (0..CHECKS_PER_LIST + 10)
            .map(|i| (format!("n{i}"), false))
            .collect();
        c.checked("u", mark, &many);
        assert_eq!(c.known_blocker("u", "n0"), None, "the oldest went");
        assert_eq!(
            c.known_blocker("u", &format!("n{}", CHECKS_PER_LIST + 9)),
            Some(false)
        );
        assert_eq!(c.known_blocker("u", "q"), None);
    }

    /// Kept answers: replacing one neither evicts another nor grows the order past
    /// twice the bound; past the bound the oldest kept goes.
    #[test]
    fn checks_keep_the_latest_answers_by_peer() {
        let mut k = Checks::default();
        for i in 0..CHECKS_PER_LIST {
            k.keep(&format!("p{i}"), i % 2 == 0);
        }
        for round in 0..10 * CHECKS_PER_LIST {
            k.keep("p1", round % 2 == 0);
            assert!(k.order.len() <= 2 * CHECKS_PER_LIST + 1);
        }
        assert_eq!(k.found.len(), CHECKS_PER_LIST);
        assert_eq!(k.of("p0"), Some(true));
        assert_eq!(k.of("p1"), Some(false));
        // p1 is the newest now: the next new peer makes p0 go, then p2.
        k.keep("new0", true);
        assert_eq!(
            (k.of("p0"), k.of("p1"), k.of("new0")),
            (None, Some(false), Some(true))
        );
        k.forget("p2");
        k.keep("new1", true);
        assert_eq!((k.of("p3"), k.of("p2")), (Some(false), None));
        assert_eq!(k.found.len(), CHECKS_PER_LIST);
    }

    #[test]
    fn a_whole_write_after_a_failed_one_names_the_blockers_not_loaded() {
        let mut c = loaded_past_its_bound();
        c.set_blocked_by("u", "b9", true, 1).unwrap();
        let first = c.take_save("u").unwrap();
        assert_eq!(first.blocked_by, [("b9".to_owned(), true)]);
        // It failed; another note comes before the whole write.
        assert!(c.save_done("u", false));
        c.set_blocked_by("u", "b8", true, 1).unwrap();
        let whole = c.take_save("u").unwrap();
        assert!(whole.replace);
        assert_eq!(
            whole.blocked_by,
            [
                ("b1".to_owned(), true),
                ("b9".into(), true),
                ("b8".into(), true)
            ]
        );
        // Written: the next change names only itself.
        assert!(!c.save_done("u", true));
        c.set_blocked_by("u", "b7", false, 1).unwrap();
        assert_eq!(
            c.take_save("u").unwrap().blocked_by,
            [("b7".to_owned(), false)]
        );
    }

    #[test]
    fn pending_requests_past_their_limit_are_full() {
        let mut a = ContactRecord::default();
        a.apply("a", "b", RequestIn, LIM).unwrap();
        a.apply("a", "c", RequestIn, LIM).unwrap();
        assert_eq!(a.apply("a", "d", RequestIn, LIM), Err(ContactError::Full));
        // An answer makes room.
        a.apply("a", "b", AcceptOut, LIM).unwrap();
        assert!(a.apply("a", "d", RequestIn, LIM).is_ok());
    }

    #[test]
    fn past_the_limit_is_full() {
        let mut a = ContactRecord::default();
        for p in ["b", "c", "d"] {
            a.apply("a", p, RequestOut, LIM).unwrap();
        }
        assert_eq!(a.apply("a", "e", RequestOut, LIM), Err(ContactError::Full));
        assert_eq!(a.apply("a", "e", RequestIn, LIM), Err(ContactError::Full));
        assert_eq!(a.apply("a", "e", Block, LIM), Err(ContactError::Full));
        // Changing an existing entry is not a new one.
        assert!(a.apply("a", "b", Block, LIM).is_ok());
    }

    #[test]
    fn changes_since_reports_removals_and_respects_the_floor() {
        let mut a = ContactRecord::default();
        a.apply("a", "b", RequestOut, LIM).unwrap(); // 1
        a.apply("a", "c", RequestOut, LIM).unwrap(); // 2
        let v = a.version;
        a.apply("a", "b", RemoveOut, LIM).unwrap(); // 3
        let ch = a.changes_since(v).unwrap();
        assert_eq!(ch.len(), 1);
        assert_eq!(
            (ch[0].user.as_str(), ch[0].state()),
            ("b", ContactState::None)
        );
        assert_eq!(a.changes_since(a.version), Some(vec![]));
        assert_eq!(a.changes_since(a.version + 1), None);
        // Three tombstones with room for two: the oldest goes, the floor rises.
        a.apply("a", "c", RemoveOut, LIM).unwrap(); // 4
        a.apply("a", "d", RequestOut, LIM).unwrap(); // 5
        a.apply("a", "d", RemoveOut, LIM).unwrap(); // 6
        assert_eq!(a.floor, 3);
        assert_eq!(a.changes_since(2), None);
        assert_eq!(a.changes_since(3).map(|c| c.len()), Some(2));
    }

    #[test]
    fn round_trips_through_the_store_codec() {
        let mut a = ContactRecord::default();
        a.apply("a", "b", RequestOut, LIM).unwrap();
        a.apply("a", "c", Block, LIM).unwrap();
        let back: ContactRecord = decode(&encode(&a), "contacts").unwrap();
        assert_eq!(back, a);
        // Garbage is an error, not a panic.
        assert!(decode::<ContactRecord>(&[9, 9], "contacts").is_err());
    }

    #[test]
    fn cache_queues_behind_a_load_and_counts_blocks() {
        let mut c: ContactCache<u32> = ContactCache::default();
        assert_eq!(c.wait("a", 1), Wait::Load);
        assert_eq!(c.wait("a", 2), Wait::Queued);
        assert_eq!(c.apply("a", "b", Block, LIM), None, "not loaded yet");
        assert_eq!(c.loaded("a", ContactRecord::default()), vec![1, 2]);
        assert_eq!(c.wait("a", 3), Wait::Ready(3));
        // A late second answer does not replace the newer list.
        c.apply("a", "b", Block, LIM).unwrap().unwrap();
        c.set_blocked_by("a", "x", true, 8).unwrap();
        assert_eq!(c.with_blocks(), 1);
        assert!(c.loaded("a", ContactRecord::default()).is_empty());
        assert!(c.get("a").is_some_and(|r| r.blocks("b")));
        c.set_blocked_by("a", "x", false, 8).unwrap();
        assert_eq!(c.with_blocks(), 0);
        c.set_blocked_by("a", "y", true, 8).unwrap();
        c.forget("a");
        assert_eq!((c.with_blocks(), c.get("a")), (0, None));
        // A failed load hands its waiters back and loads again next time.
        assert_eq!(c.wait("x", 7), Wait::Load);
        assert_eq!(c.load_failed("x"), vec![7]);
        assert_eq!(c.wait("x", 8), Wait::Load);
    }
    /// Loads and releases [`IDLE_LISTS`] empty lists: every list idle before goes.
    fn crowd_out(c: &mut ContactCache<u32>) {
        for i in 0..IDLE_LISTS {
            let u = format!("crowd{i}");
            if c.wait(&u, 0) == Wait::Load {
                c.loaded(&u, ContactRecord::default());
            }
            c.release(&u);
        }
    }

    #[test]
    fn idle_lists_stay_within_their_bounds_least_recently_used_first_out() {
        let mut c: ContactCache<u32> = ContactCache::default();
        let load = |c: &mut ContactCache<u32>, u: &str, rec: ContactRecord| {
            assert_eq!(c.wait(u, 0), Wait::Load);
            c.loaded(u, rec);
        };
        load(&mut c, "old", ContactRecord::default());
        load(&mut c, "live", ContactRecord::default());
        c.release("old");
        c.release("live");
        c.hold("live");
        assert_eq!(c.idle().0, 1, "held: not idle");
        // Used again, "old" is the most recently used: one more list pushes out the
        // least recently used other one instead.
        for i in 0..IDLE_LISTS - 1 {
            load(&mut c, &format!("u{i}"), ContactRecord::default());
            c.release(&format!("u{i}"));
        }
        assert_eq!(c.idle().0, IDLE_LISTS);
        c.release("old");
        load(&mut c, "new", ContactRecord::default());
        c.release("new");
        assert!(c.get("old").is_some() && c.get("new").is_some());
        assert!(c.get("u0").is_none(), "the least recently used went");
        assert!(
            c.get("live").is_some(),
            "a held list stays whatever the idle ones"
        );
        assert_eq!(c.idle().0, IDLE_LISTS);
        // Bytes: a list heavier than the bound is not kept, and pushes out nothing.
        let heavy = ContactRecord {
            entries: (0..IDLE_BYTES / 32)
                .map(|i| ContactEntry {
                    user: format!("peer{i:08}"),
                    state: ContactState::Outgoing as i32,
                    version: 1,
                })
                .collect(),
            ..Default::default()
        };
        assert!(list_weight("heavy", &heavy) > IDLE_BYTES);
        load(&mut c, "heavy", heavy);
        let before = c.idle();
        c.release("heavy");
        assert!(c.get("heavy").is_none());
        assert_eq!(c.idle(), before, "it pushed out nothing");
        assert!(c.idle().1 <= IDLE_BYTES);
        // Forgotten, an idle list no longer counts.
        c.forget("old");
        assert_eq!(c.idle().0, before.0 - 1);
        let sum: usize = c
            .idle
            .values()
            .map(|u| list_weight(u, c.get(u).unwrap()))
            .sum();
        assert_eq!(sum, c.idle().1);
    }

    #[test]
    fn a_save_names_only_what_changed_since_the_last_one() {
        let mut c: ContactCache<u32> = ContactCache::default();
        assert_eq!(c.take_save("a"), None, "not loaded");
        assert_eq!(c.wait("a", 1), Wait::Load);
        let mut stored = ContactRecord::default();
        for p in ["p1", "p2"] {
            stored.apply("a", p, RequestOut, LIM).unwrap();
        }
        c.loaded("a", stored);
        // Nothing changed since the load: the fields only.
        let s = c.take_save("a").unwrap();
        assert!(s.upserts.is_empty() && s.removed.is_empty() && !s.replace);
        assert_eq!((s.header.version, s.header.entries.len()), (2, 0));
        // One change: that entry.
        c.apply("a", "p3", Block, LIM).unwrap().unwrap();
        let s = c.take_save("a").unwrap();
        let names = |v: &[ContactEntry]| v.iter().map(|e| e.user.clone()).collect::<Vec<_>>();
        assert_eq!(names(&s.upserts), ["p3"]);
        assert_eq!(s.header.version, 3);
        // Three removals with two tombstones kept: the oldest is pruned, and named.
        for p in ["p1", "p2"] {
            c.apply("a", p, RemoveOut, LIM).unwrap().unwrap();
        }
        c.apply("a", "p3", Unblock, LIM).unwrap().unwrap();
        let s = c.take_save("a").unwrap();
        assert_eq!(names(&s.upserts), ["p2", "p3"]);
        assert_eq!(s.removed, ["p1"]);
        // Blocked-by: the blockers that changed, in order, not the others.
        c.set_blocked_by("a", "z", true, 8).unwrap();
        c.set_blocked_by("a", "y", true, 8).unwrap();
        assert!(c.take_save("a").is_some());
        c.set_blocked_by("a", "x", true, 8).unwrap();
        c.set_blocked_by("a", "y", false, 8).unwrap();
        assert_eq!(
            c.set_blocked_by("a", "y", false, 8),
            Some(false),
            "no change"
        );
        let s = c.take_save("a").unwrap();
        assert!(s.upserts.is_empty() && s.removed.is_empty());
        assert!(s.header.blocked_by.is_empty());
        assert_eq!(s.blocked_by, [("x".into(), true), ("y".into(), false)]);
        assert!(c.take_save("a").unwrap().blocked_by.is_empty());
        for _ in 0..6 {
            assert!(!c.save_done("a", true));
        }
        // A failed write, with a later one (only what changed) in flight: the list is
        // written whole again, and stays loaded until that is stored.
        c.apply("a", "p4", RequestOut, LIM).unwrap().unwrap();
        c.take_save("a").unwrap();
        c.apply("a", "p5", RequestOut, LIM).unwrap().unwrap();
        assert_eq!(names(&c.take_save("a").unwrap().upserts), ["p5"]);
        assert!(c.save_done("a", false), "write it again");
        assert!(!c.save_done("a", true));
        c.release("a");
        crowd_out(&mut c);
        assert!(
            c.get("a").is_some(),
            "not evicted with a failed write unrepaired"
        );
        let s = c.take_save("a").unwrap();
        assert!(s.replace);
        assert_eq!(names(&s.upserts), ["p2", "p3", "p4", "p5"]);
        c.release("a");
        crowd_out(&mut c);
        assert!(c.get("a").is_some(), "not evicted with a write in flight");
        assert!(!c.save_done("a", true));
        assert!(!c.take_save("a").unwrap().replace, "once");
        assert!(!c.save_done("a", true));
        c.release("a");
        crowd_out(&mut c);
        assert!(c.get("a").is_none());
        // Failures in a row are tried again a bounded number of times.
        c.wait("b", 1);
        c.loaded("b", ContactRecord::default());
        let tries: Vec<bool> = (0..5)
            .map(|_| {
                c.take_save("b").unwrap();
                c.save_done("b", false)
            })
            .collect();
        assert_eq!(tries, [true, true, true, false, false]);
        c.forget("b");
        assert!(c.get("b").is_none());
    }
}
