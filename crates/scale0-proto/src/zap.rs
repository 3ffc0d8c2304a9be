//! ZAP (ZeroMQ RFC 27): the frames libzmq sends to a context's authentication handler,
//! and the handler's answer.
//!
//! A request is `version | request id | domain | address | identity | mechanism |
//! credentials…`, a reply `version | request id | status code | status text | user id |
//! metadata`. The handler must answer every request, one it cannot read with `500`
//! ([`request_id`] gives the id to answer).

use crate::mdp::Frames;
use bytes::Bytes;

/// Where libzmq sends the ZAP requests of a context.
pub const ENDPOINT: &str = "inproc://zeromq.zap.01";

/// The only version of ZAP there is.
pub const VERSION: &[u8] = b"1.0";

/// Why frames are not a ZAP request or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The version frame is missing or is not `1.0`.
    #[error("unsupported ZAP version")]
    UnsupportedVersion,
    /// A frame every request or reply has is absent.
    #[error("missing frame")]
    MissingFrame,
    /// More frames than the message has.
    #[error("extra frames")]
    ExtraFrames,
    /// A mechanism RFC 27 does not name.
    #[error("unknown security mechanism")]
    UnknownMechanism,
    /// Credentials that do not fit the named mechanism (its name given): too many or
    /// too few frames, or a CURVE key that is not 32 bytes.
    #[error("credentials that do not fit {0}")]
    BadCredentials(&'static str),
    /// A reply status code that is not 200, 300, 400 or 500.
    #[error("unknown ZAP status code")]
    UnknownStatus,
}

/// A security mechanism with the credentials it presents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// No security: no credentials.
    Null,
    /// PLAIN: a user name and a password.
    Plain {
        /// The user name.
        username: Bytes,
        /// The password.
        password: Bytes,
    },
    /// CURVE: the client's long-term public key.
    Curve {
        /// The key, 32 bytes.
        public_key: [u8; 32],
    },
    /// GSSAPI: the client's principal.
    Gssapi {
        /// The principal.
        principal: Bytes,
    },
}

impl Mechanism {
    /// Its name on the wire: `NULL`, `PLAIN`, `CURVE` or `GSSAPI`.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::Null => "NULL",
            Mechanism::Plain { .. } => "PLAIN",
            Mechanism::Curve { .. } => "CURVE",
            Mechanism::Gssapi { .. } => "GSSAPI",
        }
    }

    fn credentials(&self) -> Vec<Bytes> {
        match self {
            Mechanism::Null => Vec::new(),
            Mechanism::Plain { username, password } => vec![username.clone(), password.clone()],
            Mechanism::Curve { public_key } => vec![Bytes::copy_from_slice(public_key)],
            Mechanism::Gssapi { principal } => vec![principal.clone()],
        }
    }

    fn decode(name: &[u8], credentials: &[Bytes]) -> Result<Self, DecodeError> {
        let bad = |name| DecodeError::BadCredentials(name);
        match name {
            b"NULL" => match credentials {
                [] => Ok(Mechanism::Null),
                _ => Err(bad("NULL")),
            },
            b"PLAIN" => match credentials {
                [username, password] => Ok(Mechanism::Plain {
                    username: username.clone(),
                    password: password.clone(),
                }),
                _ => Err(bad("PLAIN")),
            },
            b"CURVE" => match credentials {
                [key] => <[u8; 32]>::try_from(key.as_ref())
                    .map(|public_key| Mechanism::Curve { public_key })
                    .map_err(|_| bad("CURVE")),
                _ => Err(bad("CURVE")),
            },
            b"GSSAPI" => match credentials {
                [principal] => Ok(Mechanism::Gssapi {
                    principal: principal.clone(),
                }),
                _ => Err(bad("GSSAPI")),
            },
            _ => Err(DecodeError::UnknownMechanism),
        }
    }
}

/// An authentication request from libzmq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Opaque; the reply must echo it.
    pub id: Bytes,
    /// The socket's ZAP domain (`ZMQ_ZAP_DOMAIN`).
    pub domain: Bytes,
    /// The peer's address, as text (an IP address for TCP).
    pub address: Bytes,
    /// The routing id the peer asked for, if any.
    pub identity: Bytes,
    /// The mechanism and the credentials the peer presented.
    pub mechanism: Mechanism,
}

impl Request {
    /// Reads a request; see [`request_id`] for answering one that does not decode.
    pub fn decode(frames: &[Bytes]) -> Result<Self, DecodeError> {
        match frames.first() {
            Some(v) if v.as_ref() == VERSION => {}
            _ => return Err(DecodeError::UnsupportedVersion),
        }
        let [
            _,
            id,
            domain,
            address,
            identity,
            mechanism,
            credentials @ ..,
        ] = frames
        else {
            return Err(DecodeError::MissingFrame);
        };
        Ok(Self {
            id: id.clone(),
            domain: domain.clone(),
            address: address.clone(),
            identity: identity.clone(),
            mechanism: Mechanism::decode(mechanism, credentials)?,
        })
    }

    /// The request's frames.
    pub fn encode(&self) -> Frames {
        let mut frames = vec![
            Bytes::from_static(VERSION),
            self.id.clone(),
            self.domain.clone(),
            self.address.clone(),
            self.identity.clone(),
            Bytes::from_static(self.mechanism.name().as_bytes()),
        ];
        frames.extend(self.mechanism.credentials());
        frames
    }
}

/// The request id of frames that may not be a request: the one to echo in the `500`
/// reply RFC 27 asks for (empty when there is none).
pub fn request_id(frames: &[Bytes]) -> Bytes {
    frames.get(1).cloned().unwrap_or_default()
}

/// A ZAP status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// 200: the peer may connect.
    Success,
    /// 300: the handler cannot answer now.
    TemporaryError,
    /// 400: the peer may not connect.
    AuthFailure,
    /// 500: the handler could not process the request.
    InternalError,
}

impl Status {
    /// The three-digit code.
    pub fn code(self) -> &'static str {
        match self {
            Status::Success => "200",
            Status::TemporaryError => "300",
            Status::AuthFailure => "400",
            Status::InternalError => "500",
        }
    }

    fn decode(code: &[u8]) -> Result<Self, DecodeError> {
        [
            Status::Success,
            Status::TemporaryError,
            Status::AuthFailure,
            Status::InternalError,
        ]
        .into_iter()
        .find(|s| s.code().as_bytes() == code)
        .ok_or(DecodeError::UnknownStatus)
    }
}

/// The handler's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The id of the request answered.
    pub id: Bytes,
    /// Whether the peer may connect.
    pub status: Status,
    /// Why, for people.
    pub text: Bytes,
    /// The User-Id libzmq attaches to the peer's messages (`zmq_msg_gets`); empty unless
    /// the status is success.
    pub user_id: Bytes,
    /// ZMTP metadata properties for the peer's messages; empty for none.
    pub metadata: Bytes,
}

impl Reply {
    /// A reply with no user id and no metadata.
    pub fn new(id: Bytes, status: Status, text: &str) -> Self {
        Self {
            id,
            status,
            text: Bytes::from(text.to_string()),
            user_id: Bytes::new(),
            metadata: Bytes::new(),
        }
    }

    /// The reply's six frames.
    pub fn encode(&self) -> Frames {
        vec![
            Bytes::from_static(VERSION),
            self.id.clone(),
            Bytes::from_static(self.status.code().as_bytes()),
            self.text.clone(),
            self.user_id.clone(),
            self.metadata.clone(),
        ]
    }

    /// Reads a reply.
    pub fn decode(frames: &[Bytes]) -> Result<Self, DecodeError> {
        match frames.first() {
            Some(v) if v.as_ref() == VERSION => {}
            _ => return Err(DecodeError::UnsupportedVersion),
        }
        match frames {
            [_, id, status, text, user_id, metadata] => Ok(Self {
                id: id.clone(),
                status: Status::decode(status)?,
                text: text.clone(),
                user_id: user_id.clone(),
                metadata: metadata.clone(),
            }),
            [_, _, _, _, _, _, ..] => Err(DecodeError::ExtraFrames),
            _ => Err(DecodeError::MissingFrame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Frames {
        parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
    }

    #[test]
    fn a_curve_request_decodes_to_its_key_and_encodes_back_to_its_frames() {
        let key = [7u8; 32];
        let wire = frames(&[b"1.0", b"42", b"scale0", b"127.0.0.1", b"", b"CURVE", &key]);
        let request = Request::decode(&wire).unwrap();
        assert_eq!(request.id, Bytes::from_static(b"42"));
        assert_eq!(request.address, Bytes::from_static(b"127.0.0.1"));
        assert_eq!(request.mechanism, Mechanism::Curve { public_key: key });
        assert_eq!(request.encode(), wire);
    }

    #[test]
    fn every_mechanism_takes_exactly_its_credentials() {
        let head: &[&[u8]] = &[b"1.0", b"1", b"d", b"a", b"i"];
        let with = |tail: &[&[u8]]| Request::decode(&frames(&[head, tail].concat()));
        assert_eq!(with(&[b"NULL"]).unwrap().mechanism, Mechanism::Null);
        assert_eq!(
            with(&[b"PLAIN", b"user", b"secret"]).unwrap().mechanism,
            Mechanism::Plain {
                username: Bytes::from_static(b"user"),
                password: Bytes::from_static(b"secret"),
            }
        );
        assert!(matches!(
            with(&[b"GSSAPI", b"me"]).unwrap().mechanism,
            Mechanism::Gssapi { .. }
        ));
        let bad = DecodeError::BadCredentials;
        assert_eq!(with(&[b"NULL", b""]), Err(bad("NULL")));
        assert_eq!(with(&[b"PLAIN", b"user"]), Err(bad("PLAIN")));
        assert_eq!(with(&[b"CURVE", b"short"]), Err(bad("CURVE")));
        assert_eq!(with(&[b"CURVE"]), Err(bad("CURVE")));
        assert_eq!(with(&[b"KERBEROS"]), Err(DecodeError::UnknownMechanism));
    }

    #[test]
    fn requests_without_the_version_or_the_fixed_frames_are_errors_with_their_id() {
        let v2 = frames(&[b"2.0", b"9"]);
        assert_eq!(Request::decode(&v2), Err(DecodeError::UnsupportedVersion));
        assert_eq!(request_id(&v2), Bytes::from_static(b"9"));
        assert_eq!(Request::decode(&[]), Err(DecodeError::UnsupportedVersion));
        assert_eq!(request_id(&[]), Bytes::new());
        let short = frames(&[b"1.0", b"9", b"d", b"a", b"i"]);
        assert_eq!(Request::decode(&short), Err(DecodeError::MissingFrame));
    }

    #[test]
    fn replies_are_six_frames_with_a_known_code() {
        let mut reply = Reply::new(Bytes::from_static(b"7"), Status::Success, "OK");
        reply.user_id = Bytes::from_static(b"alice");
        let wire = reply.encode();
        assert_eq!(wire, frames(&[b"1.0", b"7", b"200", b"OK", b"alice", b""]));
        assert_eq!(Reply::decode(&wire), Ok(reply));
        let mut longer = wire.clone();
        longer.push(Bytes::new());
        assert_eq!(Reply::decode(&longer), Err(DecodeError::ExtraFrames));
        assert_eq!(Reply::decode(&wire[..5]), Err(DecodeError::MissingFrame));
        let mut odd = wire;
        odd[2] = Bytes::from_static(b"201");
        assert_eq!(Reply::decode(&odd), Err(DecodeError::UnknownStatus));
    }
}
