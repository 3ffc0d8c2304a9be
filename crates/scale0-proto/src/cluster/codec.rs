//! Our own encodings of what cluster nodes exchange and replicate: raft's messages (so no
//! network byte reaches the protobuf parser raft is built on: RUSTSEC-2024-0437), the
//! batches of journal ops that make up the replicated log, and the snapshot of the
//! replicated state. Every decoder checks every length against what is left and against
//! its bounds, and never panics.

use super::log::Change;
use crate::journal::JournalOp;
use crate::wire::{Reader, WireError, Writer};
use bytes::{BufMut, Bytes, BytesMut};
use raft::eraftpb::{
    ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot, SnapshotMetadata,
};
use std::collections::BTreeMap;

/// The format byte every encoding here starts with.
const FORMAT: u8 = 1;
/// Node ids in one membership list: far more than any cluster has.
pub const MAX_IDS: usize = 64;

/// Why a frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The format byte is not one this build reads.
    #[error("unknown format {0}")]
    UnknownFormat(u8),
    /// The frame ends before its fields do, or a length runs past it.
    #[error("truncated")]
    Truncated,
    /// Bytes are left over after the last field.
    #[error("trailing bytes")]
    Trailing,
    /// A varint longer than ten bytes.
    #[error("bad varint")]
    BadVarint,
    /// A message type that never crosses the network (local ones, and proposals:
    /// followers do not forward them here).
    #[error("message type {0} is not accepted from the network")]
    MessageType(u64),
    /// An entry type other than a normal one (membership changes are not replicated).
    #[error("entry type {0} is not accepted")]
    EntryType(u64),
    /// More entries, ids or ops than the bounds allow.
    #[error("too many items")]
    TooMany,
    /// A read-index message without exactly one entry (raft indexes the first).
    #[error("read index needs one entry")]
    ReadIndex,
    /// A flag byte with bits this build does not know, or a journal op tag unknown.
    #[error("bad tag")]
    BadTag,
}

/// Bounds a decoder enforces on what comes from a peer.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Entries in one append message.
    pub max_entries: usize,
    /// Journal ops in one replicated entry.
    pub max_ops: usize,
}

impl Writer {
    fn ids(&mut self, ids: &[u64]) {
        self.varint(ids.len() as u64);
        for id in ids {
            self.varint(*id);
        }
    }
}

impl From<WireError> for CodecError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated => Self::Truncated,
            WireError::BadVarint => Self::BadVarint,
        }
    }
}

impl Reader {
    fn len(&mut self, max: usize) -> Result<usize, CodecError> {
        let n = usize::try_from(self.varint()?).map_err(|_| CodecError::TooMany)?;
        if n > max {
            return Err(CodecError::TooMany);
        }
        Ok(n)
    }

    fn ids(&mut self) -> Result<Vec<u64>, CodecError> {
        let n = self.len(MAX_IDS)?;
        (0..n)
            .map(|_| self.varint().map_err(CodecError::from))
            .collect()
    }

    fn flag(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::BadTag),
        }
    }

    fn start(bytes: Bytes) -> Result<Self, CodecError> {
        let mut r = Reader(bytes);
        match r.u8()? {
            FORMAT => Ok(r),
            other => Err(CodecError::UnknownFormat(other)),
        }
    }

    fn finish(&self) -> Result<(), CodecError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Trailing)
        }
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Whether a message of this type may come from another node.
fn from_network(t: MessageType) -> bool {
    use MessageType::*;
    matches!(
        t,
        MsgAppend
            | MsgAppendResponse
            | MsgRequestVote
            | MsgRequestVoteResponse
            | MsgSnapshot
            | MsgHeartbeat
            | MsgHeartbeatResponse
            | MsgTransferLeader
            | MsgTimeoutNow
            | MsgReadIndex
            | MsgReadIndexResp
            | MsgRequestPreVote
            | MsgRequestPreVoteResponse
    )
}

fn message_type(v: u64) -> Option<MessageType> {
    use MessageType::*;
    const ALL: [MessageType; 19] = [
        MsgHup,
        MsgBeat,
        MsgPropose,
        MsgAppend,
        MsgAppendResponse,
        MsgRequestVote,
        MsgRequestVoteResponse,
        MsgSnapshot,
        MsgHeartbeat,
        MsgHeartbeatResponse,
        MsgUnreachable,
        MsgSnapStatus,
        MsgCheckQuorum,
        MsgTransferLeader,
        MsgTimeoutNow,
        MsgReadIndex,
        MsgReadIndexResp,
        MsgRequestPreVote,
        MsgRequestPreVoteResponse,
    ];
    ALL.into_iter().find(|t| *t as u64 == v)
}

/// One raft message as a frame.
pub fn encode_message(m: &Message) -> Bytes {
    let mut w = Writer(BytesMut::with_capacity(
        64 + m.entries.iter().map(|e| e.data.len() + 16).sum::<usize>(),
    ));
    w.0.put_u8(FORMAT);
    w.varint(m.get_msg_type() as u64);
    for v in [
        m.to,
        m.from,
        m.term,
        m.log_term,
        m.index,
        m.commit,
        m.commit_term,
        m.request_snapshot,
        m.reject_hint,
        m.deprecated_priority,
        zigzag(m.priority),
    ] {
        w.varint(v);
    }
    w.0.put_u8(u8::from(m.reject));
    w.bytes(&m.context);
    w.varint(m.entries.len() as u64);
    for e in &m.entries {
        encode_entry(&mut w, e);
    }
    if m.has_snapshot() {
        w.0.put_u8(1);
        encode_snapshot(&mut w, m.get_snapshot());
    } else {
        w.0.put_u8(0);
    }
    w.0.freeze()
}

fn encode_entry(w: &mut Writer, e: &Entry) {
    w.varint(e.get_entry_type() as u64);
    w.varint(e.term);
    w.varint(e.index);
    w.bytes(&e.data);
    w.bytes(&e.context);
    w.0.put_u8(u8::from(e.sync_log));
}

fn encode_snapshot(w: &mut Writer, s: &Snapshot) {
    w.bytes(&s.data);
    if !s.has_metadata() {
        w.0.put_u8(0);
        return;
    }
    let md = s.get_metadata();
    w.0.put_u8(if md.has_conf_state() { 3 } else { 1 });
    w.varint(md.index);
    w.varint(md.term);
    if md.has_conf_state() {
        let cs = md.get_conf_state();
        w.ids(&cs.voters);
        w.ids(&cs.learners);
        w.ids(&cs.voters_outgoing);
        w.ids(&cs.learners_next);
        w.0.put_u8(u8::from(cs.auto_leave));
    }
}

/// A raft message from a frame, refusing what no peer should send.
pub fn decode_message(frame: Bytes, limits: &Limits) -> Result<Message, CodecError> {
    let mut r = Reader::start(frame)?;
    let t = r.varint()?;
    let msg_type = message_type(t)
        .filter(|t| from_network(*t))
        .ok_or(CodecError::MessageType(t))?;
    let mut m = Message::default();
    m.set_msg_type(msg_type);
    m.to = r.varint()?;
    m.from = r.varint()?;
    m.term = r.varint()?;
    m.log_term = r.varint()?;
    m.index = r.varint()?;
    m.commit = r.varint()?;
    m.commit_term = r.varint()?;
    m.request_snapshot = r.varint()?;
    m.reject_hint = r.varint()?;
    m.deprecated_priority = r.varint()?;
    m.priority = unzigzag(r.varint()?);
    m.reject = r.flag()?;
    m.context = r.bytes()?;
    let n = r.len(limits.max_entries)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(decode_entry(&mut r)?);
    }
    if msg_type == MessageType::MsgReadIndex && entries.len() != 1 {
        return Err(CodecError::ReadIndex);
    }
    m.set_entries(entries.into());
    if r.flag()? {
        m.set_snapshot(decode_snapshot(&mut r)?);
    }
    r.finish()?;
    Ok(m)
}

fn decode_entry(r: &mut Reader) -> Result<Entry, CodecError> {
    let t = r.varint()?;
    if t != EntryType::EntryNormal as u64 {
        return Err(CodecError::EntryType(t));
    }
    let mut e = Entry::default();
    e.set_entry_type(EntryType::EntryNormal);
    e.term = r.varint()?;
    e.index = r.varint()?;
    e.data = r.bytes()?;
    e.context = r.bytes()?;
    e.sync_log = r.flag()?;
    Ok(e)
}

fn decode_snapshot(r: &mut Reader) -> Result<Snapshot, CodecError> {
    let mut s = Snapshot {
        data: r.bytes()?,
        ..Snapshot::default()
    };
    let flags = r.u8()?;
    if flags == 0 {
        return Ok(s);
    }
    if flags != 1 && flags != 3 {
        return Err(CodecError::BadTag);
    }
    let mut md = SnapshotMetadata {
        index: r.varint()?,
        term: r.varint()?,
        ..SnapshotMetadata::default()
    };
    if flags == 3 {
        md.set_conf_state(ConfState {
            voters: r.ids()?,
            learners: r.ids()?,
            voters_outgoing: r.ids()?,
            learners_next: r.ids()?,
            auto_leave: r.flag()?,
            ..ConfState::default()
        });
    }
    s.set_metadata(md);
    Ok(s)
}

const CHANGE_APPEND: u8 = 0;
const CHANGE_HARD_STATE: u8 = 1;
const CHANGE_RESTORE: u8 = 2;
const CHANGE_COMPACT: u8 = 3;
const CHANGE_JOINING: u8 = 4;
const CHANGE_JOINED: u8 = 5;

/// Changes to the durable raft state as one record of the driver's file.
pub fn encode_changes(changes: &[Change]) -> Bytes {
    let mut w = Writer(BytesMut::new());
    w.0.put_u8(FORMAT);
    w.varint(changes.len() as u64);
    for change in changes {
        match change {
            Change::Append(ents) => {
                w.0.put_u8(CHANGE_APPEND);
                w.varint(ents.len() as u64);
                for e in ents {
                    encode_entry(&mut w, e);
                }
            }
            Change::HardState(hs) => {
                w.0.put_u8(CHANGE_HARD_STATE);
                w.varint(hs.term);
                w.varint(hs.vote);
                w.varint(hs.commit);
            }
            Change::Restore(snap) | Change::Compact(snap) => {
                w.0.put_u8(if matches!(change, Change::Restore(_)) {
                    CHANGE_RESTORE
                } else {
                    CHANGE_COMPACT
                });
                encode_snapshot(&mut w, snap);
            }
            Change::Joining => w.0.put_u8(CHANGE_JOINING),
            Change::Joined { vote_floor } => {
                w.0.put_u8(CHANGE_JOINED);
                w.varint(*vote_floor);
            }
        }
    }
    w.0.freeze()
}

/// A record of the driver's file back as changes. The file is this node's own, so
/// bounds are those of memory; a damaged record is refused whole.
pub fn decode_changes(record: Bytes) -> Result<Vec<Change>, CodecError> {
    let mut r = Reader::start(record)?;
    let n = r.varint()?;
    let mut changes = Vec::new();
    for _ in 0..n {
        changes.push(match r.u8()? {
            CHANGE_APPEND => {
                let count = r.varint()?;
                let mut ents = Vec::new();
                for _ in 0..count {
                    ents.push(decode_entry(&mut r)?);
                }
                Change::Append(ents)
            }
            CHANGE_HARD_STATE => Change::HardState(HardState {
                term: r.varint()?,
                vote: r.varint()?,
                commit: r.varint()?,
                ..HardState::default()
            }),
            CHANGE_RESTORE => Change::Restore(decode_snapshot(&mut r)?),
            CHANGE_COMPACT => Change::Compact(decode_snapshot(&mut r)?),
            CHANGE_JOINING => Change::Joining,
            CHANGE_JOINED => Change::Joined {
                vote_floor: r.varint()?,
            },
            _ => return Err(CodecError::BadTag),
        });
    }
    r.finish()?;
    Ok(changes)
}

const OP_PUT: u8 = 0;
const OP_DELETE: u8 = 1;

/// A batch of journal ops as the data of one replicated entry.
pub fn encode_ops(ops: &[JournalOp]) -> Bytes {
    let mut w = Writer(BytesMut::new());
    w.0.put_u8(FORMAT);
    w.varint(ops.len() as u64);
    for op in ops {
        match op {
            JournalOp::Put { key, value } => {
                w.0.put_u8(OP_PUT);
                w.varint(*key);
                w.bytes(value);
            }
            JournalOp::Delete { key } => {
                w.0.put_u8(OP_DELETE);
                w.varint(*key);
            }
        }
    }
    w.0.freeze()
}

/// The journal ops of a replicated entry; empty data (the entry a new leader appends)
/// holds none.
pub fn decode_ops(data: Bytes, limits: &Limits) -> Result<Vec<JournalOp>, CodecError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader::start(data)?;
    let n = r.len(limits.max_ops)?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        ops.push(match r.u8()? {
            OP_PUT => JournalOp::Put {
                key: r.varint()?,
                value: r.bytes()?,
            },
            OP_DELETE => JournalOp::Delete { key: r.varint()? },
            _ => return Err(CodecError::BadTag),
        });
    }
    r.finish()?;
    Ok(ops)
}

/// The replicated state (the journal's live entries) as a snapshot's data.
pub fn encode_image(image: &BTreeMap<u64, Bytes>) -> Bytes {
    let mut w = Writer(BytesMut::new());
    w.0.put_u8(FORMAT);
    w.varint(image.len() as u64);
    for (key, value) in image {
        w.varint(*key);
        w.bytes(value);
    }
    w.0.freeze()
}

/// The replicated state from a snapshot's data; empty data is the empty state.
pub fn decode_image(data: Bytes) -> Result<BTreeMap<u64, Bytes>, CodecError> {
    let mut image = BTreeMap::new();
    if data.is_empty() {
        return Ok(image);
    }
    let mut r = Reader::start(data)?;
    let n = r.varint()?;
    for _ in 0..n {
        let key = r.varint()?;
        image.insert(key, r.bytes()?);
    }
    r.finish()?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_entries: 16,
        max_ops: 16,
    };

    fn sample() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = u64::MAX;
        m.log_term = 7;
        m.index = 300;
        m.commit = 299;
        m.commit_term = 6;
        m.reject = true;
        m.reject_hint = 12;
        m.priority = -5;
        m.context = Bytes::from_static(b"ctx");
        let e = Entry {
            term: 7,
            index: 301,
            data: encode_ops(&[
                JournalOp::Put {
                    key: 9,
                    value: Bytes::from_static(b"v"),
                },
                JournalOp::Delete { key: 3 },
            ]),
            ..Entry::default()
        };
        m.set_entries(vec![e.clone(), e].into());
        let mut s = Snapshot {
            data: Bytes::from_static(b"image"),
            ..Snapshot::default()
        };
        s.mut_metadata().index = 5;
        s.mut_metadata().term = 2;
        s.mut_metadata().mut_conf_state().voters = vec![3, 1, 2];
        s.mut_metadata().mut_conf_state().auto_leave = true;
        m.set_snapshot(s);
        m
    }

    #[test]
    fn messages_round_trip_field_for_field() {
        let m = sample();
        let back = decode_message(encode_message(&m), &LIMITS).unwrap();
        assert_eq!(back, m);
        let mut plain = Message::default();
        plain.set_msg_type(MessageType::MsgHeartbeat);
        assert_eq!(
            decode_message(encode_message(&plain), &LIMITS).unwrap(),
            plain,
            "no snapshot stays no snapshot"
        );
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let frame = encode_message(&sample());
        for n in 0..frame.len() {
            assert!(
                decode_message(frame.slice(..n), &LIMITS).is_err(),
                "cut at {n}"
            );
        }
        let mut longer = frame.to_vec();
        longer.push(0);
        assert_eq!(
            decode_message(longer.into(), &LIMITS),
            Err(CodecError::Trailing)
        );
    }

    #[test]
    fn proposals_local_types_and_membership_entries_are_refused() {
        for t in [
            MessageType::MsgPropose,
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
        ] {
            let mut m = sample();
            m.set_msg_type(t);
            assert_eq!(
                decode_message(encode_message(&m), &LIMITS),
                Err(CodecError::MessageType(t as u64))
            );
        }
        let mut m = sample();
        m.mut_entries()[0].set_entry_type(EntryType::EntryConfChangeV2);
        assert_eq!(
            decode_message(encode_message(&m), &LIMITS),
            Err(CodecError::EntryType(2))
        );
        let mut m = sample();
        m.set_msg_type(MessageType::MsgReadIndex);
        assert_eq!(
            decode_message(encode_message(&m), &LIMITS),
            Err(CodecError::ReadIndex)
        );
        let tight = Limits {
            max_entries: 1,
            max_ops: 1,
        };
        assert_eq!(
            decode_message(encode_message(&sample()), &tight),
            Err(CodecError::TooMany)
        );
    }

    #[test]
    fn changes_round_trip() {
        let m = sample();
        let changes = vec![
            Change::Restore(m.get_snapshot().clone()),
            Change::Append(m.entries.to_vec()),
            Change::HardState(HardState {
                term: 3,
                vote: 2,
                commit: 300,
                ..HardState::default()
            }),
            Change::Compact(m.get_snapshot().clone()),
            Change::Joining,
            Change::Joined { vote_floor: 9 },
        ];
        let record = encode_changes(&changes);
        assert_eq!(decode_changes(record.clone()).unwrap(), changes);
        for n in 0..record.len() {
            assert!(decode_changes(record.slice(..n)).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn ops_and_images_round_trip() {
        let ops = vec![
            JournalOp::Put {
                key: u64::MAX,
                value: Bytes::from_static(b""),
            },
            JournalOp::Delete { key: 0 },
        ];
        assert_eq!(decode_ops(encode_ops(&ops), &LIMITS).unwrap(), ops);
        assert_eq!(decode_ops(Bytes::new(), &LIMITS).unwrap(), vec![]);
        let image: BTreeMap<u64, Bytes> = [
            (1, Bytes::from_static(b"a")),
            (70_000, Bytes::from_static(b"bb")),
        ]
        .into();
        assert_eq!(decode_image(encode_image(&image)).unwrap(), image);
        let frame = encode_image(&image);
        for n in 1..frame.len() {
            assert!(decode_image(frame.slice(..n)).is_err(), "cut at {n}");
        }
    }
}
