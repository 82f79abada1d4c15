//! RFC 5354 parameters (spec §4) and the project parameters (spec §12.9).

mod ids;
mod policy;
mod pool_handle;

pub use ids::{PeId, ServerId};
pub use policy::{Load, Policy, PolicyType};
pub use pool_handle::PoolHandle;
