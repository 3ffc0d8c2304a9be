//! The few socket chores every loop shares: one process-wide context, multipart
//! receive into `Bytes`, multipart send.

use crate::error::{Result, ZmqContext};
use bytes::Bytes;
use scale0_proto::Frames;
use std::sync::OnceLock;

/// The process-wide ZeroMQ context; `inproc` endpoints only connect within one.
pub(crate) fn context() -> zmq::Context {
    static CONTEXT: OnceLock<zmq::Context> = OnceLock::new();
    CONTEXT.get_or_init(zmq::Context::new).clone()
}

/// Receives one whole multipart message without blocking; `Ok(None)` when none is ready.
pub(crate) fn try_recv(socket: &zmq::Socket) -> Result<Option<Frames>> {
    match socket.recv_multipart(zmq::DONTWAIT) {
        Ok(parts) => Ok(Some(parts.into_iter().map(Bytes::from).collect())),
        Err(zmq::Error::EAGAIN) => Ok(None),
        Err(e) => Err(e).context(|| "receiving a message".into()),
    }
}

/// Sends a multipart message without blocking.
pub(crate) fn send(socket: &zmq::Socket, frames: &Frames) -> std::result::Result<(), zmq::Error> {
    socket.send_multipart(frames.iter().map(|f| &f[..]), zmq::DONTWAIT)
}

/// Binds `endpoint` and returns the endpoint actually bound (the real port for `:*`).
pub(crate) fn bind(socket: &zmq::Socket, endpoint: &str) -> Result<String> {
    socket
        .bind(endpoint)
        .context(|| format!("binding {endpoint}"))?;
    let bound = socket
        .get_last_endpoint()
        .context(|| format!("reading the endpoint bound for {endpoint}"))?;
    Ok(bound.unwrap_or_else(|raw| String::from_utf8_lossy(&raw).into_owned()))
}
