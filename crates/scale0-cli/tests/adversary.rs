//! Hostile peers against the real servers: each test asserts that the server survives,
//! stays within its bounds and keeps serving well-behaved peers. The peers are pyzmq
//! programs in `tests/adversary/`. CI runs them at a small size; `SCALE0_ADVERSARY=full`
//! runs the sizes quoted in BENCHMARKS.md ("Reliability").

mod common;

use common::*;

fn full() -> bool {
    std::env::var("SCALE0_ADVERSARY").is_ok_and(|v| v == "full")
}

fn adversary(script: &str) -> std::process::Command {
    let mut c = python();
    c.arg(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/adversary")
            .join(script),
    );
    c
}

/// Regression: libzmq 4.3.5 aborted the broker (`Assertion failed: !_io_error`,
/// stream_engine_base.cpp) when a second connection took over a routing id while the
/// first was sending a large message, at the next ZMTP heartbeat. Fixed by the patch
/// `crates/zmq-sys/build.rs` applies; without it this test fails in every run.
#[test]
fn a_routing_id_taken_over_mid_message_does_not_abort_the_broker() {
    let mut broker = Broker::start(&["--heartbeat-interval-ms", "300"]);
    let (size, rounds) = if full() {
        ("300000000", "6")
    } else {
        ("20000000", "4")
    };
    let out = run({
        let mut c = adversary("same_id_takeover.py");
        c.args([&broker.endpoint, "echo", size, rounds, "0.005", "1"]);
        c
    });
    assert!(
        out.status.success(),
        "the broker stopped answering: {}",
        tail(&out.stderr)
    );
    assert!(
        broker.proc.child.try_wait().expect("try_wait").is_none(),
        "the broker exited"
    );
    assert_eq!(mmi_service(&broker.endpoint, "echo"), "404");
}
