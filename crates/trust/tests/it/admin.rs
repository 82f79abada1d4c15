//! The admin listener's configuration: client certificates optional, verified like the
//! ASAP listener's when presented; ALPN `h2` and `http/1.1`.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use trust::testing::{TestCa, TestLeaf};
use trust::{Peer, TrustStore};

/// What the admin server saw: the peer's identity if it presented a certificate.
type Seen = Result<Option<Peer>, String>;

async fn admin_server(store: Arc<TrustStore>) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = tokio_rustls::TlsAcceptor::from(store.admin_server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                let seen = match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let peer = Peer::from_tls_optional(tls.get_ref().1);
                        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
                        let _ = tls.write_all(b"ok").await;
                        let _ = tls.shutdown().await;
                        peer.map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(seen);
            });
        }
    });
    (addr, rx)
}

/// A curl-like client: trusts the CA root, checks the name `localhost`, offers
/// `http/1.1`, and presents `leaf` or nothing.
fn client(ca: &TestCa, leaf: Option<&TestLeaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.root().clone()).expect("root");
    let builder = ClientConfig::builder_with_provider(trust::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots);
    let mut config = match leaf {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain.clone(), leaf.key_der())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
) -> (Seen, Result<(), String>) {
    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        if reply == b"ok" {
            Ok(())
        } else {
            Err(format!("reply {reply:?}"))
        }
    };
    let timeout = std::time::Duration::from_secs(10);
    let client = tokio::time::timeout(timeout, client)
        .await
        .expect("client in time");
    let seen = tokio::time::timeout(timeout, seen.recv())
        .await
        .expect("server in time")
        .expect("server running");
    (seen, client)
}

#[tokio::test]
async fn admin_listener_takes_optional_client_certificates() {
    let ca = TestCa::new("acme.test");
    let store = Arc::new(
        TrustStore::new(ca.leaf("registrar/r1").dns("localhost").issue().identity())
            .expect("store"),
    );
    store.add_domain(ca.bundle()).expect("domain");
    let (addr, mut seen) = admin_server(store.clone()).await;

    // No certificate (curl with a bearer token): the handshake succeeds, no peer.
    let (server, client_result) = connect(addr, client(&ca, None), &mut seen).await;
    assert_eq!(server.expect("accepted"), None);
    client_result.expect("client ok");

    // A valid certificate: its identity is available.
    let admin = ca.leaf("admin/alice").issue();
    let (server, client_result) = connect(addr, client(&ca, Some(&admin)), &mut seen).await;
    let peer = server.expect("accepted").expect("a peer");
    assert_eq!(peer.id().as_str(), "spiffe://acme.test/admin/alice");
    assert_eq!(peer.serial(), &admin.serial);
    client_result.expect("client ok");

    // A certificate of an untrusted CA is refused, not ignored.
    let rogue = TestCa::new("rogue.test");
    let stranger = rogue
        .leaf("admin/mallory")
        .uris(&["spiffe://acme.test/admin/mallory"])
        .issue();
    let (server, client_result) = connect(addr, client(&ca, Some(&stranger)), &mut seen).await;
    let err = server.expect_err("refused");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(client_result.is_err());

    // Revocations apply here too: by CRL, by serial, by identity.
    store
        .set_crls(ca.domain(), vec![ca.crl(&[&admin.serial])])
        .expect("crl");
    let (server, client_result) = connect(addr, client(&ca, Some(&admin)), &mut seen).await;
    let err = server.expect_err("refused");
    assert!(err.contains("Revoked"), "{err}");
    assert!(client_result.is_err());
    let bob = ca.leaf("admin/bob").issue();
    store
        .deny_serial(ca.domain(), bob.serial.clone())
        .expect("deny");
    let (server, _) = connect(addr, client(&ca, Some(&bob)), &mut seen).await;
    let err = server.expect_err("refused");
    assert!(err.contains("revoked (deny-list)"), "{err}");
    let carol = ca.leaf("admin/carol").issue();
    store
        .deny_identity(identity::SpiffeId::parse("spiffe://acme.test/admin/carol").expect("id"))
        .expect("deny");
    let (server, _) = connect(addr, client(&ca, Some(&carol)), &mut seen).await;
    let err = server.expect_err("refused");
    assert!(err.contains("is revoked (deny-list)"), "{err}");

    // And still no certificate at all is fine.
    let (server, client_result) = connect(addr, client(&ca, None), &mut seen).await;
    assert_eq!(server.expect("accepted"), None);
    client_result.expect("client ok");
}

#[tokio::test]
async fn admin_configuration_follows_the_store() {
    let ca = TestCa::new("acme.test");
    let store = TrustStore::new(ca.leaf("registrar/r1").issue().identity()).expect("store");
    store.add_domain(ca.bundle()).expect("domain");
    let admin = store.admin_server_config();
    assert_eq!(admin.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    // A change to the store rebuilds the admin configuration too.
    store
        .deny_serial(ca.domain(), identity::Serial::from_bytes(&[1]))
        .expect("deny");
    assert!(!Arc::ptr_eq(&admin, &store.admin_server_config()));
}
