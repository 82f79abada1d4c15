//! Core audit events become audit log records: the same typed subjects
//! (`identity::audit::AuditEvent`, issue 24), stamped with the time.

use store::audit::Record;

use super::now_ms;
use enrp_core::registrar::AuditEvent;

/// The record of `event`, now; its detail made printable ([`audit_text`]: some of it comes
/// from peers).
pub(super) fn to_record(mut event: AuditEvent) -> Record {
    event.detail = event.detail.map(|d| audit_text(&d));
    Record::from_event(now_ms(), event)
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
    use store::audit::Outcome;

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
