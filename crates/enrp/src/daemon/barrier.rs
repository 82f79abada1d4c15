//! Audit before ack: what the core sends after a [`Durability::BeforeReply`] record waits
//! here until that record's transaction has committed.
//!
//! The driver numbers those records 1, 2, 3, … in the order it hands them to the audit
//! writer, which commits in queue order and publishes the *commit index*
//! ([`store::audit::CommitIndex`]): the number of the last record settled (committed, or
//! failed after the writer's retries), and the numbers that failed. A [`Barrier`] holds each message under the number of the
//! record it waits for and releases it once the index has passed that number: one queue in
//! the driver instead of a task and a channel per record. A message for a connection that
//! has messages held goes behind them (each connection's messages leave in the order the
//! core sent them); a message that waits for nothing and follows nothing goes at once.
//!
//! A failed record withholds what waits for it: the driver closes those connections, so
//! that their clients retry elsewhere (docs/SECURITY.md, issue 18).
//!
//! [`Durability::BeforeReply`]: identity::audit::Durability::BeforeReply

use std::collections::{BTreeMap, BTreeSet, HashMap};

use enrp_core::registrar::ConnId;

/// Messages (or other deferred work, `T`) held until their audit records settled.
#[derive(Debug)]
pub(super) struct Barrier<T> {
    /// The number given to the last `BeforeReply` record.
    numbered: u64,
    /// The commit index as last applied: every record up to it is settled.
    settled: u64,
    /// Records that will never commit (their commit failed, or they were refused before
    /// the writer had them) and that something held may still wait for.
    failed: BTreeSet<u64>,
    /// What waits, under the number of the record it waits for, in the order held.
    held: BTreeMap<u64, Vec<(Option<ConnId>, T)>>,
    /// For each connection with something held: the highest number it waits for, and how
    /// many of its items are held.
    by_conn: HashMap<ConnId, (u64, usize)>,
}

impl<T> Default for Barrier<T> {
    fn default() -> Self {
        Self {
            numbered: 0,
            settled: 0,
            failed: BTreeSet::new(),
            held: BTreeMap::new(),
            by_conn: HashMap::new(),
        }
    }
}

impl<T> Barrier<T> {
    /// The number of the next `BeforeReply` record (the order the writer gets them in).
    pub(super) fn number(&mut self) -> u64 {
        self.numbered += 1;
        self.numbered
    }

    /// Record `seq` will never reach the writer (the audit backlog is full): what waits
    /// for it is withheld once what is held before it has gone.
    pub(super) fn refused(&mut self, seq: u64) {
        self.failed.insert(seq);
    }

    /// Holds `item` (for `conn`, if it is for one) until record `gate` settled, and behind
    /// whatever `conn` already has held; returns it when it waits for nothing.
    pub(super) fn hold(&mut self, gate: Option<u64>, conn: Option<ConnId>, item: T) -> Option<T> {
        let behind = conn.and_then(|c| self.by_conn.get(&c)).map(|&(seq, _)| seq);
        let seq = match (gate, behind) {
            (None, None) => return Some(item),
            (Some(g), None) => g,
            (None, Some(b)) => b,
            (Some(g), Some(b)) => g.max(b),
        };
        if let Some(c) = conn {
            let entry = self.by_conn.entry(c).or_insert((seq, 0));
            entry.0 = entry.0.max(seq);
            entry.1 += 1;
        }
        self.held.entry(seq).or_default().push((conn, item));
        None
    }

    /// How many items `conn` has held (they count against its send queue).
    pub(super) fn held_for(&self, conn: ConnId) -> usize {
        self.by_conn.get(&conn).map_or(0, |&(_, n)| n)
    }

    /// Whether nothing is held.
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether a failed record may withhold something held: [`Barrier::release`] withholds
    /// it without waiting for the index to move.
    pub(super) fn has_failed(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Applies the commit index (`settled`, and the numbers that failed) and returns what
    /// it releases, in order, each with whether the record it waited for committed.
    pub(super) fn release(&mut self, settled: u64, failed: Vec<u64>) -> Vec<(T, bool)> {
        self.settled = self.settled.max(settled);
        self.failed.extend(failed);
        let mut out = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            let failed = self.failed.contains(&seq);
            if seq > self.settled && !failed {
                break;
            }
            for (conn, item) in entry.remove() {
                if let Some(c) = conn
                    && let Some(e) = self.by_conn.get_mut(&c)
                {
                    e.1 -= 1;
                    if e.1 == 0 {
                        self.by_conn.remove(&c);
                    }
                }
                out.push((item, !failed));
            }
        }
        // Failures before the first record still waited for concern nothing held.
        match self.held.first_key_value() {
            Some((&first, _)) => self.failed.retain(|&f| f >= first),
            None => self.failed.clear(),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ConnId = ConnId(1);
    const B: ConnId = ConnId(2);

    /// Released items, as (item, committed).
    fn released(
        b: &mut Barrier<&'static str>,
        settled: u64,
        failed: Vec<u64>,
    ) -> Vec<(&'static str, bool)> {
        b.release(settled, failed)
    }

    #[test]
    fn a_reply_waits_for_its_record_and_a_connection_keeps_its_order() {
        let mut b = Barrier::default();
        let one = b.number();
        let two = b.number();
        assert_eq!(b.hold(Some(one), Some(A), "a1"), None);
        assert_eq!(b.hold(Some(two), Some(B), "b2"), None);
        // Waits for nothing, but A has a reply held: it goes behind it.
        assert_eq!(b.hold(None, Some(A), "a-keepalive"), None);
        // Another connection with nothing held: at once.
        assert_eq!(b.hold(None, Some(ConnId(3)), "c"), Some("c"));
        assert_eq!(b.held_for(A), 2);
        assert!(released(&mut b, 0, vec![]).is_empty());
        assert_eq!(
            released(&mut b, one, vec![]),
            vec![("a1", true), ("a-keepalive", true)]
        );
        assert_eq!(b.held_for(A), 0);
        // A is free again: its next message goes at once, B's still waits.
        assert_eq!(b.hold(None, Some(A), "a3"), Some("a3"));
        assert_eq!(b.hold(None, Some(B), "b3"), None);
        assert_eq!(
            released(&mut b, two, vec![]),
            vec![("b2", true), ("b3", true)]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn a_failed_record_withholds_what_waits_for_it_and_only_that() {
        let mut b = Barrier::default();
        let (one, two, three) = (b.number(), b.number(), b.number());
        b.hold(Some(one), Some(A), "a1");
        b.hold(Some(two), Some(B), "b2");
        b.hold(Some(three), Some(A), "a3");
        // The index passed all three; two failed.
        assert_eq!(
            released(&mut b, three, vec![two]),
            vec![("a1", true), ("b2", false), ("a3", true)]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn a_record_refused_at_once_is_withheld_after_what_is_held_before_it() {
        let mut b = Barrier::default();
        let one = b.number();
        b.hold(Some(one), Some(A), "a1");
        // The backlog was full: record two never reaches the writer.
        let two = b.number();
        b.refused(two);
        b.hold(Some(two), Some(A), "a2");
        // Nothing leaves before record one settles, not even the refusal.
        assert!(released(&mut b, 0, vec![]).is_empty());
        assert_eq!(
            released(&mut b, one, vec![]),
            vec![("a1", true), ("a2", false)]
        );
        assert!(b.is_empty());
    }
}
