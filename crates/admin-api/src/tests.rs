//! Router tests over a real SQLite file and a real trust store, through
//! `tower::ServiceExt::oneshot`, plus one real HTTPS connection through [`crate::serve`].
//!
//! The registrar here is [`Recorder`]: it holds no handlespace and only records what the
//! API asked of it, and applies the TLS-layer changes to the fixture's real trust store. The registrar side of each route (PEs listed and removed, connections
//! closed on revocation, grants enforced) is covered end to end against a real `enrpd` in
//! `tests/e2e/admin.rs`.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use identity::Grant;
use serde_json::{Value, json};
use store::audit::{self, AuditFilter};
use store::db::test_db::{self, TestDb};
use store::db::{self, Role, Store, TokenHasher};
use tower::ServiceExt;
use trust::testing::{TestCa, pem};
use trust::{Peer, TrustStore};

use crate::registrar::Actor;
use crate::{AdminState, Metrics, PeerView, PoolView, Registrar, Scope, TlsLayer, router};
use identity::Revocation;

/// A fixed clock: 2023-11-14, in unix ms.
const NOW: u64 = 1_700_000_000_000;
fn clock() -> u64 {
    NOW
}

/// Records the calls; see the module docs.
struct Recorder {
    calls: Mutex<Vec<String>>,
    trust: Arc<TrustStore>,
    /// What `store_down` answers (a test turns it on).
    store_down: std::sync::atomic::AtomicBool,
    /// The change feed the watch streams read; tests publish into it as `enrpd`'s driver
    /// does (tests_watch.rs).
    feed: crate::PoolChanges,
    /// What `peers` answers (a test sets it).
    peers: Mutex<Vec<PeerView>>,
}

impl Recorder {
    fn log(&self, call: String) {
        self.calls.lock().expect("not poisoned").push(call);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("not poisoned").clone()
    }
}

impl TlsLayer for Recorder {
    fn deny(&self, revoked: &Revocation) -> Result<(), trust::Error> {
        self.trust.revoke(revoked).map(drop)
    }
    fn add_domain(&self, bundle: trust::DomainBundle) -> Result<(), trust::Error> {
        self.trust.add_domain(bundle)
    }
    fn remove_domain(&self, domain: &identity::TrustDomain) -> Result<(), trust::Error> {
        self.trust.forget_domain(domain).map(drop)
    }
    fn set_crls(
        &self,
        domain: &identity::TrustDomain,
        crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
    ) -> Result<(), trust::Error> {
        self.trust.set_crls(domain, crls).map(drop)
    }
}

impl Registrar for Recorder {
    async fn pools(&self, _: &str) -> Vec<PoolView> {
        Vec::new()
    }

    fn store_down(&self) -> bool {
        self.store_down.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn changes(&self) -> Option<crate::PoolChanges> {
        Some(self.feed.clone())
    }
    async fn pool(&self, _: &str, _: &[u8]) -> Option<PoolView> {
        None
    }
    async fn remove(&self, scope: Scope, actor: Actor) -> usize {
        self.log(format!("remove {scope:?} by {actor}"));
        0
    }
    async fn drain(
        &self,
        pe: crate::PeRef,
        deadline_ms: Option<u64>,
    ) -> Result<(), crate::DrainError> {
        self.log(format!("drain {pe:?} until {deadline_ms:?}"));
        Err(crate::DrainError::NoSuchPe)
    }
    async fn set_grants(&self, grants: Vec<Grant>) {
        self.log(format!("set_grants {}", grants.len()));
    }
    async fn set_default_namespaces(&self, rules: Vec<identity::DefaultNamespace>) {
        self.log(format!("set_default_namespaces {}", rules.len()));
    }
    async fn revoke(&self, revoked: Revocation) {
        self.log(format!("revoke {revoked}"));
    }
    async fn domain_removed(&self, domain: &identity::TrustDomain) {
        self.log(format!("domain_removed {domain}"));
    }
    async fn declare_pool(&self, d: crate::PoolDeclaration) {
        self.log(format!("declare_pool {} {:?}", d.namespace, d.limits));
    }
    async fn peers(&self) -> Vec<PeerView> {
        self.peers.lock().expect("not poisoned").clone()
    }
    async fn metrics(&self) -> Metrics {
        Metrics {
            connections: 3,
            by_namespace: vec![crate::NamespaceMetrics {
                namespace: "lab".into(),
                registrations: 4,
                resolutions: 0,
                rejections: vec![(Some(0x000a), 2), (None, 1)],
            }],
            handshake_failures: vec![("untrusted".into(), 1)],
            ..Metrics::default()
        }
    }
    fn ready(&self) -> bool {
        true
    }
}

/// Runs each named `async fn NAME(f: Fixture)` on SQLite and on PostgreSQL, as the tests
/// `NAME::sqlite` and `NAME::postgres` (skipped, with the reason printed, without
/// `RSP_TEST_POSTGRES`; failing then under `RSP_REQUIRE_POSTGRES=1`).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::fixture().await).await;
            }
            #[tokio::test]
            async fn postgres() {
                let test = concat!(module_path!(), "::", stringify!($name));
                if let Some(db) = store::db::test_db::postgres(test).await {
                    super::$name(super::fixture_on(db).await).await;
                }
            }
        }
    )*};
}

on_both_backends!(
    missing_or_wrong_credentials_are_401_with_a_challenge_and_audited,
    roles_limit_what_a_token_may_do_and_refusals_are_audited_with_the_caller,
    default_namespace_rules_are_checked_stored_pushed_and_pin_their_namespace,
    namespaces_create_list_get_delete_with_audit_in_the_same_commit,
    a_create_past_the_stores_limit_is_409_says_why_and_is_audited,
    writes_from_another_site_and_pem_as_text_plain_are_refused,
    bodies_are_validated_and_refused_as_problems,
    tokens_show_their_secret_once_and_stop_working_when_revoked,
    a_token_revoked_by_another_registrar_is_refused_once_the_cache_is_told,
    names_and_reasons_that_would_display_as_other_text_are_refused_and_audited,
    failed_token_attempts_are_limited_per_address,
    grants_are_stored_pushed_to_the_registrar_and_deleted,
    grant_label_rules_are_checked_stored_and_pushed,
    an_admin_certificate_takes_its_role_from_the_grants,
    trust_domains_are_added_from_a_bundle_applied_at_once_and_removed,
    revocations_apply_to_the_trust_store_before_the_answer,
    a_crl_not_signed_by_the_domains_ca_is_refused,
    the_audit_log_is_filtered_paged_by_cursor_and_verified,
    crl_expiry_shows_in_metrics_and_an_expired_local_crl_fails_readiness,
    probes_metrics_and_pools,
    metrics_show_each_peers_state_checksum_agreement_and_silence,
    peers_and_metrics_say_whether_the_control_plane_is_shared,
    while_the_store_is_down_writes_are_503_and_the_probes_say_so,
    the_openapi_document_lists_every_route_with_its_errors,
    json_bodies_are_objects_and_whole_numbers_may_have_a_zero_fraction,
    drains_need_the_operator_role_a_deadline_in_range_and_are_audited,
);

struct Fixture {
    _dir: tempfile::TempDir,
    _db: TestDb,
    store: Store,
    ca: TestCa,
    trust: Arc<TrustStore>,
    registrar: Arc<Recorder>,
    token_cache: crate::TokenCache,
    router: axum::Router,
    admin: String,
    operator: String,
    auditor: String,
}

async fn fixture() -> Fixture {
    fixture_on(test_db::sqlite_file().await).await
}

/// The fixture on a test database of either backend (`store::db::test_db`).
async fn fixture_on(db: TestDb) -> Fixture {
    fixture_with_chain(db, audit::Chain::Local).await
}

/// [`fixture_on`], the registrar appending to `chain` (its own in a shared store).
async fn fixture_with_chain(db: TestDb, chain: audit::Chain) -> Fixture {
    // Archives and downloads go here whatever the backend.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = db.store.clone();
    let ca = TestCa::new("acme.test");
    let trust = Arc::new(
        TrustStore::new(ca.leaf("registrar/enrp-1").issue().identity()).expect("a trust store"),
    );
    trust.add_domain(ca.bundle()).expect("local domain");
    let mut tokens = Vec::new();
    {
        let mut conn = store.acquire().await.expect("a connection");
        db::add_trust_domain(&mut conn, ca.domain(), true, &ca.root_pem(), None, NOW)
            .await
            .expect("local domain stored");
        for role in [Role::Admin, Role::Operator, Role::Auditor] {
            let hasher = TokenHasher::insecure_fast_for_tests();
            let new = db::create_token(&mut conn, &hasher, role.as_str(), role, None, NOW)
                .await
                .expect("a token");
            tokens.push(new.token);
        }
    }
    let registrar = Arc::new(Recorder {
        calls: Mutex::default(),
        trust: Arc::clone(&trust),
        store_down: std::sync::atomic::AtomicBool::new(false),
        feed: crate::PoolChanges::new(1000, 16),
        peers: Mutex::default(),
    });
    let state = AdminState::new(
        store.clone(),
        trust.clone(),
        registrar.clone(),
        TokenHasher::insecure_fast_for_tests(),
        clock,
    )
    .with_archive_dir(dir.path().join(audit::archive::ARCHIVE_DIR))
    .with_audit_chain(chain);
    let [admin, operator, auditor] = <[String; 3]>::try_from(tokens).expect("three tokens");
    let token_cache = state.token_cache();
    Fixture {
        _dir: dir,
        _db: db,
        store,
        ca,
        trust,
        registrar,
        token_cache,
        router: router(state),
        admin,
        operator,
        auditor,
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
    /// Checks an RFC 9457 answer with `status` and the given `type`.
    fn problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert_eq!(self.content_type(), crate::PROBLEM_JSON, "{}", self.text);
        let v = self.json();
        assert_eq!(
            v["type"],
            format!("urn:rsp:problem:{kind}"),
            "{}",
            self.text
        );
        assert_eq!(v["status"], status);
    }
}

impl Fixture {
    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        self.send(request.expect("a request")).await
    }

    async fn pem(&self, method: &str, path: &str, token: &str, text: String) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, crate::PEM_MEDIA_TYPE)
            .body(Body::from(text))
            .expect("a request");
        self.send(request).await
    }

    /// Creates these namespaces as the admin (one audit record each).
    async fn create_namespaces(&self, names: &[&str]) {
        for name in names {
            let body = json!({"name": name});
            let r = self
                .call("POST", "/v1/namespaces", Some(&self.admin), Some(body))
                .await;
            assert_eq!(r.status, 201, "{}", r.text);
        }
    }

    async fn audit(&self, action: &str) -> Vec<audit::ChainedRecord> {
        let mut conn = self.store.acquire().await.expect("a connection");
        let mut filter = AuditFilter::default();
        filter.action = Some(action.to_owned());
        filter.limit = 1000;
        audit::query(&mut conn, &filter)
            .await
            .expect("a page")
            .events
    }
}

async fn missing_or_wrong_credentials_are_401_with_a_challenge_and_audited(f: Fixture) {
    let r = f.call("GET", "/v1/namespaces", None, None).await;
    r.problem(401, "unauthenticated");
    assert!(
        r.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("ascii")
            .starts_with("Bearer")
    );
    // The same token with its last hex digit changed (never to itself).
    let last = if f.admin.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &f.admin[..f.admin.len() - 1]);
    f.call("GET", "/v1/namespaces", Some(&wrong), None)
        .await
        .problem(401, "unauthenticated");
    let basic = Request::builder()
        .uri("/v1/namespaces")
        .header(header::AUTHORIZATION, "Basic YTpi")
        .body(Body::empty())
        .expect("a request");
    f.send(basic).await.problem(401, "unauthenticated");
    let refused = f.audit("admin:request").await;
    assert_eq!(refused.len(), 3);
    assert!(
        refused
            .iter()
            .all(|e| e.record.outcome.to_string() == "unauthenticated")
    );
    assert!(refused.iter().any(|e| {
        e.record
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("wrong secret")
    }));
}

async fn roles_limit_what_a_token_may_do_and_refusals_are_audited_with_the_caller(f: Fixture) {
    let body = json!({"name": "lab"});
    f.call(
        "POST",
        "/v1/namespaces",
        Some(&f.auditor),
        Some(body.clone()),
    )
    .await
    .problem(403, "forbidden");
    f.call(
        "POST",
        "/v1/namespaces",
        Some(&f.operator),
        Some(body.clone()),
    )
    .await
    .problem(403, "forbidden");
    f.call("GET", "/v1/audit", Some(&f.operator), None)
        .await
        .problem(403, "forbidden");
    assert_eq!(
        f.call("GET", "/v1/namespaces", Some(&f.operator), None)
            .await
            .status,
        200
    );
    assert_eq!(
        f.call("GET", "/v1/audit", Some(&f.auditor), None)
            .await
            .status,
        200
    );
    let refused = f.audit("admin:request").await;
    assert_eq!(refused.len(), 3);
    let auditor_id = &f.auditor[4..20];
    let actor = format!("spiffe://acme.test/token/{auditor_id}");
    assert!(
        refused
            .iter()
            .any(|e| e.record.actor.as_ref().map(|a| a.as_str()) == Some(actor.as_str()))
    );
    assert!(
        refused
            .iter()
            .all(|e| e.record.outcome.to_string() == "forbidden")
    );
}

async fn default_namespace_rules_are_checked_stored_pushed_and_pin_their_namespace(f: Fixture) {
    let post = |body| f.call("POST", "/v1/default-namespaces", Some(&f.admin), Some(body));
    post(json!({"identity": "spiffe://acme.test/pe/lab-*", "namespace": "lab"}))
        .await
        .problem(404, "not-found");
    post(json!({"identity": "not a pattern", "namespace": "lab"}))
        .await
        .problem(422, "invalid");
    let r = f
        .call(
            "POST",
            "/v1/namespaces",
            Some(&f.admin),
            Some(json!({"name": "lab"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = post(json!({"identity": "spiffe://acme.test/pe/lab-*", "namespace": "lab"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json()["id"].as_i64().expect("an id");
    post(json!({"identity": "spiffe://acme.test/pe/lab-*", "namespace": "lab"}))
        .await
        .problem(409, "conflict");
    // An operator token cannot change rules; an auditor reads them.
    f.call(
        "POST",
        "/v1/default-namespaces",
        Some(&f.operator),
        Some(json!({"identity": "spiffe://acme.test/pu/*", "namespace": "lab"})),
    )
    .await
    .problem(403, "forbidden");
    let list = f
        .call("GET", "/v1/default-namespaces", Some(&f.auditor), None)
        .await;
    assert_eq!(
        list.json(),
        json!([{"id": id, "identity": "spiffe://acme.test/pe/lab-*", "namespace": "lab",
                "created_ms": NOW}])
    );
    // The namespace stays while a rule sends requests there, and its PEs are untouched.
    f.call("DELETE", "/v1/namespaces/lab", Some(&f.admin), None)
        .await
        .problem(409, "conflict");
    assert!(!f.registrar.calls().iter().any(|c| c.starts_with("remove")));
    let path = format!("/v1/default-namespaces/{id}");
    assert_eq!(f.call("GET", &path, Some(&f.admin), None).await.status, 200);
    assert_eq!(
        f.call("DELETE", &path, Some(&f.admin), None).await.status,
        204
    );
    f.call("DELETE", &path, Some(&f.admin), None)
        .await
        .problem(404, "not-found");
    assert_eq!(
        f.call("DELETE", "/v1/namespaces/lab", Some(&f.admin), None)
            .await
            .status,
        204
    );
    let pushed: Vec<_> = f
        .registrar
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("set_default_namespaces"))
        .collect();
    assert_eq!(
        pushed,
        ["set_default_namespaces 1", "set_default_namespaces 0"]
    );
    // 404, 422, 201 and 409 (a refused token is audited as a refusal, not as this action).
    assert_eq!(f.audit("admin:default-namespace.create").await.len(), 4);
    assert_eq!(f.audit("admin:default-namespace.delete").await.len(), 2);
}

/// The store's row limits (`store::db::limits`) hold through the API: at the limit a
/// create is refused with 409 and a detail that says which limit, nothing is written,
/// and the refusal is in the audit log.
async fn a_create_past_the_stores_limit_is_409_says_why_and_is_audited(f: Fixture) {
    use store::db::limits::{MAX_NAMESPACES, Table};
    let mut conn = f.store.acquire().await.expect("connection");
    test_db::fill_to_one_below_limit(&mut conn, Table::Namespaces).await;
    let last = f
        .call(
            "POST",
            "/v1/namespaces",
            Some(&f.admin),
            Some(json!({"name": "last"})),
        )
        .await;
    assert_eq!(last.status, 201, "{}", last.text);
    let more = f
        .call(
            "POST",
            "/v1/namespaces",
            Some(&f.admin),
            Some(json!({"name": "more"})),
        )
        .await;
    more.problem(409, "conflict");
    let detail = more.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains(&format!("{MAX_NAMESPACES} namespaces")),
        "{detail}"
    );
    f.call("GET", "/v1/namespaces/more", Some(&f.admin), None)
        .await
        .problem(404, "not-found");
    let refused: Vec<_> = f
        .audit("admin:namespace.create")
        .await
        .into_iter()
        .filter(|e| e.record.outcome.to_string() != "ok")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
}

async fn namespaces_create_list_get_delete_with_audit_in_the_same_commit(f: Fixture) {
    let r = f
        .call(
            "POST",
            "/v1/namespaces",
            Some(&f.admin),
            Some(json!({"name": "lab"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["name"], "lab");
    assert_eq!(r.json()["created_ms"], NOW);
    f.call(
        "POST",
        "/v1/namespaces",
        Some(&f.admin),
        Some(json!({"name": "lab"})),
    )
    .await
    .problem(409, "conflict");
    let list = f
        .call("GET", "/v1/namespaces", Some(&f.auditor), None)
        .await;
    assert_eq!(list.json(), json!([{"name": "lab", "created_ms": NOW}]));
    assert_eq!(
        f.call("GET", "/v1/namespaces/lab", Some(&f.admin), None)
            .await
            .status,
        200
    );
    f.call("GET", "/v1/namespaces/nope", Some(&f.admin), None)
        .await
        .problem(404, "not-found");
    f.call("GET", "/v1/namespaces/NOT%20VALID", Some(&f.admin), None)
        .await
        .problem(404, "not-found");
    let r = f
        .call("DELETE", "/v1/namespaces/lab", Some(&f.admin), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    f.call("GET", "/v1/namespaces/lab", Some(&f.admin), None)
        .await
        .problem(404, "not-found");
    f.call("DELETE", "/v1/namespaces/lab", Some(&f.admin), None)
        .await
        .problem(404, "not-found");
    assert!(
        f.registrar
            .calls()
            .iter()
            .any(|c| c.starts_with("remove Namespace(\"lab\") by token:"))
    );
    let created = f.audit("admin:namespace.create").await;
    assert_eq!(created.len(), 2, "the success and the conflict");
    let ok: Vec<_> = created
        .iter()
        .filter(|e| e.record.outcome.to_string() == "ok")
        .collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(
        ok[0]
            .record
            .namespace
            .as_ref()
            .map(identity::Namespace::as_str),
        Some("lab")
    );
    assert!(
        ok[0]
            .record
            .actor
            .as_ref()
            .is_some_and(|a| a.as_str().starts_with("spiffe://acme.test/token/"))
    );
}

async fn writes_from_another_site_and_pem_as_text_plain_are_refused(f: Fixture) {
    let post = |origin: Option<&'static str>, fetch_site: Option<&'static str>| {
        let mut r = Request::builder()
            .method("POST")
            .uri("/v1/namespaces")
            .header(header::HOST, "registrar.acme.test:8443")
            .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(o) = origin {
            r = r.header(header::ORIGIN, o);
        }
        if let Some(s) = fetch_site {
            r = r.header("sec-fetch-site", s);
        }
        r.body(Body::from(r#"{"name":"lab"}"#)).expect("a request")
    };
    // A page elsewhere, even with the operator's credentials: refused, nothing created.
    f.send(post(Some("https://evil.example"), None))
        .await
        .problem(403, "forbidden");
    f.send(post(None, Some("cross-site")))
        .await
        .problem(403, "forbidden");
    f.send(post(Some("http://registrar.acme.test:8443"), None))
        .await
        .problem(403, "forbidden");
    assert_eq!(
        f.call("GET", "/v1/namespaces/lab", Some(&f.admin), None)
            .await
            .status,
        404
    );
    // Reads from anywhere, and writes from this API's own origin or from tools.
    let read = Request::builder()
        .uri("/v1/namespaces")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::empty())
        .expect("a request");
    assert_eq!(f.send(read).await.status, 200);
    assert_eq!(
        f.send(post(
            Some("https://registrar.acme.test:8443"),
            Some("same-origin")
        ))
        .await
        .status,
        201
    );
    // PEM only as application/x-pem-file: text/plain is what a browser sends cross-site.
    let text_plain = Request::builder()
        .method("POST")
        .uri("/v1/trust-domains")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(f.ca.root_pem()))
        .expect("a request");
    f.send(text_plain)
        .await
        .problem(415, "unsupported-media-type");
}

async fn bodies_are_validated_and_refused_as_problems(f: Fixture) {
    let post = |body: &'static str, content_type: &'static str| {
        Request::builder()
            .method("POST")
            .uri("/v1/namespaces")
            .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .expect("a request")
    };
    f.send(post("{not json", "application/json"))
        .await
        .problem(400, "bad-request");
    f.send(post(r#"{"name":"x"}"#, "text/plain"))
        .await
        .problem(415, "unsupported-media-type");
    f.send(post(r#"{"name":"x","extra":1}"#, "application/json"))
        .await
        .problem(422, "invalid");
    f.send(post(r#"{"name":7}"#, "application/json"))
        .await
        .problem(422, "invalid");
    f.send(post(r#"{"name":"UPPER"}"#, "application/json"))
        .await
        .problem(422, "invalid");
    let big = format!(r#"{{"name":"{}"}}"#, "a".repeat(crate::JSON_BODY_LIMIT));
    let request = Request::builder()
        .method("POST")
        .uri("/v1/namespaces")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .expect("a request");
    f.send(request).await.problem(413, "payload-too-large");
    f.call("GET", "/v1/audit?limit=0", Some(&f.admin), None)
        .await
        .problem(422, "invalid");
    f.call("GET", "/v1/audit?bogus=1", Some(&f.admin), None)
        .await
        .problem(400, "bad-request");
    f.call("GET", "/v1/audit?limit=x", Some(&f.admin), None)
        .await
        .problem(400, "bad-request");
    f.call("GET", "/v1/nothing", Some(&f.admin), None)
        .await
        .problem(404, "not-found");
    f.call("PATCH", "/v1/namespaces", Some(&f.admin), None)
        .await
        .problem(405, "method-not-allowed");
    let list = f.call("GET", "/v1/namespaces", Some(&f.admin), None).await;
    assert_eq!(list.json(), json!([]), "nothing was created");
}

/// A fleet shares the store: a token revoked through another registrar's API is only a
/// row here. The host tells the cache ([`crate::TokenCache`], what enrpd's fleet sync
/// does on the change), and the token is refused at once. The test clock stands still,
/// so without the hook the cached verification would keep passing.
async fn a_token_revoked_by_another_registrar_is_refused_once_the_cache_is_told(f: Fixture) {
    let get = || f.call("GET", "/v1/revocations", Some(&f.operator), None);
    assert_eq!(get().await.status, 200, "verified and cached");
    let id = f.operator[4..20].to_owned();
    {
        let mut conn = f.store.acquire().await.expect("a connection");
        db::revoke_token(&mut conn, &id, NOW)
            .await
            .expect("revoked in the store");
    }
    assert_eq!(get().await.status, 200, "still cached");
    assert_eq!(f.token_cache.forget(std::slice::from_ref(&id)), 1);
    get().await.problem(401, "unauthenticated");
    assert_eq!(f.token_cache.forget(&[id]), 0, "not cached again");
    assert_eq!(
        f.call("GET", "/v1/revocations", Some(&f.admin), None)
            .await
            .status,
        200,
        "the other tokens still work"
    );
}

async fn tokens_show_their_secret_once_and_stop_working_when_revoked(f: Fixture) {
    let r = f
        .call(
            "POST",
            "/v1/tokens",
            Some(&f.admin),
            Some(json!({"name": "ci", "role": "operator", "ttl_seconds": 60})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let created = r.json();
    let token = created["token"].as_str().expect("a token").to_owned();
    let id = created["id"].as_str().expect("an id").to_owned();
    assert_eq!(created["expires_ms"], NOW + 60_000);
    assert_eq!(created["role"], "operator");
    let list = f.call("GET", "/v1/tokens", Some(&f.auditor), None).await;
    assert!(!list.text.contains(&token[21..]), "no secret in the list");
    assert_eq!(list.json().as_array().map(Vec::len), Some(4));
    assert_eq!(
        f.call("GET", "/v1/revocations", Some(&token), None)
            .await
            .status,
        200
    );
    f.call(
        "POST",
        "/v1/tokens",
        Some(&f.admin),
        Some(json!({"name": "x", "role": "root"})),
    )
    .await
    .problem(422, "invalid");
    f.call(
        "POST",
        "/v1/tokens",
        Some(&f.admin),
        Some(json!({"name": "x", "role": "admin", "ttl_seconds": 0})),
    )
    .await
    .problem(422, "invalid");
    let r = f
        .call("DELETE", &format!("/v1/tokens/{id}"), Some(&f.admin), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    f.call("GET", "/v1/revocations", Some(&token), None)
        .await
        .problem(401, "unauthenticated");
    f.call(
        "DELETE",
        "/v1/tokens/0000000000000000",
        Some(&f.admin),
        None,
    )
    .await
    .problem(404, "not-found");
}

async fn names_and_reasons_that_would_display_as_other_text_are_refused_and_audited(f: Fixture) {
    // "adm\u{202e}nimda" shows as "admadmin" reversed: a token name that lies to the
    // operator who later reads the list or the audit log.
    for name in ["adm\u{202e}nimda", "ci\u{200b}", "a\u{2028}b"] {
        f.call(
            "POST",
            "/v1/tokens",
            Some(&f.admin),
            Some(json!({"name": name, "role": "operator", "ttl_seconds": 60})),
        )
        .await
        .problem(422, "invalid");
    }
    let list = f.call("GET", "/v1/tokens", Some(&f.auditor), None).await;
    assert_eq!(
        list.json().as_array().map(Vec::len),
        Some(3),
        "none created"
    );
    f.call(
        "POST",
        "/v1/revocations",
        Some(&f.operator),
        Some(json!({"kind": "spiffe_id", "spiffe_id": "spiffe://acme.test/pe/echo-2", "reason": "lost\u{2066}"})),
    )
    .await
    .problem(422, "invalid");
    let list = f
        .call("GET", "/v1/revocations", Some(&f.auditor), None)
        .await;
    assert_eq!(list.json(), json!([]), "nothing revoked");
    let refused = f.audit("admin:token.create").await;
    assert_eq!(refused.len(), 3, "each refusal is audited");
    for entry in &refused {
        assert_ne!(entry.record.outcome.to_string(), "ok");
        let detail = entry.record.detail.as_deref().unwrap_or("");
        assert!(
            !detail.chars().any(identity::text::is_invisible),
            "{detail:?}"
        );
    }
    assert_eq!(f.audit("admin:revoke").await.len(), 1);
}

async fn failed_token_attempts_are_limited_per_address(f: Fixture) {
    let from = |ip: [u8; 4], token: &str| {
        let mut r = Request::builder()
            .uri("/v1/revocations")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("a request");
        r.extensions_mut().insert(crate::auth::RemoteAddr(
            (std::net::Ipv4Addr::from(ip), 40000).into(),
        ));
        r
    };
    // A known token id with guessed secrets: each costs an argon2id verification, up to
    // the limit.
    let id = &f.operator[4..20];
    let guess = format!("rsp_{id}_{}", "A".repeat(43));
    let attacker = [192, 0, 2, 7];
    for _ in 0..crate::auth::FAILURES_PER_IP {
        let r = f.send(from(attacker, &guess)).await;
        r.problem(401, "unauthenticated");
        assert!(r.text.contains("bearer token refused"), "{}", r.text);
    }
    // Then refused unverified, even the right token, from that address for the window...
    let r = f.send(from(attacker, &f.operator)).await;
    r.problem(401, "unauthenticated");
    assert!(
        r.text.contains("too many failed token attempts"),
        "{}",
        r.text
    );
    // ...not from another.
    assert_eq!(f.send(from([192, 0, 2, 8], &f.operator)).await.status, 200);
    // A token verified before (cached) still passes from the blocked address.
    assert_eq!(f.send(from(attacker, &f.operator)).await.status, 200);
}

async fn grants_are_stored_pushed_to_the_registrar_and_deleted(f: Fixture) {
    let grant = json!({"identity": "spiffe://acme.test/pe/*", "namespace": "default", "pools": "echo", "actions": ["register"]});
    let r = f
        .call("POST", "/v1/grants", Some(&f.admin), Some(grant.clone()))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json()["id"].as_i64().expect("an id");
    assert_eq!(r.json()["actions"], json!(["register"]));
    f.call("POST", "/v1/grants", Some(&f.admin), Some(grant))
        .await
        .problem(409, "conflict");
    f.call("POST", "/v1/grants", Some(&f.admin), Some(json!({"identity": "spiffe://acme.test/pe/*", "namespace": "default", "pools": "*", "actions": ["fly"]})))
        .await
        .problem(422, "invalid");
    f.call("POST", "/v1/grants", Some(&f.admin), Some(json!({"identity": "https://x", "namespace": "default", "pools": "*", "actions": ["peer"]})))
        .await
        .problem(422, "invalid");
    // A pool pattern with a control or invisible character (schemathesis found ESC
    // accepted): refused, nothing stored.
    for pools in ["\u{1b}", "echo\u{202e}*", "a\tb"] {
        f.call("POST", "/v1/grants", Some(&f.admin), Some(json!({"identity": "spiffe://acme.test/pe/*", "namespace": "default", "pools": pools, "actions": ["register"]})))
            .await
            .problem(422, "invalid");
    }
    assert_eq!(
        f.call("GET", &format!("/v1/grants/{id}"), Some(&f.auditor), None)
            .await
            .status,
        200
    );
    assert_eq!(
        f.call("GET", "/v1/grants", Some(&f.admin), None)
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        f.call("DELETE", &format!("/v1/grants/{id}"), Some(&f.admin), None)
            .await
            .status,
        204
    );
    f.call("GET", &format!("/v1/grants/{id}"), Some(&f.admin), None)
        .await
        .problem(404, "not-found");
    f.call("GET", "/v1/grants/abc", Some(&f.admin), None)
        .await
        .problem(404, "not-found");
    assert_eq!(
        f.registrar.calls(),
        vec!["set_grants 1".to_owned(), "set_grants 0".to_owned()]
    );
}

async fn grant_label_rules_are_checked_stored_and_pushed(f: Fixture) {
    let post = |body: Value| f.call("POST", "/v1/grants", Some(&f.admin), Some(body));
    let r = post(json!({"identity": "spiffe://acme.test/pe/eu-*", "namespace": "default", "pools": "web", "actions": ["register"], "labels": ["region=eu-west", "zone=eu-west-*"]})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.json()["labels"],
        json!(["region=eu-west", "zone=eu-west-*"])
    );
    let id = r.json()["id"].as_i64().expect("an id");
    // `[]`: no label at all; absent: any (null when read back).
    let r = post(json!({"identity": "spiffe://acme.test/pe/plain-*", "namespace": "default", "pools": "web", "actions": ["register"], "labels": []})).await;
    assert_eq!(r.json()["labels"], json!([]), "{}", r.text);
    let r = post(json!({"identity": "spiffe://acme.test/pe/*", "namespace": "default", "pools": "db", "actions": ["register"]})).await;
    assert_eq!(r.json()["labels"], Value::Null, "{}", r.text);
    // Read back from the store as written.
    let got = f
        .call("GET", &format!("/v1/grants/{id}"), Some(&f.auditor), None)
        .await;
    assert_eq!(
        got.json()["labels"],
        json!(["region=eu-west", "zone=eu-west-*"])
    );
    // Malformed rules, too many, a rule twice, not a list: each refused with a problem, nothing stored, the refusal audited.
    let many: Vec<String> = (0..=identity::MAX_LABEL_RULES)
        .map(|i| format!("k{i}=*"))
        .collect();
    for labels in [
        json!(["region"]),
        json!(["=eu"]),
        json!(["ré gion=eu"]),
        json!([format!("k={}", "v".repeat(65))]),
        json!(["a=b", "a=b"]),
        json!(many),
        json!("region=eu"),
    ] {
        post(json!({"identity": "spiffe://acme.test/pe/x", "namespace": "default", "pools": "web", "actions": ["register"], "labels": labels}))
            .await
            .problem(422, "invalid");
    }
    assert_eq!(
        f.call("GET", "/v1/grants", Some(&f.admin), None)
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    let created = f.audit("admin:grant.create").await;
    assert_eq!(
        created
            .iter()
            .filter(|e| e.record.outcome.to_string() == "ok")
            .count(),
        3
    );
    assert!(
        created
            .iter()
            .filter(|e| e.record.outcome.to_string() != "ok")
            .count()
            >= 6,
        "every refused grant whose body parsed is audited: {created:?}"
    );
    assert!(created.iter().any(|e| {
        e.record
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("region=eu-west"))
    }));
    // The registrar got the rules with each change.
    assert_eq!(
        f.registrar.calls().last().map(String::as_str),
        Some("set_grants 3")
    );
    // The OpenAPI document states what is refused: a set of at most 32 patterned rules.
    let doc = f.call("GET", "/v1/openapi.json", None, None).await.json();
    let labels = &doc["components"]["schemas"]["NewGrant"]["properties"]["labels"];
    assert_eq!(labels["uniqueItems"], true, "{labels}");
    assert_eq!(labels["maxItems"], 32, "{labels}");
    assert_eq!(
        labels["items"]["$ref"], "#/components/schemas/LabelRuleText",
        "{labels}"
    );
}

async fn an_admin_certificate_takes_its_role_from_the_grants(f: Fixture) {
    let leaf = f.ca.leaf("admin/ops").issue();
    let peer = Peer::from_certificate(&leaf.chain[0]).expect("a peer");
    let get = || {
        let mut request = Request::builder()
            .uri("/v1/grants")
            .body(Body::empty())
            .expect("a request");
        request.extensions_mut().insert(peer.clone());
        request
    };
    f.send(get()).await.problem(403, "forbidden");
    let r = f
        .call("POST", "/v1/grants", Some(&f.admin), Some(json!({"identity": "spiffe://acme.test/admin/ops", "namespace": "*", "pools": "*", "actions": ["admin:read"]})))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(f.send(get()).await.status, 200);
    let mut post = Request::builder()
        .method("POST")
        .uri("/v1/namespaces")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"name":"x"}"#))
        .expect("a request");
    post.extensions_mut().insert(peer.clone());
    f.send(post).await.problem(403, "forbidden");
    let refused = f.audit("admin:request").await;
    assert!(
        refused
            .iter()
            .all(|e| e.record.actor.as_ref() == Some(peer.id()))
    );
    assert!(
        refused
            .iter()
            .all(|e| e.record.serial.as_ref() == Some(peer.serial()))
    );
}

async fn trust_domains_are_added_from_a_bundle_applied_at_once_and_removed(f: Fixture) {
    let partner = TestCa::new("partner.test");
    let bundle = format!("trust-domain: partner.test\n{}", partner.root_pem());
    let r = f
        .pem("POST", "/v1/trust-domains", &f.admin, bundle.clone())
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["roots"], 1);
    assert!(f.trust.is_trusted(partner.domain()));
    f.pem("POST", "/v1/trust-domains", &f.admin, bundle)
        .await
        .problem(409, "conflict");
    f.pem(
        "POST",
        "/v1/trust-domains?trust_domain=other.test",
        &f.admin,
        "garbage".into(),
    )
    .await
    .problem(422, "invalid");
    f.pem("POST", "/v1/trust-domains", &f.admin, f.ca.root_pem())
        .await
        .problem(422, "invalid");
    f.call("POST", "/v1/trust-domains", Some(&f.admin), Some(json!({})))
        .await
        .problem(415, "unsupported-media-type");
    let list = f
        .call("GET", "/v1/trust-domains", Some(&f.auditor), None)
        .await;
    let names: Vec<_> = list
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|d| d["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("acme.test"), json!("partner.test")]);
    f.call(
        "DELETE",
        "/v1/trust-domains/acme.test",
        Some(&f.admin),
        None,
    )
    .await
    .problem(409, "conflict");
    assert_eq!(
        f.call(
            "DELETE",
            "/v1/trust-domains/partner.test",
            Some(&f.admin),
            None
        )
        .await
        .status,
        204
    );
    assert!(!f.trust.is_trusted(partner.domain()));
    f.call(
        "GET",
        "/v1/trust-domains/partner.test",
        Some(&f.admin),
        None,
    )
    .await
    .problem(404, "not-found");
    assert_eq!(
        f.registrar.calls(),
        vec!["domain_removed partner.test".to_owned()]
    );
}

async fn revocations_apply_to_the_trust_store_before_the_answer(f: Fixture) {
    let pe = f.ca.leaf("pe/echo-1").issue();
    let r = f
        .call("POST", "/v1/revocations", Some(&f.operator), Some(json!({"kind": "spiffe_id", "spiffe_id": "spiffe://acme.test/pe/echo-2", "reason": "lost"})))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["kind"], "spiffe_id");
    let id: identity::SpiffeId = "spiffe://acme.test/pe/echo-2".parse().expect("valid");
    assert!(
        f.trust.allow_identity(&id).expect("lifted"),
        "it was denied"
    );
    let r = f
        .call("POST", "/v1/revocations", Some(&f.operator), Some(json!({"kind": "serial", "trust_domain": "acme.test", "serial": pe.serial.to_hex()})))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        f.trust
            .allow_serial(f.ca.domain(), &pe.serial)
            .expect("lifted")
    );
    f.call(
        "POST",
        "/v1/revocations",
        Some(&f.operator),
        Some(json!({"kind": "serial", "trust_domain": "acme.test", "serial": pe.serial.to_hex()})),
    )
    .await
    .problem(409, "conflict");
    f.call(
        "POST",
        "/v1/revocations",
        Some(&f.operator),
        Some(json!({"kind": "trust_domain", "trust_domain": "acme.test"})),
    )
    .await
    .problem(422, "invalid");
    f.call(
        "POST",
        "/v1/revocations",
        Some(&f.operator),
        Some(json!({"kind": "serial", "trust_domain": "acme.test", "serial": "xyz"})),
    )
    .await
    .problem(422, "invalid");
    // A revoked federated domain is gone and cannot come back.
    let partner = TestCa::new("partner.test");
    let bundle = format!("trust-domain: partner.test\n{}", partner.root_pem());
    assert_eq!(
        f.pem("POST", "/v1/trust-domains", &f.admin, bundle.clone())
            .await
            .status,
        201
    );
    let r = f
        .call(
            "POST",
            "/v1/revocations",
            Some(&f.admin),
            Some(json!({"kind": "trust_domain", "trust_domain": "partner.test"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(!f.trust.is_trusted(partner.domain()));
    f.pem("POST", "/v1/trust-domains", &f.admin, bundle)
        .await
        .problem(409, "conflict");
    let list = f
        .call("GET", "/v1/revocations", Some(&f.auditor), None)
        .await;
    assert_eq!(list.json().as_array().map(Vec::len), Some(3));
    let calls = f.registrar.calls();
    assert!(
        calls.contains(&"revoke identity spiffe://acme.test/pe/echo-2".to_owned()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"revoke trust domain partner.test".to_owned()),
        "{calls:?}"
    );
    // CRLs: stored, applied, their serials revoked in the registrar.
    let crl = pem("X509 CRL", &f.ca.crl(&[&pe.serial]));
    let r = f
        .pem("PUT", "/v1/revocations/crls/acme.test", &f.operator, crl)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["serials"], 1);
    assert!(
        f.registrar
            .calls()
            .contains(&format!("revoke serial {} of acme.test", pe.serial))
    );
    f.pem(
        "PUT",
        "/v1/revocations/crls/acme.test",
        &f.operator,
        "no crl".into(),
    )
    .await
    .problem(422, "invalid");
    f.pem(
        "PUT",
        "/v1/revocations/crls/nowhere.test",
        &f.operator,
        pem("X509 CRL", &f.ca.crl(&[])),
    )
    .await
    .problem(404, "not-found");
    f.pem(
        "PUT",
        "/v1/revocations/crls/acme.test",
        &f.auditor,
        "x".into(),
    )
    .await
    .problem(403, "forbidden");
}

/// Issue 17: a CRL is enforced only if one of the domain's CAs signed it. One from another
/// CA (whose issuer names no root, so the trust store alone would have taken it) is
/// refused with a problem and changes nothing; an intermediate's is taken when its
/// certificate, chaining to the root, comes along.
async fn a_crl_not_signed_by_the_domains_ca_is_refused(f: Fixture) {
    let pe = f.ca.leaf("pe/echo-1").issue();
    let other = TestCa::new("other.test");
    let forged = pem("X509 CRL", &other.crl(&[&pe.serial]));
    let r = f
        .pem("PUT", "/v1/revocations/crls/acme.test", &f.operator, forged)
        .await;
    r.problem(422, "invalid");
    assert!(
        r.text.contains(
            "signed by neither a root nor a known intermediate CA of trust domain acme.test"
        ),
        "{}",
        r.text
    );
    assert!(f.registrar.calls().iter().all(|c| !c.starts_with("revoke")));
    // Nothing applied: the leaf still handshakes with a store built from the same state.
    let probe = Peer::from_certificate(&pe.chain[0]).expect("peer");
    assert!(f.trust.register_connection(&probe).is_ok());

    let inter = f.ca.intermediate();
    let leaf = inter.leaf("pe/echo-2").issue();
    let crls = format!(
        "{}{}",
        pem("X509 CRL", &f.ca.crl(&[])),
        pem("X509 CRL", &inter.crl(&[&leaf.serial]))
    );
    f.pem(
        "PUT",
        "/v1/revocations/crls/acme.test",
        &f.operator,
        crls.clone(),
    )
    .await
    .problem(422, "invalid");
    let with_cert = format!("{crls}{}", pem("CERTIFICATE", inter.cert()));
    let r = f
        .pem(
            "PUT",
            "/v1/revocations/crls/acme.test",
            &f.operator,
            with_cert,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["serials"], 1);
    // The refusals are audited.
    let audit = f
        .call(
            "GET",
            "/v1/audit?action=admin:crl.set",
            Some(&f.auditor),
            None,
        )
        .await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    let outcomes: Vec<String> = audit.json()["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["outcome"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert_eq!(
        outcomes.iter().filter(|o| *o != "ok").count(),
        2,
        "{outcomes:?}"
    );
}

async fn the_audit_log_is_filtered_paged_by_cursor_and_verified(f: Fixture) {
    f.create_namespaces(&["a", "b", "c"]).await;
    let page = f
        .call(
            "GET",
            "/v1/audit?action=admin:namespace.create&limit=2&order=oldest",
            Some(&f.auditor),
            None,
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.text);
    let v = page.json();
    assert_eq!(v["events"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["events"][0]["namespace"], "a");
    let cursor = v["next_cursor"].as_u64().expect("a next page");
    let next = f
        .call(
            "GET",
            &format!(
                "/v1/audit?action=admin:namespace.create&limit=2&order=oldest&cursor={cursor}"
            ),
            Some(&f.auditor),
            None,
        )
        .await
        .json();
    assert_eq!(next["events"][0]["namespace"], "c");
    assert_eq!(next["next_cursor"], Value::Null);
    let admin_id = &f.admin[4..20];
    let mine = f
        .call(
            "GET",
            &format!("/v1/audit?identity=token:{admin_id}&namespace=b"),
            Some(&f.auditor),
            None,
        )
        .await
        .json();
    assert_eq!(mine["events"].as_array().map(Vec::len), Some(1));
    let none = f
        .call(
            "GET",
            &format!("/v1/audit?since_ms={}", NOW + 1),
            Some(&f.auditor),
            None,
        )
        .await
        .json();
    assert_eq!(none["events"], json!([]));
    f.call("GET", "/v1/audit?identity=nobody", Some(&f.auditor), None)
        .await
        .problem(422, "invalid");
    // A namespace or pool handle no record can hold is refused, saying why, not answered
    // with an empty page (issue 24: the filters are typed).
    for (query, says) in [
        (
            "namespace=UPPER",
            "invalid namespace \"UPPER\": only a-z, 0-9, '-' and '.'",
        ),
        (
            "namespace=",
            "invalid namespace \"\": must be 1 to 63 bytes",
        ),
        (
            &*format!("namespace={}", "a".repeat(64)),
            "must be 1 to 63 bytes",
        ),
        (
            &*format!("pool={}", "p".repeat(33)),
            "a pool handle is 1 to 32 bytes",
        ),
        ("pool=hex:", "a pool handle is 1 to 32 bytes"),
        // An action no record can hold; a NUL byte also reached PostgreSQL, which refuses
        // it in text (schemathesis found a 500 there).
        ("action=t%5E%00%C2%B6", "an action is 1 to 64 bytes"),
        ("action=Register", "an action is 1 to 64 bytes"),
        ("action=", "an action is 1 to 64 bytes"),
    ] {
        let r = f
            .call("GET", &format!("/v1/audit?{query}"), Some(&f.auditor), None)
            .await;
        r.problem(422, "invalid");
        assert!(
            r.json()["detail"]
                .as_str()
                .is_some_and(|d| d.contains(says)),
            "{query}: {}",
            r.text
        );
    }
    // At the limits, the same filters are valid (and match nothing here).
    for query in [
        format!("namespace={}", "a".repeat(63)),
        format!("pool={}", "p".repeat(32)),
    ] {
        let page = f
            .call("GET", &format!("/v1/audit?{query}"), Some(&f.auditor), None)
            .await
            .json();
        assert_eq!(page["events"], json!([]), "{query}");
    }
    let verify = f
        .call("GET", "/v1/audit/verify", Some(&f.auditor), None)
        .await
        .json();
    assert_eq!(verify["intact"], true);
    assert_eq!(verify["checked"], 3);
    assert_eq!(verify["head"].as_str().map(str::len), Some(64));
}

/// Issue 17: a CRL does not expire silently. `/metrics` says how long each domain's CRLs
/// stay current, and `/readyz` fails naming the cause once the local domain's has expired
/// (every handshake of its identities then fails closed).
async fn crl_expiry_shows_in_metrics_and_an_expired_local_crl_fails_readiness(f: Fixture) {
    let at = |secs_from_now: i64| {
        time::OffsetDateTime::from_unix_timestamp(NOW as i64 / 1000 + secs_from_now).expect("time")
    };
    f.trust
        .set_crls(
            f.ca.domain(),
            vec![f.ca.crl_dated(&[], at(-86_400), at(3 * 86_400))],
        )
        .expect("a CRL for 3 days");
    let m = f.call("GET", "/metrics", Some(&f.auditor), None).await;
    assert!(
        m.text
            .contains("\nrsp_crl_next_update_seconds{trust_domain=\"acme.test\"} 259200\n"),
        "{}",
        m.text
    );
    assert_eq!(f.call("GET", "/readyz", None, None).await.status, 200);
    f.trust
        .set_crls(
            f.ca.domain(),
            vec![f.ca.crl_dated(&[], at(-86_400), at(-3600))],
        )
        .expect("an expired CRL");
    let r = f.call("GET", "/readyz", None, None).await;
    r.problem(503, "unavailable");
    assert!(
        r.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("the CRL of trust domain acme.test expired 3600 s ago")),
        "{}",
        r.text
    );
    let m = f.call("GET", "/metrics", Some(&f.auditor), None).await;
    assert!(
        m.text
            .contains("rsp_crl_next_update_seconds{trust_domain=\"acme.test\"} -3600\n"),
        "{}",
        m.text
    );
}

async fn probes_metrics_and_pools(f: Fixture) {
    assert_eq!(
        f.call("GET", "/healthz", None, None).await.json(),
        json!({"status": "ok"})
    );
    assert_eq!(
        f.call("GET", "/readyz", None, None).await.json(),
        json!({"status": "ready", "store": "up"})
    );
    f.call("GET", "/metrics", None, None)
        .await
        .problem(401, "unauthenticated");
    let m = f.call("GET", "/metrics", Some(&f.auditor), None).await;
    assert!(m.content_type().starts_with("text/plain"));
    assert!(m.text.contains("\nrsp_connections 3\n"), "{}", m.text);
    assert!(
        m.text
            .contains("rsp_rejections_total{namespace=\"lab\",cause=\"0x000a\"} 2\n")
            && m.text
                .contains("rsp_rejections_total{namespace=\"lab\",cause=\"(other)\"} 1\n")
            && m.text
                .contains("\nrsp_registrations_total{namespace=\"lab\"} 4\n")
            && !m.text.contains("\nrsp_resolutions_total{")
            && m.text
                .contains("\nrsp_audit_commit_seconds_bucket{le=\"0.0005\"} 0\n")
            && m.text
                .contains("\nrsp_audit_commit_seconds_bucket{le=\"+Inf\"} 0\n"),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains("rsp_handshake_failures_total{listener=\"asap\",reason=\"untrusted\"} 1")
    );
    // Pools: declared limits, 404s (the live side is tested against enrpd).
    f.call("GET", "/v1/namespaces/default/pools", Some(&f.admin), None)
        .await
        .problem(404, "not-found");
    f.call(
        "POST",
        "/v1/namespaces",
        Some(&f.admin),
        Some(json!({"name": "default"})),
    )
    .await;
    let r = f
        .call(
            "PUT",
            "/v1/namespaces/default/pools/echo",
            Some(&f.operator),
            Some(json!({"policy": "round-robin", "max_pes": 3})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["declared"]["policy"], "round-robin");
    let list = f
        .call(
            "GET",
            "/v1/namespaces/default/pools",
            Some(&f.operator),
            None,
        )
        .await
        .json();
    assert_eq!(list[0]["handle"], "echo");
    f.call(
        "PUT",
        "/v1/namespaces/default/pools/echo",
        Some(&f.operator),
        Some(json!({"policy": "fastest"})),
    )
    .await
    .problem(422, "invalid");
    f.call(
        "PUT",
        &format!("/v1/namespaces/default/pools/{}", "x".repeat(33)),
        Some(&f.operator),
        Some(json!({})),
    )
    .await
    .problem(422, "invalid");
    f.call(
        "DELETE",
        "/v1/namespaces/default/pools/echo/pool-elements/0x1",
        Some(&f.operator),
        None,
    )
    .await
    .problem(404, "not-found");
    assert_eq!(
        f.call(
            "DELETE",
            "/v1/namespaces/default/pools/echo",
            Some(&f.operator),
            None
        )
        .await
        .status,
        204
    );
    f.call(
        "GET",
        "/v1/namespaces/default/pools/echo",
        Some(&f.operator),
        None,
    )
    .await
    .problem(404, "not-found");
    assert_eq!(
        f.call("GET", "/v1/peers", Some(&f.auditor), None)
            .await
            .json()["peers"],
        json!([])
    );
}

/// Issue 22 item 3: per peer (SPIFFE ID and Server ID), 1/0 for up and for checksum
/// agreement (a checksum not yet heard is no agreement), and seconds since last heard
/// (absent until heard).
async fn metrics_show_each_peers_state_checksum_agreement_and_silence(f: Fixture) {
    let peer = |id: &str, server_id: &str, state: &str, heard: Option<u64>, agree| PeerView {
        identity: id.into(),
        server_id: server_id.into(),
        state: state.into(),
        last_heard_ms: heard,
        checksum_match: agree,
        conflict: None,
    };
    *f.registrar.peers.lock().expect("not poisoned") = vec![
        peer(
            "spiffe://acme.test/registrar/b",
            "0x2",
            "active",
            Some(NOW - 1500),
            Some(true),
        ),
        peer(
            "spiffe://acme.test/registrar/c",
            "0x3",
            "active",
            Some(NOW - 30_000),
            Some(false),
        ),
        peer("spiffe://acme.test/registrar/d", "0x4", "dead", None, None),
    ];
    let m = f.call("GET", "/metrics", Some(&f.auditor), None).await;
    assert_eq!(m.status, 200);
    let key = |p: char| {
        format!(
            "{{peer=\"spiffe://acme.test/registrar/{p}\",server_id=\"0x{}\"}}",
            (p as u8 - b'a' + 1)
        )
    };
    for (name, p, value) in [
        ("rsp_peer_up", 'b', "1"),
        ("rsp_peer_up", 'c', "1"),
        ("rsp_peer_up", 'd', "0"),
        ("rsp_peer_checksum_agreement", 'b', "1"),
        ("rsp_peer_checksum_agreement", 'c', "0"),
        ("rsp_peer_checksum_agreement", 'd', "0"),
        ("rsp_peer_last_heard_seconds", 'b', "1"),
        ("rsp_peer_last_heard_seconds", 'c', "30"),
    ] {
        let line = format!("\n{name}{} {value}\n", key(p));
        assert!(m.text.contains(&line), "no {line:?} in {}", m.text);
    }
    assert!(
        !m.text
            .contains("rsp_peer_last_heard_seconds{peer=\"spiffe://acme.test/registrar/d\""),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains("# TYPE rsp_peer_checksum_agreement gauge\n")
    );
    // Without a token: nothing about peers.
    f.call("GET", "/metrics", None, None)
        .await
        .problem(401, "unauthenticated");
}

/// Issue 19 item 4: while the registrar's store does not answer, an admin write is
/// refused with 503 at once (before the token, which lives in the store, is checked),
/// reads of the registrar go on, `/readyz` stays ready and says `"store": "down"`, and
/// `rsp_store_up` is 0.
async fn while_the_store_is_down_writes_are_503_and_the_probes_say_so(f: Fixture) {
    f.registrar
        .store_down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    f.call(
        "POST",
        "/v1/namespaces",
        Some(&f.admin),
        Some(json!({"name": "during"})),
    )
    .await
    .problem(503, "unavailable");
    // Also without a credential: nothing can be checked or written.
    f.call("DELETE", "/v1/tokens/x", None, None)
        .await
        .problem(503, "unavailable");
    // The answer comes before the body is read; the rest of the body is read first,
    // or an HTTP/2 client still sending it sees a reset stream instead of the 503
    // (curl: "(92) Stream error in the HTTP/2 framing layer").
    let (body, ended) = crate::early_answer::watched::body(r#"{"name":"during"}"#);
    let request = Request::post("/v1/namespaces")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.admin))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("a request");
    f.send(request).await.problem(503, "unavailable");
    assert!(crate::early_answer::watched::ended(&ended));
    let ready = f.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json(), json!({"status": "ready", "store": "down"}));
    let m = f.call("GET", "/metrics", Some(&f.auditor), None).await;
    assert!(m.text.contains("\nrsp_store_up 0\n"), "{}", m.text);
    f.registrar
        .store_down
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let created = f
        .call(
            "POST",
            "/v1/namespaces",
            Some(&f.admin),
            Some(json!({"name": "after"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let m = f.call("GET", "/metrics", Some(&f.auditor), None).await;
    assert!(m.text.contains("\nrsp_store_up 1\n"), "{}", m.text);
}

/// Issue 19 item 5: a registrar says whether its control plane is its own (SQLite) or
/// shared by a fleet (PostgreSQL), in `GET /v1/peers` and in `/metrics`, so that nobody
/// mistakes registrars peered over ENRP, each on its own SQLite file, for a fleet.
async fn peers_and_metrics_say_whether_the_control_plane_is_shared(f: Fixture) {
    let (plane, shared) = match f.store.backend() {
        db::Backend::Postgres => ("shared", 1),
        _ => ("local", 0),
    };
    let peers = f.call("GET", "/v1/peers", Some(&f.auditor), None).await;
    assert_eq!(peers.status, 200);
    assert_eq!(
        peers.json(),
        json!({"control_plane": plane, "peers": []}),
        "on {:?}",
        f.store.backend()
    );
    let m = f.call("GET", "/metrics", Some(&f.auditor), None).await;
    assert!(
        m.text
            .contains(&format!("\nrsp_control_plane_shared {shared}\n")),
        "{}",
        m.text
    );
}

async fn the_openapi_document_lists_every_route_with_its_errors(f: Fixture) {
    let r = f.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(
        doc,
        serde_json::to_value(crate::openapi_document()).expect("json")
    );
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );
    let expected = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/v1/openapi.json"),
        ("get", "/v1/namespaces"),
        ("post", "/v1/namespaces"),
        ("get", "/v1/namespaces/{namespace}"),
        ("delete", "/v1/namespaces/{namespace}"),
        ("get", "/v1/namespaces/{namespace}/pools"),
        ("get", "/v1/namespaces/{namespace}/pools/{pool}"),
        ("put", "/v1/namespaces/{namespace}/pools/{pool}"),
        ("delete", "/v1/namespaces/{namespace}/pools/{pool}"),
        (
            "get",
            "/v1/namespaces/{namespace}/pools/{pool}/pool-elements",
        ),
        (
            "delete",
            "/v1/namespaces/{namespace}/pools/{pool}/pool-elements/{pe_id}",
        ),
        (
            "put",
            "/v1/namespaces/{namespace}/pools/{pool}/pool-elements/{pe_id}/drain",
        ),
        (
            "delete",
            "/v1/namespaces/{namespace}/pools/{pool}/pool-elements/{pe_id}/drain",
        ),
        ("get", "/v1/trust-domains"),
        ("post", "/v1/trust-domains"),
        ("get", "/v1/trust-domains/{name}"),
        ("delete", "/v1/trust-domains/{name}"),
        ("get", "/v1/grants"),
        ("post", "/v1/grants"),
        ("get", "/v1/grants/{id}"),
        ("delete", "/v1/grants/{id}"),
        ("get", "/v1/default-namespaces"),
        ("post", "/v1/default-namespaces"),
        ("get", "/v1/default-namespaces/{id}"),
        ("delete", "/v1/default-namespaces/{id}"),
        ("get", "/v1/revocations"),
        ("post", "/v1/revocations"),
        ("put", "/v1/revocations/crls/{trust_domain}"),
        ("get", "/v1/tokens"),
        ("post", "/v1/tokens"),
        ("delete", "/v1/tokens/{id}"),
        ("get", "/v1/peers"),
        ("get", "/v1/audit"),
        ("get", "/v1/audit/verify"),
        ("get", "/v1/audit/archives"),
        ("post", "/v1/audit/archives"),
        ("get", "/v1/audit/archives/{name}"),
        ("get", "/v1/watch/pools"),
        ("get", "/v1/watch/audit"),
    ];
    let mut documented = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            documented += 1;
            assert!(
                expected.contains(&(method.as_str(), path.as_str())),
                "{method} {path} is not expected"
            );
            let public = ["/healthz", "/readyz", "/v1/openapi.json"].contains(&path.as_str());
            let responses = op["responses"].as_object().expect("responses");
            assert_eq!(responses.contains_key("401"), !public, "{method} {path}");
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        response["content"].get(crate::PROBLEM_JSON).is_some(),
                        "{method} {path} {status}"
                    );
                }
            }
            // Every route answers as documented: call it unauthenticated, expect 401.
            if !public {
                let uri = path
                    .replace("{namespace}", "default")
                    .replace("{pool}", "echo")
                    .replace("{pe_id}", "0x1")
                    .replace("{name}", "acme.test")
                    .replace("{trust_domain}", "acme.test")
                    .replace("{id}", "1");
                let r = f.call(&method.to_uppercase(), &uri, None, None).await;
                assert_eq!(r.status, 401, "{method} {uri}: {}", r.text);
            }
        }
    }
    assert_eq!(documented, expected.len());
}

/// [`crate::serve`] on a loopback port, and a client that trusts it.
struct Https {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    connector: tokio_rustls::TlsConnector,
}

impl Https {
    async fn start(f: &Fixture, options: crate::ServeOptions) -> Self {
        let server_leaf = f.ca.leaf("registrar/enrp-1").dns("localhost").issue();
        let mut config = rustls::ServerConfig::builder_with_provider(trust::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(server_leaf.chain.clone(), server_leaf.key_der())
            .expect("a server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("an address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::serve(
            listener,
            move || config.clone(),
            f.router.clone(),
            options,
            async {
                let _ = stopped.await;
            },
        ));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(f.ca.root().clone()).expect("a root");
        let client = rustls::ClientConfig::builder_with_provider(trust::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        Self {
            addr,
            stop,
            server,
            connector,
        }
    }

    /// A TLS connection from `from` (any loopback address: 127.0.0.2 is another host).
    async fn connect(
        &self,
        from: std::net::Ipv4Addr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((from, 0).into())?;
        let tcp = socket.connect(self.addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("a name");
        self.connector.connect(name, tcp).await
    }

    /// `GET /healthz` over HTTP/1.1 from `from`: the status line, or the error.
    async fn healthz(&self, from: std::net::Ipv4Addr) -> Result<String, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = self.connect(from).await.map_err(|e| e.to_string())?;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tls.read_to_string(&mut answer),
        )
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
        Ok(answer)
    }

    async fn stop(self) {
        self.stop.send(()).expect("the server listens");
        self.server.await.expect("the server stops");
    }
}

#[tokio::test]
async fn serve_speaks_https_and_counts_failed_handshakes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fixture().await;
    let counters = Arc::new(crate::ServeCounters::default());
    let mut options = crate::ServeOptions::new(counters.clone());
    options.handshake_timeout = std::time::Duration::from_secs(2);
    let https = Https::start(&f, options).await;
    // Not TLS: counted, not served.
    let mut plain = tokio::net::TcpStream::connect(https.addr)
        .await
        .expect("connected");
    plain
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("written");
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink).await;
    // TLS with HTTP/1.1.
    let answer = https
        .healthz(std::net::Ipv4Addr::LOCALHOST)
        .await
        .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");
    let failures = counters.snapshot().handshake_failures;
    assert_eq!(
        failures.iter().map(|(_, n)| n).sum::<u64>(),
        1,
        "{failures:?}"
    );
    https.stop().await;
    let _ = &f.trust;
}

#[tokio::test]
async fn silent_connections_are_capped_per_address_and_closed_before_a_first_request() {
    use tokio::io::AsyncReadExt;
    let f = fixture().await;
    let counters = Arc::new(crate::ServeCounters::default());
    let mut options = crate::ServeOptions::new(counters.clone());
    // Small limits, same shape as the defaults (256 in all, 32 per address, 10 s).
    options.max_connections = 16;
    options.max_connections_per_ip = 8;
    options.first_request_timeout = std::time::Duration::from_secs(2);
    let https = Https::start(&f, options).await;
    let attacker = std::net::Ipv4Addr::LOCALHOST;
    let operator = std::net::Ipv4Addr::new(127, 0, 0, 2);
    // Twice the global cap of silent TLS connections from one address: only its share
    // gets in, the rest are closed at once.
    let mut silent = Vec::new();
    for _ in 0..32 {
        // Bounded: without the per-address cap, the ones past the global cap would wait.
        let wait = std::time::Duration::from_millis(300);
        if let Ok(Ok(tls)) = tokio::time::timeout(wait, https.connect(attacker)).await {
            silent.push(tls);
        }
    }
    let started = tokio::time::Instant::now();
    // The operator, from another address, is served at once.
    let answer = https.healthz(operator).await.expect("served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "served before the silent ones time out"
    );
    let capped = counters
        .snapshot()
        .handshake_failures
        .iter()
        .find(|(reason, _)| *reason == "per-ip-cap")
        .map_or(0, |(_, n)| *n);
    assert!(capped >= 24, "{capped} refused at the per-address cap");
    // The silent ones are closed once the first-request timeout passes...
    let mut byte = [0u8; 1];
    let mut closed = 0;
    for tls in &mut silent {
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, silent.len(), "every silent connection closed");
    // ...and that address is served again.
    let answer = https.healthz(attacker).await.expect("served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    https.stop().await;
}

async fn json_bodies_are_objects_and_whole_numbers_may_have_a_zero_fraction(f: Fixture) {
    let r = f
        .call(
            "POST",
            "/v1/namespaces",
            Some(&f.admin),
            Some(json!({"name": "lab"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let pool = "/v1/namespaces/lab/pools/echo";
    // serde reads a struct from an array of its fields too; the document says object.
    for body in [json!([null, null]), json!(null), json!("x"), json!(7)] {
        f.call("PUT", pool, Some(&f.admin), Some(body))
            .await
            .problem(422, "invalid");
    }
    for max_pes in [
        json!(3.5),
        json!(-1.0),
        json!(4_294_967_296_u64),
        json!("3"),
    ] {
        f.call(
            "PUT",
            pool,
            Some(&f.admin),
            Some(json!({ "max_pes": max_pes })),
        )
        .await
        .problem(422, "invalid");
    }
    assert!(
        f.audit("admin:pool.declare").await.is_empty(),
        "nothing was declared"
    );
    // JSON Schema's `integer` is any number without a fraction: 3.0 is 3.
    let r = f
        .call("PUT", pool, Some(&f.admin), Some(json!({"max_pes": 3.0})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["declared"]["max_pes"], 3);
    // The whole u32 range, which the document states (not `int32`).
    let r = f
        .call(
            "PUT",
            pool,
            Some(&f.admin),
            Some(json!({"max_pes": 4_294_967_295_u64})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let doc = serde_json::to_value(crate::openapi_document()).expect("json");
    let max_pes = &doc["components"]["schemas"]["PoolLimits"]["properties"]["max_pes"];
    assert_ne!(max_pes["format"], "int32", "{max_pes}");
    assert_eq!(max_pes["maximum"], 4_294_967_295_u64, "{max_pes}");
    let token = json!({"name": "t", "role": "auditor", "ttl_seconds": 60.0});
    let r = f
        .call("POST", "/v1/tokens", Some(&f.admin), Some(token))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["expires_ms"], NOW + 60_000);
    // An unknown field in a revocation is refused, and the document says so.
    let body = json!({"kind": "spiffe_id", "spiffe_id": "spiffe://acme.test/pe/x", "s": 1});
    f.call("POST", "/v1/revocations", Some(&f.admin), Some(body))
        .await
        .problem(422, "invalid");
    for variant in doc["components"]["schemas"]["NewRevocation"]["oneOf"]
        .as_array()
        .expect("variants")
    {
        assert_eq!(variant["additionalProperties"], false, "{variant}");
    }
}

#[path = "tests_archives.rs"]
mod archives;

#[path = "tests_chains.rs"]
mod chains;

#[path = "tests_watch.rs"]
mod watch;

async fn drains_need_the_operator_role_a_deadline_in_range_and_are_audited(f: Fixture) {
    let route = "/v1/namespaces/default/pools/echo/pool-elements/0x7/drain";
    let made = f
        .call(
            "POST",
            "/v1/namespaces",
            Some(&f.admin),
            Some(json!({"name": "default"})),
        )
        .await;
    assert_eq!(made.status, 201);
    // An auditor may read, not drain; nobody without a token may either.
    f.call("PUT", route, Some(&f.auditor), None)
        .await
        .problem(403, "forbidden");
    f.call("DELETE", route, Some(&f.auditor), None)
        .await
        .problem(403, "forbidden");
    assert_eq!(f.call("PUT", route, None, None).await.status, 401);
    // A wrong namespace: 404, refused before the registrar hears of it, audited.
    f.call(
        "PUT",
        "/v1/namespaces/nowhere/pools/echo/pool-elements/0x7/drain",
        Some(&f.operator),
        None,
    )
    .await
    .problem(404, "not-found");
    // A deadline out of range: 422, the registrar not asked.
    for secs in [0, 86_401] {
        f.call(
            "PUT",
            route,
            Some(&f.operator),
            Some(json!({"deadline_secs": secs})),
        )
        .await
        .problem(422, "invalid");
    }
    f.call(
        "PUT",
        route,
        Some(&f.operator),
        Some(json!({"deadline": 5})),
    )
    .await
    .problem(422, "invalid");
    assert!(f.registrar.calls().iter().all(|c| !c.starts_with("drain")));
    // Well formed, no body: the default deadline goes to the registrar, whose answer
    // (no such PE here) is the caller's.
    f.call("PUT", route, Some(&f.operator), None)
        .await
        .problem(404, "not-found");
    f.call("DELETE", route, Some(&f.operator), None)
        .await
        .problem(404, "not-found");
    let calls: Vec<String> = f
        .registrar
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("drain"))
        .collect();
    let deadline = NOW + u64::from(crate::routes::pools::DEFAULT_DRAIN_SECS) * 1000;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls[0].ends_with(&format!("until Some({deadline})")),
        "{calls:?}"
    );
    assert!(calls[1].ends_with("until None"), "{calls:?}");
    // Every refusal is in the audit log: the roles' as requests, the rest as drains.
    let drains = f.audit("admin:pe.drain").await;
    assert_eq!(drains.len(), 4, "{drains:?}");
    assert!(drains.iter().all(|e| e.record.outcome.to_string() != "ok"));
    assert_eq!(f.audit("admin:pe.undrain").await.len(), 1);
    // Two forbidden, one without credentials.
    assert_eq!(f.audit("admin:request").await.len(), 3);
}

/// The dashboard's files are served without credentials (they hold no data), with their
/// media types, a strict CSP and nosniff; they are not in the OpenAPI document; and the
/// data they call for still needs a credential.
#[tokio::test]
async fn the_dashboard_is_static_files_with_a_strict_policy_and_no_data() {
    let f = fixture().await;
    for (path, media, marker) in [
        (
            "/ui/",
            "text/html; charset=utf-8",
            "<script src=\"app.js\" defer>",
        ),
        ("/ui/app.css", "text/css; charset=utf-8", "--accent"),
        (
            "/ui/app.js",
            "text/javascript; charset=utf-8",
            "sessionStorage",
        ),
    ] {
        let r = f.call("GET", path, None, None).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.content_type(), media, "{path}");
        assert!(r.text.contains(marker), "{path}");
        let header = |name| r.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("x-content-type-options"), Some("nosniff"), "{path}");
        let csp = header("content-security-policy").expect("a CSP");
        assert!(csp.starts_with("default-src 'self';"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
    }
    // No inline script or style to allow: the page loads only its own files.
    let page = f.call("GET", "/ui/", None, None).await.text;
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "{page}"
    );
    // `/ui` sends the browser to `/ui/`; other names under it are not found.
    let r = f.call("GET", "/ui", None, None).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.headers.get(header::LOCATION).unwrap(), "/ui/");
    f.call("GET", "/ui/secret.json", None, None)
        .await
        .problem(404, "not-found");
    // Not part of the API's description (nor of schemathesis' runs against it).
    let doc = serde_json::to_string(&crate::openapi_document()).expect("json");
    assert!(!doc.contains("\"/ui"), "the document lists the dashboard");
    // The data behind the pages still needs a credential.
    f.call("GET", "/v1/namespaces", None, None)
        .await
        .problem(401, "unauthenticated");
}
