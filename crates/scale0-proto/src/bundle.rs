//! Bundles: many whole messages carried as one (`docs/protocol.md`, "Bundles").
//!
//! Each message through a broker costs libzmq a pipe write and a read on both sides of
//! every hop, a wake-up of its I/O thread, an allocation and a copy per frame; for 128-byte
//! requests that, not the broker's own work, is what a request costs. A peer that speaks
//! bundles gets everything that is ready for it at once as one message of two frames:
//!
//! ```text
//! ["S0B1", packed]      packed = message+   message = count (frame-len frame){count}
//! ```
//!
//! `count` and `frame-len` are unsigned LEB128 varints; every inner message is exactly what
//! would otherwise have been sent alone (after the routing id), so bundling changes no
//! protocol rule, only how many messages carry them. Inner messages keep their order.

use crate::mdp::Frames;
use crate::wire::{Reader, WireError, Writer, varint_len};
use bytes::{Bytes, BytesMut};

/// The MMI service a native client asks (`200`) before it sends a broker bundles; a
/// broker that does not know it answers `501`, and is sent none.
pub const SERVICE: &[u8] = b"mmi.bundle";
/// The first frame of a bundle.
pub const HEADER: &[u8] = b"S0B1";
/// A packed frame is at most this long: every peer that asks for bundles reads frames of
/// this size (its own bound on messages may be smaller, as long as no one message it
/// takes is larger).
pub const MAX_BYTES: usize = 64 * 1024;
/// Messages in one bundle at most, on encoding. A bundle read may hold up to
/// [`MAX_DECODED`]: more is refused as malformed, so one message cannot make a peer do
/// unbounded work at once.
pub const MAX_MESSAGES: usize = 256;
/// Messages a decoded bundle may hold at most.
pub const MAX_DECODED: usize = 1024;
/// A message whose encoding is longer than this is sent alone: bundling pays for small
/// messages, and a large one would leave little room for others.
pub const MAX_ITEM_BYTES: usize = 16 * 1024;

/// Why a bundle could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Not `[HEADER, packed]`.
    #[error("a bundle is the header and one packed frame")]
    Shape,
    /// A varint or a frame runs past the end of the packed frame, or a varint is too long.
    #[error("a bundle's packed frame ends inside a message")]
    Truncated,
    /// A message of no frames, or more messages than [`MAX_DECODED`].
    #[error("a bundle holds an empty message or too many messages")]
    Count,
}

/// Runs `f` on each message `frames` carries: itself, or those of a bundle, in order. A
/// bad message spoils only itself: every one is run, and the first error returned.
pub fn each<E: From<BundleError>>(
    frames: Frames,
    mut f: impl FnMut(Frames) -> Result<(), E>,
) -> Result<(), E> {
    if !is_bundle(&frames) {
        return f(frames);
    }
    let mut result = Ok(());
    for m in decode(&frames)? {
        let r = f(m);
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// `first` and the messages `next` hands over after it (each while [`Packer::accepts`]
/// it), as one bundle; `first` alone when it is too large or nothing follows. Also how
/// many messages that is.
pub fn gather(first: Frames, mut next: impl FnMut(&Packer) -> Option<Frames>) -> (Frames, usize) {
    let mut packer = Packer::new(0);
    if !packer.fits(&first) {
        return (first, 1);
    }
    packer.push(first);
    while let Some(m) = next(&packer) {
        packer.push(m);
    }
    let n = packer.len();
    (packer.finish(), n)
}

/// Whether a message (after any routing id) is a bundle.
pub fn is_bundle(frames: &[Bytes]) -> bool {
    frames.first().is_some_and(|f| f.as_ref() == HEADER)
}

/// The messages of a bundle (after any routing id), in order; their frames share the
/// packed frame's memory.
pub fn decode(frames: &[Bytes]) -> Result<Vec<Frames>, BundleError> {
    let [header, packed] = frames else {
        return Err(BundleError::Shape);
    };
    if header.as_ref() != HEADER {
        return Err(BundleError::Shape);
    }
    let mut r = Reader(packed.clone());
    let mut out = Vec::new();
    while !r.0.is_empty() {
        if out.len() == MAX_DECODED {
            return Err(BundleError::Count);
        }
        let count = r.varint()?;
        if count == 0 {
            return Err(BundleError::Count);
        }
        // Each frame takes at least its length byte: a count beyond what is left is a
        // lie, and must not size an allocation.
        if count > r.0.len() as u64 {
            return Err(BundleError::Truncated);
        }
        let mut message = Vec::with_capacity(count as usize);
        for _ in 0..count {
            message.push(r.bytes()?);
        }
        out.push(message);
    }
    if out.is_empty() {
        return Err(BundleError::Count);
    }
    Ok(out)
}

impl From<WireError> for BundleError {
    fn from(_: WireError) -> Self {
        Self::Truncated
    }
}

/// Bytes `frames` take in a packed frame.
fn encoded_len(frames: &[Bytes]) -> usize {
    let count = frames.len() as u64;
    frames
        .iter()
        .map(|f| varint_len(f.len() as u64) + f.len())
        .sum::<usize>()
        + varint_len(count)
}

/// Gathers messages for one peer into a bundle. A lone message leaves as it came, not
/// wrapped: bundling costs nothing when there is nothing to bundle.
#[derive(Debug)]
pub struct Packer {
    /// Leading frames of each message that are not part of it (a ROUTER's routing id):
    /// the first message's go in front of the bundle, the others' are dropped.
    skip: usize,
    first: Option<Frames>,
    packed: Writer,
    messages: usize,
}

impl Packer {
    /// An empty packer for messages that start with `skip` frames of addressing.
    pub fn new(skip: usize) -> Self {
        Self {
            skip,
            first: None,
            packed: Writer(BytesMut::new()),
            messages: 0,
        }
    }

    /// Whether a message may go in a bundle at all (it is small enough).
    pub fn fits(&self, frames: &[Bytes]) -> bool {
        frames.len() > self.skip
            && encoded_len(&frames[self.skip..]) <= MAX_ITEM_BYTES
            && !is_bundle(&frames[self.skip..])
    }

    /// Whether a message that [`Packer::fits`] still has room in this bundle.
    pub fn has_room(&self, frames: &[Bytes]) -> bool {
        // Until a second message comes, the first is not packed yet.
        let first = match &self.first {
            Some(f) if self.messages == 1 => encoded_len(&f[self.skip.min(f.len())..]),
            _ => 0,
        };
        self.messages < MAX_MESSAGES
            && self.packed.0.len() + first + encoded_len(&frames[self.skip.min(frames.len())..])
                <= MAX_BYTES
    }

    /// Whether a message may join this bundle: it [`Packer::fits`] and has room.
    pub fn accepts(&self, frames: &[Bytes]) -> bool {
        self.fits(frames) && self.has_room(frames)
    }

    /// Messages in it.
    pub fn len(&self) -> usize {
        self.messages
    }

    /// True before the first [`Packer::push`].
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Adds a message that [`Packer::fits`] and has room.
    pub fn push(&mut self, frames: Frames) {
        self.messages += 1;
        if self.messages == 1 {
            self.first = Some(frames);
            return;
        }
        if self.messages == 2
            && let Some(first) = self.first.as_mut()
        {
            // The first message goes in now that there is a bundle; its addressing
            // frames stay for the front.
            let body = first.split_off(self.skip.min(first.len()));
            self.pack(&body);
        }
        self.pack(&frames[self.skip.min(frames.len())..]);
    }

    fn pack(&mut self, frames: &[Bytes]) {
        if self.packed.0.is_empty() {
            self.packed.0.reserve(MAX_BYTES.min(4 * 1024));
        }
        self.packed.varint(frames.len() as u64);
        for f in frames {
            self.packed.bytes(f);
        }
    }

    /// The message to send: the lone message as it came, or the bundle (after the first
    /// message's addressing frames); empty if nothing was pushed.
    pub fn finish(self) -> Frames {
        let Some(mut first) = self.first else {
            return Vec::new();
        };
        if self.messages == 1 {
            return first;
        }
        // `push` left only the addressing frames of the first message.
        first.push(Bytes::from_static(HEADER));
        first.push(self.packed.0.freeze());
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(parts: &[&[u8]]) -> Frames {
        parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
    }

    #[test]
    fn a_lone_message_leaves_unwrapped() {
        let mut p = Packer::new(1);
        p.push(msg(&[b"peer", b"S0C1", b"\x04", b"7", b"body"]));
        assert_eq!(p.finish(), msg(&[b"peer", b"S0C1", b"\x04", b"7", b"body"]));
    }

    #[test]
    fn messages_come_back_in_order_after_the_routing_id() {
        let a = msg(&[b"peer", b"S0C1", b"\x04", b"1", b"one"]);
        let b = msg(&[b"peer", b"S0C1", b"\x04", b"2", b"", b"two"]);
        let mut p = Packer::new(1);
        p.push(a.clone());
        p.push(b.clone());
        let out = p.finish();
        assert_eq!(out[0].as_ref(), b"peer");
        assert_eq!(out.len(), 3);
        assert_eq!(
            decode(&out[1..]).unwrap(),
            vec![a[1..].to_vec(), b[1..].to_vec()]
        );
    }

    #[test]
    fn three_messages_keep_only_the_first_routing_id() {
        let m = |n: &[u8]| msg(&[b"peer", b"MDPW02", b"\x02", n, b"", b"body"]);
        let mut p = Packer::new(1);
        for n in [b"1", b"2", b"3"] {
            p.push(m(n));
        }
        let out = p.finish();
        assert_eq!(out[0].as_ref(), b"peer");
        let inner: Vec<Frames> = [b"1", b"2", b"3"]
            .iter()
            .map(|n| m(*n)[1..].to_vec())
            .collect();
        assert_eq!(decode(&out[1..]).unwrap(), inner);
    }

    #[test]
    fn bounds_hold_while_packing() {
        let mut p = Packer::new(0);
        let small = msg(&[b"S0C1", b"\x06", b"1", b"echo", b"", &[0u8; 100]]);
        while p.has_room(&small) {
            p.push(small.clone());
        }
        assert_eq!(p.len(), MAX_MESSAGES);
        let big = msg(&[&vec![0u8; MAX_ITEM_BYTES + 1]]);
        assert!(!p.fits(&big));
        let out = p.finish();
        assert!(out[1].len() <= MAX_BYTES);
        assert_eq!(decode(&out).unwrap().len(), MAX_MESSAGES);
    }

    #[test]
    fn bad_bundles_are_errors() {
        let h = Bytes::from_static(HEADER);
        assert_eq!(decode(std::slice::from_ref(&h)), Err(BundleError::Shape));
        assert_eq!(decode(&[h.clone(), Bytes::new()]), Err(BundleError::Count));
        // One message of one frame claiming 5 bytes, with 2 there.
        assert_eq!(
            decode(&[h.clone(), Bytes::from_static(&[1, 5, b'a', b'b'])]),
            Err(BundleError::Truncated)
        );
        // A message of zero frames.
        assert_eq!(
            decode(&[h.clone(), Bytes::from_static(&[0])]),
            Err(BundleError::Count)
        );
        // A frame count far beyond the bytes left.
        assert_eq!(
            decode(&[h.clone(), Bytes::from_static(&[0xff, 0xff, 0xff, 0x0f])]),
            Err(BundleError::Truncated)
        );
        // A varint that never ends.
        assert_eq!(
            decode(&[h.clone(), Bytes::from(vec![0x80; 12])]),
            Err(BundleError::Truncated)
        );
        let many = [1u8, 0].repeat(MAX_DECODED + 1);
        assert_eq!(decode(&[h, Bytes::from(many)]), Err(BundleError::Count));
    }

    proptest! {
        #[test]
        fn whatever_is_packed_decodes_to_itself(
            messages in prop::collection::vec(
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..6),
                2..40,
            ),
        ) {
            let messages: Vec<Frames> = messages
                .into_iter()
                .map(|m| m.into_iter().map(Bytes::from).collect())
                .collect();
            let mut p = Packer::new(0);
            for m in &messages {
                prop_assert!(p.fits(m) && p.has_room(m));
                p.push(m.clone());
            }
            prop_assert_eq!(decode(&p.finish()).unwrap(), messages);
        }

        #[test]
        fn decoding_anything_never_panics(packed in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&[Bytes::from_static(HEADER), Bytes::from(packed)]);
        }
    }
}
