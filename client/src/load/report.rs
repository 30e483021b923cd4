//! What a run measured ([`LoadReport`]) and how it is computed from the
//! receivers' results.

use std::time::Instant;

use hdrhistogram::Histogram;

use super::engine::RecvResult;

/// What a run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// Deliveries expected (messages x recipients).
    pub sent: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// `sent - delivered`.
    pub lost: u64,
    /// Deliveries out of order or duplicated.
    pub out_of_order: u64,
    /// Wall time from first send to last delivery.
    pub seconds: f64,
    /// Delivered messages per second.
    pub msgs_per_sec: f64,
    /// Delivered payload MB (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// One-way latency percentiles, µs.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Max latency.
    pub max_us: f64,
    /// Receivers.
    pub receivers: usize,
    /// Slowest receiver, msgs/s.
    pub receiver_min_msgs_per_sec: f64,
    /// Mean over receivers, msgs/s.
    pub receiver_avg_msgs_per_sec: f64,
    /// Fastest receiver, msgs/s.
    pub receiver_max_msgs_per_sec: f64,
    /// CPU seconds the engine's process used (user + system) during the run.
    pub engine_cpu_seconds: f64,
    /// The same: the load generator's CPU seconds (user + system, getrusage
    /// RUSAGE_SELF) from the start of sending to the last delivery.
    pub client_cpu_s: f64,
    /// (seconds since start, deliveries so far), sampled every 100 ms.
    pub timeline: Vec<(f64, u64)>,
    /// (latency µs upper bound, count) buckets of the latency histogram.
    pub latency_buckets: Vec<(f64, u64)>,
    /// With `server_pid` set: the server process's CPU seconds (utime + stime of
    /// all its threads, /proc/PID/stat) over the span of `client_cpu_s`, logins and room
    /// joins before it left out. `null` without `server_pid` or off Linux.
    pub server_cpu_s: Option<f64>,
    /// Why the run failed (a connection the router ended, say); only in a failed run's
    /// report, whose counts are those up to the failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The raw results of a run.
pub(super) struct Measured {
    /// Deliveries expected (messages sent x recipients).
    pub(super) sent: u64,
    pub(super) results: Vec<RecvResult>,
    pub(super) hist: Histogram<u64>,
    pub(super) start: Instant,
    pub(super) timeline: Vec<(f64, u64)>,
    pub(super) cpu: Cpu,
    pub(super) size: usize,
}

/// CPU seconds over the measured span: this process's, and the server's when its pid
/// was given.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Cpu {
    pub(super) client: f64,
    pub(super) server: Option<f64>,
}

impl Cpu {
    /// A reading now.
    pub(super) fn now(server_pid: Option<u32>) -> Cpu {
        Cpu {
            client: cpu_seconds(),
            server: server_pid.and_then(process_cpu_seconds),
        }
    }

    /// What was used from `self` to `later`.
    pub(super) fn until(self, later: Cpu) -> Cpu {
        Cpu {
            client: later.client - self.client,
            server: match (self.server, later.server) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
        }
    }
}

impl Measured {
    /// The report.
    pub(super) fn report(self) -> LoadReport {
        let Measured {
            sent,
            results,
            hist,
            start,
            mut timeline,
            cpu,
            size,
        } = self;
        let delivered: u64 = results.iter().map(|r| r.delivered).sum();
        let out_of_order: u64 = results.iter().map(|r| r.out_of_order).sum();
        let end = results.iter().filter_map(|r| r.last).max().unwrap_or(start);
        let seconds = end.duration_since(start).as_secs_f64().max(1e-9);
        let rates: Vec<f64> = results
            .iter()
            .map(|r| {
                r.last.map_or(0.0, |l| {
                    r.delivered as f64 / l.duration_since(start).as_secs_f64().max(1e-9)
                })
            })
            .collect();
        let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
        // The run ends at the last delivery; a sample the monitor took after it (it
        // wakes every 100 ms) would put the end point out of time order.
        timeline.retain(|&(t, _)| t < seconds);
        timeline.push((seconds, delivered));
        LoadReport {
            sent,
            delivered,
            lost: sent.saturating_sub(delivered),
            out_of_order,
            seconds,
            msgs_per_sec: delivered as f64 / seconds,
            mb_per_sec: delivered as f64 * size as f64 / 1e6 / seconds,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: hist.max() as f64 / 1000.0,
            receivers: results.len(),
            receiver_min_msgs_per_sec: rates
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
                .min(f64::MAX),
            receiver_avg_msgs_per_sec: rates.iter().sum::<f64>() / rates.len().max(1) as f64,
            receiver_max_msgs_per_sec: rates.iter().copied().fold(0.0, f64::max),
            engine_cpu_seconds: cpu.client,
            client_cpu_s: cpu.client,
            timeline,
            latency_buckets: latency_buckets(&hist),
            server_cpu_s: cpu.server,
            error: None,
        }
    }
}

/// (latency µs upper bound, count) buckets of `hist`, log-spaced.
fn latency_buckets(hist: &Histogram<u64>) -> Vec<(f64, u64)> {
    let mut buckets = Vec::new();
    if !hist.is_empty() {
        for v in hist.iter_log(1000, 1.5) {
            if v.count_since_last_iteration() > 0 {
                buckets.push((
                    v.value_iterated_to() as f64 / 1000.0,
                    v.count_since_last_iteration(),
                ));
            }
        }
    }
    buckets
}

impl LoadReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A human-readable table (the shape `nats bench` prints).
    pub fn table(&self) -> String {
        format!(
            "delivered {} of {} (lost {}, out of order {}) in {:.3} s\n\
             {:>12.0} msgs/s  {:>9.2} MB/s\n\
             latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n\
             receivers {}: min {:.0}  avg {:.0}  max {:.0} msgs/s\n\
             engine CPU {:.2} s (router and engine share this machine's cores){}",
            self.delivered,
            self.sent,
            self.lost,
            self.out_of_order,
            self.seconds,
            self.msgs_per_sec,
            self.mb_per_sec,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.receivers,
            self.receiver_min_msgs_per_sec,
            self.receiver_avg_msgs_per_sec,
            self.receiver_max_msgs_per_sec,
            self.engine_cpu_seconds,
            self.server_cpu_s
                .map(|s| format!("\nserver CPU {s:.2} s over the same span"))
                .unwrap_or_default(),
        )
    }
}

/// CPU seconds this process used so far (user + system).
fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // Safety: getrusage writes into the struct we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU seconds process `pid` used so far (user + system, all threads), from
/// /proc/PID/stat; None if it cannot be read.
pub(super) fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_ticks(&stat).map(|t| t as f64 / clock_ticks_per_second())
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line. The name (field 2)
/// may hold spaces and parentheses: fields are counted after its last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // Safety: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end point is the last delivery: a monitor sample taken after it is dropped,
    /// so the timeline is in time order.
    #[test]
    fn the_timeline_ends_at_the_last_delivery_in_time_order() {
        let start = Instant::now();
        let last = start + std::time::Duration::from_millis(1001);
        let r = Measured {
            sent: 10,
            results: vec![super::super::engine::RecvResult {
                delivered: 10,
                out_of_order: 0,
                last: Some(last),
            }],
            hist: super::super::engine::new_hist(),
            start,
            timeline: vec![(0.5, 4), (1.0, 9), (1.0035, 10)],
            cpu: Cpu::default(),
            size: 64,
        }
        .report();
        let times: Vec<f64> = r.timeline.iter().map(|&(t, _)| t).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert_eq!(r.timeline.last(), Some(&(1.001, 10)));
        assert_eq!(r.timeline.len(), 3);
    }

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1234 567 0 0 20 0 3 0 100 1000 10";
        assert_eq!(stat_cpu_ticks(line), Some(1234 + 567));
        assert_eq!(stat_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn this_process_has_a_cpu_reading_that_grows() {
        let pid = std::process::id();
        let a = process_cpu_seconds(pid).expect("our own /proc/PID/stat reads");
        // Spin until getrusage has seen 50 ms of CPU (on a loaded host that takes longer
        // than 50 ms of wall time): /proc's ticks are at most 10 ms apart.
        let (mut x, c0) = (0u64, cpu_seconds());
        let t = std::time::Instant::now();
        while cpu_seconds() - c0 < 0.05 && t.elapsed() < std::time::Duration::from_secs(10) {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let b = process_cpu_seconds(pid).expect("our own /proc/PID/stat reads");
        assert!(b > a, "{a} -> {b} after 50 ms of CPU");
        assert_eq!(process_cpu_seconds(u32::MAX), None);
    }
}
