//! scale0: distributed work over ZeroMQ.
//!
//! This crate drives the sans-IO state machines of [`scale0_proto`] over real libzmq
//! sockets. It is the only crate that links libzmq. Every server is a value built from
//! a config that carries its endpoints, bound first (so callers can read back the real
//! ports) and then run until a [`Shutdown`] is triggered. The API is synchronous:
//! threads and `zmq::poll` loops, one owner per socket.

#![warn(missing_docs)]

mod accepts;
mod broker;
mod bus;
mod client;
mod clock;
mod cluster;
pub mod endpoints;
mod error;
pub mod http;
mod ids;
mod latency;
mod limits;
mod map;
mod metrics;
mod pipeline;
mod queue;
mod security;
mod shutdown;
pub mod sockets;
mod syncer;
mod task;
mod worker;

pub use broker::{Broker, BrokerConfig, DEFAULT_GRACE_MS, MAX_SPIN_US, watch_events};
pub use bus::{
    DEFAULT_MAX_SUBSCRIPTION_BYTES, Forwarder, ForwarderConfig, ForwarderStats, Node, NodeConfig,
    NodeUpdate,
};
pub use client::{Client, ClientConfig, ManySummary, Reply};
pub use cluster::ClusterConfig;
pub use error::{Error, Result, ZmqContext};
pub use latency::Latencies;
pub use limits::{fd_limits, raise_fd_limit};
pub use map::{Map, MapConfig, MapProgress, MapSummary};
pub use pipeline::{
    Sink, SinkConfig, SinkItem, SinkSummary, Source, TaskWorker, TaskWorkerConfig,
    TaskWorkerSummary, Vent, VentConfig,
};
pub use queue::{Queue, QueueConfig, QueueEndpoints};
pub use security::{Allowlist, CurveClient, CurveServer, KeyPair, PublicKey};
pub use shutdown::Shutdown;
pub use task::{CommandTask, Task, TaskOutcome};
pub use worker::{Handler, HandlerError, Progress, Worker, WorkerConfig, WorkerSummary};

pub use scale0_proto as proto;

pub use scale0_proto::client::ERROR_REPLY_MARKER;
