//! The ZAP handler (RFC 27): a thread per context that answers libzmq from an allowlist.

use super::handshake::{HANDSHAKE_FAILURES, HandshakeLog};
use super::quiet::{Quiet, REFUSED_KEY, REFUSED_MECHANISM};
use super::{Allowlist, PublicKey};
use crate::error::{Error, Result, ZmqContext};
use bytes::Bytes;
use scale0_proto::zap::{self, DecodeError, Mechanism, Reply, Status};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use tracing::{info, warn};

/// How often the handler thread looks at its stop flag, in milliseconds.
const ZAP_POLL_MS: i64 = 100;

/// The ZAP handler of one context: a thread answering libzmq's authentication requests
/// from an allowlist until dropped.
pub(crate) struct ZapHandler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ZapHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZapHandler")
    }
}

impl ZapHandler {
    /// Binds the ZAP endpoint of `ctx` (one handler per context) and starts answering;
    /// also logs the handshake failures of the `watched` server sockets, which must
    /// be stopped with [`ZapHandler::stop`] before they close.
    pub(crate) fn start(
        ctx: &zmq::Context,
        allow: Arc<Allowlist>,
        watched: &[&zmq::Socket],
    ) -> Result<Self> {
        let socket = ctx
            .socket(zmq::REP)
            .context(|| "creating the ZAP handler's socket".into())?;
        socket.set_linger(0).context(|| "setting LINGER".into())?;
        socket
            .bind(zap::ENDPOINT)
            .context(|| format!("binding {}", zap::ENDPOINT))?;
        // Refusals by the allowlist are logged by `answer`, with the key.
        let monitors = watched
            .iter()
            .map(|s| {
                let events = HANDSHAKE_FAILURES | crate::accepts::ACCEPT_EVENTS;
                crate::sockets::monitor(ctx, s, events, "handshakes")
            })
            .collect::<Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("scale0-zap".into())
            .spawn(move || serve(&socket, &monitors, &allow, &flag))
            .map_err(|error| Error::Spawn {
                what: "the ZAP thread",
                error,
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops watching `watched` (see `sockets::stop_monitor`), then the thread.
    pub(crate) fn stop(self, watched: &[&zmq::Socket]) {
        for s in watched {
            crate::sockets::stop_monitor(s);
        }
        drop(self);
    }
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: &zmq::Socket, monitors: &[zmq::Socket], allow: &Allowlist, stop: &AtomicBool) {
    let mut quiet = Quiet::default();
    let mut handshakes = HandshakeLog::default();
    let mut accepts = crate::accepts::AcceptLog::default();
    while !stop.load(Ordering::Relaxed) {
        let mut items = vec![socket.as_poll_item(zmq::POLLIN)];
        items.extend(monitors.iter().map(|m| m.as_poll_item(zmq::POLLIN)));
        if crate::sockets::poll(&mut items, ZAP_POLL_MS).is_err() {
            return;
        }
        let ready: Vec<bool> = items.iter().map(zmq::PollItem::is_readable).collect();
        for (m, _) in monitors.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
            while let Ok(event) = m.recv_multipart(zmq::DONTWAIT) {
                if let Some((id, value)) =
                    event.first().and_then(|f| crate::sockets::monitor_event(f))
                {
                    accepts.event(std::time::Instant::now(), id, value);
                }
                handshakes.event(&event);
            }
        }
        if !ready[0] {
            continue;
        }
        let Ok(request) = socket.recv_multipart(0) else {
            return;
        };
        let reply = answer(&request, allow, &mut quiet);
        if socket.send_multipart(reply, 0).is_err() {
            return;
        }
    }
}

/// The reply to one ZAP request (RFC 27): `200` with the key's name as User-Id for an
/// allowed CURVE key, `400` for anything else, `500` for what is not a request.
fn answer(request: &[Vec<u8>], allow: &Allowlist, quiet: &mut Quiet) -> Vec<Vec<u8>> {
    let frames: Vec<Bytes> = request.iter().map(|f| Bytes::copy_from_slice(f)).collect();
    let reply = match zap::Request::decode(&frames) {
        Ok(request) => authenticate(&request, allow, quiet),
        Err(e @ (DecodeError::UnsupportedVersion | DecodeError::MissingFrame)) => {
            warn!(error = %e, "refused a connection: malformed ZAP request");
            let text = "unsupported ZAP version";
            Reply::new(zap::request_id(&frames), Status::InternalError, text)
        }
        Err(e) => {
            let id = zap::request_id(&frames);
            if e == DecodeError::BadCredentials("CURVE") {
                quiet.log(REFUSED_KEY, || {
                    warn!("refused a connection: a CURVE key that is not 32 bytes");
                });
                Reply::new(id, Status::AuthFailure, "key not allowed")
            } else {
                quiet.log(REFUSED_MECHANISM, || {
                    warn!(error = %e, "refused a connection: CURVE required");
                });
                Reply::new(id, Status::AuthFailure, "CURVE required")
            }
        }
    };
    reply.encode().into_iter().map(Vec::from).collect()
}

/// The answer to a well-formed request: only an allowed CURVE key gets in.
fn authenticate(request: &zap::Request, allow: &Allowlist, quiet: &mut Quiet) -> Reply {
    let address = String::from_utf8_lossy(&request.address);
    let id = request.id.clone();
    let Mechanism::Curve { public_key } = request.mechanism else {
        quiet.log(REFUSED_MECHANISM, || {
            warn!(%address, mechanism = request.mechanism.name(), "refused a connection: CURVE required");
        });
        return Reply::new(id, Status::AuthFailure, "CURVE required");
    };
    let key = PublicKey(public_key);
    match allow.name(&key) {
        Some(name) => {
            info!(%address, key = name, "client authenticated");
            let mut reply = Reply::new(id, Status::Success, "OK");
            reply.user_id = Bytes::from(name.to_string());
            reply
        }
        None => {
            quiet.log(REFUSED_KEY, || {
                warn!(%address, key = %key.z85(), "refused a connection: key not in the allowlist");
            });
            Reply::new(id, Status::AuthFailure, "key not allowed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::KeyPair;

    fn answer_once(request: &[Vec<u8>], allow: &Allowlist) -> Vec<Vec<u8>> {
        answer(request, allow, &mut Quiet::default())
    }

    #[test]
    fn zap_answers_by_the_allowlist() {
        let pair = KeyPair::generate().unwrap();
        let mut allow = Allowlist::default();
        allow.add(pair.public, "alice");
        let request = |mechanism: &[u8], key: &[u8]| {
            vec![
                b"1.0".to_vec(),
                b"7".to_vec(),
                b"scale0".to_vec(),
                b"127.0.0.1".to_vec(),
                Vec::new(),
                mechanism.to_vec(),
                key.to_vec(),
            ]
        };
        let ok = answer_once(&request(b"CURVE", &pair.public.0), &allow);
        assert_eq!(ok[1], b"7");
        assert_eq!(ok[2], b"200");
        assert_eq!(ok[4], b"alice");
        let stranger = KeyPair::generate().unwrap();
        assert_eq!(
            answer_once(&request(b"CURVE", &stranger.public.0), &allow)[2],
            b"400"
        );
        assert_eq!(answer_once(&request(b"NULL", b""), &allow)[2], b"400");
        assert_eq!(answer_once(&request(b"CURVE", b"short"), &allow)[2], b"400");
        assert_eq!(answer_once(&[b"2.0".to_vec()], &allow)[2], b"500");
        assert_eq!(answer_once(&[], &allow)[2], b"500");
    }
}
