//! Both directions of a forwarded session, copied through one bounded buffer each, with
//! writes coalesced (issue 21's throughput target).
//!
//! `tokio::io::copy_bidirectional` reads once and writes what it got. From a TLS stream
//! one read is one TLS record, at most 16 KiB of plaintext, so a bulk transfer became one
//! `write` into the target's socket per record, and the server behind the PE one `read`
//! per record too. Here a direction keeps reading while its reader has data ready (never
//! waiting for more) until the buffer is full, then writes it: up to [`super::BUFFER_LEN`]
//! per system call, a quarter of the calls on both sides for bulk data, the same latency
//! for interactive data (a read that would wait ends the gathering at once).
//!
//! Otherwise as tokio's: back-pressure (a direction reads only while its buffer has room,
//! so a side that does not read stops the other), half-close (the end of one direction
//! shuts down only its write side), flush when the reader stalls.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One direction's buffer and progress.
struct Direction {
    buf: Box<[u8]>,
    /// `buf[pos..cap]` is read and not yet written.
    pos: usize,
    cap: usize,
    read_done: bool,
    need_flush: bool,
    /// Bytes written so far.
    amt: u64,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Copying,
    ShuttingDown,
    Done,
}

impl Direction {
    fn new(len: usize) -> Self {
        Self {
            buf: vec![0; len].into_boxed_slice(),
            pos: 0,
            cap: 0,
            read_done: false,
            need_flush: false,
            amt: 0,
            state: State::Copying,
        }
    }

    /// Reads into the free end of the buffer once. `Ready(Ok(true))`: data or EOF came.
    fn poll_fill<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
    ) -> Poll<io::Result<()>> {
        let mut rb = ReadBuf::new(&mut self.buf[self.cap..]);
        loop {
            match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    self.read_done = n == 0;
                    self.cap += n;
                    return Poll::Ready(Ok(()));
                }
                other => return other,
            }
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            // Gather: read while there is room and the reader has data now.
            while !self.read_done && self.cap < self.buf.len() {
                match self.poll_fill(cx, reader) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if self.pos == self.cap && !self.read_done {
                // Nothing to write and the reader waits: flush what was written (a
                // buffered writer may hold what the other side waits for), then wait.
                if self.need_flush {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
            while self.pos < self.cap {
                let n = loop {
                    match Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.cap]) {
                        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        Poll::Ready(r) => break r?,
                        // The reader's waker is registered already (it was read until
                        // Pending, or the buffer is full): both wake this task.
                        Poll::Pending => return Poll::Pending,
                    }
                };
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the target or the PU accepted no bytes",
                    )));
                }
                self.pos += n;
                self.amt += n as u64;
                self.need_flush = true;
            }
            self.pos = 0;
            self.cap = 0;
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                return Poll::Ready(Ok(self.amt));
            }
        }
    }

    /// Copies until the reader's EOF, then shuts down the writer (half-close).
    fn poll_transfer<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            match self.state {
                State::Copying => {
                    ready!(self.poll_copy(cx, reader, writer))?;
                    self.state = State::ShuttingDown;
                }
                State::ShuttingDown => {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                    self.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(self.amt)),
            }
        }
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions have ended, through buffers of
/// `a_to_b` and `b_to_a` bytes; returns the bytes carried each way. An error on either
/// direction ends both.
pub(super) async fn copy_both_ways<A, B>(
    a: &mut A,
    b: &mut B,
    a_to_b: usize,
    b_to_a: usize,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut ab = Direction::new(a_to_b);
    let mut ba = Direction::new(b_to_a);
    poll_fn(|cx| {
        let left = ab.poll_transfer(cx, a, b)?;
        let right = ba.poll_transfer(cx, b, a)?;
        let left = ready!(left);
        let right = ready!(right);
        Poll::Ready(Ok((left, right)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A writer that records the size of every write.
    #[derive(Default)]
    struct Writes(Vec<usize>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A reader that has all its data ready and hands out at most one `record` per read,
    /// as a TLS stream does.
    struct Records<'a> {
        data: &'a [u8],
        record: usize,
    }

    impl AsyncRead for Records<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.data.len().min(self.record).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(()))
        }
    }

    /// Records already waiting in the reader are gathered into one write each buffer-full,
    /// where tokio's copy writes each 16 KiB read on its own; what is there when the
    /// reader would wait is written at once.
    #[tokio::test]
    async fn ready_reads_are_gathered_into_full_buffer_writes() {
        let record = 16 * 1024;
        let data = vec![7u8; 10 * record];
        let mut reader = Records {
            data: &data,
            record,
        };
        let mut d = Direction::new(64 * 1024);
        let mut out = Writes::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let carried = loop {
            if let Poll::Ready(r) = d.poll_transfer(&mut cx, &mut reader, &mut out) {
                break r.expect("copies");
            }
        };
        assert_eq!(carried, data.len() as u64);
        assert_eq!(out.0, [65536, 65536, 32768], "four records a write");
    }

    /// Half-close both ways over real sockets: each side's EOF reaches the other while
    /// the other direction still carries bytes.
    #[tokio::test]
    async fn each_direction_ends_on_its_own_and_bytes_arrive_whole() {
        let (mut pu, mut pe_a) = tokio::io::duplex(1024);
        let (mut pe_b, mut server) = tokio::io::duplex(1024);
        let pump =
            tokio::spawn(async move { copy_both_ways(&mut pe_a, &mut pe_b, 4096, 4096).await });
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            pu.write_all(&sent).await.expect("write");
            pu.shutdown().await.expect("half-close");
            let mut answer = Vec::new();
            pu.read_to_end(&mut answer).await.expect("read");
            answer
        });
        let mut got = Vec::new();
        server
            .read_to_end(&mut got)
            .await
            .expect("server reads to EOF");
        assert_eq!(got, big, "bytes whole and in order");
        server.write_all(b"done").await.expect("answer after EOF");
        server.shutdown().await.expect("shutdown");
        assert_eq!(writer.await.expect("pu"), b"done");
        assert_eq!(
            pump.await.expect("pump").expect("copied"),
            (big.len() as u64, 4)
        );
    }
}
