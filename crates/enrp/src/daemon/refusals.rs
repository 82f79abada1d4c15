//! Refusals audited in aggregate (issue 18, item 1; docs/SECURITY.md).
//!
//! Before this, every failed handshake and every refused request was one durable audit
//! row: anyone who can open a TCP connection could make the registrar write (and fsync)
//! a row per connection, about a thousand a second from one small script, and fill its
//! disk. Now a refusal goes through [`Refusals::note`]:
//!
//! - the first refusal of its kind in an interval ([`INTERVAL`]) is written as it is (the
//!   kind: the source address for unauthenticated refusals, so one record per source;
//!   actor, action, outcome, namespace, pool, PE and reason for authenticated ones);
//! - its repeats in the same interval are only counted, and [`Refusals::flush`] writes one
//!   summary record per kind with the count at the end of the interval;
//! - at most `budget` kinds per scope (a listener, or the core's refusals of
//!   authenticated requests) are tracked per interval; refusals beyond it are counted
//!   into one overflow record per scope, which keeps the first one's reason and source.
//!
//! So a scope writes at most `2 × budget + 1` records per interval whatever the flood,
//! and every refusal is still counted: in the records' counts and in the metrics.
//!
//! Pure: the daemon calls [`Refusals::note`] from its tasks and [`Refusals::flush`] once
//! per [`INTERVAL`] from one task that appends what it returns.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use identity::audit::AuditAction;
use identity::{Namespace, PeId, PoolHandle};
use store::audit::Record;

/// How long repeats are gathered into one summary record. One second: the budget is
/// "per listener per second" (issue 18), and an operator sees a flood in the log within
/// a second of its start.
pub(super) const INTERVAL: Duration = Duration::from_secs(1);

/// The default budget: kinds of refusal audited individually per scope per [`INTERVAL`]
/// (so at most 41 records a second per listener). The admin API's refusals are limited
/// to 20 a second likewise.
pub(super) const DEFAULT_BUDGET: u32 = 20;

/// What makes two refusals "the same" (a repeat).
#[derive(Debug, Hash, PartialEq, Eq)]
struct Key {
    scope: &'static str,
    ip: Option<IpAddr>,
    actor: Option<String>,
    action: String,
    outcome: String,
    namespace: Option<Namespace>,
    pool: Option<PoolHandle>,
    pe_id: Option<PeId>,
    /// Why, for authenticated refusals: two refusals of one actor for different reasons
    /// (a forged TAKEOVER_SERVER and a forged INIT_TAKEOVER, say) are two kinds, each
    /// written once; the per-scope budget still bounds how many kinds are written.
    detail: Option<String>,
}

impl Key {
    fn of(scope: &'static str, r: &Record) -> Self {
        let ip = r.remote.map(|a| a.ip());
        match &r.actor {
            // Unauthenticated: nothing but the source to tell them apart (one per source).
            None => Self {
                scope,
                ip,
                actor: None,
                action: String::new(),
                outcome: String::new(),
                namespace: None,
                pool: None,
                pe_id: None,
                detail: None,
            },
            Some(actor) => Self {
                scope,
                ip,
                actor: Some(actor.as_str().to_owned()),
                action: r.action.to_string(),
                outcome: r.outcome.to_text().into_owned(),
                namespace: r.namespace.clone(),
                pool: r.pool.clone(),
                pe_id: r.pe_id,
                detail: r.detail.clone(),
            },
        }
    }
}

#[derive(Debug)]
struct Entry {
    first: Record,
    /// Refusals after the first, this interval.
    repeats: u64,
}

#[derive(Debug)]
struct Overflow {
    first: Record,
    count: u64,
}

/// The aggregation state of one daemon (see the module docs).
#[derive(Debug)]
pub(super) struct Refusals {
    budget: u32,
    entries: HashMap<Key, Entry>,
    /// Kinds tracked this interval, per scope.
    spent: HashMap<&'static str, u32>,
    overflow: HashMap<&'static str, Overflow>,
    /// Refusals not written as their own record, ever (a metric).
    aggregated: u64,
    /// Records to write noted by [`Refusals::note_later`], for the next flush.
    pending: Vec<Record>,
}

impl Refusals {
    /// `budget` kinds of refusal audited individually per scope per interval (at least 1).
    pub(super) fn new(budget: u32) -> Self {
        Self {
            budget: budget.max(1),
            entries: HashMap::new(),
            spent: HashMap::new(),
            overflow: HashMap::new(),
            aggregated: 0,
            pending: Vec::new(),
        }
    }

    /// A refusal in `scope`: returns the record to write now, or `None` when it is only
    /// counted (a repeat, or over the budget) and goes into [`Refusals::flush`]'s output.
    pub(super) fn note(&mut self, scope: &'static str, record: Record) -> Option<Record> {
        let key = Key::of(scope, &record);
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.repeats += 1;
            self.aggregated += 1;
            return None;
        }
        let spent = self.spent.entry(scope).or_default();
        if *spent < self.budget {
            *spent += 1;
            self.entries.insert(
                key,
                Entry {
                    first: record.clone(),
                    repeats: 0,
                },
            );
            return Some(record);
        }
        self.aggregated += 1;
        self.overflow
            .entry(scope)
            .and_modify(|o| o.count += 1)
            .or_insert(Overflow {
                first: record,
                count: 1,
            });
        None
    }

    /// [`Refusals::note`], keeping the record to write for [`Refusals::flush`].
    pub(super) fn note_later(&mut self, scope: &'static str, record: Record) {
        if let Some(r) = self.note(scope, record) {
            self.pending.push(r);
        }
    }

    /// Ends the interval: the records kept by [`Refusals::note_later`], the summary records of the repeats and of the overflow, stamped
    /// `now_ms`. The next interval starts with a fresh budget.
    pub(super) fn flush(&mut self, now_ms: u64) -> Vec<Record> {
        let mut out = std::mem::take(&mut self.pending);
        for (key, entry) in self.entries.drain() {
            if entry.repeats == 0 {
                continue;
            }
            let mut r = entry.first;
            r.time_ms = now_ms;
            r.detail = Some(summary(
                entry.repeats,
                "more like this one",
                key.scope,
                r.detail.as_deref(),
            ));
            out.push(r);
        }
        for (scope, o) in self.overflow.drain() {
            let first = o.first;
            let mut r = Record::new(now_ms, AuditAction::Refusals, first.outcome.clone());
            r.remote = first.remote;
            let what = match &first.actor {
                Some(actor) => format!("refusals over the audit budget, the first by {actor}"),
                None => "refusals over the audit budget, the first".to_owned(),
            };
            let first_detail = format!("{}: {}", first.action, first.detail.unwrap_or_default());
            r.detail = Some(summary(o.count, &what, scope, Some(&first_detail)));
            out.push(r);
        }
        self.spent.clear();
        out
    }

    /// Refusals counted but not written as their own record, since the start.
    pub(super) fn aggregated(&self) -> u64 {
        self.aggregated
    }
}

/// The detail of a summary record (bounded and printable like all detail text).
fn summary(count: u64, what: &str, scope: &'static str, first: Option<&str>) -> String {
    let secs = INTERVAL.as_secs();
    let text = match first {
        Some(first) if !first.is_empty() => {
            format!("{count} {what} ({scope}, last {secs} s, aggregated): {first}")
        }
        _ => format!("{count} {what} ({scope}, last {secs} s, aggregated)"),
    };
    super::audit_text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::asap::wire::param::ErrorCause;
    use std::net::SocketAddr;
    use store::audit::Outcome;

    fn unauthenticated(addr: &str, reason: &'static str) -> Record {
        let mut r = Record::new(1, AuditAction::Handshake, Outcome::Refused(reason.into()));
        r.remote = Some(addr.parse::<SocketAddr>().expect("addr"));
        r.detail = Some("no certificate".into());
        r
    }

    #[test]
    fn one_record_per_source_then_a_count() {
        let mut agg = Refusals::new(20);
        let mut written = 0;
        for port in 0..1000u16 {
            let r = unauthenticated(&format!("192.0.2.1:{}", 1000 + port), "tls-handshake");
            written += usize::from(agg.note("asap", r).is_some());
        }
        assert_eq!(written, 1, "the first refusal of the source is written");
        let summary = agg.flush(2);
        assert_eq!(summary.len(), 1);
        let detail = summary[0].detail.as_deref().expect("detail");
        assert!(detail.starts_with("999 more"), "{detail}");
        assert_eq!(summary[0].outcome, Outcome::Refused("tls-handshake".into()));
        assert!(summary[0].check().is_ok());
        assert_eq!(agg.aggregated(), 999);
        // A new interval: the source's next refusal is written again.
        assert!(
            agg.note("asap", unauthenticated("192.0.2.1:1", "x"))
                .is_some()
        );
    }

    #[test]
    fn many_sources_stay_within_the_budget_per_scope() {
        let mut agg = Refusals::new(5);
        let mut written = 0;
        for i in 0..=255u8 {
            for _ in 0..3 {
                let r = unauthenticated(&format!("198.51.100.{i}:4000"), "tls-timeout");
                written += usize::from(agg.note("enrp", r).is_some());
            }
        }
        // Another listener has its own budget.
        assert!(
            agg.note("asap", unauthenticated("198.51.100.1:1", "x"))
                .is_some()
        );
        assert_eq!(written, 5);
        let summary = agg.flush(2);
        // 5 sources with 2 repeats each, one overflow record for the 251 other sources.
        assert_eq!(summary.len(), 6);
        let overflow = summary
            .iter()
            .find(|r| r.action == "refusals")
            .expect("overflow record");
        let detail = overflow.detail.as_deref().expect("detail");
        assert!(
            detail.starts_with(&format!("{} refusals", 251 * 3)),
            "{detail}"
        );
        assert!(detail.contains("enrp"), "{detail}");
        assert!(overflow.check().is_ok());
    }

    #[test]
    fn authenticated_refusals_repeat_per_kind() {
        let mut agg = Refusals::new(20);
        let actor: identity::SpiffeId = "spiffe://acme.test/pu/x".parse().expect("id");
        let refused = |pool: &str| {
            let mut r = Record::new(
                1,
                AuditAction::Resolve,
                Outcome::Cause(ErrorCause::SECURITY_REJECTION),
            )
            .actor(actor.clone());
            r.pool = PoolHandle::new(pool);
            r
        };
        assert!(agg.note("core", refused("a")).is_some());
        assert!(agg.note("core", refused("a")).is_none());
        assert!(agg.note("core", refused("b")).is_some(), "another pool");
        let summary = agg.flush(2);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].pool, PoolHandle::new("a"));
        assert_eq!(
            summary[0].outcome,
            Outcome::Cause(ErrorCause::SECURITY_REJECTION)
        );
    }
}
