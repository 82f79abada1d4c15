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
    let request = Request::builder()
        .uri("/v1/audit/archives/audit-1-2.jsonl.gz")
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
    let summary = audit::archive::verify_archive(&copy, None).expect("verifies");
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
