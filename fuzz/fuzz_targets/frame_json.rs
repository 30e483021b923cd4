#![no_main]
// The checks are in `ringrouter_proto::fuzzing::check_json` (see its doc).
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringrouter_proto::fuzzing::check_json(data));
