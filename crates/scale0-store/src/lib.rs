//! Durable storage for the scale0 broker.
//!
//! The broker's state machine emits journal ops (`scale0_proto::journal`); a driver applies
//! them to a [`Store`] and commits once per batch. [`LogStore`] is the store scale0 uses: a
//! segmented append-only log with a CRC per record, one `fdatasync` per commit, torn-tail
//! recovery and compaction. With the `compare` feature, [`compare`] adds the embedded stores
//! it was measured against, behind the same trait.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(feature = "compare")]
pub mod compare;
mod log;

pub use log::{LogOptions, LogStats, LogStore, OpenError, OpenReport};
pub use scale0_proto::journal::{MemoryStore, Store};
