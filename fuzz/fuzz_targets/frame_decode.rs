#![no_main]
// The checks are in `ringrouter_proto::fuzzing::check_frame` (see its doc).
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringrouter_proto::fuzzing::check_frame(data));
