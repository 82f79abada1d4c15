//! One timer structure for every deadline of the registrar (STYLE.md §5): not one task
//! per PE, so 100,000 PEs cost one ordered set, and runs are deterministic.

use std::collections::BTreeSet;
use std::hash::Hash;
use std::time::Instant;

use crate::hash::HashMap;

/// Deadlines keyed by `K`: `set` replaces a key's deadline, `stop` removes it, and
/// `expired` pops every deadline ≤ `now` in (deadline, key) order.
#[derive(Debug)]
pub struct Timers<K: Ord + Hash + Clone> {
    by_deadline: BTreeSet<(Instant, K)>,
    by_key: HashMap<K, Instant>,
}

impl<K: Ord + Hash + Clone> Default for Timers<K> {
    fn default() -> Self {
        Self {
            by_deadline: BTreeSet::new(),
            by_key: HashMap::default(),
        }
    }
}

impl<K: Ord + Hash + Clone> Timers<K> {
    /// Arms `key` at `deadline`, replacing an earlier setting.
    pub fn set(&mut self, key: K, deadline: Instant) {
        if let Some(old) = self.by_key.insert(key.clone(), deadline) {
            self.by_deadline.remove(&(old, key.clone()));
        }
        self.by_deadline.insert((deadline, key));
    }

    /// Disarms `key`; harmless when it is not armed.
    pub fn stop(&mut self, key: &K) {
        if let Some(old) = self.by_key.remove(key) {
            self.by_deadline.remove(&(old, key.clone()));
        }
    }

    /// The deadline of `key`, if armed.
    pub fn get(&self, key: &K) -> Option<Instant> {
        self.by_key.get(key).copied()
    }

    /// The earliest deadline.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(t, _)| *t)
    }

    /// Disarms and returns the earliest key whose deadline is ≤ `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<K> {
        let (deadline, _) = self.by_deadline.first()?;
        if *deadline > now {
            return None;
        }
        let (_, key) = self.by_deadline.pop_first()?;
        self.by_key.remove(&key);
        Some(key)
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // a test needs some base instant
    fn pops_in_deadline_then_key_order_and_set_replaces() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.set("b", t0 + Duration::from_millis(5));
        t.set("a", t0 + Duration::from_millis(5));
        t.set("c", t0 + Duration::from_millis(1));
        t.set("c", t0 + Duration::from_millis(9));
        t.set("d", t0 + Duration::from_millis(2));
        t.stop(&"d");
        t.stop(&"zz");
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_millis(5)));
        assert_eq!(t.pop_expired(t0 + Duration::from_millis(4)), None);
        let now = t0 + Duration::from_millis(9);
        assert_eq!(t.pop_expired(now), Some("a"));
        assert_eq!(t.pop_expired(now), Some("b"));
        assert_eq!(t.pop_expired(now), Some("c"));
        assert_eq!(t.pop_expired(now), None);
        assert!(t.is_empty());
    }
}
