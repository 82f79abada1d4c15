//! `/v1/peers`: the registrar's ENRP peers (empty until peering lands, issue 7).

use std::sync::Arc;

use axum::extract::State;

use crate::auth::{Authorized, ReadAll};
use crate::problem::ApiError;
use crate::registrar::PeerView;
use crate::state::App;

/// The ENRP peers and their status.
#[utoipa::path(get, path = "/v1/peers", tag = "peers",
    responses((status = 200, description = "The peers", body = [PeerView])))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
) -> Result<axum::Json<Vec<PeerView>>, ApiError> {
    Ok(axum::Json(app.registrar().peers().await))
}
