//! libzmq alone in the deployed shape: one ROUTER echo server a process of its own, C
//! DEALER clients each a process of its own keeping K requests in flight (a sequence-number
//! frame and the body), synchronous round trips timed one by one — what `scale0 bench
//! direct` measures with every part a thread of one process. Prints one JSON object per
//! case, in the shape of `scale0 bench --json` (scenario "direct", shape "processes").

use clap::Parser;
use scale0_compare::{
    Children, Error, client_line, exit_with_parent, report, run_clients, split, start_part,
    this_binary,
};
use std::time::Instant;

const HWM: i32 = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Server,
    Client,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "16,128,1024")]
    size: Vec<usize>,
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    #[arg(long, default_value_t = 10_000)]
    sync_requests: u64,
    #[arg(long, default_value_t = 2)]
    clients: u32,
    /// Taken so the command line of the other tools works here too; libzmq alone has one
    /// echo server and no workers.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    workers: Vec<u32>,
    #[arg(long, default_value_t = 64)]
    in_flight: u32,
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// What this process is, when the parent started it (hidden).
    #[arg(long, value_enum, hide = true)]
    role: Option<Role>,
    /// A client's server (hidden).
    #[arg(long, hide = true)]
    connect: Option<String>,
}

fn socket(ctx: &zmq::Context, kind: zmq::SocketType) -> Result<zmq::Socket, Error> {
    let s = ctx.socket(kind)?;
    s.set_linger(0)?;
    s.set_sndhwm(HWM)?;
    s.set_rcvhwm(HWM)?;
    Ok(s)
}

/// Echoes every message back to its sender, draining all that is ready on each wake.
fn server() -> Result<(), Error> {
    exit_with_parent();
    let ctx = zmq::Context::new();
    let router = socket(&ctx, zmq::ROUTER)?;
    router.bind("tcp://127.0.0.1:*")?;
    let endpoint = router
        .get_last_endpoint()?
        .map_err(|_| "a non-UTF-8 endpoint")?;
    println!("{endpoint}");
    loop {
        let mut items = [router.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, 100)?;
        loop {
            match router.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => {
                    let _ = router.send_multipart(frames, 0);
                }
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// One client: a round trip not measured (the connection), then `requests` with
/// `in_flight` outstanding, each timed by its number.
fn client(args: &Args) -> Result<(), Error> {
    let ctx = zmq::Context::new();
    let dealer = socket(&ctx, zmq::DEALER)?;
    dealer.connect(args.connect.as_deref().ok_or("--connect")?)?;
    let payload = vec![b'x'; args.size.first().copied().unwrap_or(128)];
    let send = |seq: u64| -> Result<(), Error> {
        dealer.send(&seq.to_le_bytes()[..], zmq::SNDMORE)?;
        dealer.send(&payload[..], 0)?;
        Ok(())
    };
    let recv = || -> Result<u64, Error> {
        let frames = dealer.recv_multipart(0)?;
        let seq = frames
            .first()
            .and_then(|f| <[u8; 8]>::try_from(&f[..]).ok())
            .map(u64::from_le_bytes)
            .ok_or("a reply without its number")?;
        Ok(seq)
    };
    send(u64::MAX)?;
    recv()?;
    let n = args.requests;
    let window = u64::from(args.in_flight.max(1));
    let mut sent_at = vec![Instant::now(); window as usize];
    let mut latencies = Vec::with_capacity(n as usize);
    let started = Instant::now();
    let (mut sent, mut done) = (0u64, 0u64);
    while done < n {
        while sent < n && sent - done < window {
            sent_at[(sent % window) as usize] = Instant::now();
            send(sent)?;
            sent += 1;
        }
        let seq = recv()?;
        latencies.push(sent_at[(seq % window) as usize].elapsed().as_nanos() as u64);
        done += 1;
    }
    println!("{}", client_line(done, started.elapsed(), &latencies));
    Ok(())
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    match args.role {
        Some(Role::Server) => return server(),
        Some(Role::Client) => return client(&args),
        None => {}
    }
    for &size in &args.size {
        let cases = [
            ("sync", 1u32, 1u32, args.sync_requests),
            ("pipelined", args.clients, args.in_flight, args.requests),
        ];
        for (mode, clients, in_flight, requests) in cases {
            let mut runs = Vec::new();
            for _ in 0..args.repeat {
                let mut parts = Children::default();
                let endpoint = start_part(this_binary()?.args(["--role", "server"]), &mut parts)?;
                let mut cmds = Vec::new();
                for n in split(requests, clients) {
                    let mut c = this_binary()?;
                    c.args(["--role", "client", "--connect", &endpoint])
                        .args(["--size", &size.to_string()])
                        .args(["--requests", &n.to_string()])
                        .args(["--in-flight", &in_flight.to_string()]);
                    cmds.push(c);
                }
                runs.push(run_clients(cmds)?);
            }
            let v = report(
                "direct", "processes", mode, size, requests, None, clients, in_flight, runs,
            );
            println!("{v}");
        }
    }
    Ok(())
}
