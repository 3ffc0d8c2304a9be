//! Majordomo frames, MDP/0.1 (ZeroMQ RFC 7) and MDP/0.2 (RFC 18) in both of its framings,
//! and the scale0 native client protocol (`docs/protocol.md`): typed values in, frames out.
//!
//! Frames are decoded here, once, at the edge; the rest of the core only sees
//! [`Message`], [`ClientMessage`] and [`WorkerCommand`]. Every shape those specifications
//! do not allow is a [`DecodeError`], never a panic.

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

/// Why a multipart message is not a valid Majordomo (MDP/0.1 or 0.2) or native message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DecodeError {
    /// No routing-id frame, or an empty or over-long one.
    #[error("bad routing id frame")]
    BadRoutingId,
    /// The frame before the header is missing or not empty.
    #[error("missing empty delimiter frame")]
    NoDelimiter,
    /// The header frame is missing or is none of `MDPC01`, `MDPW01`, `MDPC02`, `MDPW02`
    /// and `S0C1`.
    #[error("unknown protocol header")]
    UnknownHeader,
    /// A required frame is absent.
    #[error("missing frame")]
    MissingFrame,
    /// More frames than the command allows.
    #[error("extra frames")]
    ExtraFrames,
    /// The command frame is not one byte naming a command of its protocol and version
    /// (for workers 0x01 to 0x05 in MDP/0.1, 0x01 to 0x06 in MDP/0.2).
    #[error("unknown worker command")]
    UnknownCommand,
    /// A service name that is empty or longer than [`MAX_SERVICE_NAME_BYTES`].
    #[error("bad service name")]
    BadServiceName,
    /// A client address that is empty or longer than [`MAX_PEER_ID_BYTES`].
    #[error("bad client address")]
    BadAddress,
    /// A native request id that is empty or longer than [`MAX_REQUEST_ID_BYTES`].
    #[error("bad request id")]
    BadRequestId,
    /// A native deadline frame that is not empty or ASCII decimal digits.
    #[error("bad deadline")]
    BadDeadline,
    /// A native ERROR whose status word is not one of the documented ones.
    #[error("unknown status")]
    UnknownStatus,
    /// A READY capacity frame that is not `capacity=N` with N from 1 to
    /// [`MAX_WORKER_CAPACITY`].
    #[error("bad capacity")]
    BadCapacity,
    /// A bundle ([`crate::bundle`]) that does not decode.
    #[error("bad bundle")]
    BadBundle,
}

impl From<crate::bundle::BundleError> for DecodeError {
    fn from(_: crate::bundle::BundleError) -> Self {
        Self::BadBundle
    }
}

/// `bytes` if it is 1 to `max` bytes long, else `err`: the rule every name and id here follows.
fn bounded(bytes: Bytes, max: usize, err: DecodeError) -> Result<Bytes, DecodeError> {
    if bytes.is_empty() || bytes.len() > max {
        return Err(err);
    }
    Ok(bytes)
}

/// Whether a message (after its routing id) is libzmq's notice that the peer's connection
/// ended (ZMQ_ROUTER_NOTIFY): one empty frame, which no protocol of ours sends.
pub fn is_disconnect_notice(rest: &[Bytes]) -> bool {
    matches!(rest, [only] if only.is_empty())
}

/// A service name: 1 to 255 bytes of UTF-8 (RFC 7 calls it a printable string; names that
/// are not text could only be queued under a name nobody can read back).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(Bytes);

impl ServiceName {
    /// Checks the rules of a service name: its length, and that it is UTF-8.
    pub fn new(name: impl Into<Bytes>) -> Result<Self, DecodeError> {
        let name = bounded(
            name.into(),
            MAX_SERVICE_NAME_BYTES,
            DecodeError::BadServiceName,
        )?;
        if std::str::from_utf8(&name).is_err() {
            return Err(DecodeError::BadServiceName);
        }
        Ok(Self(name))
    }

    /// A placeholder for log lines about a request whose service is not at hand.
    pub(crate) fn unnamed() -> Self {
        Self(Bytes::from_static(b"(any)"))
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
    /// Whether libzmq made this id up (its ids start with a zero byte; ids a peer sets
    /// itself may not). It gives out each once per process, and the same ones again in
    /// every new process, so such an id names nobody in particular after a restart.
    pub fn is_generated(&self) -> bool {
        self.0.first() == Some(&0)
    }

    /// Checks the length rules of a routing id.
    pub fn new(id: impl Into<Bytes>) -> Result<Self, DecodeError> {
        bounded(id.into(), MAX_PEER_ID_BYTES, DecodeError::BadAddress).map(Self)
    }

    /// The raw routing id.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The address a broker gives request number `n` to a worker with credit: `s0` and
    /// `n`, 10 bytes (always valid).
    pub(crate) fn tag(n: u64) -> Self {
        let mut b = Vec::with_capacity(10);
        b.extend_from_slice(b"s0");
        b.extend_from_slice(&n.to_be_bytes());
        Self(Bytes::from(b))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
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

/// Header of MDP/0.2 client messages (RFC 18).
pub const CLIENT_HEADER_V2: &[u8] = b"MDPC02";
/// Header of MDP/0.2 worker messages (RFC 18).
pub const WORKER_HEADER_V2: &[u8] = b"MDPW02";
/// Header of the scale0 native client protocol, version 1 (`docs/protocol.md`).
pub const NATIVE_HEADER: &[u8] = b"S0C1";
/// The most requests a worker may ask to hold at once (the READY `capacity=N` frame).
pub const MAX_WORKER_CAPACITY: u32 = 1024;
/// The READY frame after `capacity=N` of a worker that reads bundles.
pub const BUNDLE_OPTION: &[u8] = b"bundle=1";
/// The longest request id of the native protocol, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// The worker commands of RFC 7 and RFC 18, in both directions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerCommand {
    /// Worker → broker: ready to serve `service`.
    Ready {
        /// The service the worker offers.
        service: ServiceName,
        /// Requests it takes at once (scale0's extension: a `capacity=N` frame after the
        /// service name, absent for 1). Above 1 the broker sends it up to this many before
        /// a reply, each with an address of the broker's making to echo.
        capacity: u32,
        /// It reads bundles (a `bundle=1` frame after the capacity): the broker may send
        /// it many messages as one ([`crate::bundle`]).
        bundle: bool,
    },
    /// Broker → worker: a request from `client`.
    Request {
        /// Address of the client, to be echoed in the reply.
        client: PeerId,
        /// Request body.
        body: Body,
    },
    /// Worker → broker: an intermediate reply (MDP/0.2 only; MDP/0.1 has no such command).
    Partial {
        /// Address of the client the request came from.
        client: PeerId,
        /// Reply body.
        body: Body,
    },
    /// Worker → broker: the reply (REPLY in MDP/0.1, FINAL in MDP/0.2).
    Reply {
        /// Address of the client the request came from.
        client: PeerId,
        /// Reply body.
        body: Body,
    },
    /// Both ways: still alive.
    Heartbeat,
    /// Both ways: the connection is over.
    Disconnect,
}

impl WorkerCommand {
    /// The command byte on the wire in `version`; `None` for PARTIAL in MDP/0.1.
    pub fn code(&self, version: Version) -> Option<u8> {
        let code = match (self, version) {
            (Self::Ready { .. }, _) => 0x01,
            (Self::Request { .. }, _) => 0x02,
            (Self::Partial { .. }, Version::V1) => return None,
            (Self::Partial { .. }, Version::V2 | Version::V2Delimited) => 0x03,
            (Self::Reply { .. }, Version::V1) => 0x03,
            (Self::Reply { .. }, Version::V2 | Version::V2Delimited) => 0x04,
            (Self::Heartbeat, Version::V1) => 0x04,
            (Self::Heartbeat, Version::V2 | Version::V2Delimited) => 0x05,
            (Self::Disconnect, Version::V1) => 0x05,
            (Self::Disconnect, Version::V2 | Version::V2Delimited) => 0x06,
        };
        Some(code)
    }

    /// The command's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ready { .. } => "READY",
            Self::Request { .. } => "REQUEST",
            Self::Partial { .. } => "PARTIAL",
            Self::Reply { .. } => "REPLY",
            Self::Heartbeat => "HEARTBEAT",
            Self::Disconnect => "DISCONNECT",
        }
    }
}

/// Which Majordomo version a peer speaks, and how it frames it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// MDP/0.1, RFC 7: messages start with an empty frame.
    V1,
    /// MDP/0.2, RFC 18: no empty frame, PARTIAL and FINAL replies.
    V2,
    /// MDP/0.2 as majortomo and zeromq/majordomo speak it: an empty frame first (as in
    /// MDP/0.1), RFC 18's worker commands, and for clients that same table (REQUEST 0x02,
    /// PARTIAL 0x03, FINAL 0x04) with no service frame in replies (`docs/protocol.md`, "Two framings of MDP/0.2").
    V2Delimited,
}

impl Version {
    /// Whether this dialect has PARTIAL replies.
    pub fn has_partials(self) -> bool {
        self != Self::V1
    }
}

/// What an MDP/0.2 client message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKind {
    /// 0x01, client → broker.
    Request,
    /// 0x02, broker → client: an intermediate reply.
    Partial,
    /// 0x03, broker → client: the last reply.
    Final,
}

/// A native request id: 1 to 64 bytes chosen by the client.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(Bytes);

impl RequestId {
    /// Checks the length rules of a request id.
    pub fn new(id: impl Into<Bytes>) -> Result<Self, DecodeError> {
        bounded(id.into(), MAX_REQUEST_ID_BYTES, DecodeError::BadRequestId).map(Self)
    }

    /// The raw id.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<u64> for RequestId {
    /// The decimal digits of `n`: a valid id for any number.
    fn from(n: u64) -> Self {
        Self(Bytes::from(n.to_string()))
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", String::from_utf8_lossy(&self.0))
    }
}

/// Why the broker ended a native request without a worker's reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// The service's queue is full.
    QueueFull,
    /// No worker for the service appeared in time.
    NoWorker,
    /// The broker tracks as many services as it may.
    TooManyServices,
    /// The request is larger than the broker accepts.
    TooLarge,
    /// The request's own deadline passed.
    DeadlineExceeded,
    /// Every worker that held it died or overran.
    AttemptsExhausted,
    /// The request was malformed.
    BadRequest,
    /// The broker is stopping and takes no new requests.
    ShuttingDown,
    /// The client's key may not use this service (CURVE with a per-key service list).
    Forbidden,
    /// This cluster node does not serve (it is not the leader): ask another node.
    NotLeader,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 10] = [
        Self::QueueFull,
        Self::NoWorker,
        Self::TooManyServices,
        Self::TooLarge,
        Self::DeadlineExceeded,
        Self::AttemptsExhausted,
        Self::BadRequest,
        Self::ShuttingDown,
        Self::Forbidden,
        Self::NotLeader,
    ];

    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::NoWorker => "no_worker",
            Self::TooManyServices => "too_many_services",
            Self::TooLarge => "too_large",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::BadRequest => "bad_request",
            Self::ShuttingDown => "shutting_down",
            Self::Forbidden => "forbidden",
            Self::NotLeader => "not_leader",
        }
    }

    /// The status named `word` (as [`Status::as_str`] writes it).
    pub fn parse(word: &[u8]) -> Result<Self, DecodeError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().as_bytes() == word)
            .ok_or(DecodeError::UnknownStatus)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Messages of the scale0 native client protocol, version 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NativeCommand {
    /// 0x01 (or 0x06 without ACCEPTED), client → broker.
    Request {
        /// The client's id for this request.
        id: RequestId,
        /// The service asked for.
        service: ServiceName,
        /// How long the client will wait, in milliseconds; `None` for no limit.
        deadline_ms: Option<u64>,
        /// Whether the broker acknowledges it with ACCEPTED (0x01) or answers only with
        /// the FINAL or ERROR (0x06): one message fewer each way for a client that does
        /// not need to know when its request was queued.
        ack: bool,
        /// Request body.
        body: Body,
    },
    /// 0x02, broker → client: the broker holds the request.
    Accepted {
        /// Which request.
        id: RequestId,
    },
    /// 0x03, broker → client: an intermediate reply.
    Partial {
        /// Which request.
        id: RequestId,
        /// Reply body.
        body: Body,
    },
    /// 0x04, broker → client: the reply.
    Final {
        /// Which request.
        id: RequestId,
        /// Reply body.
        body: Body,
    },
    /// 0x05, broker → client: the request ended without a reply.
    Error {
        /// Which request.
        id: RequestId,
        /// Why, for programs.
        status: Status,
        /// Why, for people (UTF-8).
        message: Bytes,
    },
}

impl NativeCommand {
    /// The request this message is about.
    pub fn id(&self) -> &RequestId {
        match self {
            Self::Request { id, .. }
            | Self::Accepted { id }
            | Self::Partial { id, .. }
            | Self::Final { id, .. }
            | Self::Error { id, .. } => id,
        }
    }

    fn code(&self) -> u8 {
        match self {
            Self::Request { ack: true, .. } => 0x01,
            Self::Request { ack: false, .. } => 0x06,
            Self::Accepted { .. } => 0x02,
            Self::Partial { .. } => 0x03,
            Self::Final { .. } => 0x04,
            Self::Error { .. } => 0x05,
        }
    }
}

/// Any message scale0 speaks on a Majordomo socket, as seen after the routing id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// MDP/0.1 client message (`MDPC01`): a request, or a reply; the shape is the same.
    Client(ClientMessage),
    /// MDP/0.1 worker command (`MDPW01`).
    Worker(WorkerCommand),
    /// MDP/0.2 client message (`MDPC02`).
    Client2(ClientKind, ClientMessage),
    /// MDP/0.2 worker command (`MDPW02`).
    Worker2(WorkerCommand),
    /// MDP/0.2 client message in the delimited framing ([`Version::V2Delimited`]); its
    /// PARTIAL and FINAL carry no service frame, so `service` is not sent for them.
    Client2Delimited(ClientKind, ClientMessage),
    /// MDP/0.2 worker command in the delimited framing.
    Worker2Delimited(WorkerCommand),
    /// Native protocol message (`S0C1`).
    Native(NativeCommand),
}

fn next(it: &mut impl Iterator<Item = Bytes>) -> Result<Bytes, DecodeError> {
    it.next().ok_or(DecodeError::MissingFrame)
}

fn single_byte(frame: &Bytes) -> Result<u8, DecodeError> {
    match frame.as_ref() {
        [code] => Ok(*code),
        _ => Err(DecodeError::UnknownCommand),
    }
}

fn no_more(it: &mut impl Iterator<Item = Bytes>) -> Result<(), DecodeError> {
    match it.next() {
        Some(_) => Err(DecodeError::ExtraFrames),
        None => Ok(()),
    }
}

/// `client address, empty, body…` of REQUEST, PARTIAL and REPLY/FINAL.
fn addressed(it: &mut impl Iterator<Item = Bytes>) -> Result<(PeerId, Body), DecodeError> {
    let client = PeerId::new(next(it)?)?;
    match it.next() {
        Some(f) if f.is_empty() => {}
        Some(_) => return Err(DecodeError::NoDelimiter),
        None => return Err(DecodeError::MissingFrame),
    }
    Ok((client, it.collect()))
}

impl Message {
    /// The service a client request or a worker's READY names; `None` for the rest.
    pub fn service(&self) -> Option<&ServiceName> {
        match self {
            Self::Client(m)
            | Self::Client2(ClientKind::Request, m)
            | Self::Client2Delimited(ClientKind::Request, m) => Some(&m.service),
            Self::Worker(WorkerCommand::Ready { service, .. })
            | Self::Worker2(WorkerCommand::Ready { service, .. })
            | Self::Worker2Delimited(WorkerCommand::Ready { service, .. }) => Some(service),
            Self::Native(NativeCommand::Request { service, .. }) => Some(service),
            _ => None,
        }
    }

    /// Decodes frames as a DEALER sees them (for MDP/0.1, `[empty, header, ...]`).
    pub fn decode(frames: Frames) -> Result<Self, DecodeError> {
        let mut it = frames.into_iter();
        let first = it.next().ok_or(DecodeError::NoDelimiter)?;
        if first.is_empty() {
            return Self::decode_after_delimiter(it);
        }
        match first.as_ref() {
            CLIENT_HEADER_V2 => decode_client2(it),
            WORKER_HEADER_V2 => decode_worker(Version::V2, it).map(Self::Worker2),
            NATIVE_HEADER => decode_native(it).map(Self::Native),
            CLIENT_HEADER | WORKER_HEADER => Err(DecodeError::NoDelimiter),
            _ => Err(DecodeError::UnknownHeader),
        }
    }

    /// Decodes a message that came after an empty delimiter, as a REQ socket sees it:
    /// MDP/0.1, or MDP/0.2 in the delimited framing (REQ strips the delimiter).
    pub fn decode_after_delimiter(
        mut it: impl Iterator<Item = Bytes>,
    ) -> Result<Self, DecodeError> {
        let header = it.next().ok_or(DecodeError::UnknownHeader)?;
        match header.as_ref() {
            CLIENT_HEADER => {
                let service = ServiceName::new(next(&mut it)?)?;
                Ok(Self::Client(ClientMessage {
                    service,
                    body: it.collect(),
                }))
            }
            WORKER_HEADER => decode_worker(Version::V1, it).map(Self::Worker),
            CLIENT_HEADER_V2 => decode_client2_delimited(it),
            WORKER_HEADER_V2 => decode_worker(Version::V2Delimited, it).map(Self::Worker2Delimited),
            _ => Err(DecodeError::UnknownHeader),
        }
    }

    /// Encodes as a DEALER sends it. MDP/0.1 has no PARTIAL: encoding one gives no frames.
    pub fn encode(&self) -> Frames {
        let mut out = Vec::with_capacity(6 + self.body_len());
        self.encode_into(&mut out);
        out
    }

    /// Encodes for a ROUTER to send to `peer`: the routing id, then [`Message::encode`].
    pub fn encode_to(&self, peer: &PeerId) -> Frames {
        let mut out = Vec::with_capacity(7 + self.body_len());
        out.push(peer.0.clone());
        self.encode_into(&mut out);
        if out.len() == 1 {
            out.clear();
        }
        out
    }

    fn body_len(&self) -> usize {
        match self {
            Self::Client(m) | Self::Client2(_, m) | Self::Client2Delimited(_, m) => m.body.len(),
            Self::Worker(cmd) | Self::Worker2(cmd) | Self::Worker2Delimited(cmd) => match cmd {
                WorkerCommand::Request { body, .. }
                | WorkerCommand::Partial { body, .. }
                | WorkerCommand::Reply { body, .. } => body.len(),
                _ => 0,
            },
            Self::Native(
                NativeCommand::Request { body, .. }
                | NativeCommand::Partial { body, .. }
                | NativeCommand::Final { body, .. },
            ) => body.len(),
            Self::Native(_) => 1,
        }
    }

    fn encode_into(&self, out: &mut Frames) {
        match self {
            Self::Client(m) => {
                out.push(Bytes::new());
                out.push(Bytes::from_static(CLIENT_HEADER));
                out.push(m.service.0.clone());
                out.extend(m.body.iter().cloned());
            }
            Self::Client2(kind, m) => {
                out.push(Bytes::from_static(CLIENT_HEADER_V2));
                let code: u8 = match kind {
                    ClientKind::Request => 0x01,
                    ClientKind::Partial => 0x02,
                    ClientKind::Final => 0x03,
                };
                out.push(Bytes::copy_from_slice(&[code]));
                out.push(m.service.0.clone());
                out.extend(m.body.iter().cloned());
            }
            Self::Client2Delimited(kind, m) => {
                out.push(Bytes::new());
                out.push(Bytes::from_static(CLIENT_HEADER_V2));
                // One command table for workers and clients, as majortomo has it.
                let code: u8 = match kind {
                    ClientKind::Request => 0x02,
                    ClientKind::Partial => 0x03,
                    ClientKind::Final => 0x04,
                };
                out.push(Bytes::copy_from_slice(&[code]));
                if *kind == ClientKind::Request {
                    out.push(m.service.0.clone());
                }
                out.extend(m.body.iter().cloned());
            }
            Self::Worker(cmd) => encode_worker(Version::V1, cmd, out),
            Self::Worker2(cmd) => encode_worker(Version::V2, cmd, out),
            Self::Worker2Delimited(cmd) => encode_worker(Version::V2Delimited, cmd, out),
            Self::Native(cmd) => {
                out.push(Bytes::from_static(NATIVE_HEADER));
                out.push(Bytes::copy_from_slice(&[cmd.code()]));
                out.push(cmd.id().0.clone());
                match cmd {
                    NativeCommand::Request {
                        service,
                        deadline_ms,
                        body,
                        ..
                    } => {
                        out.push(service.0.clone());
                        out.push(
                            deadline_ms.map_or_else(Bytes::new, |ms| Bytes::from(ms.to_string())),
                        );
                        out.extend(body.iter().cloned());
                    }
                    NativeCommand::Accepted { .. } => {}
                    NativeCommand::Partial { body, .. } | NativeCommand::Final { body, .. } => {
                        out.extend(body.iter().cloned());
                    }
                    NativeCommand::Error {
                        status, message, ..
                    } => {
                        out.push(Bytes::from_static(status.as_str().as_bytes()));
                        out.push(message.clone());
                    }
                }
            }
        }
    }
}

fn encode_worker(version: Version, cmd: &WorkerCommand, out: &mut Frames) {
    let Some(code) = cmd.code(version) else {
        return;
    };
    match version {
        Version::V1 => {
            out.push(Bytes::new());
            out.push(Bytes::from_static(WORKER_HEADER));
        }
        Version::V2 => out.push(Bytes::from_static(WORKER_HEADER_V2)),
        Version::V2Delimited => {
            out.push(Bytes::new());
            out.push(Bytes::from_static(WORKER_HEADER_V2));
        }
    }
    out.push(Bytes::copy_from_slice(&[code]));
    match cmd {
        WorkerCommand::Ready {
            service,
            capacity,
            bundle,
        } => {
            out.push(service.0.clone());
            if *capacity != 1 || *bundle {
                out.push(Bytes::from(format!("capacity={capacity}")));
            }
            if *bundle {
                out.push(Bytes::from_static(BUNDLE_OPTION));
            }
        }
        WorkerCommand::Request { client, body }
        | WorkerCommand::Partial { client, body }
        | WorkerCommand::Reply { client, body } => {
            out.push(client.0.clone());
            out.push(Bytes::new());
            out.extend(body.iter().cloned());
        }
        WorkerCommand::Heartbeat | WorkerCommand::Disconnect => {}
    }
}

fn decode_worker(
    version: Version,
    mut it: impl Iterator<Item = Bytes>,
) -> Result<WorkerCommand, DecodeError> {
    let code = single_byte(&next(&mut it)?)?;
    let cmd = match (version, code) {
        (_, 0x01) => WorkerCommand::Ready {
            service: ServiceName::new(next(&mut it)?)?,
            capacity: match it.next() {
                None => 1,
                Some(frame) => parse_capacity(&frame)?,
            },
            bundle: match it.next() {
                None => false,
                Some(frame) if frame.as_ref() == BUNDLE_OPTION => true,
                Some(_) => return Err(DecodeError::ExtraFrames),
            },
        },
        (_, 0x02) => {
            let (client, body) = addressed(&mut it)?;
            return Ok(WorkerCommand::Request { client, body });
        }
        (Version::V1, 0x03) | (Version::V2 | Version::V2Delimited, 0x04) => {
            let (client, body) = addressed(&mut it)?;
            return Ok(WorkerCommand::Reply { client, body });
        }
        (Version::V2 | Version::V2Delimited, 0x03) => {
            let (client, body) = addressed(&mut it)?;
            return Ok(WorkerCommand::Partial { client, body });
        }
        (Version::V1, 0x04) | (Version::V2 | Version::V2Delimited, 0x05) => {
            WorkerCommand::Heartbeat
        }
        (Version::V1, 0x05) | (Version::V2 | Version::V2Delimited, 0x06) => {
            WorkerCommand::Disconnect
        }
        _ => return Err(DecodeError::UnknownCommand),
    };
    // READY, HEARTBEAT and DISCONNECT have a fixed number of frames.
    no_more(&mut it)?;
    Ok(cmd)
}

/// `capacity=N`, N from 1 to [`MAX_WORKER_CAPACITY`].
fn parse_capacity(frame: &[u8]) -> Result<u32, DecodeError> {
    let digits = frame
        .strip_prefix(b"capacity=")
        .ok_or(DecodeError::BadCapacity)?;
    if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::BadCapacity);
    }
    let n = digits
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    if n == 0 || n > MAX_WORKER_CAPACITY {
        return Err(DecodeError::BadCapacity);
    }
    Ok(n)
}

/// A client message in the delimited framing of MDP/0.2. Only a REQUEST can be read: the
/// replies this framing sends to clients carry no service frame, and no client sends one.
/// majortomo numbers client commands with its worker table (REQUEST 0x02); 0x01, RFC 18's
/// number, is taken too.
fn decode_client2_delimited(mut it: impl Iterator<Item = Bytes>) -> Result<Message, DecodeError> {
    match single_byte(&next(&mut it)?)? {
        0x01 | 0x02 => Ok(Message::Client2Delimited(
            ClientKind::Request,
            ClientMessage {
                service: ServiceName::new(next(&mut it)?)?,
                body: it.collect(),
            },
        )),
        _ => Err(DecodeError::UnknownCommand),
    }
}

fn decode_client2(mut it: impl Iterator<Item = Bytes>) -> Result<Message, DecodeError> {
    let kind = match single_byte(&next(&mut it)?)? {
        0x01 => ClientKind::Request,
        0x02 => ClientKind::Partial,
        0x03 => ClientKind::Final,
        _ => return Err(DecodeError::UnknownCommand),
    };
    let service = ServiceName::new(next(&mut it)?)?;
    Ok(Message::Client2(
        kind,
        ClientMessage {
            service,
            body: it.collect(),
        },
    ))
}

fn decode_native(mut it: impl Iterator<Item = Bytes>) -> Result<NativeCommand, DecodeError> {
    let code = single_byte(&next(&mut it)?)?;
    if !(0x01..=0x06).contains(&code) {
        return Err(DecodeError::UnknownCommand);
    }
    let id = RequestId::new(next(&mut it)?)?;
    let cmd = match code {
        0x01 | 0x06 => {
            let service = ServiceName::new(next(&mut it)?)?;
            let deadline = next(&mut it)?;
            let deadline_ms = if deadline.is_empty() {
                None
            } else {
                let text = std::str::from_utf8(&deadline).map_err(|_| DecodeError::BadDeadline)?;
                if !text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(DecodeError::BadDeadline);
                }
                Some(text.parse::<u64>().map_err(|_| DecodeError::BadDeadline)?)
            };
            return Ok(NativeCommand::Request {
                id,
                service,
                deadline_ms,
                ack: code == 0x01,
                body: it.collect(),
            });
        }
        0x02 => NativeCommand::Accepted { id },
        0x03 => {
            return Ok(NativeCommand::Partial {
                id,
                body: it.collect(),
            });
        }
        0x04 => {
            return Ok(NativeCommand::Final {
                id,
                body: it.collect(),
            });
        }
        _ => {
            let status = Status::parse(&next(&mut it)?)?;
            let message = next(&mut it)?;
            NativeCommand::Error {
                id,
                status,
                message,
            }
        }
    };
    no_more(&mut it)?;
    Ok(cmd)
}

/// The request id of a native message that failed to decode, if it can be read, so the
/// broker can answer `bad_request` instead of leaving the client waiting.
pub fn native_request_id(frames: &[Bytes]) -> Option<RequestId> {
    match frames {
        [header, code, id, ..]
            if header.as_ref() == NATIVE_HEADER && matches!(code.as_ref(), [0x01 | 0x06]) =>
        {
            RequestId::new(id.clone()).ok()
        }
        _ => None,
    }
}

/// The routing id a ROUTER message starts with, if its first frame is a valid one.
pub fn routing_id(frames: &[Bytes]) -> Option<PeerId> {
    frames.first().and_then(|id| PeerId::new(id.clone()).ok())
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
    fn a_ready_asking_for_bundles_carries_the_capacity_then_bundle_1() {
        let ready = Message::Worker2(WorkerCommand::Ready {
            service: svc("echo"),
            capacity: 1,
            bundle: true,
        });
        let frames = ready.encode();
        assert_eq!(
            frames,
            vec![
                b(b"MDPW02"),
                b(&[1]),
                b(b"echo"),
                b(b"capacity=1"),
                b(b"bundle=1")
            ]
        );
        assert_eq!(Message::decode(frames), Ok(ready));
    }

    #[test]
    fn rejects_every_malformed_shape() {
        let cases: Vec<(Frames, DecodeError)> = vec![
            (vec![], DecodeError::NoDelimiter),
            (vec![b(b"x")], DecodeError::UnknownHeader),
            (vec![b(b"MDPC01"), b(b"svc")], DecodeError::NoDelimiter),
            (vec![b(b"MDPC02")], DecodeError::MissingFrame),
            (
                vec![b(b"MDPC02"), b(&[4]), b(b"s")],
                DecodeError::UnknownCommand,
            ),
            (
                vec![b(b"MDPC02"), b(&[1]), b(b"")],
                DecodeError::BadServiceName,
            ),
            (vec![b(b"MDPW02"), b(&[7])], DecodeError::UnknownCommand),
            (
                vec![b(b"MDPW02"), b(&[5]), b(b"x")],
                DecodeError::ExtraFrames,
            ),
            (
                vec![b(b"MDPW02"), b(&[1]), b(b"s"), b(b"capacity=0")],
                DecodeError::BadCapacity,
            ),
            (
                vec![b(b"MDPW02"), b(&[1]), b(b"s"), b(b"capacity=1025")],
                DecodeError::BadCapacity,
            ),
            (
                vec![b(b"MDPW02"), b(&[1]), b(b"s"), b(b"capacity=+3")],
                DecodeError::BadCapacity,
            ),
            (
                vec![b(b"MDPW02"), b(&[1]), b(b"s"), b(b"slots=3")],
                DecodeError::BadCapacity,
            ),
            (
                vec![b(b"MDPW02"), b(&[1]), b(b"s"), b(b"capacity=3"), b(b"x")],
                DecodeError::ExtraFrames,
            ),
            (
                vec![
                    b(b"MDPW02"),
                    b(&[1]),
                    b(b"s"),
                    b(b"capacity=3"),
                    b(b"bundle=1"),
                    b(b"x"),
                ],
                DecodeError::ExtraFrames,
            ),
            // The bundle frame comes after the capacity, never alone.
            (
                vec![b(b"MDPW02"), b(&[1]), b(b"s"), b(b"bundle=1")],
                DecodeError::BadCapacity,
            ),
            (
                vec![b(b"MDPW02"), b(&[3]), b(b"c"), b(b"x")],
                DecodeError::NoDelimiter,
            ),
            (vec![b(b"S0C1"), b(&[1])], DecodeError::MissingFrame),
            (
                vec![b(b"S0C1"), b(&[9]), b(b"id")],
                DecodeError::UnknownCommand,
            ),
            (vec![b(b"S0C1"), b(&[1]), b(b"")], DecodeError::BadRequestId),
            (
                vec![b(b"S0C1"), b(&[1]), Bytes::from(vec![b'i'; 65])],
                DecodeError::BadRequestId,
            ),
            (
                vec![b(b"S0C1"), b(&[1]), b(b"id"), b(b"svc")],
                DecodeError::MissingFrame,
            ),
            (
                vec![b(b"S0C1"), b(&[1]), b(b"id"), b(b"svc"), b(b"-5")],
                DecodeError::BadDeadline,
            ),
            (
                vec![
                    b(b"S0C1"),
                    b(&[1]),
                    b(b"id"),
                    b(b"svc"),
                    b(b"99999999999999999999999"),
                ],
                DecodeError::BadDeadline,
            ),
            (
                vec![b(b"S0C1"), b(&[2]), b(b"id"), b(b"x")],
                DecodeError::ExtraFrames,
            ),
            (
                vec![b(b"S0C1"), b(&[5]), b(b"id"), b(b"oops"), b(b"m")],
                DecodeError::UnknownStatus,
            ),
            (vec![b(b"")], DecodeError::UnknownHeader),
            (vec![b(b""), b(b"MDPC02")], DecodeError::MissingFrame),
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
                // The only frame READY may add is `capacity=N`.
                DecodeError::BadCapacity,
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

    /// Service names: any text of 1 to 255 bytes.
    fn service_name() -> impl Strategy<Value = Bytes> + Clone {
        "\\PC{1,80}"
            .prop_filter("at most 255 bytes", |s| s.len() <= 255)
            .prop_map(Bytes::from)
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![mdp1(), mdp2(), mdp2_delimited(), native()]
    }

    /// MDP/0.2 in the delimited framing: what the broker can read back (a client's
    /// REQUEST, every worker command).
    fn mdp2_delimited() -> impl Strategy<Value = Message> {
        let body = prop::collection::vec(frame(), 0..4);
        prop_oneof![
            (service_name(), body.clone()).prop_map(|(s, body)| Message::Client2Delimited(
                ClientKind::Request,
                ClientMessage {
                    service: ServiceName::new(s).unwrap(),
                    body
                }
            )),
            (name(), body, 0..4u8).prop_map(|(c, body, which)| {
                let client = PeerId::new(c).unwrap();
                Message::Worker2Delimited(match which {
                    0 => WorkerCommand::Request { client, body },
                    1 => WorkerCommand::Partial { client, body },
                    2 => WorkerCommand::Reply { client, body },
                    _ => WorkerCommand::Heartbeat,
                })
            }),
            (service_name(), 1..=MAX_WORKER_CAPACITY, any::<bool>()).prop_map(
                |(s, capacity, bundle)| {
                    Message::Worker2Delimited(WorkerCommand::Ready {
                        service: ServiceName::new(s).unwrap(),
                        capacity,
                        bundle,
                    })
                }
            ),
            Just(Message::Worker2Delimited(WorkerCommand::Disconnect)),
        ]
    }

    #[test]
    fn the_delimited_framing_of_mdp2_is_told_apart_and_replies_carry_no_service() {
        let reply = Message::Client2Delimited(
            ClientKind::Final,
            ClientMessage {
                service: svc("echo"),
                body: vec![b(b"done")],
            },
        );
        assert_eq!(reply.encode(), [b(b""), b(b"MDPC02"), b(&[4]), b(b"done")]);
        let partial = Message::Client2Delimited(
            ClientKind::Partial,
            ClientMessage {
                service: svc("echo"),
                body: vec![b(b"half")],
            },
        );
        assert_eq!(
            partial.encode(),
            [b(b""), b(b"MDPC02"), b(&[3]), b(b"half")]
        );
        // The same worker READY in both framings, each decoded as what it is.
        let rfc = Message::decode(vec![b(b"MDPW02"), b(&[1]), b(b"echo")]).unwrap();
        assert!(matches!(rfc, Message::Worker2(WorkerCommand::Ready { .. })));
        let delimited = Message::decode(vec![b(b""), b(b"MDPW02"), b(&[1]), b(b"echo")]).unwrap();
        assert!(matches!(
            delimited,
            Message::Worker2Delimited(WorkerCommand::Ready { .. })
        ));
        for code in [1, 2] {
            let request =
                Message::decode(vec![b(b""), b(b"MDPC02"), b(&[code]), b(b"echo"), b(b"x")])
                    .unwrap();
            assert!(matches!(
                request,
                Message::Client2Delimited(ClientKind::Request, _)
            ));
        }
        assert_eq!(
            Message::decode(vec![b(b""), b(b"MDPC02"), b(&[4]), b(b"x")]),
            Err(DecodeError::UnknownCommand),
            "no client sends a FINAL"
        );
    }

    fn mdp2() -> impl Strategy<Value = Message> {
        let body = prop::collection::vec(frame(), 0..4);
        let kind = prop_oneof![
            Just(ClientKind::Request),
            Just(ClientKind::Partial),
            Just(ClientKind::Final)
        ];
        prop_oneof![
            (kind, service_name(), body.clone()).prop_map(|(k, s, body)| Message::Client2(
                k,
                ClientMessage {
                    service: ServiceName::new(s).unwrap(),
                    body
                }
            )),
            (name(), body, 0..4u8).prop_map(|(c, body, which)| {
                let client = PeerId::new(c).unwrap();
                Message::Worker2(match which {
                    0 => WorkerCommand::Request { client, body },
                    1 => WorkerCommand::Partial { client, body },
                    2 => WorkerCommand::Reply { client, body },
                    _ => WorkerCommand::Heartbeat,
                })
            }),
            Just(Message::Worker2(WorkerCommand::Disconnect)),
            (service_name(), 1..=MAX_WORKER_CAPACITY, any::<bool>()).prop_map(
                |(s, capacity, bundle)| Message::Worker2(WorkerCommand::Ready {
                    service: ServiceName::new(s).unwrap(),
                    capacity,
                    bundle,
                })
            ),
        ]
    }

    fn native() -> impl Strategy<Value = Message> {
        let body = prop::collection::vec(frame(), 0..4);
        let id = prop::collection::vec(any::<u8>(), 1..=64)
            .prop_map(|v| RequestId::new(Bytes::from(v)).unwrap());
        (
            id,
            service_name(),
            body,
            any::<Option<u64>>(),
            0..6u8,
            0..7usize,
        )
            .prop_map(|(id, s, body, deadline_ms, which, status)| {
                Message::Native(match which {
                    0 | 5 => NativeCommand::Request {
                        id,
                        service: ServiceName::new(s).unwrap(),
                        deadline_ms,
                        ack: which == 0,
                        body,
                    },
                    1 => NativeCommand::Accepted { id },
                    2 => NativeCommand::Partial { id, body },
                    3 => NativeCommand::Final { id, body },
                    _ => NativeCommand::Error {
                        id,
                        status: Status::ALL[status],
                        message: s,
                    },
                })
            })
    }

    fn mdp1() -> impl Strategy<Value = Message> {
        let body = prop::collection::vec(frame(), 0..4);
        prop_oneof![
            (service_name(), body.clone()).prop_map(|(s, body)| Message::Client(ClientMessage {
                service: ServiceName::new(s).unwrap(),
                body
            })),
            service_name().prop_map(|s| Message::Worker(WorkerCommand::Ready {
                service: ServiceName::new(s).unwrap(),
                capacity: 1,
                bundle: false,
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
