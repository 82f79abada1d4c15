//! The NSS key log: with `SSLKEYLOGFILE` set, every TLS session's secrets are appended to
//! that file, so that Wireshark/tshark can decrypt a capture (`-o tls.keylog_file:…`).
//! For debugging and tests only: whoever reads the file can decrypt the traffic, so the
//! binaries say so loudly at start-up ([`key_log_warning`]). Unset, nothing is written.

use std::sync::{Arc, OnceLock};

use rustls::{KeyLog, KeyLogFile};

/// The environment variable naming the key log file (the NSS convention that rustls,
/// curl, browsers and Wireshark share).
pub const KEY_LOG_ENV: &str = "SSLKEYLOGFILE";

/// The process's one key log, shared by every rustls configuration (one open file; the
/// variable is read once, at first use).
pub(crate) fn key_log() -> Arc<dyn KeyLog> {
    static KEY_LOG: OnceLock<Arc<KeyLogFile>> = OnceLock::new();
    KEY_LOG.get_or_init(|| Arc::new(KeyLogFile::new())).clone()
}

/// The warning a binary must print at start-up when TLS session keys go to disk; `None`
/// when `SSLKEYLOGFILE` is unset (or empty, which rustls ignores too).
pub fn key_log_warning() -> Option<String> {
    let path = std::env::var_os(KEY_LOG_ENV).filter(|p| !p.is_empty())?;
    Some(format!(
        "{KEY_LOG_ENV} is set: TLS session keys are written to {}; anyone who can read \
         that file can decrypt this process's ASAP, ENRP and admin traffic. Never set it \
         in production.",
        std::path::Path::new(&path).display()
    ))
}
