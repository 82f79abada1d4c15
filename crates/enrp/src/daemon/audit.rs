//! Core audit events become audit log records.

use store::audit::{Outcome, Record};

use super::now_ms;
use enrp_core::registrar::AuditEvent;

pub(super) fn to_record(event: AuditEvent) -> Record {
    let outcome = event.outcome.map_or(Outcome::Ok, Outcome::Cause);
    let mut r = Record::new(now_ms(), event.action, outcome);
    if let Some((id, serial)) = event.actor {
        r.actor = Some(id);
        r.serial = Some(serial);
    }
    r.remote = event.remote;
    r.namespace = event.namespace.map(|n| n.as_str().to_owned());
    r.pool = event.pool_handle.map(|h| h.as_bytes().to_vec());
    r.pe_id = event.pe_id.map(|p| p.get());
    r.detail = event.detail.map(|d| audit_text(&d));
    r
}

/// Detail text as the audit log accepts it: no control or invisible formatting characters
/// (they could forge log lines or reorder what an operator reads), at most 512 characters. Some of it comes from peers (TLS errors, certificates).
pub(crate) fn audit_text(s: &str) -> String {
    s.chars().take(512).map(identity::text::printable).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use identity::audit::AuditAction;

    #[test]
    fn audit_text_is_bounded_and_printable() {
        assert_eq!(audit_text("bad\ncert\u{1b}[31m"), "bad cert [31m");
        assert_eq!(audit_text("peer \u{202e}gnp.exe"), "peer  gnp.exe");
        assert_eq!(audit_text(&"é".repeat(1000)).chars().count(), 512);
        let mut r = Record::new(1, AuditAction::Handshake, Outcome::Ok);
        r.detail = Some(audit_text(&"x\r\n".repeat(10_000)));
        assert!(r.check().is_ok());
    }
}
