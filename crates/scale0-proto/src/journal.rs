//! What a durable broker writes down, and the small storage trait it is written to.
//!
//! The broker state machine emits [`JournalOp`]s: a `Put` when it accepts a request (and
//! when a Titanic reply must be kept), a `Delete` when a request is finished. The driver
//! applies them to a [`Store`] and commits; only then may the messages that depend on
//! them leave (see `Broker::journal_synced`). Entries are keyed by a `u64` the broker
//! assigns in acceptance order, so a store is a map from `u64` to bytes — simple enough
//! for a log, a B-tree or an LSM to implement, and for [`MemoryStore`] to stand in for
//! them in simulations.
//!
//! The entry encoding is versioned and length-prefixed; decoding never panics.

use crate::mdp::{Body, PeerId, RequestId, ServiceName, Version};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;

/// One change to the durable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalOp {
    /// Store (or replace) the entry `key`.
    Put {
        /// Acceptance order key.
        key: u64,
        /// An encoded [`Entry`].
        value: Bytes,
    },
    /// Forget the entry `key`.
    Delete {
        /// Acceptance order key.
        key: u64,
    },
}

/// A key-value store with group commit: writes are buffered until [`Store::commit`],
/// which makes all of them durable at once (one sync for the batch).
pub trait Store {
    /// Every live entry, in key order. Called once, right after opening.
    fn load(&mut self) -> std::io::Result<Vec<(u64, Bytes)>>;
    /// Buffers a put of `key`.
    fn put(&mut self, key: u64, value: &[u8]) -> std::io::Result<()>;
    /// Buffers a delete of `key`; deleting an unknown key is not an error.
    fn delete(&mut self, key: u64) -> std::io::Result<()>;
    /// Makes every buffered write durable.
    fn commit(&mut self) -> std::io::Result<()>;

    /// Buffers `op`.
    fn apply(&mut self, op: &JournalOp) -> std::io::Result<()> {
        match op {
            JournalOp::Put { key, value } => self.put(*key, value),
            JournalOp::Delete { key } => self.delete(*key),
        }
    }
}

/// A [`Store`] in memory, for simulations: [`MemoryStore::crash`] loses exactly what was
/// not committed.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    committed: BTreeMap<u64, Bytes>,
    buffered: Vec<JournalOp>,
    /// Commits so far.
    pub commits: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets what was not committed, as a process kill would.
    pub fn crash(&mut self) {
        self.buffered.clear();
    }

    /// Live entries now committed.
    pub fn len(&self) -> usize {
        self.committed.len()
    }

    /// True when nothing is committed.
    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }
}

impl Store for MemoryStore {
    fn load(&mut self) -> std::io::Result<Vec<(u64, Bytes)>> {
        Ok(self
            .committed
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }

    fn put(&mut self, key: u64, value: &[u8]) -> std::io::Result<()> {
        self.buffered.push(JournalOp::Put {
            key,
            value: Bytes::copy_from_slice(value),
        });
        Ok(())
    }

    fn delete(&mut self, key: u64) -> std::io::Result<()> {
        self.buffered.push(JournalOp::Delete { key });
        Ok(())
    }

    fn commit(&mut self) -> std::io::Result<()> {
        for op in self.buffered.drain(..) {
            match op {
                JournalOp::Put { key, value } => {
                    self.committed.insert(key, value);
                }
                JournalOp::Delete { key } => {
                    self.committed.remove(&key);
                }
            }
        }
        self.commits += 1;
        Ok(())
    }
}

/// Who a stored request came from, and in which protocol it is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredOrigin {
    /// An MDP client of this version.
    Mdp(Version),
    /// A native client's request with this id.
    Native(RequestId),
    /// A Titanic request (RFC 9) with this UUID (32 hex digits).
    Titanic(Bytes),
}

/// How a Titanic request ended, kept until the client closes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TitanicOutcome {
    /// The service's reply.
    Reply(Body),
    /// It failed for good; the text says why.
    Failed(Bytes),
}

/// One stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A request accepted and not yet finished.
    Request {
        /// The client's routing id.
        client: PeerId,
        /// How it is answered.
        origin: StoredOrigin,
        /// The service asked.
        service: ServiceName,
        /// The request body.
        body: Body,
    },
    /// A native request's answer, kept for the client's retries until the broker's
    /// dedupe window forgets it (so a retry after a restart or failover is answered
    /// from here, not run again).
    NativeAnswer {
        /// The client's routing id.
        client: PeerId,
        /// The request id.
        id: RequestId,
        /// The final reply, or the error status and message.
        answer: Result<Body, (crate::mdp::Status, Bytes)>,
    },
    /// A finished Titanic request, kept until `titanic.close`.
    TitanicDone {
        /// The request's UUID.
        uuid: Bytes,
        /// Its ending.
        outcome: TitanicOutcome,
    },
}

/// Why a stored entry could not be read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Written by a format this broker does not know.
    #[error("unknown entry format {0}")]
    UnknownFormat(u8),
    /// The bytes end early, run over, or hold a value out of range.
    #[error("truncated or malformed entry")]
    Malformed,
}

const FORMAT: u8 = 1;
const KIND_MDP1: u8 = 1;
const KIND_MDP2: u8 = 2;
const KIND_NATIVE: u8 = 3;
const KIND_TITANIC: u8 = 4;
const KIND_TITANIC_REPLY: u8 = 5;
const KIND_TITANIC_FAILED: u8 = 6;
const KIND_MDP2_DELIMITED: u8 = 7;
const KIND_NATIVE_FINAL: u8 = 8;
const KIND_NATIVE_ERROR: u8 = 9;

fn put_field(out: &mut BytesMut, field: &[u8]) {
    // Every field is bounded by the message size limit, far below 4 GiB.
    out.put_u32_le(u32::try_from(field.len()).unwrap_or(u32::MAX));
    out.put_slice(field);
}

fn put_body(out: &mut BytesMut, body: &Body) {
    out.put_u32_le(u32::try_from(body.len()).unwrap_or(u32::MAX));
    for frame in body {
        put_field(out, frame);
    }
}

impl Entry {
    /// The stored form.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(FORMAT);
        match self {
            Entry::Request {
                client,
                origin,
                service,
                body,
            } => {
                let (kind, extra): (u8, &[u8]) = match origin {
                    StoredOrigin::Mdp(Version::V1) => (KIND_MDP1, &[]),
                    StoredOrigin::Mdp(Version::V2) => (KIND_MDP2, &[]),
                    StoredOrigin::Mdp(Version::V2Delimited) => (KIND_MDP2_DELIMITED, &[]),
                    StoredOrigin::Native(id) => (KIND_NATIVE, id.as_bytes()),
                    StoredOrigin::Titanic(uuid) => (KIND_TITANIC, uuid),
                };
                out.put_u8(kind);
                put_field(&mut out, client.as_bytes());
                put_field(&mut out, service.as_bytes());
                put_field(&mut out, extra);
                put_body(&mut out, body);
            }
            Entry::NativeAnswer { client, id, answer } => match answer {
                Ok(body) => {
                    out.put_u8(KIND_NATIVE_FINAL);
                    put_field(&mut out, client.as_bytes());
                    put_field(&mut out, id.as_bytes());
                    put_body(&mut out, body);
                }
                Err((status, message)) => {
                    out.put_u8(KIND_NATIVE_ERROR);
                    put_field(&mut out, client.as_bytes());
                    put_field(&mut out, id.as_bytes());
                    put_field(&mut out, status.as_str().as_bytes());
                    put_field(&mut out, message);
                }
            },
            Entry::TitanicDone { uuid, outcome } => {
                match outcome {
                    TitanicOutcome::Reply(body) => {
                        out.put_u8(KIND_TITANIC_REPLY);
                        put_field(&mut out, uuid);
                        put_body(&mut out, body);
                    }
                    TitanicOutcome::Failed(why) => {
                        out.put_u8(KIND_TITANIC_FAILED);
                        put_field(&mut out, uuid);
                        put_field(&mut out, why);
                    }
                };
            }
        }
        out.freeze()
    }

    /// Reads an entry back.
    pub fn decode(bytes: &Bytes) -> Result<Self, EntryError> {
        let mut r = Reader { bytes, at: 0 };
        let format = r.u8()?;
        if format != FORMAT {
            return Err(EntryError::UnknownFormat(format));
        }
        let kind = r.u8()?;
        let entry = match kind {
            KIND_MDP1 | KIND_MDP2 | KIND_MDP2_DELIMITED | KIND_NATIVE | KIND_TITANIC => {
                let client = PeerId::new(r.field()?).map_err(|_| EntryError::Malformed)?;
                let service = ServiceName::new(r.field()?).map_err(|_| EntryError::Malformed)?;
                let extra = r.field()?;
                let body = r.body()?;
                let origin = match kind {
                    KIND_MDP1 => StoredOrigin::Mdp(Version::V1),
                    KIND_MDP2 => StoredOrigin::Mdp(Version::V2),
                    KIND_MDP2_DELIMITED => StoredOrigin::Mdp(Version::V2Delimited),
                    KIND_NATIVE => StoredOrigin::Native(
                        RequestId::new(extra).map_err(|_| EntryError::Malformed)?,
                    ),
                    _ => StoredOrigin::Titanic(extra),
                };
                Entry::Request {
                    client,
                    origin,
                    service,
                    body,
                }
            }
            KIND_NATIVE_FINAL | KIND_NATIVE_ERROR => {
                let client = PeerId::new(r.field()?).map_err(|_| EntryError::Malformed)?;
                let id = RequestId::new(r.field()?).map_err(|_| EntryError::Malformed)?;
                let answer = if kind == KIND_NATIVE_FINAL {
                    Ok(r.body()?)
                } else {
                    let status = crate::mdp::Status::parse(&r.field()?)
                        .map_err(|_| EntryError::Malformed)?;
                    Err((status, r.field()?))
                };
                Entry::NativeAnswer { client, id, answer }
            }
            KIND_TITANIC_REPLY => Entry::TitanicDone {
                uuid: r.field()?,
                outcome: TitanicOutcome::Reply(r.body()?),
            },
            KIND_TITANIC_FAILED => Entry::TitanicDone {
                uuid: r.field()?,
                outcome: TitanicOutcome::Failed(r.field()?),
            },
            _ => return Err(EntryError::Malformed),
        };
        if r.at != bytes.len() {
            return Err(EntryError::Malformed);
        }
        Ok(entry)
    }
}

struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<Bytes, EntryError> {
        let end = self.at.checked_add(n).ok_or(EntryError::Malformed)?;
        if end > self.bytes.len() {
            return Err(EntryError::Malformed);
        }
        let out = self.bytes.slice(self.at..end);
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn u32(&mut self) -> Result<usize, EntryError> {
        let b = self.take(4)?;
        let mut le = [0u8; 4];
        le.copy_from_slice(&b);
        usize::try_from(u32::from_le_bytes(le)).map_err(|_| EntryError::Malformed)
    }

    fn field(&mut self) -> Result<Bytes, EntryError> {
        let n = self.u32()?;
        self.take(n)
    }

    fn body(&mut self) -> Result<Body, EntryError> {
        let n = self.u32()?;
        // Each frame needs at least its 4-byte length: a huge count is caught here, not
        // by an allocation.
        if n > (self.bytes.len() - self.at) / 4 {
            return Err(EntryError::Malformed);
        }
        let mut body = Vec::with_capacity(n);
        for _ in 0..n {
            body.push(self.field()?);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn samples() -> Vec<Entry> {
        let client = PeerId::new(b("\x01client")).unwrap();
        let service = ServiceName::new(b("echo")).unwrap();
        vec![
            Entry::Request {
                client: client.clone(),
                origin: StoredOrigin::Mdp(Version::V1),
                service: service.clone(),
                body: vec![b("a"), Bytes::new(), b("ccc")],
            },
            Entry::Request {
                client: client.clone(),
                origin: StoredOrigin::Mdp(Version::V2),
                service: service.clone(),
                body: vec![],
            },
            Entry::Request {
                client: client.clone(),
                origin: StoredOrigin::Native(RequestId::new(b("7")).unwrap()),
                service: service.clone(),
                body: vec![b("x")],
            },
            Entry::Request {
                client,
                origin: StoredOrigin::Titanic(b("0123456789abcdef0123456789abcdef")),
                service,
                body: vec![b("y")],
            },
            Entry::TitanicDone {
                uuid: b("u"),
                outcome: TitanicOutcome::Reply(vec![b("r1"), b("r2")]),
            },
            Entry::TitanicDone {
                uuid: b("u"),
                outcome: TitanicOutcome::Failed(b("attempts exhausted")),
            },
            Entry::NativeAnswer {
                client: PeerId::new(b("c")).unwrap(),
                id: RequestId::new(b("7")).unwrap(),
                answer: Ok(vec![b("r1"), b("")]),
            },
            Entry::NativeAnswer {
                client: PeerId::new(b("c")).unwrap(),
                id: RequestId::new(b("8")).unwrap(),
                answer: Err((crate::mdp::Status::DeadlineExceeded, b("too late"))),
            },
        ]
    }

    #[test]
    fn entries_round_trip() {
        for e in samples() {
            assert_eq!(Entry::decode(&e.encode()), Ok(e));
        }
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        for e in samples() {
            let full = e.encode();
            for n in 0..full.len() {
                assert!(Entry::decode(&full.slice(..n)).is_err(), "{e:?} cut at {n}");
            }
            let mut longer = full.to_vec();
            longer.push(0);
            assert!(Entry::decode(&Bytes::from(longer)).is_err());
        }
        assert_eq!(
            Entry::decode(&Bytes::from_static(&[9, 1])),
            Err(EntryError::UnknownFormat(9))
        );
    }

    #[test]
    fn memory_store_loses_only_what_was_not_committed() {
        let mut s = MemoryStore::new();
        s.put(1, b"one").unwrap();
        s.put(2, b"two").unwrap();
        s.commit().unwrap();
        s.delete(1).unwrap();
        s.put(3, b"three").unwrap();
        s.crash();
        let keys: Vec<u64> = s.load().unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![1, 2]);
    }
}
