//! The audit of the resolutions a connection task answers itself, compacted (issue 20;
//! docs/SECURITY.md, "Resolutions audited in aggregate").
//!
//! A row per resolution made the audit writer's SQLite thread the largest cost of a
//! resolution. Instead, each connection task keeps a [`Tally`] of its resolutions by
//! (namespace, pool handle, outcome) — how many, how many PEs they returned — and writes
//! one record per key per [`INTERVAL`], when the connection ends and early when
//! [`MAX_KEYS`] keys are held. Every resolution is still counted in a record:
//!
//! - one resolution of its key in the interval: the record it always had (detail
//!   `3 PEs`, or the refusal's reason);
//! - more: one record with the connection's identity, serial and address, the key, the
//!   time of the interval's end, and the detail
//!   `{count} resolutions, {pes} PEs (connection, last {ms} ms, aggregated)` — the count
//!   first, like the refusal summaries of [`super::refusals`] ([`resolutions_in`] reads
//!   either).
//!
//! The unchanged re-registrations a connection task acknowledges itself
//! ([`enrp_core::registrar::ReadView::refresh`]) are tallied the same way, by (namespace,
//! pool handle), with [`Tally::note_refresh`]: one such re-registration keeps its own
//! `reregister` record; more make one with the detail
//! `{count} re-registrations, unchanged (connection, last {ms} ms, aggregated)`, naming
//! the PE when they were all of one PE (docs/SECURITY.md, "Re-registrations that change
//! nothing").
//!
//! Pure: the connection task calls [`Tally::note`] per resolution (and
//! [`Tally::note_refresh`] per re-registration) and [`Tally::take`] when its interval is
//! over or it ends, and hands the records to the audit writer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use asap::wire::param::{Namespace, PeId, PoolHandle};
use enrp_core::registrar::{AuditEvent, ConnId};
use identity::audit::AuditAction;
use store::audit::{Outcome, Record};

use super::audit::to_record;

/// How long a connection's resolutions are gathered into one record per key. One second,
/// as the refusal summaries ([`super::refusals::INTERVAL`]): an operator reading the log
/// sees a resolution within a second of it, and a busy connection writes a record a
/// second per pool instead of one per resolution.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// The most keys a connection's tally holds (the limit: a client probing many pools
/// cannot grow it). A new successful key beyond it writes the tally out at once; a new
/// refused key beyond it is counted under its outcome without its pool (one record per
/// outcome, detail "… of pools beyond the 64 tallied"), so that probing unknown pools
/// writes at most `MAX_KEYS` + a few records per connection per interval.
pub(crate) const MAX_KEYS: usize = 64;

/// One key's resolutions. The key (namespace, pool handle, outcome) is the first
/// resolution's record's own, compared in place ([`Entry::is_for`]): nothing is cloned for
/// a resolution whose key is already tallied.
#[derive(Debug)]
struct Entry {
    /// The first resolution's record: written as it is when it stays alone.
    record: Record,
    /// What was tallied: resolutions, or unchanged re-registrations.
    action: AuditAction,
    count: u64,
    /// Resolutions: the PEs they returned. Re-registrations: unused.
    pes: u64,
    /// Re-registrations of more than the first record's PE.
    other_pes: bool,
}

impl Entry {
    /// Whether a resolution (or re-registration) with these subjects and this outcome
    /// counts here.
    fn is_for(
        &self,
        action: AuditAction,
        ns: Option<&Namespace>,
        pool: Option<&PoolHandle>,
        outcome: &Outcome,
    ) -> bool {
        self.action == action
            && self.record.outcome == *outcome
            && self.record.namespace.as_ref() == ns
            && self.record.pool.as_ref() == pool
    }
}

/// One connection's resolutions not yet written (module docs).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    entries: Vec<Entry>,
    /// When the first of them was noted (unix ms).
    since_ms: u64,
}

impl Tally {
    /// Whether nothing is waiting to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counts one resolution at `now_ms`: its key (`ns`, `pool`, `outcome`: `None` for
    /// success, else the cause code), the PEs it returned, and its audit `event`. The
    /// event is made and the clock (unix ms) read only when the key is new: most
    /// resolutions only add to a count (a clock read per resolution was a system call in
    /// the SCTP guest, issue 20). The records to write at once when [`MAX_KEYS`] was
    /// reached.
    #[allow(clippy::too_many_arguments)] // the key's three parts, and the lazy parts
    pub(crate) fn note(
        &mut self,
        ns: Option<&Namespace>,
        pool: Option<&PoolHandle>,
        outcome: Option<u16>,
        pes: usize,
        event: impl FnOnce() -> AuditEvent,
        now_ms: impl FnOnce() -> u64,
    ) -> Vec<Record> {
        let pes = u64::try_from(pes).unwrap_or(u64::MAX);
        let outcome = outcome.map_or(Outcome::Ok, Outcome::Cause);
        let resolve = AuditAction::Resolve;
        if self.add(resolve, ns, pool, &outcome, pes, None) {
            return Vec::new();
        }
        let full = self.entries.len() >= MAX_KEYS;
        // A refusal for one more pool: counted under its outcome alone (a client probing
        // pools ends here for each probe: no event made, no clock read).
        if full && outcome != Outcome::Ok && self.add(resolve, None, None, &outcome, pes, None) {
            return Vec::new();
        }
        let mut event = event();
        let now_ms = now_ms();
        let mut written = Vec::new();
        if full {
            if outcome != Outcome::Ok {
                event.namespace = None;
                event.pool_handle = None;
                event.detail = Some(format!("of pools beyond the {MAX_KEYS} tallied"));
            } else {
                written = self.take(now_ms);
            }
        }
        if self.entries.is_empty() {
            self.since_ms = now_ms;
        }
        self.entries.push(Entry {
            record: to_record(event),
            action: resolve,
            count: 1,
            pes,
            other_pes: false,
        });
        written
    }

    /// Counts one unchanged re-registration of `pe_id` in `pool` of `ns` that the
    /// connection task acknowledged itself, as [`Self::note`] counts a resolution: its
    /// `event` (a `reregister` record) made and the clock read only for a new key. The
    /// records to write at once when [`MAX_KEYS`] was reached.
    pub(crate) fn note_refresh(
        &mut self,
        ns: &Namespace,
        pool: &PoolHandle,
        pe_id: PeId,
        event: impl FnOnce() -> AuditEvent,
        now_ms: impl FnOnce() -> u64,
    ) -> Vec<Record> {
        let action = AuditAction::Reregister;
        if self.add(action, Some(ns), Some(pool), &Outcome::Ok, 0, Some(pe_id)) {
            return Vec::new();
        }
        let now_ms = now_ms();
        // A PE's pools are few; a connection re-registering PEs in more than MAX_KEYS
        // pools writes its tally out, as for resolutions.
        let written = if self.entries.len() >= MAX_KEYS {
            self.take(now_ms)
        } else {
            Vec::new()
        };
        if self.entries.is_empty() {
            self.since_ms = now_ms;
        }
        self.entries.push(Entry {
            record: to_record(event()),
            action,
            count: 1,
            pes: 0,
            other_pes: false,
        });
        written
    }

    /// Adds to the entry of (`action`, `ns`, `pool`, `outcome`); `false` when it has none.
    /// `pe_id`: the re-registered PE, for a re-registration.
    fn add(
        &mut self,
        action: AuditAction,
        ns: Option<&Namespace>,
        pool: Option<&PoolHandle>,
        outcome: &Outcome,
        pes: u64,
        pe_id: Option<PeId>,
    ) -> bool {
        let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.is_for(action, ns, pool, outcome))
        else {
            return false;
        };
        e.count += 1;
        e.pes = e.pes.saturating_add(pes);
        e.other_pes |= pe_id != e.record.pe_id;
        true
    }

    /// The records of everything noted, one per key, stamped `now_ms`; empties the tally.
    pub(crate) fn take(&mut self, now_ms: u64) -> Vec<Record> {
        let span = now_ms.saturating_sub(self.since_ms);
        self.entries
            .drain(..)
            .map(|e| {
                let mut r = e.record;
                if e.count > 1 && e.action == AuditAction::Reregister {
                    r.time_ms = now_ms;
                    if e.other_pes {
                        r.pe_id = None;
                    }
                    r.detail = Some(format!(
                        "{} re-registrations, unchanged (connection, last {span} ms, aggregated)",
                        e.count
                    ));
                } else if e.count > 1 {
                    r.time_ms = now_ms;
                    let detail = r.detail.take();
                    let why = match detail {
                        // A refusal's reason stays; a success's detail was its PE count.
                        Some(d) if r.outcome != Outcome::Ok => format!(": {d}"),
                        _ => String::new(),
                    };
                    r.detail = Some(format!(
                        "{} resolutions, {} PEs (connection, last {span} ms, aggregated){why}",
                        e.count, e.pes
                    ));
                }
                r
            })
            .collect()
    }
}

/// The tallies of the connection tasks still running, so that the daemon's stop writes
/// what they hold: a connection task that sees the stop after the core task ended has no
/// way left to the audit writer ([`Tallies::drain`]).
#[derive(Debug, Default)]
pub(crate) struct Tallies(Mutex<HashMap<ConnId, Arc<Mutex<Tally>>>>);

impl Tallies {
    /// A new connection's tally, registered until [`Tallies::end`].
    pub(crate) fn start(&self, conn: ConnId) -> Arc<Mutex<Tally>> {
        let tally = Arc::default();
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.insert(conn, Arc::clone(&tally));
        tally
    }

    /// Forgets `conn`'s tally unless it still holds resolutions (its task could not write
    /// them: the daemon is stopping, and [`Tallies::drain`] will).
    pub(crate) fn end(&self, conn: ConnId) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let written = all
            .get(&conn)
            .is_some_and(|t| t.lock().unwrap_or_else(PoisonError::into_inner).is_empty());
        if written {
            all.remove(&conn);
        }
    }

    /// The records of every tally, stamped `now_ms`, emptying them.
    pub(crate) fn drain(&self, now_ms: u64) -> Vec<Record> {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.values()
            .flat_map(|t| {
                t.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(now_ms)
            })
            .collect()
    }
}

/// How many resolutions (or refusals, or re-registrations) an audit record accounts for:
/// the count a summary record starts with (its detail says `aggregated`), else one. For
/// tests and the benchmark that check that every resolution was audited.
pub fn resolutions_in(detail: Option<&str>) -> u64 {
    match detail {
        Some(d) if d.contains("aggregated") => d
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use identity::audit::AuditAction;

    fn event(pool: &str, outcome: Option<u16>) -> AuditEvent {
        AuditEvent {
            actor: None,
            remote: None,
            namespace: Some(Namespace::new("default").expect("namespace")),
            pool_handle: Some(PoolHandle::new(pool.as_bytes()).expect("pool")),
            pe_id: None,
            action: AuditAction::Resolve,
            outcome,
            detail: outcome.is_none().then(|| "3 PEs".to_owned()),
        }
    }

    /// Notes `e` as the connection task does, its key taken from it.
    fn note(t: &mut Tally, e: AuditEvent, pes: usize, now_ms: u64) -> Vec<Record> {
        let (ns, pool) = (e.namespace.clone(), e.pool_handle.clone());
        t.note(ns.as_ref(), pool.as_ref(), e.outcome, pes, || e, || now_ms)
    }

    fn total(records: &[Record]) -> u64 {
        records
            .iter()
            .map(|r| resolutions_in(r.detail.as_deref()))
            .sum()
    }

    #[test]
    fn one_resolution_keeps_its_record_and_repeats_are_counted_in_one() {
        let mut t = Tally::default();
        assert!(note(&mut t, event("echo", None), 3, 1_000).is_empty());
        assert_eq!(t.take(1_500)[0].detail.as_deref(), Some("3 PEs"));
        for _ in 0..1234 {
            assert!(note(&mut t, event("echo", None), 3, 2_000).is_empty());
        }
        note(&mut t, event("echo", Some(9)), 0, 2_100);
        let records = t.take(3_000);
        assert_eq!(records.len(), 2, "one per (pool, outcome)");
        assert_eq!(
            records[0].detail.as_deref(),
            Some("1234 resolutions, 3702 PEs (connection, last 1000 ms, aggregated)")
        );
        assert_eq!(records[0].time_ms, 3_000);
        assert_eq!(total(&records), 1235);
        assert!(t.is_empty());
    }

    #[test]
    fn the_key_bound_holds_and_no_resolution_is_lost() {
        let mut t = Tally::default();
        let mut written = Vec::new();
        // Refusals of many pools: the bound, then one entry for the rest.
        for i in 0..1000 {
            written.extend(note(&mut t, event(&format!("p{i}"), Some(9)), 0, 0));
            assert!(t.entries.len() <= MAX_KEYS + 1);
        }
        assert!(written.is_empty());
        // Probing past the bound only counts: no event is made, no clock read.
        let ns = Namespace::new("default").expect("namespace");
        let probe = PoolHandle::new(b"probe").expect("pool");
        let counted = t.note(
            Some(&ns),
            Some(&probe),
            Some(9),
            0,
            || panic!("an event made for a counted probe"),
            || panic!("the clock read for a counted probe"),
        );
        assert!(counted.is_empty());
        // A new successful key at the bound writes the tally out.
        written.extend(note(&mut t, event("echo", None), 3, 10));
        assert_eq!(written.len(), MAX_KEYS + 1);
        assert_eq!(t.entries.len(), 1);
        written.extend(t.take(20));
        assert_eq!(total(&written), 1002);
        let beyond = written
            .iter()
            .find(|r| r.pool.is_none())
            .expect("the refusals beyond the bound");
        assert!(
            beyond
                .detail
                .as_deref()
                .is_some_and(|d| d.starts_with(&format!("{} resolutions", 1001 - MAX_KEYS))),
            "{beyond:?}"
        );
    }

    fn reregistered(pe: u32) -> AuditEvent {
        AuditEvent {
            pe_id: Some(PeId::new(pe).expect("pe id")),
            action: AuditAction::Reregister,
            detail: None,
            ..event("echo", None)
        }
    }

    /// The first of the five below is a new key: its event is made.
    fn reregistered_never() -> AuditEvent {
        reregistered(7)
    }

    #[test]
    fn re_registrations_are_counted_apart_from_resolutions_and_name_their_pe() {
        let ns = Namespace::new("default").expect("namespace");
        let pool = PoolHandle::new(b"echo").expect("pool");
        let pe = |n| PeId::new(n).expect("pe id");
        let mut t = Tally::default();
        // One alone keeps its own record.
        assert!(
            t.note_refresh(&ns, &pool, pe(7), || reregistered(7), || 10)
                .is_empty()
        );
        let alone = t.take(20);
        assert_eq!(alone.len(), 1);
        assert_eq!(alone[0].action, "reregister");
        assert_eq!(alone[0].detail, None);
        assert_eq!(alone[0].pe_id, Some(pe(7)));
        // Many of one PE, next to resolutions of the same pool: two records.
        for _ in 0..5 {
            let counted = t.note_refresh(&ns, &pool, pe(7), reregistered_never, || 30);
            assert!(counted.is_empty() || t.entries.len() == 1);
        }
        note(&mut t, event("echo", None), 3, 30);
        let records = t.take(1_030);
        assert_eq!(records.len(), 2, "{records:?}");
        assert_eq!(records[0].action, "reregister");
        assert_eq!(
            records[0].detail.as_deref(),
            Some("5 re-registrations, unchanged (connection, last 1000 ms, aggregated)")
        );
        assert_eq!(records[0].pe_id, Some(pe(7)), "all of one PE");
        assert_eq!(resolutions_in(records[0].detail.as_deref()), 5);
        assert_eq!(records[1].action, "resolve");
        // Of several PEs: the record names none.
        t.note_refresh(&ns, &pool, pe(7), || reregistered(7), || 2_000);
        t.note_refresh(
            &ns,
            &pool,
            pe(8),
            || panic!("not a new key"),
            || panic!("no clock"),
        );
        let mixed = t.take(2_500);
        assert_eq!(mixed.len(), 1);
        assert_eq!(mixed[0].pe_id, None);
        assert_eq!(resolutions_in(mixed[0].detail.as_deref()), 2);
    }
}
