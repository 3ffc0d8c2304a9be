//! Every decoder of the core on arbitrary input; see `scale0_proto::testkit::decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scale0_proto::testkit::decode(data));
