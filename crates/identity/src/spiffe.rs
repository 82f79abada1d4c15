//! SPIFFE IDs and trust domain names, validated per the SPIFFE ID specification
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>).

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Longest SPIFFE ID accepted, in bytes (SPIFFE ID spec §2.3: 2048 bytes).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name accepted, in bytes (SPIFFE ID spec §2.1: 255 bytes).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// How much of a rejected input an error message repeats: enough to recognise it, bounded
/// because the input may come from a peer's certificate.
const ECHO_LIMIT: usize = 128;

/// `input` as error messages repeat it: at most 128 bytes, then `…` (the input may come
/// from a peer's certificate). Public for `trust`'s certificate errors.
pub fn echo(input: &str) -> String {
    if input.len() <= ECHO_LIMIT {
        return input.to_owned();
    }
    let mut end = ECHO_LIMIT;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}

/// A trust domain name such as `acme.test`: lowercase letters, digits, `.`, `-` and `_`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`acme.test`, not `spiffe://acme.test`).
    /// [`LEGACY_TRUST_DOMAIN`] is refused: were it trusted, a certificate of it could pass
    /// for a legacy peer, whose rights come from configuration, not grants.
    pub fn new(name: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidTrustDomain {
            input: echo(name),
            reason,
        };
        validate_trust_domain(name).map_err(invalid)?;
        if name == LEGACY_TRUST_DOMAIN {
            return Err(invalid(
                "reserved for the identities of legacy (unauthenticated) peers",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name, e.g. `acme.test`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself, `spiffe://NAME`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME}{}", self.0),
            domain_len: self.0.len(),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

/// A validated SPIFFE ID: `spiffe://<trust-domain>[/<segment>...]`.
///
/// Comparison is exact (byte for byte): the specification forbids the normalisations
/// (case folding of the path, percent-decoding) under which two spellings would be equal.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    uri: String,
    /// Length of the trust domain name, which starts right after `spiffe://`.
    domain_len: usize,
}

/// The trust domain of the identities a registrar gives legacy peers (RSPLIB clients and
/// registrars over plain SCTP), which present none: a `.invalid` name (RFC 2606), which no
/// configured trust domain's CA can vouch for.
pub const LEGACY_TRUST_DOMAIN: &str = "legacy.invalid";

impl SpiffeId {
    /// Whether this is a legacy peer's identity ([`LEGACY_TRUST_DOMAIN`]).
    pub fn is_legacy(&self) -> bool {
        self.trust_domain_str() == LEGACY_TRUST_DOMAIN
    }

    /// Parses and validates a SPIFFE ID.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidSpiffeId {
            input: echo(input),
            reason,
        };
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        let rest = strip_scheme(input).ok_or_else(|| invalid("scheme is not spiffe://"))?;
        let (domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(domain).map_err(invalid)?;
        validate_path(path).map_err(invalid)?;
        Ok(Self {
            uri: input.to_owned(),
            domain_len: domain.len(),
        })
    }

    /// Builds `spiffe://DOMAIN/seg1/seg2...` from already separate segments.
    pub fn from_segments<'a>(
        domain: &TrustDomain,
        segments: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, Error> {
        let mut uri = format!("{SCHEME}{}", domain.as_str());
        for segment in segments {
            uri.push('/');
            uri.push_str(segment);
        }
        Self::parse(&uri)
    }

    /// The whole ID as a URI string.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain name part.
    pub fn trust_domain_str(&self) -> &str {
        &self.uri[SCHEME.len()..SCHEME.len() + self.domain_len]
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[SCHEME.len() + self.domain_len..]
    }

    /// Whether this identity (a PE's) may vouch for `serving` as the identity of the
    /// server its pool users reach (`rsp pe --advertise`, docs/PROTOCOL-EXTENSIONS.md §4):
    /// itself, or an ID below its own path in its own trust domain
    /// (`spiffe://acme.test/pe/web-1` vouches for `spiffe://acme.test/pe/web-1/nginx`),
    /// never another workload's, so that one PE certificate cannot send pool users to
    /// another service's server. A trust domain's own ID (no path) vouches only for itself.
    pub fn may_vouch_for(&self, serving: &Self) -> bool {
        if self == serving {
            return true;
        }
        !self.path().is_empty()
            && self.trust_domain_str() == serving.trust_domain_str()
            && serving
                .path()
                .strip_prefix(self.path())
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The path segments, without the slashes (none for a trust domain's own ID).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        let path = self.path();
        let path = path.strip_prefix('/').unwrap_or(path);
        path.split('/').filter(|s| !s.is_empty())
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

/// The scheme must be exactly lowercase `spiffe://` (the spec allows no other spelling).
fn strip_scheme(input: &str) -> Option<&str> {
    input.strip_prefix(SCHEME)
}

pub(crate) fn is_trust_domain_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

pub(crate) fn is_path_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

pub(crate) fn validate_trust_domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("trust domain is empty");
    }
    if domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("trust domain is longer than 255 bytes");
    }
    for b in domain.bytes() {
        if is_trust_domain_char(b) {
            continue;
        }
        return Err(match b {
            b':' => "a port is not allowed",
            b'@' => "userinfo is not allowed",
            b'?' => "a query is not allowed",
            b'#' => "a fragment is not allowed",
            b'%' => "percent-encoding is not allowed",
            b'A'..=b'Z' => "trust domain must be lowercase",
            _ => "trust domain has a character other than a-z 0-9 . - _",
        });
    }
    Ok(())
}

/// Validates a path: empty, or `/seg` repeated with non-empty segments that are not `.`
/// or `..`, made of `a-zA-Z0-9.-_`.
pub(crate) fn validate_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("path must start with /");
    };
    for segment in rest.split('/') {
        validate_segment(segment)?;
    }
    Ok(())
}

fn validate_segment(segment: &str) -> Result<(), &'static str> {
    if segment.is_empty() {
        return Err("path has an empty segment (// or a trailing /)");
    }
    if segment == "." || segment == ".." {
        return Err("path has a . or .. segment");
    }
    for b in segment.bytes() {
        if is_path_char(b) {
            continue;
        }
        return Err(match b {
            b'?' => "a query is not allowed",
            b'#' => "a fragment is not allowed",
            b'%' => "percent-encoding is not allowed",
            _ => "path has a character other than a-z A-Z 0-9 . - _",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_pe_vouches_for_itself_and_below_its_path_only() {
        let id = |s: &str| SpiffeId::parse(s).expect("SPIFFE ID");
        let pe = id("spiffe://acme.test/pe/web-1");
        assert!(pe.may_vouch_for(&pe));
        assert!(pe.may_vouch_for(&id("spiffe://acme.test/pe/web-1/nginx")));
        // Another workload, a sibling with the same prefix, another trust domain, a parent.
        assert!(!pe.may_vouch_for(&id("spiffe://acme.test/pe/web-2")));
        assert!(!pe.may_vouch_for(&id("spiffe://acme.test/pe/web-10")));
        assert!(!pe.may_vouch_for(&id("spiffe://other.test/pe/web-1")));
        assert!(!pe.may_vouch_for(&id("spiffe://acme.test/pe")));
        // A trust domain's own ID is no workload: it vouches for nothing below it.
        assert!(!id("spiffe://acme.test").may_vouch_for(&pe));
    }
    use super::*;

    #[test]
    fn the_legacy_trust_domain_can_name_identities_but_never_be_trusted() {
        assert!(TrustDomain::new(LEGACY_TRUST_DOMAIN).is_err());
        let id = SpiffeId::parse("spiffe://legacy.invalid/sctp/192.0.2.1").expect("id");
        assert!(id.is_legacy());
        let real = SpiffeId::parse("spiffe://acme.test/pe/echo-1").expect("id");
        assert!(!real.is_legacy());
    }

    #[test]
    fn parse_table() {
        let long_path = format!("spiffe://a/{}", "x".repeat(MAX_SPIFFE_ID_LEN - 11));
        let too_long = format!("spiffe://a/{}", "x".repeat(MAX_SPIFFE_ID_LEN - 10));
        let long_domain = format!("spiffe://{}", "d".repeat(256));
        type Case<'a> = (&'a str, Result<(&'a str, &'a str), &'a str>);
        let cases: &[Case<'_>] = &[
            ("spiffe://acme.test", Ok(("acme.test", ""))),
            (
                "spiffe://acme.test/pe/echo-1",
                Ok(("acme.test", "/pe/echo-1")),
            ),
            ("spiffe://a_b-c.9/A.b_C-9/x", Ok(("a_b-c.9", "/A.b_C-9/x"))),
            ("spiffe://acme.test/..a/.b", Ok(("acme.test", "/..a/.b"))),
            (&long_path, Ok(("a", &long_path[10..]))),
            (&too_long, Err("longer than 2048 bytes")),
            (&long_domain, Err("trust domain is longer than 255 bytes")),
            ("", Err("scheme is not spiffe://")),
            ("SPIFFE://acme.test", Err("scheme is not spiffe://")),
            ("https://acme.test/pe", Err("scheme is not spiffe://")),
            ("spiffe:/acme.test", Err("scheme is not spiffe://")),
            ("spiffe://", Err("trust domain is empty")),
            ("spiffe:///pe", Err("trust domain is empty")),
            ("spiffe://Acme.test", Err("trust domain must be lowercase")),
            ("spiffe://acme.test:8443/pe", Err("a port is not allowed")),
            ("spiffe://user@acme.test/pe", Err("userinfo is not allowed")),
            ("spiffe://acme.test?x=1", Err("a query is not allowed")),
            ("spiffe://acme.test/pe?x=1", Err("a query is not allowed")),
            (
                "spiffe://acme.test/pe#frag",
                Err("a fragment is not allowed"),
            ),
            (
                "spiffe://acme.test/p%41",
                Err("percent-encoding is not allowed"),
            ),
            (
                "spiffe://acme.test/",
                Err("path has an empty segment (// or a trailing /)"),
            ),
            (
                "spiffe://acme.test/pe/",
                Err("path has an empty segment (// or a trailing /)"),
            ),
            (
                "spiffe://acme.test//pe",
                Err("path has an empty segment (// or a trailing /)"),
            ),
            ("spiffe://acme.test/./pe", Err("path has a . or .. segment")),
            (
                "spiffe://acme.test/pe/..",
                Err("path has a . or .. segment"),
            ),
            (
                "spiffe://acme.test/p e",
                Err("path has a character other than a-z A-Z 0-9 . - _"),
            ),
            (
                "spiffe://acme.test/pé",
                Err("path has a character other than a-z A-Z 0-9 . - _"),
            ),
            (
                "spiffe://ac*me/pe",
                Err("trust domain has a character other than a-z 0-9 . - _"),
            ),
        ];
        for (input, expected) in cases {
            let got = SpiffeId::parse(input);
            match (expected, got) {
                (Ok((domain, path)), Ok(id)) => {
                    assert_eq!(id.trust_domain_str(), *domain, "{input}");
                    assert_eq!(id.path(), *path, "{input}");
                    assert_eq!(id.as_str(), *input);
                }
                (Err(reason), Err(Error::InvalidSpiffeId { reason: got, .. })) => {
                    assert_eq!(got, *reason, "{input}");
                }
                (expected, got) => panic!("{input}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn segments_and_domain() {
        let id = SpiffeId::parse("spiffe://acme.test/pe/echo-1").expect("valid");
        assert_eq!(id.segments().collect::<Vec<_>>(), ["pe", "echo-1"]);
        assert_eq!(
            id.trust_domain(),
            TrustDomain::new("acme.test").expect("valid")
        );
        let root = TrustDomain::new("acme.test").expect("valid").id();
        assert_eq!(root.as_str(), "spiffe://acme.test");
        assert_eq!(root.segments().count(), 0);
        let built = SpiffeId::from_segments(&root.trust_domain(), ["pe", "echo-1"]).expect("valid");
        assert_eq!(built, id);
        assert!(SpiffeId::from_segments(&root.trust_domain(), ["a/b", ""]).is_err());
    }

    #[test]
    fn trust_domain_names() {
        assert!(TrustDomain::new("acme.test").is_ok());
        assert!(TrustDomain::new("spiffe://acme.test").is_err());
        assert!(TrustDomain::new("").is_err());
        assert!(TrustDomain::new("ACME").is_err());
    }

    #[test]
    fn echo_is_bounded_and_char_safe() {
        let s = "é".repeat(200);
        let e = echo(&s);
        assert!(e.len() <= ECHO_LIMIT + '…'.len_utf8());
    }
}
