//! `/v1/namespaces/{namespace}/pools`: pools with their live PEs (from the registrar) and
//! their declared limits (from the store).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use identity::audit::AuditAction;
use identity::{PeId, PoolHandle};
use serde::{Deserialize, Serialize};
use store::db;
use utoipa::ToSchema;

use crate::auth::{Authorized, Operate, ReadOps};
use crate::extract::{ApiJson, ApiPath, OptionalJson};
use crate::problem::{ApiError, ProblemKind};
use crate::registrar::{PeView, PoolView, Scope};
use crate::routes::{handle_text, path_handle, path_namespace, require_namespace};
use crate::schema::{NamespaceName, PeIdText, PoolHandleText};
use crate::state::App;

/// An RFC 5356 pool policy (spec §5.1), by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PolicyName {
    /// Round Robin (0x00000001).
    RoundRobin,
    /// Weighted Round Robin (0x00000002).
    WeightedRoundRobin,
    /// Random (0x00000003).
    Random,
    /// Weighted Random (0x00000004).
    WeightedRandom,
    /// Priority (0x00000005).
    Priority,
    /// Least Used (0x40000001).
    LeastUsed,
    /// Least Used with Degradation (0x40000002).
    LeastUsedDegradation,
    /// Priority Least Used (0x40000003).
    PriorityLeastUsed,
    /// Randomized Least Used (0x40000004).
    RandomizedLeastUsed,
}

impl PolicyName {
    const ALL: [(Self, u32); 9] = [
        (Self::RoundRobin, 0x0000_0001),
        (Self::WeightedRoundRobin, 0x0000_0002),
        (Self::Random, 0x0000_0003),
        (Self::WeightedRandom, 0x0000_0004),
        (Self::Priority, 0x0000_0005),
        (Self::LeastUsed, 0x4000_0001),
        (Self::LeastUsedDegradation, 0x4000_0002),
        (Self::PriorityLeastUsed, 0x4000_0003),
        (Self::RandomizedLeastUsed, 0x4000_0004),
    ];

    fn number(self) -> u32 {
        Self::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map_or(0, |(_, n)| *n)
    }

    fn from_number(n: u32) -> Option<Self> {
        Self::ALL.iter().find(|(_, m)| *m == n).map(|(p, _)| *p)
    }
}

/// What an operator declared for a pool.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Declaration {
    /// The policy every PE must register with, or `null` for whatever the first
    /// registration chooses.
    policy: Option<PolicyName>,
    /// At most this many PEs, or `null` for the registrar-wide limit.
    max_pes: Option<u32>,
    /// When it was declared, unix ms.
    created_ms: u64,
}

impl From<&db::PoolDecl> for Declaration {
    fn from(d: &db::PoolDecl) -> Self {
        Self {
            policy: d.policy.and_then(PolicyName::from_number),
            max_pes: d.max_pes,
            created_ms: d.created_ms,
        }
    }
}

/// A pool: its live PEs and, if an operator declared it, its limits.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Pool {
    /// The namespace.
    namespace: String,
    /// The pool handle: text, or `hex:` and its bytes in hex.
    pub(crate) handle: String,
    /// The policy of its live PEs (`null` when it has none).
    policy: Option<String>,
    /// The declared limits, `null` if it was never declared.
    declared: Option<Declaration>,
    /// The live PEs, by PE ID.
    pool_elements: Vec<PeView>,
}

fn pool(
    namespace: &str,
    handle: &[u8],
    live: Option<PoolView>,
    decl: Option<&db::PoolDecl>,
) -> Pool {
    let (policy, pool_elements) = live.map_or((None, Vec::new()), |v| (v.policy, v.pool_elements));
    Pool {
        namespace: namespace.to_owned(),
        handle: handle_text(handle),
        policy,
        declared: decl.map(Declaration::from),
        pool_elements,
    }
}

/// The limits to declare for a pool.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PoolLimits {
    /// The policy every PE must register with; absent or `null`: whatever the first
    /// registration chooses.
    #[serde(default)]
    policy: Option<PolicyName>,
    /// At most this many PEs (at least 1); absent or `null`: the registrar-wide limit.
    #[serde(default, deserialize_with = "crate::extract::whole_number")]
    // Not `int32` (what utoipa says of a u32): that format ends at 2^31 - 1.
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 4_294_967_295_u64)]
    max_pes: Option<u32>,
}

/// Every pool of a namespace that has live PEs or a declaration, by handle.
#[utoipa::path(get, path = "/v1/namespaces/{namespace}/pools", tag = "pools",
    params(("namespace" = NamespaceName, Path, description = "The namespace")),
    responses(
        (status = 200, description = "The pools", body = [Pool]),
        (status = 404, description = "No such namespace"),
    ))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _: Authorized<ReadOps>,
    ApiPath(namespace): ApiPath<String>,
) -> Result<axum::Json<Vec<Pool>>, ApiError> {
    Ok(axum::Json(pools_of(&app, &namespace).await?))
}

/// The pools of a namespace as [`list`] answers them (also the watch stream's snapshot).
pub(crate) async fn pools_of(app: &App, namespace: &str) -> Result<Vec<Pool>, ApiError> {
    let namespace = namespace.to_owned();
    let decls = {
        let mut conn = app.store().acquire().await?;
        require_namespace(&mut conn, &namespace).await?;
        db::list_pools(&mut conn, &namespace).await?
    };
    let mut live = app.registrar().pools(&namespace).await;
    let mut out = Vec::new();
    for decl in &decls {
        let text = handle_text(&decl.handle);
        let view = live
            .iter()
            .position(|v| v.handle == text)
            .map(|i| live.swap_remove(i));
        out.push(pool(&namespace, &decl.handle, view, Some(decl)));
    }
    for view in live {
        out.push(Pool {
            namespace: namespace.clone(),
            handle: view.handle,
            policy: view.policy,
            declared: None,
            pool_elements: view.pool_elements,
        });
    }
    out.sort_by(|a, b| a.handle.cmp(&b.handle));
    Ok(out)
}

async fn find(app: &App, namespace: &str, handle_param: &str) -> Result<(Vec<u8>, Pool), ApiError> {
    path_namespace(namespace)?;
    let handle = path_handle(namespace, handle_param)?;
    let decl = {
        let mut conn = app.store().acquire().await?;
        require_namespace(&mut conn, namespace).await?;
        db::get_pool(&mut conn, namespace, &handle).await?
    };
    let live = app.registrar().pool(namespace, &handle).await;
    if decl.is_none() && live.as_ref().is_none_or(|v| v.pool_elements.is_empty()) {
        return Err(ApiError::new(
            ProblemKind::NotFound,
            format!("no pool {handle_param:?} in namespace {namespace:?}"),
        ));
    }
    let view = pool(namespace, &handle, live, decl.as_ref());
    Ok((handle, view))
}

/// One pool.
#[utoipa::path(get, path = "/v1/namespaces/{namespace}/pools/{pool}", tag = "pools",
    params(
        ("namespace" = NamespaceName, Path, description = "The namespace"),
        ("pool" = PoolHandleText, Path, description = "The pool handle: text, or `hex:` and hex digits"),
    ),
    responses(
        (status = 200, description = "The pool", body = Pool),
        (status = 404, description = "No such namespace or pool"),
    ))]
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    _: Authorized<ReadOps>,
    ApiPath((namespace, handle)): ApiPath<(String, String)>,
) -> Result<axum::Json<Pool>, ApiError> {
    Ok(axum::Json(find(&app, &namespace, &handle).await?.1))
}

/// Declares a pool's limits (or replaces its declaration).
#[utoipa::path(put, path = "/v1/namespaces/{namespace}/pools/{pool}", tag = "pools",
    params(
        ("namespace" = NamespaceName, Path, description = "The namespace"),
        ("pool" = PoolHandleText, Path, description = "The pool handle: text, or `hex:` and hex digits"),
    ),
    request_body = PoolLimits,
    responses(
        (status = 200, description = "The pool as declared", body = Pool),
        (status = 404, description = "No such namespace"),
        (status = 409, description = "A new declaration, and the store holds the most pool declarations it takes"),
        (status = 422, description = "Invalid pool handle or limits"),
    ))]
pub(crate) async fn put(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<Operate>,
    ApiPath((namespace, handle_param)): ApiPath<(String, String)>,
    ApiJson(limits): ApiJson<PoolLimits>,
) -> Result<axum::Json<Pool>, ApiError> {
    let subject = path_namespace(&namespace)?;
    let now = app.now();
    let mut record = caller
        .record(now, AuditAction::AdminPoolDeclare)
        .namespace(subject);
    let result = async {
        let handle = crate::routes::parse_handle(&handle_param).ok_or_else(|| {
            ApiError::new(
                ProblemKind::Invalid,
                "a pool handle is 1 to 32 bytes: text, or `hex:` and hex digits",
            )
        })?;
        let mut decl = db::PoolDecl::new(namespace.clone(), handle.clone());
        decl.policy = limits.policy.map(PolicyName::number);
        decl.max_pes = limits.max_pes;
        Ok(decl)
    }
    .await;
    let mut tx = app.begin().await?;
    let result = match result {
        Ok(decl) => {
            record.pool = PoolHandle::new(&decl.handle);
            record = record.detail(format!(
                "policy {:?}, max_pes {:?}",
                limits.policy, limits.max_pes
            ));
            db::put_pool(&mut tx, &decl, now)
                .await
                .map_err(ApiError::from)
        }
        Err(e) => Err(e),
    };
    let decl = app.finish(tx, record, result).await?;
    app.registrar()
        .declare_pool(crate::PoolDeclaration {
            namespace: namespace.clone(),
            handle: decl.handle.clone(),
            limits: Some((decl.policy, decl.max_pes)),
        })
        .await;
    let live = app.registrar().pool(&namespace, &decl.handle).await;
    Ok(axum::Json(pool(
        &namespace,
        &decl.handle,
        live,
        Some(&decl),
    )))
}

/// Deletes a pool: its declaration, and every live PE is deregistered.
#[utoipa::path(delete, path = "/v1/namespaces/{namespace}/pools/{pool}", tag = "pools",
    params(
        ("namespace" = NamespaceName, Path, description = "The namespace"),
        ("pool" = PoolHandleText, Path, description = "The pool handle: text, or `hex:` and hex digits"),
    ),
    responses(
        (status = 204, description = "Deleted; its PEs are deregistered"),
        (status = 404, description = "No such namespace or pool"),
    ))]
pub(crate) async fn delete(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<Operate>,
    ApiPath((namespace, handle_param)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (handle, view) = find(&app, &namespace, &handle_param).await?;
    let mut record = caller
        .record(app.now(), AuditAction::AdminPoolDelete)
        .namespace(path_namespace(&namespace)?)
        .detail(format!("{} live PEs", view.pool_elements.len()));
    record.pool = PoolHandle::new(&handle);
    let mut tx = app.begin().await?;
    let result = if view.declared.is_some() {
        db::delete_pool(&mut tx, &namespace, &handle)
            .await
            .map_err(ApiError::from)
    } else {
        Ok(())
    };
    app.finish(tx, record, result).await?;
    app.registrar()
        .declare_pool(crate::PoolDeclaration {
            namespace: namespace.clone(),
            handle: handle.clone(),
            limits: None,
        })
        .await;
    app.registrar()
        .remove(Scope::Pool { namespace, handle }, caller.actor.clone())
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The live PEs of a pool.
#[utoipa::path(get, path = "/v1/namespaces/{namespace}/pools/{pool}/pool-elements", tag = "pools",
    params(
        ("namespace" = NamespaceName, Path, description = "The namespace"),
        ("pool" = PoolHandleText, Path, description = "The pool handle: text, or `hex:` and hex digits"),
    ),
    responses(
        (status = 200, description = "The PEs, by PE ID", body = [PeView]),
        (status = 404, description = "No such namespace or pool"),
    ))]
pub(crate) async fn list_pes(
    State(app): State<Arc<App>>,
    _: Authorized<ReadOps>,
    ApiPath((namespace, handle)): ApiPath<(String, String)>,
) -> Result<axum::Json<Vec<PeView>>, ApiError> {
    Ok(axum::Json(
        find(&app, &namespace, &handle).await?.1.pool_elements,
    ))
}

/// A PE ID as the API writes it (`0x1a2b3c4d`) or in decimal.
pub(crate) fn parse_pe_id(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) if !hex.is_empty() && hex.len() <= 8 => u32::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
        None => None,
    }
}

/// Force-deregisters one PE.
#[utoipa::path(delete, path = "/v1/namespaces/{namespace}/pools/{pool}/pool-elements/{pe_id}", tag = "pools",
    params(
        ("namespace" = NamespaceName, Path, description = "The namespace"),
        ("pool" = PoolHandleText, Path, description = "The pool handle: text, or `hex:` and hex digits"),
        ("pe_id" = PeIdText, Path, description = "The PE ID: `0x` and up to 8 hex digits, or decimal"),
    ),
    responses(
        (status = 204, description = "Deregistered"),
        (status = 404, description = "No such namespace, pool or PE"),
    ))]
pub(crate) async fn delete_pe(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<Operate>,
    ApiPath((namespace, handle_param, pe_param)): ApiPath<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let subject = path_namespace(&namespace)?;
    let handle = path_handle(&namespace, &handle_param)?;
    let not_found = || {
        ApiError::new(
            ProblemKind::NotFound,
            format!("no PE {pe_param:?} in pool {handle_param:?} of namespace {namespace:?}"),
        )
    };
    let pe_id = parse_pe_id(&pe_param).ok_or_else(not_found)?;
    {
        let mut conn = app.store().acquire().await?;
        require_namespace(&mut conn, &namespace).await?;
    }
    let scope = Scope::Pe {
        namespace: namespace.clone(),
        handle: handle.clone(),
        pe_id,
    };
    let removed = app.registrar().remove(scope, caller.actor.clone()).await;
    let mut record = caller
        .record(app.now(), AuditAction::AdminPeDeregister)
        .namespace(subject);
    record.pool = PoolHandle::new(&handle);
    // PE ID 0 is no PE's (spec §4.4): its refusal is audited without it.
    record.pe_id = PeId::new(pe_id);
    if removed == 0 {
        let err = not_found();
        app.audit_refusal(record, &err).await;
        return Err(err);
    }
    app.audit(record).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How long a drain lasts when the request names no deadline: 300 s.
pub(crate) const DEFAULT_DRAIN_SECS: u32 = 300;
/// The longest drain: one day (a PE's longest registration life, spec §4.4 project rule).
pub(crate) const MAX_DRAIN_SECS: u32 = 86_400;

/// How long a drain lasts.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DrainRequest {
    /// Seconds from now until the PE's home registrar deregisters it: 1 to 86400;
    /// absent, `null` or no body at all: 300.
    #[serde(default, deserialize_with = "crate::extract::whole_number")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 86_400)]
    deadline_secs: Option<u32>,
}

/// A drain as the registrar took it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Drained {
    /// The PE ID, in hex.
    pe_id: String,
    /// When its home registrar deregisters it, unix ms.
    drain_deadline_ms: u64,
}

/// The PE a drain route names, its audit record started: the namespace must exist.
async fn drained_pe(
    app: &App,
    caller: &crate::auth::Caller,
    action: AuditAction,
    (namespace, handle_param, pe_param): (&str, &str, &str),
) -> Result<(crate::PeRef, store::audit::Record), ApiError> {
    let subject = path_namespace(namespace)?;
    let handle = path_handle(namespace, handle_param)?;
    let mut record = caller.record(app.now(), action).namespace(subject);
    record.pool = PoolHandle::new(&handle);
    let Some(pe_id) = parse_pe_id(pe_param) else {
        let err = ApiError::new(
            ProblemKind::NotFound,
            format!("no PE {pe_param:?} in pool {handle_param:?} of namespace {namespace:?}"),
        );
        app.audit_refusal(record, &err).await;
        return Err(err);
    };
    record.pe_id = PeId::new(pe_id);
    let found = {
        let mut conn = app.store().acquire().await?;
        require_namespace(&mut conn, namespace).await
    };
    if let Err(err) = found {
        app.audit_refusal(record, &err).await;
        return Err(err);
    }
    let pe = crate::PeRef {
        namespace: namespace.to_owned(),
        handle,
        pe_id,
    };
    Ok((pe, record))
}

fn drain_problem(e: &crate::DrainError, pe_param: &str, handle_param: &str) -> ApiError {
    match e {
        crate::DrainError::NoSuchPe => ApiError::new(
            ProblemKind::NotFound,
            format!("no PE {pe_param:?} in pool {handle_param:?} here"),
        ),
        other => ApiError::new(ProblemKind::Conflict, other.to_string()),
    }
}

/// Drains one PE: it stays registered (its keep-alives go on) but no registrar returns
/// it in resolutions from now on, so PUs open no new sessions with it while its open ones
/// go on; at the deadline its home registrar deregisters it (audited `remove:drained`).
/// Only the PE's home registrar drains it (409 elsewhere, naming the home). The PE cannot
/// undo the drain by registering again; after the deadline its PE ID stays out until the
/// drain is lifted (`DELETE`). Draining again sets a new deadline.
#[utoipa::path(put, path = "/v1/namespaces/{namespace}/pools/{pool}/pool-elements/{pe_id}/drain", tag = "pools",
    params(
        ("namespace" = NamespaceName, Path, description = "The namespace"),
        ("pool" = PoolHandleText, Path, description = "The pool handle: text, or `hex:` and hex digits"),
        ("pe_id" = PeIdText, Path, description = "The PE ID: `0x` and up to 8 hex digits, or decimal"),
    ),
    request_body(content = Option<DrainRequest>, description = "The deadline; optional (300 s)"),
    responses(
        (status = 200, description = "Draining", body = Drained),
        (status = 404, description = "No such namespace, pool or PE"),
        (status = 409, description = "The PE's home is another registrar, or this one remembers its most drains (10,000)"),
        (status = 422, description = "A deadline out of range"),
    ))]
pub(crate) async fn drain_pe(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<Operate>,
    ApiPath((namespace, handle_param, pe_param)): ApiPath<(String, String, String)>,
    OptionalJson(request): OptionalJson<DrainRequest>,
) -> Result<axum::Json<Drained>, ApiError> {
    let (pe, mut record) = drained_pe(
        &app,
        &caller,
        AuditAction::AdminPeDrain,
        (&namespace, &handle_param, &pe_param),
    )
    .await?;
    let secs = request.deadline_secs.unwrap_or(DEFAULT_DRAIN_SECS);
    if !(1..=MAX_DRAIN_SECS).contains(&secs) {
        let err = ApiError::new(
            ProblemKind::Invalid,
            format!("deadline_secs is 1 to {MAX_DRAIN_SECS}"),
        );
        app.audit_refusal(record, &err).await;
        return Err(err);
    }
    let deadline_ms = app.now() + u64::from(secs) * 1000;
    record = record.detail(format!("deadline {deadline_ms} (unix ms, in {secs} s)"));
    let pe_id = pe.pe_id;
    if let Err(e) = app.registrar().drain(pe, Some(deadline_ms)).await {
        let err = drain_problem(&e, &pe_param, &handle_param);
        app.audit_refusal(record, &err).await;
        return Err(err);
    }
    app.audit(record).await?;
    Ok(axum::Json(Drained {
        pe_id: format!("{pe_id:#010x}"),
        drain_deadline_ms: deadline_ms,
    }))
}

/// Lifts an operator's drain of one PE (the one way to cancel it): a draining PE is
/// returned in resolutions again, a drained PE ID may register again.
#[utoipa::path(delete, path = "/v1/namespaces/{namespace}/pools/{pool}/pool-elements/{pe_id}/drain", tag = "pools",
    params(
        ("namespace" = NamespaceName, Path, description = "The namespace"),
        ("pool" = PoolHandleText, Path, description = "The pool handle: text, or `hex:` and hex digits"),
        ("pe_id" = PeIdText, Path, description = "The PE ID: `0x` and up to 8 hex digits, or decimal"),
    ),
    responses(
        (status = 204, description = "The drain is lifted"),
        (status = 404, description = "No such namespace, or no drain of that PE here"),
    ))]
pub(crate) async fn undrain_pe(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<Operate>,
    ApiPath((namespace, handle_param, pe_param)): ApiPath<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let (pe, record) = drained_pe(
        &app,
        &caller,
        AuditAction::AdminPeUndrain,
        (&namespace, &handle_param, &pe_param),
    )
    .await?;
    if let Err(e) = app.registrar().drain(pe, None).await {
        let err = drain_problem(&e, &pe_param, &handle_param);
        app.audit_refusal(record, &err).await;
        return Err(err);
    }
    app.audit(record).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pe_ids_in_hex_or_decimal() {
        assert_eq!(parse_pe_id("0x1a2b3c4d"), Some(0x1a2b_3c4d));
        assert_eq!(parse_pe_id("42"), Some(42));
        assert_eq!(parse_pe_id("0x"), None);
        assert_eq!(parse_pe_id("0x123456789"), None);
        assert_eq!(parse_pe_id("-1"), None);
        assert_eq!(parse_pe_id("4294967296"), None);
    }

    #[test]
    fn policy_names_round_trip_their_numbers() {
        for (p, n) in PolicyName::ALL {
            assert_eq!(p.number(), n);
            assert_eq!(PolicyName::from_number(n), Some(p));
        }
    }
}
