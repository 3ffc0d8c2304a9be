//! Handshake failures, which never reach ZAP: what they mean to each side, and their logs.

use super::quiet::Quiet;
use crate::error::Result;
use tracing::warn;

/// Watches the handshakes of a connecting CURVE socket, so that a peer the server refuses
/// can say why instead of only timing out. The socket's monitor must be stopped
/// (`sockets::stop_monitor`) before this is dropped.
pub(crate) struct HandshakeWatch {
    reader: zmq::Socket,
    refused: Option<String>,
}

impl HandshakeWatch {
    /// Starts watching `socket` (before it connects), whose context is `ctx`.
    pub(crate) fn start(ctx: &zmq::Context, socket: &zmq::Socket) -> Result<Self> {
        let events = HANDSHAKE_FAILURES
            | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32
            | zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32;
        Ok(Self {
            reader: crate::sockets::monitor(ctx, socket, events, "the handshake")?,
            refused: None,
        })
    }

    /// Why the latest handshake failed, if the latest one did.
    pub(crate) fn refusal(&mut self) -> Option<String> {
        while let Ok(event) = self.reader.recv_multipart(zmq::DONTWAIT) {
            if let Some((id, value)) = event.first().and_then(|f| crate::sockets::monitor_event(f))
            {
                self.refused = client_refusal(u32::from(id), value);
            }
        }
        self.refused.clone()
    }
}

/// What a failed handshake means to the connecting side.
fn client_refusal(event: u32, value: u32) -> Option<String> {
    Some(match event {
        e if e == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u32 => return None,
        e if e == zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as u32 => format!(
            "this client's key is not allowed there (ZAP status {value}): add its public key to the server's --curve-allow"
        ),
        e if e == zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u32
            && value == MECHANISM_MISMATCH =>
        {
            "one side uses CURVE and the other does not: give both the --curve-* flags, or neither".into()
        }
        e if e == zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u32 => {
            format!("protocol error {value:#x} in the handshake")
        }
        _ => "the server broke off the handshake: a CURVE server refuses plaintext clients, and one given the wrong --curve-server-key"
            .into(),
    })
}

/// ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH of zmq.h: a plaintext peer met a CURVE one.
const MECHANISM_MISMATCH: u32 = 0x1100_0002;
/// ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC of zmq.h: a hello that did not decrypt.
const CRYPTOGRAPHIC: u32 = 0x1100_0001;

/// Monitor events that mean a peer was refused before ZAP was asked.
pub(crate) const HANDSHAKE_FAILURES: i32 = zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32
    | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32;

/// Logs the handshake failures read off a CURVE server's monitor, rate-limited.
#[derive(Default)]
pub(crate) struct HandshakeLog {
    quiet: Quiet,
}

impl HandshakeLog {
    /// Logs `event` (a monitor message: event frame, then the address) if it is a
    /// handshake failure; other events are ignored.
    pub(crate) fn event<F: AsRef<[u8]>>(&mut self, event: &[F]) {
        if let [head, address, ..] = event
            && let Some((event, value)) = crate::sockets::monitor_event(head.as_ref())
        {
            let Some((kind, why)) = handshake_failure(event, value) else {
                return;
            };
            let address = String::from_utf8_lossy(address.as_ref());
            self.quiet.log(kind, || {
                warn!(%address, code = format!("{value:#x}"), "refused a connection: {why}");
            });
        }
    }
}

/// What a handshake failure a CURVE server's monitor reports means: plaintext peers and
/// peers with the wrong server key never reach ZAP. A plaintext peer shows either as a
/// mechanism mismatch or, when its side notices first and hangs up, as a broken-off
/// handshake. Returns a rate-limit kind (apart from the `REFUSED_*` ones) and the reason.
pub(super) fn handshake_failure(event: u16, value: u32) -> Option<(u16, &'static str)> {
    let event32 = u32::from(event);
    if event32 == zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as u32 {
        return Some((
            0x10,
            "the peer broke off the handshake (a plaintext peer, or a network error)",
        ));
    }
    if event32 != zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u32 {
        return None;
    }
    Some(match value {
        MECHANISM_MISMATCH => (
            0x11,
            "a plaintext peer, or one with another security mechanism",
        ),
        CRYPTOGRAPHIC => (
            0x12,
            "its hello did not decrypt: a peer given a wrong server key",
        ),
        _ => (0x13, "protocol error in the handshake"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::quiet::{REFUSED_KEY, REFUSED_MECHANISM};

    #[test]
    fn handshake_failures_are_told_apart_by_their_protocol_code() {
        let protocol = zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw();
        let broken = zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL.to_raw();
        let why = |e, v| handshake_failure(e, v).map(|(_, w)| w).unwrap_or_default();
        assert!(why(protocol, 0x1100_0002).contains("plaintext peer"));
        assert!(why(broken, 104).contains("plaintext peer"));
        assert!(why(protocol, 0x1100_0001).contains("wrong server key"));
        assert!(why(protocol, 0x1000_0013).contains("protocol error"));
        assert!(handshake_failure(zmq::SocketEvent::ACCEPTED.to_raw(), 7).is_none());
        // Each reason is rate-limited on its own, apart from the ZAP refusals.
        let kinds: std::collections::BTreeSet<u16> = [
            (protocol, 0x1100_0002),
            (protocol, 0x1100_0001),
            (protocol, 1),
            (broken, 0),
        ]
        .iter()
        .filter_map(|&(e, v)| handshake_failure(e, v).map(|(k, _)| k))
        .chain([REFUSED_KEY, REFUSED_MECHANISM])
        .collect();
        assert_eq!(kinds.len(), 6);
    }
}
