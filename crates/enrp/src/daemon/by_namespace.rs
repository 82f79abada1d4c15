//! Registrations, resolutions and refusals counted per namespace and cause, for
//! `/metrics` (issue 22), with a bounded number of series.
//!
//! The first [`MAX_NAMESPACE_SERIES`] namespaces in which something *succeeded* (a
//! registration or a resolution) get a slot of their own, for the life of the process;
//! every other namespace is counted in one `(other)` slot, and refusals that name no
//! namespace (a message refused before its namespace was read) in a `(none)` slot. A
//! refusal never takes a slot: otherwise a client could fill them by asking for
//! namespaces it may not use, and push the operator's namespaces into `(other)`.
//!
//! The counting is on the resolution path (issue 20): a slot is found from the
//! namespace's hash (open addressing in a table twice the [`MAX_NAMESPACE_SERIES`] names it holds),
//! without a lock or an allocation (a slot's name is cloned once, when the slot is
//! taken), and counted with a relaxed atomic add into a fixed array: 8–10 ns a count with
//! 1 or 32 namespaces or in `(other)` (release build, uncontended, on the 2-core CI VM).
//! At the limit, a namespace racing another for the last slot may count once in
//! `(other)` before it has its own.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use asap::wire::param::Namespace;

/// Namespaces with series of their own; the rest are counted as `(other)`. The limit on
/// the series a registrar gives its metrics store: 32 namespaces × (2 + the causes seen).
pub const MAX_NAMESPACE_SERIES: usize = 32;

/// Cause codes counted exactly: spec §4.7 defines 0x0–0xA; a code of 16 or more (none is
/// sent by this registrar today) is counted in one more slot, exported as `(other)`.
pub const CAUSE_SLOTS: usize = 16;

/// The hash table of the named slots: twice the names it may hold, so that a lookup,
/// found or not, mostly probes one or two slots.
const TABLE: usize = 2 * MAX_NAMESPACE_SERIES;
/// The `(other)` slot (namespaces beyond the limit) and the `(none)` slot (refusals that
/// name no namespace) follow the table.
const OTHER: usize = TABLE;
const NONE: usize = TABLE + 1;
const SLOTS: usize = TABLE + 2;

/// The label value of the namespaces beyond the limit (no namespace is written so).
pub const OTHER_LABEL: &str = "(other)";
/// The label value of refusals that name no namespace.
pub const NONE_LABEL: &str = "(none)";

/// What happened, as [`ByNamespace::count`] is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// A registration or re-registration accepted.
    Registration,
    /// A handle resolution answered.
    Resolution,
    /// An operation refused with this spec §4.7 cause code.
    Refusal(u16),
}

#[derive(Debug, Default)]
struct Slot {
    registrations: AtomicU64,
    resolutions: AtomicU64,
    /// Index `CAUSE_SLOTS` counts the causes beyond it.
    refusals: [AtomicU64; CAUSE_SLOTS + 1],
}

/// The counters (module docs).
#[derive(Debug)]
pub struct ByNamespace {
    names: [OnceLock<Namespace>; TABLE],
    /// Names set in `names`: at most [`MAX_NAMESPACE_SERIES`].
    taken: AtomicUsize,
    slots: [Slot; SLOTS],
}

impl Default for ByNamespace {
    fn default() -> Self {
        Self {
            names: std::array::from_fn(|_| OnceLock::new()),
            taken: AtomicUsize::new(0),
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }
}

/// One namespace's counts, as [`ByNamespace::snapshot`] returns them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceCounts {
    /// The namespace, or [`OTHER_LABEL`] / [`NONE_LABEL`].
    pub namespace: String,
    /// Registrations and re-registrations accepted.
    pub registrations: u64,
    /// Handle resolutions answered.
    pub resolutions: u64,
    /// Refusals by cause code (`None`: a code of [`CAUSE_SLOTS`] or more); only causes
    /// counted at least once.
    pub refusals: Vec<(Option<u16>, u64)>,
}

impl ByNamespace {
    /// Counts one event in `namespace`.
    pub fn count(&self, namespace: Option<&Namespace>, what: Counted) {
        let slot = &self.slots[self.slot(namespace, !matches!(what, Counted::Refusal(_)))];
        let counter = match what {
            Counted::Registration => &slot.registrations,
            Counted::Resolution => &slot.resolutions,
            Counted::Refusal(cause) => &slot.refusals[usize::from(cause).min(CAUSE_SLOTS)],
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The slot of `namespace`; a free one is taken only when `may_take`. Open addressing
    /// from the name's hash: a slot's name never changes once set, so a name is always
    /// found before the first free slot of its probe sequence, mostly at the first.
    fn slot(&self, namespace: Option<&Namespace>, may_take: bool) -> usize {
        let Some(ns) = namespace else {
            return NONE;
        };
        let start = fnv1a(ns.as_str().as_bytes()) % TABLE;
        for probe in 0..TABLE {
            let i = (start + probe) % TABLE;
            let name = &self.names[i];
            match name.get() {
                Some(n) if n == ns => return i,
                Some(_) => {}
                None if !may_take || !self.reserve() => return OTHER,
                // Two tasks may race for a free slot: the loser gives its reservation
                // back, compares with the winner's name, and probes on if it is another.
                None => match name.set(ns.clone()) {
                    Ok(()) => return i,
                    Err(_) => {
                        self.taken.fetch_sub(1, Ordering::Relaxed);
                        if name.get() == Some(ns) {
                            return i;
                        }
                    }
                },
            }
        }
        OTHER
    }

    /// Room for one more name, if fewer than [`MAX_NAMESPACE_SERIES`] are set.
    fn reserve(&self) -> bool {
        self.taken
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_NAMESPACE_SERIES).then_some(n + 1)
            })
            .is_ok()
    }

    /// The counts of every slot that counted something: the named slots (in no
    /// particular order), then `(other)` and `(none)`.
    pub fn snapshot(&self) -> Vec<NamespaceCounts> {
        let label = |i: usize| match i {
            OTHER => OTHER_LABEL.to_owned(),
            NONE => NONE_LABEL.to_owned(),
            _ => self.names[i]
                .get()
                .map_or_else(String::new, |n| n.as_str().to_owned()),
        };
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let refusals: Vec<_> = s
                    .refusals
                    .iter()
                    .enumerate()
                    .filter_map(|(cause, n)| {
                        let n = n.load(Ordering::Relaxed);
                        let cause = u16::try_from(cause).ok().filter(|_| cause < CAUSE_SLOTS);
                        (n > 0).then_some((cause, n))
                    })
                    .collect();
                let c = NamespaceCounts {
                    namespace: label(i),
                    registrations: s.registrations.load(Ordering::Relaxed),
                    resolutions: s.resolutions.load(Ordering::Relaxed),
                    refusals,
                };
                (c.registrations + c.resolutions > 0 || !c.refusals.is_empty()).then_some(c)
            })
            .collect()
    }
}

/// FNV-1a: a few nanoseconds for a namespace's bytes (at most 255), enough to spread
/// a table of 64; a client cannot use collisions to do more than make a lookup probe
/// the 64 slots, as a scan would.
fn fnv1a(bytes: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Truncation is the point: any bits of the hash do.
    #[allow(clippy::cast_possible_truncation)]
    let h = h as usize;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str) -> Namespace {
        Namespace::new(name).expect("namespace")
    }

    #[test]
    fn namespaces_beyond_the_limit_fold_into_other_and_refusals_take_no_slot() {
        let c = ByNamespace::default();
        // A refusal in a namespace nobody succeeded in: `(other)`, no slot taken.
        c.count(Some(&ns("probe")), Counted::Refusal(0xA));
        c.count(None, Counted::Refusal(0x3));
        for i in 0..MAX_NAMESPACE_SERIES + 3 {
            c.count(Some(&ns(&format!("ns{i}"))), Counted::Registration);
        }
        c.count(Some(&ns("ns0")), Counted::Resolution);
        c.count(Some(&ns("ns0")), Counted::Refusal(0x9));
        c.count(Some(&ns("ns0")), Counted::Refusal(0x1234));
        c.count(
            Some(&ns(&format!("ns{MAX_NAMESPACE_SERIES}"))),
            Counted::Resolution,
        );
        let s = c.snapshot();
        assert_eq!(s.len(), MAX_NAMESPACE_SERIES + 2, "{s:?}");
        assert_eq!(
            *s.iter()
                .find(|n| n.namespace == "ns0")
                .expect("ns0 has a series"),
            NamespaceCounts {
                namespace: "ns0".into(),
                registrations: 1,
                resolutions: 1,
                refusals: vec![(Some(0x9), 1), (None, 1)],
            }
        );
        assert!(s.iter().all(|n| n.namespace != "probe"));
        let other = &s[MAX_NAMESPACE_SERIES];
        assert_eq!(other.namespace, OTHER_LABEL);
        assert_eq!(
            (other.registrations, other.resolutions),
            (3, 1),
            "the three namespaces beyond the limit, and a resolution in one of them"
        );
        assert_eq!(other.refusals, vec![(Some(0xA), 1)]);
        let none = &s[MAX_NAMESPACE_SERIES + 1];
        assert_eq!(none.namespace, NONE_LABEL);
        assert_eq!(none.refusals, vec![(Some(0x3), 1)]);
    }

    #[test]
    fn concurrent_counting_loses_nothing_and_names_each_slot_once() {
        let c = std::sync::Arc::new(ByNamespace::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        c.count(Some(&ns(&format!("n{}", (i + t) % 8))), Counted::Resolution);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let s = c.snapshot();
        assert_eq!(s.len(), 8, "{s:?}");
        assert_eq!(s.iter().map(|n| n.resolutions).sum::<u64>(), 4000);
        let mut names: Vec<_> = s.iter().map(|n| n.namespace.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 8);
    }

    #[test]
    fn racing_past_the_limit_names_exactly_the_limit_and_loses_nothing() {
        let c = std::sync::Arc::new(ByNamespace::default());
        let names = MAX_NAMESPACE_SERIES + 8;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    for i in 0..names * 50 {
                        let n = ns(&format!("n{}", (i * 7 + t) % names));
                        c.count(Some(&n), Counted::Registration);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let s = c.snapshot();
        let named = s.iter().filter(|n| n.namespace != OTHER_LABEL).count();
        assert_eq!(named, MAX_NAMESPACE_SERIES, "{s:?}");
        assert_eq!(
            s.iter().map(|n| n.registrations).sum::<u64>(),
            4 * names as u64 * 50
        );
    }
}
