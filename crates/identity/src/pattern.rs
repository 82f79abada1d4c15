//! Glob patterns for grants: identity patterns over SPIFFE IDs and pool-handle patterns.
//!
//! # Identity patterns
//!
//! `spiffe://<trust-domain>[/<segment-pattern>...]`, matched against a [`SpiffeId`]:
//!
//! - The trust domain is literal: no wildcard may span trust domains, so a grant never
//!   reaches a domain its author did not name.
//! - The path is matched segment by segment. In a segment pattern, `*` matches any run
//!   (possibly empty) of characters of ONE segment; it never crosses a `/`. So `*` alone
//!   matches exactly one whole segment and `echo-*` matches `echo-1` and `echo-`.
//! - `**` as the whole LAST segment matches one or more remaining segments:
//!   `spiffe://acme.test/pe/**` matches `/pe/a` and `/pe/a/b`, not `/pe`; `**` elsewhere
//!   or inside a segment is refused.
//! - Everything else is literal and case-sensitive, and must be a valid SPIFFE ID
//!   character; no `?`, classes or escapes.
//! - A pattern without wildcards matches exactly that ID; `spiffe://acme.test` matches only
//!   the trust domain's own ID.
//!
//! # Pool-handle patterns
//!
//! Pool handles are arbitrary octets. In a [`PoolPattern`], `*` matches any run of bytes
//! (possibly empty), every other byte is literal. `*` alone matches every pool.

use std::fmt;
use std::str::FromStr;

use crate::Error;
use crate::spiffe::{SpiffeId, echo, is_path_char, validate_trust_domain};

/// An identity pattern for grants.
///
/// `spiffe://<trust-domain>[/<segment-pattern>...]`, matched against a [`SpiffeId`]:
///
/// - The trust domain is literal: no wildcard may span trust domains, so a grant never
///   reaches a domain its author did not name.
/// - The path is matched segment by segment. In a segment pattern, `*` matches any run
///   (possibly empty) of characters of ONE segment; it never crosses a `/`. So `*` alone
///   matches exactly one whole segment and `echo-*` matches `echo-1` and `echo-`.
/// - `**` as the whole LAST segment matches one or more remaining segments:
///   `spiffe://acme.test/pe/**` matches `/pe/a` and `/pe/a/b`, not `/pe`; `**` elsewhere
///   or inside a segment is refused.
/// - Everything else is literal and case-sensitive, and must be a valid SPIFFE ID
///   character; no `?`, classes or escapes.
/// - A pattern without wildcards matches exactly that ID; `spiffe://acme.test` matches only
///   the trust domain's own ID.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdentityPattern {
    text: String,
    domain: String,
    segments: Vec<String>,
    /// The last pattern segment was `**`.
    tail: bool,
}

impl IdentityPattern {
    /// Parses a pattern such as `spiffe://acme.test/pe/*`.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidPattern {
            input: echo(input),
            reason,
        };
        if input.len() > crate::spiffe::MAX_SPIFFE_ID_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        let rest = input
            .strip_prefix("spiffe://")
            .ok_or_else(|| invalid("scheme is not spiffe://"))?;
        let (domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if domain.contains('*') {
            return Err(invalid(
                "the trust domain of a pattern cannot have wildcards",
            ));
        }
        validate_trust_domain(domain).map_err(invalid)?;
        let mut segments = Vec::new();
        let mut tail = false;
        if !path.is_empty() {
            let parts: Vec<&str> = path[1..].split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                if part.is_empty() {
                    return Err(invalid("pattern has an empty segment"));
                }
                if *part == "**" {
                    if !last {
                        return Err(invalid("** is allowed only as the last segment"));
                    }
                    tail = true;
                    continue;
                }
                if part.contains("**") {
                    return Err(invalid("** must be a whole segment"));
                }
                if *part == "." || *part == ".." {
                    return Err(invalid("pattern has a . or .. segment"));
                }
                if !part.bytes().all(|b| b == b'*' || is_path_char(b)) {
                    return Err(invalid(
                        "pattern has a character other than a-z A-Z 0-9 . - _ *",
                    ));
                }
                segments.push((*part).to_owned());
            }
        }
        Ok(Self {
            text: input.to_owned(),
            domain: domain.to_owned(),
            segments,
            tail,
        })
    }

    /// A pattern that matches exactly `id`.
    pub fn exact(id: &SpiffeId) -> Self {
        Self {
            text: id.as_str().to_owned(),
            domain: id.trust_domain_str().to_owned(),
            segments: id.segments().map(str::to_owned).collect(),
            tail: false,
        }
    }

    /// Whether `id` matches.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        if id.trust_domain_str() != self.domain {
            return false;
        }
        let mut segments = id.segments();
        for pattern in &self.segments {
            match segments.next() {
                Some(segment) if glob_match(pattern.as_bytes(), segment.as_bytes()) => {}
                _ => return false,
            }
        }
        let remaining = segments.count();
        if self.tail {
            remaining >= 1
        } else {
            remaining == 0
        }
    }

    /// The trust domain this pattern is confined to.
    pub fn trust_domain_str(&self) -> &str {
        &self.domain
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPattern({})", self.text)
    }
}

impl FromStr for IdentityPattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

/// Longest pool-handle pattern accepted, in bytes (pool handles are short; this bounds the
/// work of a match).
pub const MAX_POOL_PATTERN_LEN: usize = 256;

/// A pool-handle pattern.
///
/// Pool handles are arbitrary octets. In a [`PoolPattern`], `*` matches any run of bytes
/// (possibly empty), every other byte is literal. `*` alone matches every pool.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PoolPattern(Vec<u8>);

impl PoolPattern {
    /// The pattern that matches every pool handle.
    pub fn any() -> Self {
        Self(b"*".to_vec())
    }

    /// Builds a pattern from bytes.
    pub fn new(pattern: impl Into<Vec<u8>>) -> Result<Self, Error> {
        let pattern = pattern.into();
        if pattern.is_empty() {
            return Err(Error::InvalidPattern {
                input: String::new(),
                reason: "pool pattern is empty",
            });
        }
        if pattern.len() > MAX_POOL_PATTERN_LEN {
            return Err(Error::InvalidPattern {
                input: echo(&String::from_utf8_lossy(&pattern)),
                reason: "pool pattern is longer than 256 bytes",
            });
        }
        Ok(Self(pattern))
    }

    /// Whether this pattern matches every pool handle.
    pub fn is_any(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|&b| b == b'*')
    }

    /// Whether `pool` matches.
    pub fn matches(&self, pool: &[u8]) -> bool {
        glob_match(&self.0, pool)
    }

    /// The pattern bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for PoolPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for PoolPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolPattern({self})")
    }
}

impl FromStr for PoolPattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s.as_bytes())
    }
}

/// `*` matches any run of bytes; iterative with one backtrack point, so linear-ish and
/// never exponential whatever the pattern.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("valid test id")
    }

    #[test]
    fn identity_glob_rules() {
        let table: &[(&str, &str, bool)] = &[
            (
                "spiffe://acme.test/pe/*",
                "spiffe://acme.test/pe/echo-1",
                true,
            ),
            ("spiffe://acme.test/pe/*", "spiffe://acme.test/pe", false),
            (
                "spiffe://acme.test/pe/*",
                "spiffe://acme.test/pe/a/b",
                false,
            ),
            (
                "spiffe://acme.test/pe/*",
                "spiffe://other.test/pe/echo-1",
                false,
            ),
            (
                "spiffe://acme.test/pe/*",
                "spiffe://acme.test/pu/echo-1",
                false,
            ),
            (
                "spiffe://acme.test/pe/*",
                "spiffe://acme.test/PE/echo-1",
                false,
            ),
            (
                "spiffe://acme.test/pe/echo-*",
                "spiffe://acme.test/pe/echo-1",
                true,
            ),
            (
                "spiffe://acme.test/pe/echo-*",
                "spiffe://acme.test/pe/echo-",
                true,
            ),
            (
                "spiffe://acme.test/pe/echo-*",
                "spiffe://acme.test/pe/web-1",
                false,
            ),
            (
                "spiffe://acme.test/pe/*-1",
                "spiffe://acme.test/pe/echo-1",
                true,
            ),
            (
                "spiffe://acme.test/*/echo",
                "spiffe://acme.test/pe/echo",
                true,
            ),
            (
                "spiffe://acme.test/*/echo",
                "spiffe://acme.test/pe/x/echo",
                false,
            ),
            ("spiffe://acme.test/pe/**", "spiffe://acme.test/pe/a", true),
            (
                "spiffe://acme.test/pe/**",
                "spiffe://acme.test/pe/a/b/c",
                true,
            ),
            ("spiffe://acme.test/pe/**", "spiffe://acme.test/pe", false),
            ("spiffe://acme.test/**", "spiffe://acme.test/x", true),
            ("spiffe://acme.test/**", "spiffe://acme.test", false),
            ("spiffe://acme.test", "spiffe://acme.test", true),
            ("spiffe://acme.test", "spiffe://acme.test/pe", false),
            (
                "spiffe://acme.test/pe/echo-1",
                "spiffe://acme.test/pe/echo-1",
                true,
            ),
            (
                "spiffe://acme.test/pe/echo-1",
                "spiffe://acme.test/pe/echo-10",
                false,
            ),
            // The domain is literal: a prefix or suffix of it is not the domain.
            (
                "spiffe://acme.test/pe/*",
                "spiffe://acme.test.evil/pe/x",
                false,
            ),
        ];
        for (pattern, subject, expected) in table {
            let p = IdentityPattern::parse(pattern).expect("valid test pattern");
            assert_eq!(p.matches(&id(subject)), *expected, "{pattern} vs {subject}");
        }
    }

    #[test]
    fn identity_pattern_refusals() {
        let table: &[(&str, &str)] = &[
            ("*", "scheme is not spiffe://"),
            (
                "spiffe://*/pe",
                "the trust domain of a pattern cannot have wildcards",
            ),
            (
                "spiffe://acme.*/pe",
                "the trust domain of a pattern cannot have wildcards",
            ),
            (
                "spiffe://acme.test/**/pe",
                "** is allowed only as the last segment",
            ),
            ("spiffe://acme.test/pe**", "** must be a whole segment"),
            ("spiffe://acme.test/pe//x", "pattern has an empty segment"),
            ("spiffe://acme.test/", "pattern has an empty segment"),
            ("spiffe://acme.test/../x", "pattern has a . or .. segment"),
            (
                "spiffe://acme.test/p?",
                "pattern has a character other than a-z A-Z 0-9 . - _ *",
            ),
            ("spiffe://Acme/x", "trust domain must be lowercase"),
        ];
        for (pattern, reason) in table {
            match IdentityPattern::parse(pattern) {
                Err(Error::InvalidPattern { reason: got, .. }) => {
                    assert_eq!(got, *reason, "{pattern}")
                }
                other => panic!("{pattern}: {other:?}"),
            }
        }
    }

    #[test]
    fn exact_pattern() {
        let i = id("spiffe://acme.test/pe/a");
        let p = IdentityPattern::exact(&i);
        assert!(p.matches(&i));
        assert!(!p.matches(&id("spiffe://acme.test/pe/b")));
    }

    #[test]
    fn pool_glob_rules() {
        let table: &[(&[u8], &[u8], bool)] = &[
            (b"*", b"", true),
            (b"*", b"echo", true),
            (b"echo", b"echo", true),
            (b"echo", b"echo2", false),
            (b"echo*", b"echo", true),
            (b"echo*", b"echo-eu", true),
            (b"echo*", b"ech", false),
            (b"*-eu", b"echo-eu", true),
            (b"*-eu", b"echo-us", false),
            (b"a*b*c", b"aXXbYYc", true),
            (b"a*b*c", b"aXXbYY", false),
            (b"a*a*a*a*b", b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
            (b"\xff*", b"\xff\x00", true),
        ];
        for (pattern, pool, expected) in table {
            let p = PoolPattern::new(*pattern).expect("valid");
            assert_eq!(p.matches(pool), *expected, "{pattern:?} vs {pool:?}");
        }
        assert!(PoolPattern::any().is_any());
        assert!(!PoolPattern::new(&b"e*"[..]).expect("valid").is_any());
        assert!(PoolPattern::new(Vec::new()).is_err());
        assert!(PoolPattern::new(vec![b'a'; 257]).is_err());
    }
}
