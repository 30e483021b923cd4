//! Harness for the black-box tests: starts the real router binary on a free
//! port, waits for its `listening on` line, and kills it when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringrouter_client::{Client, ClientConfig};

/// Path of the router binary built for these tests: `ringrouter-blackbox`, a
/// build of `router/src/main.rs` that cargo places beside the test executables
/// (`target/<profile>/`, one level above `deps/`).
pub fn router_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("CARGO_BIN_EXE_ringrouter-blackbox") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps/<test>");
    dir.join("ringrouter-blackbox")
}

/// Which I/O driver to force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Whatever the machine supports (io_uring here).
    Default,
    /// `MONOIO_FORCE_LEGACY_DRIVER=1`: epoll.
    Legacy,
}

/// A running router process.
pub struct RouterProc {
    child: Option<Child>,
    /// Address it listens on.
    pub addr: SocketAddr,
    /// The whole `listening on` line.
    pub banner: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl RouterProc {
    /// Starts the router with `args` (plus `--listen 127.0.0.1:0` unless given).
    pub fn start(args: &[&str]) -> RouterProc {
        Self::start_with(args, Driver::Default)
    }

    /// Starts the router with `args` on the given driver.
    pub fn start_with(args: &[&str], driver: Driver) -> RouterProc {
        Self::try_start(args, driver).unwrap_or_else(|e| panic!("router did not start: {e}"))
    }

    /// Starts the router; returns its exit status and stderr if it exits before listening.
    pub fn try_start(args: &[&str], driver: Driver) -> Result<RouterProc, String> {
        let mut cmd = Command::new(router_bin());
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .arg("--no-pin")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        match driver {
            Driver::Legacy => {
                cmd.env("MONOIO_FORCE_LEGACY_DRIVER", "1");
            }
            Driver::Default => {
                cmd.env_remove("MONOIO_FORCE_LEGACY_DRIVER");
            }
        }
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                s.push_str(&line);
                s.push('\n');
            }
            s
        });
        let mut lines = BufReader::new(stdout).lines();
        match lines.next() {
            Some(Ok(line)) if line.starts_with("ringrouter listening on ") => {
                let addr = line["ringrouter listening on ".len()..]
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .parse()
                    .map_err(|e| format!("bad banner {line:?}: {e}"))?;
                // keep draining stdout so the child never blocks on a full pipe
                std::thread::spawn(move || for _ in lines {});
                Ok(RouterProc {
                    child: Some(child),
                    addr,
                    banner: line,
                    stderr: Some(err_thread),
                })
            }
            other => {
                let status = child.wait().map_err(|e| e.to_string())?;
                let err = err_thread.join().unwrap_or_default();
                Err(format!(
                    "exit {status:?}, first line {other:?}, stderr: {err}"
                ))
            }
        }
    }

    /// Connects and logs in as `user`.
    pub fn client(&self, user: &str) -> Client {
        Client::connect(self.addr, ClientConfig::new(user))
            .unwrap_or_else(|e| panic!("login {user}: {e}"))
    }

    /// Connects with a custom config.
    pub fn client_with(&self, cfg: ClientConfig) -> Result<Client, ringrouter_client::ClientError> {
        Client::connect(self.addr, cfg)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns the exit code and stderr.
    pub fn terminate(mut self, timeout: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("child present until terminate");
        // Safety: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break st.code();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let err = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (code, err)
    }
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Finds `n` user names whose home shards, for `shards` shards, are all different
/// from each other where possible (`prefix0`, ...), so tests cross shards for sure.
pub fn users_on_shards(prefix: &str, shards: usize) -> Vec<String> {
    (0..shards)
        .map(|target| {
            (0..)
                .map(|i| format!("{prefix}{i}"))
                .find(|u| ringrouter::shard::home_shard(u.as_bytes(), shards) == target)
                .expect("some name lands on every shard")
        })
        .collect()
}
