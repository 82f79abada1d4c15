//! The names of the handlespace, as validated values: [`Namespace`], [`PoolHandle`] and
//! [`PeId`] (spec §1, §3.5, §4.4, §12.9).
//!
//! One type per concept for every crate: the wire codec (`asap::wire::param` encodes and
//! decodes them and re-exports them), the registrar core, the audit log's records
//! (`store::audit::Record`) and the admin API. The only way to build one is its checked
//! constructor, so an invalid name never enters the handlespace or the audit log.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Longest namespace name, in bytes (spec §12.9, parameter 0x8100).
pub const MAX_NAMESPACE_LEN: usize = 63;

/// The name of an independent handlespace (spec §12.9, D-7): 1 to
/// [`MAX_NAMESPACE_LEN`] bytes of `a-z 0-9 - .`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Namespace(Box<str>);

impl Namespace {
    /// The namespace ENRP messages mean when they carry no Namespace parameter.
    pub const DEFAULT: &'static str = "default";

    /// `None` unless 1 to 63 bytes of `a-z 0-9 - .`.
    pub fn new(name: &str) -> Option<Self> {
        Self::parse(name).ok()
    }

    /// [`Namespace::new`], saying which rule `name` breaks.
    pub fn parse(name: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidNamespace {
            input: crate::echo(name),
            reason,
        };
        if name.is_empty() || name.len() > MAX_NAMESPACE_LEN {
            return Err(invalid("must be 1 to 63 bytes"));
        }
        if !name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        {
            return Err(invalid("only a-z, 0-9, '-' and '.' are allowed"));
        }
        Ok(Self(name.into()))
    }

    /// The namespace named [`Self::DEFAULT`].
    pub fn default_namespace() -> Self {
        Self(Self::DEFAULT.into())
    }

    /// True for [`Self::DEFAULT`].
    pub fn is_default(&self) -> bool {
        &*self.0 == Self::DEFAULT
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Namespace {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self, Error> {
        Self::parse(name)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({})", self.0)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a pool: an opaque byte string of 1 to 32 bytes, compared byte for byte.
///
/// Spec §1, §3.5: the RFCs set no maximum; rsplib's `MAX_POOLHANDLESIZE` (32) is ours too.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolHandle(Box<[u8]>);

impl PoolHandle {
    /// Longest pool handle accepted (spec §3.5).
    pub const MAX_LEN: usize = 32;

    /// A pool handle from its bytes; `None` when empty or longer than [`Self::MAX_LEN`].
    pub fn new(bytes: impl AsRef<[u8]>) -> Option<Self> {
        Self::parse(bytes).ok()
    }

    /// [`PoolHandle::new`], with an error that says why not.
    pub fn parse(bytes: impl AsRef<[u8]>) -> Result<Self, Error> {
        let bytes = bytes.as_ref();
        if bytes.is_empty() || bytes.len() > Self::MAX_LEN {
            return Err(Error::InvalidPoolHandle { len: bytes.len() });
        }
        Ok(Self(bytes.into()))
    }

    /// The handle's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolHandle({self})")
    }
}

/// Printable bytes as they are, others as `\xNN`, so logs cannot be forged with newlines.
impl fmt::Display for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0.iter() {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// A pool element identifier: chosen by the PE, unique within its pool, never 0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeId(u32);

impl PeId {
    /// A PE ID; `None` for 0, which the spec reserves (§4.4).
    pub const fn new(id: u32) -> Option<Self> {
        if id == 0 { None } else { Some(Self(id)) }
    }

    /// The identifier as sent on the wire.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for PeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeId({:#010x})", self.0)
    }
}

impl fmt::Display for PeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule of a namespace is hit, at its limit and one past it.
    #[test]
    fn namespaces_are_1_to_63_bytes_of_lowercase_digits_dash_and_dot() {
        for good in ["a", "default", "lab-2.eu", &"a".repeat(MAX_NAMESPACE_LEN)] {
            let ns = Namespace::parse(good).expect(good);
            assert_eq!(ns.as_str(), good);
            assert_eq!(ns.to_string(), good);
            assert_eq!(good.parse::<Namespace>().as_ref(), Ok(&ns));
        }
        for (bad, reason) in [
            ("", "must be 1 to 63 bytes"),
            (&*"a".repeat(MAX_NAMESPACE_LEN + 1), "must be 1 to 63 bytes"),
            ("Lab", "only a-z, 0-9, '-' and '.' are allowed"),
            ("a b", "only a-z, 0-9, '-' and '.' are allowed"),
            ("a\n", "only a-z, 0-9, '-' and '.' are allowed"),
            ("é", "only a-z, 0-9, '-' and '.' are allowed"),
        ] {
            match Namespace::parse(bad) {
                Err(Error::InvalidNamespace { reason: r, .. }) => assert_eq!(r, reason, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
            assert_eq!(Namespace::new(bad), None);
        }
        assert!(Namespace::default_namespace().is_default());
        assert!(!Namespace::parse("lab").expect("lab").is_default());
    }

    #[test]
    fn pool_handles_are_1_to_32_bytes_and_print_without_control_characters() {
        assert_eq!(
            PoolHandle::parse([]),
            Err(Error::InvalidPoolHandle { len: 0 })
        );
        assert_eq!(
            PoolHandle::parse([0; 33]),
            Err(Error::InvalidPoolHandle { len: 33 })
        );
        let max = PoolHandle::new([b'x'; PoolHandle::MAX_LEN]).expect("32 bytes");
        assert_eq!(max.as_bytes().len(), 32);
        let odd = PoolHandle::new(b"a\nb\xff").expect("4 bytes");
        assert_eq!(odd.to_string(), "a\\x0ab\\xff");
        assert_eq!(
            Error::InvalidPoolHandle { len: 33 }.to_string(),
            "invalid pool handle: 33 bytes, a pool handle is 1 to 32 bytes"
        );
    }

    #[test]
    fn pe_id_zero_is_reserved() {
        assert_eq!(PeId::new(0), None);
        let id = PeId::new(0x1a2b).expect("nonzero");
        assert_eq!(id.get(), 0x1a2b);
        assert_eq!(id.to_string(), "0x00001a2b");
    }
}
