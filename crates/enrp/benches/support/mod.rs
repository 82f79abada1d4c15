//! What the registrar benches share (`benches/registrar.rs`, `benches/download.rs`): the
//! test PKI and the child argument. The child-process line protocol is `testkit::child`,
//! the registration a bench PE sends `testkit::msg::registration`, /proc readings
//! `testkit::proc`.

use std::sync::Arc;

use trust::TrustStore;
use trust::testing::TestCa;

/// The first argument that makes a bench binary a registrar child.
pub(crate) const CHILD_ARG: &str = "--registrar-child";
/// The trust domain of every certificate here.
pub(crate) const DOMAIN: &str = "bench.test";
/// PEs per connection (and per identity: the default limit is 10,000 per registrant).
pub(crate) const PES_PER_CONN: usize = 1_000;

/// A test CA and a directory holding `ca.pem` and the registrars' certificates.
pub(crate) struct Pki {
    pub(crate) ca: TestCa,
    pub(crate) dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let ca = TestCa::new(DOMAIN);
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), ca.root_pem()).expect("write CA");
        Self { ca, dir }
    }

    /// Writes `NAME.pem` and `NAME.key` for `spiffe://bench.test/registrar/NAME`.
    pub(crate) fn registrar(&self, name: &str) {
        let leaf = self.ca.leaf(&format!("registrar/{name}")).issue();
        let dir = self.dir.path();
        std::fs::write(dir.join(format!("{name}.pem")), leaf.chain_pem()).expect("write cert");
        std::fs::write(dir.join(format!("{name}.key")), leaf.key_pem()).expect("write key");
    }

    /// The trust store of a client with the SPIFFE ID `spiffe://bench.test/{path}`.
    pub(crate) fn client(&self, path: &str) -> Arc<TrustStore> {
        let store = TrustStore::new(self.ca.leaf(path).issue().identity()).expect("trust store");
        store.add_domain(self.ca.bundle()).expect("bundle");
        Arc::new(store)
    }
}
