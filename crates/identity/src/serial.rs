//! Certificate serial numbers as CRLs, grants and `rsp-pki` name them: pure values, read
//! from certificates by `trust`.

use std::fmt;
use std::str::FromStr;

use crate::Error;
use crate::spiffe::echo;

/// RFC 5280 §4.1.2.2: serials are at most 20 octets.
const MAX_SERIAL_LEN: usize = 20;

/// A certificate serial number, normalised: big-endian magnitude without leading zero
/// bytes (DER adds a 0x00 before a high bit; CRLs and certificates then compare equal).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// From the bytes of a DER INTEGER (or any big-endian magnitude).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        let trimmed = &bytes[start..];
        if trimmed.is_empty() {
            return Self(vec![0]);
        }
        Self(trimmed.to_vec())
    }

    /// The normalised big-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hexadecimal, no separators (the form `rsp-pki` prints and accepts).
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

impl FromStr for Serial {
    type Err = Error;
    /// Hexadecimal, optionally with `:` separators and a `0x` prefix.
    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidSerial {
            input: echo(s),
            reason,
        };
        let hex: String = s
            .trim_start_matches("0x")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        if hex.is_empty() {
            return Err(invalid("empty"));
        }
        if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid("not hexadecimal"));
        }
        if hex.len() > 2 * (MAX_SERIAL_LEN + 1) {
            return Err(invalid("longer than 20 octets"));
        }
        let padded = if hex.len() % 2 == 1 {
            format!("0{hex}")
        } else {
            hex
        };
        let bytes = hex::decode(padded).map_err(|_| invalid("not hexadecimal"))?;
        Ok(Self::from_bytes(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_normalisation_and_hex() {
        assert_eq!(Serial::from_bytes(&[0, 0x80, 1]).as_bytes(), &[0x80, 1]);
        assert_eq!(Serial::from_bytes(&[0, 0]).as_bytes(), &[0]);
        let s: Serial = "00:80:01".parse().expect("valid");
        assert_eq!(s, Serial::from_bytes(&[0x80, 1]));
        assert_eq!(s.to_hex(), "8001");
        assert_eq!("0x801".parse::<Serial>().expect("valid").to_hex(), "0801");
        assert!("xyz".parse::<Serial>().is_err());
        assert!("".parse::<Serial>().is_err());
        assert!("ab".repeat(22).parse::<Serial>().is_err());
    }
}
