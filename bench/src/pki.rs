//! One test PKI for every server and client of a run: the registrar, the floor server,
//! etcd, and their clients all chain to the same ECDSA P-256 root.

use std::path::Path;
use std::sync::Arc;

use trust::TrustStore;
use trust::testing::{TestCa, pem};

/// The trust domain of every certificate here.
pub(crate) const DOMAIN: &str = "bench.test";

/// The CA and the servers' files (PEM) in a temporary directory, for the child processes.
pub(crate) struct Pki {
    ca: TestCa,
    pub(crate) dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let ca = TestCa::new(DOMAIN);
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("write PKI file");
        };
        write("ca.pem", ca.root_pem());
        write("crl.pem", pem("X509 CRL", &ca.crl(&[])));
        for (stem, path) in [
            ("registrar", "registrar/bench"),
            ("floor", "registrar/floor"),
            ("pe", "pe/failover"),
        ] {
            let leaf = ca.leaf(path).issue();
            write(&format!("{stem}.pem"), leaf.chain_pem());
            write(&format!("{stem}.key"), leaf.key_pem());
            if stem == "registrar" {
                // `enrpd init --name bench` takes them as rsp-pki names them.
                write("registrar-bench.pem", leaf.chain_pem());
                write("registrar-bench.key", leaf.key_pem());
            }
        }
        // etcd (Go's crypto/tls) checks the server name: a DNS name besides the SPIFFE ID.
        let etcd = ca.leaf("etcd/server").dns("localhost").issue();
        write("etcd.pem", etcd.chain_pem());
        write("etcd.key", etcd.key_pem());
        let client = ca.leaf("pu/etcd-client").issue();
        write("etcd-client.pem", client.chain_pem());
        write("etcd-client.key", client.key_pem());
        Self { ca, dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The trust store of a client with the SPIFFE ID `spiffe://bench.test/{path}`.
    pub(crate) fn client(&self, path: &str) -> Arc<TrustStore> {
        let store = TrustStore::new(self.ca.leaf(path).issue().identity()).expect("trust store");
        store.add_domain(self.ca.bundle()).expect("bundle");
        Arc::new(store)
    }
}

/// A trust store from `{stem}.pem`/`{stem}.key` and `ca.pem` in `dir` (a child's side).
pub(crate) fn store_from(dir: &Path, stem: &str) -> TrustStore {
    let read = |name: &str| std::fs::read(dir.join(name)).expect("PKI file");
    let identity = trust::LocalIdentity::from_pem(
        &read(&format!("{stem}.pem")),
        &read(&format!("{stem}.key")),
    )
    .expect("identity");
    let store = TrustStore::new(identity).expect("trust store");
    let domain = identity::TrustDomain::new(DOMAIN).expect("domain");
    store
        .add_domain(trust::DomainBundle::from_pem(domain, &read("ca.pem")).expect("bundle"))
        .expect("add domain");
    store
}
