//! `/v1/audit/archives` (issue 18 item 5): an admin archives, admins and auditors list and
//! download, everyone else is refused and audited.

use super::*;

#[tokio::test]
async fn an_admin_archives_the_audit_log_and_others_are_refused_and_audited() {
    let f = fixture().await;
    // Some history: three namespaces created (each audited).
    f.create_namespaces(&["a", "b", "c"]).await;
    let body = json!({"before_seq": 3});

    // Operator and auditor tokens, and a certificate without an admin grant: 403, audited
    // with the caller, nothing archived.
    refused_without_the_admin_role(&f, &body).await;
    f.call("GET", "/v1/audit/archives", Some(&f.operator), None)
        .await
        .problem(403, "forbidden");
    let leaf = f.ca.leaf("pe/echo-1").issue();
    let peer = Peer::from_certificate(&leaf.chain[0]).expect("a peer");
    let mut post = Request::builder()
        .method("POST")
        .uri("/v1/audit/archives")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a request");
    post.extensions_mut().insert(peer.clone());
    f.send(post).await.problem(403, "forbidden");
    let refused = f.audit("admin:request").await;
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|e| e.record.outcome.to_string() == "forbidden")
    );
    assert!(
        refused
            .iter()
            .any(|e| e.record.actor.as_ref() == Some(peer.id()))
    );
    f.call("POST", "/v1/audit/archives", None, Some(body.clone()))
        .await
        .problem(401, "unauthenticated");
    let listed = f
        .call("GET", "/v1/audit/archives", Some(&f.auditor), None)
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.json(), json!({"archives": [], "live_from": 1}));

    // Bad requests: refused, audited, nothing archived. Malformed ones are 422; a
    // well-formed cut the log cannot carry out now (in the future, past the head) is 409.
    for (bad, status, kind) in [
        (json!({}), 422, "invalid"),
        (json!({"before": "2999-01-01T00:00:00Z"}), 409, "conflict"),
        (json!({"before": "yesterday"}), 422, "invalid"),
        (json!({"before_seq": 1}), 422, "invalid"),
        (json!({"before_seq": 1000}), 409, "conflict"),
        (
            json!({"before_seq": 3, "before": "2023-11-14T22:13:20Z"}),
            422,
            "invalid",
        ),
    ] {
        f.call(
            "POST",
            "/v1/audit/archives",
            Some(&f.admin),
            Some(bad.clone()),
        )
        .await
        .problem(status, kind);
    }
    // The first and last bodies fit neither shape of the document's `oneOf`: the body
    // extractor refuses them, as every route's malformed body, before the handler audits.
    assert_eq!(f.audit("admin:audit.archive").await.len(), 4);

    // The admin archives records 1 and 2.
    let r = f
        .call("POST", "/v1/audit/archives", Some(&f.admin), Some(body))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let created = r.json();
    assert_eq!(created["name"], "audit-1-2.jsonl.gz");
    assert_eq!(
        (created["first_id"].as_u64(), created["last_id"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(created["records"], 2);
    assert_eq!(created["downloadable"], true);
    let record_id = created["record_id"].as_u64().expect("record id");
    // The operation is in the live log, after the cut, naming the admin token.
    let ops = f.audit("admin:audit.archive").await;
    let op = ops.iter().find(|e| e.id == record_id).expect("audited");
    assert_eq!(op.record.outcome.to_string(), "ok");
    assert!(
        op.record
            .actor
            .as_ref()
            .is_some_and(|a| a.as_str().contains("/token/"))
    );
    {
        let mut conn = f.store.acquire().await.expect("a connection");
        let report = audit::verify_chain(&mut conn, &audit::Chain::Local)
            .await
            .expect("verify");
        assert!(report.is_intact(), "{:?}", report.broken);
        assert_eq!(report.anchor.map(|a| a.last_id), Some(2));
    }

    let verified = f
        .call("GET", "/v1/audit/verify", Some(&f.auditor), None)
        .await
        .json();
    assert_eq!(verified["intact"], true, "{verified}");
    assert_eq!(verified["archived_through"], 2, "{verified}");

    // Listed by an auditor, downloaded, and the download verifies on its own.
    let list = f
        .call("GET", "/v1/audit/archives", Some(&f.auditor), None)
        .await
        .json();
    assert_eq!(list["live_from"], 3);
    assert_eq!(list["archives"][0]["sha256"], created["sha256"]);
    let summary = download_and_verify(&f, "audit-1-2.jsonl.gz").await;
    assert_eq!(summary.header.last_id, 2);
    assert_eq!(hex::encode(summary.sha256), created["sha256"]);

    // Unknown names and paths that are not archive names are simply not found.
    for name in ["audit-3-4.jsonl.gz", "..%2Frsp.db", "rsp.db"] {
        f.call(
            "GET",
            &format!("/v1/audit/archives/{name}"),
            Some(&f.admin),
            None,
        )
        .await
        .problem(404, "not-found");
    }
    f.call(
        "GET",
        "/v1/audit/archives/audit-1-2.jsonl.gz",
        Some(&f.operator),
        None,
    )
    .await
    .problem(403, "forbidden");
}

/// The operator's and the auditor's `POST /v1/audit/archives` of `body`: 403.
async fn refused_without_the_admin_role(f: &Fixture, body: &Value) {
    for token in [&f.operator, &f.auditor] {
        f.call(
            "POST",
            "/v1/audit/archives",
            Some(token),
            Some(body.clone()),
        )
        .await
        .problem(403, "forbidden");
    }
}

/// This registrar's chain in a shared store (docs/STORE.md "Archives in a fleet").
const THIS: &str = "spiffe://acme.test/registrar/enrp-1";
/// Another registrar of the fleet, appending to the same store.
const OTHER: &str = "spiffe://acme.test/registrar/enrp-2";

fn chain(id: &str) -> audit::Chain {
    audit::Chain::Registrar(identity::SpiffeId::parse(id).expect("a SPIFFE ID"))
}

/// On both backends, with the registrar appending to its own chain as in a fleet's store
/// (PostgreSQL; on SQLite the same tables and triggers).
mod a_registrars_chain_is_archived_through_the_api_and_every_chain_verifies {
    #[tokio::test]
    async fn sqlite() {
        let db = store::db::test_db::sqlite_file().await;
        super::own_chain_archived(super::fixture_with_chain(db, super::chain(super::THIS)).await)
            .await;
    }
    #[tokio::test]
    async fn postgres() {
        let test = concat!(module_path!(), "::postgres");
        if let Some(db) = store::db::test_db::postgres(test).await {
            super::own_chain_archived(
                super::fixture_with_chain(db, super::chain(super::THIS)).await,
            )
            .await;
        }
    }
}

/// The other registrar appends `range` records to its chain.
async fn other_appends(f: &Fixture, range: std::ops::Range<u64>) {
    let records: Vec<audit::Record> = range
        .map(|i| {
            audit::Record::new(
                NOW + i,
                identity::audit::AuditAction::Resolve,
                audit::Outcome::Ok,
            )
        })
        .collect();
    let mut tx = f.store.begin().await.expect("begin");
    audit::append_in(&mut tx, &chain(OTHER), &records)
        .await
        .expect("append");
    tx.commit().await.expect("commit");
}

/// The ids of `chain`'s live records, oldest first.
async fn chain_ids(f: &Fixture, chain: &audit::Chain) -> Vec<u64> {
    let mut conn = f.store.acquire().await.expect("a connection");
    let mut filter = AuditFilter::default();
    filter.chain = Some(chain.clone());
    filter.order = audit::Order::OldestFirst;
    filter.limit = 1000;
    let page = audit::query(&mut conn, &filter).await.expect("a page");
    page.events.iter().map(|e| e.id).collect()
}

async fn own_chain_archived(f: Fixture) {
    let (own, other) = (chain(THIS), chain(OTHER));
    // This registrar's admin writes, with the other registrar's records in between.
    f.create_namespaces(&["a"]).await;
    other_appends(&f, 0..3).await;
    f.create_namespaces(&["b", "c"]).await;
    other_appends(&f, 3..5).await;
    let ours = chain_ids(&f, &own).await;
    let theirs = chain_ids(&f, &other).await;
    assert_eq!(ours.len(), 3);
    // Archive this registrar's records below its third: its first two.
    let body = json!({"before_seq": ours[2]});

    // Without the admin role: 403, audited in this registrar's chain, nothing archived.
    refused_without_the_admin_role(&f, &body).await;
    let refused = f.audit("admin:request").await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|e| e.chain == own && e.record.outcome.to_string() == "forbidden")
    );

    let r = f
        .call("POST", "/v1/audit/archives", Some(&f.admin), Some(body))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let created = r.json();
    let name = format!("audit-{}-{}.jsonl.gz", ours[0], ours[1]);
    assert_eq!(created["name"], name.as_str());
    assert_eq!(created["records"], 2);
    assert_eq!(created["downloadable"], true);

    // The other registrar archives its own chain on its own host.
    let other_file = f._dir.path().join("other.jsonl.gz");
    let theirs_done = audit::archive::archive(
        &f.store,
        &other,
        &audit::archive::Target::File(other_file.clone()),
        audit::archive::Cut::BeforeId(theirs[4] + 1),
        other.registrar(),
        audit::Record::new(
            NOW,
            identity::audit::AuditAction::AuditArchive,
            audit::Outcome::Ok,
        ),
        NOW,
    )
    .await
    .expect("the other registrar archives");

    // Every chain verifies; this registrar's from its anchor.
    let verified = f
        .call("GET", "/v1/audit/verify", Some(&f.auditor), None)
        .await
        .json();
    assert_eq!(verified["intact"], true, "{verified}");
    assert_eq!(verified["archived_through"], ours[1], "{verified}");
    let chains = verified["chains"].as_array().expect("chains");
    assert_eq!(chains.len(), 2, "{verified}");
    assert!(chains.iter().all(|c| c["intact"] == true), "{verified}");
    assert_eq!(chains[1]["registrar"], OTHER);
    assert_eq!(chains[1]["archived_through"], theirs[4]);

    // This registrar lists and serves its own chain's archive only.
    let list = f
        .call("GET", "/v1/audit/archives", Some(&f.auditor), None)
        .await
        .json();
    let listed = list["archives"].as_array().expect("archives");
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["name"], name.as_str());
    assert_eq!(list["live_from"], ours[1] + 1);
    let summary = download_and_verify(&f, &name).await;
    assert_eq!(summary.chain, own);
    assert_eq!(summary.header.records, 2);
    let theirs_name = theirs_done.anchor.name().to_owned();
    f.call(
        "GET",
        &format!("/v1/audit/archives/{theirs_name}"),
        Some(&f.admin),
        None,
    )
    .await
    .problem(404, "not-found");
}

/// Downloads archive `name` as the auditor and verifies the download on its own.
async fn download_and_verify(f: &Fixture, name: &str) -> audit::archive::ArchiveSummary {
    let request = Request::builder()
        .uri(format!("/v1/audit/archives/{name}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", f.auditor))
        .body(Body::empty())
        .expect("a request");
    let response = f.router.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/gzip");
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let copy = f._dir.path().join("downloaded.jsonl.gz");
    std::fs::write(&copy, &bytes).expect("write");
    audit::archive::verify_archive(&copy, None).expect("the download verifies")
}
