//! Sans-IO core of scale0.
//!
//! Everything here is a deterministic state machine: inputs arrive through
//! `handle_*(now, ...)`, outputs are pulled with `poll_*()`, and time is a value
//! the caller passes in. No sockets, no clock, no files — which is what lets the
//! broker be tested with virtual time and fuzzed.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod broker;
pub mod bundle;
pub mod client;
pub mod cluster;
mod dedupe;
mod departed;
pub mod journal;
pub mod mdp;
pub mod membership;
pub mod pipeline;
pub mod queue;
pub mod task_worker;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
mod time;
mod timers;
mod wire;
pub mod worker;
pub mod zap;

pub use mdp::{Body, DecodeError, Frames, PeerId, ServiceName};

/// A message a state machine wants sent: on which of its sockets (`()` for a machine with
/// one) and the whole multipart message, a ROUTER's routing id first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit<D = ()> {
    /// Which socket.
    pub dest: D,
    /// The frames, in order.
    pub frames: Frames,
}

impl<D> Transmit<D> {
    /// The peer a ROUTER sends it to (its first frame), for reporting it unroutable.
    pub fn peer(&self) -> Option<PeerId> {
        mdp::routing_id(&self.frames)
    }
}

/// How often Majordomo peers heartbeat unless configured otherwise: the reference
/// implementations' 2500 ms, so the Guide's programs and ours agree out of the box.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 2500;
/// Heartbeat intervals of silence after which a Majordomo peer is presumed dead, unless
/// configured otherwise (the reference implementations' 3).
pub const DEFAULT_HEARTBEAT_LIVENESS: u32 = 3;
/// The largest message a server reads unless configured otherwise: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// The smallest message bound a server accepts: every command of every protocol, with
/// the longest service name and address, fits in it.
pub const MIN_MAX_MESSAGE_BYTES: usize = 1024;
pub use time::Instant;
