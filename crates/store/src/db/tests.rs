//! Tests of the store: one per query, against a migrated database.

use std::str::FromStr;

use identity::{
    Action, DefaultNamespace, Grant, IdentityPattern, NamespacePattern, PoolPattern, Revocation,
    Serial, SpiffeId, TrustDomain,
};

use super::test_db::{TestDb, on_both_backends, sqlite_conn};
use super::*;

on_both_backends!(
    create_namespace_validates_and_refuses_duplicates,
    list_namespaces_is_sorted_by_name,
    get_namespace_finds_or_returns_none,
    audit_tables_refuse_update_delete_truncate,
    revocations_are_permanent,
    delete_namespace_cascades_to_pools,
    put_pool_inserts_then_replaces_limits,
    list_pools_of_one_namespace,
    get_pool_by_namespace_and_handle,
    delete_pool_removes_one_declaration,
    add_trust_domain_allows_one_local,
    list_trust_domains_local_first,
    set_trust_domain_crls_replaces_or_clears,
    remove_trust_domain_keeps_the_local_one,
    add_grant_round_trips_and_refuses_duplicates,
    list_grants_by_id_and_detects_corrupt_rows,
    delete_grant_returns_the_removed_grant,
    add_revocation_of_each_kind,
    list_revocations_oldest_first,
    upsert_peer_then_update,
    list_peers_by_address,
    create_token_stores_only_an_argon2id_hash,
    verify_token_accepts_the_token_and_refuses_the_rest,
    verify_token_with_default_cost,
    list_tokens_without_secrets,
    revoke_token_keeps_the_first_time,
    default_namespace_rules_round_trip_and_pin_their_namespace,
    a_server_id_binding_never_changes,
);

/// The append-only protection of the audit log holds on both backends' migrations (SQLite
/// triggers; PostgreSQL PL/pgSQL triggers, also for TRUNCATE, which fires no row trigger).
async fn audit_tables_refuse_update_delete_truncate(db: &TestDb) {
    let (store, mut conn) = db.open().await;
    let (zero, one) = (vec![0u8; 32], vec![1u8; 32]);
    with_conn!(
        &mut conn,
        "INSERT INTO audit_events (id, time_ms, action, outcome, prev_hash, hash)
         VALUES (1, 1, 'register', 'ok', ?1, ?2)",
        |c, sql| sqlx::query(sql)
            .bind(&zero)
            .bind(&one)
            .execute(c)
            .await
            .map(drop)
            .expect("append")
    );
    let mut statements = vec![
        "UPDATE audit_events SET time_ms = 2",
        "DELETE FROM audit_events",
        // An anchor that names no archived rows cannot excuse a deletion.
        "INSERT INTO audit_archives (last_id, first_id, first_prev_hash, last_hash, time_ms, \
         file, sha256) VALUES (1, 1, zeroblob(32), zeroblob(32), 1, 'x', zeroblob(32))",
    ];
    if store.backend() == Backend::Postgres {
        statements[2] = "INSERT INTO audit_archives (last_id, first_id, first_prev_hash, \
             last_hash, time_ms, file, sha256) VALUES (1, 1, decode(repeat('00', 32), 'hex'), \
             decode(repeat('00', 32), 'hex'), 1, 'x', decode(repeat('00', 32), 'hex'))";
        statements.push("TRUNCATE audit_events");
        statements.push("TRUNCATE audit_archives");
    }
    for statement in statements {
        let err = with_conn!(&mut conn, statement, |c, sql| sqlx::query(sql)
            .execute(c)
            .await
            .expect_err(statement));
        let err = err.to_string();
        assert!(
            err.contains("append-only") || err.contains("audit archive does not match"),
            "{statement}: {err}"
        );
    }
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM audit_events").await,
        1
    );
}

/// A revocation cannot be edited or deleted in the database (migration 0007): running
/// registrars would go on denying it while the store no longer says so.
async fn revocations_are_permanent(db: &TestDb) {
    let (store, mut conn) = db.open().await;
    let revoked = Revocation::Identity(SpiffeId::parse("spiffe://acme.test/pe/x").expect("id"));
    add_revocation(&mut conn, &revoked, Some("key compromise"), 1)
        .await
        .expect("revoke");
    let mut statements = vec![
        "UPDATE revocations SET reason = NULL",
        "DELETE FROM revocations",
    ];
    if store.backend() == Backend::Postgres {
        statements.push("TRUNCATE revocations");
    }
    for statement in statements {
        let err = with_conn!(&mut conn, statement, |c, sql| sqlx::query(sql)
            .execute(c)
            .await
            .expect_err(statement));
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
    let rows = list_revocations(&mut conn).await.expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].revocation, revoked);
    assert_eq!(rows[0].reason.as_deref(), Some("key compromise"));
}

#[tokio::test]
async fn connect_opens_sqlite_urls_and_refuses_other_schemes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("by-url.db");
    let url = format!("sqlite://{}", file.display());
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .expect("sqlite URL");
    assert_eq!(store.backend(), Backend::Sqlite);
    let mut tx = store.begin().await.expect("begin");
    create_namespace(&mut tx, "lab", 1).await.expect("create");
    tx.commit().await.expect("commit");
    store.close().await;
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .expect("reopen");
    let mut conn = store.acquire().await.expect("conn");
    assert_eq!(list_namespaces(&mut conn).await.expect("list").len(), 1);

    for bad in ["mysql://u:hunter2@db/rsp", "rsp.db", "sqlite://"] {
        let err = Store::connect(bad, &StoreOptions::default())
            .await
            .expect_err(bad);
        assert!(matches!(err, Error::Url { .. }), "{bad}: {err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}

fn grant(identity: &str, namespace: &str, pools: &str, actions: &[Action]) -> Grant {
    Grant {
        identity: IdentityPattern::parse(identity).expect("identity pattern"),
        namespace: NamespacePattern::from_str(namespace).expect("namespace pattern"),
        pools: PoolPattern::from_str(pools).expect("pool pattern"),
        actions: actions.iter().copied().collect(),
        labels: None,
    }
}

fn domain(name: &str) -> TrustDomain {
    TrustDomain::new(name).expect("trust domain")
}

async fn one_text(conn: &mut StoreConn, sql: &'static str) -> String {
    let (text,): (String,) = with_conn!(conn, sql, |c, sql| sqlx::query_as(sql)
        .fetch_one(c)
        .await
        .expect("raw"));
    text
}

async fn count<C: Conn + ?Sized>(conn: &mut C, sql: &'static str) -> i64 {
    let (n,): (i64,) = with_conn!(conn, sql, |c, sql| sqlx::query_as(sql)
        .fetch_one(c)
        .await
        .expect("count"));
    n
}

#[tokio::test]
async fn open_creates_private_dir_wal_full_and_reopens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let store = Store::open(&data, &StoreOptions::default())
        .await
        .expect("open");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    let mut conn = store.acquire().await.expect("conn");
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(sqlite_conn(&mut conn))
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous")
        .fetch_one(sqlite_conn(&mut conn))
        .await
        .expect("pragma");
    assert_eq!(sync, 2, "synchronous=FULL");
    let (fk,): (i64,) = sqlx::query_as("PRAGMA foreign_keys")
        .fetch_one(sqlite_conn(&mut conn))
        .await
        .expect("pragma");
    assert_eq!(fk, 1);
    let (temp_store, cache): (i64, i64) =
        sqlx::query_as("SELECT * FROM pragma_temp_store, pragma_cache_size")
            .fetch_one(sqlite_conn(&mut conn))
            .await
            .expect("pragma");
    assert_eq!(
        (temp_store, cache),
        (2, -8192),
        "temp_store=MEMORY, 8 MiB cache"
    );
    create_namespace(&mut conn, "default", 1)
        .await
        .expect("create");
    drop(conn);
    store.close().await;

    // Reopening runs no migration twice and keeps the data.
    let store = Store::open(&data, &StoreOptions::default())
        .await
        .expect("reopen");
    let mut conn = store.acquire().await.expect("conn");
    assert_eq!(list_namespaces(&mut conn).await.expect("list").len(), 1);
    assert!(data.join(DB_FILE).exists());
}

#[tokio::test]
async fn open_with_synchronous_normal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions {
        synchronous: Synchronous::Normal,
        ..StoreOptions::default()
    };
    let store = Store::open(tmp.path(), &options).await.expect("open");
    let mut conn = store.acquire().await.expect("conn");
    let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous")
        .fetch_one(sqlite_conn(&mut conn))
        .await
        .expect("pragma");
    assert_eq!(sync, 1, "synchronous=NORMAL");
}

#[tokio::test]
async fn open_refuses_a_file_as_data_dir() {
    let tmp = tempfile::NamedTempFile::new().expect("tempfile");
    let err = Store::open(tmp.path(), &StoreOptions::default())
        .await
        .expect_err("a file is not a directory");
    assert!(matches!(err, Error::DataDir { .. }), "{err}");
}

async fn create_namespace_validates_and_refuses_duplicates(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let ns = create_namespace(&mut conn, "default", 42)
        .await
        .expect("create");
    assert_eq!(ns.name, "default");
    assert_eq!(ns.created_ms, 42);
    let err = create_namespace(&mut conn, "default", 43)
        .await
        .expect_err("dup");
    assert!(
        matches!(
            err,
            Error::AlreadyExists {
                what: "namespace",
                ..
            }
        ),
        "{err}"
    );
    for bad in ["", "Default", "a b", "ns/1", &"x".repeat(64)] {
        let err = create_namespace(&mut conn, bad, 1).await.expect_err(bad);
        assert!(
            matches!(
                err,
                Error::Invalid {
                    what: "namespace",
                    ..
                }
            ),
            "{bad}: {err}"
        );
    }
    create_namespace(&mut conn, &"x".repeat(63), 1)
        .await
        .expect("63 bytes");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM namespaces").await, 2);
}

async fn list_namespaces_is_sorted_by_name(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    assert!(list_namespaces(&mut conn).await.expect("empty").is_empty());
    for name in ["prod", "default", "lab.1"] {
        create_namespace(&mut conn, name, 1).await.expect("create");
    }
    let names: Vec<String> = list_namespaces(&mut conn)
        .await
        .expect("list")
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["default", "lab.1", "prod"]);
}

async fn get_namespace_finds_or_returns_none(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    create_namespace(&mut conn, "default", 7)
        .await
        .expect("create");
    let ns = get_namespace(&mut conn, "default").await.expect("get");
    assert_eq!(ns.map(|n| n.created_ms), Some(7));
    assert_eq!(get_namespace(&mut conn, "other").await.expect("get"), None);
    assert!(get_namespace(&mut conn, "BAD").await.is_err());
}

async fn delete_namespace_cascades_to_pools(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    create_namespace(&mut conn, "lab", 1).await.expect("create");
    put_pool(&mut conn, &PoolDecl::new("lab", b"echo".to_vec()), 2)
        .await
        .expect("pool");
    delete_namespace(&mut conn, "lab").await.expect("delete");
    assert_eq!(get_namespace(&mut conn, "lab").await.expect("get"), None);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM pools").await, 0);
    let err = delete_namespace(&mut conn, "lab").await.expect_err("gone");
    assert!(
        matches!(
            err,
            Error::NotFound {
                what: "namespace",
                ..
            }
        ),
        "{err}"
    );
}

async fn put_pool_inserts_then_replaces_limits(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    create_namespace(&mut conn, "default", 1).await.expect("ns");
    let mut decl = PoolDecl::new("default", b"echo".to_vec());
    decl.policy = Some(1);
    decl.max_pes = Some(10);
    let stored = put_pool(&mut conn, &decl, 5).await.expect("put");
    assert_eq!(
        (stored.policy, stored.max_pes, stored.created_ms),
        (Some(1), Some(10), 5)
    );
    decl.max_pes = None;
    let stored = put_pool(&mut conn, &decl, 9).await.expect("replace");
    // Replacing keeps the creation time.
    assert_eq!(
        (stored.policy, stored.max_pes, stored.created_ms),
        (Some(1), None, 5)
    );

    let err = put_pool(&mut conn, &PoolDecl::new("nope", b"echo".to_vec()), 1)
        .await
        .expect_err("no namespace");
    assert!(
        matches!(
            err,
            Error::NotFound {
                what: "namespace",
                ..
            }
        ),
        "{err}"
    );
    for bad in [Vec::new(), vec![b'a'; 33]] {
        let err = put_pool(&mut conn, &PoolDecl::new("default", bad), 1)
            .await
            .expect_err("bad handle");
        assert!(
            matches!(
                err,
                Error::Invalid {
                    what: "pool handle",
                    ..
                }
            ),
            "{err}"
        );
    }
    decl.max_pes = Some(0);
    assert!(put_pool(&mut conn, &decl, 1).await.is_err());
    assert_eq!(count(&mut conn, "SELECT count(*) FROM pools").await, 1);
}

async fn list_pools_of_one_namespace(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    for ns in ["a", "b"] {
        create_namespace(&mut conn, ns, 1).await.expect("ns");
    }
    for (ns, handle) in [("a", &b"zeta"[..]), ("a", b"\x00bin"), ("b", b"other")] {
        put_pool(&mut conn, &PoolDecl::new(ns, handle.to_vec()), 1)
            .await
            .expect("pool");
    }
    let handles: Vec<Vec<u8>> = list_pools(&mut conn, "a")
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.handle)
        .collect();
    assert_eq!(handles, [b"\x00bin".to_vec(), b"zeta".to_vec()]);
}

async fn get_pool_by_namespace_and_handle(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    create_namespace(&mut conn, "a", 1).await.expect("ns");
    put_pool(&mut conn, &PoolDecl::new("a", b"echo".to_vec()), 3)
        .await
        .expect("pool");
    let pool = get_pool(&mut conn, "a", b"echo").await.expect("get");
    assert_eq!(pool.map(|p| p.created_ms), Some(3));
    assert_eq!(get_pool(&mut conn, "a", b"other").await.expect("get"), None);
}

async fn delete_pool_removes_one_declaration(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    create_namespace(&mut conn, "a", 1).await.expect("ns");
    put_pool(&mut conn, &PoolDecl::new("a", b"echo".to_vec()), 3)
        .await
        .expect("pool");
    delete_pool(&mut conn, "a", b"echo").await.expect("delete");
    let err = delete_pool(&mut conn, "a", b"echo")
        .await
        .expect_err("gone");
    assert!(matches!(err, Error::NotFound { what: "pool", .. }), "{err}");
}

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

async fn add_trust_domain_allows_one_local(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let local = add_trust_domain(&mut conn, &domain("acme.test"), true, PEM, None, 1)
        .await
        .expect("local");
    assert!(local.is_local);
    add_trust_domain(&mut conn, &domain("partner.test"), false, PEM, Some(PEM), 2)
        .await
        .expect("federated");
    let err = add_trust_domain(&mut conn, &domain("other.test"), true, PEM, None, 3)
        .await
        .expect_err("second local");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let err = add_trust_domain(&mut conn, &domain("partner.test"), false, PEM, None, 3)
        .await
        .expect_err("dup");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let err = add_trust_domain(&mut conn, &domain("empty.test"), false, "", None, 3)
        .await
        .expect_err("empty");
    assert!(matches!(err, Error::Invalid { what: "roots", .. }), "{err}");
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM trust_domains").await,
        2
    );
}

async fn list_trust_domains_local_first(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    add_trust_domain(&mut conn, &domain("b.test"), false, PEM, None, 1)
        .await
        .expect("b");
    add_trust_domain(&mut conn, &domain("z.test"), true, PEM, None, 1)
        .await
        .expect("z");
    add_trust_domain(&mut conn, &domain("a.test"), false, PEM, Some(PEM), 1)
        .await
        .expect("a");
    let domains = list_trust_domains(&mut conn).await.expect("list");
    let names: Vec<&str> = domains.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["z.test", "a.test", "b.test"]);
    assert_eq!(domains[1].crls_pem.as_deref(), Some(PEM));
}

async fn set_trust_domain_crls_replaces_or_clears(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    add_trust_domain(&mut conn, &domain("a.test"), false, PEM, None, 1)
        .await
        .expect("a");
    set_trust_domain_crls(&mut conn, &domain("a.test"), Some("crl"))
        .await
        .expect("set");
    assert_eq!(
        list_trust_domains(&mut conn).await.expect("list")[0]
            .crls_pem
            .as_deref(),
        Some("crl")
    );
    set_trust_domain_crls(&mut conn, &domain("a.test"), None)
        .await
        .expect("clear");
    assert_eq!(
        list_trust_domains(&mut conn).await.expect("list")[0].crls_pem,
        None
    );
    let err = set_trust_domain_crls(&mut conn, &domain("b.test"), None)
        .await
        .expect_err("unknown");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

async fn remove_trust_domain_keeps_the_local_one(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    add_trust_domain(&mut conn, &domain("acme.test"), true, PEM, None, 1)
        .await
        .expect("local");
    add_trust_domain(&mut conn, &domain("partner.test"), false, PEM, None, 1)
        .await
        .expect("federated");
    let err = remove_trust_domain(&mut conn, &domain("acme.test"))
        .await
        .expect_err("local");
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    remove_trust_domain(&mut conn, &domain("partner.test"))
        .await
        .expect("remove");
    let err = remove_trust_domain(&mut conn, &domain("partner.test"))
        .await
        .expect_err("gone");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(list_trust_domains(&mut conn).await.expect("list").len(), 1);
}

async fn add_grant_round_trips_and_refuses_duplicates(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let g = grant(
        "spiffe://acme.test/pe/*",
        "default",
        "echo*",
        &[Action::Register, Action::AdminWrite],
    );
    let row = add_grant(&mut conn, &g, 11).await.expect("add");
    assert_eq!(row.grant, g);
    assert_eq!(row.created_ms, 11);
    let text = one_text(&mut conn, "SELECT actions FROM grants").await;
    assert_eq!(text, "register,admin:write");
    let err = add_grant(&mut conn, &g, 12).await.expect_err("dup");
    assert!(
        matches!(err, Error::AlreadyExists { what: "grant", .. }),
        "{err}"
    );
    let none = grant("spiffe://acme.test/pe/*", "*", "*", &[]);
    let err = add_grant(&mut conn, &none, 12)
        .await
        .expect_err("no action");
    assert!(matches!(err, Error::Invalid { what: "grant", .. }), "{err}");
    let bad_ns = grant("spiffe://acme.test/pe/*", "Bad", "*", &[Action::Resolve]);
    assert!(add_grant(&mut conn, &bad_ns, 12).await.is_err());
    assert_eq!(count(&mut conn, "SELECT count(*) FROM grants").await, 1);
    // Label rules (schema 9): stored one per line, read back equal; `[]` stays "none",
    // distinct from NULL ("any").
    let mut eu = grant(
        "spiffe://acme.test/pe/eu-*",
        "default",
        "web",
        &[Action::Register],
    );
    eu.labels =
        Some(identity::LabelRules::parse(["region=eu-*", "zone=a=b", "tier="]).expect("valid"));
    let row = add_grant(&mut conn, &eu, 13).await.expect("add with rules");
    assert_eq!(row.grant, eu);
    let mut none = grant(
        "spiffe://acme.test/pe/plain",
        "default",
        "web",
        &[Action::Register],
    );
    none.labels = Some(identity::LabelRules::default());
    add_grant(&mut conn, &none, 14)
        .await
        .expect("add with no label admitted");
    let listed = list_grants(&mut conn).await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|r| r.grant.labels.clone())
            .collect::<Vec<_>>(),
        [None, eu.labels.clone(), none.labels.clone()]
    );
    // A row whose rules do not parse is corrupt, not silently "any".
    with_conn!(
        &mut conn,
        "UPDATE grants SET labels = 'no equals sign' WHERE identity = 'spiffe://acme.test/pe/plain'",
        |c, sql| sqlx::query(sql).execute(c).await.map(|_| ())
    )
    .expect("update");
    let err = list_grants(&mut conn).await.expect_err("corrupt");
    assert!(
        matches!(
            err,
            Error::Corrupt {
                table: "grants",
                ..
            }
        ),
        "{err}"
    );
}

async fn list_grants_by_id_and_detects_corrupt_rows(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let a = grant("spiffe://acme.test/pu/*", "*", "*", &[Action::Resolve]);
    let b = grant(
        "spiffe://acme.test/registrar/*",
        "default",
        "*",
        &[Action::Peer],
    );
    add_grant(&mut conn, &a, 1).await.expect("a");
    add_grant(&mut conn, &b, 2).await.expect("b");
    let grants: Vec<Grant> = list_grants(&mut conn)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.grant)
        .collect();
    assert_eq!(grants, [a, b]);

    with_conn!(
        &mut conn,
        "INSERT INTO grants (identity, namespace, pools, actions, created_ms)
         VALUES ('spiffe://acme.test/x', '*', ?1, 'fly', 1)",
        |c, sql| sqlx::query(sql)
            .bind(b"*".as_slice())
            .execute(c)
            .await
            .map(drop)
            .expect("raw insert")
    );
    let err = list_grants(&mut conn).await.expect_err("corrupt");
    assert!(
        matches!(
            err,
            Error::Corrupt {
                table: "grants",
                ..
            }
        ),
        "{err}"
    );
}

async fn delete_grant_returns_the_removed_grant(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let g = grant(
        "spiffe://acme.test/pe/echo-1",
        "default",
        "echo",
        &[Action::Register],
    );
    let row = add_grant(&mut conn, &g, 1).await.expect("add");
    let removed = delete_grant(&mut conn, row.id).await.expect("delete");
    assert_eq!(removed.grant, g);
    let err = delete_grant(&mut conn, row.id).await.expect_err("gone");
    assert!(
        matches!(err, Error::NotFound { what: "grant", .. }),
        "{err}"
    );
}

async fn add_revocation_of_each_kind(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let kinds = [
        Revocation::Serial {
            domain: domain("acme.test"),
            serial: Serial::from_str("00:0a:ff").expect("serial"),
        },
        Revocation::Identity(SpiffeId::parse("spiffe://acme.test/pe/echo-1").expect("id")),
        Revocation::TrustDomain(domain("partner.test")),
    ];
    for (i, revoked) in kinds.iter().enumerate() {
        let row = add_revocation(&mut conn, revoked, Some("key compromise"), 100 + i as u64)
            .await
            .expect("add");
        assert_eq!(&row.revocation, revoked);
        assert_eq!(row.reason.as_deref(), Some("key compromise"));
        let err = add_revocation(&mut conn, revoked, None, 200)
            .await
            .expect_err("dup");
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    }
    let err = add_revocation(&mut conn, &kinds[2], Some("bell\u{7}"), 1)
        .await
        .expect_err("control char");
    assert!(
        matches!(err, Error::Invalid { what: "reason", .. }),
        "{err}"
    );
    // A bidirectional override would make the reason display as other text.
    let err = add_revocation(&mut conn, &kinds[2], Some("lost \u{202e}tpmorp"), 1)
        .await
        .expect_err("bidi override");
    assert!(
        matches!(err, Error::Invalid { what: "reason", .. }),
        "{err}"
    );
    let value = one_text(
        &mut conn,
        "SELECT value FROM revocations WHERE kind = 'serial'",
    )
    .await;
    assert_eq!(value, "0aff");
}

async fn list_revocations_oldest_first(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let first = Revocation::TrustDomain(domain("b.test"));
    let second = Revocation::Identity(SpiffeId::parse("spiffe://a.test/pu/x").expect("id"));
    add_revocation(&mut conn, &first, None, 1).await.expect("1");
    add_revocation(&mut conn, &second, None, 2)
        .await
        .expect("2");
    let listed: Vec<Revocation> = list_revocations(&mut conn)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.revocation)
        .collect();
    assert_eq!(listed, [first, second]);
}

async fn upsert_peer_then_update(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let peer = upsert_peer(&mut conn, "10.0.0.2:9902", None, None, 5)
        .await
        .expect("insert");
    assert_eq!(
        (peer.created_ms, peer.last_seen_ms, peer.server_id),
        (5, Some(5), None)
    );
    let id = SpiffeId::parse("spiffe://acme.test/registrar/enrp-2").expect("id");
    let peer = upsert_peer(&mut conn, "10.0.0.2:9902", Some(&id), Some(7), 9)
        .await
        .expect("update");
    assert_eq!(peer.spiffe_id, Some(id.clone()));
    assert_eq!(
        (peer.created_ms, peer.last_seen_ms, peer.server_id),
        (5, Some(9), Some(7))
    );
    // What is known stays known when a later update does not repeat it.
    let peer = upsert_peer(&mut conn, "10.0.0.2:9902", None, None, 10)
        .await
        .expect("touch");
    assert_eq!(peer.spiffe_id, Some(id));
    assert!(upsert_peer(&mut conn, "", None, None, 1).await.is_err());
    assert!(
        upsert_peer(&mut conn, "h:1", None, Some(0), 1)
            .await
            .is_err()
    );
}

async fn list_peers_by_address(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    for addr in ["b:9902", "a:9902"] {
        upsert_peer(&mut conn, addr, None, None, 1)
            .await
            .expect("peer");
    }
    let addrs: Vec<String> = list_peers(&mut conn)
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.address)
        .collect();
    assert_eq!(addrs, ["a:9902", "b:9902"]);
}

fn fast() -> TokenHasher {
    TokenHasher::insecure_fast_for_tests()
}

async fn create_token_stores_only_an_argon2id_hash(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let new = create_token(&mut conn, &fast(), "ops", Role::Admin, Some(10_000), 1_000)
        .await
        .expect("create");
    let token = &new.token;
    assert_eq!(token.len(), 4 + 16 + 1 + 64, "{token}");
    assert!(token.starts_with(&format!("rsp_{}_", new.info.id)));
    assert_eq!(new.info.role, Role::Admin);
    assert_eq!(new.info.expires_ms, Some(10_000));
    assert!(
        !format!("{new:?}").contains(&token[21..]),
        "Debug hides the token"
    );
    let hash = one_text(&mut conn, "SELECT hash FROM admin_tokens").await;
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(&token[21..]));
    let err = create_token(&mut conn, &fast(), "", Role::Admin, None, 1)
        .await
        .expect_err("empty name");
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    let err = create_token(&mut conn, &fast(), "adm\u{202e}nimda", Role::Admin, None, 1)
        .await
        .expect_err("a name that displays as another");
    assert!(
        matches!(
            err,
            Error::Invalid {
                what: "token name",
                ..
            }
        ),
        "{err}"
    );
    let err = create_token(&mut conn, &fast(), "old", Role::Admin, Some(5), 5)
        .await
        .expect_err("expired at birth");
    assert!(
        matches!(err, Error::Invalid { what: "expiry", .. }),
        "{err}"
    );
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM admin_tokens").await,
        1
    );
}

async fn verify_token_accepts_the_token_and_refuses_the_rest(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let new = create_token(
        &mut conn,
        &fast(),
        "ci",
        Role::Operator,
        Some(10_000),
        1_000,
    )
    .await
    .expect("create");
    let info = verify_token(&mut conn, &new.token, 2_000)
        .await
        .expect("ok");
    assert_eq!(info, new.info);

    let reject =
        async |conn: &mut StoreConn, token: &str, now: u64| match verify_token(conn, token, now)
            .await
        {
            Err(Error::Token(why)) => why,
            other => panic!("expected a token rejection, got {other:?}"),
        };
    // One different secret digit.
    let mut wrong = new.token.clone();
    let last = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(wrong.len() - 1.., last);
    assert_eq!(
        reject(&mut conn, &wrong, 2_000).await,
        TokenRejection::Mismatch
    );
    let unknown = format!("rsp_{}_{}", "0".repeat(16), &new.token[21..]);
    assert_eq!(
        reject(&mut conn, &unknown, 2_000).await,
        TokenRejection::Unknown
    );
    for malformed in [
        "",
        "rsp_",
        "Bearer x",
        &new.token.to_uppercase(),
        &new.token[..80],
    ] {
        assert_eq!(
            reject(&mut conn, malformed, 2_000).await,
            TokenRejection::Malformed
        );
    }
    assert_eq!(
        reject(&mut conn, &new.token, 10_000).await,
        TokenRejection::Expired
    );
    revoke_token(&mut conn, &new.info.id, 3_000)
        .await
        .expect("revoke");
    assert_eq!(
        reject(&mut conn, &new.token, 3_001).await,
        TokenRejection::Revoked
    );
}

async fn verify_token_with_default_cost(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let new = create_token(
        &mut conn,
        &TokenHasher::default(),
        "prod",
        Role::Auditor,
        None,
        1,
    )
    .await
    .expect("create");
    let hash = one_text(&mut conn, "SELECT hash FROM admin_tokens").await;
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    verify_token(&mut conn, &new.token, 2)
        .await
        .expect("verify");
}

async fn list_tokens_without_secrets(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let a = create_token(&mut conn, &fast(), "a", Role::Admin, None, 1)
        .await
        .expect("a");
    let b = create_token(&mut conn, &fast(), "b", Role::Auditor, None, 2)
        .await
        .expect("b");
    let listed = list_tokens(&mut conn).await.expect("list");
    assert_eq!(listed, [a.info.clone(), b.info]);
    // One by id, as a watch stream re-checks its caller; unknown ids are `None`.
    let one = token_info(&mut conn, &a.info.id).await.expect("by id");
    assert_eq!(one, Some(a.info.clone()));
    revoke_token(&mut conn, &a.info.id, 7)
        .await
        .expect("revoke");
    let one = token_info(&mut conn, &a.info.id).await.expect("by id");
    assert_eq!(one.and_then(|t| t.revoked_ms), Some(7));
    let none = token_info(&mut conn, "0000000000000000")
        .await
        .expect("unknown");
    assert_eq!(none, None);
}

async fn revoke_token_keeps_the_first_time(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let new = create_token(&mut conn, &fast(), "a", Role::Admin, None, 1)
        .await
        .expect("a");
    let info = revoke_token(&mut conn, &new.info.id, 5)
        .await
        .expect("revoke");
    assert_eq!(info.revoked_ms, Some(5));
    let info = revoke_token(&mut conn, &new.info.id, 9)
        .await
        .expect("again");
    assert_eq!(info.revoked_ms, Some(5));
    let err = revoke_token(&mut conn, "0000000000000000", 9)
        .await
        .expect_err("unknown");
    assert!(
        matches!(err, Error::NotFound { what: "token", .. }),
        "{err}"
    );
}

#[tokio::test]
async fn write_transaction_rolls_back_on_drop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path(), &StoreOptions::default())
        .await
        .expect("open");
    {
        let mut tx = store.begin().await.expect("begin");
        create_namespace(&mut tx, "gone", 1).await.expect("create");
        // Dropped without commit.
    }
    let mut conn = store.acquire().await.expect("conn");
    assert_eq!(get_namespace(&mut conn, "gone").await.expect("get"), None);
}

async fn default_namespace_rules_round_trip_and_pin_their_namespace(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    create_namespace(&mut conn, "lab", 1)
        .await
        .expect("namespace");
    let rule = DefaultNamespace {
        identity: IdentityPattern::parse("spiffe://acme.test/pe/*").expect("pattern"),
        namespace: "lab".to_owned(),
    };
    let row = add_default_namespace(&mut conn, &rule, 5)
        .await
        .expect("add");
    assert_eq!((row.rule.clone(), row.created_ms), (rule.clone(), 5));
    let err = add_default_namespace(&mut conn, &rule, 6)
        .await
        .expect_err("one rule per pattern");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let nowhere = DefaultNamespace {
        identity: IdentityPattern::parse("spiffe://acme.test/pu/*").expect("pattern"),
        namespace: "missing".to_owned(),
    };
    let err = add_default_namespace(&mut conn, &nowhere, 6)
        .await
        .expect_err("no such namespace");
    assert!(
        matches!(
            err,
            Error::NotFound {
                what: "namespace",
                ..
            }
        ),
        "{err}"
    );
    // The namespace stays while the rule names it.
    let err = delete_namespace(&mut conn, "lab")
        .await
        .expect_err("in use");
    assert!(matches!(err, Error::InUse { .. }), "{err}");
    assert!(err.to_string().contains("spiffe://acme.test/pe/*"), "{err}");
    assert_eq!(
        list_default_namespaces(&mut conn).await.expect("list"),
        vec![row.clone()]
    );
    assert_eq!(
        delete_default_namespace(&mut conn, row.id)
            .await
            .expect("delete"),
        row
    );
    assert!(matches!(
        delete_default_namespace(&mut conn, row.id).await,
        Err(Error::NotFound { .. })
    ));
    delete_namespace(&mut conn, "lab").await.expect("now free");
}

async fn a_server_id_binding_never_changes(db: &TestDb) {
    let (_store, mut conn) = db.open().await;
    let first = SpiffeId::parse("spiffe://acme.test/registrar/a").expect("id");
    let other = SpiffeId::parse("spiffe://acme.test/registrar/evil").expect("id");
    assert_eq!(
        bind_server_id(&mut conn, 7, &first, 1).await.expect("bind"),
        first
    );
    // Another identity gets the first one back; nothing changes.
    assert_eq!(
        bind_server_id(&mut conn, 7, &other, 2).await.expect("bind"),
        first
    );
    assert_eq!(
        list_server_id_bindings(&mut conn).await.expect("list"),
        vec![(7, first)]
    );
    assert!(bind_server_id(&mut conn, 0, &other, 3).await.is_err());
}
