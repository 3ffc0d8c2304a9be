//! The load generators behind `scale0 bench` and `scale0 swarm`, kept out of the library's
//! public surface: libzmq alone as the baseline and the same work through scale0, in one
//! process, so each result can be quoted as a ratio measured in the same run.

pub mod scenarios;
pub mod swarm;

pub use scenarios::{BrokerCase, Measurement};
pub use swarm::{SwarmConfig, SwarmReport, run_swarm};

/// Why a benchmark could not measure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The library failed (a socket, a server).
    #[error(transparent)]
    Scale0(#[from] scale0::Error),
    /// The run could not go as planned (peers that never connected, a garbled reply).
    #[error("{0}")]
    Failed(String),
    /// One of the benchmark's threads panicked.
    #[error("the {0} thread panicked")]
    Panicked(String),
    /// A thread could not be started.
    #[error("cannot start the {name} thread: {error}")]
    Spawn {
        /// Which thread.
        name: String,
        /// The operating system's error.
        error: std::io::Error,
    },
}

/// Result with [`BenchError`].
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
