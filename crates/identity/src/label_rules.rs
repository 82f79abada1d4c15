//! Which PE labels a register grant lets its identities set (issue 23): so that a PE
//! certificate allowed to register in a pool cannot also claim, say, another region's
//! label and draw that region's PUs (docs/PROTOCOL-EXTENSIONS.md §2,
//! docs/SECURITY.md).
//!
//! A rule is `key=pattern`: the key literal, the pattern matching the value with `*` as
//! any run of characters. A label is admitted when some rule has its key and matches its
//! value; a registration when every one of its labels is. Several rules may name the same
//! key (alternatives). A grant without rules admits any labels (as before rules existed);
//! a grant with an empty rule list admits none.

use std::fmt;
use std::str::FromStr;

use crate::Error;
use crate::pattern::glob_match;
use crate::spiffe::echo;

/// At most this many rules per grant: PEs carry at most 16 labels (asap's `MAX_LABELS`),
/// so 32 leaves room for alternatives while bounding the work per registration.
pub const MAX_LABEL_RULES: usize = 32;
/// A rule's key: 1 to 32 characters of `[A-Za-z0-9._/-]`, as a PE label's key.
const MAX_KEY_LEN: usize = 32;
/// A rule's value pattern: at most 64 printable ASCII characters, as a PE label's value
/// (a `*` in a pattern is always the wildcard).
const MAX_PATTERN_LEN: usize = 64;

/// One `key=pattern` rule.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LabelRule {
    key: Box<str>,
    pattern: Box<str>,
}

impl LabelRule {
    /// The label key the rule is about.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether the rule admits the label `key=value`.
    pub fn admits(&self, key: &str, value: &str) -> bool {
        *self.key == *key && glob_match(self.pattern.as_bytes(), value.as_bytes())
    }
}

impl FromStr for LabelRule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidPattern {
            input: echo(s),
            reason,
        };
        let (key, pattern) = s
            .split_once('=')
            .ok_or_else(|| invalid("a label rule is key=pattern"))?;
        if key.is_empty()
            || key.len() > MAX_KEY_LEN
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        {
            return Err(invalid(
                "a label rule's key is 1 to 32 characters of A-Z a-z 0-9 . _ - /",
            ));
        }
        if pattern.len() > MAX_PATTERN_LEN || !pattern.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
            return Err(invalid(
                "a label rule's pattern is at most 64 printable ASCII characters",
            ));
        }
        Ok(Self {
            key: key.into(),
            pattern: pattern.into(),
        })
    }
}

impl fmt::Display for LabelRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.pattern)
    }
}

impl fmt::Debug for LabelRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LabelRule({self})")
    }
}

/// A grant's label rules: at most [`MAX_LABEL_RULES`], no rule twice.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct LabelRules(Box<[LabelRule]>);

impl LabelRules {
    /// Parses each `key=pattern`.
    ///
    /// # Errors
    /// The first malformed rule, a rule given twice, or more than [`MAX_LABEL_RULES`].
    pub fn parse<S: AsRef<str>>(rules: impl IntoIterator<Item = S>) -> Result<Self, Error> {
        let mut out: Vec<LabelRule> = Vec::new();
        for text in rules {
            let text = text.as_ref();
            if out.len() == MAX_LABEL_RULES {
                return Err(Error::InvalidPattern {
                    input: echo(text),
                    reason: "a grant holds at most 32 label rules",
                });
            }
            let rule: LabelRule = text.parse()?;
            if out.contains(&rule) {
                return Err(Error::InvalidPattern {
                    input: echo(text),
                    reason: "label rule given twice",
                });
            }
            out.push(rule);
        }
        Ok(Self(out.into_boxed_slice()))
    }

    /// The rules, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = &LabelRule> {
        self.0.iter()
    }

    /// Whether there is no rule (then no label is admitted).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first of `labels` that no rule admits, or `None` when every one is admitted.
    pub fn first_refused<'a>(
        &self,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<(&'a str, &'a str)> {
        labels
            .into_iter()
            .find(|(k, v)| !self.0.iter().any(|r| r.admits(k, v)))
    }
}

impl fmt::Debug for LabelRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The definition, naively: `*` matches any run of characters (exponential, fine for
    /// short test strings).
    fn naive_glob(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| naive_glob(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && naive_glob(rest, &t[1..]),
        }
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-c]{1,2}"
    }

    proptest! {
        /// A registration is admitted exactly when each label has a rule with its key
        /// whose pattern matches its value; rules read back from their text are equal.
        #[test]
        fn rules_admit_exactly_what_the_definition_says(
            rules in proptest::collection::btree_set((key(), "[ab*]{0,4}"), 0..6),
            labels in proptest::collection::vec((key(), "[ab]{0,4}"), 0..4),
        ) {
            let texts: Vec<String> = rules.iter().map(|(k, p)| format!("{k}={p}")).collect();
            let parsed = LabelRules::parse(&texts).expect("valid rules");
            let back: Vec<String> = parsed.iter().map(ToString::to_string).collect();
            prop_assert_eq!(&back, &texts);
            prop_assert_eq!(LabelRules::parse(&back).expect("again"), parsed.clone());
            let admitted = |k: &str, v: &str| {
                rules.iter().any(|(rk, rp)| rk == k && naive_glob(rp.as_bytes(), v.as_bytes()))
            };
            let expected = labels.iter().find(|(k, v)| !admitted(k, v));
            let got = parsed.first_refused(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            prop_assert_eq!(got, expected.map(|(k, v)| (k.as_str(), v.as_str())));
        }
    }

    fn rules(texts: &[&str]) -> LabelRules {
        LabelRules::parse(texts).expect("valid rules")
    }

    #[test]
    fn a_label_needs_a_rule_with_its_key_that_matches_its_value() {
        let r = rules(&[
            "region=eu-west",
            "zone=eu-west-*",
            "zone=eu-north-1",
            "tier=*",
        ]);
        let ok = |labels: &[(&str, &str)]| r.first_refused(labels.iter().copied()).is_none();
        assert!(ok(&[]));
        assert!(ok(&[("region", "eu-west"), ("zone", "eu-west-2")]));
        assert!(ok(&[("zone", "eu-north-1"), ("tier", "")]));
        assert!(!ok(&[("region", "us-east")]));
        assert!(
            !ok(&[("region", "eu-west-1")]),
            "a literal pattern is whole"
        );
        assert!(!ok(&[("zone", "eu-north-2")]));
        assert!(!ok(&[("owner", "x")]), "a key no rule names");
        assert_eq!(
            r.first_refused([("region", "eu-west"), ("region2", "x"), ("owner", "y")]),
            Some(("region2", "x"))
        );
        // No rule: no label.
        assert!(LabelRules::default().first_refused([("a", "b")]).is_some());
        assert!(LabelRules::default().first_refused([]).is_none());
    }

    #[test]
    fn malformed_rules_are_refused_with_the_rule_broken() {
        for bad in [
            "region",
            "=eu",
            "reg ion=eu",
            "région=eu",
            &format!("{}=x", "k".repeat(33)),
            &format!("k={}", "v".repeat(65)),
            "k=tab\there",
        ] {
            assert!(LabelRules::parse([bad]).is_err(), "{bad:?}");
        }
        assert!(LabelRules::parse(["a=b", "a=b"]).is_err(), "a rule twice");
        let many: Vec<String> = (0..=MAX_LABEL_RULES).map(|i| format!("k{i}=*")).collect();
        assert!(LabelRules::parse(&many).is_err());
        assert!(LabelRules::parse(&many[..MAX_LABEL_RULES]).is_ok());
        // The first `=` splits: a value pattern may hold `=`.
        let r = rules(&["expr=a=b*"]);
        assert!(r.first_refused([("expr", "a=bc")]).is_none());
        assert_eq!(
            r.iter().next().map(ToString::to_string),
            Some("expr=a=b*".into())
        );
    }
}
