//! ringrouter benchmarks. The load generator lives in `src/bin/ringrouter-load.rs`, the
//! soak driver in `src/bin/ringrouter-soak/` (run by `scripts/soak.sh`), the latency
//! binaries (`ringrouter-drain`, `-history`, `-social`) beside it, sharing [`percentiles`];
//! the criterion suite in `benches/`.

use std::time::Duration;

use ringrouter_client::ClientConfig;

/// The client configuration of the latency binaries: `user`, a request `timeout`, and a
/// cumulative Ack every `ack_every` messages.
pub fn client_config(user: &str, timeout: Duration, ack_every: u64) -> ClientConfig {
    let mut c = ClientConfig::new(user);
    c.timeout = timeout;
    c.ack_every = ack_every;
    c
}

/// (p50, p99, max) of `v` in µs (`v` not empty): what the latency binaries print.
pub fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99), at(1.0))
}
