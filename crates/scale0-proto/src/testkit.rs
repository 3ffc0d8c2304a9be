//! Shared drivers for fuzzing and corpus replay: one definition of each fuzz target's
//! meaning, so `cargo test` replays exactly what the fuzzer ran. Built only for tests and
//! fuzzing (the `testkit` feature), never as part of the public core.
#![doc(hidden)]

use crate::broker::{Broker, Config, Event};
use crate::cluster;
use crate::journal::{Entry, MemoryStore, Store};
use crate::mdp::{self, Frames, Message};
use crate::membership::Heartbeat;
use crate::queue::{self, Dest, Queue};
use crate::time::Instant;
use crate::zap;
use bytes::Bytes;
use std::time::Duration;

/// Splits fuzz input into frames at every `0xff 0x00` pair (the pair itself is dropped).
pub fn split_frames(data: &[u8]) -> Frames {
    let mut frames = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data.get(i) == Some(&0xff) && data.get(i + 1) == Some(&0x00) {
            frames.push(Bytes::copy_from_slice(
                data.get(start..i).unwrap_or_default(),
            ));
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    frames.push(Bytes::copy_from_slice(
        data.get(start..).unwrap_or_default(),
    ));
    frames
}

/// Fuzz target `decode`: any frames through every decoder (MDP and native messages,
/// pipeline jobs and reports, heartbeats, stored journal entries, broker events, ZAP requests and replies); encoding
/// what decoded must decode to the same value.
pub fn decode(data: &[u8]) {
    let frames = split_frames(data);
    if let Ok(event) = Event::decode(&frames) {
        assert_eq!(Event::decode(&event.encode()), Ok(event));
    }
    if let Ok(request) = zap::Request::decode(&frames) {
        assert_eq!(zap::Request::decode(&request.encode()), Ok(request));
    }
    if let Ok(reply) = zap::Reply::decode(&frames) {
        assert_eq!(zap::Reply::decode(&reply.encode()), Ok(reply));
    }
    if let Ok(job) = crate::pipeline::Job::decode(&frames) {
        assert_eq!(crate::pipeline::Job::decode(&job.encode()), Ok(job));
    }
    if let Ok(report) = crate::pipeline::Report::decode(&frames) {
        assert_eq!(
            crate::pipeline::Report::decode(&report.encode()),
            Ok(report)
        );
    }
    if let Ok(hb) = Heartbeat::decode(&frames) {
        assert_eq!(Heartbeat::decode(&hb.encode()), Ok(hb));
    }
    if let Ok(entry) = Entry::decode(&Bytes::copy_from_slice(data)) {
        assert_eq!(Entry::decode(&entry.encode()), Ok(entry));
    }
    if let Ok(m) = Message::decode(frames.clone()) {
        assert_eq!(Message::decode(m.encode()).as_ref(), Ok(&m));
    }
    if let Ok(messages) = crate::bundle::decode(&frames) {
        let mut packer = crate::bundle::Packer::new(0);
        if messages.len() > 1 && messages.iter().all(|m| packer.fits(m)) {
            for m in &messages {
                if packer.has_room(m) {
                    packer.push(m.clone());
                }
            }
            let again = crate::bundle::decode(&packer.finish()).unwrap_or_default();
            assert!(again.len() <= messages.len() && messages.starts_with(&again));
        }
    }
    if let Ok((_, rest)) = mdp::split_routing_id(frames) {
        let _ = Message::decode(rest);
    }
    let whole = Bytes::copy_from_slice(data);
    let limits = cluster::codec::Limits {
        max_entries: 64,
        max_ops: 64,
    };
    if let Ok(m) = cluster::codec::decode_message(whole.clone(), &limits) {
        let again = cluster::codec::decode_message(cluster::codec::encode_message(&m), &limits);
        assert_eq!(again.as_ref(), Ok(&m));
    }
    if let Ok(ops) = cluster::codec::decode_ops(whole.clone(), &limits) {
        let again = cluster::codec::decode_ops(cluster::codec::encode_ops(&ops), &limits);
        assert_eq!(again, Ok(ops));
    }
    if let Ok(image) = cluster::codec::decode_image(whole) {
        assert_eq!(
            cluster::codec::decode_image(cluster::codec::encode_image(&image)),
            Ok(image)
        );
    }
}

/// Fuzz target `broker_events`: the input is a script of events for one broker —
/// messages from a handful of peers, clock steps, timeouts and unroutable sends, the start
/// of a drain, and for the durable broker journal commits, crashes and recoveries (the
/// first crash turns the broker durable) — after which the broker's invariants must hold.
/// A message whose op byte has its top bit set travels in a bundle with the same peer's
/// next such messages.
pub fn broker_events(data: &[u8]) {
    let config = Config {
        heartbeat_interval_ms: 100,
        heartbeat_liveness: 3,
        max_message_bytes: 64,
        max_attempts: 2,
        request_timeout_ms: 700,
        max_queue_depth: 4,
        unknown_service_wait_ms: 500,
        max_services: 2,
        dedupe_window_ms: 300,
        max_dedupe_entries: 3,
        ..Config::default()
    };
    let mut now = Instant::ZERO;
    let mut broker = Broker::new(config.clone(), now);
    let mut store = MemoryStore::new();
    let mut runs = 0;
    let peers: [&[u8]; 4] = [b"A", b"B", b"C", b"\x00k\x8bEg"];
    let services: [&[u8]; 3] = [b"echo", b"mmi.service", b"other"];
    let mut ops = data.chunks(3);
    let mut bundle: Option<(Bytes, crate::bundle::Packer)> = None;
    let deliver = |broker: &mut Broker, now, frames: Frames| {
        if !frames.is_empty() {
            broker.handle_message(now, frames);
            check_invariants(broker);
        }
    };
    while let Some(op) = ops.next() {
        let [kind, a, b] = *op else { break };
        let peer = Bytes::from_static(peers[usize::from(a) % peers.len()]);
        let service = Bytes::from_static(services[usize::from(b) % services.len()]);
        let frames: Frames = match kind % 22 {
            0 => vec![
                peer,
                Bytes::new(),
                Bytes::from_static(b"MDPC01"),
                service,
                Bytes::from_static(b"x"),
            ],
            1 => vec![
                peer,
                Bytes::new(),
                Bytes::from_static(b"MDPW01"),
                Bytes::from_static(&[1]),
                service,
            ],
            2 => vec![
                peer,
                Bytes::new(),
                Bytes::from_static(b"MDPW01"),
                Bytes::from_static(&[3]),
                Bytes::from_static(peers[usize::from(b) % peers.len()]),
                Bytes::new(),
                Bytes::from_static(b"r"),
            ],
            3 => vec![
                peer,
                Bytes::new(),
                Bytes::from_static(b"MDPW01"),
                Bytes::from_static(&[4]),
            ],
            4 => vec![
                peer,
                Bytes::new(),
                Bytes::from_static(b"MDPW01"),
                Bytes::from_static(&[5]),
            ],
            5 => {
                now = now + Duration::from_millis(u64::from(a) * 4);
                broker.handle_timeout(now);
                continue;
            }
            6 => {
                if let Ok(p) = mdp::PeerId::new(peer) {
                    broker.handle_unroutable(now, &p);
                }
                continue;
            }
            7 => {
                // Raw bytes from the rest of the input as frames.
                let len = usize::from(a) % 32;
                let rest: Vec<u8> = ops.by_ref().take(len).flatten().copied().collect();
                let mut frames = vec![peer];
                frames.extend(split_frames(&rest));
                frames
            }
            8 => {
                now = broker.poll_timeout().unwrap_or(now);
                broker.handle_timeout(now);
                continue;
            }
            9 => {
                while broker.poll_transmit().is_some() {}
                continue;
            }
            10 => {
                let id = Bytes::from(vec![b'0' + b % 4]);
                let deadline = if a % 2 == 1 {
                    Bytes::from((u64::from(a) * 4).to_string())
                } else {
                    Bytes::new()
                };
                vec![
                    peer,
                    Bytes::from_static(b"S0C1"),
                    Bytes::from_static(&[1]),
                    id,
                    service,
                    deadline,
                    Bytes::from_static(b"x"),
                ]
            }
            11 => {
                let mut ready = vec![
                    peer,
                    Bytes::from_static(b"MDPW02"),
                    Bytes::from_static(&[1]),
                    service,
                ];
                if a % 3 == 0 {
                    ready.push(Bytes::from_static(b"capacity=2"));
                    ready.push(Bytes::from_static(mdp::BUNDLE_OPTION));
                }
                ready
            }
            12 | 13 => vec![
                peer,
                Bytes::from_static(b"MDPW02"),
                Bytes::from_static(if kind % 18 == 12 { &[3] } else { &[4] }),
                Bytes::from_static(peers[usize::from(b) % peers.len()]),
                Bytes::new(),
                Bytes::from_static(b"r"),
            ],
            14 => vec![
                peer,
                Bytes::from_static(b"MDPC02"),
                Bytes::from_static(&[1]),
                service,
                Bytes::from_static(b"y"),
            ],
            15 => {
                // A Titanic request, or a reply/close of a UUID this run may have issued.
                let verbs: [&[u8]; 3] = [b"titanic.request", b"titanic.reply", b"titanic.close"];
                let uuid = Bytes::from(format!("{runs:016x}{:016x}", b % 8));
                let body = if a % 3 == 0 {
                    Bytes::from_static(services[usize::from(b) % services.len()])
                } else {
                    uuid
                };
                vec![
                    peer,
                    Bytes::new(),
                    Bytes::from_static(b"MDPC01"),
                    Bytes::from_static(verbs[usize::from(a) % verbs.len()]),
                    body,
                    Bytes::from_static(b"t"),
                ]
            }
            17 => {
                // MDP/0.2 in the delimited framing (majortomo): READY, or a FINAL for a
                // client of this run.
                let head = [peer, Bytes::new(), Bytes::from_static(b"MDPW02")];
                if a % 2 == 0 {
                    head.into_iter()
                        .chain([Bytes::from_static(&[1]), service])
                        .collect()
                } else {
                    let client = Bytes::from_static(peers[usize::from(b) % peers.len()]);
                    head.into_iter()
                        .chain([
                            Bytes::from_static(&[4]),
                            client,
                            Bytes::new(),
                            Bytes::from_static(b"r"),
                        ])
                        .collect()
                }
            }
            18 => vec![
                peer,
                Bytes::new(),
                Bytes::from_static(b"MDPC02"),
                Bytes::from_static(&[2]),
                service,
                Bytes::from_static(b"x"),
            ],
            // libzmq's notice that the peer's connection ended (ROUTER_NOTIFY).
            19 => vec![peer, Bytes::new()],
            21 => {
                broker.begin_drain(now, Duration::from_millis(u64::from(a) * 4));
                continue;
            }
            16 => {
                // Group commit: every op so far made durable.
                while let Some(op) = broker.poll_journal() {
                    let _ = store.apply(&op);
                }
                let _ = store.commit();
                broker.journal_synced();
                for (_, value) in store.load().unwrap_or_default() {
                    assert!(Entry::decode(&value).is_ok(), "stored entries read back");
                }
                continue;
            }
            _ => {
                // kill -9 and a restart on the same store.
                store.crash();
                runs += 1;
                let stored = store.load().unwrap_or_default();
                let (recovered, recovery) = Broker::durable(config.clone(), now, stored, runs);
                assert!(
                    recovery.unreadable.is_empty(),
                    "every stored entry recovers"
                );
                broker = recovered;
                check_invariants(&broker);
                continue;
            }
        };
        if kind & 0x80 != 0 && frames.len() > 1 {
            match &mut bundle {
                Some((to, packer))
                    if *to == frames[0] && packer.fits(&frames) && packer.has_room(&frames) =>
                {
                    packer.push(frames);
                }
                _ => {
                    if let Some((_, packer)) = bundle.take() {
                        deliver(&mut broker, now, packer.finish());
                    }
                    let mut packer = crate::bundle::Packer::new(1);
                    if packer.fits(&frames) {
                        let to = frames[0].clone();
                        packer.push(frames);
                        bundle = Some((to, packer));
                    } else {
                        deliver(&mut broker, now, frames);
                    }
                }
            }
            continue;
        }
        if let Some((_, packer)) = bundle.take() {
            deliver(&mut broker, now, packer.finish());
        }
        deliver(&mut broker, now, frames);
    }
    if let Some((_, packer)) = bundle.take() {
        deliver(&mut broker, now, packer.finish());
    }
    broker.handle_timeout(now);
    check_invariants(&broker);
}

/// The broker's bookkeeping agrees with itself and stays within its bounds.
pub fn check_invariants(broker: &Broker) {
    let services = broker.services();
    assert!(
        services.len() <= broker.config().max_services,
        "services are bounded"
    );
    assert!(
        broker.native_requests().1 <= broker.config().max_dedupe_entries,
        "stored answers are bounded"
    );
    assert!(broker.busy_workers() <= broker.worker_count());
    assert!(
        broker.dispatch_lists_bounded(),
        "dispatch lists hold each free worker once and few stale entries"
    );
    let workers: usize = services.iter().map(|s| s.workers).sum();
    assert_eq!(
        workers,
        broker.worker_count(),
        "service worker counts add up"
    );
    for s in &services {
        assert!(s.idle <= s.workers, "idle workers are registered workers");
        assert!(
            s.queued == 0 || s.idle == 0,
            "no request waits beside an idle worker"
        );
        assert!(
            s.workers > 0 || s.queued > 0,
            "unused services are forgotten"
        );
        // A redelivered request goes back to the head of its queue even when the queue
        // is full, and so does every request recovered after a crash (those held by
        // workers included): they were accepted already. New requests are refused until
        // the queue drains.
        let counters = broker.counters();
        let requeued =
            usize::try_from(counters.requeued + counters.recovered).unwrap_or(usize::MAX);
        assert!(
            s.queued <= broker.config().max_queue_depth.saturating_add(requeued),
            "queues are bounded"
        );
    }
}

/// Fuzz target `queue_events`: a script of events for the queue device — client messages
/// (good and bad), server counts and replies, Paranoid Pirate workers coming, beating,
/// answering and vanishing, failed sends, clock steps. After every event each accepted
/// request is in exactly one place: waiting, in flight, answered, or dropped after its
/// attempts.
pub fn queue_events(data: &[u8]) {
    let config = queue::Config {
        request_timeout_ms: 300,
        max_attempts: 3,
        max_queued: 5,
        max_message_bytes: 64,
        heartbeat_interval_ms: 50,
        heartbeat_liveness: 3,
    };
    let mut now = Instant::ZERO;
    let mut q = Queue::new(config, now);
    let mut to_servers: Vec<Bytes> = Vec::new();
    let mut to_workers: Vec<(Bytes, Frames)> = Vec::new();
    let workers: [&[u8]; 3] = [b"w0", b"w1", b"w2"];
    for op in data.chunks(2) {
        let [kind, arg] = *op else { break };
        let pick = usize::from(arg);
        match kind % 10 {
            0 => q.handle_client(
                now,
                vec![
                    Bytes::from(vec![b'c', arg % 4]),
                    Bytes::new(),
                    Bytes::from(vec![arg]),
                ],
            ),
            1 => q.handle_client(now, split_frames(&[arg, 0xff, 0x00, arg])),
            2 => q.servers_connected(now, pick % 4),
            3 => {
                if let Some(tag) = to_servers.get(pick % to_servers.len().max(1)) {
                    q.handle_server(
                        now,
                        vec![tag.clone(), Bytes::new(), Bytes::from_static(b"r")],
                    );
                } else {
                    q.handle_server(now, split_frames(&[arg]));
                }
            }
            4 => {
                let mut f = vec![Bytes::from_static(workers[pick % 3])];
                if arg & 0x80 != 0 {
                    f.push(Bytes::new());
                }
                f.push(Bytes::from_static(queue::PPP_READY));
                q.handle_worker(now, f);
            }
            5 => q.handle_worker(
                now,
                vec![
                    Bytes::from_static(workers[pick % 3]),
                    Bytes::from_static(queue::PPP_HEARTBEAT),
                ],
            ),
            6 => {
                if let Some((id, frames)) = to_workers.get(pick % to_workers.len().max(1)) {
                    let mut f = vec![id.clone()];
                    let payload: Vec<Bytes> = frames.iter().skip(1).cloned().collect();
                    let at = payload
                        .iter()
                        .skip(1)
                        .position(Bytes::is_empty)
                        .map(|i| i + 1);
                    if let Some(at) = at {
                        f.extend(payload[..=at].iter().cloned());
                        f.push(Bytes::from_static(b"r"));
                    }
                    q.handle_worker(now, f);
                }
            }
            7 => {
                if let Ok(p) = crate::mdp::PeerId::new(Bytes::from_static(workers[pick % 3])) {
                    q.handle_unroutable_worker(now, &p);
                }
            }
            8 => {
                if let Some(tag) = to_servers.get(pick % to_servers.len().max(1))
                    && let Some(t) = queue::parse_tag(tag)
                {
                    q.server_send_failed(now, t);
                }
            }
            _ => {
                now = now + Duration::from_millis(u64::from(arg) * 4);
                if q.poll_timeout().is_some_and(|t| t <= now) {
                    q.handle_timeout(now);
                }
            }
        }
        while let Some(t) = q.poll_transmit() {
            match t.dest {
                Dest::Servers => {
                    if let Some(tag) = t.frames.first() {
                        to_servers.push(tag.clone());
                    }
                }
                Dest::Workers => {
                    if t.frames.len() > 2
                        && let Some(id) = t.frames.first()
                    {
                        to_workers.push((id.clone(), t.frames.clone()));
                    }
                }
                Dest::Frontend => {
                    assert!(t.frames.len() >= 3, "a reply carries envelope and body");
                }
            }
        }
        let c = q.counters();
        let accounted = c.replies
            + c.dropped(queue::Drop::AttemptsExhausted)
            + q.waiting() as u64
            + q.in_flight() as u64;
        assert_eq!(
            c.requests, accounted,
            "every request is in exactly one place"
        );
    }
}

/// Fuzz target `map_events`: a script of events for one parallel map — jobs, connection
/// counts, dispatches (single or batched) and undos, hellos and heartbeats (reading
/// batches or not), start notices, results, batched reports of starts, hand-backs and
/// results, and goodbyes from three workers (about real keys, stale keys or garbage), and
/// clock steps. Every job is emitted at most once, in order, and a success carries the
/// output its worker gave for that very job; then a healthy worker joins and every job
/// must end.
pub fn map_events(data: &[u8]) {
    use crate::pipeline::{BatchReport, Job, JobEnd, Map, MapConfig, Outcome, Report, Status};
    use std::collections::HashMap;

    let flags = data.first().copied().unwrap_or(0);
    let ordered = flags & 1 == 0;
    let config = MapConfig {
        job_timeout_ms: 100,
        max_attempts: 3,
        prefetch: 1,
        liveness: 3,
        dispatch_timeout_ms: 400,
        ordered,
        batch_jobs: if flags & 2 == 0 { 4 } else { 1 },
        batch_bytes: 6,
        hold_ms: 60,
    };
    let healer_batches = flags & 4 == 0;
    // The (id, payload) of each job a dispatch carries.
    let jobs_of = |frames: &Frames| -> Vec<(Bytes, Bytes)> {
        let job = Job::decode(frames);
        assert!(
            matches!(job, Ok(Job::Framed { .. } | Job::Batch(_))),
            "the map sent {job:?}"
        );
        match job {
            Ok(Job::Framed { id, payload, .. }) => vec![(id, payload)],
            Ok(Job::Batch(b)) => b.jobs,
            _ => Vec::new(),
        }
    };
    let mut now = Instant::ZERO;
    let mut map = Map::new(config, 7);
    // What was sent, by key: the job's payload, which an honest worker echoes.
    let mut sent: Vec<(Bytes, Bytes)> = Vec::new();
    let mut payloads: HashMap<u64, Bytes> = HashMap::new();
    let mut emitted: Vec<u64> = Vec::new();
    let workers: [&[u8]; 3] = [b"w0", b"w1", b"w2"];
    let output_of = |payload: &Bytes| Bytes::from([&b"out:"[..], payload].concat());

    let drain = |map: &mut Map, emitted: &mut Vec<u64>, payloads: &HashMap<u64, Bytes>| {
        while let Some(f) = map.poll_finished() {
            assert!(!emitted.contains(&f.index), "job {} emitted twice", f.index);
            if ordered {
                assert_eq!(f.index, emitted.len() as u64, "emitted out of order");
            }
            if let Outcome::Done(out) = &f.outcome {
                assert_eq!(
                    Some(out),
                    payloads.get(&f.index).map(output_of).as_ref(),
                    "job {} got another's output",
                    f.index
                );
            }
            emitted.push(f.index);
        }
    };

    for op in data.get(1..).unwrap_or_default().chunks(2) {
        let [kind, arg] = *op else { break };
        let worker = Bytes::from_static(workers[usize::from(arg) % 3]);
        let pick =
            |sent: &[(Bytes, Bytes)]| sent.get(usize::from(arg) % sent.len().max(1)).cloned();
        match kind % 14 {
            0 | 1 => {
                let payload = Bytes::from(vec![b'j', arg]);
                let index = map.push_job(payload.clone());
                payloads.insert(index, payload);
            }
            2 => {
                map.set_connections(now, usize::from(arg % 5));
            }
            3 => {
                while let Some(d) = map.poll_dispatch(now) {
                    let jobs = jobs_of(&d.frames);
                    assert_eq!(jobs.len(), d.indices.len());
                    if arg & 1 == 1 {
                        // The socket refused it: the driver gives it back at once.
                        map.undo_dispatch(&d);
                        break;
                    }
                    sent.extend(jobs);
                }
            }
            4 => {
                let running = sent
                    .iter()
                    .filter(|(k, _)| k.last().is_some_and(|b| b % 3 == arg % 3))
                    .map(|(k, _)| k.clone())
                    .collect();
                let beat = Report::Alive {
                    worker,
                    capacity: u32::from(arg % 3) + 1,
                    interval_ms: 50,
                    running,
                    batches: arg & 4 == 0,
                };
                map.handle_report(now, beat.encode());
            }
            5 => {
                if let Some((id, _)) = pick(&sent) {
                    map.handle_report(now, Report::Start { worker, id }.encode());
                }
            }
            6 | 7 => {
                if let Some((id, payload)) = pick(&sent) {
                    let (status, output) = match arg % 4 {
                        0 => (Status::Failed, Bytes::from_static(b"exit 1")),
                        1 => (Status::Timeout, Bytes::new()),
                        _ => (Status::Ok, output_of(&payload)),
                    };
                    let report = Report::Result {
                        worker,
                        id,
                        status,
                        output,
                    };
                    map.handle_report(now, report.encode());
                }
            }
            8 => map.handle_report(now, Report::Bye { worker }.encode()),
            9 => map.handle_report(now, split_frames(&[b's', b'0', arg, 0xff, 0x00, arg])),
            10 => map.close_input(),
            11 | 12 => {
                // A batched report about up to three sent jobs: each begun, handed back
                // or ended (honestly, or failed), as `arg`'s bits say.
                let mut report = BatchReport {
                    worker,
                    busy_us: u64::from(arg) * 100,
                    ..BatchReport::default()
                };
                for n in 0..3u8 {
                    let Some((id, payload)) = sent
                        .get((usize::from(arg) + usize::from(n) * 7) % sent.len().max(1))
                        .cloned()
                    else {
                        break;
                    };
                    match (arg >> (2 * n)) & 3 {
                        0 => report.started.push(id),
                        1 if kind % 14 == 12 => report.returned.push(id),
                        1 => report.ended.push(JobEnd {
                            id,
                            status: Status::Failed,
                            output: Bytes::from_static(b"exit 1"),
                        }),
                        _ => report.ended.push(JobEnd {
                            id,
                            status: Status::Ok,
                            output: output_of(&payload),
                        }),
                    }
                }
                map.handle_report(now, Report::Batch(report).encode());
            }
            _ => {
                now = now + Duration::from_millis(u64::from(arg) * 4);
                if map.poll_timeout().is_some_and(|t| t <= now) {
                    map.handle_timeout(now);
                }
            }
        }
        drain(&mut map, &mut emitted, &payloads);
    }

    // Liveness: the old workers vanish and one honest worker serves what is left.
    map.close_input();
    map.set_connections(now, 0);
    let healer = Bytes::from_static(b"healer");
    map.set_connections(now, 1);
    for _ in 0..10_000 {
        if map.is_done() {
            break;
        }
        let hello = Report::Alive {
            worker: healer.clone(),
            capacity: 2,
            interval_ms: 50,
            running: Vec::new(),
            batches: healer_batches,
        };
        map.handle_report(now, hello.encode());
        while let Some(d) = map.poll_dispatch(now) {
            if d.frames[0][..] == *crate::pipeline::JOBS {
                assert!(healer_batches, "a batch to a worker that cannot read it");
                let report = BatchReport {
                    worker: healer.clone(),
                    busy_us: 10,
                    ended: jobs_of(&d.frames)
                        .into_iter()
                        .map(|(id, payload)| JobEnd {
                            id,
                            status: Status::Ok,
                            output: output_of(&payload),
                        })
                        .collect(),
                    ..BatchReport::default()
                };
                map.handle_report(now, Report::Batch(report).encode());
                continue;
            }
            let (id, payload) = (d.frames[1].clone(), d.frames[3].clone());
            map.handle_report(
                now,
                Report::Start {
                    worker: healer.clone(),
                    id: id.clone(),
                }
                .encode(),
            );
            let result = Report::Result {
                worker: healer.clone(),
                id,
                status: Status::Ok,
                output: output_of(&payload),
            };
            map.handle_report(now, result.encode());
        }
        now = now + Duration::from_millis(50);
        if map.poll_timeout().is_some_and(|t| t <= now) {
            map.handle_timeout(now);
        }
        drain(&mut map, &mut emitted, &payloads);
    }
    drain(&mut map, &mut emitted, &payloads);
    assert!(map.is_done(), "jobs left undone: {:?}", map.counters());
    assert_eq!(emitted.len(), payloads.len(), "every job ends exactly once");
}
