//! Micro-benchmarks of the sans-IO core: the codec and one request's way through the
//! broker state machine, without sockets. `cargo bench -p scale0-proto`.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use scale0_proto::broker::{Broker, Config};
use scale0_proto::mdp::{ClientMessage, Message, NativeCommand, RequestId, WorkerCommand};
use scale0_proto::{Instant, PeerId, ServiceName};
use std::hint::black_box;

fn peer(s: &'static str) -> PeerId {
    PeerId::new(Bytes::from_static(s.as_bytes())).unwrap()
}

fn service() -> ServiceName {
    ServiceName::new(Bytes::from_static(b"echo")).unwrap()
}

fn native_request(id: u64, body: &Bytes) -> Message {
    Message::Native(NativeCommand::Request {
        id: RequestId::new(Bytes::copy_from_slice(&id.to_be_bytes())).unwrap(),
        service: service(),
        deadline_ms: None,
        ack: true,
        body: vec![body.clone()],
    })
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for size in [16usize, 1024] {
        let body = Bytes::from(vec![b'x'; size]);
        let native = native_request(7, &body).encode_to(&peer("client"));
        let mdp = Message::Client(ClientMessage {
            service: service(),
            body: vec![body.clone()],
        })
        .encode_to(&peer("client"));
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::new("decode native request", size),
            &native,
            |b, f| {
                b.iter(|| Message::decode(black_box(f[1..].to_vec())));
            },
        );
        g.bench_with_input(
            BenchmarkId::new("decode MDP/0.1 request", size),
            &mdp,
            |b, f| {
                b.iter(|| Message::decode(black_box(f[1..].to_vec())));
            },
        );
        let m = native_request(7, &body);
        g.bench_with_input(
            BenchmarkId::new("encode native request", size),
            &m,
            |b, m| {
                b.iter(|| black_box(m).encode_to(&peer("client")));
            },
        );
    }
    g.finish();
}

/// One native request in, to a ready MDP worker, its reply back to the client: every
/// frame the broker reads and every one it writes for a request.
fn dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("broker");
    g.throughput(Throughput::Elements(1));
    for workers in [1usize, 64] {
        g.bench_function(BenchmarkId::new("request, dispatch, reply", workers), |b| {
            let now = Instant::ZERO;
            let mut broker = Broker::new(Config::default(), now);
            let names: Vec<PeerId> = (0..workers)
                .map(|i| PeerId::new(Bytes::from(format!("worker-{i}"))).unwrap())
                .collect();
            for w in &names {
                let ready = Message::Worker(WorkerCommand::Ready {
                    service: service(),
                    capacity: 1,
                    bundle: false,
                });
                broker.handle_message(now, ready.encode_to(w));
            }
            while broker.poll_transmit().is_some() {}
            let body = Bytes::from_static(b"0123456789abcdef");
            let client = peer("client");
            let mut id = 0u64;
            b.iter(|| {
                id += 1;
                broker.handle_message(now, native_request(id, &body).encode_to(&client));
                let mut worker = None;
                while let Some(t) = broker.poll_transmit() {
                    if t.frames.first().is_some_and(|f| f.starts_with(b"worker-")) {
                        worker = Some(t.frames);
                    }
                }
                let frames = worker.expect("the request reached a worker");
                let to = PeerId::new(frames[0].clone()).unwrap();
                let Ok(Message::Worker(WorkerCommand::Request { client, .. })) =
                    Message::decode(frames[1..].to_vec())
                else {
                    panic!("not a request: {frames:?}");
                };
                let reply = Message::Worker(WorkerCommand::Reply {
                    client,
                    body: vec![body.clone()],
                });
                broker.handle_message(now, reply.encode_to(&to));
                while let Some(t) = broker.poll_transmit() {
                    black_box(t);
                }
            });
        });
    }
    g.finish();
}

/// One native request's way through the client session: sent, answered, ended.
fn client_session(c: &mut Criterion) {
    use scale0_proto::client::{Config as ClientConfig, Event, Session};
    let mut g = c.benchmark_group("client");
    g.throughput(Throughput::Elements(1));
    let body = Bytes::from(vec![b'x'; 128]);
    g.bench_function("request_answered", |b| {
        let mut s = Session::new(ClientConfig::default());
        let mut now = 0;
        b.iter(|| {
            now += 1;
            let at = Instant::from_millis(now);
            let id = s.request(at, service(), vec![body.clone()], ());
            let sent = s.poll_transmit().unwrap();
            black_box(&sent);
            let answer = Message::Native(NativeCommand::Final {
                id,
                body: vec![body.clone()],
            })
            .encode();
            s.handle_message(at, 0, answer).unwrap();
            let Some(Event::Done { .. }) = s.poll_event() else {
                panic!("no end")
            };
        });
    });
    g.finish();
}

criterion_group!(benches, codec, dispatch, client_session);
criterion_main!(benches);
