//! End to end over loopback: a router started in-process (2 shards, threads not
//! pinned) once per group, driven by the load engine of `ringrouter-client`.
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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use ringrouter::{Config, Router, RouterHandle};
use ringrouter_client::load::{run, LoadConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

static RUN: AtomicU64 = AtomicU64::new(0);

/// A router and its store directory (removed when the router is dropped).
type Running = (RouterHandle, tempfile::TempDir);

fn start_router() -> Running {
    // The process-wide allocator tuning the `ringrouter` binary applies at start (THP off),
    // so this measures the configuration users run.
    ringrouter::alloc::tune_mimalloc();
    let data = tempfile::tempdir().expect("a store directory");
    let cfg = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shards: 2,
        pin_threads: false,
        http_listen: None,
        data_dir: data.path().to_path_buf(),
        ..Config::default()
    };
    (Router::start(cfg).expect("router starts"), data)
}

/// One scenario: `deliveries` per run, `fanout` receivers per message (None: pairs).
struct Case {
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

/// Runs one scenario; the router is started on first use (not when filtered out or listing).
fn bench_case(c: &mut Criterion, router: &mut Option<Running>, case: &Case) {
    let mut g = c.benchmark_group(case.group);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(case.deliveries));
    g.bench_function(BenchmarkId::from_parameter(case.name), |b| {
        let addr = router.get_or_insert_with(start_router).0.local_addr();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let cfg = load_config(addr, case);
                let report = run(black_box(&cfg)).expect("load run");
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
    if let Some((r, _data)) = router {
        assert!(r.shutdown(), "router shuts down");
    }
}

fn pairs(c: &mut Criterion) {
    let mut router = None;
    for (size, name, deliveries) in [(64, "64B", 2_000_000), (1024, "1KiB", 1_000_000)] {
        bench_case(
            c,
            &mut router,
            &Case {
                group: "e2e/pairs16",
                name,
                pairs: 16,
                fanout: None,
                size,
                deliveries,
            },
        );
    }
    stop(router);
}

fn fanout(c: &mut Criterion) {
    let mut router = None;
    bench_case(
        c,
        &mut router,
        &Case {
            group: "e2e/fanout64",
            name: "64B",
            pairs: 1,
            fanout: Some(64),
            size: 64,
            deliveries: 64 * 4_000,
        },
    );
    stop(router);
}

criterion_group!(benches, pairs, fanout);
criterion_main!(benches);
