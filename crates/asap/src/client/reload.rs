//! Credentials that rotate without a restart: a PE's, PU's or gateway's certificate, key,
//! CA bundle and CRL are re-read on request (SIGHUP in `rsp`) or when the files change,
//! and swapped into the running [`TrustStore`]. New handshakes use the new material at
//! once; live connections keep theirs, except those the new CRL or CA bundle revokes,
//! which are told to close. A file that does not parse, a certificate for another
//! identity, an expired one or a key that does not match is refused, and the old
//! material stays in use.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use identity::Serial;
use trust::{DomainBundle, LocalIdentity, TrustStore};

use super::{Error, read};

/// How often `rsp` looks at the credential files for a change (their size and
/// modification time): a renewal written by a SPIRE-style helper is in use within this.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// Where a PE's, PU's or gateway's credentials come from (as `rsp-pki` writes them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The trust bundle of the local trust domain (PEM).
    pub ca: PathBuf,
    /// The trust domain's CRLs (PEM), if any.
    pub crl: Option<PathBuf>,
}

/// What a reload changed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// The serial of the certificate presented from now on.
    pub serial: Serial,
    /// Whether it is another certificate than before (a renewal).
    pub renewed: bool,
    /// Live connections the new CRL or CA bundle revoked, told to close.
    pub closed: usize,
}

/// The size and modification time of each file, to notice a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<Option<(u64, Option<SystemTime>)>>);

impl CredentialFiles {
    /// A trust store presenting the certificate and trusting the CA bundle, with the CRLs.
    pub fn load(&self) -> Result<Arc<TrustStore>, Error> {
        super::credentials_with_crl(&self.cert, &self.key, &self.ca, self.crl.as_deref())
    }

    /// The files' sizes and modification times (`None` for one that cannot be read).
    pub fn fingerprint(&self) -> Fingerprint {
        let files = [
            Some(&self.cert),
            Some(&self.key),
            Some(&self.ca),
            self.crl.as_ref(),
        ];
        Fingerprint(
            files
                .into_iter()
                .flatten()
                .map(|path| {
                    std::fs::metadata(path)
                        .ok()
                        .map(|m| (m.len(), m.modified().ok()))
                })
                .collect(),
        )
    }

    /// Re-reads every file and swaps the result into `trust`, or changes nothing: all files
    /// are read and checked first (the CA bundle and CRLs as the store would take them,
    /// the certificate for the same SPIFFE ID, unexpired at `now`, with its key).
    pub fn reload(&self, trust: &TrustStore, now: SystemTime) -> Result<Reloaded, Error> {
        let identity = LocalIdentity::from_pem(&read(&self.cert)?, &read(&self.key)?)?;
        let domain = trust.identity().id().trust_domain();
        let mut bundle = DomainBundle::from_pem(domain, &read(&self.ca)?)?;
        if let Some(crl) = &self.crl {
            bundle = bundle.with_crls(trust::crls_from_pem(&read(crl)?)?);
        }
        bundle.validate()?;
        let before = trust.identity().as_peer().serial().clone();
        let serial = identity.as_peer().serial().clone();
        // Refuses another identity or an expired certificate, changing nothing; the
        // bundle was validated, so replacing it cannot fail after this.
        trust.set_identity(identity, now)?;
        let closed = trust.replace_domain(bundle)?;
        Ok(Reloaded {
            renewed: serial != before,
            serial,
            closed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trust::testing::TestCa;

    #[allow(clippy::disallowed_methods)] // real certificates, the real clock
    fn now() -> SystemTime {
        SystemTime::now()
    }

    /// Writes `leaf` of `ca` as rsp-pki would, and the CA bundle, with an empty CRL.
    fn write(dir: &std::path::Path, ca: &TestCa, leaf: &trust::testing::TestLeaf) {
        std::fs::write(dir.join("pe.pem"), leaf.chain_pem()).expect("write");
        std::fs::write(dir.join("pe.key"), leaf.key_pem()).expect("write");
        std::fs::write(dir.join("ca.pem"), ca.root_pem()).expect("write");
    }

    fn files(dir: &std::path::Path) -> CredentialFiles {
        CredentialFiles {
            cert: dir.join("pe.pem"),
            key: dir.join("pe.key"),
            ca: dir.join("ca.pem"),
            crl: Some(dir.join("crl.pem")),
        }
    }

    #[test]
    fn a_renewal_is_taken_and_a_bad_file_changes_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = TestCa::new("acme.test");
        let first = ca.leaf("pe/echo-1").issue();
        write(dir.path(), &ca, &first);
        let crl = trust::testing::pem("X509 CRL", &ca.crl(&[]));
        std::fs::write(dir.path().join("crl.pem"), &crl).expect("write");
        let files = files(dir.path());
        let trust = files.load().expect("load");
        let fingerprint = files.fingerprint();
        let serial = |t: &TrustStore| t.identity().as_peer().serial().clone();
        assert_eq!(serial(&trust), first.serial);

        // Renewed: the same identity, a new certificate and key.
        let renewed = ca.leaf("pe/echo-1").issue();
        write(dir.path(), &ca, &renewed);
        assert_ne!(files.fingerprint(), fingerprint);
        let r = files.reload(&trust, now()).expect("renewal");
        assert!(r.renewed);
        assert_eq!(
            (r.serial.clone(), serial(&trust)),
            (renewed.serial.clone(), renewed.serial.clone())
        );

        // Refused, the renewed certificate stays: another identity, an expired one, a
        // key that is not the certificate's, a CRL that does not parse.
        let other = ca.leaf("pe/echo-2").issue();
        write(dir.path(), &ca, &other);
        let err = files.reload(&trust, now()).expect_err("another identity");
        assert!(
            err.to_string().contains("spiffe://acme.test/pe/echo-2"),
            "{err}"
        );
        write(dir.path(), &ca, &ca.leaf("pe/echo-1").expired().issue());
        files.reload(&trust, now()).expect_err("expired");
        std::fs::write(dir.path().join("pe.pem"), renewed.chain_pem()).expect("write");
        std::fs::write(dir.path().join("pe.key"), first.key_pem()).expect("write");
        files.reload(&trust, now()).expect_err("not its key");
        write(dir.path(), &ca, &renewed);
        std::fs::write(
            dir.path().join("crl.pem"),
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        )
        .expect("write");
        files
            .reload(&trust, now())
            .expect_err("a CRL that does not parse");
        assert_eq!(serial(&trust), renewed.serial);

        // A CRL revoking the PE's own PU connection is taken (and would close it).
        let pu = ca.leaf("pu/client-1").issue();
        std::fs::write(
            dir.path().join("crl.pem"),
            trust::testing::pem("X509 CRL", &ca.crl(&[&pu.serial])),
        )
        .expect("write");
        let r = files.reload(&trust, now()).expect("a new CRL");
        assert!(!r.renewed);
        let peer = trust::Peer::from_certificate(&pu.chain[0]).expect("peer");
        assert!(
            trust.register_connection(&peer).is_err(),
            "the PU is revoked now"
        );
    }
}
