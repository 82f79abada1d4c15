//! Anchored audit chain heads (issue 18, item 6; docs/SECURITY.md): the hash chain shows
//! a broken link, but not a truncated tail or a chain rewritten from some row on. A
//! checkpoint records the head (row id, hash, time) signed with the registrar's key;
//! kept elsewhere (another host, the shipped logs), it lets `enrpd audit verify
//! --checkpoint FILE` find the chain shorter than the checkpoint saw, or that row's hash
//! different.
//!
//! The file is JSON: the head, the signer's SPIFFE ID and certificate (DER, hex), the TLS
//! signature scheme and the signature over [`Checkpoint::message`]. It verifies against
//! the local trust domain's CA at the checkpoint's time (a renewed registrar certificate
//! does not invalidate older checkpoints).

use serde::{Deserialize, Serialize};
use store::audit::Hash;
use tokio_rustls::rustls::SignatureScheme;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

/// The format tag, first in the signed message.
pub const FORMAT: &str = "rsp-audit-checkpoint/1";

/// A signed audit chain head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`FORMAT`].
    pub format: String,
    /// The id of the head row (0: an empty log).
    pub id: u64,
    /// Its hash, hex.
    pub hash: String,
    /// When the checkpoint was made, unix ms.
    pub time_ms: u64,
    /// The registrar's SPIFFE ID.
    pub signer: String,
    /// The signer's certificate (DER, hex).
    pub certificate: String,
    /// The TLS signature scheme code of the signature.
    pub scheme: u16,
    /// The signature over [`Checkpoint::message`], hex.
    pub signature: String,
}

/// Schemes the registrar's key may sign with (`rsp-pki` issues ECDSA P-256 or Ed25519).
const SCHEMES: [SignatureScheme; 3] = [
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
];

impl Checkpoint {
    /// What the signature covers.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "{FORMAT}\n{}\n{}\n{}\n{}\n",
            self.id, self.hash, self.time_ms, self.signer
        )
        .into_bytes()
    }

    /// A checkpoint of head `(id, hash)` at `time_ms`, signed with the key of
    /// `chain_pem`'s leaf certificate.
    pub fn sign(
        id: u64,
        hash: &Hash,
        time_ms: u64,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, String> {
        let leaf = trust::certs_from_pem(chain_pem)
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or("no certificate")?;
        let signer = trust::Peer::from_certificate(&leaf).map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: {e}"))?;
        let key = trust::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("key: {e}"))?;
        let signing = key
            .choose_scheme(&SCHEMES)
            .ok_or("the key signs with none of ED25519, ECDSA P-256, ECDSA P-384")?;
        let mut checkpoint = Self {
            format: FORMAT.to_owned(),
            id,
            hash: hex::encode(hash),
            time_ms,
            signer: signer.id().as_str().to_owned(),
            certificate: hex::encode(&leaf),
            scheme: u16::from(signing.scheme()),
            signature: String::new(),
        };
        let signature = signing
            .sign(&checkpoint.message())
            .map_err(|e| format!("signing: {e}"))?;
        checkpoint.signature = hex::encode(&signature);
        Ok(checkpoint)
    }

    /// Checks the signature, that the certificate was valid at the checkpoint's time under
    /// the CA of `ca_pem`, and that it is `signer`'s.
    pub fn check(&self, ca_pem: &[u8]) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("not a checkpoint: format {:?}", self.format));
        }
        let der = CertificateDer::from(
            hex::decode(&self.certificate).map_err(|_| "certificate: not hex")?,
        );
        let signature = hex::decode(&self.signature).map_err(|_| "signature: not hex")?;
        let cas = trust::certs_from_pem(ca_pem).map_err(|e| e.to_string())?;
        let anchors = cas
            .iter()
            .map(|ca| webpki::anchor_from_trusted_cert(ca).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("CA: {e}"))?;
        let ee = webpki::EndEntityCert::try_from(&der).map_err(|e| format!("certificate: {e}"))?;
        let algs = [
            webpki::ring::ED25519,
            webpki::ring::ECDSA_P256_SHA256,
            webpki::ring::ECDSA_P384_SHA384,
        ];
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_millis(self.time_ms));
        ee.verify_for_usage(
            &algs,
            &anchors,
            &[],
            at,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| format!("the certificate is not the trust domain's: {e}"))?;
        let id = trust::Peer::from_certificate(&der).map_err(|e| e.to_string())?;
        if id.id().as_str() != self.signer {
            return Err(format!(
                "signed by {}, not {}",
                id.id().as_str(),
                self.signer
            ));
        }
        let alg = match SignatureScheme::from(self.scheme) {
            SignatureScheme::ED25519 => webpki::ring::ED25519,
            SignatureScheme::ECDSA_NISTP256_SHA256 => webpki::ring::ECDSA_P256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384 => webpki::ring::ECDSA_P384_SHA384,
            other => return Err(format!("signature scheme {other:?} not accepted")),
        };
        ee.verify_signature(alg, &self.message(), &signature)
            .map_err(|e| format!("bad signature: {e}"))
    }

    /// The head hash, if it is 32 bytes of hex.
    pub fn head(&self) -> Option<Hash> {
        hex::decode(&self.hash).ok()?.try_into().ok()
    }
}
