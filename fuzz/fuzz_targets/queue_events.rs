//! Arbitrary event scripts against the broker; see `scale0_proto::testkit::queue_events`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scale0_proto::testkit::queue_events(data));
