//! Errors of the socket layer.

use scale0_proto::DecodeError;

/// Something the library could not do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// libzmq refused an operation, such as binding an endpoint in use.
    // The cause is part of the message, not a `source`: printing the chain would
    // repeat it.
    #[error("{what}: {error}")]
    Zmq {
        /// What was being done, with the endpoint where there is one.
        what: String,
        /// libzmq's error.
        error: zmq::Error,
    },
    /// A name that is not a valid MDP service name (1 to 255 bytes).
    #[error("invalid service name {0:?}: it must be 1 to 255 bytes")]
    InvalidServiceName(String),
    /// A config value that cannot work, such as zero workers.
    #[error("invalid setting: {0}")]
    InvalidConfig(String),
    /// The server refused the CURVE handshake, so no request could reach it.
    #[error("{endpoint} refused the CURVE handshake: {why}")]
    Refused {
        /// Where the client was connected.
        endpoint: String,
        /// What the handshake's failure says, and what to check.
        why: String,
    },
    /// No reply came back within the timeout, after every retry.
    #[error(
        "no reply from {endpoint} for service {service:?} after {attempts} attempt(s) of {timeout_ms} ms: is a broker running there, with a worker for that service?"
    )]
    Timeout {
        /// Where the client was connected.
        endpoint: String,
        /// The service asked for.
        service: String,
        /// How many times the request was sent.
        attempts: u32,
        /// How long each attempt waited.
        timeout_ms: u64,
    },
    /// The worker's handler failed and the worker said so in an error reply.
    #[error("service {service:?} failed: {message}")]
    Service {
        /// The service that failed.
        service: String,
        /// The worker's message.
        message: String,
    },
    /// The broker ended the request with an error status (`docs/protocol.md`).
    #[error("the broker refused or gave up on a request for {service:?}: {status}: {message}")]
    Rejected {
        /// The service asked for.
        service: String,
        /// Why, for programs.
        status: scale0_proto::mdp::Status,
        /// Why, for people.
        message: String,
    },
    /// The broker sent something that is not an MDP reply.
    #[error("malformed reply from the broker: {0}")]
    BadReply(DecodeError),
    /// A thread the library needs could not be started (the process is out of threads
    /// or memory).
    #[error("cannot start {what}: {error}")]
    Spawn {
        /// Which thread.
        what: &'static str,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// A thread of the library panicked.
    #[error("the {0} thread panicked")]
    Panicked(String),
    /// A part of the library stopped while it was still needed (its thread ended).
    #[error("{0} stopped unexpectedly")]
    Stopped(&'static str),
    /// A file could not be read or written.
    #[error("{what} {}: {error}", path.display())]
    File {
        /// What was being done, such as "reading the key file".
        what: &'static str,
        /// Which file.
        path: std::path::PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// An operating-system call failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The durable store could not be opened (in use, damaged, unreadable).
    #[error("durable store: {0}")]
    StoreOpen(scale0_store::OpenError),
    /// The durable store failed while running; nothing more is acknowledged.
    #[error("durable store in {dir}: {error}")]
    Store {
        /// The data directory.
        dir: String,
        /// The error.
        error: std::io::Error,
    },
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::BadReply(e)
    }
}

impl From<scale0_store::OpenError> for Error {
    fn from(e: scale0_store::OpenError) -> Self {
        Error::StoreOpen(e)
    }
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Turns a libzmq error into an [`Error`] that names what was being done.
pub trait ZmqContext<T> {
    /// Names the operation that failed.
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> ZmqContext<T> for std::result::Result<T, zmq::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|error| Error::Zmq {
            what: what(),
            error,
        })
    }
}
