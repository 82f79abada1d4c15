//! Who is calling, and may they: bearer tokens (`Authorization: Bearer rsp_...`) or an
//! admin client certificate, mapped to a [`Role`]; each handler names the permission it
//! needs in its `Authorized` argument, so no route can forget to check.
//!
//! | permission    | admin | operator | auditor |
//! |---------------|-------|----------|---------|
//! | `ReadOps`: namespaces, pools, PEs, revocations (read) | ✓ | ✓ | ✓ |
//! | `ReadAll`: everything else read-only, the audit log, metrics | ✓ |  | ✓ |
//! | `Operate`: pools, PEs, revocations, CRLs (write) | ✓ | ✓ |  |
//! | `AdminOnly`: namespaces, trust domains, grants, tokens (write) | ✓ |  |  |
//!
//! A certificate's role comes from the grants: an identity granted `admin:write` in every
//! namespace (`*`) on every pool (`*`) is an admin, one granted only `admin:read` there
//! an auditor. The admin API is not scoped by namespace, so grants naming one namespace
//! give no admin role.
//!
//! Audit records name a certificate caller by its SPIFFE ID and serial, and a token caller
//! by `spiffe://<local trust domain>/token/<token id>` without a serial.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use identity::audit::AuditAction;
use identity::{Action, NamespacePattern, Serial, SpiffeId};
use sha2::{Digest as _, Sha256};
use store::audit::{Outcome, Record};
use store::db::{self, Role, TokenInfo};
use trust::Peer;

use crate::problem::{ApiError, ProblemKind};
use crate::registrar::Actor;
use crate::state::App;

/// The remote address of the connection a request came on; [`crate::serve`] puts it in
/// every request's extensions (with the client's [`Peer`], when it sent a certificate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

/// The path segment under the local trust domain that names token callers in the audit
/// log (`spiffe://acme.test/token/0123456789abcdef`).
pub const TOKEN_ACTOR_SEGMENT: &str = "token";

/// An authenticated caller.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// `None`: a certificate without an admin grant.
    pub(crate) role: Option<Role>,
    /// Who, as the registrar names it in its own audit records.
    pub(crate) actor: Actor,
    /// Who, as the audit log's actor column names it.
    pub(crate) audit_id: SpiffeId,
    serial: Option<Serial>,
    remote: Option<SocketAddr>,
}

impl Caller {
    /// An audit record of `action` by this caller at `now`, outcome `ok`.
    pub(crate) fn record(&self, now: u64, action: AuditAction) -> Record {
        let mut record = Record::new(now, action, Outcome::Ok).actor(self.audit_id.clone());
        record.serial = self.serial.clone();
        record.remote = self.remote;
        record
    }
}

/// A permission a route needs (see the table in the module docs).
pub(crate) trait Permission: Send + Sync + 'static {
    /// The roles that have it, for error messages.
    const ROLES: &'static str;
    fn allows(role: Role) -> bool;
}

/// Read namespaces, pools, PEs and revocations.
pub(crate) struct ReadOps;
/// Read everything, including the audit log and metrics.
pub(crate) struct ReadAll;
/// Change pools, PEs and revocations.
pub(crate) struct Operate;
/// Everything else that writes.
pub(crate) struct AdminOnly;

impl Permission for ReadOps {
    const ROLES: &'static str = "admin, operator or auditor";
    fn allows(role: Role) -> bool {
        matches!(role, Role::Admin | Role::Operator | Role::Auditor)
    }
}
impl Permission for ReadAll {
    const ROLES: &'static str = "admin or auditor";
    fn allows(role: Role) -> bool {
        matches!(role, Role::Admin | Role::Auditor)
    }
}
impl Permission for Operate {
    const ROLES: &'static str = "admin or operator";
    fn allows(role: Role) -> bool {
        matches!(role, Role::Admin | Role::Operator)
    }
}
impl Permission for AdminOnly {
    const ROLES: &'static str = "admin";
    fn allows(role: Role) -> bool {
        matches!(role, Role::Admin)
    }
}

/// An extractor that authenticates the caller and checks permission `P`; a refusal (401
/// or 403) is audited before it is answered.
pub(crate) struct Authorized<P>(pub(crate) Caller, pub(crate) PhantomData<P>);

impl<P: Permission> FromRequestParts<Arc<App>> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let now = app.now();
        let remote = parts.extensions.get::<RemoteAddr>().map(|r| r.0);
        let request = format!("{} {}", parts.method, parts.uri.path());
        // The store does not answer: no write can commit, and a token cannot be checked
        // (tokens live in the store), so a write is refused at once, before any attempt
        // to authenticate or audit, rather than after the pool's timeout. Not audited:
        // the audit log is in that store. The state is public in `/readyz` already.
        if !parts.method.is_safe() && app.registrar().store_down() {
            return Err(ApiError::new(
                ProblemKind::Unavailable,
                "the registrar's store does not answer: writes are refused until it is back",
            ));
        }
        let caller = match authenticate(app, parts, now, remote).await {
            Ok(caller) => caller,
            Err(err) => {
                let mut record =
                    Record::new(now, AuditAction::AdminRequest, Outcome::Ok).detail(request);
                record.remote = remote;
                if let Some(peer) = parts.extensions.get::<Peer>() {
                    record = record.peer(peer.id(), peer.serial());
                }
                app.audit_refusal(record, &err).await;
                return Err(err);
            }
        };
        match caller.role {
            // Low disk: writes (and their audit records) wait until there is room
            // again; reads go on. Not audited: the record may not fit.
            Some(role)
                if P::allows(role) && !parts.method.is_safe() && app.registrar().low_disk() =>
            {
                Err(ApiError::new(
                    ProblemKind::InsufficientStorage,
                    "the registrar's data directory is below its free-space watermark: writes are refused until it has room",
                ))
            }
            Some(role) if P::allows(role) => Ok(Self(caller, PhantomData)),
            role => {
                let has = role.map_or_else(|| "no admin role".to_owned(), |r| format!("role {r}"));
                let err = ApiError::new(
                    ProblemKind::Forbidden,
                    format!(
                        "{request} needs the role {}; the caller has {has}",
                        P::ROLES
                    ),
                );
                let record = caller.record(now, AuditAction::AdminRequest);
                app.audit_refusal(record, &err).await;
                Err(err)
            }
        }
    }
}

/// How often a long-lived answer (a watch stream) checks that its caller may still have
/// it ([`Caller::recheck`]): a token revoked (through any registrar of a fleet, or with
/// `enrpd token revoke`) or expired, or a certificate whose admin grant was withdrawn,
/// stops receiving within this long. A revoked certificate's connection is closed by the
/// TLS layer at once. Costs one indexed read of the store per stream per interval (at
/// most `MAX_WATCHERS` + `MAX_AUDIT_WATCHERS` a second, routes/watch.rs).
pub(crate) const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl Caller {
    /// Whether this caller, authorized for `P` when its request came, still is: its token
    /// neither revoked nor expired (read by id: no argon2id again), or its certificate
    /// still granted a role `P` allows. A store that does not answer is a refusal too
    /// (fail closed: the client reconnects and hears 503 while it is down). A refusal is
    /// audited with `request`, as the request's own refusal would have been.
    pub(crate) async fn recheck<P: Permission>(
        &self,
        app: &App,
        request: &str,
    ) -> Result<(), ApiError> {
        let now = app.now();
        let checked = async {
            let mut conn = app.store().acquire().await?;
            let role = match &self.actor {
                Actor::Token(id) => match db::token_info(&mut conn, id).await? {
                    None => return Err(unauthenticated("the bearer token no longer exists")),
                    Some(t) if t.revoked_ms.is_some() => {
                        return Err(unauthenticated("bearer token refused: revoked"));
                    }
                    Some(t) if t.expires_ms.is_some_and(|e| e <= now) => {
                        return Err(unauthenticated("bearer token refused: expired"));
                    }
                    Some(t) => Some(t.role),
                },
                Actor::Certificate(id) => {
                    let grants: Vec<_> = db::list_grants(&mut conn)
                        .await?
                        .into_iter()
                        .map(|row| row.grant)
                        .collect();
                    certificate_role(&grants, id)
                }
            };
            match role {
                Some(role) if P::allows(role) => Ok(()),
                _ => Err(ApiError::new(
                    ProblemKind::Forbidden,
                    format!(
                        "{request} needs the role {}, which the caller no longer has",
                        P::ROLES
                    ),
                )),
            }
        };
        let result = checked.await;
        if let Err(err) = &result {
            let record = self
                .record(now, AuditAction::AdminRequest)
                .detail(request.to_owned());
            app.audit_refusal(record, err).await;
        }
        result
    }
}

fn unauthenticated(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemKind::Unauthenticated, detail)
}

/// How long a verified token is taken on trust without asking the store again (and
/// paying for an argon2id verification, 19 MiB): revoking it takes effect within this
/// long (at once when it is revoked through this API, which empties the cache).
pub(crate) const TOKEN_CACHE_MS: u64 = 1_000;

/// Failed token attempts one IP address may make per [`FAILURE_WINDOW_MS`]; beyond them
/// its tokens are refused unverified until the window ends (tokens verified before, and
/// still cached, pass).
pub(crate) const FAILURES_PER_IP: u32 = 10;

/// See [`FAILURES_PER_IP`].
pub(crate) const FAILURE_WINDOW_MS: u64 = 10_000;

/// Entries kept in either map before stale ones are dropped.
const MAX_ENTRIES: usize = 4096;

/// Verified tokens by digest, and failed attempts by address (see the constants above).
#[derive(Debug, Default)]
pub(crate) struct TokenGuard {
    verified: HashMap<[u8; 32], (TokenInfo, u64)>,
    failures: HashMap<IpAddr, (u64, u32)>,
}

impl TokenGuard {
    fn cached(&self, key: &[u8; 32], now: u64) -> Option<TokenInfo> {
        self.verified
            .get(key)
            .filter(|(info, until)| now < *until && info.expires_ms.is_none_or(|e| now < e))
            .map(|(info, _)| info.clone())
    }

    fn remember(&mut self, key: [u8; 32], info: TokenInfo, now: u64) {
        if self.verified.len() >= MAX_ENTRIES {
            self.verified.retain(|_, (_, until)| now < *until);
        }
        self.verified.insert(key, (info, now + TOKEN_CACHE_MS));
    }

    /// Forgets every verified token (one was revoked).
    pub(crate) fn forget(&mut self) {
        self.verified.clear();
    }

    /// Forgets the verified tokens among `ids`; returns how many were cached.
    fn forget_ids(&mut self, ids: &[String]) -> usize {
        let before = self.verified.len();
        self.verified.retain(|_, (info, _)| !ids.contains(&info.id));
        before - self.verified.len()
    }

    fn blocked(&self, ip: IpAddr, now: u64) -> bool {
        self.failures
            .get(&ip)
            .is_some_and(|(since, n)| now < since + FAILURE_WINDOW_MS && *n >= FAILURES_PER_IP)
    }

    fn failed(&mut self, ip: IpAddr, now: u64) {
        if self.failures.len() >= MAX_ENTRIES {
            self.failures
                .retain(|_, (since, _)| now < *since + FAILURE_WINDOW_MS);
        }
        let entry = self.failures.entry(ip).or_insert((now, 0));
        if now >= entry.0 + FAILURE_WINDOW_MS {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

/// The admin API's cache of verified tokens, as its host sees it
/// ([`crate::AdminState::token_cache`]): a token revoked in the store by another registrar
/// of a fleet is dropped from it at once, not only when its entry expires
/// ([`TOKEN_CACHE_MS`]).
#[derive(Clone, Debug)]
pub struct TokenCache(pub(crate) Arc<std::sync::Mutex<TokenGuard>>);

impl TokenCache {
    /// Forgets the cached verifications of the tokens `ids` (revoked): their next request
    /// is verified against the store, which refuses them. Returns how many were cached.
    pub fn forget(&self, ids: &[String]) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .forget_ids(ids)
    }
}

/// The token's [`TokenInfo`]: from the cache, or verified against the store (unless its
/// address has failed too often lately).
async fn verify(
    app: &App,
    token: &str,
    now: u64,
    remote: Option<SocketAddr>,
) -> Result<TokenInfo, ApiError> {
    let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let ip = remote.map(|r| r.ip());
    {
        let guard = app.tokens();
        if let Some(info) = guard.cached(&key, now) {
            return Ok(info);
        }
        if ip.is_some_and(|ip| guard.blocked(ip, now)) {
            return Err(unauthenticated(format!(
                "too many failed token attempts from this address: wait up to {} s",
                FAILURE_WINDOW_MS / 1000
            )));
        }
    }
    let mut conn = app.store().acquire().await?;
    match db::verify_token(&mut conn, token, now).await {
        Ok(info) => {
            app.tokens().remember(key, info.clone(), now);
            Ok(info)
        }
        Err(db::Error::Token(why)) => {
            if let Some(ip) = ip {
                app.tokens().failed(ip, now);
            }
            Err(unauthenticated(format!("bearer token refused: {why}")))
        }
        Err(other) => Err(other.into()),
    }
}

/// A bearer token if the request has one, else the client certificate.
async fn authenticate(
    app: &App,
    parts: &Parts,
    now: u64,
    remote: Option<SocketAddr>,
) -> Result<Caller, ApiError> {
    if let Some(value) = parts.headers.get(AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| unauthenticated("use `Authorization: Bearer rsp_...`"))?;
        let info = verify(app, token, now, remote).await?;
        let audit_id =
            SpiffeId::from_segments(&app.local_domain, [TOKEN_ACTOR_SEGMENT, info.id.as_str()])?;
        return Ok(Caller {
            role: Some(info.role),
            actor: Actor::Token(info.id),
            audit_id,
            serial: None,
            remote,
        });
    }
    let Some(peer) = parts.extensions.get::<Peer>() else {
        return Err(unauthenticated(
            "no credentials: send `Authorization: Bearer rsp_...` or an admin client certificate",
        ));
    };
    let mut conn = app.store().acquire().await?;
    let grants: Vec<_> = db::list_grants(&mut conn)
        .await?
        .into_iter()
        .map(|row| row.grant)
        .collect();
    Ok(Caller {
        role: certificate_role(&grants, peer.id()),
        actor: Actor::Certificate(peer.id().clone()),
        audit_id: peer.id().clone(),
        serial: Some(peer.serial().clone()),
        remote,
    })
}

/// The admin role that `grants` give `id` (see the module docs).
pub(crate) fn certificate_role(grants: &[identity::Grant], id: &SpiffeId) -> Option<Role> {
    let has = |action| {
        grants.iter().any(|g| {
            g.namespace == NamespacePattern::Any
                && g.pools.is_any()
                && g.identity.matches(id)
                && g.actions.contains(action)
        })
    };
    if has(Action::AdminWrite) {
        Some(Role::Admin)
    } else if has(Action::AdminRead) {
        Some(Role::Auditor)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(identity: &str, namespace: &str, actions: &[Action]) -> identity::Grant {
        identity::Grant {
            identity: identity.parse().expect("valid pattern"),
            namespace: namespace.parse().expect("valid namespace pattern"),
            pools: "*".parse().expect("valid pool pattern"),
            actions: actions.iter().copied().collect(),
            labels: None,
        }
    }

    #[test]
    fn certificate_roles_come_from_global_admin_grants() {
        let ops: SpiffeId = "spiffe://acme.test/admin/ops".parse().expect("valid");
        let grants = [
            grant("spiffe://acme.test/admin/ops", "*", &[Action::AdminRead]),
            grant(
                "spiffe://acme.test/admin/*",
                "default",
                &[Action::AdminWrite],
            ),
        ];
        assert_eq!(certificate_role(&grants, &ops), Some(Role::Auditor));
        let grants = [grant(
            "spiffe://acme.test/admin/*",
            "*",
            &[Action::AdminWrite],
        )];
        assert_eq!(certificate_role(&grants, &ops), Some(Role::Admin));
        let pe: SpiffeId = "spiffe://acme.test/pe/x".parse().expect("valid");
        assert_eq!(certificate_role(&grants, &pe), None);
    }
}
