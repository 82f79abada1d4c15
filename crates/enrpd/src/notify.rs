//! systemd's service notification protocol (sd_notify(3)), without libsystemd: a unit
//! with `Type=notify` (contrib/systemd/) learns from `READY=1` that enrpd serves (or that
//! `rsp pe` registered), from `RELOADING=1` … `READY=1` that a SIGHUP reload ran, and from
//! `STOPPING=1` that it is shutting down. The protocol is one datagram per state change
//! to the `AF_UNIX` socket named by `$NOTIFY_SOCKET` (a path, or `@name` for Linux's
//! abstract namespace); without the variable nothing is sent.
//!
//! Both binaries' edge: `rsp` includes this file (`#[path]`) rather than a crate of its
//! own for some forty lines with no dependency; each binary logs a failed send its way.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// A connection to the service manager's notification socket.
pub(crate) struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl Notifier {
    /// The notifier of `$NOTIFY_SOCKET`, if systemd (or a test) set it.
    pub(crate) fn from_env() -> io::Result<Option<Self>> {
        std::env::var_os("NOTIFY_SOCKET")
            .filter(|s| !s.is_empty())
            .map(|s| Self::new(&s))
            .transpose()
    }

    /// A notifier sending to `socket`: a file system path, or `@name` (abstract).
    pub(crate) fn new(socket: &OsStr) -> io::Result<Self> {
        let bytes = socket.as_bytes();
        let to = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(socket)?,
        };
        Ok(Self {
            socket: UnixDatagram::unbound()?,
            to,
        })
    }

    /// Sends `state` (newline-separated `KEY=value` assignments). A service manager that
    /// went away is not a reason to stop serving: callers log a failure and go on.
    pub(crate) fn notify(&self, state: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.to)
            .map(drop)
    }
}

/// A `STATUS=` line's text: one line (the protocol separates assignments by newlines).
pub(crate) fn status_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0_u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).expect("text")
    }

    #[test]
    fn a_notification_reaches_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::new(path.as_os_str()).expect("notifier");
        notifier.notify("READY=1\nSTATUS=serving").expect("sent");
        assert_eq!(receive(&manager), "READY=1\nSTATUS=serving");
    }

    #[test]
    fn a_notification_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("rsp-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let manager = UnixDatagram::bind_addr(&addr).expect("bind");
        let notifier = Notifier::new(OsStr::new(&format!("@{name}"))).expect("notifier");
        notifier.notify("STOPPING=1").expect("sent");
        assert_eq!(receive(&manager), "STOPPING=1");
    }

    #[test]
    fn a_status_stays_on_one_line() {
        assert_eq!(status_line("a\nb\r\nc"), "a b  c");
    }
}
