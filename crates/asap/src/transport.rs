//! Messages over a byte stream (spec §12.2): any `AsyncRead`/`AsyncWrite` — a TLS/TCP
//! connection, TLS over SCTP, or a simulated stream in tests — carries ASAP or ENRP
//! messages back to back, each delimited by its own Message Length.

#[cfg(feature = "sctp")]
pub mod sctp;

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::wire::{DecodeError, Framer};

/// Why reading a message failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The stream failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    /// A framing fault (spec §12.2): the connection must be closed without reply.
    #[error("framing fault: {0}")]
    Framing(DecodeError),
    /// The stream ended inside a message.
    #[error("connection closed inside a message ({0} bytes pending)")]
    Truncated(usize),
}

/// Reads whole messages from a stream. Bounded: it never holds more than the framer's
/// capacity (twice the largest message allowed).
#[derive(Debug)]
pub struct MessageReader<R> {
    inner: R,
    framer: Framer,
    buf: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// A reader cutting messages with `framer` (ASAP or ENRP, with its size limit).
    pub fn new(inner: R, framer: Framer) -> Self {
        Self {
            inner,
            framer,
            buf: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }

    /// The next whole message, or `None` at a clean end of stream. Cancel-safe: bytes
    /// already read stay in the framer.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            if let Some(frame) = self.framer.pop().map_err(ReadError::Framing)? {
                return Ok(Some(frame));
            }
            let room = self.framer.available().min(self.buf.len());
            let n = self.inner.read(&mut self.buf[..room]).await?;
            if n == 0 {
                return match self.framer.buffered() {
                    0 => Ok(None),
                    pending => Err(ReadError::Truncated(pending)),
                };
            }
            self.framer
                .push(&self.buf[..n])
                .map_err(ReadError::Framing)?;
        }
    }
}

/// Writes one encoded message with one write call where possible (spec §12.2: keeps
/// Wireshark's stock dissector usable) and flushes it.
pub async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> io::Result<()> {
    w.write_all(msg).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::limits::MAX_MESSAGE_LEN;

    #[tokio::test]
    async fn reads_messages_split_and_joined_and_rejects_bad_framing() {
        let dereg = hex("020000180009000c4563686f506f6f6c000e0008deadbeef");
        let resolve = hex("050000100009000c4563686f506f6f6c");
        let (mut a, b) = tokio::io::duplex(7); // small pipe: messages arrive in pieces
        let writer = tokio::spawn({
            let (d, r) = (dereg.clone(), resolve.clone());
            async move {
                let mut both = d;
                both.extend_from_slice(&r);
                write_message(&mut a, &both).await.expect("write");
                write_message(&mut a, &[1, 0, 0, 6, 0, 0])
                    .await
                    .expect("write");
            }
        });
        let mut r = MessageReader::new(b, Framer::asap(MAX_MESSAGE_LEN));
        assert_eq!(r.next().await.expect("frame"), Some(dereg));
        assert_eq!(r.next().await.expect("frame"), Some(resolve));
        assert!(matches!(r.next().await, Err(ReadError::Framing(_))));
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn clean_and_truncated_ends() {
        let (mut a, b) = tokio::io::duplex(64);
        write_message(&mut a, &[5, 0, 0, 16, 0])
            .await
            .expect("write");
        drop(a);
        let mut r = MessageReader::new(b, Framer::asap(MAX_MESSAGE_LEN));
        assert!(matches!(r.next().await, Err(ReadError::Truncated(5))));
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        let mut r = MessageReader::new(b, Framer::asap(MAX_MESSAGE_LEN));
        assert!(r.next().await.expect("clean end").is_none());
    }

    fn hex(s: &str) -> Vec<u8> {
        ::hex::decode(s).expect("hex")
    }
}
