//! The log store on real files: what is committed survives, what is not is gone, damage is
//! handled as documented, and compaction keeps disk use proportional to what is live.

use bytes::Bytes;
use proptest::prelude::*;
use scale0_store::{LogOptions, LogStore, MemoryStore, OpenError, Store};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

fn open(dir: &Path) -> LogStore {
    LogStore::open(dir, LogOptions::default()).unwrap().0
}

fn small(dir: &Path) -> LogStore {
    let options = LogOptions {
        segment_bytes: 4096,
        ..LogOptions::default()
    };
    LogStore::open(dir, options).unwrap().0
}

fn value(key: u64) -> Vec<u8> {
    format!("request body number {key}").into_bytes()
}

fn keys(store: &mut LogStore) -> Vec<u64> {
    store.load().unwrap().into_iter().map(|(k, _)| k).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    out.sort();
    out
}

/// The newest segment holding records (the newest file is the fresh, empty one).
fn last_written(dir: &Path) -> PathBuf {
    segments(dir)
        .into_iter()
        .rev()
        .find(|p| fs::metadata(p).unwrap().len() > 8)
        .unwrap()
}

#[test]
fn committed_entries_survive_and_uncommitted_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        assert!(s.load().unwrap().is_empty());
        for k in 1..=5 {
            s.put(k, &value(k)).unwrap();
        }
        s.delete(2).unwrap();
        s.commit().unwrap();
        s.put(6, &value(6)).unwrap();
        s.delete(1).unwrap();
        // Dropped without a commit, as by kill -9.
    }
    let mut s = open(dir.path());
    let loaded = s.load().unwrap();
    assert_eq!(
        loaded,
        [1, 3, 4, 5]
            .into_iter()
            .map(|k| (k, Bytes::from(value(k))))
            .collect::<Vec<_>>()
    );
    assert_eq!(s.stats().syncs, 0, "opening writes nothing to commit");
}

#[test]
fn restarts_that_write_nothing_leave_no_segments_behind() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        s.put(1, &value(1)).unwrap();
        s.commit().unwrap();
    }
    for _ in 0..5 {
        drop(open(dir.path()));
    }
    assert_eq!(
        segments(dir.path()).len(),
        2,
        "the one with data and the fresh one"
    );
    assert_eq!(keys(&mut open(dir.path())), vec![1]);
}

#[test]
fn one_commit_is_one_sync_however_many_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    for k in 1..=1000 {
        s.put(k, &value(k)).unwrap();
    }
    s.commit().unwrap();
    s.commit().unwrap();
    assert_eq!(s.stats().syncs, 1, "an empty commit does not sync");
}

#[test]
fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    match LogStore::open(dir.path(), LogOptions::default()) {
        Err(OpenError::Locked(p)) => assert_eq!(p, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}

fn write_ten(dir: &Path) {
    let mut s = open(dir);
    for k in 1..=10 {
        s.put(k, &value(k)).unwrap();
        s.commit().unwrap();
    }
}

#[test]
fn a_torn_tail_is_cut_off_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    write_ten(dir.path());
    let seg = last_written(dir.path());
    let len = fs::metadata(&seg).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);

    let (mut s, report) = LogStore::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(keys(&mut s), (1..=9).collect::<Vec<_>>());
    assert!(report.torn_bytes > 0);
    assert!(report.skipped.is_empty());
    drop(s);
    // The cut is made on disk: the next open finds a clean log.
    let (mut s, report) = LogStore::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(report.torn_bytes, 0);
    assert_eq!(keys(&mut s), (1..=9).collect::<Vec<_>>());
}

#[test]
fn damage_in_the_middle_is_reported_and_only_skipped_on_request() {
    let dir = tempfile::tempdir().unwrap();
    write_ten(dir.path());
    let seg = last_written(dir.path());
    let mut data = fs::read(&seg).unwrap();
    // Flip one bit in the value of the fifth record (records are the same size).
    let record = (data.len() - 8) / 10;
    let at = 8 + 4 * record + record - 3;
    data[at] ^= 0x10;
    fs::write(&seg, &data).unwrap();

    match LogStore::open(dir.path(), LogOptions::default()) {
        Err(OpenError::Corrupt { file, offset }) => {
            assert_eq!(file, seg);
            assert_eq!(offset, (8 + 4 * record) as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let repair = LogOptions {
        repair: true,
        ..LogOptions::default()
    };
    let (mut s, report) = LogStore::open(dir.path(), repair).unwrap();
    assert_eq!(keys(&mut s), vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
    assert_eq!(
        report.skipped,
        vec![(seg, (8 + 4 * record) as u64, record as u64)]
    );
}

#[test]
fn a_damaged_last_record_reads_as_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_ten(dir.path());
    let seg = last_written(dir.path());
    let mut data = fs::read(&seg).unwrap();
    let n = data.len();
    data[n - 2] ^= 0x01;
    fs::write(&seg, &data).unwrap();
    let (mut s, report) = LogStore::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(keys(&mut s), (1..=9).collect::<Vec<_>>());
    assert!(report.torn_bytes > 0);
}

#[test]
fn damage_in_an_older_segment_is_never_taken_for_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_ten(dir.path());
    let seg = last_written(dir.path());
    // A later run writes another segment after it.
    {
        let mut s = open(dir.path());
        s.put(11, &value(11)).unwrap();
        s.commit().unwrap();
    }
    let mut data = fs::read(&seg).unwrap();
    let n = data.len();
    data[n - 2] ^= 0x01;
    fs::write(&seg, &data).unwrap();
    assert!(matches!(
        LogStore::open(dir.path(), LogOptions::default()),
        Err(OpenError::Corrupt { .. })
    ));
}

#[test]
fn compaction_keeps_disk_use_bounded_by_what_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = small(dir.path());
    // A request that stays pending the whole time, among a churn of short-lived ones.
    s.put(0, &value(0)).unwrap();
    s.commit().unwrap();
    let mut max_files = 0;
    for k in 1..=20_000u64 {
        s.put(k, &value(k)).unwrap();
        if k > 8 {
            s.delete(k - 8).unwrap();
        }
        if k % 16 == 0 {
            s.commit().unwrap();
            max_files = max_files.max(s.file_bytes());
        }
    }
    s.commit().unwrap();
    let live = s.live_bytes();
    assert!(
        max_files <= 2 * live + 3 * 4096,
        "files reached {max_files} bytes for {live} live bytes"
    );
    assert!(s.stats().segments_removed > 100);
    assert!(
        s.stats().relocated > 0,
        "the long-lived request was copied forward"
    );
    assert!(segments(dir.path()).len() <= 4);
    drop(s);
    let mut s = small(dir.path());
    let mut expected = vec![0];
    expected.extend(20_000 - 7..=20_000);
    assert_eq!(keys(&mut s), expected);
}

#[test]
fn a_hundred_thousand_pending_requests_are_read_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        for k in 1..=100_000u64 {
            s.put(k, &value(k)).unwrap();
            if k % 1000 == 0 {
                s.commit().unwrap();
            }
        }
    }
    let (mut s, report) = LogStore::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(report.live, 100_000);
    let loaded = s.load().unwrap();
    assert_eq!(loaded.len(), 100_000);
    assert_eq!(loaded[99_999], (100_000, Bytes::from(value(100_000))));
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    Commit,
    /// Drop without commit and open again.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(k, n)| Op::Put(k, n)),
        3 => any::<u8>().prop_map(Op::Delete),
        2 => Just(Op::Commit),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The log behaves like the in-memory model through commits, crashes and compaction.
    #[test]
    fn the_log_matches_the_model(ops in prop::collection::vec(op(), 1..300)) {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions { segment_bytes: 512, repair: false };
        let mut log = LogStore::open(dir.path(), options.clone()).unwrap().0;
        let mut model = MemoryStore::new();
        log.load().unwrap();
        for op in ops {
            match op {
                Op::Put(k, n) => {
                    let v = vec![k; usize::from(n)];
                    log.put(u64::from(k), &v).unwrap();
                    model.put(u64::from(k), &v).unwrap();
                }
                Op::Delete(k) => {
                    log.delete(u64::from(k)).unwrap();
                    model.delete(u64::from(k)).unwrap();
                }
                Op::Commit => {
                    log.commit().unwrap();
                    model.commit().unwrap();
                }
                Op::Crash => {
                    drop(log);
                    model.crash();
                    log = LogStore::open(dir.path(), options.clone()).unwrap().0;
                    let got: BTreeMap<u64, Bytes> = log.load().unwrap().into_iter().collect();
                    let want: BTreeMap<u64, Bytes> = model.load().unwrap().into_iter().collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
