//! Revocations take effect on a running listener: the next handshake fails and live
//! connections of the revoked identity are closed.

use identity::SpiffeId;
use trust::CloseReason;
use trust::testing::TestCa;

use crate::harness::{Server, assert_refused, connect, handshake, raw_client};

#[tokio::test]
async fn revocation_fails_next_handshake_without_restart() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let leaf = ca.leaf("pe/echo-1").issue();
    handshake(&server, &ca, Some(&leaf))
        .await
        .0
        .expect("accepted before");
    server
        .store
        .deny_serial(ca.domain(), leaf.serial.clone())
        .expect("deny");
    assert_refused(
        handshake(&server, &ca, Some(&leaf)).await,
        "revoked (deny-list)",
    );
    assert!(
        server
            .store
            .allow_serial(ca.domain(), &leaf.serial)
            .expect("allow")
    );
    handshake(&server, &ca, Some(&leaf))
        .await
        .0
        .expect("accepted after the denial is lifted");
    server
        .store
        .set_crls(ca.domain(), vec![ca.crl(&[&leaf.serial])])
        .expect("crl");
    assert_refused(handshake(&server, &ca, Some(&leaf)).await, "Revoked");
}

/// Opens a connection that stays up; returns a task yielding the lines the client reads.
pub(crate) async fn live_connection(
    server: &Server,
    ca: &TestCa,
    leaf: &trust::testing::TestLeaf,
) -> tokio::task::JoinHandle<Vec<String>> {
    use rustls_pki_types::ServerName;
    use tokio::io::AsyncBufReadExt;
    let config = raw_client(ca, Some(leaf));
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    server.next_outcome().await.expect("accepted");
    tokio::spawn(async move {
        let mut lines = Vec::new();
        let mut reader = tokio::io::BufReader::new(tls).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.push(line);
        }
        lines
    })
}

#[tokio::test]
async fn revocation_closes_live_connections() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let by_serial = ca.leaf("pe/echo-1").issue();
    let by_id = ca.leaf("pe/echo-2").issue();
    let by_crl = ca.leaf("pe/echo-3").issue();
    let survivor = ca.leaf("pe/echo-4").issue();
    let c1 = live_connection(&server, &ca, &by_serial).await;
    let c2 = live_connection(&server, &ca, &by_id).await;
    let c3 = live_connection(&server, &ca, &by_crl).await;
    let c4 = live_connection(&server, &ca, &survivor).await;
    assert_eq!(server.store.connections().len(), 4);

    assert_eq!(
        server
            .store
            .deny_serial(ca.domain(), by_serial.serial.clone())
            .expect("deny"),
        1
    );
    assert_eq!(
        c1.await.expect("task"),
        ["ok", &format!("closed {:?}", CloseReason::SerialRevoked)]
    );

    let id = SpiffeId::parse("spiffe://acme.test/pe/echo-2").expect("valid");
    assert_eq!(server.store.deny_identity(id).expect("deny"), 1);
    assert_eq!(
        c2.await.expect("task"),
        ["ok", &format!("closed {:?}", CloseReason::IdentityRevoked)]
    );

    let closed = server
        .store
        .set_crls(ca.domain(), vec![ca.crl(&[&by_crl.serial])])
        .expect("crl");
    assert_eq!(closed, 1);
    assert_eq!(
        c3.await.expect("task"),
        ["ok", &format!("closed {:?}", CloseReason::SerialRevoked)]
    );

    assert_eq!(server.store.connections().len(), 1);
    assert_eq!(server.store.remove_domain(ca.domain()).expect("remove"), 1);
    assert_eq!(
        c4.await.expect("task"),
        [
            "ok",
            &format!("closed {:?}", CloseReason::TrustDomainRemoved)
        ]
    );
    assert!(server.store.connections().is_empty());
    // And nothing of the removed domain gets in any more.
    let client = connect(server.addr, raw_client(&ca, Some(&survivor))).await;
    assert!(client.is_err());
    assert!(server.next_outcome().await.is_err());
}

#[tokio::test]
async fn a_revocation_between_handshake_and_registration_is_not_missed() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let store = &server.store;
    let a = ca.leaf("pe/a").issue();
    let b = ca.leaf("pe/b").issue();
    let c = ca.leaf("pe/c").issue();
    let peer = |leaf: &trust::testing::TestLeaf| {
        trust::Peer::from_certificate(&leaf.chain[0]).expect("peer")
    };
    // Each peer passed its handshake; then a revocation lands before it registers.
    store
        .deny_serial(ca.domain(), a.serial.clone())
        .expect("deny");
    let err = store.register_connection(&peer(&a)).expect_err("refused");
    assert!(err.to_string().contains("revoked (deny-list)"), "{err}");
    store
        .set_crls(ca.domain(), vec![ca.crl(&[&b.serial])])
        .expect("crl");
    let err = store.register_connection(&peer(&b)).expect_err("refused");
    assert!(err.to_string().contains("revoked (CRL)"), "{err}");
    let live = store.register_connection(&peer(&c)).expect("still trusted");
    assert_eq!(store.connections().len(), 1);
    drop(live);
    assert!(store.connections().is_empty());
}

/// Issue 17: live connections follow their chain. Revoking an intermediate (the root's
/// CRL lists it) closes every live connection under it, and only those; removing a root
/// from the bundle closes the connections under it.
#[tokio::test]
async fn revoking_an_intermediate_or_removing_a_root_closes_the_connections_under_it() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let inter = ca.intermediate();
    let under = inter.leaf("pe/under").issue();
    let direct = ca.leaf("pe/direct").issue();
    server
        .store
        .set_crls(ca.domain(), vec![ca.crl(&[]), inter.crl(&[])])
        .expect("CRLs");
    let c_under = live_connection(&server, &ca, &under).await;
    let c_direct = live_connection(&server, &ca, &direct).await;
    let closed = server
        .store
        .set_crls(
            ca.domain(),
            vec![ca.crl(&[&inter.serial()]), inter.crl(&[])],
        )
        .expect("the root's CRL lists the intermediate");
    assert_eq!(closed, 1);
    assert_eq!(
        c_under.await.expect("task"),
        ["ok", &format!("closed {:?}", CloseReason::IssuerRevoked)]
    );
    assert_eq!(server.store.connections().len(), 1, "the direct leaf stays");

    // A rotation: the bundle gets a new root and then loses the old one.
    let next = TestCa::new("acme.test");
    let mut roots = vec![ca.root().clone(), next.root().clone()];
    server
        .store
        .replace_domain(trust::DomainBundle::new(ca.domain().clone(), roots.clone()))
        .expect("both roots");
    assert_eq!(
        server.store.connections().len(),
        1,
        "adding a root closes nothing"
    );
    roots.remove(0);
    let closed = server
        .store
        .replace_domain(trust::DomainBundle::new(ca.domain().clone(), roots))
        .expect("the new root only");
    assert_eq!(closed, 1);
    assert_eq!(
        c_direct.await.expect("task"),
        ["ok", &format!("closed {:?}", CloseReason::RootRemoved)]
    );
    assert!(server.store.connections().is_empty());
}

/// Issue 17: a handshake proves a certificate valid at its time; a connection whose leaf
/// expires is closed at its notAfter (and the registrar's PEs on it then follow the
/// connection-loss path).
#[tokio::test]
async fn a_connection_closes_when_its_leaf_expires() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let short = ca
        .leaf("pe/short-lived")
        .valid(time::Duration::minutes(-1), time::Duration::seconds(2))
        .issue();
    let long = ca.leaf("pe/long-lived").issue();
    let c_short = live_connection(&server, &ca, &short).await;
    let c_long = live_connection(&server, &ca, &long).await;
    let lines = tokio::time::timeout(std::time::Duration::from_secs(30), c_short)
        .await
        .expect("closed within its validity and a margin")
        .expect("task");
    assert_eq!(
        lines,
        [
            "ok",
            &format!("closed {:?}", CloseReason::CertificateExpired)
        ]
    );
    assert!(!c_long.is_finished(), "a valid leaf's connection stays");
    assert_eq!(server.store.connections().len(), 1);
    c_long.abort();
}
