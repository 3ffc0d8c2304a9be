//! Majordomo Protocol MDP/0.1 (ZeroMQ RFC 7) frames: typed values in, frames out.
//!
//! Frames are decoded here, once, at the edge; the rest of the core only sees
//! [`Message`], [`ClientMessage`] and [`WorkerCommand`]. Every shape that RFC 7 does not
//! allow is a [`DecodeError`], never a panic.

use bytes::Bytes;
use std::fmt;

/// One multipart ZeroMQ message, frame by frame.
pub type Frames = Vec<Bytes>;

/// The opaque application body of a request or reply: zero or more frames.
pub type Body = Vec<Bytes>;

/// Protocol header of messages from and to clients.
pub const CLIENT_HEADER: &[u8] = b"MDPC01";
/// Protocol header of messages from and to workers.
pub const WORKER_HEADER: &[u8] = b"MDPW01";
/// Service names starting with this prefix are answered by the broker itself (RFC 8).
pub const MMI_PREFIX: &[u8] = b"mmi.";
/// The longest service name accepted, in bytes.
pub const MAX_SERVICE_NAME_BYTES: usize = 255;
/// The longest peer address accepted, in bytes (the limit of a libzmq routing id).
pub const MAX_PEER_ID_BYTES: usize = 255;

/// Why a multipart message is not valid MDP/0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DecodeError {
    /// No routing-id frame, or an empty or over-long one.
    #[error("bad routing id frame")]
    BadRoutingId,
    /// The frame before the header is missing or not empty.
    #[error("missing empty delimiter frame")]
    NoDelimiter,
    /// The header frame is missing or is neither `MDPC01` nor `MDPW01`.
    #[error("unknown protocol header")]
    UnknownHeader,
    /// A required frame is absent.
    #[error("missing frame")]
    MissingFrame,
    /// More frames than the command allows.
    #[error("extra frames")]
    ExtraFrames,
    /// The worker command frame is not one byte between 0x01 and 0x05.
    #[error("unknown worker command")]
    UnknownCommand,
    /// A service name that is empty or longer than [`MAX_SERVICE_NAME_BYTES`].
    #[error("bad service name")]
    BadServiceName,
    /// A client address that is empty or longer than [`MAX_PEER_ID_BYTES`].
    #[error("bad client address")]
    BadAddress,
}

/// A service name: 1 to 255 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(Bytes);

impl ServiceName {
    /// Checks the length rules of a service name.
    pub fn new(name: impl Into<Bytes>) -> Result<Self, DecodeError> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_SERVICE_NAME_BYTES {
            return Err(DecodeError::BadServiceName);
        }
        Ok(Self(name))
    }

    /// The raw bytes of the name.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// True for the broker's own `mmi.*` namespace.
    pub fn is_mmi(&self) -> bool {
        self.0.starts_with(MMI_PREFIX)
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceName({self})")
    }
}

/// The address of a peer on the broker's ROUTER socket (its routing id): 1 to 255 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(Bytes);

impl PeerId {
    /// Checks the length rules of a routing id.
    pub fn new(id: impl Into<Bytes>) -> Result<Self, DecodeError> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_PEER_ID_BYTES {
            return Err(DecodeError::BadAddress);
        }
        Ok(Self(id))
    }

    /// The raw routing id.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A client request (client → broker) or reply (broker → client); the two share one shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientMessage {
    /// The service asked for, echoed in the reply.
    pub service: ServiceName,
    /// Request or reply body.
    pub body: Body,
}

/// The worker commands of RFC 7, in both directions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerCommand {
    /// 0x01, worker → broker: ready to serve `service`.
    Ready {
        /// The service the worker offers.
        service: ServiceName,
    },
    /// 0x02, broker → worker: a request from `client`.
    Request {
        /// Address of the client, to be echoed in the reply.
        client: PeerId,
        /// Request body.
        body: Body,
    },
    /// 0x03, worker → broker: the reply for `client`.
    Reply {
        /// Address of the client the request came from.
        client: PeerId,
        /// Reply body.
        body: Body,
    },
    /// 0x04, both ways: still alive.
    Heartbeat,
    /// 0x05, both ways: the connection is over.
    Disconnect,
}

impl WorkerCommand {
    /// The command byte on the wire.
    pub fn code(&self) -> u8 {
        match self {
            Self::Ready { .. } => 0x01,
            Self::Request { .. } => 0x02,
            Self::Reply { .. } => 0x03,
            Self::Heartbeat => 0x04,
            Self::Disconnect => 0x05,
        }
    }

    /// The command's name as RFC 7 spells it, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ready { .. } => "READY",
            Self::Request { .. } => "REQUEST",
            Self::Reply { .. } => "REPLY",
            Self::Heartbeat => "HEARTBEAT",
            Self::Disconnect => "DISCONNECT",
        }
    }
}

/// Any MDP/0.1 message, as seen after the empty delimiter frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Header `MDPC01`.
    Client(ClientMessage),
    /// Header `MDPW01`.
    Worker(WorkerCommand),
}

impl Message {
    /// Decodes frames as a DEALER sees them: `[empty, header, ...]`.
    pub fn decode(frames: Frames) -> Result<Self, DecodeError> {
        let mut it = frames.into_iter();
        match it.next() {
            Some(f) if f.is_empty() => {}
            _ => return Err(DecodeError::NoDelimiter),
        }
        Self::decode_after_delimiter(it)
    }

    /// Decodes frames as a REQ socket sees them: `[header, ...]` (REQ strips the delimiter).
    pub fn decode_after_delimiter(
        mut it: impl Iterator<Item = Bytes>,
    ) -> Result<Self, DecodeError> {
        let header = it.next().ok_or(DecodeError::UnknownHeader)?;
        if header == CLIENT_HEADER {
            let service = ServiceName::new(it.next().ok_or(DecodeError::MissingFrame)?)?;
            return Ok(Self::Client(ClientMessage {
                service,
                body: it.by_ref().collect(),
            }));
        }
        if header != WORKER_HEADER {
            return Err(DecodeError::UnknownHeader);
        }
        let command = it.next().ok_or(DecodeError::MissingFrame)?;
        let code = match command.as_ref() {
            [code] => *code,
            _ => return Err(DecodeError::UnknownCommand),
        };
        let command = match code {
            0x01 => WorkerCommand::Ready {
                service: ServiceName::new(it.next().ok_or(DecodeError::MissingFrame)?)?,
            },
            0x02 | 0x03 => {
                let client = PeerId::new(it.next().ok_or(DecodeError::MissingFrame)?)?;
                match it.next() {
                    Some(f) if f.is_empty() => {}
                    Some(_) => return Err(DecodeError::NoDelimiter),
                    None => return Err(DecodeError::MissingFrame),
                }
                let body = it.by_ref().collect();
                if code == 0x02 {
                    WorkerCommand::Request { client, body }
                } else {
                    WorkerCommand::Reply { client, body }
                }
            }
            0x04 => WorkerCommand::Heartbeat,
            0x05 => WorkerCommand::Disconnect,
            _ => return Err(DecodeError::UnknownCommand),
        };
        // READY, HEARTBEAT and DISCONNECT have a fixed number of frames.
        if !matches!(
            command,
            WorkerCommand::Request { .. } | WorkerCommand::Reply { .. }
        ) && it.next().is_some()
        {
            return Err(DecodeError::ExtraFrames);
        }
        Ok(Self::Worker(command))
    }

    /// Encodes as a DEALER sends it: `[empty, header, ...]`.
    pub fn encode(&self) -> Frames {
        let mut out = Vec::with_capacity(4 + self.body_len());
        out.push(Bytes::new());
        self.encode_into(&mut out);
        out
    }

    /// Encodes for a ROUTER to send to `peer`: `[peer, empty, header, ...]`.
    pub fn encode_to(&self, peer: &PeerId) -> Frames {
        let mut out = Vec::with_capacity(5 + self.body_len());
        out.push(peer.0.clone());
        out.push(Bytes::new());
        self.encode_into(&mut out);
        out
    }

    fn body_len(&self) -> usize {
        match self {
            Self::Client(m) => m.body.len(),
            Self::Worker(
                WorkerCommand::Request { body, .. } | WorkerCommand::Reply { body, .. },
            ) => body.len(),
            Self::Worker(_) => 0,
        }
    }

    fn encode_into(&self, out: &mut Frames) {
        match self {
            Self::Client(m) => {
                out.push(Bytes::from_static(CLIENT_HEADER));
                out.push(m.service.0.clone());
                out.extend(m.body.iter().cloned());
            }
            Self::Worker(cmd) => {
                out.push(Bytes::from_static(WORKER_HEADER));
                out.push(Bytes::copy_from_slice(&[cmd.code()]));
                match cmd {
                    WorkerCommand::Ready { service } => out.push(service.0.clone()),
                    WorkerCommand::Request { client, body }
                    | WorkerCommand::Reply { client, body } => {
                        out.push(client.0.clone());
                        out.push(Bytes::new());
                        out.extend(body.iter().cloned());
                    }
                    WorkerCommand::Heartbeat | WorkerCommand::Disconnect => {}
                }
            }
        }
    }
}

/// Splits a message received on a ROUTER into the sender's routing id and the rest.
pub fn split_routing_id(mut frames: Frames) -> Result<(PeerId, Frames), DecodeError> {
    if frames.is_empty() {
        return Err(DecodeError::BadRoutingId);
    }
    let rest = frames.split_off(1);
    let id = frames.pop().ok_or(DecodeError::BadRoutingId)?;
    let peer = PeerId::new(id).map_err(|_| DecodeError::BadRoutingId)?;
    Ok((peer, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    fn svc(s: &str) -> ServiceName {
        ServiceName::new(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn encodes_client_request_as_rfc7_says() {
        let m = Message::Client(ClientMessage {
            service: svc("echo"),
            body: vec![b(b"hello")],
        });
        assert_eq!(
            m.encode(),
            vec![b(b""), b(b"MDPC01"), b(b"echo"), b(b"hello")]
        );
    }

    #[test]
    fn encodes_worker_request_with_envelope() {
        let m = Message::Worker(WorkerCommand::Request {
            client: PeerId::new(b(b"C")).unwrap(),
            body: vec![b(b"x"), b(b"y")],
        });
        let peer = PeerId::new(b(b"W")).unwrap();
        assert_eq!(
            m.encode_to(&peer),
            vec![
                b(b"W"),
                b(b""),
                b(b"MDPW01"),
                b(&[2]),
                b(b"C"),
                b(b""),
                b(b"x"),
                b(b"y")
            ]
        );
    }

    #[test]
    fn decodes_a_req_client_message_without_delimiter() {
        let m = Message::decode_after_delimiter(vec![b(b"MDPC01"), b(b"svc")].into_iter());
        assert_eq!(
            m,
            Ok(Message::Client(ClientMessage {
                service: svc("svc"),
                body: vec![]
            }))
        );
    }

    #[test]
    fn rejects_every_malformed_shape() {
        let cases: Vec<(Frames, DecodeError)> = vec![
            (vec![], DecodeError::NoDelimiter),
            (vec![b(b"x")], DecodeError::NoDelimiter),
            (vec![b(b"")], DecodeError::UnknownHeader),
            (vec![b(b""), b(b"MDPC02")], DecodeError::UnknownHeader),
            (vec![b(b""), b(b"MDPC01")], DecodeError::MissingFrame),
            (
                vec![b(b""), b(b"MDPC01"), b(b"")],
                DecodeError::BadServiceName,
            ),
            (
                vec![b(b""), b(b"MDPC01"), Bytes::from(vec![b'a'; 256])],
                DecodeError::BadServiceName,
            ),
            (vec![b(b""), b(b"MDPW01")], DecodeError::MissingFrame),
            (
                vec![b(b""), b(b"MDPW01"), b(&[9])],
                DecodeError::UnknownCommand,
            ),
            (
                vec![b(b""), b(b"MDPW01"), b(&[0])],
                DecodeError::UnknownCommand,
            ),
            (
                vec![b(b""), b(b"MDPW01"), b(&[1, 1])],
                DecodeError::UnknownCommand,
            ),
            (
                vec![b(b""), b(b"MDPW01"), b(b"")],
                DecodeError::UnknownCommand,
            ),
            (
                vec![b(b""), b(b"MDPW01"), b(&[1])],
                DecodeError::MissingFrame,
            ),
            (
                vec![b(b""), b(b"MDPW01"), b(&[1]), b(b"")],
                DecodeError::BadServiceName,
            ),
            (
                vec![b(b""), b(b"MDPW01"), b(&[1]), b(b"s"), b(b"extra")],
                DecodeError::ExtraFrames,
            ),
            (
                vec![b(b""), b(b"MDPW01"), b(&[3])],
                DecodeError::MissingFrame,
            ),
            (
                vec![b(b""), b(b"MDPW01"), b(&[3]), b(b"")],
                DecodeError::BadAddress,
            ),
            (
                vec![b(b""), b(b"MDPW01"), b(&[3]), b(b"c")],
                DecodeError::MissingFrame,
            ),
            (
                vec![b(b""), b(b"MDPW01"), b(&[3]), b(b"c"), b(b"not-empty")],
                DecodeError::NoDelimiter,
            ),
            (
                vec![b(b""), b(b"MDPW01"), b(&[4]), b(b"x")],
                DecodeError::ExtraFrames,
            ),
            (
                vec![b(b""), b(b"MDPW01"), b(&[5]), b(b"x")],
                DecodeError::ExtraFrames,
            ),
        ];
        for (frames, want) in cases {
            assert_eq!(Message::decode(frames.clone()), Err(want), "{frames:?}");
        }
    }

    #[test]
    fn routing_id_is_checked() {
        assert_eq!(split_routing_id(vec![]), Err(DecodeError::BadRoutingId));
        assert_eq!(
            split_routing_id(vec![b(b"")]),
            Err(DecodeError::BadRoutingId)
        );
        let (peer, rest) = split_routing_id(vec![b(b"p"), b(b""), b(b"x")]).unwrap();
        assert_eq!(peer.as_bytes(), &b(b"p"));
        assert_eq!(rest, vec![b(b""), b(b"x")]);
    }

    fn frame() -> impl Strategy<Value = Bytes> + Clone {
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
    }

    fn name() -> impl Strategy<Value = Bytes> + Clone {
        prop::collection::vec(any::<u8>(), 1..=255).prop_map(Bytes::from)
    }

    fn message() -> impl Strategy<Value = Message> {
        let body = prop::collection::vec(frame(), 0..4);
        prop_oneof![
            (name(), body.clone()).prop_map(|(s, body)| Message::Client(ClientMessage {
                service: ServiceName::new(s).unwrap(),
                body
            })),
            name().prop_map(|s| Message::Worker(WorkerCommand::Ready {
                service: ServiceName::new(s).unwrap()
            })),
            (name(), body.clone()).prop_map(|(c, body)| Message::Worker(WorkerCommand::Request {
                client: PeerId::new(c).unwrap(),
                body
            })),
            (name(), body).prop_map(|(c, body)| Message::Worker(WorkerCommand::Reply {
                client: PeerId::new(c).unwrap(),
                body
            })),
            Just(Message::Worker(WorkerCommand::Heartbeat)),
            Just(Message::Worker(WorkerCommand::Disconnect)),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(m in message()) {
            prop_assert_eq!(Message::decode(m.encode()), Ok(m.clone()));
            let peer = PeerId::new(b(b"peer")).unwrap();
            let (p, rest) = split_routing_id(m.encode_to(&peer)).unwrap();
            prop_assert_eq!(p, peer);
            prop_assert_eq!(Message::decode(rest), Ok(m));
        }

        #[test]
        fn arbitrary_frames_never_panic(frames in prop::collection::vec(frame(), 0..8)) {
            let _ = split_routing_id(frames.clone()).map(|(_, rest)| Message::decode(rest));
            let _ = Message::decode(frames);
        }
    }
}
