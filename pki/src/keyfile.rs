//! CA private keys encrypted at rest: argon2id derives a key from the passphrase, and
//! ChaCha20-Poly1305 (ring) seals the PEM of the private key.
//!
//! ```text
//! -----BEGIN RSP ENCRYPTED PRIVATE KEY-----
//! kdf: argon2id v19 m=19456 t=2 p=1
//! salt: <16 bytes, hex>
//! nonce: <12 bytes, hex>
//! data: <ciphertext and tag, hex>
//! -----END RSP ENCRYPTED PRIVATE KEY-----
//! ```
//! The `kdf` line is the AEAD's associated data, so its parameters cannot be altered.

use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::PkiError;

const BEGIN: &str = "-----BEGIN RSP ENCRYPTED PRIVATE KEY-----";
const END: &str = "-----END RSP ENCRYPTED PRIVATE KEY-----";
/// OWASP's argon2id minimum (19 MiB, 2 passes): about 0.05 s optimised.
const M_COST: u32 = 19 * 1024;
const T_COST: u32 = 2;
/// Bounds on parameters read from a file, so a crafted file cannot exhaust memory/time.
const MAX_M_COST: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 16;

/// A passphrase, wiped from memory when dropped.
pub struct Passphrase(Vec<u8>);

impl Passphrase {
    /// From bytes; a trailing newline (from `echo pw > file`) is removed.
    pub fn new(mut bytes: Vec<u8>) -> Self {
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        Self(bytes)
    }

    /// Whether it is empty (refused: an empty passphrase protects nothing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Passphrase {
    fn drop(&mut self) {
        // Best effort: overwrite before the allocation is freed; black_box keeps the
        // compiler from eliding stores to memory about to be freed.
        for b in &mut self.0 {
            *b = std::hint::black_box(0);
        }
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// Whether a key file's text is an encrypted key.
pub fn is_encrypted(text: &str) -> bool {
    text.trim_start().starts_with(BEGIN)
}

fn derive(
    pass: &Passphrase,
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<LessSafeKey, &'static str> {
    let params = Params::new(m, t, p, Some(32)).map_err(|_| "bad argon2 parameters")?;
    let mut key = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(&pass.0, salt, &mut key)
        .map_err(|_| "argon2 failed")?;
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|_| "bad AEAD key")?;
    key.fill(0);
    Ok(LessSafeKey::new(unbound))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Encrypts a private key's PEM.
pub fn encrypt(key_pem: &str, pass: &Passphrase) -> Result<String, PkiError> {
    if pass.is_empty() {
        return Err(PkiError::EmptyPassphrase);
    }
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rng.fill(&mut salt)
        .and_then(|()| rng.fill(&mut nonce))
        .map_err(|_| PkiError::Crypto("the OS random number generator failed"))?;
    let kdf = format!("kdf: argon2id v19 m={M_COST} t={T_COST} p=1");
    let key = derive(pass, &salt, M_COST, T_COST, 1).map_err(PkiError::Crypto)?;
    let mut data = key_pem.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(kdf.as_bytes()),
        &mut data,
    )
    .map_err(|_| PkiError::Crypto("encryption failed"))?;
    Ok(format!(
        "{BEGIN}\n{kdf}\nsalt: {}\nnonce: {}\ndata: {}\n{END}\n",
        hex(&salt),
        hex(&nonce),
        hex(&data)
    ))
}

/// Decrypts an encrypted key file's text back to the private key's PEM.
pub fn decrypt(text: &str, pass: Option<&Passphrase>, path: &Path) -> Result<String, PkiError> {
    let bad = |reason| PkiError::BadKeyFile {
        path: path.to_owned(),
        reason,
    };
    let pass = pass.ok_or_else(|| PkiError::PassphraseRequired(path.to_owned()))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let kdf_line = text
        .lines()
        .find(|l| l.starts_with("kdf: "))
        .ok_or_else(|| bad("no kdf line"))?;
    let params: Vec<&str> = kdf_line.split_whitespace().collect();
    let [_, "argon2id", "v19", m, t, p] = params[..] else {
        return Err(bad("unsupported kdf"));
    };
    let num = |s: &str, prefix: &str| s.strip_prefix(prefix).and_then(|v| v.parse::<u32>().ok());
    let (Some(m), Some(t), Some(p)) = (num(m, "m="), num(t, "t="), num(p, "p=")) else {
        return Err(bad("malformed kdf parameters"));
    };
    if m > MAX_M_COST || t > MAX_T_COST || p > 16 {
        return Err(bad("kdf parameters out of bounds"));
    }
    let salt = field("salt:")
        .and_then(unhex)
        .ok_or_else(|| bad("malformed salt"))?;
    let nonce: [u8; 12] = field("nonce:")
        .and_then(unhex)
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| bad("malformed nonce"))?;
    let mut data = field("data:")
        .and_then(unhex)
        .ok_or_else(|| bad("malformed data"))?;
    let key = derive(pass, &salt, m, t, p).map_err(bad)?;
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(kdf_line.as_bytes()),
            &mut data,
        )
        .map_err(|_| PkiError::WrongPassphrase(path.to_owned()))?;
    String::from_utf8(plain.to_vec()).map_err(|_| bad("decrypted key is not text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_passphrase() {
        let pass = Passphrase::new(b"correct horse\n".to_vec());
        let sealed = encrypt("-----BEGIN PRIVATE KEY-----\nabc\n", &pass).expect("encrypt");
        assert!(is_encrypted(&sealed));
        let path = Path::new("ca.key");
        let same = Passphrase::new(b"correct horse".to_vec());
        assert_eq!(
            decrypt(&sealed, Some(&same), path).expect("decrypt"),
            "-----BEGIN PRIVATE KEY-----\nabc\n"
        );
        let wrong = Passphrase::new(b"wrong".to_vec());
        assert!(matches!(
            decrypt(&sealed, Some(&wrong), path),
            Err(PkiError::WrongPassphrase(_))
        ));
        assert!(matches!(
            decrypt(&sealed, None, path),
            Err(PkiError::PassphraseRequired(_))
        ));
        // Tampering with the parameters breaks the tag.
        let tampered = sealed.replace("t=2", "t=3");
        assert!(matches!(
            decrypt(&tampered, Some(&same), path),
            Err(PkiError::WrongPassphrase(_))
        ));
        assert!(matches!(
            encrypt("x", &Passphrase::new(b"\n".to_vec())),
            Err(PkiError::EmptyPassphrase)
        ));
    }
}
