//! ringrouter benchmarks. The load generator lives in `src/bin/ringrouter-load.rs`, the
//! soak driver in `src/bin/ringrouter-soak/` (run by `scripts/soak.sh`),
//! the criterion suite in `benches/`.
