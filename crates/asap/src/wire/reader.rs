//! A bounds-checked reader over one message (spec §3; STYLE.md §3).

use super::error::{DecodeError, DecodeErrorKind};
use super::limits::MAX_NESTING;
use super::param::ParamType;

/// Reads big-endian fields from a region of one message, knowing its absolute offset so
/// errors can say where the input is wrong.
///
/// A `Reader` never reads outside its region: [`Reader::sub`] and [`Reader::params`]
/// hand out child readers bounded to a declared length, and `depth` counts the parameters
/// enclosing the region (spec §3.2 nesting limit).
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
    end: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader over a whole message (offset 0, depth 0).
    pub fn new(msg: &'a [u8]) -> Self {
        Self {
            msg,
            pos: 0,
            end: msg.len(),
            depth: 0,
        }
    }

    /// Absolute offset of the next byte.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Bytes left in this region.
    pub fn remaining(&self) -> usize {
        self.end - self.pos
    }

    /// True when this region is used up.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    /// How many parameters enclose this region (0 for a message body).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::new(
                self.pos,
                DecodeErrorKind::Truncated { need: n },
            ));
        }
        let s = &self.msg[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The rest of this region.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.msg[self.pos..self.end];
        self.pos = self.end;
        s
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian two's-complement i32.
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// A child reader over the next `len` bytes, which this reader skips.
    /// [`DecodeErrorKind::PastContainer`] if they are not all inside this region.
    pub fn sub(&mut self, len: usize) -> Result<Self, DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::new(self.pos, DecodeErrorKind::PastContainer));
        }
        let child = Self {
            msg: self.msg,
            pos: self.pos,
            end: self.pos + len,
            depth: self.depth,
        };
        self.pos += len;
        Ok(child)
    }

    /// Fails with [`DecodeErrorKind::TrailingBytes`] unless the region is used up.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::new(self.pos, DecodeErrorKind::TrailingBytes))
        }
    }

    /// Iterates the parameters (TLVs, spec §3.2) filling the rest of this region, which
    /// this reader skips. The iterator checks Length ≥ 4, keeps each parameter inside the
    /// region, skips padding and refuses nesting deeper than [`MAX_NESTING`]. It stops
    /// after the first error.
    pub fn params(&mut self) -> Params<'a> {
        let it = Params {
            msg: self.msg,
            pos: self.pos,
            end: self.end,
            depth: self.depth + 1,
            done: false,
        };
        self.pos = self.end;
        it
    }
}

/// Iterator over the parameters of a region; see [`Reader::params`].
#[derive(Clone, Debug)]
pub struct Params<'a> {
    msg: &'a [u8],
    pos: usize,
    end: usize,
    depth: usize,
    done: bool,
}

impl<'a> Iterator for Params<'a> {
    type Item = Result<RawParam<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.end {
            return None;
        }
        let r = self.step();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

impl<'a> Params<'a> {
    fn step(&mut self) -> Result<RawParam<'a>, DecodeError> {
        let start = self.pos;
        let rest = &self.msg[start..self.end];
        if rest.len() < 4 {
            // Not a TLV: the reply quotes the enclosing parameter instead.
            return Err(DecodeError::new(
                start,
                DecodeErrorKind::Truncated { need: 4 },
            ));
        }
        let ty = ParamType(u16::from_be_bytes([rest[0], rest[1]]));
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if len < 4 {
            return Err(DecodeError::with_tlv(
                start + 2,
                DecodeErrorKind::BadLength { len },
                &rest[..4],
            ));
        }
        if len > rest.len() {
            return Err(DecodeError::with_tlv(
                start,
                DecodeErrorKind::PastContainer,
                rest,
            ));
        }
        if self.depth > MAX_NESTING {
            return Err(DecodeError::with_tlv(
                start,
                DecodeErrorKind::TooDeep,
                &rest[..len],
            ));
        }
        // Padding of the last parameter of an inner container may be missing (the outer
        // Length should include it, spec §3.2); tolerating that is unambiguous, unlike at
        // message level where the length is the frame delimiter (spec §3.1).
        let pad = ((4 - len % 4) % 4).min(rest.len() - len);
        self.pos = start + len + pad;
        Ok(RawParam {
            ty,
            msg: self.msg,
            offset: start,
            len,
            depth: self.depth,
        })
    }
}

/// One parameter as found in a message: its type and where its bytes are.
#[derive(Clone, Copy, Debug)]
pub struct RawParam<'a> {
    /// Parameter Type.
    pub ty: ParamType,
    msg: &'a [u8],
    offset: usize,
    len: usize,
    depth: usize,
}

impl<'a> RawParam<'a> {
    /// Absolute offset of the parameter's Type field.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The whole TLV (header and value, without trailing padding).
    pub fn tlv(&self) -> &'a [u8] {
        &self.msg[self.offset..self.offset + self.len]
    }

    /// The value (Length − 4 bytes).
    pub fn value(&self) -> &'a [u8] {
        &self.msg[self.offset + 4..self.offset + self.len]
    }

    /// A reader over the value, for parameters that contain fields and parameters.
    pub fn reader(&self) -> Reader<'a> {
        Reader {
            msg: self.msg,
            pos: self.offset + 4,
            end: self.offset + self.len,
            depth: self.depth,
        }
    }

    /// Runs `f` on the value and requires it to use the value up; any error that does not
    /// yet quote an inner parameter quotes this one (spec §4.7 cause info).
    pub fn decode<T>(
        &self,
        f: impl FnOnce(&mut Reader<'a>) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        let mut r = self.reader();
        let v = f(&mut r).and_then(|v| r.finish().map(|()| v));
        v.map_err(|e| e.in_param(self.tlv()))
    }

    /// An [`DecodeErrorKind::InvalidValue`] error for this parameter at `offset`.
    pub fn invalid(&self, offset: usize, why: &'static str) -> DecodeError {
        DecodeError::with_tlv(
            offset,
            DecodeErrorKind::InvalidValue {
                param: self.ty,
                why,
            },
            self.tlv(),
        )
    }
}
