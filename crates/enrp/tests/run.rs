//! `enrp::run`: the registrar as `enrpd run` starts it, in process, on a real data
//! directory (`enrpd init`'s `setup::init`), real listeners and a real SQLite store.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use enrp::config::{Listen, RunConfig, SctpMode};
use enrp::daemon::now_ms;
use enrp::{RunError, setup};
use trust::testing::{TestCa, pem};

/// An rsp-pki directory with one registrar (`registrar-a`) and an initialised data
/// directory made from it.
async fn initialised(dir: &Path) -> RunConfig {
    let ca = TestCa::new("acme.test");
    let pki = dir.join("pki");
    std::fs::create_dir(&pki).expect("pki dir");
    let write = |name: &str, text: String| std::fs::write(pki.join(name), text).expect("write");
    write("ca.pem", ca.root_pem());
    write("crl.pem", pem("X509 CRL", &ca.crl(&[])));
    let leaf = ca.leaf("registrar/a").issue();
    write("registrar-a.pem", leaf.chain_pem());
    write("registrar-a.key", leaf.key_pem());
    let data = dir.join("data");
    setup::init(&pki, None, &data, now_ms())
        .await
        .expect("init");
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    RunConfig {
        data,
        asap_listen: loopback,
        enrp_listen: Listen(None),
        admin_listen: Listen(Some(loopback)),
        sctp: SctpMode::Off,
        ..RunConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_runs_reloads_and_stops_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = initialised(dir.path()).await;
    let data = config.data.clone();
    let running = enrp::run(config).await.expect("runs");
    let asap = running.asap_addr();
    assert_ne!(asap.port(), 0);
    let admin = running.admin_addr().expect("the admin API listens");
    assert_ne!(admin.port(), 0);
    assert_eq!(running.enrp_addr(), None, "enrp_listen off");
    tokio::net::TcpStream::connect(asap)
        .await
        .expect("ASAP listens");
    running
        .reload()
        .await
        .expect("an unchanged directory reloads");

    // A certificate that does not parse: the reload is refused, the registrar serves on.
    std::fs::write(data.join("registrar.pem"), "not a certificate").expect("write");
    let err = running.reload().await.expect_err("refused");
    assert!(!err.to_string().is_empty());
    tokio::net::TcpStream::connect(asap)
        .await
        .expect("still serving");
    running.shutdown().await.expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_that_do_not_fit_start_nothing_and_name_the_cause() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = initialised(dir.path()).await;

    let missing = RunConfig {
        legacy_namespace: Some("nowhere".into()),
        legacy_asap_listen: None,
        ..config.clone()
    };
    match enrp::run(missing).await {
        Err(RunError::Config(why)) => assert!(why.contains("no such namespace"), "{why}"),
        other => panic!("expected a config error, got {:?}", other.err()),
    }

    // The admin API's port is taken: the daemon that started is stopped again (its audit
    // log flushed, the store closed), and the same directory starts afterwards.
    let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let busy = RunConfig {
        admin_listen: Listen(Some(taken.local_addr().expect("address"))),
        ..config.clone()
    };
    match enrp::run(busy).await {
        Err(e @ RunError::Admin { .. }) => {
            assert!(e.to_string().contains("admin API"), "{e}");
        }
        other => panic!("expected an admin listen error, got {:?}", other.err()),
    }
    let running = enrp::run(config.clone()).await.expect("starts afterwards");
    running.shutdown().await.expect("stops");

    let nowhere = RunConfig {
        data: dir.path().join("never-initialised"),
        ..config
    };
    match enrp::run(nowhere).await {
        Err(e @ RunError::Load { .. }) => {
            assert!(e.to_string().contains("never-initialised"), "{e}");
        }
        other => panic!("expected a load error, got {:?}", other.err()),
    }
}

/// Issue 24: the revocations made through the admin API are one type from the store to the
/// core. At start-up every stored kind (a serial of a domain's CA, an identity, a trust
/// domain) reaches the core as it was stored, in the order it was made, so that no peer can
/// bring back a revoked identity's PEs after a restart; a revoked federated domain is not
/// trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_revocations_of_every_kind_are_loaded_for_the_core_in_order() {
    use identity::Revocation;
    use identity::{Serial, SpiffeId, TrustDomain};
    use store::db::{self, Store, StoreOptions};

    let dir = tempfile::tempdir().expect("temp dir");
    let config = initialised(dir.path()).await;
    let local = TrustDomain::new("acme.test").expect("domain");
    let partner = TrustDomain::new("partner.test").expect("domain");
    let stored = [
        Revocation::Identity(SpiffeId::parse("spiffe://acme.test/pe/echo-1").expect("id")),
        Revocation::Serial {
            domain: local,
            serial: "0aff".parse::<Serial>().expect("serial"),
        },
        Revocation::TrustDomain(partner.clone()),
    ];
    {
        let store = Store::open(&config.data, &StoreOptions::default())
            .await
            .expect("store");
        let mut conn = store.acquire().await.expect("connection");
        let partner_ca = TestCa::new("partner.test");
        db::add_trust_domain(
            &mut conn,
            &partner,
            false,
            &partner_ca.root_pem(),
            None,
            now_ms(),
        )
        .await
        .expect("federated domain");
        for (i, r) in stored.iter().enumerate() {
            db::add_revocation(&mut conn, r, Some("test"), now_ms() + i as u64)
                .await
                .expect("revoked");
        }
        // The same thing twice is refused and changes nothing.
        assert!(matches!(
            db::add_revocation(&mut conn, &stored[0], None, now_ms()).await,
            Err(db::Error::AlreadyExists { .. })
        ));
        // `close` waits for every connection to come back.
        drop(conn);
        store.close().await;
    }
    let loaded = setup::load(&config.data).await.expect("loads");
    assert_eq!(loaded.revocations, stored);
    assert!(!loaded.trust.is_trusted(&partner), "a revoked domain");
}
