//! Replays the committed fuzz corpus through the fuzz targets' own code, so an ordinary
//! `cargo test` exercises every input the fuzzer found interesting; adds random inputs.

use proptest::prelude::*;
use scale0_proto::testkit;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(
        n >= 10,
        "expected a corpus in {}, found {n} inputs",
        dir.display()
    );
}

#[test]
fn decode_corpus() {
    replay("decode", testkit::decode);
}

#[test]
fn broker_events_corpus() {
    replay("broker_events", testkit::broker_events);
}

#[test]
fn queue_events_corpus() {
    replay("queue_events", testkit::queue_events);
}

#[test]
fn map_events_corpus() {
    replay("map_events", testkit::map_events);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_event_scripts_keep_the_broker_consistent(data in prop::collection::vec(any::<u8>(), 0..600)) {
        testkit::broker_events(&data);
    }

    #[test]
    fn random_event_scripts_keep_the_queue_accounted(data in prop::collection::vec(any::<u8>(), 0..400)) {
        testkit::queue_events(&data);
    }

    #[test]
    fn random_event_scripts_end_every_map_job_once(data in prop::collection::vec(any::<u8>(), 0..400)) {
        testkit::map_events(&data);
    }

    #[test]
    fn random_frames_never_panic_the_decoder(data in prop::collection::vec(any::<u8>(), 0..200)) {
        testkit::decode(&data);
    }
}
