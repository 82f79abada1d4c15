//! [`diff`]: what a registrar applies when the shared store moves from one snapshot to
//! the next. Snapshots are read from a real (in-memory) store after real writes.

use identity::{Action, Grant, Revocation, SpiffeId, TrustDomain};
use store::db::{self, PoolDecl, Role, Snapshot, Store, TokenHasher};

use super::{Step, diff};

fn grant(identity: &str) -> Grant {
    Grant {
        identity: identity.parse().expect("identity pattern"),
        namespace: "*".parse().expect("namespace pattern"),
        pools: "*".parse().expect("pool pattern"),
        actions: [Action::Register].into_iter().collect(),
        labels: None,
    }
}

fn domain(name: &str) -> TrustDomain {
    TrustDomain::new(name).expect("trust domain")
}

/// A store with a namespace, the local and one federated trust domain, and one grant.
async fn store() -> Store {
    let store = Store::in_memory().await.expect("store");
    let mut c = store.acquire().await.expect("conn");
    db::create_namespace(&mut c, "default", 1)
        .await
        .expect("ns");
    db::add_trust_domain(&mut c, &domain("acme.test"), true, "LOCAL", None, 1)
        .await
        .expect("local");
    db::add_trust_domain(&mut c, &domain("partner.test"), false, "ROOTS", None, 1)
        .await
        .expect("partner");
    db::add_grant(&mut c, &grant("spiffe://acme.test/pe/*"), 1)
        .await
        .expect("grant");
    store
}

async fn snap(store: &Store) -> Snapshot {
    store.snapshot().await.expect("snapshot")
}

#[tokio::test]
async fn the_same_state_needs_nothing_and_a_resync_replaces_grants_and_rules_only() {
    let store = store().await;
    let s = snap(&store).await;
    assert_eq!(diff(&s, &s, false), []);
    let grants = s.grants.iter().map(|r| r.grant.clone()).collect();
    assert_eq!(
        diff(&s, &s, true),
        [
            Step::SetGrants(grants),
            Step::SetDefaultNamespaces(Vec::new())
        ]
    );
}

#[tokio::test]
async fn a_new_revocation_is_the_first_step_and_an_applied_one_is_not_repeated() {
    let store = store().await;
    let s0 = snap(&store).await;
    let mut c = store.acquire().await.expect("conn");
    let first = Revocation::Identity(SpiffeId::parse("spiffe://acme.test/pe/a").expect("id"));
    db::add_revocation(&mut c, &first, None, 2)
        .await
        .expect("revoke");
    drop(c);
    let s1 = snap(&store).await;
    assert_eq!(diff(&s0, &s1, false), [Step::Revoke(first.clone())]);
    let mut c = store.acquire().await.expect("conn");
    let second = Revocation::TrustDomain(domain("partner.test"));
    db::add_revocation(&mut c, &second, None, 3)
        .await
        .expect("revoke");
    db::remove_trust_domain(&mut c, &domain("partner.test"))
        .await
        .expect("remove");
    db::delete_grant(&mut c, s0.grants[0].id)
        .await
        .expect("withdraw");
    drop(c);
    let s2 = snap(&store).await;
    assert_eq!(
        diff(&s1, &s2, false),
        [
            Step::Revoke(second),
            Step::RemoveDomain(domain("partner.test")),
            Step::SetGrants(Vec::new()),
        ]
    );
}

#[tokio::test]
async fn trust_domains_added_and_crls_changed_carry_what_to_apply() {
    let store = store().await;
    let s0 = snap(&store).await;
    let mut c = store.acquire().await.expect("conn");
    db::add_trust_domain(&mut c, &domain("other.test"), false, "R2", Some("C2"), 2)
        .await
        .expect("add");
    db::set_trust_domain_crls(&mut c, &domain("partner.test"), Some("NEW"))
        .await
        .expect("crls");
    drop(c);
    let s1 = snap(&store).await;
    let steps = diff(&s0, &s1, false);
    assert!(
        steps.contains(&Step::AddDomain {
            name: domain("other.test"),
            roots_pem: "R2".into(),
            crls_pem: Some("C2".into()),
        }),
        "{steps:?}"
    );
    assert!(
        steps.contains(&Step::SetCrls {
            domain: domain("partner.test"),
            old_pem: None,
            new_pem: Some("NEW".into()),
        }),
        "{steps:?}"
    );
    assert_eq!(steps.len(), 2, "{steps:?}");
}

#[tokio::test]
async fn pool_declarations_and_revoked_tokens_are_told_once() {
    let store = store().await;
    let mut c = store.acquire().await.expect("conn");
    let hasher = TokenHasher::insecure_fast_for_tests();
    let token = db::create_token(&mut c, &hasher, "ops", Role::Admin, None, 1)
        .await
        .expect("token");
    drop(c);
    let s0 = snap(&store).await;
    let mut c = store.acquire().await.expect("conn");
    let mut decl = PoolDecl::new("default", b"echo".to_vec());
    decl.max_pes = Some(2);
    db::put_pool(&mut c, &decl, 2).await.expect("declare");
    db::revoke_token(&mut c, &token.info.id, 2)
        .await
        .expect("revoke");
    drop(c);
    let s1 = snap(&store).await;
    let steps = diff(&s0, &s1, false);
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(matches!(&steps[0], Step::DeclarePool(d) if d.limits == Some((None, Some(2)))));
    assert_eq!(steps[1], Step::ForgetTokens(vec![token.info.id.clone()]));
    // Told once: the next snapshot with the same token revoked needs nothing.
    assert_eq!(diff(&s1, &s1, false), []);
    let mut c = store.acquire().await.expect("conn");
    db::delete_pool(&mut c, "default", b"echo")
        .await
        .expect("withdraw");
    drop(c);
    let s2 = snap(&store).await;
    let steps = diff(&s1, &s2, false);
    assert!(
        matches!(&steps[..], [Step::DeclarePool(d)] if d.limits.is_none() && d.handle == b"echo"),
        "{steps:?}"
    );
}
