//! scale0: distributed work over ZeroMQ.
//!
//! This crate drives the sans-IO state machines of [`scale0_proto`] over real libzmq
//! sockets. It is the only crate that links libzmq. Every server is a value built from
//! a config that carries its endpoints, bound first (so callers can read back the real
//! ports) and then run until a [`Shutdown`] is triggered. The API is synchronous:
//! threads and `zmq::poll` loops, one owner per socket.

mod accepts;
mod broker;
mod bus;
mod client;
mod clock;
mod error;
mod ids;
mod latency;
mod limits;
mod metrics;
mod pipeline;
mod pool;
mod queue;
mod security;
mod shutdown;
pub mod sockets;
mod task;
mod worker;

pub use broker::{Broker, BrokerConfig, MAX_SPIN_US, watch_events};
pub use bus::{
    DEFAULT_MAX_SUBSCRIPTION_BYTES, Forwarder, ForwarderConfig, ForwarderStats, Node, NodeConfig,
    NodeUpdate,
};
pub use client::{Client, ClientConfig, ManySummary, Reply};
pub use error::{Error, Result, ZmqContext};
pub use latency::Latencies;
pub use limits::{fd_limits, raise_fd_limit};
pub use pipeline::{
    DEFAULT_SINK, DEFAULT_VENT, Sink, SinkConfig, SinkItem, SinkSummary, Source, TaskWorker,
    TaskWorkerConfig, TaskWorkerSummary, Vent, VentConfig,
};
pub use pool::{MapProgress, MapSummary, Pool, PoolConfig};
pub use queue::{Queue, QueueConfig, QueueEndpoints};
pub use security::{Allowlist, CurveClient, CurveServer, KeyPair, PublicKey};
pub use shutdown::Shutdown;
pub use task::{CommandTask, Task, TaskOutcome};
pub use worker::{Handler, HandlerError, Progress, Worker, WorkerConfig, WorkerSummary};

pub use scale0_proto as proto;

pub use scale0_proto::client::ERROR_REPLY_MARKER;
