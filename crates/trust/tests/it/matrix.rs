//! The handshake matrix of issue 3: each case ends as expected, with the reason visible.

use identity::{SpiffeId, TrustDomain};
use time::Duration;
use trust::testing::{KeyAlg, TestCa};

use crate::harness::{Server, assert_refused, handshake};

#[tokio::test]
async fn valid_client_is_accepted_with_its_identity() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let leaf = ca.leaf("pe/echo-1").issue();
    let (seen, client) = handshake(&server, &ca, Some(&leaf)).await;
    let peer = seen.expect("accepted");
    assert_eq!(peer.id().as_str(), "spiffe://acme.test/pe/echo-1");
    assert_eq!(
        peer.trust_domain(),
        TrustDomain::new("acme.test").expect("valid")
    );
    assert_eq!(peer.serial(), &leaf.serial);
    assert!(peer.not_before() < peer.not_after());
    assert_eq!(client.expect("client ok"), "ok");
}

#[tokio::test]
async fn ed25519_and_intermediates_are_accepted() {
    let ca = TestCa::with_alg("acme.test", KeyAlg::Ed25519);
    let server = Server::start(&ca).await;
    let inter = ca.intermediate();
    let leaf = inter.leaf("pu/client-1").issue();
    assert_eq!(leaf.chain.len(), 2);
    let (seen, client) = handshake(&server, &ca, Some(&leaf)).await;
    assert_eq!(
        seen.expect("accepted").id().as_str(),
        "spiffe://acme.test/pu/client-1"
    );
    assert_eq!(client.expect("client ok"), "ok");
}

#[tokio::test]
async fn revoked_by_crl() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let leaf = ca.leaf("pe/echo-1").issue();
    let other = ca.leaf("pe/echo-2").issue();
    server
        .store
        .set_crls(ca.domain(), vec![ca.crl(&[&leaf.serial])])
        .expect("set CRL");
    assert_refused(handshake(&server, &ca, Some(&leaf)).await, "Revoked");
    // A certificate the CRL does not list still passes.
    handshake(&server, &ca, Some(&other))
        .await
        .0
        .expect("not revoked");
}

#[tokio::test]
async fn revoked_by_crl_of_an_intermediate() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let inter = ca.intermediate();
    let leaf = inter.leaf("pe/echo-1").issue();
    let other = inter.leaf("pe/echo-2").issue();
    // The whole chain is checked: the root's CRL covers the intermediate.
    server
        .store
        .set_crls(ca.domain(), vec![ca.crl(&[]), inter.crl(&[&leaf.serial])])
        .expect("set CRLs");
    assert_refused(handshake(&server, &ca, Some(&leaf)).await, "Revoked");
    handshake(&server, &ca, Some(&other))
        .await
        .0
        .expect("not revoked");
    // Revoking the intermediate refuses its leaves.
    server
        .store
        .set_crls(
            ca.domain(),
            vec![ca.crl(&[&inter.serial()]), inter.crl(&[])],
        )
        .expect("set CRLs");
    assert_refused(handshake(&server, &ca, Some(&other)).await, "Revoked");
}

#[tokio::test]
async fn expired_crl_refuses() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let leaf = ca.leaf("pe/echo-1").issue();
    #[allow(clippy::disallowed_methods)]
    let past = time::OffsetDateTime::now_utc() - Duration::hours(1);
    server
        .store
        .set_crls(ca.domain(), vec![ca.crl_with_next_update(&[], past)])
        .expect("set CRL");
    assert_refused(
        handshake(&server, &ca, Some(&leaf)).await,
        "certificate revocation list expired",
    );
}

#[tokio::test]
async fn revoked_by_deny_list_serial_and_identity() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let a = ca.leaf("pe/echo-1").issue();
    let b = ca.leaf("pe/echo-2").issue();
    server
        .store
        .deny_serial(ca.domain(), a.serial.clone())
        .expect("deny serial");
    assert_refused(
        handshake(&server, &ca, Some(&a)).await,
        "revoked (deny-list)",
    );
    let id = SpiffeId::parse("spiffe://acme.test/pe/echo-2").expect("valid");
    server.store.deny_identity(id).expect("deny id");
    assert_refused(
        handshake(&server, &ca, Some(&b)).await,
        "identity spiffe://acme.test/pe/echo-2 is revoked",
    );
    // A fresh certificate for the denied identity is refused too.
    let b2 = ca.leaf("pe/echo-2").issue();
    assert_refused(
        handshake(&server, &ca, Some(&b2)).await,
        "is revoked (deny-list)",
    );
    // Lifting the denial lets it in again.
    let id = SpiffeId::parse("spiffe://acme.test/pe/echo-2").expect("valid");
    assert!(server.store.allow_identity(&id).expect("allow"));
    handshake(&server, &ca, Some(&b2))
        .await
        .0
        .expect("allowed again");
}

#[tokio::test]
async fn expired_and_not_yet_valid() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let expired = ca.leaf("pe/old").expired().issue();
    assert_refused(
        handshake(&server, &ca, Some(&expired)).await,
        "certificate expired",
    );
    let early = ca.leaf("pe/new").not_yet_valid().issue();
    assert_refused(
        handshake(&server, &ca, Some(&early)).await,
        "certificate not valid",
    );
}

#[tokio::test]
async fn wrong_trust_domain() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    // An untrusted CA issuing identities of acme.test.
    let rogue = TestCa::new("rogue.test");
    let leaf = rogue
        .leaf("pe/x")
        .uris(&["spiffe://acme.test/pe/x"])
        .issue();
    assert_refused(handshake(&server, &ca, Some(&leaf)).await, "UnknownIssuer");
    // A trusted, federated CA issuing identities of acme.test: a domain mismatch.
    let partner = TestCa::new("partner.test");
    server.store.add_domain(partner.bundle()).expect("federate");
    let leaf = partner
        .leaf("pe/x")
        .uris(&["spiffe://acme.test/pe/x"])
        .issue();
    assert_refused(
        handshake(&server, &ca, Some(&leaf)).await,
        "claims trust domain acme.test but its chain verifies to the root of partner.test",
    );
    // And an acme.test CA issuing identities of the federated domain.
    let leaf = ca
        .leaf("pe/x")
        .uris(&["spiffe://partner.test/pe/x"])
        .issue();
    assert_refused(
        handshake(&server, &ca, Some(&leaf)).await,
        "verifies to the root of acme.test",
    );
}

#[tokio::test]
async fn federated_domain_refused_before_bundle_and_accepted_after() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let partner = TestCa::new("partner.test");
    let leaf = partner.leaf("pu/client-9").issue();
    assert_refused(
        handshake(&server, &ca, Some(&leaf)).await,
        "trust domain partner.test of spiffe://partner.test/pu/client-9 is not trusted",
    );
    server.store.add_domain(partner.bundle()).expect("federate");
    let (seen, _) = handshake(&server, &ca, Some(&leaf)).await;
    assert_eq!(
        seen.expect("accepted").id().as_str(),
        "spiffe://partner.test/pu/client-9"
    );
    // And removed again.
    server
        .store
        .remove_domain(partner.domain())
        .expect("defederate");
    assert_refused(handshake(&server, &ca, Some(&leaf)).await, "is not trusted");
}

#[tokio::test]
async fn no_client_certificate() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    assert_refused(
        handshake(&server, &ca, None).await,
        "peer sent no certificates",
    );
}

#[tokio::test]
async fn uri_san_rules() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let two = ca
        .leaf("pe/a")
        .uris(&["spiffe://acme.test/pe/a", "spiffe://acme.test/pe/b"])
        .issue();
    assert_refused(
        handshake(&server, &ca, Some(&two)).await,
        "certificate has 2 URI SANs",
    );
    let none = ca.leaf("pe/a").uris(&[]).dns("pe-a.acme.test").issue();
    assert_refused(
        handshake(&server, &ca, Some(&none)).await,
        "certificate has no URI SAN",
    );
    let https = ca.leaf("pe/a").uris(&["https://acme.test/pe/a"]).issue();
    assert_refused(
        handshake(&server, &ca, Some(&https)).await,
        "URI SAN \"https://acme.test/pe/a\" is not a SPIFFE ID",
    );
    let bad = ca
        .leaf("pe/a")
        .uris(&["spiffe://acme.test/pe/../admin"])
        .issue();
    assert_refused(
        handshake(&server, &ca, Some(&bad)).await,
        "path has a . or .. segment",
    );
    let domain_only = ca.leaf("pe/a").uris(&["spiffe://acme.test"]).issue();
    assert_refused(
        handshake(&server, &ca, Some(&domain_only)).await,
        "a leaf's SPIFFE ID must have a path",
    );
}

#[tokio::test]
async fn wrong_eku() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let leaf = ca.leaf("pe/a").server_only().issue();
    assert_refused(
        handshake(&server, &ca, Some(&leaf)).await,
        "client authentication",
    );
}

#[tokio::test]
async fn self_signed_leaf() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let leaf = ca.leaf("pe/a").self_signed().issue();
    assert_refused(handshake(&server, &ca, Some(&leaf)).await, "UnknownIssuer");
}

#[tokio::test]
async fn pem_round_trip_of_test_material() {
    let ca = TestCa::new("acme.test");
    let bundle =
        trust::DomainBundle::from_pem(ca.domain().clone(), ca.root_pem().as_bytes()).expect("pem");
    assert_eq!(bundle.roots(), std::slice::from_ref(ca.root()));
    let inter = ca.intermediate();
    let leaf = inter.leaf("pe/echo-1").issue();
    let identity =
        trust::LocalIdentity::from_pem(leaf.chain_pem().as_bytes(), leaf.key_pem().as_bytes())
            .expect("identity from pem");
    assert_eq!(identity.id().as_str(), "spiffe://acme.test/pe/echo-1");
    assert_eq!(
        trust::certs_from_pem(leaf.chain_pem().as_bytes()).expect("chain"),
        leaf.chain
    );
    assert!(trust::LocalIdentity::from_pem(b"", leaf.key_pem().as_bytes()).is_err());
}

/// Spec §11.1, threats T-6/T-7: a PE certificate of the trust domain, listening where a
/// client expects its registrar, fails the handshake with every client (PE, PU, gateway
/// over ASAP, a registrar dialling a peer over ENRP), and the error names it.
#[tokio::test]
async fn a_pe_certificate_posing_as_registrar_is_refused_by_every_client() {
    use identity::IdentityPattern;
    use trust::Protocol;

    use crate::harness::{dial, serve, store_of};
    let ca = TestCa::new("acme.test");
    let impostor = store_of(&ca, "pe/echo-1");
    let genuine = store_of(&ca, "registrar/enrp-1");
    for protocol in [Protocol::Asap, Protocol::Enrp] {
        let fake = serve(impostor.clone(), protocol).await;
        let real = serve(genuine.clone(), protocol).await;
        for client in [
            "pe/echo-2",
            "pu/client-1",
            "gateway/gw-1",
            "registrar/enrp-2",
        ] {
            let store = store_of(&ca, client);
            let err = dial(fake, store.client_config(protocol))
                .await
                .expect_err("a PE is no registrar");
            assert!(
                err.contains(
                    "server identity spiffe://acme.test/pe/echo-1 does not match the expected \
                     registrar identity spiffe://<trusted domain>/registrar/*"
                ),
                "{client} {protocol:?}: {err}"
            );
            let peer = dial(real, store.client_config(protocol))
                .await
                .expect("the registrar is accepted");
            assert_eq!(peer.id().as_str(), "spiffe://acme.test/registrar/enrp-1");
        }
    }
    // Pinned to one registrar: another registrar of the domain is refused too, and
    // clearing the pin restores the default.
    let fake = serve(impostor, Protocol::Asap).await;
    let real = serve(genuine, Protocol::Asap).await;
    let other = serve(store_of(&ca, "registrar/enrp-9"), Protocol::Asap).await;
    let pu = store_of(&ca, "pu/client-1");
    pu.set_registrar_ids(vec![
        IdentityPattern::parse("spiffe://acme.test/registrar/enrp-1").expect("pattern"),
    ])
    .expect("pin");
    dial(real, pu.client_config(Protocol::Asap))
        .await
        .expect("the pinned registrar");
    let err = dial(other, pu.client_config(Protocol::Asap))
        .await
        .expect_err("not the pinned registrar");
    assert!(
        err.contains("spiffe://acme.test/registrar/enrp-9 does not match the expected registrar identity spiffe://acme.test/registrar/enrp-1"),
        "{err}"
    );
    assert!(dial(fake, pu.client_config(Protocol::Asap)).await.is_err());
    pu.set_registrar_ids(Vec::new()).expect("default");
    dial(other, pu.client_config(Protocol::Asap))
        .await
        .expect("any registrar of the domain again");
    assert!(pu.is_registrar(&SpiffeId::parse("spiffe://acme.test/registrar/enrp-9").expect("id")));
}

/// Serials are unique per CA only (RFC 5280 §4.1.2.2): a federated domain revoking its
/// serial S (deny-list or CRL) refuses its own certificate S and leaves the local
/// certificate with the same serial, and its live connection, alone.
#[tokio::test]
async fn a_federated_serial_equal_to_a_local_one_revokes_only_the_federated_certificate() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let partner = TestCa::new("partner.test");
    server.store.add_domain(partner.bundle()).expect("federate");
    let local = ca.leaf("pe/echo-1").issue();
    // The server's own leaf took the local CA's first serial.
    let _ = partner.leaf("registrar/p1").issue();
    let federated = partner.leaf("pe/echo-1").issue();
    assert_eq!(
        local.serial, federated.serial,
        "the same serial from two CAs"
    );
    let live = crate::revocation::live_connection(&server, &ca, &local).await;
    assert_eq!(
        server
            .store
            .deny_serial(partner.domain(), federated.serial.clone())
            .expect("deny"),
        0,
        "no local connection closed"
    );
    assert_refused(
        handshake(&server, &ca, Some(&federated)).await,
        &format!(
            "certificate serial {} of trust domain partner.test is revoked (deny-list)",
            federated.serial
        ),
    );
    handshake(&server, &ca, Some(&local))
        .await
        .0
        .expect("the local certificate is not revoked");
    assert!(
        server
            .store
            .allow_serial(partner.domain(), &federated.serial)
            .expect("allow")
    );
    assert_eq!(
        server
            .store
            .set_crls(partner.domain(), vec![partner.crl(&[&federated.serial])])
            .expect("partner CRL"),
        0
    );
    assert_refused(handshake(&server, &ca, Some(&federated)).await, "Revoked");
    handshake(&server, &ca, Some(&local))
        .await
        .0
        .expect("still not revoked");
    // A revocation unregisters what it closes at once: the local one is still there.
    let local_id = SpiffeId::parse("spiffe://acme.test/pe/echo-1").expect("id");
    assert!(
        server
            .store
            .connections()
            .snapshot()
            .contains(&(local_id, local.serial.clone())),
        "the live local connection stays up"
    );
    live.abort();
}

/// Revocation in both directions between a PU and a PE that load their domain's CRL (as
/// `rsp pe`/`rsp pu` do): returns a PE store, a PU store and the PU's config to the PE.
fn pu_and_pe(
    ca: &TestCa,
    revoked: &[&identity::Serial],
    pe: &trust::testing::TestLeaf,
    pu: &trust::testing::TestLeaf,
) -> (
    std::sync::Arc<trust::TrustStore>,
    std::sync::Arc<rustls::ClientConfig>,
) {
    use identity::IdentityPattern;
    use trust::{Protocol, TrustStore};
    let with_crl = |leaf: &trust::testing::TestLeaf| {
        let store = TrustStore::new(leaf.identity()).expect("store");
        store
            .add_domain(ca.bundle().with_crls(vec![ca.crl(revoked)]))
            .expect("domain with its CRL");
        std::sync::Arc::new(store)
    };
    let pe_id = SpiffeId::parse("spiffe://acme.test/pe/echo-1").expect("id");
    let to_pe = with_crl(pu)
        .client_config_expecting(Protocol::Asap, IdentityPattern::exact(&pe_id))
        .expect("config");
    (with_crl(pe), to_pe)
}

#[tokio::test]
async fn a_revoked_pu_is_refused_by_a_pe() {
    use crate::harness::{dial, serve};
    let ca = TestCa::new("acme.test");
    let pe = ca.leaf("pe/echo-1").issue();
    let pu = ca.leaf("pu/client-1").issue();
    let other = ca.leaf("pu/client-2").issue();
    let (pe_store, to_pe) = pu_and_pe(&ca, &[&pu.serial], &pe, &pu);
    let addr = serve(pe_store, trust::Protocol::Asap).await;
    let err = dial(addr, to_pe).await.expect_err("revoked PU");
    assert!(err.contains("CertificateRevoked"), "{err}");
    let (_, to_pe) = pu_and_pe(&ca, &[&pu.serial], &pe, &other);
    dial(addr, to_pe).await.expect("another PU is served");
}

#[tokio::test]
async fn a_revoked_pe_is_refused_by_a_pu() {
    use crate::harness::{dial, serve};
    let ca = TestCa::new("acme.test");
    let pe = ca.leaf("pe/echo-1").issue();
    let pu = ca.leaf("pu/client-1").issue();
    let (pe_store, to_pe) = pu_and_pe(&ca, &[&pe.serial], &pe, &pu);
    let addr = serve(pe_store, trust::Protocol::Asap).await;
    let err = dial(addr, to_pe).await.expect_err("revoked PE");
    assert!(err.contains("invalid peer certificate: Revoked"), "{err}");
    // Without the CRL, the same PU would have been served by it.
    let (pe_store, to_pe) = pu_and_pe(&ca, &[], &pe, &pu);
    let addr = serve(pe_store, trust::Protocol::Asap).await;
    dial(addr, to_pe).await.expect("not revoked");
}
