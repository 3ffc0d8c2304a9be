//! Bundles end to end, through a real broker on loopback: a pipelining client and credit
//! workers that ask for them get every reply, even where the broker's own message bound
//! is far below a bundle's size, and bundles did cross (the broker's counters say so).

use bytes::Bytes;
use scale0::proto::Body;
use scale0::{
    Broker, BrokerConfig, Client, ClientConfig, HandlerError, Shutdown, Worker, WorkerConfig,
};

#[test]
fn a_broker_with_a_small_message_bound_serves_clients_and_workers_that_bundle() {
    let mut config = BrokerConfig {
        bind: vec!["tcp://127.0.0.1:*".into()],
        ..BrokerConfig::default()
    };
    // Frames of twice this are read (8 KiB); bundles of 1 KB requests and replies grow to
    // 64 KiB. (Were the broker to read no larger frames, the workers' reply bundles would
    // cut their connections and every request fail.)
    config.core.max_message_bytes = 4096;
    let broker = Broker::bind(config).unwrap();
    let endpoint = broker.endpoints()[0].clone();
    let stop = Shutdown::new();
    let broker_stop = stop.clone();
    let broker_thread = std::thread::spawn(move || broker.run(&broker_stop));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut config = WorkerConfig::new(endpoint.clone(), "echo");
        config.inline = true;
        config.capacity = 64;
        config.max_message_bytes = 4096;
        let worker = Worker::new(config).unwrap();
        let worker_stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            worker.run(Ok::<Body, HandlerError>, &worker_stop)
        }));
    }
    let mut config = ClientConfig::new(endpoint);
    config.max_message_bytes = 4096;
    let mut client = Client::connect(config).unwrap();
    let bodies: Vec<Body> = (0..3000)
        .map(|i| vec![Bytes::from(format!("{i:0>1000}"))])
        .collect();
    let mut replies = vec![None; bodies.len()];
    let summary = client
        .request_many("echo", bodies.clone(), 256, |i, reply| {
            replies[i] = Some(reply.unwrap().body);
        })
        .unwrap();
    assert_eq!(summary.ok, 3000);
    assert_eq!(
        summary.retries, 0,
        "no connection was cut for a bundle's size"
    );
    for (body, reply) in bodies.iter().zip(&replies) {
        assert_eq!(
            reply.as_ref(),
            Some(body),
            "each reply is its own request's"
        );
    }
    stop.trigger();
    let counters = broker_thread.join().unwrap().unwrap();
    for w in workers {
        w.join().unwrap().unwrap();
    }
    assert!(counters.bundles_received > 0, "{counters:?}");
    assert!(counters.bundles_sent > 0, "{counters:?}");
}
