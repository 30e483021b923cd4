#![no_main]
// The checks are in `ringrouter::fuzzing::check_ws_layers` (see its doc).
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringrouter::fuzzing::check_ws_layers(data));
