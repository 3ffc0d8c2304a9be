//! CURVE: key files, allowlists and the ZAP handler that enforces them.
//!
//! A listening socket with [`CurveServer`] encrypts every connection and asks the ZAP
//! handler (RFC 27, `inproc://zeromq.zap.01` of its context) whether the client's public
//! key may connect; the handler answers from the allowlist and names the key in the
//! User-Id it returns, which the broker reads off each message to apply per-key service
//! rules. Connecting sockets take a [`CurveClient`]: the server's public key and their own
//! pair. Refusals are logged here (unknown key) or from the socket monitor (plaintext
//! peer, wrong server key: the handshake fails before ZAP is asked).
//!
//! Key files are text: `NAME.key` holds `public-key = "<Z85>"`, `NAME.key_secret` holds
//! both keys (the layout czmq's certificates use, so either tool reads the other's); a
//! bare 40-character Z85 line is read as a public key too.

mod allowlist;
mod handshake;
mod keys;
mod quiet;
mod zap_handler;

pub use allowlist::Allowlist;
pub(crate) use handshake::{HANDSHAKE_FAILURES, HandshakeLog, HandshakeWatch};
pub use keys::{KeyPair, PublicKey};
pub(crate) use zap_handler::ZapHandler;

use crate::error::{Error, Result, ZmqContext};
use std::sync::Arc;

/// CURVE for a listening socket: its key pair and who may connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurveServer {
    /// The server's pair; clients are given its public half.
    pub pair: KeyPair,
    /// The client keys let in.
    pub allow: Arc<Allowlist>,
}

/// CURVE for a connecting socket: the server's public key and the peer's own pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurveClient {
    /// The public key of the server connected to.
    pub server: PublicKey,
    /// This peer's pair; the server's allowlist must hold its public half.
    pub pair: KeyPair,
}

impl CurveServer {
    /// Makes `socket` a CURVE server checked by the ZAP handler of its context.
    pub(crate) fn apply(&self, socket: &zmq::Socket) -> Result<()> {
        socket
            .set_curve_server(true)
            .context(|| "setting CURVE_SERVER".into())?;
        socket
            .set_curve_secretkey(&self.pair.secret)
            .context(|| "setting CURVE_SECRETKEY".into())?;
        // A domain makes libzmq ask ZAP for every connection, and names us in its logs.
        socket
            .set_zap_domain("scale0")
            .context(|| "setting ZAP_DOMAIN".into())
    }
}

impl CurveClient {
    /// Makes `socket` a CURVE client of the server whose key this holds.
    pub(crate) fn apply(&self, socket: &zmq::Socket) -> Result<()> {
        socket
            .set_curve_serverkey(&self.server.0)
            .context(|| "setting CURVE_SERVERKEY".into())?;
        socket
            .set_curve_publickey(&self.pair.public.0)
            .context(|| "setting CURVE_PUBLICKEY".into())?;
        socket
            .set_curve_secretkey(&self.pair.secret)
            .context(|| "setting CURVE_SECRETKEY".into())
    }
}

/// Applies an optional client config.
pub(crate) fn apply_client(socket: &zmq::Socket, curve: Option<&CurveClient>) -> Result<()> {
    curve.map_or(Ok(()), |c| c.apply(socket))
}

/// The context for a server's sockets: its own with CURVE (a context has one ZAP
/// handler, so two CURVE servers in one process must not share one), else the
/// process-wide one.
pub(crate) fn server_context(curve: Option<&CurveServer>) -> zmq::Context {
    match curve {
        Some(_) => zmq::Context::new(),
        None => crate::sockets::context(),
    }
}

/// Refuses CURVE on `inproc://` endpoints, which never handshake.
pub(crate) fn check_endpoints<'a>(
    curve: Option<&CurveServer>,
    endpoints: impl IntoIterator<Item = &'a String>,
) -> Result<()> {
    if curve.is_some() && endpoints.into_iter().any(|e| e.starts_with("inproc://")) {
        return Err(Error::InvalidConfig(
            "CURVE secures tcp:// and ipc:// endpoints; inproc:// peers share the process, drop --curve-* or the inproc endpoint".into(),
        ));
    }
    Ok(())
}

/// Puts CURVE on every one of `sockets` (before they bind) and starts the ZAP handler of
/// `ctx`, which also logs the handshake failures of `watched` (those of `sockets` that
/// have no monitor of their own: a socket has one monitor at most). `None` without CURVE.
pub(crate) fn secure(
    curve: Option<&CurveServer>,
    ctx: &zmq::Context,
    sockets: &[&zmq::Socket],
    watched: &[&zmq::Socket],
) -> Result<Option<ZapHandler>> {
    let Some(curve) = curve else {
        return Ok(None);
    };
    for s in sockets {
        curve.apply(s)?;
    }
    ZapHandler::start(ctx, Arc::clone(&curve.allow), watched).map(Some)
}
