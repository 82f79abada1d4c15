//! The shared control plane (issue 19, docs/STORE.md "The shared control plane"): with a
//! PostgreSQL store, the registrars of a fleet share trust domains, grants, revocations,
//! CRLs, pool declarations, default namespaces and admin tokens, and a change made through
//! any registrar's API (or CLI, or psql) reaches every registrar within 1 s.
//!
//! How: the store notifies at commit ([`store::db::ChangeFeed`], migration 0005's
//! triggers). On each notice, on a resync after the feed lost its connection, and every
//! `fleet_resync_secs` as the safety net, [`sync`]'s task reads a new
//! [`Snapshot`], computes the [`Step`]s from the snapshot it applied last ([`diff`], a
//! pure function), and applies them through the same [`ControlPlane`] methods the admin
//! API uses: a revocation is denied and revoked (live connections close, PEs removed and
//! audited), changed grants are set (the PEs they no longer allow go), and so on.
//!
//! The registrar where a change was made has applied it already; applying it again
//! changes nothing and audits nothing (the trust store's deny and the core's revocation
//! are idempotent: the second finds no connection and no PE; a trust domain already
//! trusted is left as it is), so the feed need not know who made a change. Grants and
//! default namespaces are replaced wholesale: should the admin API's own (post-commit)
//! replacement land after a newer one from the feed, the next periodic re-read sets them
//! again, which is why every periodic re-read sets them whether or not they changed.
//!
//! A step that fails (a bundle or CRL that does not parse) is logged and the others are
//! still applied; a failed read keeps the last state and is retried.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use admin_api::{PoolDeclaration, TokenCache};
use identity::{DefaultNamespace, Grant, Revocation, Serial, TrustDomain};
use store::db::{Change, Snapshot, Store};
use tokio::sync::mpsc;
use trust::DomainBundle;

use crate::control_plane::ControlPlane;

/// One change to apply to a running registrar, as [`diff`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Deny and revoke (a new revocation).
    Revoke(Revocation),
    /// A trust domain is gone from the store (removed or revoked): untrust it, remove
    /// its PEs.
    RemoveDomain(TrustDomain),
    /// A new trust domain: trust it (roots and CRLs, PEM).
    AddDomain {
        /// The domain.
        name: TrustDomain,
        /// Its roots.
        roots_pem: String,
        /// Its CRLs, if any.
        crls_pem: Option<String>,
    },
    /// A trusted domain's roots changed in the store, which no rsp write does (a
    /// domain is removed and added again): logged, applied at the next start.
    RootsChanged(TrustDomain),
    /// A trust domain's CRLs changed: set them, and revoke the serials they newly list.
    SetCrls {
        /// The domain.
        domain: TrustDomain,
        /// The CRLs applied before (for the serials newly listed).
        old_pem: Option<String>,
        /// The CRLs now.
        new_pem: Option<String>,
    },
    /// The grants now in force.
    SetGrants(Vec<Grant>),
    /// The default-namespace rules now in force.
    SetDefaultNamespaces(Vec<DefaultNamespace>),
    /// A pool's declaration (`limits: None`: withdrawn).
    DeclarePool(PoolDeclaration),
    /// Admin tokens newly revoked: the API's cache drops them.
    ForgetTokens(Vec<String>),
}

/// The steps that take a registrar that applied `old` to `new`, most urgent first
/// (revocations). With `replace_all`, grants and default namespaces are set even
/// if unchanged (the periodic re-read: see the module doc).
pub fn diff(old: &Snapshot, new: &Snapshot, replace_all: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    let known: HashSet<&Revocation> = old.revocations.iter().map(|r| &r.revocation).collect();
    steps.extend(
        new.revocations
            .iter()
            .filter(|r| !known.contains(&r.revocation))
            .map(|r| Step::Revoke(r.revocation.clone())),
    );
    let domains = |s: &Snapshot| -> BTreeMap<String, (String, Option<String>)> {
        s.trust_domains
            .iter()
            .map(|d| {
                (
                    d.name.to_string(),
                    (d.roots_pem.clone(), d.crls_pem.clone()),
                )
            })
            .collect()
    };
    let (before, after) = (domains(old), domains(new));
    for row in &old.trust_domains {
        if !after.contains_key(row.name.as_str()) {
            steps.push(Step::RemoveDomain(row.name.clone()));
        }
    }
    for row in &new.trust_domains {
        match before.get(row.name.as_str()) {
            None => steps.push(Step::AddDomain {
                name: row.name.clone(),
                roots_pem: row.roots_pem.clone(),
                crls_pem: row.crls_pem.clone(),
            }),
            Some((roots, crls)) => {
                if *roots != row.roots_pem {
                    steps.push(Step::RootsChanged(row.name.clone()));
                }
                if *crls != row.crls_pem {
                    steps.push(Step::SetCrls {
                        domain: row.name.clone(),
                        old_pem: crls.clone(),
                        new_pem: row.crls_pem.clone(),
                    });
                }
            }
        }
    }
    let grants = |s: &Snapshot| s.grants.iter().map(|r| r.grant.clone()).collect::<Vec<_>>();
    let new_grants = grants(new);
    if replace_all || grants(old) != new_grants {
        steps.push(Step::SetGrants(new_grants));
    }
    let rules = |s: &Snapshot| {
        s.default_namespaces
            .iter()
            .map(|r| r.rule.clone())
            .collect::<Vec<_>>()
    };
    let new_rules = rules(new);
    if replace_all || rules(old) != new_rules {
        steps.push(Step::SetDefaultNamespaces(new_rules));
    }
    type Limits = (Option<u32>, Option<u32>);
    let pools = |s: &Snapshot| -> BTreeMap<(String, Vec<u8>), Limits> {
        s.pools
            .iter()
            .map(|p| {
                (
                    (p.namespace.clone(), p.handle.clone()),
                    (p.policy, p.max_pes),
                )
            })
            .collect()
    };
    let (before, after) = (pools(old), pools(new));
    for ((namespace, handle), limits) in &after {
        if before.get(&(namespace.clone(), handle.clone())) != Some(limits) {
            steps.push(Step::DeclarePool(PoolDeclaration {
                namespace: namespace.clone(),
                handle: handle.clone(),
                limits: Some(*limits),
            }));
        }
    }
    for (namespace, handle) in before.keys() {
        if !after.contains_key(&(namespace.clone(), handle.clone())) {
            steps.push(Step::DeclarePool(PoolDeclaration {
                namespace: namespace.clone(),
                handle: handle.clone(),
                limits: None,
            }));
        }
    }
    // Both lists are sorted (store::db::control::Snapshot): a binary search keeps the diff
    // O(n log n) however many tokens were ever revoked.
    let revoked: Vec<String> = new
        .revoked_tokens
        .iter()
        .filter(|id| old.revoked_tokens.binary_search(id).is_err())
        .cloned()
        .collect();
    if !revoked.is_empty() {
        steps.push(Step::ForgetTokens(revoked));
    }
    steps
}

/// Applies `steps` to the registrar of `plane` (and its admin API's token cache); each
/// failure is logged and the rest still applied.
pub async fn apply(plane: &ControlPlane, tokens: Option<&TokenCache>, steps: Vec<Step>) {
    for step in steps {
        match step {
            Step::Revoke(r) => {
                if let Err(e) = plane.deny(&r) {
                    tracing::error!(error = %e, revocation = %r, "fleet: revocation not denied in TLS");
                }
                plane.revoke(r).await;
            }
            Step::RemoveDomain(domain) => {
                if let Err(e) = plane.remove_domain(&domain) {
                    tracing::error!(error = %e, %domain, "fleet: trust domain not removed");
                }
                plane.domain_removed(&domain).await;
            }
            Step::AddDomain {
                name,
                roots_pem,
                crls_pem,
            } => {
                if plane.is_trusted(&name) {
                    continue; // Added here (this registrar's API) or loaded at start.
                }
                let bundle = DomainBundle::from_pem(name.clone(), roots_pem.as_bytes())
                    .and_then(|b| Ok(b.with_crls(crls(crls_pem.as_deref())?)));
                if let Err(e) = bundle.and_then(|b| plane.add_domain(b)) {
                    tracing::error!(error = %e, domain = %name, "fleet: trust domain refused");
                }
            }
            Step::RootsChanged(domain) => tracing::error!(
                %domain,
                "fleet: the trust domain's roots changed in the store: restart to apply"
            ),
            Step::SetCrls {
                domain,
                old_pem,
                new_pem,
            } => set_crls(plane, &domain, old_pem.as_deref(), new_pem.as_deref()).await,
            Step::SetGrants(grants) => plane.set_grants(grants).await,
            Step::SetDefaultNamespaces(rules) => plane.set_default_namespaces(rules).await,
            Step::DeclarePool(d) => admin_api::Registrar::declare_pool(plane, d).await,
            Step::ForgetTokens(ids) => {
                if let Some(cache) = tokens {
                    cache.forget(&ids);
                }
            }
        }
    }
}

/// CRLs as PEM text, `None`: none.
fn crls(
    pem: Option<&str>,
) -> Result<Vec<tokio_rustls::rustls::pki_types::CertificateRevocationListDer<'static>>, trust::Error>
{
    pem.map_or(Ok(Vec::new()), |p| trust::crls_from_pem(p.as_bytes()))
}

fn serials(pem: Option<&str>) -> Result<BTreeSet<Serial>, trust::Error> {
    let mut out = BTreeSet::new();
    for crl in crls(pem)? {
        out.extend(trust::crl_serials(&crl)?);
    }
    Ok(out)
}

/// As the admin API's CRL upload: the TLS layer first (handshakes of the listed serials
/// fail, their connections close), then the core removes the PEs of the serials newly
/// listed. The store holds only CRLs an API checked (signed by the domain's CAs).
async fn set_crls(
    plane: &ControlPlane,
    domain: &TrustDomain,
    old: Option<&str>,
    new: Option<&str>,
) {
    let (list, now) = match (crls(new), serials(new)) {
        (Ok(list), Ok(now)) => (list, now),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, %domain, "fleet: the stored CRLs do not parse");
            return;
        }
    };
    // CRLs applied before that no longer parse: every listed serial is new.
    let before = serials(old).unwrap_or_default();
    if let Err(e) = plane.set_crls(domain, list) {
        tracing::error!(error = %e, %domain, "fleet: CRLs refused");
    }
    for serial in now.difference(&before) {
        plane
            .revoke(Revocation::Serial {
                domain: domain.clone(),
                serial: serial.clone(),
            })
            .await;
    }
}

/// Starts the fleet sync of `plane` on the shared `store`: listens first, then reads the
/// control plane and applies what changed since the registrar loaded it (trust domains
/// gone meanwhile included; CRLs excepted, which loading applied, the local domain's
/// from its file), then keeps it applied (see the module doc). `None` on SQLite, whose
/// control plane is the registrar's own.
pub async fn sync(
    store: Store,
    plane: Arc<ControlPlane>,
    tokens: Option<TokenCache>,
    every: Duration,
) -> Result<Option<tokio::task::JoinHandle<()>>, store::db::Error> {
    let Some(mut feed) = store.change_feed().await? else {
        return Ok(None);
    };
    let first = store.snapshot().await?;
    let mut steps: Vec<Step> = diff(&Snapshot::default(), &first, true)
        .into_iter()
        .filter(|s| !matches!(s, Step::SetCrls { .. }))
        .collect();
    let stored: BTreeSet<&str> = first
        .trust_domains
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    for domain in plane.trusted_domains() {
        if !stored.contains(domain.as_str()) {
            steps.push(Step::RemoveDomain(domain));
        }
    }
    apply(&plane, tokens.as_ref(), steps).await;
    // The feed in a task of its own (its `next` is not cancel-safe), its reports
    // forwarded; a full channel already holds a wake-up, so a report may be dropped.
    let (tx, mut rx) = mpsc::channel::<Change>(4);
    let forward = tokio::spawn(async move {
        // One line when the feed goes down and one when it is back, as for the store
        // itself: the feed retries every second or so while PostgreSQL is away.
        let mut down = false;
        loop {
            match feed.next().await {
                Change::Lost(why) if !down => {
                    down = true;
                    tracing::warn!(%why, "fleet: change feed down, the periodic re-read goes on")
                }
                Change::Lost(why) => tracing::debug!(%why, "fleet: change feed still down"),
                Change::Resync => {
                    down = false;
                    tracing::warn!("fleet: change feed back: re-reading the control plane");
                    if tx.send(Change::Resync).await.is_err() {
                        return;
                    }
                }
                Change::Changed => {
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Change::Changed)
                    {
                        return;
                    }
                }
            }
        }
    });
    Ok(Some(tokio::spawn(async move {
        let _forward = AbortOnDrop(forward);
        let mut applied = first;
        let mut tick = tokio::time::interval(every);
        // After a long failed read, one re-read, not a burst of the ticks missed.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // The first tick is now: just read.
        loop {
            let replace_all = tokio::select! {
                change = rx.recv() => match change {
                    Some(Change::Changed) => false,
                    Some(_) => true,
                    None => return,
                },
                _ = tick.tick() => true,
            };
            let new = read(&store).await;
            let steps = diff(&applied, &new, replace_all);
            if new != applied {
                tracing::info!(steps = steps.len(), "fleet: applying control-plane changes");
            }
            apply(&plane, tokens.as_ref(), steps).await;
            applied = new;
        }
    })))
}

/// A new snapshot; a failed read is logged and retried (backoff to 5 s) while the
/// registrar keeps what it applied.
async fn read(store: &Store) -> Snapshot {
    let mut wait = Duration::from_millis(100);
    loop {
        match store.snapshot().await {
            Ok(s) => return s,
            Err(e) => {
                tracing::warn!(error = %e, "fleet: cannot read the control plane; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;
