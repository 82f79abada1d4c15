//! The rsp admin REST API (ARCHITECTURE.md §7): operators manage namespaces, pools, trust
//! domains, grants, revocations, tokens and the audit log over HTTPS, with curl.
//!
//! - [`AdminState`]: what the API works on (the store, the trust store, the live
//!   registrar through the [`Registrar`] trait, a clock); [`router`] turns it into an axum
//!   [`Router`](axum::Router) with every route under `/v1` plus `/healthz`, `/readyz` and
//!   `/metrics`, and the OpenAPI 3.1 document at `/v1/openapi.json`; the operators'
//!   dashboard (static files that call the API) is served at `/ui/`.
//! - [`serve`]: HTTPS (tokio-rustls + hyper-util, HTTP/1.1 and h2) with a fresh rustls
//!   configuration per connection and the client certificate's [`trust::Peer`] handed to
//!   the handlers.
//! - Errors are RFC 9457 problem details ([`Problem`]), each kind with a stable `type`.
//! - Every write commits together with its audit record, which names the caller (a token
//!   or a certificate); refused requests (401, 403, 404, 409, 422 on a write) are audited
//!   too. See [`auth`] for the roles.
//!
//! The API never reads the clock itself (the host passes one) and never depends on `enrp`:
//! `enrpd` implements [`Registrar`] and serves the router.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod changes;
mod early_answer;
mod extract;
mod openapi;
mod problem;
mod registrar;
mod routes;
mod schema;
mod serve;
mod state;
mod ui;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use auth::{RemoteAddr, TokenCache};
pub use changes::{ChangeKind, PoolChange, PoolChanges};
pub use extract::{JSON_BODY_LIMIT, PEM_BODY_LIMIT, PEM_MEDIA_TYPE};
pub use problem::{ApiError, PROBLEM_JSON, Problem, ProblemKind};
pub use registrar::{
    Actor, CheckView, DrainError, Metrics, NamespaceMetrics, PeRef, PeView, PeerView,
    PoolDeclaration, PoolView, Registrar, Scope, TlsLayer,
};
pub use routes::peers::ControlPlaneScope;
pub use routes::{HEX_PREFIX, handle_text, parse_handle};
pub use serve::{ServeCounters, ServeOptions, serve};
pub use state::AdminState;

use crate::routes::{
    audit, audit_archives, default_namespaces, grants, health, namespaces, peers, pools,
    revocations, tokens, trust_domains, watch,
};
use crate::state::App;

/// The routes and their OpenAPI description, built together so that no route goes
/// undocumented.
fn api() -> OpenApiRouter<Arc<App>> {
    let pem_limit = || DefaultBodyLimit::max(PEM_BODY_LIMIT);
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi))
        .routes(routes!(namespaces::list, namespaces::create))
        .routes(routes!(namespaces::get, namespaces::delete))
        .routes(routes!(pools::list))
        .routes(routes!(pools::get, pools::put, pools::delete))
        .routes(routes!(pools::list_pes))
        .routes(routes!(pools::delete_pe))
        .routes(routes!(pools::drain_pe, pools::undrain_pe))
        .routes(routes!(trust_domains::list, trust_domains::add).layer(pem_limit()))
        .routes(routes!(trust_domains::get, trust_domains::remove))
        .routes(routes!(grants::list, grants::create))
        .routes(routes!(grants::get, grants::delete))
        .routes(routes!(
            default_namespaces::list,
            default_namespaces::create
        ))
        .routes(routes!(default_namespaces::get, default_namespaces::delete))
        .routes(routes!(revocations::list, revocations::create))
        .routes(routes!(revocations::put_crls).layer(pem_limit()))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(peers::list))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(audit_archives::list, audit_archives::create))
        .routes(routes!(audit_archives::get))
        .routes(routes!(watch::pools))
        .routes(routes!(watch::audit))
}

/// The OpenAPI document of the API, as served at `/v1/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::finish(api().into_openapi())
}

/// The admin API's router over `state`: serve it with [`serve`] (or call it directly in
/// tests, e.g. with `tower::ServiceExt::oneshot`).
pub fn router(state: AdminState) -> axum::Router {
    let app = App::new(state);
    let (router, doc) = api().split_for_parts();
    let doc = serde_json::to_string(&openapi::finish(doc)).expect("the document serializes");
    app.openapi.set(doc).expect("a new App has no document yet");
    router
        // The dashboard's static files: no data, no credentials, not in the document.
        .merge(ui::routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        // Routes that take PEM raise this limit for themselves.
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn(same_site_writes))
        // Outermost, so that every early answer (including the one above) waits for
        // the rest of its request's body: see early_answer.rs.
        .layer(axum::middleware::from_fn(early_answer::drain_unread_body))
        .with_state(app)
}

/// Refuses a state-changing request that a browser sent from another site (403): its
/// `Origin` is not this API's own (`https://` + `Host`), or `Sec-Fetch-Site` says
/// `cross-site`. Tools (curl, rsp, scripts) send neither header and pass; so do reads.
async fn same_site_writes(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if !request.method().is_safe()
        && let Some(why) = cross_site(
            request.headers(),
            request.uri().authority().map(|a| a.as_str()),
        )
    {
        return ApiError::new(ProblemKind::Forbidden, why).into_response();
    }
    next.run(request).await
}

/// Why the headers show a cross-site request, if they do.
fn cross_site(headers: &axum::http::HeaderMap, authority: Option<&str>) -> Option<String> {
    let text = |name| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("(not text)").to_owned())
    };
    if text("sec-fetch-site").is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return Some("cross-site request refused (Sec-Fetch-Site: cross-site)".to_owned());
    }
    let origin = text("origin")?;
    // The authority the client addressed: HTTP/1.1 `Host`, HTTP/2 `:authority` (which
    // hyper puts in the URI).
    let host = text("host").or_else(|| authority.map(str::to_owned));
    let ours = host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("https://{h}")));
    (!ours).then(|| format!("cross-site request refused: Origin {origin:?} is not this API"))
}

async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::new(ProblemKind::NotFound, format!("no route {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::new(
        ProblemKind::MethodNotAllowed,
        format!("{} does not accept {method}", uri.path()),
    )
}

#[cfg(test)]
mod tests;
