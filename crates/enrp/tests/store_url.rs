//! `enrpd init --store URL [--join]`, `enrpd migrate` and the store an installation
//! records (issue 19): on SQLite files and, with `RSP_TEST_POSTGRES`, on a fresh
//! PostgreSQL database per test.

use std::path::{Path, PathBuf};

use enrp::daemon::now_ms;
use enrp::setup::{self, Error, InitOptions};
use trust::testing::{TestCa, pem};

/// An rsp-pki directory `dir/NAME` of the trust domain `domain` with the registrars
/// `names`.
fn pki(dir: &Path, name: &str, domain: &str, names: &[&str]) -> PathBuf {
    let ca = TestCa::new(domain);
    let pki = dir.join(name);
    std::fs::create_dir(&pki).expect("pki dir");
    let write = |f: &str, text: String| std::fs::write(pki.join(f), text).expect("write");
    write("ca.pem", ca.root_pem());
    write("crl.pem", pem("X509 CRL", &ca.crl(&[])));
    for n in names {
        let leaf = ca.leaf(&format!("registrar/{n}")).issue();
        write(&format!("registrar-{n}.pem"), leaf.chain_pem());
        write(&format!("registrar-{n}.key"), leaf.key_pem());
    }
    pki
}

fn options(name: &str, store: &str, join: bool) -> InitOptions {
    InitOptions {
        name: Some(name.into()),
        store: Some(store.into()),
        join,
        ..InitOptions::default()
    }
}

/// The fleet's life on the store `url`: registrar a initialises it, b joins it, c (no
/// --join) is refused, a registrar of another trust domain cannot join.
async fn a_fleet_on(url: &str, dir: &Path) {
    let fleet = pki(dir, "pki", "acme.test", &["a", "b", "c"]);
    let a = setup::init_with(&fleet, &dir.join("a"), &options("a", url, false), now_ms())
        .await
        .expect("init a");
    assert!(
        a.admin_token.is_some(),
        "the first registrar gets the token"
    );
    let b = setup::init_with(&fleet, &dir.join("b"), &options("b", url, true), now_ms())
        .await
        .expect("b joins");
    assert!(b.admin_token.is_none(), "no second admin token: {b:?}");
    assert_eq!(a.store, b.store);
    // One trust domain, one set of grants and tokens, seen by both.
    let la = setup::load(&dir.join("a")).await.expect("load a");
    let lb = setup::load(&dir.join("b")).await.expect("load b");
    assert_eq!(la.grants, lb.grants);
    assert_eq!(
        la.grants.len(),
        setup::default_grants(&"acme.test".parse().expect("td")).len()
    );
    assert_ne!(la.server_id, lb.server_id);
    la.store.close().await;
    lb.store.close().await;
    assert_eq!(
        setup::list_tokens(&dir.join("b"))
            .await
            .expect("tokens")
            .len(),
        1,
        "b sees the fleet's one token"
    );
    // A second `init` without --join would create a second local trust domain.
    let c = setup::init_with(&fleet, &dir.join("c"), &options("c", url, false), now_ms()).await;
    assert!(
        matches!(&c, Err(Error::StoreInitialised { domain, .. }) if domain == "acme.test"),
        "{c:?}"
    );
    assert!(
        c.expect_err("refused").to_string().contains("--join"),
        "the refusal says how to join"
    );
    assert!(!dir.join("c").exists(), "nothing left behind");
    // Another trust domain cannot join.
    let other = pki(dir, "other", "other.test", &["x"]);
    let x = setup::init_with(&other, &dir.join("x"), &options("x", url, true), now_ms()).await;
    assert!(matches!(x, Err(Error::Join { .. })), "{x:?}");
    assert!(!dir.join("x").exists());
}

#[tokio::test]
async fn a_fleet_on_postgres_one_init_then_joins() {
    let Some(db) = store::db::test_db::empty_postgres("a_fleet_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    a_fleet_on(&db.url, dir.path()).await;
    // What enrpd.json records: the URL, nothing else about the store.
    let json = std::fs::read_to_string(dir.path().join("a/enrpd.json")).expect("json");
    assert!(json.contains(&db.url), "{json}");
    assert!(
        !dir.path().join("a/rsp.db").exists(),
        "no SQLite file beside"
    );
    let (url, version) = setup::migrate(Some(&db.url), None).await.expect("migrate");
    assert_eq!(url, db.url);
    assert!(version >= 4, "{version}");
}

#[tokio::test]
async fn join_needs_a_fleet_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = pki(dir.path(), "pki", "acme.test", &["a"]);
    // On SQLite: a fleet shares PostgreSQL, not a file.
    let file = format!("sqlite://{}", dir.path().join("shared.db").display());
    let r = setup::init_with(
        &fleet,
        &dir.path().join("a"),
        &options("a", &file, true),
        now_ms(),
    )
    .await;
    assert!(matches!(r, Err(Error::Join { .. })), "{r:?}");
    // On an empty PostgreSQL database: nobody initialised it.
    let Some(db) = store::db::test_db::empty_postgres("join_needs_a_fleet_store").await else {
        return;
    };
    let r = setup::init_with(
        &fleet,
        &dir.path().join("a"),
        &options("a", &db.url, true),
        now_ms(),
    )
    .await;
    assert!(
        matches!(&r, Err(Error::Join { reason, .. }) if reason.contains("holds no fleet")),
        "{r:?}"
    );
    assert!(!dir.path().join("a").exists());
}

#[tokio::test]
async fn a_sqlite_store_elsewhere_is_recorded_and_used_by_every_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = pki(dir.path(), "pki", "acme.test", &["a", "b"]);
    let file = dir.path().join("elsewhere/store.db");
    std::fs::create_dir(dir.path().join("elsewhere")).expect("dir");
    let url = format!("sqlite://{}", file.display());
    let data = dir.path().join("a");
    let report = setup::init_with(&fleet, &data, &options("a", &url, false), now_ms())
        .await
        .expect("init");
    assert_eq!(report.store, url);
    assert!(file.is_file() && !data.join("rsp.db").exists());
    // `token create` and `load` open the recorded file.
    setup::create_token(&data, "ops", store::db::Role::Operator, None, now_ms())
        .await
        .expect("token");
    assert_eq!(setup::list_tokens(&data).await.expect("list").len(), 2);
    let loaded = setup::load_with_store(&data, Some(&url))
        .await
        .expect("same store");
    loaded.store.close().await;
    // `run --store` naming another store is refused, naming both.
    let other = format!("sqlite://{}", dir.path().join("other.db").display());
    let r = setup::load_with_store(&data, Some(&other)).await;
    let Err(e @ Error::StoreMismatch { .. }) = r else {
        panic!("{r:?}");
    };
    assert!(e.to_string().contains("store.db") && e.to_string().contains("other.db"));
    assert!(!dir.path().join("other.db").exists(), "never opened");
    // The same file initialised again (another data directory) is refused; a second
    // registrar of one SQLite file is no fleet.
    let b = setup::init_with(
        &fleet,
        &dir.path().join("b"),
        &options("b", &url, false),
        now_ms(),
    )
    .await;
    assert!(matches!(b, Err(Error::StoreInitialised { .. })), "{b:?}");
    assert!(file.is_file(), "the existing store is left alone");
    let (_, version) = setup::migrate(None, Some(&data)).await.expect("migrate");
    assert!(version >= 4);
}

#[tokio::test]
async fn the_default_store_is_the_data_directory_file_and_old_install_files_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = pki(dir.path(), "pki", "acme.test", &["a"]);
    let data = dir.path().join("a");
    setup::init(&fleet, None, &data, now_ms())
        .await
        .expect("init");
    let json = std::fs::read_to_string(data.join("enrpd.json")).expect("json");
    // As before issue 19: no `store` key, which means the data directory's rsp.db.
    assert!(!json.contains("store"), "{json}");
    assert!(data.join("rsp.db").is_file());
    let default = format!("sqlite://{}/rsp.db", data.display());
    let loaded = setup::load_with_store(&data, Some(&default))
        .await
        .expect("load");
    loaded.store.close().await;
}

#[tokio::test]
async fn a_password_in_the_store_url_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = pki(dir.path(), "pki", "acme.test", &["a"]);
    for url in [
        "postgres://rsp:s3cret@db.example/rsp",
        "postgresql://rsp@db.example/rsp?password=s3cret",
    ] {
        let r = setup::init_with(
            &fleet,
            &dir.path().join("a"),
            &options("a", url, false),
            now_ms(),
        )
        .await;
        let Err(e @ Error::StoreUrl { .. }) = r else {
            panic!("{url}: {r:?}");
        };
        let text = e.to_string();
        assert!(
            text.contains("PGPASSWORD") && !text.contains("s3cret"),
            "{text}"
        );
        assert!(!dir.path().join("a").exists());
    }
    let r = setup::check_store_url("mysql://x/y");
    assert!(matches!(r, Err(Error::StoreUrl { .. })), "{r:?}");
    // A relative SQLite path is recorded absolute: `enrpd run` may start elsewhere.
    let abs = setup::check_store_url("sqlite://rel/x.db").expect("relative");
    assert!(
        abs.starts_with("sqlite:///") && abs.ends_with("/rel/x.db"),
        "{abs}"
    );
}

/// The store's transport policy (docs/SECURITY.md): a PostgreSQL server off this machine
/// only with `sslmode=verify-full` or `verify-ca`; a Unix socket or loopback as it is.
/// (Assumes `PGHOST`/`PGSSLMODE` are unset, as in CI.)
#[test]
fn a_remote_postgres_store_needs_verified_tls() {
    let accepted = [
        "postgres://rsp@127.0.0.1/rsp",
        "postgres://rsp@127.0.0.2:5433/rsp?sslmode=disable",
        "postgres://rsp@[::1]/rsp",
        "postgresql://rsp@localhost/rsp",
        "postgres://rsp@localhost/rsp?host=/run/postgresql",
        "postgres://rsp@db.example.net/rsp?host=/run/postgresql",
        "postgres://rsp@db.example.net/rsp?sslmode=verify-full&sslrootcert=/etc/rsp/pg-ca.pem",
        "postgres://rsp@10.0.0.5/rsp?sslmode=verify-ca&sslrootcert=/etc/rsp/pg-ca.pem",
        "postgres://rsp@[2001:db8::5]/rsp?sslmode=verify-full",
    ];
    for url in accepted {
        match setup::check_store_url(url) {
            Ok(recorded) => assert_eq!(recorded, url),
            Err(e) => panic!("{url}: {e}"),
        }
    }
    let refused = [
        "postgres://rsp@db.example.net/rsp",
        "postgres://rsp@db.example.net/rsp?sslmode=disable",
        "postgres://rsp@db.example.net/rsp?sslmode=allow",
        "postgres://rsp@10.0.0.5/rsp?sslmode=prefer",
        "postgres://rsp@10.0.0.5/rsp?sslmode=require&sslrootcert=/etc/rsp/pg-ca.pem",
        "postgres://rsp@[2001:db8::5]/rsp?sslmode=require",
        // The parameter overrides the URL's loopback host, as in sqlx.
        "postgres://rsp@127.0.0.1/rsp?host=db.example.net",
        "postgres://rsp@localhost/rsp?hostaddr=192.0.2.7",
    ];
    for url in refused {
        let r = setup::check_store_url(url);
        let Err(e @ Error::StoreUrl { .. }) = &r else {
            panic!("{url}: {r:?}");
        };
        let text = e.to_string();
        assert!(
            text.contains("not on this machine")
                && text.contains("add sslmode=verify-full&sslrootcert="),
            "{url}: {text}"
        );
    }
}
