//! `/v1/peers`: the registrar's ENRP peers, and whether its control plane is shared with
//! them (issue 19 item 5).

use std::sync::Arc;

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Authorized, ReadAll};
use crate::problem::ApiError;
use crate::registrar::PeerView;
use crate::state::App;

/// Where the registrar's control plane (trust domains, grants, revocations, CRLs,
/// namespaces, pools, default namespaces, tokens) lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ControlPlaneScope {
    /// In this registrar's own SQLite store: what is decided here does not reach its
    /// peers (each registrar of a SQLite fleet is managed on its own).
    Local,
    /// In a PostgreSQL store that the registrars of a fleet share.
    Shared,
}

impl ControlPlaneScope {
    /// The control plane of a registrar on `store`.
    pub fn of(store: &store::db::Store) -> Self {
        match store.backend() {
            store::db::Backend::Postgres => Self::Shared,
            _ => Self::Local,
        }
    }
}

/// `GET /v1/peers`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Peers {
    /// `local`: revocations, grants and trust domains made through this registrar do not
    /// reach its peers (use `enrpd init --store postgres://…` for a fleet).
    control_plane: ControlPlaneScope,
    /// The ENRP peers and their status.
    peers: Vec<PeerView>,
}

/// The ENRP peers and their status, and whether the control plane is shared with them.
#[utoipa::path(get, path = "/v1/peers", tag = "peers",
    responses((status = 200, description = "The peers", body = Peers)))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
) -> Result<axum::Json<Peers>, ApiError> {
    Ok(axum::Json(Peers {
        control_plane: ControlPlaneScope::of(app.store()),
        peers: app.registrar().peers().await,
    }))
}
