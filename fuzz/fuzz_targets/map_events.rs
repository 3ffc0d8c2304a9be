//! Arbitrary event scripts against the parallel map; see `scale0_proto::testkit::map_events`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scale0_proto::testkit::map_events(data));
