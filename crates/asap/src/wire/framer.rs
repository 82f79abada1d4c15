//! Cuts a TCP (TLS) byte stream into whole messages (spec §12.2, D-3).

use super::error::{DecodeError, DecodeErrorKind};
use super::limits::MAX_MESSAGE_LEN;
use super::{AsapMsg, EnrpMsg, MsgType};

/// Splits a byte stream into messages delimited by their own Message Length (spec §12.2).
///
/// Push bytes as they arrive (any split, several messages per read), then pop complete
/// frames. A framing fault — Message Length below 4, not a multiple of 4, above the
/// configured maximum, or below the fixed part of its message type — is reported as soon
/// as the 4-byte header is in, before the body is buffered; the framer then stays failed
/// and the connection must be closed without reply.
///
/// Buffering is bounded: at most one maximum-size message plus one more read, see
/// [`Framer::capacity`].
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf` (consumed bytes are dropped lazily).
    start: usize,
    max_len: usize,
    fixed_len: fn(MsgType) -> usize,
    failed: Option<DecodeError>,
}

impl Framer {
    /// A framer for messages of at most `max_len` bytes (clamped to 4..=65532), whose
    /// fixed part per type is `fixed_len`.
    pub fn new(max_len: usize, fixed_len: fn(MsgType) -> usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_len: max_len.clamp(4, MAX_MESSAGE_LEN),
            fixed_len,
            failed: None,
        }
    }

    /// A framer for an ASAP connection.
    pub fn asap(max_len: usize) -> Self {
        Self::new(max_len, AsapMsg::fixed_len)
    }

    /// A framer for an ENRP connection.
    pub fn enrp(max_len: usize) -> Self {
        Self::new(max_len, EnrpMsg::fixed_len)
    }

    /// Most bytes held at once: two maximum-size messages.
    pub fn capacity(&self) -> usize {
        2 * self.max_len
    }

    /// How many bytes [`Framer::push`] accepts now; read at most this much.
    pub fn available(&self) -> usize {
        self.capacity() - self.buffered()
    }

    /// Bytes held that are not yet part of a popped frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Appends received bytes. Fails with [`DecodeErrorKind::Limit`] (a framing fault)
    /// when more than [`Framer::available`] bytes are pushed, or with the earlier fault
    /// if the framer has failed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if bytes.len() > self.available() {
            return Err(self.fail(DecodeError::framing(
                self.buffered(),
                DecodeErrorKind::Limit {
                    what: "buffered bytes",
                    max: self.capacity(),
                },
            )));
        }
        if self.start > 0 {
            // Drop consumed frames before growing, so the buffer stays within capacity.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete message, `None` if more bytes are needed. A framing fault is
    /// returned now and on every later call. Offsets in errors are relative to the frame.
    pub fn pop(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let rest = &self.buf[self.start..];
        if rest.len() < 4 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let fault = if len < 4 || !len.is_multiple_of(4) {
            Some(DecodeError::framing(2, DecodeErrorKind::BadLength { len }))
        } else if len > self.max_len {
            Some(DecodeError::framing(
                2,
                DecodeErrorKind::Limit {
                    what: "message length",
                    max: self.max_len,
                },
            ))
        } else if len < (self.fixed_len)(MsgType(rest[0])) {
            Some(DecodeError::framing(
                2,
                DecodeErrorKind::Truncated {
                    need: (self.fixed_len)(MsgType(rest[0])),
                },
            ))
        } else {
            None
        };
        if let Some(e) = fault {
            return Err(self.fail(e));
        }
        if rest.len() < len {
            return Ok(None);
        }
        let frame = rest[..len].to_vec();
        self.start += len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }

    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.failed = Some(e.clone());
        self.buf = Vec::new();
        self.start = 0;
        e
    }
}
