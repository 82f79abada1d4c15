//! Where the admin API's watch streams (`GET /v1/watch/pools`, issue 22) get their
//! changes: after each step of the core, the driver takes the handlespace's journal
//! (`Core::take_handlespace_changes`: every PE added, updated or removed in the step,
//! whatever caused it: a registration, a peer's update, a takeover, a timeout, a
//! revocation, an operator) and publishes one [`PoolChange`] per entry into the
//! [`PoolChanges`] feed that the admin API reads. A removal's reason is the action of the
//! step's audit record about that PE (`remove:timeout`, `deregister`, …), `peer-update`
//! when a peer's message removed it (audited as one record per message).
//!
//! On the core task, so the feed's order is the handlespace's; the cost is a PE view built
//! per change once anyone has watched (before: a count per pool, for `/metrics`), nothing
//! per resolution.

use std::collections::HashMap;

use admin_api::{ChangeKind, PoolChange, PoolChanges, handle_text};
use enrp_core::handlespace;
use enrp_core::registrar::{Action, Core};
use identity::{Namespace, PeId, PoolHandle};

/// The reason of a removal no audit record of the step names (a peer's ENRP update).
const PEER_UPDATE: &str = "peer-update";

/// Publishes the step's handlespace changes (see the module docs).
pub(super) fn publish(
    core: &mut Core,
    actions: &[Action],
    feed: &PoolChanges,
    now: std::time::Instant,
) {
    let changes = core.take_handlespace_changes();
    if changes.is_empty() {
        return;
    }
    let reasons: HashMap<(&Namespace, &PoolHandle, PeId), &'static str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Audit { event, .. }
                if event.outcome.is_none()
                    && (event.action.is_removal()
                        || event.action == identity::audit::AuditAction::Deregister) =>
            {
                Some((
                    (
                        event.namespace.as_ref()?,
                        event.pool_handle.as_ref()?,
                        event.pe_id?,
                    ),
                    event.action.as_str(),
                ))
            }
            _ => None,
        })
        .collect();
    // Nobody ever watched: count, build nothing (`PoolChanges::armed`).
    if !feed.armed() {
        for c in changes {
            let kind = match c.kind {
                handlespace::ChangeKind::Added => ChangeKind::Added,
                handlespace::ChangeKind::Updated => continue,
                handlespace::ChangeKind::Removed => ChangeKind::Removed,
            };
            feed.count(
                c.namespace.as_str(),
                &handle_text(c.pool_handle.as_bytes()),
                kind,
            );
        }
        return;
    }
    for change in changes {
        let handlespace::Change {
            namespace,
            pool_handle,
            pe_id,
            kind,
        } = change;
        let (kind, pool_element, reason) = match kind {
            handlespace::ChangeKind::Removed => {
                let reason = reasons
                    .get(&(&namespace, &pool_handle, pe_id))
                    .copied()
                    .unwrap_or(PEER_UPDATE);
                (ChangeKind::Removed, None, Some(reason.to_owned()))
            }
            added_or_updated => {
                // Removed later in the same step: its removal follows in the journal.
                let Some(entry) = core
                    .handlespace()
                    .pool(&namespace, &pool_handle)
                    .and_then(|p| p.entry(pe_id))
                else {
                    continue;
                };
                let kind = if added_or_updated == handlespace::ChangeKind::Added {
                    ChangeKind::Added
                } else {
                    ChangeKind::Updated
                };
                let registered = core
                    .home_registered(&namespace, &pool_handle, pe_id)
                    .map(|at| super::unix_ms_of(at, now));
                (
                    kind,
                    Some(crate::admin::pe_view(entry, None, registered)),
                    None,
                )
            }
        };
        feed.publish(PoolChange {
            namespace: namespace.as_str().to_owned(),
            pool: handle_text(pool_handle.as_bytes()),
            change: kind,
            pe_id: pe_id.to_string(),
            pool_element,
            reason,
        });
    }
}
