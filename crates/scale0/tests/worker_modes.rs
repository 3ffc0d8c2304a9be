//! The worker's two ways of running a handler — on a handler thread (the default) and
//! inline on the socket thread — give the same replies, partials and errors, through a
//! real broker on loopback.

use bytes::Bytes;
use scale0::proto::Body;
use scale0::{
    Broker, BrokerConfig, Client, ClientConfig, Handler, HandlerError, Progress, Shutdown, Worker,
    WorkerConfig,
};

/// Streams "1/2" and "2/2" as partials, then replies with the body reversed; refuses
/// a body of "fail".
struct Counting;

impl Handler for Counting {
    fn handle(&mut self, body: Body, progress: &Progress<'_>) -> Result<Body, HandlerError> {
        if body.first().is_some_and(|f| &f[..] == b"fail") {
            return Err(HandlerError("refused".into()));
        }
        progress.partial(&[Bytes::from_static(b"1/2")]);
        progress.partial(&[Bytes::from_static(b"2/2")]);
        let mut reversed = body.first().map(|f| f.to_vec()).unwrap_or_default();
        reversed.reverse();
        Ok(vec![Bytes::from(reversed)])
    }
}

fn serve(inline: bool) {
    let broker = Broker::bind(BrokerConfig {
        bind: vec!["tcp://127.0.0.1:*".into()],
        ..BrokerConfig::default()
    })
    .unwrap();
    let endpoint = broker.endpoints()[0].clone();
    let stop = Shutdown::new();
    let broker_stop = stop.clone();
    let broker_thread = std::thread::spawn(move || broker.run(&broker_stop));
    let mut config = WorkerConfig::new(endpoint.clone(), "count");
    config.inline = inline;
    let worker = Worker::new(config).unwrap();
    let worker_stop = stop.clone();
    let worker_thread = std::thread::spawn(move || worker.run(Counting, &worker_stop));

    let mut client = Client::connect(ClientConfig::new(endpoint)).unwrap();
    for i in 0..50 {
        let mut partials = Vec::new();
        let body = format!("request {i}");
        let reply = client
            .request_with_partials("count", vec![Bytes::from(body.clone())], |p| {
                partials.push(p);
            })
            .unwrap();
        let expected: String = body.chars().rev().collect();
        assert_eq!(reply, vec![Bytes::from(expected)], "inline={inline}");
        assert_eq!(
            partials,
            vec![
                vec![Bytes::from_static(b"1/2")],
                vec![Bytes::from_static(b"2/2")]
            ],
            "partials in order before the reply, inline={inline}"
        );
    }
    // A handler's failure reaches the client as an error, and the worker goes on.
    match client.request("count", vec![Bytes::from_static(b"fail")]) {
        Err(scale0::Error::Service { message, .. }) => assert_eq!(message, "refused"),
        other => panic!("expected the handler's refusal, got {other:?}"),
    }
    assert_eq!(
        client
            .request("count", vec![Bytes::from_static(b"ab")])
            .unwrap(),
        vec![Bytes::from_static(b"ba")]
    );
    stop.trigger();
    let summary = worker_thread.join().unwrap().unwrap();
    assert_eq!(summary.counters.requests, 52);
    broker_thread.join().unwrap().unwrap();
}

#[test]
fn a_handler_thread_serves_replies_partials_and_errors() {
    serve(false);
}

#[test]
fn an_inline_handler_serves_the_same() {
    serve(true);
}
