//! Project parameters PE Labels (0x8102) and Selection Hints (0x8103).
//! docs/PROTOCOL-EXTENSIONS.md; spec §12.9 style.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |   Type = 0x8102 / 0x8103      |         Length = 4 + n        |
//! +---------------+---------------+-------------------------------+
//! |  Key Length   |  Key (1–32 bytes) ...         | Value Length  |
//! +---------------+-------------------------------+---------------+
//! :  Value (0–64 bytes) ... then the next pair, padded to 4        :
//! +---------------------------------------------------------------+
//! ```
//! Both have action bits `10`: implementations that do not know them (rsplib, older rsp)
//! skip them. Labels travel inside the Pool Element parameter (after its policy), so they
//! go wherever the PE goes (registration, ENRP handle updates and table responses,
//! resolution responses); hints follow the Pool Handle of an ASAP_HANDLE_RESOLUTION.

use std::fmt;

use super::{Param, ParamType, UnknownParam};
use crate::wire::error::{DecodeError, DecodeErrorKind};
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// Most pairs in one Labels or Hints parameter: enough for region, zone, version and a
/// few more; the bound keeps a PE entry small in every registrar's handlespace.
pub const MAX_LABELS: usize = 16;
/// Longest key, in bytes.
pub const MAX_LABEL_KEY_LEN: usize = 32;
/// Longest value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 64;

/// Why a set of labels (or hints) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    /// More than [`MAX_LABELS`] pairs.
    #[error("more than {MAX_LABELS} labels")]
    TooMany,
    /// A key that is empty, longer than [`MAX_LABEL_KEY_LEN`] bytes, or has a character
    /// outside `a-z A-Z 0-9 . _ - /`.
    #[error("label key {0:?}: 1 to {MAX_LABEL_KEY_LEN} bytes of a-z A-Z 0-9 . _ - / are allowed")]
    Key(String),
    /// A value longer than [`MAX_LABEL_VALUE_LEN`] bytes or with a byte that is not
    /// printable ASCII.
    #[error("label value {0:?}: at most {MAX_LABEL_VALUE_LEN} bytes of printable ASCII")]
    Value(String),
    /// The same key twice.
    #[error("label key {0:?} given twice")]
    DuplicateKey(String),
    /// A `key=value` text without `=`.
    #[error("{0:?} is not key=value")]
    NotKeyValue(String),
}

/// Key=value pairs: a PE's labels (0x8102) or a pool user's hints (0x8103), in the order
/// sent, keys unique. Empty means "none" (the parameter is then not sent).
///
/// A boxed slice, not a `Vec`: every PE entry of a registrar's handlespace holds one (16
/// bytes, no allocation when empty).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

fn key_ok(k: &[u8]) -> bool {
    (1..=MAX_LABEL_KEY_LEN).contains(&k.len())
        && k.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

fn value_ok(v: &[u8]) -> bool {
    v.len() <= MAX_LABEL_VALUE_LEN && v.iter().all(|b| (0x20..=0x7E).contains(b))
}

impl Labels {
    /// The pairs, checked: at most [`MAX_LABELS`], keys unique, each key and value within
    /// its bounds.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn new<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, LabelError> {
        let mut out: Vec<(Box<str>, Box<str>)> = Vec::new();
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            if out.len() == MAX_LABELS {
                return Err(LabelError::TooMany);
            }
            if !key_ok(k.as_bytes()) {
                return Err(LabelError::Key(k.to_owned()));
            }
            if !value_ok(v.as_bytes()) {
                return Err(LabelError::Value(v.to_owned()));
            }
            if out.iter().any(|(have, _)| **have == *k) {
                return Err(LabelError::DuplicateKey(k.to_owned()));
            }
            out.push((k.into(), v.into()));
        }
        Ok(Self(out.into_boxed_slice()))
    }

    /// Parses `key=value` texts (the command line's `--label` / `--hint`); the value is
    /// everything after the first `=`.
    ///
    /// # Errors
    /// A text without `=`, or as [`Self::new`].
    pub fn parse<S: AsRef<str>>(texts: impl IntoIterator<Item = S>) -> Result<Self, LabelError> {
        let mut pairs = Vec::new();
        for t in texts {
            let t = t.as_ref();
            let (k, v) = t
                .split_once('=')
                .ok_or_else(|| LabelError::NotKeyValue(t.to_owned()))?;
            pairs.push((k.to_owned(), v.to_owned()));
        }
        Self::new(pairs)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| **k == *key).map(|(_, v)| &**v)
    }

    /// The pairs in the order sent.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// How many pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn write_pairs(&self, w: &mut Writer<'_>) {
        for (k, v) in &*self.0 {
            // Lengths fit a byte: the constructors bound them (32, 64).
            w.u8(k.len() as u8);
            w.bytes(k.as_bytes());
            w.u8(v.len() as u8);
            w.bytes(v.as_bytes());
        }
    }

    fn read_pairs(p: &RawParam<'_>, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut out: Vec<(Box<str>, Box<str>)> = Vec::new();
        while r.remaining() > 0 {
            let at = r.offset();
            if out.len() == MAX_LABELS {
                return Err(DecodeError::with_tlv(
                    at,
                    DecodeErrorKind::Limit {
                        what: "labels in one parameter",
                        max: MAX_LABELS,
                    },
                    p.tlv(),
                ));
            }
            let k = read_short(p, r)?;
            if !key_ok(k) {
                return Err(p.invalid(at, "label key: 1-32 bytes of a-z A-Z 0-9 . _ - /"));
            }
            let vat = r.offset();
            let v = read_short(p, r)?;
            if !value_ok(v) {
                return Err(p.invalid(vat, "label value: at most 64 bytes of printable ASCII"));
            }
            // Both checked as ASCII above.
            let (k, v) = (String::from_utf8_lossy(k), String::from_utf8_lossy(v));
            if out.iter().any(|(have, _)| **have == *k) {
                return Err(p.invalid(at, "label key given twice"));
            }
            out.push((k.into(), v.into()));
        }
        Ok(Self(out.into_boxed_slice()))
    }
}

/// A length byte and that many bytes.
fn read_short<'a>(p: &RawParam<'_>, r: &mut Reader<'a>) -> Result<&'a [u8], DecodeError> {
    let at = r.offset();
    let n = usize::from(r.u8().map_err(|_| p.invalid(at, "label truncated"))?);
    r.take(n).map_err(|_| p.invalid(at, "label truncated"))
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// `k=v,k2=v2`, the form of logs (keys and values are printable ASCII, so nothing to
/// escape).
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// The PE Labels parameter (0x8102), inside a Pool Element.
impl Param for Labels {
    fn param_type(&self) -> ParamType {
        ParamType::PE_LABELS
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::PE_LABELS
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        self.write_pairs(w);
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        Self::read_pairs(p, r)
    }
}

/// The Selection Hints parameter (0x8103): a pool user's key=value pairs sent with a
/// handle resolution, for policies that match them against PE labels.
#[derive(Clone, Default, PartialEq, Eq, Hash, Debug)]
pub struct Hints(pub Labels);

impl Param for Hints {
    fn param_type(&self) -> ParamType {
        ParamType::SELECTION_HINTS
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::SELECTION_HINTS
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        self.0.write_pairs(w);
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        Labels::read_pairs(p, r).map(Self)
    }
}
