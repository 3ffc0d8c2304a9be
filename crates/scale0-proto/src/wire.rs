//! The byte-level pieces of scale0's own encodings (the cluster codec, bundles):
//! unsigned LEB128 varints and length-prefixed byte strings, read without copying.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Why bytes could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WireError {
    /// The input ends before the value does, or a length runs past it.
    Truncated,
    /// A varint longer than ten bytes, or beyond 64 bits.
    BadVarint,
}

/// Appends to a buffer.
#[derive(Debug)]
pub(crate) struct Writer(pub(crate) BytesMut);

impl Writer {
    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.put_u8(v as u8);
    }

    /// `b`'s length, then `b`.
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.0.put_slice(b);
    }
}

/// Bytes a varint of `v` takes.
pub(crate) fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

/// Reads from the front of a buffer; what it hands out shares the buffer's memory.
#[derive(Debug)]
pub(crate) struct Reader(pub(crate) Bytes);

impl Reader {
    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        if self.0.is_empty() {
            return Err(WireError::Truncated);
        }
        Ok(self.0.get_u8())
    }

    pub(crate) fn varint(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(WireError::BadVarint);
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::BadVarint)
    }

    /// A length, then that many bytes.
    pub(crate) fn bytes(&mut self) -> Result<Bytes, WireError> {
        let n = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
        if n > self.0.len() {
            return Err(WireError::Truncated);
        }
        Ok(self.0.split_to(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_say_their_length() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut w = Writer(BytesMut::new());
            w.varint(v);
            assert_eq!(w.0.len(), varint_len(v), "{v}");
            assert_eq!(Reader(w.0.freeze()).varint(), Ok(v));
        }
        // Eleven bytes, or a tenth byte carrying more than the 64th bit.
        assert_eq!(
            Reader(Bytes::from(vec![0x80; 11])).varint(),
            Err(WireError::BadVarint)
        );
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(
            Reader(Bytes::from(over)).varint(),
            Err(WireError::BadVarint)
        );
        assert_eq!(
            Reader(Bytes::from_static(&[3, b'a'])).bytes(),
            Err(WireError::Truncated)
        );
    }
}
