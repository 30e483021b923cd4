//! The well-behaved users: DM users (with a second device now and then, going
//! offline and coming back, members of the long-lived rooms), slow readers, and
//! room visitors (who also run temporary rooms with a buddy).
//!
//! The total rate is split: 70% direct messages between DM users, 15% messages
//! to long-lived rooms, 10% direct messages to slow readers (all three sent by
//! the DM users that are online, sharing equally), 5% by the visitors.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::check::{CheckStats, Checker};
use crate::payload::{Kind, Rng, StreamKey, HEADER};
use crate::session::{Dev, Sender, To};
use crate::shared::Shared;

const DM_USERS_SHARE: f64 = 0.95;
const ROOM_FRAC: f64 = 0.15 / 0.95;
const SLOW_FRAC: f64 = 0.10 / 0.95;
const VISITORS_SHARE: f64 = 0.05;
/// A device pings (and so confirms what it wrote) this often.
const SYNC_EVERY: Duration = Duration::from_secs(2);
/// The final drain ends when nothing arrived for this long.
const QUIET: Duration = Duration::from_secs(2);
/// Logins of the final drain, at most.
const DRAIN_ROUNDS: u32 = 4;
const DRAIN_MAX: Duration = Duration::from_secs(90);
const BARRIER_TIMEOUT: Duration = Duration::from_secs(180);

/// What an actor thread hands back.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The loss-checked checker of the actor's user (DM users, slow readers).
    pub checker: Option<Checker>,
    /// Counts of the actor's other checkers (visits, temporary rooms).
    pub extra: CheckStats,
    /// Messages missing in a visit's window or in a temporary room.
    pub window_loss: u64,
    pub details: Vec<String>,
}

fn secs(rng: &mut Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.range(lo * 1000, hi * 1000))
}

fn key(kind: Kind, sender: u32, device: u8, target: u32) -> StreamKey {
    StreamKey {
        kind,
        sender,
        device,
        target,
    }
}

/// Connects, retrying for a while (the router may be busy); None once stopping
/// (or after 30 s of failures, reported).
fn connect_retry(
    sh: &Shared,
    user: u32,
    device: u8,
    epoch: u32,
    rcvbuf: Option<usize>,
) -> Option<Dev> {
    let start = Instant::now();
    loop {
        match Dev::connect(sh, user, device, epoch, rcvbuf) {
            Ok(d) => return Some(d),
            Err(e) => {
                if start.elapsed() > Duration::from_secs(30) {
                    sh.notes.note(
                        "connect-failed",
                        format!("{} d{device}: {e}", sh.names.users[user as usize]),
                    );
                    return None;
                }
                sleep(Duration::from_millis(500));
            }
        }
    }
}

/// The streams `me` must have received all of: DMs to it, and messages of the
/// rooms it is a long-lived member of (but its own).
fn expected_streams(sh: &Shared, me: u32) -> Vec<(StreamKey, u64)> {
    let g = sh.final_sent.lock().unwrap_or_else(|e| e.into_inner());
    g.iter()
        .filter(|(k, _)| match k.kind {
            Kind::Dm => k.target == me,
            Kind::Room => k.sender != me && sh.room_members[k.target as usize].contains(&me),
            _ => false,
        })
        .map(|(k, v)| (*k, v.max))
        .collect()
}

/// After every sender stopped: a fresh login (the offline queue comes first),
/// read until everything expected arrived or nothing more comes, then Logout.
/// Messages a just-ended session left unacked may reach the offline queue only
/// after this login (they then wait for the next one): so, if something is
/// still missing, log out and in again, a few times.
fn final_drain(sh: &Shared, me: u32, chk: &mut Checker, epoch: u32) {
    let expected = expected_streams(sh, me);
    let complete = |chk: &Checker| {
        expected
            .iter()
            .all(|(k, max)| chk.streams.get(k).is_some_and(|s| s.contig >= *max))
    };
    let start = Instant::now();
    for round in 0..DRAIN_ROUNDS {
        if round > 0 {
            sleep(Duration::from_secs(1));
        }
        let Some(mut dev) = connect_retry(sh, me, 0, epoch + round, None) else {
            return;
        };
        let mut last_msg = Instant::now();
        loop {
            match dev.pump(sh, chk, Duration::from_millis(200), 100_000) {
                Ok(n) if n > 0 => last_msg = Instant::now(),
                Ok(_) => {}
                Err(e) => {
                    dev.lost(
                        sh,
                        &mut Sender::default(),
                        chk,
                        &format!("final drain: {e}"),
                    );
                    break;
                }
            }
            if complete(chk) || last_msg.elapsed() >= QUIET || start.elapsed() >= DRAIN_MAX {
                dev.finish(sh, &mut Sender::default(), chk, true);
                break;
            }
        }
        if complete(chk) || start.elapsed() >= DRAIN_MAX {
            return;
        }
    }
}

/// One more login of `me` after the final accounting, to see whether what is
/// missing is still queued (late) or gone (lost).
pub fn recheck(sh: &Shared, me: u32, chk: &mut Checker) {
    let Some(mut dev) = connect_retry(sh, me, 0, 1_000, None) else {
        return;
    };
    let start = Instant::now();
    let mut last_msg = start;
    while last_msg.elapsed() < QUIET && start.elapsed() < DRAIN_MAX {
        match dev.pump(sh, chk, Duration::from_millis(200), 100_000) {
            Ok(n) if n > 0 => last_msg = Instant::now(),
            Ok(_) => {}
            Err(e) => {
                dev.lost(sh, &mut Sender::default(), chk, &format!("recheck: {e}"));
                return;
            }
        }
    }
    dev.finish(sh, &mut Sender::default(), chk, true);
}

/// A DM user: sends DMs, room messages and messages to slow readers at its
/// share of the rate; goes offline and comes back; opens a second device.
pub fn dm_user(sh: Arc<Shared>, me: u32) -> Outcome {
    let a = &sh.args;
    let names = &sh.names;
    let mut rng = Rng::new(a.seed() ^ (u64::from(me) << 32) ^ 0xd1);
    let my_rooms: Vec<u32> = (0..sh.room_members.len() as u32)
        .filter(|&r| sh.room_members[r as usize].contains(&me))
        .collect();
    let mut chk = Checker::new(me);
    let mut s = Sender::default();
    let mut devs: [Option<Dev>; 2] = [None, None];
    let mut epochs = [0u32; 2];
    let mut online = false;
    let mut offline_until = Instant::now();
    let mut dev1_until = Instant::now();
    let mut next_sync = Instant::now() + SYNC_EVERY;
    let mut last = Instant::now();
    let mut tokens = 0.0f64;

    while !sh.stopping() {
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        if !online {
            if now < offline_until {
                sleep(Duration::from_millis(5));
                continue;
            }
            epochs[0] += 1;
            match Dev::connect(&sh, me, 0, epochs[0], None) {
                Ok(d) => {
                    devs[0] = Some(d);
                    online = true;
                    sh.dm_online.fetch_add(1, Relaxed);
                    tokens = 0.0;
                    next_sync = now + SYNC_EVERY;
                }
                Err(e) => {
                    sh.notes.note(
                        "connect-failed",
                        format!("{}: {e}", names.users[me as usize]),
                    );
                    offline_until = now + Duration::from_secs(1);
                }
            }
            continue;
        }

        // Send this turn's share.
        let share = a.rate * DM_USERS_SHARE / sh.dm_online.load(Relaxed).max(1) as f64;
        tokens = (tokens + share * dt).min(share * 0.25 + 1.0);
        while tokens >= 1.0 {
            tokens -= 1.0;
            let d = usize::from(devs[1].is_some() && rng.chance(0.25));
            let dev = devs[d].as_mut().expect("device d is online");
            let dv = d as u8;
            // Users in no room send their room share as DMs.
            let r = rng.unit();
            if r < ROOM_FRAC && !my_rooms.is_empty() {
                let room = my_rooms[rng.below(my_rooms.len())];
                let size = rng.range(HEADER as u64, 256) as usize;
                dev.send(
                    &mut s,
                    key(Kind::Room, me, dv, room),
                    To::Room(&names.rooms[room as usize]),
                    size,
                );
            } else if (ROOM_FRAC..ROOM_FRAC + SLOW_FRAC).contains(&r) && names.n_slow > 0 {
                let to = (names.slow0 + rng.below(names.n_slow)) as u32;
                let size = rng.range(256, 4096) as usize;
                dev.send(
                    &mut s,
                    key(Kind::Dm, me, dv, to),
                    To::User(&names.users[to as usize]),
                    size,
                );
            } else if names.n_dm > 1 {
                let mut to = rng.below(names.n_dm - 1) as u32;
                if to >= me {
                    to += 1;
                }
                let size = rng.range(HEADER as u64, 400) as usize;
                dev.send(
                    &mut s,
                    key(Kind::Dm, me, dv, to),
                    To::User(&names.users[to as usize]),
                    size,
                );
            }
        }

        // Write, read, confirm.
        let mut dead: Option<(usize, String)> = None;
        let sync = now >= next_sync;
        if sync {
            next_sync = now + SYNC_EVERY;
        }
        for (d, slot) in devs.iter_mut().enumerate() {
            let Some(dev) = slot.as_mut() else { continue };
            let wait = Duration::from_millis(if d == 0 { 2 } else { 1 });
            let r = dev
                .flush(&sh, &mut s)
                .and_then(|()| dev.pump(&sh, &mut chk, wait, 10_000).map(drop))
                .and_then(|()| if sync { dev.sync(&sh, &mut s) } else { Ok(()) });
            if let Err(e) = r {
                dead = Some((d, e));
                break;
            }
        }
        if let Some((d, why)) = dead {
            if let Some(dev) = devs[d].take() {
                dev.lost(&sh, &mut s, &mut chk, &why);
            }
            if d == 0 {
                if let Some(dev) = devs[1].take() {
                    dev.finish(&sh, &mut s, &mut chk, true);
                }
                online = false;
                sh.dm_online.fetch_sub(1, Relaxed);
                offline_until = Instant::now() + Duration::from_secs(1);
            }
            continue;
        }

        // Go offline now and then: Logout, or drop the connection.
        if rng.chance(dt / a.offline_every) {
            let clean = rng.chance(0.5);
            if let Some(dev) = devs[1].take() {
                dev.finish(&sh, &mut s, &mut chk, true);
            }
            if let Some(dev) = devs[0].take() {
                dev.finish(&sh, &mut s, &mut chk, clean);
            }
            online = false;
            sh.dm_online.fetch_sub(1, Relaxed);
            sh.count(&sh.ev.offline_periods);
            offline_until = Instant::now() + secs(&mut rng, 1, a.offline_max.max(1));
            continue;
        }
        // A second device comes and goes.
        match devs[1].as_ref() {
            None if rng.chance(dt / a.second_device_every) => {
                epochs[1] += 1;
                match Dev::connect(&sh, me, 1, epochs[1], None) {
                    Ok(d) => {
                        devs[1] = Some(d);
                        dev1_until = Instant::now() + secs(&mut rng, 5, 20);
                        sh.count(&sh.ev.second_devices);
                    }
                    Err(e) => sh.notes.note(
                        "connect-failed",
                        format!("{} d1: {e}", names.users[me as usize]),
                    ),
                }
            }
            Some(_) if now >= dev1_until => {
                let clean = rng.chance(0.5);
                if let Some(dev) = devs[1].take() {
                    dev.finish(&sh, &mut s, &mut chk, clean);
                }
            }
            _ => {}
        }
    }

    // Stop: confirm what was written, publish it, wait for every sender.
    for d in [1, 0] {
        if let Some(dev) = devs[d].as_mut() {
            if let Err(e) = dev.sync(&sh, &mut s) {
                if let Some(dev) = devs[d].take() {
                    dev.lost(&sh, &mut s, &mut chk, &format!("at stop: {e}"));
                }
            }
        }
    }
    sh.publish_and_wait(&s.sent, BARRIER_TIMEOUT);
    for d in [1, 0] {
        if let Some(dev) = devs[d].take() {
            dev.finish(&sh, &mut s, &mut chk, true);
        }
    }
    if online {
        sh.dm_online.fetch_sub(1, Relaxed);
    }
    final_drain(&sh, me, &mut chk, epochs[0] + 1);
    Outcome {
        checker: Some(chk),
        ..Outcome::default()
    }
}

/// A slow reader: a small receive window, reads a burst, sleeps, stalls now
/// and then for seconds; acks what it read (the client does, as it reads).
pub fn slow_reader(sh: Arc<Shared>, me: u32) -> Outcome {
    let a = &sh.args;
    let mut rng = Rng::new(a.seed() ^ (u64::from(me) << 32) ^ 0x51);
    let mut chk = Checker::new(me);
    let mut epoch = 1;
    let mut dev = connect_retry(&sh, me, 0, epoch, Some(a.slow_rcvbuf));
    let mut last = Instant::now();
    while !sh.stopping() {
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        let Some(d) = dev.as_mut() else {
            sleep(Duration::from_secs(1));
            epoch += 1;
            dev = connect_retry(&sh, me, 0, epoch, Some(a.slow_rcvbuf));
            continue;
        };
        // A burst: up to 64 messages, each waited for (the small window refills
        // only as fast as the router writes); then a nap, now and then a stall.
        let mut r = Ok(());
        for _ in 0..64 {
            match d.pump(&sh, &mut chk, Duration::from_millis(20), 1) {
                Ok(1) => {}
                Ok(_) => break,
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = r {
            if let Some(d) = dev.take() {
                d.lost(&sh, &mut Sender::default(), &mut chk, &e);
            }
            continue;
        }
        sleep(Duration::from_millis(rng.range(20, 80)));
        if rng.chance(dt / a.slow_stall_every) {
            sh.count(&sh.ev.slow_stalls);
            sleep(Duration::from_millis(rng.range(1000, 3000)));
        }
    }
    sh.publish_and_wait(&Default::default(), BARRIER_TIMEOUT);
    if let Some(d) = dev.take() {
        d.finish(&sh, &mut Sender::default(), &mut chk, true);
    }
    final_drain(&sh, me, &mut chk, epoch + 1);
    Outcome {
        checker: Some(chk),
        ..Outcome::default()
    }
}

/// A visitor: joins a long-lived room (by name or join code), talks, leaves;
/// or creates a temporary room, has its buddy join it, both talk, the buddy
/// leaves and the room is deleted.
pub fn visitor(sh: Arc<Shared>, vi: u32) -> Outcome {
    let a = &sh.args;
    let me = (sh.names.vis0 as u32) + 2 * vi;
    let mut rng = Rng::new(a.seed() ^ (u64::from(me) << 32) ^ 0x71);
    let mut out = Outcome::default();
    let mut s = Sender::default();
    let mut dev: Option<Dev> = None;
    let mut epoch = 0;
    let mut ep = 0u32;
    let share = a.rate * VISITORS_SHARE / sh.names.n_vis.max(1) as f64;
    while !sh.stopping() {
        if dev.is_none() {
            epoch += 1;
            dev = connect_retry(&sh, me, 0, epoch, None);
            // After an unexpected close, what the old session left unacked
            // comes back first: not part of any visit.
            if let Some(d) = dev.as_mut() {
                if epoch > 1 {
                    let mut throwaway = Checker::window(me);
                    let _ = d.pump(&sh, &mut throwaway, Duration::from_secs(1), usize::MAX);
                }
            }
            continue;
        }
        let d = dev.as_mut().expect("connected");
        let r = if !sh.names.rooms.is_empty() && rng.chance(0.5) {
            visit(&sh, d, &mut s, &mut rng, me, share, &mut out)
        } else {
            ep += 1;
            temp_room(&sh, d, &mut rng, vi, me, ep, share, &mut out)
        };
        if let Err(e) = r {
            if let Some(d) = dev.take() {
                d.lost(&sh, &mut s, &mut Checker::window(me), &e);
            }
        }
    }
    if let Some(d) = dev.as_mut() {
        if let Err(e) = d.sync(&sh, &mut s) {
            if let Some(d) = dev.take() {
                d.lost(
                    &sh,
                    &mut s,
                    &mut Checker::window(me),
                    &format!("at stop: {e}"),
                );
            }
        }
    }
    sh.publish_and_wait(&s.sent, BARRIER_TIMEOUT);
    if let Some(d) = dev.take() {
        d.finish(&sh, &mut s, &mut Checker::window(me), true);
    }
    out
}

/// One visit to a long-lived room. What the visitor receives is checked in a
/// window: from the first message of each stream to the last, nothing may miss.
fn visit(
    sh: &Shared,
    dev: &mut Dev,
    s: &mut Sender,
    rng: &mut Rng,
    me: u32,
    share: f64,
    out: &mut Outcome,
) -> Result<(), String> {
    let r = rng.below(sh.names.rooms.len());
    let room = &sh.names.rooms[r];
    let by = if rng.chance(0.5) {
        &sh.room_codes[r]
    } else {
        room
    };
    let mut chk = Checker::window(me);
    if let Err(e) = dev.c.join_room(by, None) {
        sh.notes.note(
            "visitor",
            format!(
                "{} could not join {room} by {by}: {e}",
                sh.names.users[me as usize]
            ),
        );
        return Err(e.to_string());
    }
    sh.count(&sh.ev.room_visits);
    let until = Instant::now() + secs(rng, 4, 12);
    let mut last = Instant::now();
    let mut tokens = 0.0f64;
    while Instant::now() < until && !sh.stopping() {
        let now = Instant::now();
        tokens = (tokens + share * now.duration_since(last).as_secs_f64()).min(share * 0.25 + 1.0);
        last = now;
        while tokens >= 1.0 {
            tokens -= 1.0;
            let size = rng.range(HEADER as u64, 256) as usize;
            dev.send(s, key(Kind::Room, me, 0, r as u32), To::Room(room), size);
        }
        dev.flush(sh, s)?;
        dev.pump(sh, &mut chk, Duration::from_millis(2), 10_000)?;
    }
    dev.sync(sh, s)?;
    if let Err(e) = dev.c.leave_room(room) {
        sh.notes.note(
            "visitor",
            format!(
                "{} could not leave {room}: {e}",
                sh.names.users[me as usize]
            ),
        );
        return Err(e.to_string());
    }
    // What arrived before the Leave took effect is still in the window.
    dev.pump(sh, &mut chk, Duration::from_millis(50), usize::MAX)?;
    let gaps: u64 = chk.streams.values().map(|st| st.gaps()).sum();
    if gaps > 0 {
        out.window_loss += gaps;
        for (k, st) in &chk.streams {
            if st.gaps() > 0 {
                out.details.push(format!(
                    "{} visiting {room}: {} missing of {k:?} between #{} and #{}",
                    sh.names.users[me as usize],
                    st.gaps(),
                    st.contig + 1,
                    st.max
                ));
            }
        }
    }
    out.extra += chk.st;
    out.details.append(&mut chk.details);
    Ok(())
}

/// A temporary room: create (maybe with a password), the buddy joins (by name
/// or code), both send `k` messages, both must get all of the other's; the
/// buddy leaves, the owner deletes the room. Errors end the owner's session.
#[allow(clippy::too_many_arguments)]
fn temp_room(
    sh: &Shared,
    dev: &mut Dev,
    rng: &mut Rng,
    vi: u32,
    me: u32,
    ep: u32,
    share: f64,
    out: &mut Outcome,
) -> Result<(), String> {
    let names = &sh.names;
    let buddy = me + 1;
    let tid = vi * 1_000_000 + ep;
    let room = names.temp_room(tid);
    let pw = rng.chance(0.3).then(|| format!("pw{ep}"));
    let code = match dev.c.create_room(&room, pw.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            sh.notes.note(
                "visitor",
                format!("{} could not create {room}: {e}", names.users[me as usize]),
            );
            return Err(e.to_string());
        }
    };
    sh.count(&sh.ev.temp_rooms);
    let mut ts = Sender::default();
    let Some(mut b) = connect_retry(sh, buddy, 0, ep, None) else {
        let _ = dev.c.delete_room(&room);
        return Ok(());
    };
    let by = if rng.chance(0.5) { &code } else { &room };
    if let Err(e) = b.c.join_room(by, pw.as_deref()) {
        sh.notes.note(
            "visitor",
            format!(
                "{} could not join {room} by {by}: {e}",
                names.users[buddy as usize]
            ),
        );
        b.finish(sh, &mut ts, &mut Checker::new(buddy), true);
        let _ = dev.c.delete_room(&room);
        return Ok(());
    }
    let mut oc = Checker::new(me);
    let mut bc = Checker::new(buddy);
    let k = rng.range(10, 60);
    let (ko, kb) = (key(Kind::Temp, me, 0, tid), key(Kind::Temp, buddy, 0, tid));
    let (mut sent_o, mut sent_b) = (0u64, 0u64);
    let mut last = Instant::now();
    let mut tokens = 0.0f64;
    let mut buddy_err = None;
    while (sent_o < k || sent_b < k) && !sh.stopping() {
        let now = Instant::now();
        tokens = (tokens + share * now.duration_since(last).as_secs_f64()).min(share * 0.25 + 1.0);
        last = now;
        while tokens >= 1.0 && (sent_o < k || sent_b < k) {
            tokens -= 1.0;
            let size = rng.range(HEADER as u64, 200) as usize;
            if sent_o <= sent_b && sent_o < k {
                dev.send(&mut ts, ko, To::Room(&room), size);
                sent_o += 1;
            } else {
                b.send(&mut ts, kb, To::Room(&room), size);
                sent_b += 1;
            }
        }
        dev.flush(sh, &mut ts)?;
        dev.pump(sh, &mut oc, Duration::from_millis(1), 10_000)?;
        if let Err(e) = b.flush(sh, &mut ts).and_then(|()| {
            b.pump(sh, &mut bc, Duration::from_millis(1), 10_000)
                .map(drop)
        }) {
            buddy_err = Some(e);
            break;
        }
    }
    if buddy_err.is_none() {
        if let Err(e) = b.sync(sh, &mut ts) {
            buddy_err = Some(e);
        }
    }
    dev.sync(sh, &mut ts)?;
    // Both must get everything the other sent (both were members throughout).
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = |c: &Checker, key: &StreamKey, n: u64| {
        n == 0 || c.streams.get(key).is_some_and(|s| s.contig >= n)
    };
    while Instant::now() < deadline
        && buddy_err.is_none()
        && !(done(&oc, &kb, sent_b) && done(&bc, &ko, sent_o))
    {
        dev.pump(sh, &mut oc, Duration::from_millis(5), 10_000)?;
        if let Err(e) = b.pump(sh, &mut bc, Duration::from_millis(5), 10_000) {
            buddy_err = Some(e);
        }
    }
    let mut missing = 0;
    for (c, key, n, who) in [(&oc, kb, sent_b, me), (&bc, ko, sent_o, buddy)] {
        if buddy_err.is_some() {
            break;
        }
        let empty = Default::default();
        let uncertain = ts.sent.get(&key).map_or(&empty, |i| &i.uncertain);
        let (m, first) = match c.streams.get(&key) {
            Some(st) => st.missing(n, uncertain),
            None => (n.saturating_sub(uncertain.len() as u64), Some(1)),
        };
        if m > 0 {
            missing += m;
            out.details.push(format!(
                "{} in {room}: {m} of {n} missing from {key:?} (first #{first:?})",
                names.users[who as usize]
            ));
        }
    }
    out.window_loss += missing;
    match buddy_err {
        None => {
            if let Err(e) = b.c.leave_room(&room) {
                sh.notes.note(
                    "visitor",
                    format!(
                        "{} could not leave {room}: {e}",
                        names.users[buddy as usize]
                    ),
                );
            }
            b.finish(sh, &mut ts, &mut bc, rng.chance(0.7));
        }
        Some(e) => b.lost(sh, &mut ts, &mut bc, &e),
    }
    if let Err(e) = dev.c.delete_room(&room) {
        sh.notes.note(
            "visitor",
            format!("{} could not delete {room}: {e}", names.users[me as usize]),
        );
    }
    for c in [oc, bc] {
        out.extra += c.st;
        out.details.extend(c.details);
    }
    Ok(())
}
