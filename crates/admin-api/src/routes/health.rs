//! `/healthz`, `/readyz`, `/metrics` and the OpenAPI document.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Authorized, ReadAll};
use crate::problem::{ApiError, ProblemKind};
use crate::state::App;

/// A probe's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Status {
    /// `ok` or `ready`.
    status: &'static str,
    /// `/readyz` only: `up`, or `down` while the store does not answer. The registrar
    /// stays ready then (it serves resolutions and keep-alives to PUs and PEs from
    /// memory); registrations and admin writes are refused until the store is back.
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<&'static str>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "Alive", body = Status)))]
pub(crate) async fn healthz() -> axum::Json<Status> {
    axum::Json(Status {
        status: "ok",
        store: None,
    })
}

/// Readiness: the registrar serves (not while it starts, stops or waits for its mentor).
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "Not ready"),
    ))]
pub(crate) async fn readyz(State(app): State<Arc<App>>) -> Result<axum::Json<Status>, ApiError> {
    if !app.registrar().ready() {
        return Err(ApiError::new(
            ProblemKind::Unavailable,
            "the registrar is not serving",
        ));
    }
    // An expired CRL of the local domain fails every handshake of that domain closed:
    // the registrar runs but serves nobody of its own domain, and the probe says why.
    if let Some((domain, left)) = crl_seconds_left(&app)
        .into_iter()
        .find(|(d, left)| *d == app.local_domain && *left <= 0)
    {
        return Err(ApiError::new(
            ProblemKind::Unavailable,
            format!(
                "the CRL of trust domain {domain} expired {} s ago: every handshake of its \
                 identities fails until it is re-signed (`rsp-pki crl`, then SIGHUP enrpd)",
                left.unsigned_abs()
            ),
        ));
    }
    Ok(axum::Json(Status {
        status: "ready",
        store: Some(if app.registrar().store_down() {
            "down"
        } else {
            "up"
        }),
    }))
}

/// Seconds until each trusted domain's CRLs stop being current (their earliest
/// nextUpdate), negative once past.
fn crl_seconds_left(app: &App) -> Vec<(identity::TrustDomain, i64)> {
    let now = i64::try_from(app.now() / 1000).unwrap_or(i64::MAX);
    app.trust()
        .crl_next_updates()
        .into_iter()
        .map(|(domain, at)| (domain, unix_seconds(at) - now))
        .collect()
}

/// A time as unix seconds.
fn unix_seconds(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Pools with a series of their own in `rsp_pool_pes`: the ones with the most PEs; the
/// rest are summed into one `other` series, so that a registrar with many pools does not
/// give its metrics store a series per pool.
pub(crate) const MAX_POOL_SERIES: usize = 100;

/// `rsp_pool_pes{namespace,pool}`: PEs per pool (from the change feed), at most
/// [`MAX_POOL_SERIES`] series plus `other`.
fn pool_sizes(app: &App, out: &mut String) {
    let Some(feed) = app.registrar().changes() else {
        return;
    };
    let sizes = feed.pool_sizes();
    let mut samples: Vec<(String, u64)> = sizes
        .iter()
        .take(MAX_POOL_SERIES)
        .map(|(ns, pool, n)| {
            (
                format!("{{namespace=\"{}\",pool=\"{}\"}}", label(ns), label(pool)),
                *n,
            )
        })
        .collect();
    if sizes.len() > MAX_POOL_SERIES {
        let rest = sizes[MAX_POOL_SERIES..].iter().map(|(_, _, n)| n).sum();
        samples.push(("{namespace=\"(other)\",pool=\"(other)\"}".to_owned(), rest));
    }
    metric(
        out,
        "rsp_pool_pes",
        "gauge",
        "PEs per pool: the pools with the most PEs, the rest summed as namespace and pool \"(other)\" (no namespace is written so).",
        &samples,
    );
}

/// `rsp_registrations_total{namespace}`, `rsp_resolutions_total{namespace}`,
/// `rsp_rejections_total{namespace,cause}`: the registrar bounds the namespaces (the rest
/// as `(other)`, refusals naming none as `(none)`); summed over `namespace` they are the
/// unlabelled totals and `{cause}` series these names had before.
fn by_namespace(counts: &[crate::NamespaceMetrics], out: &mut String) {
    let ns = |c: &crate::NamespaceMetrics| format!("namespace=\"{}\"", label(&c.namespace));
    let per = |n: fn(&crate::NamespaceMetrics) -> u64| -> Vec<(String, u64)> {
        counts
            .iter()
            .filter(|c| n(c) > 0)
            .map(|c| (format!("{{{}}}", ns(c)), n(c)))
            .collect()
    };
    metric(
        out,
        "rsp_registrations_total",
        "counter",
        "Registrations accepted (new PEs and re-registrations), by namespace.",
        &per(|c| c.registrations),
    );
    metric(
        out,
        "rsp_resolutions_total",
        "counter",
        "Handle resolutions answered, by namespace.",
        &per(|c| c.resolutions),
    );
    let rejections: Vec<_> = counts
        .iter()
        .flat_map(|c| {
            c.rejections.iter().map(move |(cause, n)| {
                let cause = cause.map_or_else(|| "(other)".to_owned(), |c| format!("{c:#06x}"));
                (format!("{{{},cause=\"{cause}\"}}", ns(c)), *n)
            })
        })
        .collect();
    metric(
        out,
        "rsp_rejections_total",
        "counter",
        "Refused operations by namespace and spec cause code.",
        &rejections,
    );
}

/// `rsp_audit_commit_seconds`: a Prometheus histogram, one observation per record.
fn audit_commit(h: &store::audit::LatencyHistogram, out: &mut String) {
    let name = "rsp_audit_commit_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from an audit record's hand-over to the writer until the commit of its transaction, per record.\n# TYPE {name} histogram"
    );
    for (le, n) in store::audit::BUCKETS_MICROS.iter().zip(h.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {n}", seconds(*le));
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", seconds(h.sum_micros));
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// Microseconds as decimal seconds, exactly (`0.0005`, `1`).
fn seconds(micros: u64) -> String {
    let (whole, frac) = (micros / 1_000_000, micros % 1_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// `rsp_peer_up`, `rsp_peer_checksum_agreement`, `rsp_peer_last_heard_seconds`, by
/// `{peer,server_id}`: the peers the registrar knows (bounded by its configuration and
/// the peers' Server IDs). A peer's identity with a new Server ID (a restart) is a new
/// series; the old one stays down until the registrar forgets it.
async fn peers(app: &App, out: &mut String) {
    let peers = app.registrar().peers().await;
    let now = app.now();
    let key = |p: &crate::PeerView| {
        format!(
            "{{peer=\"{}\",server_id=\"{}\"}}",
            label(&p.identity),
            label(&p.server_id)
        )
    };
    let up: Vec<_> = peers
        .iter()
        .map(|p| (key(p), u64::from(p.state == "active")))
        .collect();
    metric(
        out,
        "rsp_peer_up",
        "gauge",
        "1 while a peer registrar is active (spec §9.5), 0 while probing or dead.",
        &up,
    );
    // No checksum heard yet counts as disagreement: an alert on `== 0 for 5m` then also
    // catches a peer that never announces one.
    let agree: Vec<_> = peers
        .iter()
        .map(|p| (key(p), u64::from(p.checksum_match == Some(true))))
        .collect();
    metric(
        out,
        "rsp_peer_checksum_agreement",
        "gauge",
        "1 when the checksum a peer last announced for the PEs it owns matches this registrar's copy of them (spec §9.6); 0 otherwise or before one was heard.",
        &agree,
    );
    let heard: Vec<_> = peers
        .iter()
        .filter_map(|p| Some((key(p), now.saturating_sub(p.last_heard_ms?) / 1000)))
        .collect();
    metric(
        out,
        "rsp_peer_last_heard_seconds",
        "gauge",
        "Seconds since a peer registrar was last heard (absent until it was).",
        &heard,
    );
}

/// The Prometheus text exposition format's media type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value escaped as the text format wants it.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Registrar and admin API counters, in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format (0.0.4)", body = String,
        content_type = "text/plain")))]
pub(crate) async fn metrics(State(app): State<Arc<App>>, _: Authorized<ReadAll>) -> Response {
    let m = app.registrar().metrics().await;
    let serve = app.state.counters.snapshot();
    let one = |v: u64| vec![(String::new(), v)];
    let mut out = String::new();
    metric(
        &mut out,
        "rsp_connections",
        "gauge",
        "Open ASAP connections.",
        &one(m.connections),
    );
    metric(
        &mut out,
        "rsp_pool_elements",
        "gauge",
        "PEs in the handlespace.",
        &one(m.pool_elements),
    );
    by_namespace(&m.by_namespace, &mut out);
    let failures: Vec<_> = m
        .handshake_failures
        .iter()
        .map(|(reason, n)| {
            (
                format!("{{listener=\"asap\",reason=\"{}\"}}", label(reason)),
                *n,
            )
        })
        .chain(serve.handshake_failures.iter().map(|(reason, n)| {
            (
                format!("{{listener=\"admin\",reason=\"{}\"}}", label(reason)),
                *n,
            )
        }))
        .collect();
    metric(
        &mut out,
        "rsp_handshake_failures_total",
        "counter",
        "Failed TLS handshakes by listener and reason.",
        &failures,
    );
    metric(
        &mut out,
        "rsp_audit_queue",
        "gauge",
        "Audit records queued, not yet committed.",
        &one(m.audit_queue),
    );
    metric(
        &mut out,
        "rsp_audit_refusals_aggregated_total",
        "counter",
        "Refusals (failed handshakes, repeated refused requests) audited in a summary record, not one each.",
        &one(m.refusals_aggregated),
    );
    metric(
        &mut out,
        "rsp_low_disk",
        "gauge",
        "1 while the data directory is below its free-space watermark (registrations and admin writes refused).",
        &one(u64::from(m.low_disk)),
    );
    metric(
        &mut out,
        "rsp_store_up",
        "gauge",
        "1 while the store answers its ping (every second); 0 while it does not: registrations refused (0x6), admin writes refused (503), resolutions and keep-alives served from memory.",
        &one(u64::from(!app.registrar().store_down())),
    );
    metric(
        &mut out,
        "rsp_control_plane_shared",
        "gauge",
        "1 when the store is PostgreSQL shared by a fleet; 0 when it is this registrar's own SQLite: grants, revocations and trust domains made here do not reach its peers.",
        &one(u64::from(
            crate::routes::peers::ControlPlaneScope::of(app.store())
                == crate::routes::peers::ControlPlaneScope::Shared,
        )),
    );
    metric(
        &mut out,
        "rsp_audit_failed_commits_total",
        "counter",
        "Audit batches whose commit failed (their operations were refused).",
        &one(m.audit_failed_commits),
    );
    metric(
        &mut out,
        "rsp_audit_dropped_total",
        "counter",
        "Audit records dropped because the writer could not keep up (their operations, if they needed one, refused).",
        &one(m.audit_dropped),
    );
    metric(
        &mut out,
        "rsp_admin_connections",
        "gauge",
        "Open admin API connections.",
        &one(serve.open_connections),
    );
    metric(
        &mut out,
        "rsp_admin_unaudited_refusals_total",
        "counter",
        "Unauthenticated admin requests refused without an audit record (rate limit).",
        &one(serve.unaudited_refusals),
    );
    audit_commit(&m.audit_commit, &mut out);
    pool_sizes(&app, &mut out);
    peers(&app, &mut out).await;
    let watchers = [
        (
            "{kind=\"pools\"}".to_owned(),
            app.registrar()
                .changes()
                .map_or(0, |feed| feed.watchers() as u64),
        ),
        (
            "{kind=\"audit\"}".to_owned(),
            app.audit_watchers
                .load(std::sync::atomic::Ordering::Relaxed) as u64,
        ),
    ];
    metric(
        &mut out,
        "rsp_watch_streams",
        "gauge",
        "Open watch streams (/v1/watch/pools, /v1/watch/audit).",
        &watchers,
    );
    let now = i64::try_from(app.now() / 1000).unwrap_or(i64::MAX);
    let _ = writeln!(
        out,
        "# HELP rsp_certificate_expiry_seconds Seconds until this registrar's certificate expires (its notAfter); negative once expired.\n# TYPE rsp_certificate_expiry_seconds gauge\nrsp_certificate_expiry_seconds {}",
        unix_seconds(app.trust().identity().as_peer().not_after()) - now
    );
    // Signed: negative once expired (a gauge that alerting compares with 7 days).
    let _ = writeln!(
        out,
        "# HELP rsp_crl_next_update_seconds Seconds until a trust domain's CRLs need re-signing (their earliest nextUpdate); negative once expired.\n# TYPE rsp_crl_next_update_seconds gauge"
    );
    for (domain, left) in crl_seconds_left(&app) {
        let _ = writeln!(
            out,
            "rsp_crl_next_update_seconds{{trust_domain=\"{}\"}} {left}",
            label(domain.as_str())
        );
    }
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_TEXT),
    );
    response
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API",
        body = serde_json::Value, content_type = "application/json")))]
pub(crate) async fn openapi(State(app): State<Arc<App>>) -> Response {
    let doc = app.openapi.get().cloned().unwrap_or_default();
    let mut response = doc.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(super::JSON));
    response
}
