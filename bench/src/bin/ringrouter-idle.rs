//! Idle-session memory: opens N logged-in sessions (distinct users, so no
//! per-user session limit applies) on a router, waits until every LoginResult is
//! in, lets the router settle, and reports its resident memory before and after,
//! per session: VmRSS from /proc/PID/status, Rss / Pss_Anon / Anonymous from
//! /proc/PID/smaps_rollup.
//!
//! ```text
//! ringrouter-idle --router target/release/ringrouter --sessions 10000 --shards 2 [--legacy]
//! ringrouter-idle --addr 127.0.0.1:7878 --pid 1234 --sessions 2000   # a router started elsewhere
//! ```
//! It raises its own RLIMIT_NOFILE to the hard limit (a router it starts inherits
//! it): N sessions need N descriptors on each side. `--hold SECS` keeps the
//! sessions open after the report (for a heap profiler attached to the router).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Parser;
use ringrouter_proto::codec::{decode_server, encode_frame, next_frame};
use ringrouter_proto::v1::{client_frame, server_frame, ClientFrame, Login};
use ringrouter_proto::Status;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "ringrouter-idle", version)]
struct Args {
    /// Router binary to start (ignored with --addr).
    #[arg(long, default_value = "target/release/ringrouter")]
    router: String,
    /// Measure a router already running at this address (needs --pid).
    #[arg(long, requires = "pid")]
    addr: Option<SocketAddr>,
    /// Process id of the router given by --addr.
    #[arg(long)]
    pid: Option<u32>,
    /// Sessions to open.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Shards of the router started here.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Start the router on the epoll driver (MONOIO_FORCE_LEGACY_DRIVER=1).
    #[arg(long)]
    legacy: bool,
    /// Client threads opening sessions.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Seconds to wait before each measurement.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Extra router arguments (repeatable), e.g. --arg=--heartbeat-interval=5s.
    #[arg(long = "arg", allow_hyphen_values = true)]
    router_args: Vec<String>,
    /// Keep the sessions open this many seconds after the report.
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Let the router started here log to this stderr.
    #[arg(long)]
    verbose: bool,
    /// Prefix of the user names (unique per run by default).
    #[arg(long)]
    user_prefix: Option<String>,
}

/// Memory of a process, KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    vm_rss: u64,
    rss: u64,
    pss_anon: u64,
    anonymous: u64,
}

fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mem(pid: u32) -> Mem {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Mem {
        vm_rss: field(&status, "VmRSS:"),
        rss: field(&rollup, "Rss:"),
        pss_anon: field(&rollup, "Pss_Anon:"),
        anonymous: field(&rollup, "Anonymous:"),
    }
}

fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit/setrlimit fill and read a plain struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// The router this tool started: stopped (SIGTERM, then reaped) when dropped, on
/// every exit path.
struct Started {
    child: Child,
    addr: SocketAddr,
    _data: DataDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        // Safety: a signal to the child this process started (not yet reaped).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A store directory removed at exit.
struct DataDir(std::path::PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_router(a: &Args) -> Result<Started, String> {
    let dir = std::env::temp_dir().join(format!("ringrouter-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("data dir: {e}"))?;
    let data = DataDir(dir.clone());
    let mut cmd = Command::new(&a.router);
    cmd.args(["--listen", "127.0.0.1:0", "--no-pin"])
        .arg("--shards")
        .arg(a.shards.to_string())
        .arg("--max-connections")
        .arg((a.sessions + 1000).to_string())
        .arg("--data-dir")
        .arg(&dir)
        .args(&a.router_args)
        .stdout(Stdio::piped())
        .stderr(if a.verbose {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stdin(Stdio::null());
    if a.legacy {
        cmd.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
    } else {
        cmd.env_remove("MONOIO_FORCE_LEGACY_DRIVER");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", a.router))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    // The banner line, byte by byte (the rest of stdout is drained on a thread).
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).map_err(|e| e.to_string())? == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let line = String::from_utf8_lossy(&line).into_owned();
    let addr = line
        .strip_prefix("ringrouter listening on ")
        .and_then(|r| r.split(' ').next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("unexpected banner {line:?}"))?;
    Ok(Started {
        child,
        addr,
        _data: data,
    })
}

/// Opens `users` sessions and reads each LoginResult; returns the open sockets.
fn open_sessions(addr: SocketAddr, users: Vec<String>) -> Result<Vec<TcpStream>, String> {
    let mut socks = Vec::with_capacity(users.len());
    // Logins pipelined over a window of connections, then their answers read.
    for window in users.chunks(64) {
        let mut opened = Vec::with_capacity(window.len());
        for user in window {
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut out = BytesMut::new();
            let f = ClientFrame {
                kind: Some(client_frame::Kind::Login(Login {
                    request_id: 1,
                    user: user.clone(),
                    device: "idle".into(),
                    ..Default::default()
                })),
            };
            encode_frame(&f, &mut out);
            s.write_all(&out).map_err(|e| format!("login write: {e}"))?;
            opened.push(s);
        }
        for mut s in opened {
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            let mut buf = BytesMut::new();
            let mut scratch = [0u8; 4096];
            loop {
                if let Some(body) = next_frame(&mut buf, 1 << 20).map_err(|e| e.to_string())? {
                    let f = decode_server(body).map_err(|e| e.to_string())?;
                    match f.kind {
                        Some(server_frame::Kind::LoginResult(r))
                            if r.status == Status::Ok as i32 =>
                        {
                            break
                        }
                        Some(server_frame::Kind::LoginResult(r)) => {
                            return Err(format!("login refused: {} {}", r.status, r.reason))
                        }
                        _ => continue,
                    }
                }
                let n = s
                    .read(&mut scratch)
                    .map_err(|e| format!("login read: {e}"))?;
                if n == 0 {
                    return Err("closed before LoginResult".into());
                }
                buf.extend_from_slice(&scratch[..n]);
            }
            socks.push(s);
        }
    }
    Ok(socks)
}

fn main() {
    let a = Args::parse();
    if let Err(e) = run(&a) {
        eprintln!("ringrouter-idle: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<(), String> {
    let nofile = raise_nofile();
    if (a.sessions as u64) + 64 > nofile {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile}: too low for {} sessions (each side holds one descriptor a session)",
            a.sessions
        ));
    }
    let mut started = None;
    let (addr, pid) = match (a.addr, a.pid) {
        (Some(addr), Some(pid)) => (addr, pid),
        _ => {
            let s = start_router(a)?;
            let r = (s.addr, s.child.id());
            started = Some(s);
            r
        }
    };
    let prefix = a
        .user_prefix
        .clone()
        .unwrap_or_else(|| format!("idle{}x", std::process::id()));
    std::thread::sleep(Duration::from_secs(a.settle));
    let before = mem(pid);
    let t0 = Instant::now();
    let threads = a.threads.max(1);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let users: Vec<String> = (t..a.sessions)
                .step_by(threads)
                .map(|i| format!("{prefix}{i}"))
                .collect();
            std::thread::spawn(move || open_sessions(addr, users))
        })
        .collect();
    let mut socks = Vec::with_capacity(a.sessions);
    for h in handles {
        socks.extend(h.join().map_err(|_| "client thread panicked")??);
    }
    let login_time = t0.elapsed();
    std::thread::sleep(Duration::from_secs(a.settle));
    let after = mem(pid);
    let n = socks.len() as f64;
    let per = |b: u64, a: u64| (a as f64 - b as f64) / n;
    println!(
        "driver={} shards={} sessions={} logins_s={:.2}",
        if a.legacy { "epoll" } else { "io_uring" },
        a.shards,
        socks.len(),
        login_time.as_secs_f64()
    );
    for (name, b, af) in [
        ("VmRSS", before.vm_rss, after.vm_rss),
        ("Rss", before.rss, after.rss),
        ("Pss_Anon", before.pss_anon, after.pss_anon),
        ("Anonymous", before.anonymous, after.anonymous),
    ] {
        println!(
            "{name:<10} before {b:>8} KiB  after {af:>8} KiB  per session {:>6.2} KiB",
            per(b, af)
        );
    }
    if a.hold > 0 {
        std::thread::sleep(Duration::from_secs(a.hold));
    }
    drop(socks);
    drop(started);
    Ok(())
}
