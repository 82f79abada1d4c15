//! Request rate limits (issue 18, item 2; docs/SECURITY.md): token buckets per connection
//! and per identity for handle resolutions, registrations (and deregistrations) and
//! endpoint unreachable reports, checked by the connection task before a request reaches
//! the core. Over the limit, a request is answered with cause 0x6 Lack of Resources
//! (an unreachable report, which has no answer, is dropped), counted, and audited like
//! every refusal (in aggregate when it repeats, [`super::refusals`]).
//!
//! The defaults are far above what a real PU or PE does (a PU resolves when its cache
//! expires or a PE fails; a PE re-registers every few minutes, at most four times a second
//! when its load changes), so that only a client bent on loading the registrar meets them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use ::asap::wire::param::{ErrorCause, OperationError};
use ::asap::wire::{AsapMsg, Resolution};
use identity::SpiffeId;

use enrp_core::registrar::{Action, AuditEvent, ConnId, Remote};
use identity::audit::{AuditAction, Durability};

/// A rate: `per_sec` requests a second on average, bursts of up to twice that. 0: no
/// limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests a second; 0 for no limit.
    pub per_sec: u32,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Self = Self { per_sec: 0 };

    fn burst(self) -> f64 {
        2.0 * f64::from(self.per_sec)
    }
}

/// The rate limits of one connection; one identity may use [`IDENTITY_FACTOR`] times as
/// much over all its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Handle resolutions. Default 100 a second.
    pub resolutions: Rate,
    /// Registrations and deregistrations. Default 100 a second (a process starting a
    /// hundred PEs on one connection gets them all registered at once).
    pub registrations: Rate,
    /// Endpoint unreachable reports. Default 10 a second (the core also counts them per
    /// PU and report window, spec §7.6).
    pub unreachable: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            resolutions: Rate { per_sec: 100 },
            registrations: Rate { per_sec: 100 },
            unreachable: Rate { per_sec: 10 },
        }
    }
}

impl RateLimits {
    /// No limits (benchmarks).
    pub const UNLIMITED: Self = Self {
        resolutions: Rate::UNLIMITED,
        registrations: Rate::UNLIMITED,
        unreachable: Rate::UNLIMITED,
    };

    fn rate(&self, kind: Kind) -> Rate {
        match kind {
            Kind::Resolution => self.resolutions,
            Kind::Registration => self.registrations,
            Kind::Unreachable => self.unreachable,
        }
    }
}

/// How many connections' worth of requests one identity may send: a PE process with a
/// few connections (one per registrar it hunted) stays far below it.
pub const IDENTITY_FACTOR: u32 = 10;

/// Identities tracked before idle ones (full buckets) are forgotten.
const MAX_IDENTITIES: usize = 10_000;

/// What a request is, for its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Resolution,
    Registration,
    Unreachable,
}

impl Kind {
    /// The limited kind of `msg`, if any.
    pub(super) fn of(msg: &AsapMsg) -> Option<Self> {
        match msg {
            AsapMsg::HandleResolution { .. } => Some(Self::Resolution),
            AsapMsg::Registration { .. } | AsapMsg::Deregistration { .. } => {
                Some(Self::Registration)
            }
            AsapMsg::EndpointUnreachable { .. } => Some(Self::Unreachable),
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes a token at `now` if there is one (refilled at `rate`, capped at its burst).
    fn take(&mut self, rate: Rate, scale: u32, now: Instant) -> bool {
        let per_sec = f64::from(rate.per_sec) * f64::from(scale);
        let burst = rate.burst() * f64::from(scale);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn full(&self, rate: Rate, scale: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * f64::from(rate.per_sec) * f64::from(scale)
            >= rate.burst() * f64::from(scale)
    }
}

/// The buckets of one connection or identity, one per [`Kind`] (created full when first
/// used).
#[derive(Clone, Debug, Default)]
pub(super) struct Buckets([Option<Bucket>; 3]);

impl Buckets {
    fn take(&mut self, limits: &RateLimits, kind: Kind, scale: u32, now: Instant) -> bool {
        let rate = limits.rate(kind);
        if rate.per_sec == 0 {
            return true;
        }
        let bucket = self.0[kind.index()].get_or_insert_with(|| Bucket {
            tokens: rate.burst() * f64::from(scale),
            at: now,
        });
        bucket.take(rate, scale, now)
    }

    fn idle(&self, limits: &RateLimits, now: Instant) -> bool {
        [Kind::Resolution, Kind::Registration, Kind::Unreachable]
            .into_iter()
            .all(|k| self.0[k.index()].is_none_or(|b| b.full(limits.rate(k), IDENTITY_FACTOR, now)))
    }
}

/// Which limit a request met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Over {
    Connection,
    Identity,
    /// The data directory is below its free-space watermark (registrations only).
    Disk,
    /// The store does not answer: a registration's record could not be made durable
    /// (registrations only).
    Store,
}

/// The limits and the identities' buckets, shared by all connection tasks.
#[derive(Debug)]
pub(super) struct Limiter {
    limits: RateLimits,
    identities: Mutex<HashMap<SpiffeId, Buckets>>,
}

impl Limiter {
    pub(super) fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            identities: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a request of `kind` by `id` on the connection with buckets `conn` may go
    /// to the core `now`; `Err` names the limit it met. The clock is read only when a
    /// limit applies to `kind` (issue 20: a clock read per message was a system call in the
    /// SCTP guest).
    pub(super) fn admit(
        &self,
        conn: &mut Buckets,
        id: &SpiffeId,
        kind: Kind,
        now: impl FnOnce() -> Instant,
    ) -> Result<(), Over> {
        if self.limits.rate(kind).per_sec == 0 {
            return Ok(());
        }
        let now = now();
        if !conn.take(&self.limits, kind, 1, now) {
            return Err(Over::Connection);
        }
        let mut ids = self
            .identities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ids.len() >= MAX_IDENTITIES && !ids.contains_key(id) {
            // Forget identities that have been quiet long enough to be full again: they
            // would start full anyway.
            ids.retain(|_, b| !b.idle(&self.limits, now));
        }
        // One lookup per message; the identity is cloned only the first time it is seen.
        let take = |b: &mut Buckets| b.take(&self.limits, kind, IDENTITY_FACTOR, now);
        let admitted = match ids.get_mut(id) {
            Some(b) => take(b),
            None => take(ids.entry(id.clone()).or_default()),
        };
        if admitted {
            Ok(())
        } else {
            Err(Over::Identity)
        }
    }
}

/// The answer to a request refused by a rate limit: its response with cause 0x6 Lack of
/// Resources, or `None` for an unreachable report (which has no answer; it is dropped).
pub(super) fn refusal(msg: &AsapMsg) -> Option<AsapMsg> {
    let error = OperationError::single(ErrorCause::LackOfResources);
    match msg {
        AsapMsg::Registration {
            pool_handle,
            pool_element,
            ..
        } => Some(AsapMsg::RegistrationResponse {
            reject: true,
            pool_handle: pool_handle.clone(),
            pe_id: pool_element.pe_id,
            error: Some(error),
        }),
        AsapMsg::Deregistration {
            pool_handle, pe_id, ..
        } => Some(AsapMsg::DeregistrationResponse {
            pool_handle: pool_handle.clone(),
            pe_id: *pe_id,
            error: Some(error),
        }),
        AsapMsg::HandleResolution { pool_handle, .. } => Some(AsapMsg::HandleResolutionResponse {
            pool_handle: pool_handle.clone(),
            result: Resolution::Error(error),
        }),
        _ => None,
    }
}

/// What the core task does with a request refused by a rate limit: audit it (a refusal,
/// aggregated when it repeats) and answer it ([`refusal`]).
pub(super) fn refused(conn: ConnId, client: &Remote, msg: &AsapMsg, over: Over) -> Vec<Action> {
    let (action, namespace, pool_handle, pe_id) = match msg {
        AsapMsg::Registration {
            namespace,
            pool_handle,
            pool_element,
        } => (
            AuditAction::Register,
            namespace,
            pool_handle,
            Some(pool_element.pe_id),
        ),
        AsapMsg::Deregistration {
            namespace,
            pool_handle,
            pe_id,
        } => (
            AuditAction::Deregister,
            namespace,
            pool_handle,
            Some(*pe_id),
        ),
        AsapMsg::HandleResolution {
            namespace,
            pool_handle,
            ..
        } => (AuditAction::Resolve, namespace, pool_handle, None),
        AsapMsg::EndpointUnreachable {
            namespace,
            pool_handle,
            pe_id,
        } => (AuditAction::Report, namespace, pool_handle, Some(*pe_id)),
        _ => return Vec::new(),
    };
    let event = AuditEvent {
        actor: Some((client.id.clone(), client.serial.clone())),
        remote: Some(client.addr),
        namespace: namespace.clone(),
        pool_handle: Some(pool_handle.clone()),
        pe_id,
        action,
        outcome: Some(ErrorCause::LACK_OF_RESOURCES),
        detail: Some(
            match over {
                Over::Connection => "rate limit of the connection",
                Over::Identity => "rate limit of the identity",
                Over::Disk => "low disk: below the free-space watermark",
                Over::Store => "the store does not answer",
            }
            .to_owned(),
        ),
    };
    let mut out = vec![Action::Audit {
        event,
        durability: Durability::Batched,
    }];
    if let Some(reply) = refusal(msg) {
        out.push(Action::Send { conn, msg: reply });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(per_sec: u32) -> RateLimits {
        RateLimits {
            resolutions: Rate { per_sec },
            ..RateLimits::default()
        }
    }

    #[test]
    fn a_connection_gets_its_burst_then_its_rate() {
        let limiter = Limiter::new(limits(10));
        let id: SpiffeId = "spiffe://acme.test/pu/a".parse().expect("id");
        let t0 = tokio::time::Instant::now().into_std();
        let mut conn = Buckets::default();
        let admitted = (0..100)
            .filter(|_| {
                limiter
                    .admit(&mut conn, &id, Kind::Resolution, || t0)
                    .is_ok()
            })
            .count();
        assert_eq!(admitted, 20, "a burst of twice the rate");
        assert_eq!(
            limiter.admit(&mut conn, &id, Kind::Resolution, || t0),
            Err(Over::Connection)
        );
        // A second later: ten more.
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (0..100)
            .filter(|_| {
                limiter
                    .admit(&mut conn, &id, Kind::Resolution, || t1)
                    .is_ok()
            })
            .count();
        assert_eq!(admitted, 10);
        // Registrations have their own bucket.
        assert!(
            limiter
                .admit(&mut conn, &id, Kind::Registration, || t1)
                .is_ok()
        );
    }

    #[test]
    fn an_identity_is_limited_over_all_its_connections() {
        let limiter = Limiter::new(limits(10));
        let id: SpiffeId = "spiffe://acme.test/pu/a".parse().expect("id");
        let other: SpiffeId = "spiffe://acme.test/pu/b".parse().expect("id");
        let t0 = tokio::time::Instant::now().into_std();
        // Many connections of one identity: 10 × the burst in all.
        let admitted = (0..100)
            .flat_map(|_| {
                let mut conn = Buckets::default();
                (0..20)
                    .map(|_| limiter.admit(&mut conn, &id, Kind::Resolution, || t0))
                    .collect::<Vec<_>>()
            })
            .filter(Result::is_ok)
            .count();
        assert_eq!(admitted, 200);
        let mut conn = Buckets::default();
        assert_eq!(
            limiter.admit(&mut conn, &id, Kind::Resolution, || t0),
            Err(Over::Identity)
        );
        // Another identity is not affected.
        assert!(
            limiter
                .admit(&mut conn, &other, Kind::Resolution, || t0)
                .is_ok()
        );
    }

    #[test]
    fn unlimited_admits_everything_and_refusals_carry_0x6() {
        let limiter = Limiter::new(RateLimits::UNLIMITED);
        let id: SpiffeId = "spiffe://acme.test/pu/a".parse().expect("id");
        let mut conn = Buckets::default();
        // Nothing limits: the clock is not even read.
        let no_clock = || -> Instant { panic!("the clock read without a limit") };
        assert!((0..10_000).all(|_| {
            limiter
                .admit(&mut conn, &id, Kind::Resolution, no_clock)
                .is_ok()
        }));
        let handle = ::asap::wire::param::PoolHandle::new("echo").expect("handle");
        let resolution = AsapMsg::HandleResolution {
            namespace: None,
            pool_handle: handle,
            option: None,
            hints: Default::default(),
        };
        match refusal(&resolution) {
            Some(AsapMsg::HandleResolutionResponse {
                result: Resolution::Error(e),
                ..
            }) => assert_eq!(e.causes()[0].code(), ErrorCause::LACK_OF_RESOURCES),
            other => panic!("{other:?}"),
        }
    }
}
