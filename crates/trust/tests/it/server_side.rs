//! The client side's checks of the server: the store's client configuration verifies the
//! server's chain, SPIFFE ID and EKU, and optionally which identity it must be.

use std::sync::Arc;

use identity::IdentityPattern;
use trust::testing::TestCa;
use trust::{Peer, Protocol, TrustStore};

use crate::harness::Server;

async fn dial(server: &Server, config: Arc<rustls::ClientConfig>) -> Result<Peer, String> {
    crate::harness::dial(server.addr, config).await
}

fn client_store(ca: &TestCa) -> TrustStore {
    let store = TrustStore::new(ca.leaf("pu/client-1").issue().identity()).expect("store");
    store.add_domain(ca.bundle()).expect("domain");
    store
}

#[tokio::test]
async fn store_client_verifies_server_identity() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let client = client_store(&ca);
    let peer = dial(&server, client.client_config(Protocol::Asap))
        .await
        .expect("connected");
    assert_eq!(peer.id().as_str(), "spiffe://acme.test/registrar/r1");
    // The server saw the client's identity too.
    let seen = server.next_outcome().await.expect("accepted");
    assert_eq!(seen.id().as_str(), "spiffe://acme.test/pu/client-1");

    let expecting = |p: &str| {
        client
            .client_config_expecting(Protocol::Asap, IdentityPattern::parse(p).expect("pattern"))
            .expect("config")
    };
    dial(&server, expecting("spiffe://acme.test/registrar/*"))
        .await
        .expect("expected registrar");
    server.next_outcome().await.expect("accepted");
    let err = dial(&server, expecting("spiffe://acme.test/pe/*"))
        .await
        .expect_err("refused");
    assert!(
        err.contains("does not match the expected spiffe://acme.test/pe/*"),
        "{err}"
    );
}

#[tokio::test]
async fn server_without_server_auth_eku_is_refused() {
    let ca = TestCa::new("acme.test");
    let leaf = ca.leaf("pu/not-a-server").client_only().issue();
    let store = Arc::new(TrustStore::new(leaf.identity()).expect("store"));
    store.add_domain(ca.bundle()).expect("domain");
    let server = Server::start_with(store).await;
    let client = client_store(&ca);
    let err = dial(&server, client.client_config(Protocol::Asap))
        .await
        .expect_err("refused");
    assert!(err.contains("server authentication"), "{err}");
}

#[tokio::test]
async fn server_of_untrusted_domain_is_refused() {
    let ca = TestCa::new("acme.test");
    let other = TestCa::new("other.test");
    let server = Server::start(&other).await;
    let client = client_store(&ca);
    let err = dial(&server, client.client_config(Protocol::Asap))
        .await
        .expect_err("refused");
    assert!(err.contains("trust domain other.test"), "{err}");
}

#[tokio::test]
async fn alpn_is_checked() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    // A client offering the other protocol's ALPN fails the handshake (no overlap).
    let client = client_store(&ca);
    let err = dial(&server, client.client_config(Protocol::Enrp))
        .await
        .expect_err("refused");
    assert!(err.contains("NoApplicationProtocol"), "{err}");
    let seen = server.next_outcome().await.expect_err("refused");
    assert!(
        seen.contains("doesn't support any known protocol"),
        "{seen}"
    );
    // A client offering no ALPN completes the handshake, and check_alpn refuses it.
    let leaf = ca.leaf("pu/no-alpn").issue();
    let mut config = (*crate::harness::raw_client(&ca, Some(&leaf))).clone();
    config.alpn_protocols.clear();
    let client = crate::harness::connect(server.addr, Arc::new(config)).await;
    assert!(client.is_err(), "{client:?}");
    let seen = server.next_outcome().await.expect_err("refused");
    assert!(
        seen.contains("ALPN: expected rserpool-asap/1, the session negotiated none"),
        "{seen}"
    );
}

/// A renewed certificate (same SPIFFE ID) is presented from the next handshake on; another
/// identity or an expired certificate is refused and the old one stays in use.
#[tokio::test]
#[allow(clippy::disallowed_methods)] // a test of real certificates reads the real clock
async fn set_identity_renews_the_certificate_for_new_handshakes() {
    let ca = TestCa::new("acme.test");
    let first = ca.leaf("registrar/r1").issue();
    let store = Arc::new(TrustStore::new(first.identity()).expect("store"));
    store.add_domain(ca.bundle()).expect("add local domain");
    let server = Server::start_with(store.clone()).await;
    let client = client_store(&ca);
    let dial_serial = || async {
        let peer = dial(&server, client.client_config(Protocol::Asap))
            .await
            .expect("connected");
        server.next_outcome().await.expect("accepted");
        peer.serial().clone()
    };
    assert_eq!(dial_serial().await, *first.identity().as_peer().serial());

    let other = ca.leaf("registrar/r2").issue();
    let err = store
        .set_identity(other.identity(), std::time::SystemTime::now())
        .expect_err("another ID");
    assert!(err.to_string().contains("registrar/r2"), "{err}");
    let expired = ca.leaf("registrar/r1").expired().issue();
    store
        .set_identity(expired.identity(), std::time::SystemTime::now())
        .expect_err("expired");
    assert_eq!(dial_serial().await, *first.identity().as_peer().serial());

    let renewed = ca.leaf("registrar/r1").issue();
    store
        .set_identity(renewed.identity(), std::time::SystemTime::now())
        .expect("renewed");
    assert_ne!(
        renewed.identity().as_peer().serial(),
        first.identity().as_peer().serial()
    );
    assert_eq!(dial_serial().await, *renewed.identity().as_peer().serial());
    assert_eq!(
        store.identity().as_peer().serial(),
        renewed.identity().as_peer().serial()
    );
}
