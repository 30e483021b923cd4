//! ringrouter benchmarks. The load generator lives in `src/bin/ringrouter-load.rs`,
//! the criterion suite in `benches/`.
