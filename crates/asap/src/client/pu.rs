//! The pool user side of a registrar (spec §7.3, §7.6): handle resolution and endpoint
//! unreachable reports.

use std::time::Duration;

use super::{Connection, Error};
use crate::wire::param::{HandleResolutionOption, Namespace, PeId, Policy, PoolHandle};
use crate::wire::{AsapMsg, PeEntry, Resolution};

/// T1-ENRPrequest (spec §10): how long a request waits for its answer. 15 s.
pub const T1_REQUEST: Duration = Duration::from_secs(15);

/// What a handle resolution returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The pool's policy.
    pub policy: Option<Policy>,
    /// The PEs in the registrar's selection order, each with its registrant identity.
    pub pool_elements: Vec<PeEntry>,
}

/// Resolves `pool_handle` (spec §7.3); `items` asks for that many PEs (option 0x803F).
/// An unknown pool, or one this identity may not see, is [`Error::Rejected`] with 0x9.
pub async fn resolve(
    conn: &mut Connection,
    namespace: Option<Namespace>,
    pool_handle: &PoolHandle,
    items: Option<u32>,
) -> Result<Resolved, Error> {
    conn.send(&AsapMsg::HandleResolution {
        namespace,
        pool_handle: pool_handle.clone(),
        option: items.map(|items| HandleResolutionOption { items }),
    })
    .await?;
    let answer = tokio::time::timeout(T1_REQUEST, async {
        loop {
            match conn.recv().await? {
                AsapMsg::HandleResolutionResponse {
                    pool_handle: h,
                    result,
                } if h == *pool_handle => return Ok::<_, Error>(result),
                // Anything else (an error report, a stray message) is not our answer.
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| Error::Closed)??;
    match answer {
        Resolution::Found {
            policy,
            pool_elements,
        } => Ok(Resolved {
            policy,
            pool_elements,
        }),
        Resolution::Error(e) => Err(Error::Rejected(e.causes().first().map_or(0, |c| c.code()))),
    }
}

/// Reports a PE unreachable (spec §7.6). The registrar answers nothing.
pub async fn report_unreachable(
    conn: &mut Connection,
    namespace: Option<Namespace>,
    pool_handle: &PoolHandle,
    pe_id: PeId,
) -> Result<(), Error> {
    conn.send(&AsapMsg::EndpointUnreachable {
        namespace,
        pool_handle: pool_handle.clone(),
        pe_id,
    })
    .await
}
