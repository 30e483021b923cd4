//! Writes that bypass the page cache (`O_DIRECT`), for the history log.
//!
//! History is written once and read rarely, and a buffered write costs the kernel far
//! more than the copy: each page is allocated, accounted, copied into, written back by a
//! kernel thread and reclaimed. On this project's 2-core VM, 256 MiB written with `dd`
//! took 0.52–0.63 s of system time buffered and 0.03–0.04 s with `O_DIRECT` in 1 MiB
//! writes (0.18 s in 64 KiB ones); at 256 pairs × 64 B the storage thread spent
//! 0.37–0.59 s of system time per run writing its history (BENCHMARKS.md, eighteenth
//! pass).
//!
//! `O_DIRECT` wants the buffer, the file offset and the length aligned to the device's
//! block. [`DirectStage`] keeps the bytes of a file's end in an aligned buffer that starts
//! at a block boundary of the file: whole blocks are written once [`STAGE_MAX`] are
//! staged, and the last, partial block is written padded with zeros when the caller needs
//! its bytes on disk (the end of an append: before the pointers to them are committed).
//! That block stays staged, and the next write writes it again, longer. A file therefore
//! holds up to a block of zeros past its last entry (`histlog::entries` stops there).
//!
//! A direct write waits for the device. Full buffers are therefore written by a thread
//! of their own (`rr-hlog-write`), up to [`BUFFERS`] at a time, while the storage thread
//! fills the next: a synchronous 1 MiB write per MiB left the storage thread idle on
//! I/O for 40% of a 256 × 1 KiB run. The partial block at the end is written on the
//! storage thread, once every buffer before it is on disk, so that an append that
//! returns has all of its bytes written.
//!
//! Filesystems without `O_DIRECT` (tmpfs) are found by [`supported`] when the log opens;
//! the log then writes through the page cache as before.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};

/// Alignment of direct writes: buffer, file offset and length (the largest logical block
/// size of common devices).
pub(crate) const BLOCK: usize = 4096;
/// Staged bytes are written (as whole blocks) once they reach this: fewer, larger writes
/// cost less system time each (see the module doc). A multiple of [`BLOCK`].
pub(crate) const STAGE_MAX: usize = 1 << 20;
/// Buffers of [`STAGE_MAX`] bytes a stage uses at most: the one being filled, and the
/// others written meanwhile.
pub(crate) const BUFFERS: usize = 4;

/// Opens `path` for direct writes (and reads), creating it if `create`.
pub(crate) fn open(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Whether files in `dir` take direct writes: one aligned block written to a probe file
/// (deleted again). Any error: no.
pub(crate) fn supported(dir: &Path) -> bool {
    let path = dir.join(".direct-probe");
    let _ = std::fs::remove_file(&path);
    let ok = open(&path, true).and_then(|f| {
        let mut buf = Aligned::new(BLOCK);
        buf.block_mut(BLOCK).fill(0);
        f.write_all_at(buf.block_mut(BLOCK), 0)
    });
    let _ = std::fs::remove_file(&path);
    ok.is_ok()
}

/// A zeroed buffer of `len` bytes whose start is aligned to [`BLOCK`] (no unsafe code:
/// a `Vec` a block longer, used from its first aligned byte; never reallocated).
struct Aligned {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let vec = vec![0u8; len + BLOCK];
        let start = vec.as_ptr().align_offset(BLOCK);
        // `align_offset` of a byte pointer to a power of two is always below it.
        let start = if start < BLOCK { start } else { 0 };
        Aligned { vec, start, len }
    }

    /// The first `n` bytes (at most the buffer's length).
    fn block(&self, n: usize) -> &[u8] {
        let n = n.min(self.len);
        &self.vec[self.start..self.start + n]
    }

    /// The first `n` bytes (at most the buffer's length).
    fn block_mut(&mut self, n: usize) -> &mut [u8] {
        let n = n.min(self.len);
        &mut self.vec[self.start..self.start + n]
    }
}

/// A full buffer for the writer thread: written to `file` at `at`.
struct Job {
    file: File,
    buf: Aligned,
    at: u64,
}

/// The writer thread's ends: jobs in, buffers (and how their write went) back.
struct Writer {
    jobs: SyncSender<Job>,
    done: Receiver<(Aligned, io::Result<()>)>,
}

impl Writer {
    fn start() -> Option<Writer> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(BUFFERS);
        let (tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("rr-hlog-write".into())
            .spawn(move || {
                for job in rx {
                    let r = job.file.write_all_at(job.buf.block(STAGE_MAX), job.at);
                    if tx.send((job.buf, r)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "history log: no writer thread"))
            .ok()?;
        Some(Writer { jobs, done })
    }
}

/// The bytes at a file's end not yet written as whole blocks (see the module doc).
#[derive(Default)]
pub(crate) struct DirectStage {
    /// Allocated on first use ([`STAGE_MAX`] bytes).
    buf: Option<Aligned>,
    /// Bytes staged.
    len: usize,
    /// File offset of the first staged byte (a multiple of [`BLOCK`]).
    at: u64,
    /// Buffers back from the writer, to be filled next.
    spare: Vec<Aligned>,
    /// Buffers with the writer.
    inflight: usize,
    /// Started by the first full buffer (`None` after that: it could not be started,
    /// and full buffers are written here).
    writer: Option<Option<Writer>>,
}

impl DirectStage {
    /// Forgets what is staged (once what the writer has is written, however that went):
    /// a new file starts at offset 0.
    pub(crate) fn reset(&mut self) {
        let _ = self.drain();
        self.len = 0;
        self.at = 0;
    }

    /// Buffers held: the one being filled, the writer's, the spare ones (at most
    /// [`BUFFERS`]).
    fn buffers(&self) -> usize {
        usize::from(self.buf.is_some()) + self.inflight + self.spare.len()
    }

    /// Takes back one buffer from the writer (into `spare`), with how its write went.
    fn wait_one(&mut self) -> io::Result<()> {
        let (Some(Some(w)), 1..) = (&self.writer, self.inflight) else {
            self.inflight = 0;
            return Err(io::Error::other("no buffer with the history log writer"));
        };
        let Ok((buf, r)) = w.done.recv() else {
            // The thread is gone, with the buffers it had: full ones are written here
            // from now on.
            self.writer = Some(None);
            self.inflight = 0;
            return Err(io::Error::other("history log writer thread ended"));
        };
        self.inflight -= 1;
        self.spare.push(buf);
        r
    }

    /// Every buffer with the writer written (the first error, if any).
    fn drain(&mut self) -> io::Result<()> {
        let mut r = Ok(());
        while self.inflight > 0 {
            let one = self.wait_one();
            if r.is_ok() {
                r = one;
            }
        }
        r
    }

    /// The full buffer (`len` = [`STAGE_MAX`]) to the writer, and an empty one to fill
    /// (back from the writer, new while fewer than [`BUFFERS`] exist, else the first
    /// one the writer gives back). Without a writer thread, written here.
    fn hand_over(&mut self, f: &File) -> io::Result<()> {
        if self.writer.is_none() {
            self.writer = Some(Writer::start());
        }
        if !matches!(self.writer, Some(Some(_))) {
            return self.write(f, false);
        }
        // Everything that can fail before a buffer moves.
        let file = f.try_clone()?;
        if self.spare.is_empty() && self.buffers() >= BUFFERS {
            self.wait_one()?;
        }
        let next = self.spare.pop().unwrap_or_else(|| Aligned::new(STAGE_MAX));
        let Some(full) = self.buf.replace(next) else {
            // (Not reached: `push` filled the buffer it had.)
            return Ok(());
        };
        let job = Job {
            file,
            buf: full,
            at: self.at,
        };
        let sent = match &self.writer {
            Some(Some(w)) => w.jobs.send(job).map_err(|e| e.0),
            _ => Err(job),
        };
        self.at += STAGE_MAX as u64;
        self.len = 0;
        match sent {
            Ok(()) => {
                self.inflight += 1;
                Ok(())
            }
            Err(job) => {
                // The thread is gone: written here, and from now on.
                self.writer = Some(None);
                let r = job.file.write_all_at(job.buf.block(STAGE_MAX), job.at);
                self.spare.push(job.buf);
                r
            }
        }
    }

    /// Bytes staged (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Stages `bytes` after what is staged, writing whole blocks to `f` each time
    /// [`STAGE_MAX`] are staged.
    pub(crate) fn push(&mut self, f: &File, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let buf = self.buf.get_or_insert_with(|| Aligned::new(STAGE_MAX));
            let n = (STAGE_MAX - self.len).min(bytes.len());
            buf.block_mut(STAGE_MAX)[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len == STAGE_MAX {
                self.hand_over(f)?;
            }
        }
        Ok(())
    }

    /// Writes the whole blocks staged to `f`; with `tail`, the last partial block too,
    /// padded with zeros, which stays staged (the next write writes its block again).
    /// Once it returns, every byte pushed before is written (the writer's buffers too).
    pub(crate) fn write(&mut self, f: &File, tail: bool) -> io::Result<()> {
        self.drain()?;
        let full = self.len / BLOCK * BLOCK;
        let n = if tail {
            self.len.div_ceil(BLOCK) * BLOCK
        } else {
            full
        };
        let Some(buf) = self.buf.as_mut() else {
            return Ok(());
        };
        if n == 0 {
            return Ok(());
        }
        let b = buf.block_mut(STAGE_MAX);
        if tail {
            b[self.len..n].fill(0);
        }
        f.write_all_at(&b[..n], self.at)?;
        if full > 0 {
            b.copy_within(full..self.len, 0);
            self.len -= full;
            self.at += full as u64;
        }
        Ok(())
    }
}

/// A directory whose filesystem takes direct writes (tests): the temporary directory,
/// else one under the build's target directory (/tmp is tmpfs on some machines); `None`
/// (said on stderr) if neither takes them.
#[cfg(test)]
pub(crate) fn direct_dir() -> Option<tempfile::TempDir> {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let d = [std::env::temp_dir(), target]
        .into_iter()
        .filter_map(|p| tempfile::tempdir_in(p).ok())
        .find(|d| supported(d.path()));
    if d.is_none() {
        // The log then writes buffered, which its other tests cover.
        eprintln!("no filesystem with O_DIRECT: skipped");
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_bytes_reach_the_file_in_whole_blocks_and_the_tail_is_written_again_longer() {
        let Some(d) = direct_dir() else {
            return;
        };
        let path = d.path().join("f");
        let f = open(&path, true).unwrap();
        let mut s = DirectStage::default();
        s.push(&f, b"hello").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "nothing written yet"
        );
        s.write(&f, true).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), BLOCK, "the tail padded to a block");
        assert_eq!(&on_disk[..5], b"hello");
        assert!(on_disk[5..].iter().all(|&b| b == 0));
        // More than the stage holds, in one push: whole blocks go out as it fills.
        // Full buffers go to the writer thread, more than it holds at once.
        let big: Vec<u8> = (0..(BUFFERS + 2) * STAGE_MAX + 3 * BLOCK + 7)
            .map(|i| (i % 251) as u8)
            .collect();
        s.push(&f, &big).unwrap();
        assert!(s.len() < STAGE_MAX);
        assert!(s.buffers() <= BUFFERS, "{} buffers", s.buffers());
        s.write(&f, true).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        let logical = 5 + big.len();
        assert_eq!(on_disk.len(), logical.div_ceil(BLOCK) * BLOCK);
        assert_eq!(
            &on_disk[..5],
            b"hello",
            "the first block written again, longer"
        );
        assert_eq!(&on_disk[5..logical], &big[..]);
        assert_eq!(
            s.len(),
            logical % BLOCK,
            "only the partial block stays staged"
        );
        // Whole blocks only: the partial one is not written.
        s.push(&f, b"!").unwrap();
        s.write(&f, false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[logical], 0);
        s.write(&f, true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[logical], b'!');
    }

    /// A write the writer thread could not make is reported by the write that waits for
    /// it, and a reset leaves nothing in flight.
    #[test]
    fn a_failed_write_of_the_writer_thread_is_reported() {
        let Some(d) = direct_dir() else {
            return;
        };
        let path = d.path().join("f");
        drop(open(&path, true).unwrap());
        let read_only = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        let mut s = DirectStage::default();
        s.push(&read_only, &vec![1u8; STAGE_MAX + 1]).unwrap();
        assert_eq!(s.inflight, 1, "handed to the writer");
        assert!(s.write(&read_only, true).is_err());
        s.reset();
        assert_eq!((s.inflight, s.len), (0, 0));
        let f = open(&d.path().join("g"), true).unwrap();
        s.push(&f, b"again").unwrap();
        s.write(&f, true).unwrap();
        assert_eq!(&std::fs::read(d.path().join("g")).unwrap()[..5], b"again");
    }

    #[test]
    fn an_aligned_buffer_starts_on_a_block() {
        for len in [1, BLOCK, STAGE_MAX] {
            let mut b = Aligned::new(len);
            let p = b.block_mut(len).as_ptr();
            assert_eq!(p as usize % BLOCK, 0);
            assert_eq!(b.block_mut(len + 1).len(), len);
        }
    }
}
