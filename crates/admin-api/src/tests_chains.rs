//! `/v1/audit` in a store several registrars share (issue 19 item 3): the records of every
//! chain, each naming its registrar, the `registrar` filter, and `/v1/audit/verify`
//! reporting every chain, on both backends.

use super::*;
use identity::SpiffeId;
use identity::audit::AuditAction;
use store::audit::Record;

on_both_backends!(the_audit_log_shows_filters_and_verifies_every_registrars_chain);

const OTHER: &str = "spiffe://acme.test/registrar/enrp-2";

async fn the_audit_log_shows_filters_and_verifies_every_registrars_chain(f: Fixture) {
    // This registrar (the local chain) audits two admin writes; another registrar of the
    // store appends three records to its own chain.
    f.create_namespaces(&["a", "b"]).await;
    let other = audit::Chain::Registrar(SpiffeId::parse(OTHER).expect("id"));
    let records: Vec<Record> = (0..3)
        .map(|i| Record::new(NOW + i, AuditAction::Resolve, audit::Outcome::Ok))
        .collect();
    let mut tx = f.store.begin().await.expect("begin");
    audit::append_in(&mut tx, &other, &records)
        .await
        .expect("append");
    tx.commit().await.expect("commit");

    let registrars = |page: &Value| -> Vec<Value> {
        page["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["registrar"].clone())
            .collect()
    };
    let all = f
        .call("GET", "/v1/audit?order=oldest", Some(&f.auditor), None)
        .await
        .json();
    assert_eq!(
        registrars(&all),
        [
            json!(null),
            json!(null),
            json!(OTHER),
            json!(OTHER),
            json!(OTHER)
        ]
    );
    for (query, expected) in [
        (format!("registrar={OTHER}"), 3),
        ("registrar=local".into(), 2),
    ] {
        let page = f
            .call("GET", &format!("/v1/audit?{query}"), Some(&f.auditor), None)
            .await
            .json();
        let found = registrars(&page);
        assert_eq!(found.len(), expected, "{query}");
        assert!(found.windows(2).all(|w| w[0] == w[1]), "{query}: {found:?}");
    }
    for bad in ["registrar=acme.test", "registrar=", "registrar=LOCAL"] {
        f.call("GET", &format!("/v1/audit?{bad}"), Some(&f.auditor), None)
            .await
            .problem(422, "invalid");
    }

    let verify = f
        .call("GET", "/v1/audit/verify", Some(&f.auditor), None)
        .await
        .json();
    assert_eq!(verify["intact"], true, "{verify}");
    assert_eq!(verify["checked"], 5, "every chain's records");
    let chains = verify["chains"].as_array().expect("chains");
    assert_eq!(chains.len(), 2, "{verify}");
    assert_eq!(chains[0]["registrar"], json!(null));
    assert_eq!(chains[0]["checked"], 2);
    assert_eq!(chains[1]["registrar"], json!(OTHER));
    assert_eq!(chains[1]["checked"], 3);
    // The top-level head is this registrar's own chain's (what a checkpoint records).
    assert_eq!(verify["head"], chains[0]["head"]);
    assert_eq!(verify["last_id"], chains[0]["last_id"]);
    assert_ne!(verify["head"], chains[1]["head"]);
}
