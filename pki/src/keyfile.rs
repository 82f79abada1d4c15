//! CA private keys encrypted at rest, in the standard PKCS#8 `EncryptedPrivateKeyInfo`
//! (RFC 5958, PEM label `ENCRYPTED PRIVATE KEY`), with PBES2 (RFC 8018): scrypt derives
//! the key from the passphrase and AES-256-CBC encrypts the PKCS#8 key, the form openssl
//! (`openssl pkey -in ca.key`) and step-ca read and write.
//!
//! Files in the project's earlier format are still read (for migration; `rsp-pki` writes
//! the standard one from then on):
//!
//! ```text
//! -----BEGIN RSP ENCRYPTED PRIVATE KEY-----
//! kdf: argon2id v19 m=19456 t=2 p=1
//! salt: <16 bytes, hex>
//! nonce: <12 bytes, hex>
//! data: <ciphertext and tag, hex>
//! -----END RSP ENCRYPTED PRIVATE KEY-----
//! ```
//! (argon2id, then ChaCha20-Poly1305 with the `kdf` line as associated data.)

use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::PkiError;

/// The standard PEM label of an `EncryptedPrivateKeyInfo`.
const PKCS8_BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
/// scrypt as written: N = 2^14, r = 8, p = 1 (16 MiB): openssl's own default for
/// `pkcs8 -scrypt`, within its 32 MiB limit on what it will read.
const SCRYPT_LOG_N: u8 = 14;
const SCRYPT_R: u32 = 8;
/// Bounds on what a file may ask for, so that a crafted key file cannot exhaust memory
/// or time: scrypt up to 1 GiB (N·r·128 bytes), PBKDF2 up to 10 million rounds.
const MAX_SCRYPT_BYTES: u64 = 1 << 30;
const MAX_PBKDF2_ROUNDS: u32 = 10_000_000;
/// The earlier format's PEM markers.
const BEGIN: &str = "-----BEGIN RSP ENCRYPTED PRIVATE KEY-----";
#[cfg(test)]
const END: &str = "-----END RSP ENCRYPTED PRIVATE KEY-----";
/// OWASP's argon2id minimum (19 MiB, 2 passes): about 0.05 s optimised.
#[cfg(test)]
const M_COST: u32 = 19 * 1024;
#[cfg(test)]
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

/// Whether a key file's text is an encrypted key (either format).
pub fn is_encrypted(text: &str) -> bool {
    let text = text.trim_start();
    text.starts_with(BEGIN) || text.starts_with(PKCS8_BEGIN)
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

/// Encrypts a private key's PEM (PKCS#8, `PRIVATE KEY`, as rcgen writes it) into a
/// PKCS#8 `EncryptedPrivateKeyInfo` (PBES2: scrypt, AES-256-CBC).
pub fn encrypt(key_pem: &str, pass: &Passphrase) -> Result<String, PkiError> {
    use pkcs8::der::pem::LineEnding;
    use pkcs8::pkcs5::{pbes2, scrypt};
    if pass.is_empty() {
        return Err(PkiError::EmptyPassphrase);
    }
    let (label, der) = pkcs8::SecretDocument::from_pem(key_pem)
        .map_err(|_| PkiError::Crypto("the private key is not PEM"))?;
    if label != "PRIVATE KEY" {
        return Err(PkiError::Crypto("the private key is not PKCS#8"));
    }
    let info = pkcs8::PrivateKeyInfo::try_from(der.as_bytes())
        .map_err(|_| PkiError::Crypto("the private key is not PKCS#8"))?;
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    rng.fill(&mut salt)
        .and_then(|()| rng.fill(&mut iv))
        .map_err(|_| PkiError::Crypto("the OS random number generator failed"))?;
    let cost = scrypt::Params::new(SCRYPT_LOG_N, SCRYPT_R, 1, 32)
        .map_err(|_| PkiError::Crypto("bad scrypt parameters"))?;
    let params = pbes2::Parameters::scrypt_aes256cbc(cost, &salt, &iv)
        .map_err(|_| PkiError::Crypto("bad PBES2 parameters"))?;
    let sealed = info
        .encrypt_with_params(params, &pass.0)
        .map_err(|_| PkiError::Crypto("encryption failed"))?;
    let pem = sealed
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .map_err(|_| PkiError::Crypto("encoding failed"))?;
    Ok(pem.as_str().to_owned())
}

/// Decrypts a PKCS#8 `EncryptedPrivateKeyInfo` back to the private key's PEM.
fn decrypt_pkcs8(text: &str, pass: &Passphrase, path: &Path) -> Result<String, PkiError> {
    use pkcs8::der::pem::LineEnding;
    use pkcs8::pkcs5::pbes2::Kdf;
    let bad = |reason| PkiError::BadKeyFile {
        path: path.to_owned(),
        reason,
    };
    let (label, der) = pkcs8::Document::from_pem(text).map_err(|_| bad("malformed PEM"))?;
    if label != "ENCRYPTED PRIVATE KEY" {
        return Err(bad("not an ENCRYPTED PRIVATE KEY"));
    }
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_bytes())
        .map_err(|_| bad("malformed EncryptedPrivateKeyInfo"))?;
    let pbes2 = info
        .encryption_algorithm
        .pbes2()
        .ok_or_else(|| bad("not PBES2 (PBES1 is obsolete)"))?;
    let affordable = match &pbes2.kdf {
        Kdf::Scrypt(p) => u64::from(p.block_size)
            .checked_mul(128)
            .and_then(|b| b.checked_mul(p.cost_parameter))
            .is_some_and(|bytes| bytes <= MAX_SCRYPT_BYTES && p.parallelization <= 16),
        Kdf::Pbkdf2(p) => p.iteration_count <= MAX_PBKDF2_ROUNDS,
        _ => false,
    };
    if !affordable {
        return Err(bad("key derivation parameters out of bounds"));
    }
    let plain = info
        .decrypt(&pass.0)
        .map_err(|_| PkiError::WrongPassphrase(path.to_owned()))?;
    let pem = plain
        .to_pem("PRIVATE KEY", LineEnding::LF)
        .map_err(|_| bad("decrypted key does not encode"))?;
    Ok(pem.as_str().to_owned())
}

/// Encrypts a private key's PEM in the project's earlier format (tests of the migration
/// path only: `rsp-pki` writes PKCS#8).
#[cfg(test)]
fn encrypt_legacy(key_pem: &str, pass: &Passphrase) -> Result<String, PkiError> {
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
        hex::encode(salt),
        hex::encode(nonce),
        hex::encode(&data)
    ))
}

/// Decrypts an encrypted key file's text (PKCS#8, or the earlier format) back to the
/// private key's PEM.
pub fn decrypt(text: &str, pass: Option<&Passphrase>, path: &Path) -> Result<String, PkiError> {
    let pass = pass.ok_or_else(|| PkiError::PassphraseRequired(path.to_owned()))?;
    if text.trim_start().starts_with(PKCS8_BEGIN) {
        return decrypt_pkcs8(text, pass, path);
    }
    decrypt_legacy(text, pass, path)
}

fn decrypt_legacy(text: &str, pass: &Passphrase, path: &Path) -> Result<String, PkiError> {
    let bad = |reason| PkiError::BadKeyFile {
        path: path.to_owned(),
        reason,
    };
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
        .and_then(|text| hex::decode(text).ok())
        .ok_or_else(|| bad("malformed salt"))?;
    let nonce: [u8; 12] = field("nonce:")
        .and_then(|text| hex::decode(text).ok())
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| bad("malformed nonce"))?;
    let mut data = field("data:")
        .and_then(|text| hex::decode(text).ok())
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

    /// `sealed` (under "correct horse") opens with it, and not with another or none.
    fn opens_only_with_its_passphrase(sealed: &str) -> String {
        assert!(is_encrypted(sealed));
        let path = Path::new("ca.key");
        let wrong = Passphrase::new(b"wrong".to_vec());
        assert!(matches!(
            decrypt(sealed, Some(&wrong), path),
            Err(PkiError::WrongPassphrase(_))
        ));
        assert!(matches!(
            decrypt(sealed, None, path),
            Err(PkiError::PassphraseRequired(_))
        ));
        let same = Passphrase::new(b"correct horse".to_vec());
        decrypt(sealed, Some(&same), path).expect("decrypt")
    }

    #[test]
    fn pkcs8_round_trip_wrong_passphrase_and_openssl_reads_it() {
        let key = rcgen::KeyPair::generate().expect("key").serialize_pem();
        let pass = Passphrase::new(b"correct horse\n".to_vec());
        let sealed = encrypt(&key, &pass).expect("encrypt");
        assert!(
            sealed.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"),
            "{sealed}"
        );
        assert_eq!(
            opens_only_with_its_passphrase(&sealed),
            key,
            "the same PKCS#8 key"
        );
        // The standard format: openssl reads it with the passphrase, where it is installed.
        let dir = tempfile::tempdir().expect("dir");
        let (file, pw) = (dir.path().join("ca.key"), dir.path().join("pw"));
        std::fs::write(&file, &sealed).expect("write");
        std::fs::write(&pw, "correct horse\n").expect("write");
        match std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(&file)
            .arg("-passin")
            .arg(format!("file:{}", pw.display()))
            .status()
        {
            Ok(status) => assert!(status.success(), "openssl cannot read it"),
            Err(_) => eprintln!("openssl not installed: the interoperability check is skipped"),
        }
    }

    #[test]
    fn the_earlier_format_is_still_read() {
        let pass = Passphrase::new(b"correct horse\n".to_vec());
        let sealed = encrypt_legacy("-----BEGIN PRIVATE KEY-----\nabc\n", &pass).expect("encrypt");
        assert_eq!(
            opens_only_with_its_passphrase(&sealed),
            "-----BEGIN PRIVATE KEY-----\nabc\n"
        );
        let (path, same) = (
            Path::new("ca.key"),
            Passphrase::new(b"correct horse".to_vec()),
        );
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
        assert!(matches!(
            encrypt_legacy("x", &Passphrase::new(b"\n".to_vec())),
            Err(PkiError::EmptyPassphrase)
        ));
    }
}
