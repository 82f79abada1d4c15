//! An operator's drain of a PE (issue 21, `PUT …/pool-elements/{pe_id}/drain`): the PE
//! stays registered (its keep-alives go on) but no registrar returns it in resolutions,
//! and at the deadline its home registrar deregisters it (audited `remove:drained`).
//!
//! Only the PE's home registrar drains it: it is the one that speaks for the PE to its
//! peers (ARCHITECTURE.md §3), and it tells them with an ADD_PE whose Pool Element
//! carries PE Status 0x8104 with D=1 (docs/PROTOCOL-EXTENSIONS.md §5). The drain is the
//! operator's, not the PE's: a re-registration keeps it (whatever the PE says in its
//! status), and after the deadline the PE ID stays drained here (its re-registrations are
//! refused) until the operator lifts the drain (`DELETE …/drain`, [`Core::undrain`]),
//! which is also the one way to cancel a drain before its deadline. Drains are kept in
//! memory (a restart of the home registrar forgets them), at most [`MAX_DRAINS`].

use std::time::Instant;

use super::{Action, AuditAction, Core, PeKey, TimerKey};

/// Most drains a registrar remembers (draining and drained PE IDs): beyond, a new drain is
/// refused ([`DrainRefusal::TooMany`]). Each is a PE key and two times.
pub const MAX_DRAINS: usize = 10_000;

/// What the registrar remembers of an operator's drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Drain {
    /// When the PE is deregistered (the core's clock).
    deadline: Instant,
    /// The same, unix ms (what the PE Status parameter and the admin API say).
    deadline_ms: u64,
    /// Whether the deadline passed (the PE was deregistered, or would be now).
    drained: bool,
}

/// Why a drain (or its lifting) was refused; nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DrainRefusal {
    /// No such PE registered here (for a lift: no drain of that PE ID here).
    #[error("no such PE")]
    NoSuchPe,
    /// The PE is a peer's: drain it at its home registrar (this Server ID).
    #[error("the PE's home is registrar {0:#010x}: drain it there")]
    NotHome(u32),
    /// [`MAX_DRAINS`] drains are remembered already.
    #[error("{MAX_DRAINS} drains are remembered already")]
    TooMany,
}

impl Core {
    /// Drains the owned PE `pe` until `deadline` (`deadline_ms` the same in unix ms): no
    /// resolution returns it from now on (here, and at every peer once they hear the
    /// ADD_PE this returns), and it is deregistered at the deadline. Draining a draining
    /// PE again sets a new deadline.
    ///
    /// # Errors
    /// [`DrainRefusal`]; nothing changed.
    pub fn drain(
        &mut self,
        pe: &PeKey,
        deadline: Instant,
        deadline_ms: u64,
    ) -> Result<Vec<Action>, DrainRefusal> {
        let entry = self
            .handlespace
            .pool(&pe.0, &pe.1)
            .and_then(|p| p.entry(pe.2))
            .ok_or(DrainRefusal::NoSuchPe)?;
        let home = entry.pool_element.home_server_id;
        if home != self.config.server_id.get() || !self.owned.contains_key(pe) {
            return Err(DrainRefusal::NotHome(home));
        }
        if self.drains.len() >= MAX_DRAINS && !self.drains.contains_key(pe) {
            return Err(DrainRefusal::TooMany);
        }
        self.drains.insert(
            pe.clone(),
            Drain {
                deadline,
                deadline_ms,
                drained: false,
            },
        );
        self.timers
            .set(TimerKey::DrainDeadline(pe.clone()), deadline);
        let mut out = Vec::new();
        self.restate(pe, Some(deadline_ms), &mut out);
        Ok(out)
    }

    /// Lifts the operator's drain of `pe` (draining or drained): a draining PE is returned
    /// in resolutions again, a drained PE ID may register again.
    ///
    /// # Errors
    /// [`DrainRefusal::NoSuchPe`] when no drain of it is remembered here.
    pub fn undrain(&mut self, pe: &PeKey) -> Result<Vec<Action>, DrainRefusal> {
        if self.drains.remove(pe).is_none() {
            return Err(DrainRefusal::NoSuchPe);
        }
        self.timers.stop(&TimerKey::DrainDeadline(pe.clone()));
        let mut out = Vec::new();
        if self.owned.contains_key(pe) {
            self.restate(pe, None, &mut out);
        }
        Ok(out)
    }

    /// The drain deadline of `pe` (unix ms) and whether it passed, if an operator drains
    /// it here.
    pub fn drain_of(&self, pe: &PeKey) -> Option<(u64, bool)> {
        self.drains.get(pe).map(|d| (d.deadline_ms, d.drained))
    }

    /// What a registration of `pe` must say about draining: the operator's drain, never
    /// the PE's word. `Err(())`: the PE ID is drained, its registration is refused.
    pub(super) fn drain_for_registration(&self, pe: &PeKey) -> Result<Option<u64>, ()> {
        match self.drains.get(pe) {
            Some(d) if d.drained => Err(()),
            Some(d) => Ok(Some(d.deadline_ms)),
            None => Ok(None),
        }
    }

    /// The deadline of `pe` passed: its home deregisters it, and remembers it drained.
    pub(super) fn drain_deadline(&mut self, pe: &PeKey, out: &mut Vec<Action>) {
        let Some(d) = self.drains.get_mut(pe) else {
            return;
        };
        d.drained = true;
        if self.owned.contains_key(pe) {
            self.remove_owned(pe, AuditAction::RemoveDrained, out);
        }
    }

    /// Re-enters the owned PE `pe` with its drain deadline set to `deadline_ms` and tells
    /// the peers (ADD_PE): the pool takes it out of (or back into) its selection.
    fn restate(&mut self, pe: &PeKey, deadline_ms: Option<u64>, out: &mut Vec<Action>) {
        let Some(entry) = self
            .handlespace
            .pool(&pe.0, &pe.1)
            .and_then(|p| p.entry(pe.2))
            .cloned()
        else {
            return;
        };
        if entry.pool_element.status.drain_deadline_ms == deadline_ms {
            return;
        }
        let mut element = entry.pool_element;
        element.status.drain_deadline_ms = deadline_ms;
        // The same registrant and transport: an update that cannot be refused.
        if self
            .handlespace
            .register(&pe.0, &pe.1, element, entry.registrant)
            .is_ok()
        {
            self.announce_owned(pe, out);
        }
    }
}
