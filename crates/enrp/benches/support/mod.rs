//! What the registrar benches share (`benches/registrar.rs`, `benches/download.rs`,
//! `benches/rsplib.rs`, and `tests/barrier.rs`): the test PKI, the child argument and the
//! start-up of a registrar as `enrpd init` + `enrpd run` do it ([`init_registrar`], then
//! `enrp::run_with`). The child-process line protocol is `testkit::child`,
//! the registration a bench PE sends `testkit::msg::registration`, /proc readings
//! `testkit::proc`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use enrp::config::{Listen, RunConfig, SctpMode, Secs};
use enrp::daemon::now_ms;
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

    /// Writes `registrar-NAME.pem` and `registrar-NAME.key` for
    /// `spiffe://bench.test/registrar/NAME`: the layout `rsp-pki issue registrar NAME`
    /// leaves, which `enrpd init --name NAME` reads.
    pub(crate) fn registrar(&self, name: &str) {
        let leaf = self.ca.leaf(&format!("registrar/{name}")).issue();
        let dir = self.dir.path();
        std::fs::write(dir.join(format!("registrar-{name}.pem")), leaf.chain_pem())
            .expect("write cert");
        std::fs::write(dir.join(format!("registrar-{name}.key")), leaf.key_pem())
            .expect("write key");
    }

    /// The trust store of a client with the SPIFFE ID `spiffe://bench.test/{path}`.
    pub(crate) fn client(&self, path: &str) -> Arc<TrustStore> {
        let store = TrustStore::new(self.ca.leaf(path).issue().identity()).expect("trust store");
        store.add_domain(self.ca.bundle()).expect("bundle");
        Arc::new(store)
    }
}

/// `enrpd init --name NAME` of the data directory `data` from the PKI directory `pki` (see
/// [`Pki::registrar`]), and the `enrpd run` options every registrar here shares: ASAP on
/// 127.0.0.1, any port; loopback PEs allowed (`--allow-loopback`: they advertise
/// 127.0.0.1); no admin API, ENRP or SCTP listener and no periodic checkpoint (what a
/// bench does not measure). Callers change what they need, then `enrp::run_with`.
pub(crate) async fn init_registrar(pki: &Path, name: &str, data: &Path) -> RunConfig {
    enrp::setup::init(pki, Some(name), data, now_ms())
        .await
        .expect("enrpd init");
    RunConfig {
        data: data.to_owned(),
        asap_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        enrp_listen: Listen(None),
        admin_listen: Listen(None),
        sctp: SctpMode::Off,
        allow_loopback: true,
        checkpoint_log_secs: Secs(Duration::ZERO),
        ..RunConfig::default()
    }
}

/// The next message on `conn` that is not a keep-alive (those come every 5 s); 30 s at
/// most (tests/reads.rs, tests/policies.rs).
#[allow(
    dead_code,
    reason = "the tests' helper: the benches read no single answers"
)]
pub(crate) async fn answer(conn: &mut asap::client::Connection) -> asap::wire::AsapMsg {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), conn.recv())
            .await
            .expect("answered in time")
            .expect("answer");
        if !matches!(m, asap::wire::AsapMsg::EndpointKeepAlive { .. }) {
            return m;
        }
    }
}
