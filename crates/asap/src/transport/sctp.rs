//! SCTP (RFC 9260), the transport RFC 5352/5353 require, as the same byte streams as TLS
//! over TCP: one-to-one associations (`tokio-sctp`) read and written through
//! `AsyncRead`/`AsyncWrite`, so that TLS (RFC 3436 style), the framer and the daemon's
//! connection tasks run over SCTP unchanged.
//!
//! - Every SCTP message sent carries the protocol's PPID (ASAP 11, ENRP 12; spec §2).
//! - [`Framing::Messages`] (plaintext, legacy peers such as RSPLIB) sends each ASAP or
//!   ENRP message as exactly one SCTP message, as RSPLIB expects; [`Framing::Stream`]
//!   (TLS) cuts anywhere, since TLS records delimit themselves.
//! - Endpoints may be multi-homed: a listener binds several addresses on one port; a
//!   connection may be given several addresses of its peer, and tells all of its peer's
//!   ([`SctpConnection::peer_addrs`], which a registrar checks registrations against).
//!
//! Where the kernel has no SCTP, creating a socket fails: [`available`] tells, so that
//! callers can fall back to TCP (or tests skip) instead of failing.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_sctp::{RecvFlags, SctpSocket, SendOptions};

use crate::addr::{Endpoint, EndpointError};

/// The SCTP Payload Protocol Identifier of ASAP (spec §2, IANA).
pub const PPID_ASAP: u32 = 11;
/// The SCTP Payload Protocol Identifier of ENRP (spec §2, IANA).
pub const PPID_ENRP: u32 = 12;

/// Largest SCTP message a [`Framing::Stream`] write sends: about one TLS record, well
/// under the kernel's default send buffer (a message larger than the send buffer would
/// fail with EMSGSIZE).
const MAX_STREAM_CHUNK: usize = 16 * 1024 + 512;

/// How writes are cut into SCTP messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Bytes of TLS records: a write is sent as one or more SCTP messages of at most
    /// 16.5 KiB, cut anywhere.
    Stream,
    /// Plain ASAP or ENRP for legacy peers: every write must hold whole messages, and each
    /// message leaves as one SCTP message (RSPLIB reads one message per `recvmsg`).
    Messages,
}

/// Whether this kernel has SCTP: an SCTP socket can be created.
pub fn available() -> bool {
    SctpSocket::new(tokio_sctp_domain(false)).is_ok()
}

/// The answer for hosts without SCTP, in one line (what a test that skips prints, and what
/// `enrpd` says when SCTP was asked for).
pub const UNAVAILABLE: &str = "this kernel has no SCTP (socket(IPPROTO_SCTP) fails): SCTP is off";

fn tokio_sctp_domain(v6: bool) -> socket2::Domain {
    if v6 {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    }
}

/// The `sockaddr` that `sctp_bindx`/`sctp_connectx` take, built without `unsafe`.
fn raw_v4(addr: SocketAddrV4) -> libc::sockaddr {
    let mut sa_data = [0 as libc::c_char; 14];
    let bytes = addr
        .port()
        .to_be_bytes()
        .into_iter()
        .chain(addr.ip().octets());
    for (d, b) in sa_data.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

fn raw_v4_all(addrs: &[SocketAddr]) -> io::Result<Vec<libc::sockaddr>> {
    addrs
        .iter()
        .map(|a| match a {
            SocketAddr::V4(v4) => Ok(raw_v4(*v4)),
            SocketAddr::V6(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                EndpointError::Family,
            )),
        })
        .collect()
}

/// Registers `socket` with tokio's reactor.
///
/// `AsyncFd::new` is deprecated because an arbitrary `AsRawFd` need not own its
/// descriptor; an `SctpSocket` owns it (a `socket2::Socket`) for as long as the `AsyncFd`
/// holds it, which is the condition `AsyncFd::register` states. The workspace denies
/// `unsafe` (but for `getaddrs::peer_addrs`), so the safe, deprecated form is used.
#[allow(deprecated)]
fn watch(socket: SctpSocket) -> io::Result<AsyncFd<SctpSocket>> {
    AsyncFd::new(socket)
}

/// An SCTP listener (one-to-one style) on one endpoint, possibly multi-homed.
#[derive(Debug)]
pub struct SctpListener {
    fd: AsyncFd<SctpSocket>,
    local: Endpoint,
}

impl SctpListener {
    /// Binds every address of `endpoint` on one port (port 0: the first bind picks one,
    /// the others follow it) and listens.
    pub fn bind(endpoint: &Endpoint) -> io::Result<Self> {
        let first = endpoint.addrs()[0];
        let socket = SctpSocket::new(tokio_sctp_domain(first.is_ipv6()))?;
        socket.set_reuseaddr(true)?;
        socket.bind_sys(first)?;
        let port = socket.local_addr()?.port();
        let local = endpoint.with_port(port);
        if local.addrs().len() > 1 {
            socket.bindx_sys(&mut raw_v4_all(&local.addrs()[1..])?)?;
        }
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            fd: watch(socket)?,
            local,
        })
    }

    /// The bound endpoint, with its real port.
    pub fn local(&self) -> &Endpoint {
        &self.local
    }

    /// The next association, as a connection sending `ppid` on every message.
    pub async fn accept(
        &self,
        ppid: u32,
        framing: Framing,
    ) -> io::Result<(SctpConnection, SocketAddr)> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| fd.get_ref().accept()) {
                Ok(Ok((socket, addr))) => {
                    socket.set_nonblocking(true)?;
                    return Ok((SctpConnection::new(socket, addr, ppid, framing)?, addr));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

/// One SCTP association as a byte stream (see the module's introduction).
#[derive(Debug)]
pub struct SctpConnection {
    fd: AsyncFd<SctpSocket>,
    peer: SocketAddr,
    send: SendOptions,
    framing: Framing,
}

impl SctpConnection {
    fn new(socket: SctpSocket, peer: SocketAddr, ppid: u32, framing: Framing) -> io::Result<Self> {
        // Messages are small and latency-bound (keep-alives, resolutions): no bundling
        // delay.
        socket.set_nodelay(true)?;
        Ok(Self {
            fd: watch(socket)?,
            peer,
            // The kernel puts the PPID on the wire as given: network byte order.
            send: SendOptions {
                ppid: ppid.to_be(),
                ..SendOptions::default()
            },
            framing,
        })
    }

    /// Opens an association to the peer `endpoint` (all its addresses are given to the
    /// kernel, which fails over between them), sending `ppid` on every message.
    pub async fn connect(endpoint: &Endpoint, ppid: u32, framing: Framing) -> io::Result<Self> {
        let first = endpoint.addrs()[0];
        let socket = SctpSocket::new(tokio_sctp_domain(first.is_ipv6()))?;
        socket.set_nonblocking(true)?;
        let started = if endpoint.addrs().len() == 1 {
            socket.connect_sys(first)
        } else {
            socket.connectx_sys(&mut raw_v4_all(endpoint.addrs())?)
        };
        match started {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let conn = Self::new(socket, first, ppid, framing)?;
        // Writable once the association is up (or has failed).
        let guard = conn.fd.writable().await?;
        drop(guard);
        if let Some(e) = conn.fd.get_ref().take_error()? {
            return Err(e);
        }
        Ok(conn)
    }

    /// The peer's primary address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Every address of the peer in this association (the kernel's
    /// `SCTP_GET_PEER_ADDRS`, what `sctp_getpaddrs` returns), at most
    /// [`MAX_PEER_ADDRS`]: a peer with more makes this fail (`ENOMEM`).
    pub fn peer_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        use std::os::unix::io::AsRawFd as _;
        let mut buf = [0; getaddrs::BUF_LEN];
        let len = getaddrs::peer_addrs(self.fd.get_ref().as_raw_fd(), &mut buf)?;
        getaddrs::parse(&buf[..len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// This end's primary address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// How many bytes of `buf` the next SCTP message takes.
    fn next_message(&self, buf: &[u8]) -> io::Result<usize> {
        match self.framing {
            Framing::Stream => Ok(buf.len().min(MAX_STREAM_CHUNK)),
            Framing::Messages => {
                let len = buf
                    .get(2..4)
                    .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                    .unwrap_or(0);
                if len < 4 || len > buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "an SCTP write in message framing must hold whole ASAP/ENRP messages",
                    ));
                }
                Ok(len)
            }
        }
    }
}

/// Most peer addresses [`SctpConnection::peer_addrs`] reads of one association (bounds
/// its buffer: 8 + 64 × 28 bytes).
pub const MAX_PEER_ADDRS: usize = 64;

/// `getsockopt(SCTP_GET_PEER_ADDRS)`: with [`recv`], the `unsafe` of the workspace (tokio-sctp
/// has no `sctp_getpaddrs`), and the pure, bounds-checked parser of what it returns.
mod getaddrs {
    use std::io;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::unix::io::RawFd;

    use super::MAX_PEER_ADDRS;

    /// `IPPROTO_SCTP` and `SCTP_GET_PEER_ADDRS` (linux/sctp.h; libc names neither).
    const IPPROTO_SCTP: libc::c_int = 132;
    const SCTP_GET_PEER_ADDRS: libc::c_int = 108;
    /// `struct sctp_getaddrs { sctp_assoc_t assoc_id; __u32 addr_num; __u8 addrs[]; }`:
    /// an i32 and a u32 (native byte order), then `addr_num` packed `sockaddr_in` (16
    /// bytes) or `sockaddr_in6` (28 bytes), each by its family.
    const HEADER: usize = 8;
    const SOCKADDR_IN: usize = 16;
    const SOCKADDR_IN6: usize = 28;
    /// The buffer: room for [`MAX_PEER_ADDRS`] IPv6 addresses.
    pub(super) const BUF_LEN: usize = HEADER + MAX_PEER_ADDRS * SOCKADDR_IN6;

    /// Asks the kernel for the peer addresses of the one association of the one-to-one
    /// SCTP socket `fd`; returns how many bytes of `buf` it filled. More addresses than
    /// fit fail with `ENOMEM` (the kernel never writes past the length given).
    #[allow(unsafe_code)]
    pub(super) fn peer_addrs(fd: RawFd, buf: &mut [u8; BUF_LEN]) -> io::Result<usize> {
        // assoc_id 0: a one-to-one socket's own association.
        buf[..4].copy_from_slice(&0i32.to_ne_bytes());
        let mut len = BUF_LEN as libc::socklen_t;
        // SAFETY: `buf` is valid and writable for `len` bytes (BUF_LEN, a small constant
        // that fits socklen_t) for the whole call and aliased by nothing else; the kernel
        // reads the header from it, writes at most `len` bytes into it (it fails with
        // ENOMEM rather than write more) and stores in `len` how many it wrote. `fd` is
        // a socket the caller owns and keeps open for the call; a bad one is an error.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                IPPROTO_SCTP,
                SCTP_GET_PEER_ADDRS,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        // Never trust a length past the buffer.
        Ok((len as usize).min(BUF_LEN))
    }

    /// What is wrong with a `struct sctp_getaddrs` buffer.
    #[derive(Debug, PartialEq, Eq, thiserror::Error)]
    pub(super) enum Error {
        /// The buffer ends inside the header or an address.
        #[error("SCTP_GET_PEER_ADDRS: truncated at byte {at}")]
        Truncated { at: usize },
        /// An address family other than AF_INET and AF_INET6.
        #[error("SCTP_GET_PEER_ADDRS: unknown address family {family}")]
        Family { family: u16 },
        /// More addresses than [`MAX_PEER_ADDRS`].
        #[error("SCTP_GET_PEER_ADDRS: {count} addresses, at most {MAX_PEER_ADDRS}")]
        TooMany { count: u32 },
        /// Bytes after the last address.
        #[error("SCTP_GET_PEER_ADDRS: bytes after the last address")]
        Trailing,
    }

    /// The addresses of a filled `struct sctp_getaddrs` (`buf` is exactly what the kernel
    /// wrote). Pure: every read is bounds-checked, nothing is trusted.
    pub(super) fn parse(buf: &[u8]) -> Result<Vec<SocketAddr>, Error> {
        fn take<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N], Error> {
            buf.get(at..at + N)
                .and_then(|b| b.try_into().ok())
                .ok_or(Error::Truncated { at })
        }
        let count = u32::from_ne_bytes(take(buf, 4)?);
        if count as usize > MAX_PEER_ADDRS {
            return Err(Error::TooMany { count });
        }
        let mut at = HEADER;
        let mut addrs = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let family = u16::from_ne_bytes(take(buf, at)?);
            let port = u16::from_be_bytes(take(buf, at + 2)?);
            let addr = match i32::from(family) {
                libc::AF_INET => {
                    let ip = Ipv4Addr::from(take::<4>(buf, at + 4)?);
                    take::<SOCKADDR_IN>(buf, at)?;
                    at += SOCKADDR_IN;
                    SocketAddr::V4(SocketAddrV4::new(ip, port))
                }
                libc::AF_INET6 => {
                    let flowinfo = u32::from_be_bytes(take(buf, at + 4)?);
                    let ip = Ipv6Addr::from(take::<16>(buf, at + 8)?);
                    let scope_id = u32::from_ne_bytes(take(buf, at + 24)?);
                    at += SOCKADDR_IN6;
                    SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope_id))
                }
                _ => return Err(Error::Family { family }),
            };
            addrs.push(addr);
        }
        if buf.len() != at {
            return Err(Error::Trailing);
        }
        Ok(addrs)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn v4(ip: [u8; 4], port: u16) -> Vec<u8> {
            let mut b = (libc::AF_INET as u16).to_ne_bytes().to_vec();
            b.extend(port.to_be_bytes());
            b.extend(ip);
            b.extend([0; 8]);
            b
        }

        fn v6(ip: Ipv6Addr, port: u16, scope: u32) -> Vec<u8> {
            let mut b = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
            b.extend(port.to_be_bytes());
            b.extend(0u32.to_be_bytes());
            b.extend(ip.octets());
            b.extend(scope.to_ne_bytes());
            b
        }

        fn buf(count: u32, addrs: &[Vec<u8>]) -> Vec<u8> {
            let mut b = 0i32.to_ne_bytes().to_vec();
            b.extend(count.to_ne_bytes());
            for a in addrs {
                b.extend(a);
            }
            b
        }

        #[test]
        fn mixed_families_parse_in_order() {
            let ip6: Ipv6Addr = "2001:db8::7".parse().expect("ip");
            let b = buf(
                3,
                &[
                    v4([192, 0, 2, 1], 3863),
                    v6(ip6, 3863, 2),
                    v4([127, 0, 0, 1], 9),
                ],
            );
            assert_eq!(b.len(), HEADER + 2 * SOCKADDR_IN + SOCKADDR_IN6);
            assert_eq!(
                parse(&b),
                Ok(vec![
                    "192.0.2.1:3863".parse().expect("addr"),
                    SocketAddr::V6(SocketAddrV6::new(ip6, 3863, 0, 2)),
                    "127.0.0.1:9".parse().expect("addr"),
                ])
            );
            assert_eq!(parse(&buf(0, &[])), Ok(vec![]));
        }

        #[test]
        fn malformed_buffers_are_errors_not_panics() {
            let one = buf(1, &[v4([192, 0, 2, 1], 1)]);
            // Every truncation, header included.
            for n in 0..one.len() {
                assert!(
                    matches!(parse(&one[..n]), Err(Error::Truncated { .. })),
                    "{n}"
                );
            }
            // A count past the addresses given, or past the limit.
            assert!(matches!(
                parse(&buf(2, &[v4([1, 2, 3, 4], 1)])),
                Err(Error::Truncated { .. })
            ));
            assert_eq!(parse(&buf(65, &[])), Err(Error::TooMany { count: 65 }));
            assert_eq!(
                parse(&buf(u32::MAX, &[])),
                Err(Error::TooMany { count: u32::MAX })
            );
            // An unknown family, and bytes after the last address.
            let mut bad = v4([1, 2, 3, 4], 1);
            bad[..2].copy_from_slice(&99u16.to_ne_bytes());
            assert_eq!(parse(&buf(1, &[bad])), Err(Error::Family { family: 99 }));
            let mut long = one.clone();
            long.push(0);
            assert_eq!(parse(&long), Err(Error::Trailing));
            // The most that fits the buffer parses.
            let full = buf(64, &vec![v6(Ipv6Addr::LOCALHOST, 1, 0); MAX_PEER_ADDRS]);
            assert_eq!(full.len(), BUF_LEN);
            assert_eq!(parse(&full).map(|a| a.len()), Ok(MAX_PEER_ADDRS));
        }
    }
}

impl AsyncRead for SctpConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use std::os::unix::io::AsRawFd as _;
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let Some(split) = unfilled.len().checked_sub(recv::SECOND).filter(|s| *s > 0) else {
                // No room for two: one message, then a read that finds the queue empty.
                let mut part = ReadBuf::new(unfilled);
                match guard.try_io(|fd| fd.get_ref().recvmsg(&mut part)) {
                    // Notifications are not data (none are subscribed; skip any that come).
                    Ok(Ok((_, _, flags))) if flags.contains(RecvFlags::NOTIFICATION) => {}
                    Ok(Ok((n, _, _))) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Ok(Err(e)) => return Poll::Ready(Err(e)),
                    Err(_would_block) => {}
                }
                continue;
            };
            // Two reads in one system call: the second finds the queue empty (it usually
            // does: a client waits for its answer), and the socket is then known to be
            // drained without a read of its own that fails with EAGAIN (issue 20: one
            // system call of the four an answer costs).
            let read = guard.try_io(|fd| recv::two(fd.get_ref().as_raw_fd(), unfilled, split));
            let [first, second] = match read {
                Ok(Ok(reads)) => reads,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            };
            let data = |r: Option<recv::Read>| r.filter(|r| !r.notification);
            let mut len = data(first).map_or(0, |r| r.len);
            if let Some(r) = data(second) {
                // The second read's bytes follow the first's (a message cut in two is
                // whole again: the byte stream is what the caller reads).
                unfilled.copy_within(split..split + r.len, len);
                len += r.len;
            }
            if second.is_none() {
                // The kernel found nothing more to read: wait for the next readiness.
                // (Readiness that came in since is kept: tokio clears only this one.)
                // Had the second read failed otherwise than with EAGAIN (the kernel then
                // keeps the error for the next call), the association is ending: its
                // close leaves READ_CLOSED set, which `clear_ready` keeps, so the next
                // read reports it; else the idle timeout ends the connection.
                guard.clear_ready();
            }
            // A read of 0 bytes that is no notification: the end of the stream.
            let end = data(first).is_some_and(|r| r.len == 0);
            if len > 0 || end {
                buf.advance(len);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// `recvmmsg` of up to two SCTP messages: with [`getaddrs`], the `unsafe` of the
/// workspace (its SCTP socket edge; tokio-sctp reads one message per call).
mod recv {
    use std::io;
    use std::os::unix::io::RawFd;

    /// Bytes at the end of the caller's buffer that the second read gets: enough for a
    /// small message, and a larger one is read on (the rest stays queued for the next
    /// read, so the socket is not seen as drained).
    pub(super) const SECOND: usize = 256;

    /// What one of the two reads got.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Read {
        pub(super) len: usize,
        /// An SCTP notification, not data (`MSG_NOTIFICATION`).
        pub(super) notification: bool,
    }

    /// `MSG_NOTIFICATION` (linux/sctp.h; libc does not name it).
    const MSG_NOTIFICATION: libc::c_int = 0x8000;

    /// Reads from the one-to-one SCTP socket `fd` into `buf[..split]`, then, if more is
    /// queued, into `buf[split..]`, in one `recvmmsg`. The second is `None` when the
    /// kernel found nothing more (for a non-blocking socket it then returns one read, not
    /// EAGAIN); the first is never `None` on success (nothing queued at all is EAGAIN).
    #[allow(unsafe_code)]
    pub(super) fn two(fd: RawFd, buf: &mut [u8], split: usize) -> io::Result<[Option<Read>; 2]> {
        let split = split.min(buf.len());
        let (a, b) = buf.split_at_mut(split);
        let mut iov = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            },
        ];
        // SAFETY: an all-zero `mmsghdr` is valid (null pointers, zero lengths and flags).
        let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` and the two `iovec`s it points to live on this stack frame for the
        // whole call; each `iovec` covers one of two disjoint halves of `buf`, which is
        // valid, writable and aliased by nothing else for the call. The kernel writes at
        // most `iov_len` bytes through each, and the received length and flags into
        // `msgs`. No name and no control buffer are given (their pointers are null, their
        // lengths zero). `fd` is a socket the caller owns and keeps open for the call; a
        // bad one is an error. The count 2 matches the array.
        let rc = unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), 2, 0, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let read = |m: &libc::mmsghdr, room: usize| Read {
            // Never trust a length past the buffer.
            len: (m.msg_len as usize).min(room),
            notification: m.msg_hdr.msg_flags & MSG_NOTIFICATION != 0,
        };
        Ok([
            (rc >= 1).then(|| read(&msgs[0], a.len())),
            (rc >= 2).then(|| read(&msgs[1], b.len())),
        ])
    }
}

impl AsyncWrite for SctpConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = self.next_message(buf)?;
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| fd.get_ref().sendmsg(&buf[..n], None, &self.send)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // sctp_sendmsg hands each message to the kernel whole: nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SHUTDOWN: the peer reads the end of the stream after every message sent.
        match self.fd.get_ref().shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ipv4_sockaddr_is_network_order() {
        let raw = raw_v4("192.0.2.1:3864".parse().expect("addr"));
        assert_eq!(raw.sa_family, libc::AF_INET as libc::sa_family_t);
        let bytes: Vec<u8> = raw.sa_data[..6].iter().map(|b| *b as u8).collect();
        assert_eq!(bytes, [0x0f, 0x18, 192, 0, 2, 1]);
    }

    /// A listener on an ephemeral loopback port, and its address.
    fn loopback_listener() -> (SctpListener, Endpoint) {
        let listener = SctpListener::bind(&Endpoint::single("127.0.0.1:0".parse().expect("addr")))
            .expect("bind");
        let at = listener.local().clone();
        (listener, at)
    }

    /// The listener's first association, ASAP in message framing.
    async fn accept_asap(listener: SctpListener) -> SctpConnection {
        let (conn, _) = listener
            .accept(PPID_ASAP, Framing::Messages)
            .await
            .expect("accept");
        conn
    }

    /// Runs only where the kernel has SCTP (the qemu guest, `ci/sctp-lab`).
    #[tokio::test]
    async fn messages_cross_an_association_whole_and_with_the_ppid() {
        if !available() {
            eprintln!("skipped: {UNAVAILABLE}");
            return;
        }
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (listener, at) = loopback_listener();
        let server = tokio::spawn(async move {
            let mut conn = accept_asap(listener).await;
            let mut got = vec![0; 64];
            let n = conn.read(&mut got).await.expect("read");
            got.truncate(n);
            got
        });
        let mut client = SctpConnection::connect(&at, PPID_ASAP, Framing::Messages)
            .await
            .expect("connect");
        // Two messages in one write leave as two SCTP messages: the first read sees one.
        let two = [5, 0, 0, 8, 1, 2, 3, 4, 5, 0, 0, 4];
        client.write_all(&two).await.expect("write");
        assert_eq!(server.await.expect("server"), two[..8].to_vec());
        assert!(client.write_all(&[5, 0, 0, 9, 1]).await.is_err(), "partial");
    }

    /// Runs only where the kernel has SCTP (the qemu guest): a read takes two messages
    /// at once, a second one longer than its share of the buffer is read on whole, and a
    /// read that found the queue empty waits for the next message (issue 20).
    #[tokio::test]
    async fn reads_take_two_messages_at_once_and_then_wait_for_the_next() {
        if !available() {
            eprintln!("skipped: {UNAVAILABLE}");
            return;
        }
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let message = |len: usize, fill: u8| {
            let mut m = vec![fill; len];
            m[..4].copy_from_slice(&[5, 0, (len >> 8) as u8, len as u8]);
            m
        };
        let first: Vec<u8> = [message(8, 1), message(600, 2), message(12, 3)].concat();
        let later = message(16, 4);
        let total = first.len() + later.len();
        let (listener, at) = loopback_listener();
        let server = tokio::spawn(async move {
            let mut conn = accept_asap(listener).await;
            // The first three messages are all queued when the first read comes.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let (mut got, mut buf, mut reads) = (Vec::new(), vec![0; 4096], Vec::new());
            while got.len() < total {
                let n = conn.read(&mut buf).await.expect("read");
                assert!(n > 0, "end of stream after {} bytes", got.len());
                got.extend_from_slice(&buf[..n]);
                reads.push(n);
            }
            (got, reads)
        });
        let mut client = SctpConnection::connect(&at, PPID_ASAP, Framing::Messages)
            .await
            .expect("connect");
        client.write_all(&first).await.expect("write");
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        client.write_all(&later).await.expect("write");
        let (got, reads) = tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("the later message was read (no wait on a drained socket)")
            .expect("server");
        assert_eq!(got, [first, later].concat());
        // The first message and the second's first part (its share of the buffer); the
        // rest of the second and the third; after a wait on the drained socket, the last.
        assert_eq!(reads, [8 + recv::SECOND, 600 - recv::SECOND + 12, 16]);
    }

    /// Runs only where the kernel has SCTP and 192.0.2.1 (the qemu guest): both ends see
    /// all of the other's addresses, not only the primary.
    #[tokio::test]
    async fn an_association_tells_all_its_peer_addresses() {
        if !available() || std::net::UdpSocket::bind("192.0.2.1:0").is_err() {
            eprintln!("skipped: {UNAVAILABLE}, or no 192.0.2.1 here");
            return;
        }
        let two = Endpoint::new(vec![
            "127.0.0.1:0".parse().expect("addr"),
            "192.0.2.1:0".parse().expect("addr"),
        ])
        .expect("endpoint");
        let listener = SctpListener::bind(&two).expect("bind");
        let at = listener.local().clone();
        let server = tokio::spawn(async move {
            let (conn, primary) = listener
                .accept(PPID_ASAP, Framing::Messages)
                .await
                .expect("accept");
            (conn.peer_addrs().expect("server's peer addresses"), primary)
        });
        let to_one = Endpoint::single(at.addrs()[0]);
        let client = SctpConnection::connect(&to_one, PPID_ASAP, Framing::Messages)
            .await
            .expect("connect");
        let mut seen = client.peer_addrs().expect("client's peer addresses");
        seen.sort();
        let mut bound = at.addrs().to_vec();
        bound.sort();
        println!("the client sees the listener at {seen:?}");
        assert_eq!(
            seen, bound,
            "every address the listener bound, from INIT ACK"
        );
        let (seen, primary) = server.await.expect("server");
        println!("the listener sees the client at {seen:?} (primary {primary})");
        assert!(seen.contains(&primary), "{seen:?} lacks {primary}");
    }
}
