//! Sans-IO core of scale0.
//!
//! Everything here is a deterministic state machine: inputs arrive through
//! `handle_*(now, ...)`, outputs are pulled with `poll_*()`, and time is a value
//! the caller passes in. No sockets, no clock, no files — which is what lets the
//! broker be tested with virtual time and fuzzed.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod broker;
mod dedupe;
pub mod journal;
pub mod mdp;
pub mod membership;
pub mod pipeline;
pub mod queue;
pub mod testkit;
mod time;
pub mod worker;

pub use mdp::{Body, DecodeError, Frames, PeerId, ServiceName};
pub use time::Instant;
