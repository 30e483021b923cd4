//! The end-to-end benches' shared body (`benches/e2e.rs`, `benches/e2e_inproc.rs`).
//!
//! End to end over loopback: the `ringrouter` binary (release build, 2 shards,
//! threads not pinned) started afresh, with an empty data directory, for every load
//! run as its own process — the same binary and flags `python -m ringrouter.load` and
//! `ringrouter-load` are pointed at, and the fresh router per run `bench/compare.sh`
//! uses: history is on by default, and GBs of it from earlier runs (written back
//! meanwhile) slowed later runs down by up to half —
//! driven by the load engine of `ringrouter-client`. `RINGROUTER_BIN=path` picks the
//! binary; otherwise the bench builds it (`cargo build --release -p ringrouter`).
//! `e2e_inproc` runs the router inside the bench process instead (the bench's
//! threads and the router's then share one address space and allocator).
//!
//! - `e2e/pairs16/64B`, `e2e/pairs16/1KiB`: 16 sender/receiver pairs.
//! - `e2e/fanout64/64B`: one sender, each message to 64 receivers.
//!
//! Each criterion iteration is one load run of `N` deliveries; the time it returns
//! is the engine's own wall time from the first send to the last delivery (connect
//! and login are not counted), so criterion's throughput is delivered msgs/s.
//! Every run must deliver everything (`lost == 0`, nothing out of order).
//!
//! The router's shards and the engine's threads share this machine's cores: on a
//! 2-core machine the figures are router and load generator together.

use std::hint::black_box;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use ringrouter::{Config, Router, RouterHandle};
use ringrouter_client::load::{run, LoadConfig};

static RUN: AtomicU64 = AtomicU64::new(0);

/// The router runs inside this process (`e2e_inproc`), not as the binary.
pub static IN_PROCESS: AtomicBool = AtomicBool::new(false);

/// The benches' group names start with this.
fn prefix() -> &'static str {
    if IN_PROCESS.load(Ordering::Relaxed) {
        "e2e_inproc"
    } else {
        "e2e"
    }
}

/// A running router and its store directory (removed when the router is dropped).
enum Running {
    InProcess(RouterHandle, tempfile::TempDir),
    Process(Child, SocketAddr, tempfile::TempDir),
}

impl Running {
    fn addr(&self) -> SocketAddr {
        match self {
            Running::InProcess(h, _) => h.local_addr(),
            Running::Process(_, a, _) => *a,
        }
    }
}

/// The release `ringrouter` binary: `RINGROUTER_BIN`, else built next to this bench.
fn router_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGROUTER_BIN") {
        return PathBuf::from(p);
    }
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "ringrouter",
            "--bin",
            "ringrouter",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the ringrouter binary failed");
    // This bench runs from target/release/deps/.
    let exe = std::env::current_exe().expect("the bench's own path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/release/deps/<bench>");
    dir.join("ringrouter")
}

fn start_router() -> Running {
    let data = tempfile::tempdir().expect("a store directory");
    if IN_PROCESS.load(Ordering::Relaxed) {
        // The process-wide allocator tuning the `ringrouter` binary applies at start
        // (THP off), so this measures the configuration users run.
        ringrouter::alloc::tune_mimalloc();
        let cfg = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shards: 2,
            pin_threads: false,
            data_dir: data.path().to_path_buf(),
            http_listen: None,
            ..Config::default()
        };
        return Running::InProcess(Router::start(cfg).expect("router starts"), data);
    }
    let bin = router_bin();
    let mut child = Command::new(&bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--no-pin",
            // No HTTP port: a router already on the default one (another bench, a
            // leftover) would make this one exit before its ready line.
            "--http-listen",
            "off",
            "--data-dir",
        ])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let out = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(out);
    reader.read_line(&mut line).expect("the ready line");
    // Keep reading: the router prints more (and a closed pipe would fail its prints).
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let addr = line
        .strip_prefix("ringrouter listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    Running::Process(child, addr, data)
}

/// One scenario: `deliveries` per run, `fanout` receivers per message (None: pairs).
struct Case {
    /// Group name after the bench's prefix.
    group: &'static str,
    name: &'static str,
    pairs: usize,
    fanout: Option<usize>,
    size: usize,
    deliveries: u64,
}

fn load_config(addr: SocketAddr, case: &Case) -> LoadConfig {
    let fan = case.fanout.unwrap_or(1) as u64;
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    LoadConfig {
        addr: addr.to_string(),
        pairs: case.pairs,
        size: case.size,
        messages: Some(case.deliveries / fan),
        duration: None,
        fanout: case.fanout,
        rate: None,
        drain_timeout: Duration::from_secs(5),
        user_prefix: format!("e2e{}-{}-", std::process::id(), run),
        ..LoadConfig::default()
    }
}

/// Runs one scenario: each load run on a router of its own, started (and stopped) outside
/// the time measured.
fn bench_case(c: &mut Criterion, case: &Case) {
    let mut g = c.benchmark_group(format!("{}/{}", prefix(), case.group));
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(case.deliveries));
    g.bench_function(BenchmarkId::from_parameter(case.name), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let router = start_router();
                let cfg = load_config(router.addr(), case);
                let report = run(black_box(&cfg)).expect("load run");
                stop(Some(router));
                assert_eq!(report.lost, 0, "{}: lost deliveries: {report:?}", case.name);
                assert_eq!(report.delivered, case.deliveries);
                assert_eq!(report.out_of_order, 0);
                total += Duration::from_secs_f64(black_box(report.seconds));
            }
            total
        })
    });
    g.finish();
}

fn stop(router: Option<Running>) {
    match router {
        Some(Running::InProcess(r, _data)) => assert!(r.shutdown(), "router shuts down"),
        Some(Running::Process(mut child, _, _data)) => {
            // SIGTERM: a graceful stop.
            // Safety: kill(2) on the child's own pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        None => {}
    }
}

pub fn pairs(c: &mut Criterion) {
    for (size, name, deliveries) in [(64, "64B", 2_000_000), (1024, "1KiB", 1_000_000)] {
        bench_case(
            c,
            &Case {
                group: "pairs16",
                name,
                pairs: 16,
                fanout: None,
                size,
                deliveries,
            },
        );
    }
}

pub fn fanout(c: &mut Criterion) {
    bench_case(
        c,
        &Case {
            group: "fanout64",
            name: "64B",
            pairs: 1,
            fanout: Some(64),
            size: 64,
            deliveries: 64 * 4_000,
        },
    );
}
