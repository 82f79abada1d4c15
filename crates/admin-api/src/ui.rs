//! The operators' dashboard at `/ui/` (issue 22): three static files built into the
//! binary (plain HTML, CSS and JavaScript, no framework, nothing fetched from elsewhere).
//!
//! The files hold no data, so they are served without credentials; every data call the
//! page makes goes to `/v1/...` with the caller's bearer token (kept in the tab's session
//! storage, never in a cookie or a URL) or the browser's client certificate, and is
//! authorized there like any other call. The strict Content-Security-Policy allows
//! scripts, styles and connections to this origin only and no inline script, so text
//! from the API (identities, handles, audit details) cannot run as code even if it were
//! inserted as markup (app.js inserts it as text). The routes are not part of the API:
//! they stay out of the OpenAPI document.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The page's policy: this origin only, no inline script or style, no framing, no form
/// posts elsewhere (the forms are handled by app.js).
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../ui/index.html");
const CSS: &str = include_str!("../ui/app.css");
const JS: &str = include_str!("../ui/app.js");

/// The dashboard's routes, merged into the admin router after the OpenAPI document is
/// taken, so they are not described there.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    let fixed = HeaderValue::from_static;
    headers.insert(header::CONTENT_TYPE, fixed(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        fixed(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, fixed("nosniff"));
    headers.insert(header::REFERRER_POLICY, fixed("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, fixed("DENY"));
    // A new binary brings new files: check each time (they are small).
    headers.insert(header::CACHE_CONTROL, fixed("no-cache"));
    response
}
