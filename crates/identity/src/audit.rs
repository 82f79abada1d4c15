//! The audit vocabulary shared by the registrar core (which says what to record and how
//! soon) and `trust::audit` (which chains and stores it): pure values, so that the core
//! need not depend on the store (issue 24 item 4).

/// When an audit record must be durable (STYLE.md §2, "audit before ack").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Committed before the reply: `trust::audit::AuditLog::append` returns only after
    /// the record's transaction committed, and the registrar's driver carries out no later
    /// action of the same batch before (state changes: the acknowledgement waits for it).
    BeforeReply,
    /// Committed within the writer's bounded batch delay; `append` returns once it is
    /// queued (resolutions, reports).
    Batched,
}
