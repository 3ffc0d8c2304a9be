//! The Rust API of the parallel map: a Map with in-process workers and one connected
//! from outside, on loopback.

use bytes::Bytes;
use scale0::proto::pipeline::{self, Outcome};
use scale0::{Map, MapConfig, Shutdown, Source, Task, TaskWorker, TaskWorkerConfig};
use std::sync::Arc;

fn loopback(core: pipeline::MapConfig) -> MapConfig {
    MapConfig {
        vent: vec!["tcp://127.0.0.1:*".into()],
        sink: vec!["tcp://127.0.0.1:*".into()],
        core,
        ..MapConfig::default()
    }
}

fn shout(payload: &[u8]) -> Result<Bytes, String> {
    if payload.starts_with(b"bad") {
        return Err(format!("refused {}", String::from_utf8_lossy(payload)));
    }
    Ok(Bytes::from(payload.to_ascii_uppercase()))
}

#[test]
fn map_runs_every_job_once_in_order_with_failures_reported() {
    let mut map = Map::bind(loopback(pipeline::MapConfig::default())).unwrap();
    let task: Arc<dyn Task> = Arc::new(shout);
    map.spawn_local(3, Arc::clone(&task)).unwrap();
    // One more worker, connected by address as another host's would be.
    let source = Source {
        jobs: map.vent_endpoints()[0].clone(),
        results: map.sink_endpoints()[0].clone(),
    };
    let mut config = TaskWorkerConfig::new(source);
    config.capacity = 4;
    let outside = TaskWorker::new(config).unwrap();
    let stop = Shutdown::new();
    let worker_stop = stop.clone();
    let worker = std::thread::spawn(move || outside.run(task, &worker_stop));

    let jobs: Vec<Bytes> = (0..500)
        .map(|i| {
            Bytes::from(if i % 100 == 7 {
                format!("bad{i}")
            } else {
                format!("job{i}")
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut progress_calls = 0;
    let summary = map
        .run(
            jobs.clone(),
            &Shutdown::new(),
            |f| seen.push(f),
            |_| progress_calls += 1,
        )
        .unwrap();
    assert!(summary.complete);
    assert!(progress_calls >= 1);
    assert_eq!(seen.len(), 500);
    for (i, f) in seen.iter().enumerate() {
        assert_eq!(f.index, i as u64, "in input order");
        assert_eq!(f.input, jobs[i]);
        if i % 100 == 7 {
            assert_eq!(f.attempts, 3);
            assert!(matches!(&f.outcome, Outcome::Failed(w) if w.contains("refused")));
        } else {
            assert_eq!(f.outcome, Outcome::Done(Bytes::from(format!("JOB{i}"))));
        }
    }
    assert_eq!(summary.counters.done, 495);
    assert_eq!(summary.counters.failed, 5);
    assert_eq!(summary.counters.retried, 10);
    stop.trigger();
    let ran = worker.join().unwrap().unwrap();
    assert!(ran.jobs > 0, "the outside worker took work");
}
