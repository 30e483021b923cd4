//! The history log: append-only files that hold the records of stored history chunks,
//! so that a chunk's bytes are written once.
//!
//! Before, a chunk was a fjall value: its bytes went to fjall's journal, and again to a
//! blob file when the memtable was flushed (twice the writes, plus both checksums), and
//! at 16 × 1 KiB that was most of the router's CPU (measured in BENCHMARKS.md, issue 13).
//! Now the chunk's key in the `history` keyspace holds a small pointer ([`Loc`]: file,
//! offset, length) and the records are appended here (one `writev` per chunk).
//!
//! # Files
//! `<data dir>/history/<id>.hlog` (`id`: 8 decimal digits, increasing). Appends go to the
//! newest ("active") file until it holds [`FILE_MAX`] bytes; a new file is started at
//! every open. Each entry is `key length (u16 BE)`, `data length (u32 BE)`, the key, the
//! data: the file says which key each of its entries belonged to, which is what
//! compaction needs.
//!
//! # Space
//! The storage thread counts each file's live bytes (data that a key still points to)
//! and keeps the count in the keyspace (`f` + id, written with the pointers that change
//! it, so both agree after a crash). A file with no live bytes is deleted once the
//! commit that dropped its last pointer is as durable as the mode promises. When the
//! files hold more than twice the live bytes (plus two files of slack), the file with
//! the fewest live bytes is compacted: its live entries are appended again and it is
//! deleted. Each byte moved frees at least one, so the disk holds at most about twice
//! what the history bounds keep, plus up to [`FREE_MAX`] dead files (256 MiB) kept to be
//! overwritten.
//!
//! # Writes
//! Where the filesystem allows it, files are written with `O_DIRECT`, from an aligned
//! stage of up to 1 MiB (`store::direct`): no page cache, no write-back by kernel
//! threads. A file's physical end is then rounded up to 4 KiB with zeros, which
//! [`entries`] stops at. Elsewhere (tmpfs) they are written through the page cache,
//! whose oldest pages are written back and dropped ([`HistLog::drop_behind`]).
//!
//! # Crashes
//! Data is written before the pointers that name it are committed: a crash between the
//! two leaves unreferenced bytes (a file with no `f` entry is deleted at open). Under
//! `--durability sync` the files are fsynced before the journal. Under `memory`, an
//! operating-system crash may leave a pointer past a file's end: that chunk reads as
//! missing and is skipped, as memory mode may lose recent writes anyway.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender};

use rustc_hash::FxHashMap;

use super::direct::{self, DirectStage};

/// A file is closed for appends once it holds this many bytes.
pub(crate) const FILE_MAX: u64 = 32 << 20;
/// Bytes of an entry's header (key length u16, data length u32).
const ENTRY_HEADER: usize = 6;
/// Open read handles kept (past it they are closed and reopened on demand).
const READERS_MAX: usize = 16;
/// Extension of a log file.
const EXT: &str = "hlog";

/// Where a chunk's records are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    /// File id.
    pub(crate) file: u32,
    /// Offset of the data in the file.
    pub(crate) offset: u64,
    /// Bytes of data.
    pub(crate) len: u32,
}

/// Bytes of an encoded [`Loc`].
pub(crate) const LOC_BYTES: usize = 16;

impl Loc {
    /// File (u32 BE), offset (u64 BE), length (u32 BE).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.file.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
    }

    /// `None`: not [`LOC_BYTES`] bytes.
    pub(crate) fn decode(b: &[u8]) -> Option<Loc> {
        if b.len() != LOC_BYTES {
            return None;
        }
        Some(Loc {
            file: u32::from_be_bytes(b[..4].try_into().ok()?),
            offset: u64::from_be_bytes(b[4..12].try_into().ok()?),
            len: u32::from_be_bytes(b[12..].try_into().ok()?),
        })
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct FileStat {
    /// Bytes in the file.
    size: u64,
    /// Bytes of data still pointed to.
    live: u64,
}

/// The files, their live bytes, the active one. Owned by the storage thread.
pub(crate) struct HistLog {
    dir: PathBuf,
    file_max: u64,
    files: BTreeMap<u32, FileStat>,
    /// The file appends go to (created by the first append after open or a roll).
    active: Option<(u32, File)>,
    next_id: u32,
    readers: RefCell<FxHashMap<u32, File>>,
    /// Files whose live count changed since [`HistLog::take_changed`].
    changed: BTreeSet<u32>,
    /// Files with nothing live: deleted by [`HistLog::unlink_doomed`].
    doomed: Vec<u32>,
    /// What was released since the last commit ([`HistLog::committed`]): undone if that
    /// commit fails ([`HistLog::forget_doomed`]).
    released: Vec<Loc>,
    /// Files written since the last [`HistLog::sync`].
    unsynced: Vec<u32>,
    /// Dead files kept to be overwritten by the next active ones (at most [`FREE_MAX`]).
    free: Vec<PathBuf>,
    /// Small entries of the append under way, written together (see [`STAGE_ENTRY_MAX`]).
    stage: Vec<u8>,
    /// Files are opened with `O_DIRECT` and written through `dstage` (the filesystem
    /// takes it: `direct::supported`); else through the page cache.
    direct: bool,
    /// The active file's end not yet written in whole blocks (with `direct`).
    dstage: DirectStage,
    /// The `next_id` the keyspace has (see [`HistLog::take_next_id`]).
    next_saved: u32,
    /// A file was created, renamed or deleted since the last [`HistLog::sync`].
    dir_dirty: bool,
    /// Files compaction could not empty (see [`HistLog::mark_stuck`]).
    stuck: BTreeSet<u32>,
    /// Appended ranges still in the page cache, oldest first (see
    /// [`HistLog::drop_behind`]): (file id, file, from, to).
    cached: VecDeque<(u32, File, u64, u64)>,
    /// Bytes in `cached`.
    cached_bytes: u64,
    /// Most bytes in `cached` ([`CACHED_BEHIND`]; tests make it small).
    cache_behind: u64,
    /// Offset of the active file up to which its bytes are in `cached`.
    noted: u64,
    /// Bytes appended since the last [`HistLog::drop_behind`].
    appended: u64,
    /// Files with ranges dropped from the page cache: deleted when dead, not reused.
    dropped: BTreeSet<u32>,
    /// The thread that writes ranges back and drops them (started by the first drop).
    behind: Option<SyncSender<(File, u64, u64)>>,
    /// Starting that thread failed (not tried again).
    behind_failed: bool,
}

/// Entries up to this size are copied into one buffer and written with one `write`;
/// larger ones get a `writev` each. In sync durability every round appends a chunk of a
/// few messages per conversation: one system call per chunk was a sixth of the storage
/// thread's time (`perf`, 16 × 64 B).
const STAGE_ENTRY_MAX: usize = 8 << 10;
/// The staged bytes are written once they reach this.
const STAGE_MAX: usize = 256 << 10;

/// Dead files kept for reuse. Overwriting a file whose pages are cached costs the kernel
/// about half of what writing a new one does (no page or block allocation: `dd` of 1 GiB,
/// 0.17 s of system time against 0.38–0.72 s). At 16 × 1 KiB about 30 files a second die
/// and as many start: with 2 kept most new files were fresh ones (storage thread 1.73 s of
/// system time per 4M messages, 1.10 with 8; 16 measured the same as 8).
const FREE_MAX: usize = 8;

/// [`HistLog::drop_behind`] runs after every this many bytes appended (and after each
/// flush).
const DROP_STEP: u64 = 16 << 20;
/// Bytes of the log, the newest, left in the page cache: the rest is written back and
/// dropped. Under a log's steady churn (16 × 1 KiB: each conversation's kept window
/// rewritten every second or two) files die within it and are overwritten while
/// cached; what outlives it (256 conversations × 10 000 × 1 KiB: GBs kept) leaves.
const CACHED_BEHIND: u64 = 512 << 20;
/// Most ranges in [`HistLog::cached`] (each holds a file descriptor): small files (tests)
/// are dropped sooner.
const CACHED_RANGES_MAX: usize = 64;
/// Ranges waiting for the drop-behind thread; past it they are left to the kernel.
const BEHIND_QUEUE: usize = 8;

/// Prefix of a dead file kept for reuse.
const FREE_PREFIX: &str = "free-";

fn file_name(id: u32) -> String {
    format!("{id:08}.{EXT}")
}

fn parse_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(EXT)?.strip_suffix('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes every slice (a vectored write may take only some). Called once per entry: one
/// `writev` of a whole flush (megabytes) measured 2× the kernel time of one per entry
/// (callgrind cannot see it; `perf`: `copy_folio_from_iter_atomic` 56% against 15% of
/// the storage thread at 16 × 1 KiB).
fn write_all_vectored(f: &mut File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match f.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `[from, to)` of `f` back to disk, waits for it, and drops those pages from the
/// page cache (errors ignored: the pages stay cached, and the kernel writes them back
/// and reclaims them as any other).
fn write_back_and_drop(f: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain system calls on the open file descriptor `f` owns; no memory passed.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), off, len, flags);
        libc::posix_fadvise(f.as_raw_fd(), off, len, libc::POSIX_FADV_DONTNEED);
    }
}

impl HistLog {
    /// Opens the log in `dir` (created if missing). `known`: the live bytes of each file
    /// as the keyspace records them; a file it does not name, or names with nothing live,
    /// is deleted. A file it names that is missing is reported by the next
    /// [`HistLog::take_changed`] (with `None`), so its entry goes too.
    pub(crate) fn open(
        dir: &Path,
        known: impl IntoIterator<Item = (u32, u64)>,
        next_hint: u32,
        file_max: u64,
    ) -> io::Result<HistLog> {
        fs::create_dir_all(dir)?;
        let known: BTreeMap<u32, u64> = known.into_iter().collect();
        let mut files = BTreeMap::new();
        // Ids never repeat: past every id known, on disk (kept dead files too) or handed
        // out before (`next_hint`, kept in the keyspace).
        let mut next_id = known
            .keys()
            .next_back()
            .map_or(0, |&id| id.saturating_add(1))
            .max(next_hint);
        let mut free = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            if !e.file_type()?.is_file() {
                continue;
            }
            let name = e.file_name();
            let name = name.to_str().unwrap_or("");
            if let Some(rest) = name.strip_prefix(FREE_PREFIX) {
                if let Some(id) = parse_name(rest) {
                    next_id = next_id.max(id.saturating_add(1));
                }
                if free.len() < FREE_MAX {
                    free.push(e.path());
                } else {
                    fs::remove_file(e.path())?;
                }
                continue;
            }
            let Some(id) = parse_name(name) else {
                continue;
            };
            next_id = next_id.max(id.saturating_add(1));
            match known.get(&id) {
                Some(&live) if live > 0 => {
                    let size = e.metadata()?.len();
                    // (An unreadable count comes as u64::MAX: all of it counts as live.)
                    let live = live.min(size);
                    files.insert(id, FileStat { size, live });
                }
                _ => fs::remove_file(e.path())?,
            }
        }
        let changed = known.keys().filter(|id| !files.contains_key(id)).copied();
        let direct = direct::supported(dir);
        tracing::info!(
            dir = %dir.display(),
            direct,
            "history log opened (direct: written with O_DIRECT, past the page cache)"
        );
        Ok(HistLog {
            direct,
            dstage: DirectStage::default(),
            dir: dir.to_path_buf(),
            file_max: file_max.max(1),
            changed: changed.collect(),
            files,
            active: None,
            next_id,
            readers: RefCell::new(FxHashMap::default()),
            doomed: Vec::new(),
            released: Vec::new(),
            unsynced: Vec::new(),
            free,
            stage: Vec::new(),
            next_saved: next_id,
            dir_dirty: false,
            stuck: BTreeSet::new(),
            cached: VecDeque::new(),
            cached_bytes: 0,
            cache_behind: CACHED_BEHIND,
            noted: 0,
            appended: 0,
            dropped: BTreeSet::new(),
            behind: None,
            behind_failed: false,
        })
    }

    fn path(&self, id: u32) -> PathBuf {
        self.dir.join(file_name(id))
    }

    /// The active file, started if there is none or the current one is full.
    fn active(&mut self) -> io::Result<u32> {
        if let Some((id, _)) = &self.active {
            if self.files.get(id).is_some_and(|s| s.size < self.file_max) {
                return Ok(*id);
            }
            // Full: its staged bytes written, closed for appends; deleted as soon as
            // nothing in it is live.
            let id = *id;
            self.write_stage()?;
            self.dstage.reset();
            if let Some((_, f)) = self.active.take() {
                if !self.direct {
                    self.note_cached(id, f);
                }
            }
            if self.files.get(&id).is_some_and(|s| s.live == 0) {
                self.doomed.push(id);
                self.changed.insert(id);
            }
        }
        let id = self.next_id;
        self.next_id = id
            .checked_add(1)
            .ok_or_else(|| io::Error::other("history log file ids exhausted"))?;
        // Written from offset 0 on, sequentially (no O_APPEND: a recycled file is
        // overwritten in place).
        let reused = match self.free.pop() {
            Some(old) => {
                fs::rename(&old, self.path(id))?;
                true
            }
            None => false,
        };
        let f = if self.direct {
            direct::open(&self.path(id), !reused)?
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(!reused)
                .open(self.path(id))?
        };
        self.dstage.reset();
        self.files.insert(id, FileStat::default());
        self.active = Some((id, f));
        self.noted = 0;
        self.dir_dirty = true;
        Ok(id)
    }

    /// Appends entries (key, data) in order and returns where each one's data is. The
    /// data counts as live at once (see [`HistLog::release`]).
    #[cfg(test)]
    pub(crate) fn append(&mut self, items: &[(&[u8], &[u8])]) -> io::Result<Vec<Loc>> {
        let items: Vec<(&[u8], &[&[u8]])> = items
            .iter()
            .map(|(k, d)| (*k, std::slice::from_ref(d)))
            .collect();
        self.append_pieces(&items)
    }

    /// [`HistLog::append`] of entries whose data comes in pieces (written from where
    /// they are, not joined first).
    pub(crate) fn append_pieces(&mut self, items: &[(&[u8], &[&[u8]])]) -> io::Result<Vec<Loc>> {
        let mut locs = Vec::with_capacity(items.len());
        if let Err(e) = self.append_inner(items, &mut locs) {
            // Nothing points to what this call wrote: its live bytes do not count, and a
            // file left with none (not the active one) goes.
            self.stage.clear();
            let active = self.active.as_ref().map(|(id, _)| *id);
            for loc in &locs {
                if let Some(s) = self.files.get_mut(&loc.file) {
                    s.live = s.live.saturating_sub(u64::from(loc.len));
                    if s.live == 0 && active != Some(loc.file) && !self.doomed.contains(&loc.file) {
                        self.doomed.push(loc.file);
                    }
                }
                self.changed.insert(loc.file);
            }
            return Err(e);
        }
        Ok(locs)
    }

    /// [`HistLog::append`]'s work: `locs` gets each entry counted live so far.
    fn append_inner(&mut self, items: &[(&[u8], &[&[u8]])], locs: &mut Vec<Loc>) -> io::Result<()> {
        let mut heads: Vec<[u8; ENTRY_HEADER]> = Vec::with_capacity(items.len());
        let mut lens: Vec<usize> = Vec::with_capacity(items.len());
        for (k, d) in items {
            let len = d.iter().map(|p| p.len()).sum::<usize>();
            lens.push(len);
            let klen = u16::try_from(k.len()).map_err(|_| io::Error::other("key too long"))?;
            let dlen = u32::try_from(len).map_err(|_| io::Error::other("chunk too long"))?;
            let mut h = [0u8; ENTRY_HEADER];
            h[..2].copy_from_slice(&klen.to_be_bytes());
            h[2..].copy_from_slice(&dlen.to_be_bytes());
            heads.push(h);
        }
        for (i, ((k, pieces), dlen)) in items.iter().zip(lens).enumerate() {
            let id = self.active()?;
            // (`size` counts the staged bytes too.)
            let start = self.files.get(&id).map_or(0, |s| s.size);
            if self.direct {
                let Some((_, f)) = self.active.as_ref() else {
                    return Err(io::Error::other("no active history log file"));
                };
                let mut r = self.dstage.push(f, &heads[i]);
                r = r.and_then(|()| self.dstage.push(f, k));
                for p in pieces.iter() {
                    r = r.and_then(|()| self.dstage.push(f, p));
                }
                if let Err(e) = r {
                    self.drop_active();
                    return Err(e);
                }
            } else if ENTRY_HEADER + k.len() + dlen <= STAGE_ENTRY_MAX {
                self.stage.extend_from_slice(&heads[i]);
                self.stage.extend_from_slice(k);
                for p in pieces.iter() {
                    self.stage.extend_from_slice(p);
                }
            } else {
                self.write_stage()?;
                let Some((_, f)) = self.active.as_mut() else {
                    return Err(io::Error::other("no active history log file"));
                };
                let mut slices = Vec::with_capacity(2 + pieces.len());
                slices.push(IoSlice::new(&heads[i]));
                slices.push(IoSlice::new(k));
                slices.extend(pieces.iter().map(|p| IoSlice::new(p)));
                if let Err(e) = write_all_vectored(f, &mut slices) {
                    self.drop_active();
                    return Err(e);
                }
            }
            let offset = start + (ENTRY_HEADER + k.len()) as u64;
            if let Some(s) = self.files.get_mut(&id) {
                s.size = offset + dlen as u64;
                s.live += dlen as u64;
            }
            locs.push(Loc {
                file: id,
                offset,
                len: dlen as u32,
            });
            self.changed.insert(id);
            if self.unsynced.last() != Some(&id) {
                self.unsynced.push(id);
            }
            if self.stage.len() >= STAGE_MAX {
                self.write_stage()?;
            }
            self.appended += (ENTRY_HEADER + k.len() + dlen) as u64;
            if self.appended >= DROP_STEP && !self.direct {
                self.write_stage()?;
                self.drop_behind();
            }
        }
        self.write_stage()
    }

    /// Writes the staged small entries to the active file (one `write`); with `direct`,
    /// what the active file's stage holds (its last block padded, see `store::direct`).
    fn write_stage(&mut self) -> io::Result<()> {
        if self.direct {
            let r = match self.active.as_ref() {
                Some((_, f)) => self.dstage.write(f, true),
                None => Ok(()),
            };
            if r.is_err() {
                self.drop_active();
            }
            return r;
        }
        if self.stage.is_empty() {
            return Ok(());
        }
        let r = match self.active.as_mut() {
            Some((_, f)) => f.write_all(&self.stage),
            None => Err(io::Error::other("no active history log file")),
        };
        self.stage.clear();
        if r.is_err() {
            self.drop_active();
        }
        r
    }

    /// After a failed write: what the active file holds past its last whole entry is
    /// garbage nothing points to, so the next append starts a new file. This one goes
    /// once nothing in it is live (now, or when the failed append's entries are taken
    /// back).
    fn drop_active(&mut self) {
        self.dstage.reset();
        if let Some((id, _)) = self.active.take() {
            if self.files.get(&id).is_some_and(|s| s.live == 0) && !self.doomed.contains(&id) {
                self.doomed.push(id);
                self.changed.insert(id);
            }
        }
    }

    /// The data of `key`'s entry at `loc`.
    #[cfg(test)]
    pub(crate) fn read(&self, loc: Loc, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.read_from(loc, key, 0)
    }

    /// The data of `key`'s entry at `loc` from byte `from` on (0: whole; else, as for a
    /// chunk's last record, the entry's header is read and checked, then only that part
    /// of the data). `None`: its file is gone or shorter than `loc` says, the entry there
    /// is not `key`'s of that length (as when an operating-system crash lost a write
    /// into a reused file), or `from` is past its end.
    pub(crate) fn read_from(&self, loc: Loc, key: &[u8], from: u32) -> io::Result<Option<Vec<u8>>> {
        let head = (ENTRY_HEADER + key.len()) as u64;
        let Some(stat) = self.files.get(&loc.file) else {
            return Ok(None);
        };
        let Some(start) = loc.offset.checked_sub(head) else {
            return Ok(None);
        };
        if loc.offset.saturating_add(u64::from(loc.len)) > stat.size || from > loc.len {
            return Ok(None);
        }
        let mut readers = self.readers.borrow_mut();
        if !readers.contains_key(&loc.file) {
            let f = match File::open(self.path(loc.file)) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            if readers.len() >= READERS_MAX {
                readers.clear();
            }
            readers.insert(loc.file, f);
        }
        let Some(f) = readers.get(&loc.file) else {
            return Ok(None);
        };
        // The header and the data in one read when the data is read whole.
        let whole = if from == 0 { loc.len as usize } else { 0 };
        let mut buf = vec![0u8; head as usize + whole];
        match f.read_exact_at(&mut buf, start) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let klen = u16::from_be_bytes([buf[0], buf[1]]) as usize;
        let dlen = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
        if klen != key.len() || dlen != loc.len || buf[ENTRY_HEADER..head as usize] != *key {
            return Ok(None);
        }
        if from == 0 {
            buf.drain(..head as usize);
            return Ok(Some(buf));
        }
        let mut data = vec![0u8; (loc.len - from) as usize];
        match f.read_exact_at(&mut data, loc.offset + u64::from(from)) {
            Ok(()) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The data at `loc` is no longer pointed to.
    pub(crate) fn release(&mut self, loc: Loc) {
        let active = self.active.as_ref().map(|(id, _)| *id);
        if let Some(s) = self.files.get_mut(&loc.file) {
            s.live = s.live.saturating_sub(u64::from(loc.len));
            self.changed.insert(loc.file);
            self.released.push(loc);
            if s.live == 0 && active != Some(loc.file) && !self.doomed.contains(&loc.file) {
                self.doomed.push(loc.file);
            }
        }
    }

    /// Compaction moved what it could read of file `id` and some of it is still counted
    /// live (an unreadable stretch, or a count too high after a failed write): the file
    /// stays until trims release the rest, and is not picked for compaction again.
    pub(crate) fn mark_stuck(&mut self, id: u32) {
        self.stuck.insert(id);
    }

    /// Live bytes of file `id`.
    pub(crate) fn live(&self, id: u32) -> u64 {
        self.files.get(&id).map_or(0, |s| s.live)
    }

    /// The files whose live count changed since the last call: (id, live bytes), `None`
    /// for a file that is gone or goes (its `f` entry is deleted).
    pub(crate) fn take_changed(&mut self) -> Vec<(u32, Option<u64>)> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .map(|id| {
                let live = self.files.get(&id).map_or(0, |s| s.live);
                // The active file keeps its entry while empty: it is written to next.
                let active = self.active.as_ref().is_some_and(|(a, _)| *a == id);
                let kept = active || (live > 0 && !self.doomed.contains(&id));
                (id, kept.then_some(live))
            })
            .collect()
    }

    /// A commit failed: the pointers the doomed files held may still be on disk, so they
    /// are kept (the counts on disk decide at the next open), and what was released
    /// since the last commit counts as live again: its pointers are still there, and the
    /// work retried (a deletion's slice, a trim) releases it again. Counted twice, a
    /// file's count reached 0 while other chunks still pointed into it, and the file
    /// went.
    pub(crate) fn forget_doomed(&mut self) {
        self.doomed.clear();
        for loc in self.released.drain(..) {
            if let Some(s) = self.files.get_mut(&loc.file) {
                s.live = s.live.saturating_add(u64::from(loc.len));
                self.changed.insert(loc.file);
            }
        }
    }

    /// A commit succeeded: what was released is released for good.
    pub(crate) fn committed(&mut self) {
        self.released.clear();
    }

    /// The next file id, if it moved since the last call (kept in the keyspace, so ids
    /// never repeat across restarts).
    pub(crate) fn take_next_id(&mut self) -> Option<u32> {
        (self.next_id != self.next_saved).then(|| {
            self.next_saved = self.next_id;
            self.next_id
        })
    }

    /// Deletes the files with nothing live (call once the commit that dropped their last
    /// pointer, and their `f` entries, is as durable as the mode promises).
    pub(crate) fn unlink_doomed(&mut self) {
        for id in std::mem::take(&mut self.doomed) {
            if self.active.as_ref().is_some_and(|(a, _)| *a == id) {
                continue;
            }
            self.readers.borrow_mut().remove(&id);
            self.files.remove(&id);
            self.stuck.remove(&id);
            self.unsynced.retain(|&u| u != id);
            // (Its ranges name an inode that may be reused.)
            self.cached.retain(|c| c.0 != id);
            self.cached_bytes = self.cached.iter().map(|c| c.3 - c.2).sum();
            // A file whose pages were dropped is not reused: a write that covers part of
            // a page not cached reads that page from disk first.
            if !self.dropped.remove(&id) && self.free.len() < FREE_MAX {
                let to = self.dir.join(format!("{FREE_PREFIX}{}", file_name(id)));
                match fs::rename(self.path(id), &to) {
                    Ok(()) => {
                        self.free.push(to);
                        self.dir_dirty = true;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, file = id, "cannot keep a history log file");
                    }
                }
            }
            self.dir_dirty = true;
            if let Err(e) = fs::remove_file(self.path(id)) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, file = id, "cannot delete a history log file");
                }
            }
        }
    }

    /// Notes `f`'s bytes (file `id`) not yet in `cached`: all of them, the file being
    /// closed for appends.
    fn note_cached(&mut self, id: u32, f: File) {
        self.note_range(id, || Ok(f));
        self.noted = 0;
    }

    /// Adds what file `id` (the active one, or the one just closed) holds past `noted` to
    /// `cached`: it extends the file's last range (the ranges of a file are contiguous),
    /// else starts one with the handle `f` gives.
    fn note_range(&mut self, id: u32, f: impl FnOnce() -> io::Result<File>) {
        let size = self.files.get(&id).map_or(0, |s| s.size);
        if size <= self.noted {
            return;
        }
        match self.cached.back_mut() {
            Some(last) if last.0 == id && last.3 == self.noted => last.3 = size,
            _ => match f() {
                Ok(f) => self.cached.push_back((id, f, self.noted, size)),
                // (Left to the kernel.)
                Err(_) => return,
            },
        }
        self.cached_bytes += size - self.noted;
        self.noted = size;
    }

    /// Keeps the log's footprint in the page cache at about [`CACHED_BEHIND`]: what was
    /// appended before the newest `CACHED_BEHIND` bytes is handed to a thread of its
    /// own, which writes it back (`sync_file_range`, waited for there, never on the
    /// storage thread) and drops it from the page cache (`POSIX_FADV_DONTNEED`). Called
    /// after each flush and every [`DROP_STEP`] bytes appended.
    ///
    /// History is written once and read rarely. Left in the page cache, a log that keeps
    /// GBs grows it by every byte written, and each new page is memory the kernel must
    /// find: on this VM fresh memory cost the storage thread 2.8 s of system time per GB
    /// written, against 0.25 s for pages freed a moment before (BENCHMARKS.md). A slow
    /// disk never stalls the storage thread: past [`BEHIND_QUEUE`] ranges waiting, the
    /// rest are left to the kernel.
    pub(crate) fn drop_behind(&mut self) {
        self.appended = 0;
        if self.direct {
            // Nothing of the log is in the page cache (what compaction reads is left to
            // the kernel).
            return;
        }
        if let Some((id, f)) = &self.active {
            let id = *id;
            // A handle of its own only for a new range (one per file, not per call).
            let extends = self
                .cached
                .back()
                .is_some_and(|l| l.0 == id && l.3 == self.noted);
            let dup = if extends {
                Err(io::ErrorKind::Unsupported.into())
            } else {
                f.try_clone()
            };
            self.note_range(id, || dup);
        }
        while self.cached_bytes > self.cache_behind || self.cached.len() > CACHED_RANGES_MAX {
            let Some((id, f, from, to)) = self.cached.pop_front() else {
                break;
            };
            self.cached_bytes -= to - from;
            if self.files.get(&id).is_none_or(|s| s.live == 0) {
                // Dead (its pages go with the file): nothing to write back.
                continue;
            }
            // A full queue (the disk is behind), or no thread: these pages are left to
            // the kernel, and the file may still be reused.
            if self
                .behind_thread()
                .is_some_and(|tx| tx.try_send((f, from, to)).is_ok())
            {
                self.dropped.insert(id);
            }
        }
    }

    /// The drop-behind thread's queue (the thread started on first use).
    fn behind_thread(&mut self) -> Option<&SyncSender<(File, u64, u64)>> {
        if self.behind.is_none() && !self.behind_failed {
            let (tx, rx) = mpsc::sync_channel::<(File, u64, u64)>(BEHIND_QUEUE);
            let spawned = std::thread::Builder::new()
                .name("rr-hlog-drop".into())
                .spawn(move || {
                    for (f, from, to) in rx {
                        write_back_and_drop(&f, from, to);
                    }
                });
            match spawned {
                Ok(_) => self.behind = Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "history log: no drop-behind thread");
                    self.behind_failed = true;
                }
            }
        }
        self.behind.as_ref()
    }

    /// fdatasyncs the files written since the last call (before the journal that points
    /// into them is synced).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.dir_dirty {
            // New and renamed files' names.
            File::open(&self.dir)?.sync_all()?;
            self.dir_dirty = false;
        }
        for id in std::mem::take(&mut self.unsynced) {
            match &self.active {
                Some((a, f)) if *a == id => f.sync_data()?,
                _ => match File::open(self.path(id)) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(())
    }

    /// The file to compact, if the files hold more than twice the live bytes plus two
    /// files: the closed one with the fewest live bytes.
    pub(crate) fn compaction_candidate(&self) -> Option<u32> {
        let (size, live) = self.totals();
        if size <= live.saturating_mul(2).saturating_add(2 * self.file_max) {
            return None;
        }
        let active = self.active.as_ref().map(|(id, _)| *id);
        self.files
            .iter()
            .filter(|(id, _)| {
                Some(**id) != active && !self.doomed.contains(id) && !self.stuck.contains(id)
            })
            .min_by_key(|(_, s)| s.live)
            .map(|(id, _)| *id)
    }

    /// Bytes in the files and live bytes (files about to be deleted left out).
    pub(crate) fn totals(&self) -> (u64, u64) {
        self.files
            .iter()
            .filter(|(id, _)| !self.doomed.contains(id))
            .map(|(_, s)| s)
            .fold((0, 0), |(a, b), s| (a + s.size, b + s.live))
    }

    /// Writes through the page cache whatever the filesystem takes (tests of that path).
    #[cfg(test)]
    pub(crate) fn buffered(mut self) -> Self {
        self.direct = false;
        self
    }

    /// Number of files.
    #[cfg(test)]
    pub(crate) fn file_count(&self) -> usize {
        self.files.len()
    }

    /// The whole of file `id` (for compaction; at most about [`FILE_MAX`] bytes plus one
    /// chunk).
    pub(crate) fn read_file(&self, id: u32) -> io::Result<Vec<u8>> {
        let mut buf = fs::read(self.path(id))?;
        // A recycled file holds its former content past what was written since.
        if let Some(s) = self.files.get(&id) {
            buf.truncate(s.size as usize);
        }
        Ok(buf)
    }
}

/// The entries of a file's bytes: (key, offset of the data, data). Stops at a torn one.
pub(crate) fn entries(buf: &[u8]) -> impl Iterator<Item = (&[u8], u64, &[u8])> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let h = buf.get(at..at + ENTRY_HEADER)?;
        let klen = u16::from_be_bytes([h[0], h[1]]) as usize;
        let dlen = u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize;
        if klen == 0 {
            // No key is empty: the zeros that pad a directly written file's end.
            return None;
        }
        let kstart = at + ENTRY_HEADER;
        let key = buf.get(kstart..kstart + klen)?;
        let dstart = kstart + klen;
        let data = buf.get(dstart..dstart + dlen)?;
        at = dstart + dlen;
        Some((key, dstart as u64, data))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// The two ways files are written, for the tests of what both must do: buffered,
    /// and direct where a filesystem here takes it.
    fn modes() -> Vec<(tempfile::TempDir, bool)> {
        let mut modes = vec![(dir(), false)];
        modes.extend(direct::direct_dir().map(|d| (d, true)));
        modes
    }

    /// [`HistLog::open`] written the way `direct` says.
    fn open_as(
        direct: bool,
        dir: &Path,
        known: impl IntoIterator<Item = (u32, u64)>,
        next_hint: u32,
        file_max: u64,
    ) -> HistLog {
        let log = HistLog::open(dir, known, next_hint, file_max).unwrap();
        assert!(log.direct || !direct);
        if direct {
            log
        } else {
            log.buffered()
        }
    }

    #[test]
    fn appended_data_reads_back_and_files_roll_at_their_size() {
        for (d, direct) in modes() {
            let mut log = open_as(direct, d.path(), [], 0, 100);
            let big = vec![7u8; 90];
            let locs = log
                .append(&[(b"k1", b"hello"), (b"k2", &big), (b"k3", b"x")])
                .unwrap();
            // k1 and k2 fill the first file past 100 bytes: k3 starts the second.
            assert_eq!((locs[0].file, locs[1].file, locs[2].file), (0, 0, 1));
            assert_eq!(log.read(locs[0], b"k1").unwrap().unwrap(), b"hello");
            assert_eq!(log.read(locs[1], b"k2").unwrap().unwrap(), big);
            assert_eq!(log.read(locs[2], b"k3").unwrap().unwrap(), b"x");
            assert_eq!(
                log.read(locs[2], b"k2").unwrap(),
                None,
                "another key's entry"
            );
            // Part of an entry: its header checked, the data from a byte on.
            assert_eq!(log.read_from(locs[0], b"k1", 3).unwrap().unwrap(), b"lo");
            assert_eq!(log.read_from(locs[0], b"k1", 5).unwrap().unwrap(), b"");
            assert_eq!(
                log.read_from(locs[0], b"k1", 6).unwrap(),
                None,
                "past its end"
            );
            assert_eq!(
                log.read_from(locs[0], b"k2", 3).unwrap(),
                None,
                "another key"
            );
            assert_eq!(log.read_from(locs[1], b"k2", 89).unwrap().unwrap(), [7]);
            assert_eq!(log.totals().1, 96);
            let buf = log.read_file(0).unwrap();
            let e: Vec<_> = entries(&buf)
                .map(|(k, o, d)| (k.to_vec(), o, d.len()))
                .collect();
            assert_eq!(
                e,
                vec![(b"k1".to_vec(), 8, 5), (b"k2".to_vec(), 21, 90)],
                "each entry names its key"
            );
            // A torn entry ends the walk.
            assert_eq!(entries(&buf[..buf.len() - 1]).count(), 1);
        }
    }

    #[test]
    fn small_entries_are_staged_and_big_ones_written_apart_in_order() {
        let d = dir();
        let mut log = HistLog::open(d.path(), [], 0, 1 << 20).unwrap().buffered();
        let big = vec![5u8; STAGE_ENTRY_MAX + 1];
        let many: Vec<Vec<u8>> = (0..300u32).map(|i| vec![i as u8; 1000]).collect();
        let mut items: Vec<(&[u8], &[u8])> = vec![(b"s1", b"small"), (b"b1", &big)];
        items.extend(many.iter().map(|m| (&b"m"[..], &m[..])));
        items.push((b"s2", b"tail"));
        let locs = log.append(&items).unwrap();
        for ((key, want), loc) in items.iter().zip(&locs) {
            assert_eq!(log.read(*loc, key).unwrap().unwrap(), *want);
        }
        let buf = log.read_file(locs[0].file).unwrap();
        let keys: Vec<Vec<u8>> = entries(&buf).map(|e| e.0.to_vec()).collect();
        assert_eq!(keys.len(), items.len());
        assert_eq!(keys[1], b"b1");
        assert_eq!(keys.last().unwrap(), b"s2");
        assert!(
            log.stage.is_empty(),
            "everything written when append returns"
        );
    }

    #[test]
    fn data_in_pieces_reads_back_joined_staged_or_written_apart() {
        let d = dir();
        let mut log = HistLog::open(d.path(), [], 0, 1 << 20).unwrap().buffered();
        let big = vec![3u8; STAGE_ENTRY_MAX];
        let small: [&[u8]; 3] = [b"he", b"", b"llo"];
        let large: [&[u8]; 3] = [b"head", &big, b"tail"];
        let locs = log
            .append_pieces(&[(b"s", &small), (b"l", &large), (b"e", &[])])
            .unwrap();
        assert_eq!(log.read(locs[0], b"s").unwrap().unwrap(), b"hello");
        assert_eq!(log.read(locs[1], b"l").unwrap().unwrap(), large.concat());
        assert_eq!(log.read(locs[2], b"e").unwrap().unwrap(), b"");
        assert_eq!(
            (locs[0].len, locs[1].len),
            (5, (STAGE_ENTRY_MAX + 8) as u32)
        );
    }

    #[test]
    fn a_file_with_nothing_live_is_deleted_after_the_commit_and_not_before() {
        for (d, direct) in modes() {
            let mut log = open_as(direct, d.path(), [], 0, 10);
            let a = log.append(&[(b"a", b"0123456789ab")]).unwrap()[0];
            let b = log.append(&[(b"b", b"zz")]).unwrap()[0];
            assert_ne!(a.file, b.file, "the first file was full");
            log.release(a);
            assert!(log.path(a.file).exists(), "deleted only by unlink_doomed");
            let changed = log.take_changed();
            assert!(changed.contains(&(a.file, None)), "{changed:?}");
            assert!(changed.contains(&(b.file, Some(2))), "{changed:?}");
            log.unlink_doomed();
            assert!(!log.path(a.file).exists());
            assert_eq!(
                log.read(a, b"a").unwrap(),
                None,
                "a deleted file reads as missing"
            );
            // The active file is never deleted, even with nothing live.
            log.release(b);
            log.unlink_doomed();
            assert!(log.path(b.file).exists());
        }
    }

    #[test]
    fn releases_of_a_failed_commit_count_again_and_twice_never_empty_a_file() {
        let d = dir();
        let mut log = HistLog::open(d.path(), [], 0, 1 << 20).unwrap().buffered();
        let locs = log
            .append(&[(b"a", b"0123456789"), (b"b", b"xyz")])
            .unwrap();
        let (a, b) = (locs[0], locs[1]);
        assert_eq!(a.file, b.file);
        let live = log.live(a.file);
        // A deletion releases `a`, its commit fails, and the retry releases it again.
        log.release(a);
        log.forget_doomed();
        assert_eq!(log.live(a.file), live, "counted live again");
        log.release(a);
        log.committed();
        assert_eq!(log.live(a.file), live - u64::from(a.len));
        // What a commit made for good is not undone by a later failure.
        log.forget_doomed();
        assert_eq!(log.live(a.file), live - u64::from(a.len));
        assert_eq!(log.read(b, b"b").unwrap().unwrap(), b"xyz");
    }

    #[test]
    fn open_keeps_known_files_and_deletes_the_others() {
        for (d, direct) in modes() {
            let mut log = open_as(direct, d.path(), [], 0, 1 << 20);
            let a = log.append(&[(b"a", b"kept")]).unwrap()[0];
            drop(log);
            let mut log = open_as(direct, d.path(), [(a.file, 4)], 0, 1 << 20);
            let b = log.append(&[(b"b", b"orphan")]).unwrap()[0];
            assert_ne!(a.file, b.file, "a new file at every open");
            drop(log);
            // `b`'s pointer was never committed (no `f` entry): its file goes; a known file
            // that is missing is reported so its entry goes too.
            let log = open_as(direct, d.path(), [(a.file, 4), (99, 10)], 0, 1 << 20);
            assert_eq!(log.read(a, b"a").unwrap().unwrap(), b"kept");
            assert!(!log.path(b.file).exists());
            let mut log = log;
            assert_eq!(log.take_changed(), vec![(99, None)]);
            let c = log.append(&[(b"c", b"new")]).unwrap()[0];
            assert!(c.file > 99, "ids never repeat");
        }
    }

    #[test]
    fn dead_files_are_overwritten_by_the_next_ones_and_their_old_bytes_never_read() {
        let d = dir();
        let mut log = HistLog::open(d.path(), [], 0, 100).unwrap().buffered();
        let old = log.append(&[(b"old", &[9u8; 200])]).unwrap()[0];
        let small = log.append(&[(b"s", b"first")]).unwrap()[0];
        log.release(old);
        log.unlink_doomed();
        let kept = d
            .path()
            .join(format!("{FREE_PREFIX}{}", file_name(old.file)));
        assert!(kept.exists(), "kept for reuse");
        // The second file fills up: the third one is the first one, renamed.
        let fill = log.append(&[(b"f", &[1u8; 100])]).unwrap()[0];
        let next = log.append(&[(b"new", b"fresh")]).unwrap()[0];
        assert_eq!((small.file, fill.file), (1, 1));
        assert_eq!(next.file, 2);
        assert!(!kept.exists());
        assert_eq!(
            std::fs::metadata(log.path(2)).unwrap().len(),
            209,
            "old bytes stay"
        );
        assert_eq!(log.read(next, b"new").unwrap().unwrap(), b"fresh");
        // Compaction walks only what this file's life wrote.
        let e: Vec<_> = entries(&log.read_file(2).unwrap())
            .map(|e| e.0.to_vec())
            .collect();
        assert_eq!(e, vec![b"new".to_vec()]);
        // At open, kept files are reused or deleted, never read as live ones.
        drop(log);
        let log = HistLog::open(d.path(), [(2, 5)], 0, 100)
            .unwrap()
            .buffered();
        assert_eq!(log.read(next, b"new").unwrap().unwrap(), b"fresh");
        assert_eq!(log.file_count(), 1);
    }

    #[test]
    fn the_oldest_bytes_leave_the_page_cache_and_their_files_are_not_reused() {
        let d = dir();
        let mut log = HistLog::open(d.path(), [], 0, 4096).unwrap().buffered();
        log.cache_behind = 11_000;
        let mut locs = Vec::new();
        for i in 0..20u8 {
            locs.push((i, log.append(&[(&[i][..], &vec![i; 1000][..])]).unwrap()[0]));
            log.drop_behind();
            assert!(log.cached_bytes <= 11_000, "{} cached", log.cached_bytes);
            // One range (and one file handle) per file, however many calls.
            let mut files: Vec<u32> = log.cached.iter().map(|c| c.0).collect();
            files.dedup();
            assert_eq!(files.len(), log.cached.len());
        }
        let (first, last) = (locs[0].1.file, locs[19].1.file);
        assert!(log.dropped.contains(&first), "the oldest file was dropped");
        assert!(!log.dropped.contains(&last), "the newest is still cached");
        // Every entry reads back, dropped or not (the drop is a hint to the kernel).
        std::thread::sleep(std::time::Duration::from_millis(50));
        for &(i, loc) in &locs {
            assert_eq!(
                log.read(loc, &[i]).unwrap().unwrap(),
                vec![i; 1000],
                "entry {i}"
            );
        }
        // Dead, the dropped file is deleted (not kept for reuse); a cached one is kept.
        let second_last = locs.iter().rev().find(|l| l.1.file < last).unwrap().1.file;
        assert!(!log.dropped.contains(&second_last));
        for &(_, loc) in &locs {
            if loc.file == first || loc.file == second_last {
                log.release(loc);
            }
        }
        log.take_changed();
        log.unlink_doomed();
        let kept = |id| {
            d.path()
                .join(format!("{FREE_PREFIX}{}", file_name(id)))
                .exists()
        };
        assert!(
            !kept(first) && !log.path(first).exists(),
            "dropped: deleted"
        );
        assert!(kept(second_last), "cached: kept for reuse");
        assert!(!log.dropped.contains(&first));
    }

    #[test]
    fn a_failed_append_counts_nothing_live_and_the_next_one_starts_a_new_file() {
        for (d, direct) in modes() {
            let mut log = open_as(direct, d.path(), [], 0, 1 << 20);
            let a = log.append(&[(b"a", b"kept")]).unwrap()[0];
            let big = vec![3u8; STAGE_ENTRY_MAX + 1];
            let huge = vec![4u8; 2 * direct::STAGE_MAX];
            // A staged entry, one written apart, one past a direct stage (its full buffers
            // fail on the writer thread).
            for items in [
                &[(&b"s"[..], &b"staged"[..])][..],
                &[(b"b", &big[..])],
                &[(b"h", &huge[..])],
            ] {
                // The active file, as a handle that cannot write: every write fails.
                let ro = File::open(log.path(a.file)).unwrap();
                log.active = Some((a.file, ro));
                assert!(log.append(items).is_err());
                assert_eq!(log.live(a.file), 4, "only what a pointer names is live");
            }
            let n = log.append(&[(b"n", b"next")]).unwrap()[0];
            assert_ne!(n.file, a.file);
            assert_eq!(log.read(n, b"n").unwrap().unwrap(), b"next");
            assert_eq!(log.read(a, b"a").unwrap().unwrap(), b"kept");
        }
    }

    #[test]
    fn file_ids_never_repeat_across_opens() {
        for (d, direct) in modes() {
            // The id the keyspace kept, and a dead file kept for reuse, both count.
            let mut log = open_as(direct, d.path(), [], 7, 1 << 20);
            assert_eq!(log.append(&[(b"a", b"x")]).unwrap()[0].file, 7);
            assert_eq!(log.take_next_id(), Some(8));
            assert_eq!(log.take_next_id(), None, "reported once");
            drop(log);
            std::fs::write(
                d.path().join(format!("{FREE_PREFIX}{}", file_name(12))),
                b"old",
            )
            .unwrap();
            std::fs::create_dir(d.path().join("00000020.hlog")).unwrap();
            std::fs::write(d.path().join("+5.hlog"), b"").unwrap();
            let mut log = open_as(direct, d.path(), [], 8, 1 << 20);
            // (A directory or an odd name is left alone, not taken for a file.)
            assert_eq!(log.append(&[(b"b", b"y")]).unwrap()[0].file, 13);
        }
    }

    #[test]
    fn a_pointer_past_the_end_of_its_file_reads_as_missing() {
        for (d, direct) in modes() {
            let mut log = open_as(direct, d.path(), [], 0, 1 << 20);
            let a = log.append(&[(b"a", b"data")]).unwrap()[0];
            let past = Loc {
                offset: a.offset + 2,
                ..a
            };
            assert_eq!(log.read(past, b"a").unwrap(), None);
        }
    }

    #[test]
    fn compaction_is_asked_for_only_past_twice_the_live_bytes() {
        for (d, direct) in modes() {
            let mut log = open_as(direct, d.path(), [], 0, 100);
            let data = vec![1u8; 100];
            let mut locs = Vec::new();
            for _ in 0..8 {
                locs.extend(log.append(&[(b"k", &data)]).unwrap());
            }
            assert_eq!(log.file_count(), 8);
            assert_eq!(log.compaction_candidate(), None, "all live");
            // Half of each closed file's data goes (files hold one entry: release some).
            for l in &locs[..3] {
                log.release(*l);
            }
            log.unlink_doomed();
            assert_eq!(
                log.file_count(),
                5,
                "empty files are deleted, not compacted"
            );
            assert_eq!(log.compaction_candidate(), None);
            // Files of two entries, 150 and 40 bytes (10 in file 6); the 150s go.
            let mut log = open_as(direct, &d.path().join("b"), [], 0, 200);
            let (a, b, c) = (vec![1u8; 150], vec![2u8; 40], vec![3u8; 10]);
            let mut locs = Vec::new();
            for f in 0..16 {
                let second = if f == 6 { &c } else { &b };
                locs.push(log.append(&[(b"k", &a), (b"k", second)]).unwrap());
            }
            assert_eq!(log.file_count(), 16);
            assert_eq!(log.compaction_candidate(), None, "all live");
            for l in &locs {
                log.release(l[0]);
            }
            log.release(locs[3][1]);
            // 14 closed files of ~204 bytes with 40 live (file 3 empty, going): compact the
            // one with the fewest, never the empty one or the active one.
            assert_eq!(log.compaction_candidate(), Some(locs[6][1].file));
            log.release(locs[6][1]);
            log.unlink_doomed();
            assert_eq!(log.file_count(), 14);
            assert_eq!(log.read(locs[5][1], b"k").unwrap().unwrap(), b);
            assert_eq!(log.read(locs[6][1], b"k").unwrap(), None);
            // A file compaction could not empty is not picked again.
            let c = log.compaction_candidate().unwrap();
            log.mark_stuck(c);
            assert_ne!(log.compaction_candidate(), Some(c));
        }
    }

    /// With `O_DIRECT`: entries of any size read back, the files end in whole blocks whose
    /// padding the walk stops at, and a dead file is reused with its old bytes never read.
    #[test]
    fn direct_files_read_back_end_in_blocks_and_are_reused() {
        let Some(d) = direct::direct_dir() else {
            return;
        };
        let mut log = HistLog::open(d.path(), [], 0, 3 * direct::STAGE_MAX as u64).unwrap();
        assert!(log.direct);
        let big = vec![4u8; direct::STAGE_MAX + 10];
        let pieces: [&[u8]; 3] = [b"he", &big, b"llo"];
        let locs = log
            .append_pieces(&[(b"a", &[b"first"]), (b"b", &pieces), (b"c", &[b"last"])])
            .unwrap();
        let more = log.append(&[(b"d", b"after")]).unwrap()[0];
        assert_eq!(log.read(locs[0], b"a").unwrap().unwrap(), b"first");
        assert_eq!(log.read(locs[1], b"b").unwrap().unwrap(), pieces.concat());
        assert_eq!(log.read(locs[2], b"c").unwrap().unwrap(), b"last");
        assert_eq!(log.read(more, b"d").unwrap().unwrap(), b"after");
        let raw = std::fs::read(log.path(locs[0].file)).unwrap();
        assert_eq!(raw.len() % direct::BLOCK, 0, "{}", raw.len());
        let keys: Vec<Vec<u8>> = entries(&raw).map(|e| e.0.to_vec()).collect();
        assert_eq!(
            keys,
            [&b"a"[..], b"b", b"c", b"d"],
            "the padding is no entry"
        );
        // Reopened: the entries still read (a new file is started for appends).
        drop(log);
        let known = [(locs[0].file, u64::MAX)];
        let mut log = HistLog::open(d.path(), known, 0, 100).unwrap();
        assert_eq!(log.read(locs[2], b"c").unwrap().unwrap(), b"last");
        // A dead file is kept and overwritten by a later one: only its new entries count.
        let x = log.append(&[(b"x", &[9u8; 200])]).unwrap()[0];
        let y = log.append(&[(b"y", b"y")]).unwrap()[0];
        assert_ne!(x.file, y.file);
        log.release(x);
        log.unlink_doomed();
        let kept = d.path().join(format!("{FREE_PREFIX}{}", file_name(x.file)));
        assert!(kept.exists(), "kept for reuse");
        log.append(&[(b"f", &[1u8; 100])]).unwrap();
        let z = log.append(&[(b"z", b"fresh")]).unwrap()[0];
        assert!(!kept.exists(), "reused");
        assert_eq!(log.read(z, b"z").unwrap().unwrap(), b"fresh");
        let walked: Vec<Vec<u8>> = entries(&log.read_file(z.file).unwrap())
            .map(|e| e.0.to_vec())
            .collect();
        assert_eq!(walked, [b"z".to_vec()]);
        assert_eq!(log.read(y, b"y").unwrap().unwrap(), b"y");
    }
}
