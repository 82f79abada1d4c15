//! CRLs are verified once (roots' at load, intermediates' on first use) and consulted per
//! handshake for the whole chain: the checks are webpki's, only their cost moved.

use time::Duration;
use trust::testing::TestCa;
use trust::{DomainBundle, Error};

use crate::harness::{Server, assert_refused, handshake};

#[allow(clippy::disallowed_methods)] // tests read the clock
fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

#[tokio::test]
async fn revoked_leaf_refused_on_every_handshake_others_accepted() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let inter = ca.intermediate();
    let direct = ca.leaf("pe/direct").issue();
    let revoked_direct = ca.leaf("pe/revoked-direct").issue();
    let under = inter.leaf("pe/under").issue();
    let revoked_under = inter.leaf("pe/revoked-under").issue();
    server
        .store
        .set_crls(
            ca.domain(),
            vec![
                ca.crl(&[&revoked_direct.serial]),
                inter.crl(&[&revoked_under.serial]),
            ],
        )
        .expect("CRLs");
    // Twice each: the second round runs on the verdicts remembered from the first.
    for _ in 0..2 {
        handshake(&server, &ca, Some(&direct))
            .await
            .0
            .expect("direct leaf accepted");
        handshake(&server, &ca, Some(&under))
            .await
            .0
            .expect("leaf under the intermediate accepted");
        assert_refused(
            handshake(&server, &ca, Some(&revoked_direct)).await,
            "Revoked",
        );
        assert_refused(
            handshake(&server, &ca, Some(&revoked_under)).await,
            "Revoked",
        );
    }
}

#[tokio::test]
async fn leaf_under_revoked_intermediate_refused() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let inter = ca.intermediate();
    let leaf = inter.leaf("pe/echo-1").issue();
    server
        .store
        .set_crls(ca.domain(), vec![ca.crl(&[]), inter.crl(&[])])
        .expect("CRLs");
    handshake(&server, &ca, Some(&leaf))
        .await
        .0
        .expect("accepted while the intermediate is good");
    // The intermediate itself revoked by the root's CRL: its leaves are refused even
    // though its own CRL lists none of them.
    server
        .store
        .set_crls(
            ca.domain(),
            vec![ca.crl(&[&inter.serial()]), inter.crl(&[])],
        )
        .expect("CRLs");
    assert_refused(handshake(&server, &ca, Some(&leaf)).await, "Revoked");
    assert_refused(handshake(&server, &ca, Some(&leaf)).await, "Revoked");
    // An intermediate whose own CRL is missing: its leaves' status is unknown, refused.
    server
        .store
        .set_crls(ca.domain(), vec![ca.crl(&[])])
        .expect("CRL");
    assert_refused(
        handshake(&server, &ca, Some(&leaf)).await,
        "UnknownRevocationStatus",
    );
}

#[tokio::test]
async fn root_crl_with_bad_signature_rejected_at_load_store_unchanged() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let revoked = ca.leaf("pe/revoked").issue();
    let good = ca.leaf("pe/good").issue();
    server
        .store
        .set_crls(ca.domain(), vec![ca.crl(&[&revoked.serial])])
        .expect("CRL");
    // Same root name, another key: a forged CRL that would lift the revocation.
    let impostor = TestCa::new("acme.test");
    let forged = impostor.crl(&[]);
    let err = server
        .store
        .set_crls(ca.domain(), vec![forged.clone()])
        .expect_err("forged CRL refused");
    assert!(matches!(err, Error::CrlSignature { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("CRL of trust domain acme.test") && message.contains("signature"),
        "{message}"
    );
    // The store kept the previous CRL.
    assert_refused(handshake(&server, &ca, Some(&revoked)).await, "Revoked");
    handshake(&server, &ca, Some(&good))
        .await
        .0
        .expect("still accepted");
    // Along with a good CRL, still refused; and through the other ways in.
    let err = server
        .store
        .set_crls(ca.domain(), vec![ca.crl(&[]), forged.clone()])
        .expect_err("refused");
    assert!(matches!(err, Error::CrlSignature { .. }), "{err:?}");
    let bundle = ca.bundle().with_crls(vec![forged.clone()]);
    assert!(matches!(bundle.validate(), Err(Error::CrlSignature { .. })));
    assert!(matches!(
        server.store.replace_domain(bundle),
        Err(Error::CrlSignature { .. })
    ));
    let partner = TestCa::new("partner.test");
    let partner_forged = TestCa::new("partner.test").crl(&[]);
    assert!(matches!(
        server
            .store
            .add_domain(partner.bundle().with_crls(vec![partner_forged])),
        Err(Error::CrlSignature { .. })
    ));
    assert!(!server.store.is_trusted(partner.domain()));
    assert_refused(handshake(&server, &ca, Some(&revoked)).await, "Revoked");
    // A CRL of a root of another domain names no root here: like an intermediate's CRL,
    // accepted, and it refuses nothing it is not authoritative for.
    DomainBundle::new(ca.domain().clone(), vec![ca.root().clone()])
        .with_crls(vec![ca.crl(&[])])
        .validate()
        .expect("a good CRL validates");
}

#[tokio::test]
async fn intermediate_crl_with_bad_signature_refuses_its_leaves() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let inter = ca.intermediate();
    // Same intermediate name, another key: the store cannot tell at load (it only sees
    // intermediates in handshakes), the first handshake through `inter` does.
    let impostor = ca.intermediate();
    let leaf = inter.leaf("pe/echo-1").issue();
    let direct = ca.leaf("pe/direct").issue();
    server
        .store
        .set_crls(ca.domain(), vec![ca.crl(&[]), impostor.crl(&[])])
        .expect("accepted at load");
    for _ in 0..2 {
        assert_refused(handshake(&server, &ca, Some(&leaf)).await, "BadSignature");
    }
    handshake(&server, &ca, Some(&direct))
        .await
        .0
        .expect("the root's CRL is good");
}

#[tokio::test]
async fn expired_crl_refuses_what_it_covers() {
    let ca = TestCa::new("acme.test");
    let server = Server::start(&ca).await;
    let inter = ca.intermediate();
    let leaf = inter.leaf("pe/echo-1").issue();
    let direct = ca.leaf("pe/direct").issue();
    // Accepted at load (a store keeps no older CRL to fall back on); handshakes that need
    // it are refused until a current one is loaded.
    let past = now() - Duration::hours(1);
    server
        .store
        .set_crls(
            ca.domain(),
            vec![ca.crl(&[]), inter.crl_with_next_update(&[], past)],
        )
        .expect("expired CRL accepted at load");
    for _ in 0..2 {
        assert_refused(
            handshake(&server, &ca, Some(&leaf)).await,
            "certificate revocation list expired",
        );
    }
    handshake(&server, &ca, Some(&direct))
        .await
        .0
        .expect("the root's CRL is current");
    server
        .store
        .set_crls(ca.domain(), vec![ca.crl(&[]), inter.crl(&[])])
        .expect("current CRLs");
    handshake(&server, &ca, Some(&leaf))
        .await
        .0
        .expect("accepted with a current CRL");
    // And an expired root CRL refuses the intermediate, so everything under it.
    server
        .store
        .set_crls(
            ca.domain(),
            vec![ca.crl_with_next_update(&[], past), inter.crl(&[])],
        )
        .expect("expired CRL accepted at load");
    assert_refused(
        handshake(&server, &ca, Some(&leaf)).await,
        "certificate revocation list expired",
    );
    assert_refused(
        handshake(&server, &ca, Some(&direct)).await,
        "certificate revocation list expired",
    );
}
