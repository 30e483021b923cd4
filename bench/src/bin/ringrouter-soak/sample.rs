//! The router's RSS and open fds, sampled into a CSV.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use crate::shared::Shared;

/// One CSV row.
#[derive(Debug, Clone)]
pub struct Row {
    pub time_s: f64,
    pub rss_kib: u64,
    /// Of the RSS: anonymous memory (heap) and file-backed pages.
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub fds: u64,
    /// Of the fds: sockets, and files under the router's data dir.
    pub sockets: u64,
    pub store_fds: u64,
    pub sent: u64,
    pub delivered: u64,
    /// baseline, load, load-end, drain, settled.
    pub phase: &'static str,
}

/// What a sample of the router holds.
#[derive(Debug, Clone, Copy)]
pub struct Proc {
    pub rss_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub fds: u64,
    pub sockets: u64,
    pub store_fds: u64,
}

/// VmRSS (KiB) and the open fds of `pid` (with `data_dir`: which are its store's files).
pub fn proc_sample(pid: u32, data_dir: Option<&Path>) -> Option<Proc> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let rss = kib("VmRSS:")?;
    let (mut fds, mut sockets, mut store_fds) = (0, 0, 0);
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.to_string_lossy().starts_with("socket:") {
            sockets += 1;
        } else if data_dir.is_some_and(|d| target.starts_with(d)) {
            store_fds += 1;
        }
    }
    Some(Proc {
        rss_kib: rss,
        rss_anon_kib: kib("RssAnon:").unwrap_or(0),
        rss_file_kib: kib("RssFile:").unwrap_or(0),
        fds,
        sockets,
        store_fds,
    })
}

/// The CSV file and the rows written so far.
#[derive(Debug)]
pub struct Samples {
    pid: Option<u32>,
    data_dir: Option<PathBuf>,
    inner: Mutex<(Option<BufWriter<File>>, Vec<Row>)>,
}

impl Samples {
    pub fn create(
        path: &Path,
        pid: Option<u32>,
        data_dir: Option<&Path>,
    ) -> std::io::Result<Samples> {
        let mut f = BufWriter::new(File::create(path)?);
        writeln!(
            f,
            "time_s,rss_kib,fds,sent,delivered,rss_anon_kib,rss_file_kib,sockets,store_fds,phase"
        )?;
        f.flush()?;
        // /proc shows the fds' targets as absolute paths.
        let data_dir = data_dir.map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_owned()));
        Ok(Samples {
            pid,
            data_dir,
            inner: Mutex::new((Some(f), Vec::new())),
        })
    }

    /// Samples the router now and appends a row (nothing without a pid, or
    /// once the process is gone).
    pub fn take(&self, sh: &Shared, phase: &'static str) -> Option<Row> {
        self.take_at(
            sh.secs(),
            sh.sent.load(Relaxed),
            sh.delivered.load(Relaxed),
            phase,
        )
    }

    /// [`Samples::take`] with the figures given.
    pub fn take_at(
        &self,
        time_s: f64,
        sent: u64,
        delivered: u64,
        phase: &'static str,
    ) -> Option<Row> {
        let p = proc_sample(self.pid?, self.data_dir.as_deref())?;
        let row = Row {
            time_s,
            rss_kib: p.rss_kib,
            rss_anon_kib: p.rss_anon_kib,
            rss_file_kib: p.rss_file_kib,
            fds: p.fds,
            sockets: p.sockets,
            store_fds: p.store_fds,
            sent,
            delivered,
            phase,
        };
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = g.0.as_mut() {
            let _ = writeln!(
                f,
                "{:.1},{},{},{},{},{},{},{},{},{}",
                row.time_s,
                row.rss_kib,
                row.fds,
                row.sent,
                row.delivered,
                row.rss_anon_kib,
                row.rss_file_kib,
                row.sockets,
                row.store_fds,
                row.phase
            );
            let _ = f.flush();
        }
        g.1.push(row.clone());
        Some(row)
    }

    pub fn rows(&self) -> Vec<Row> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
}
