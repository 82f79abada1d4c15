//! Appends messages and parameters to a buffer, filling in lengths and padding (spec §3).

use super::param::ParamType;

/// Where a [`Writer`] puts its bytes.
#[derive(Debug)]
enum Sink<'a> {
    Buf(&'a mut Vec<u8>),
    /// Counts bytes only: `encoded_len()` runs the same code as `encode`, so the two
    /// cannot disagree.
    Count(usize),
}

/// Appends big-endian fields to a `Vec<u8>`, or only counts them.
///
/// [`Writer::param`] and [`Writer::message`] write a placeholder length, run the closure,
/// then patch the length and pad to 4 (spec §3.1, §3.2):
/// - a parameter's Length excludes its own trailing padding but includes the padding of
///   the parameters inside it;
/// - a message's Length includes the padding of its last parameter, so it is a multiple
///   of 4.
///
/// A length above 65535 cannot be written; it is saturated and [`Writer::overflowed`]
/// reports it. Message encoders check their size first, so this never happens for them.
#[derive(Debug)]
pub struct Writer<'a> {
    sink: Sink<'a>,
    overflowed: bool,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            sink: Sink::Buf(out),
            overflowed: false,
        }
    }

    /// A writer that only counts bytes.
    pub fn counter() -> Writer<'static> {
        Writer {
            sink: Sink::Count(0),
            overflowed: false,
        }
    }

    /// Bytes written so far (for a buffer: its length, including what was there before).
    pub fn position(&self) -> usize {
        match &self.sink {
            Sink::Buf(b) => b.len(),
            Sink::Count(n) => *n,
        }
    }

    /// True if some length did not fit its 16-bit field.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Appends bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        match &mut self.sink {
            Sink::Buf(v) => v.extend_from_slice(b),
            Sink::Count(n) => *n += b.len(),
        }
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    /// A big-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }

    /// A big-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }

    /// A big-endian i32.
    pub fn i32(&mut self, v: i32) {
        self.bytes(&v.to_be_bytes());
    }

    /// Zero bytes up to the next multiple of 4 counted from `start`.
    fn pad_from(&mut self, start: usize) {
        let n = (4 - (self.position() - start) % 4) % 4;
        self.bytes(&[0; 3][..n]);
    }

    fn patch_len(&mut self, at: usize, len: usize) {
        let v = u16::try_from(len).unwrap_or_else(|_| {
            self.overflowed = true;
            u16::MAX
        });
        if let Sink::Buf(b) = &mut self.sink {
            b[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
    }

    /// A parameter TLV: type, length, the value written by `f`, padding.
    pub fn param(&mut self, ty: ParamType, f: impl FnOnce(&mut Self)) {
        let start = self.position();
        self.u16(ty.0);
        self.u16(0);
        f(self);
        let len = self.position() - start;
        self.patch_len(start + 2, len);
        self.pad_from(start);
    }

    /// A message: type, flags, length, the body written by `f`, padding.
    pub fn message(&mut self, ty: u8, flags: u8, f: impl FnOnce(&mut Self)) {
        let start = self.position();
        self.u8(ty);
        self.u8(flags);
        self.u16(0);
        f(self);
        self.pad_from(start);
        let len = self.position() - start;
        self.patch_len(start + 2, len);
    }
}
