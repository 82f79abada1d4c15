//! The gateway for clients that do not speak ASAP (draft-tuexen-rserpool-reqts §2.5.2):
//! one client's byte stream carried over TLS to a PE chosen by the pool policy; a PE that
//! cannot be reached is reported (spec §7.6) and the next one chosen. What each connection
//! `rsp gateway` accepts runs.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Error;
use super::failover::{PeError, connect_tls, pe_target};
use super::pu::PoolUser;
use crate::wire::param::PeId;

/// Why a client could not be carried to a PE.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The pool has no PE left that could be reached.
    #[error("no PE of the pool is reachable")]
    NoPe(#[source] Error),
    /// Carrying the bytes failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Carries `client` to a PE of `users`' pool until either side closes; `on_unreachable`
/// hears each PE that could not be reached (it is reported and the next one tried).
/// Returns the bytes carried from the client and to it.
pub async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    users: &PoolUser,
    mut on_unreachable: impl FnMut(PeId, &PeError),
) -> Result<(u64, u64), GatewayError> {
    loop {
        let e = users.select().await.map_err(GatewayError::NoPe)?;
        let pe_id = e.pool_element.pe_id;
        let connected = match pe_target(users.trust(), &e) {
            Ok((config, addr)) => connect_tls(config, addr).await,
            Err(err) => Err(err),
        };
        match connected {
            Ok(mut pe) => return Ok(tokio::io::copy_bidirectional(client, &mut pe).await?),
            Err(err) => {
                on_unreachable(pe_id, &err);
                users.report_unreachable(pe_id).await;
            }
        }
    }
}
