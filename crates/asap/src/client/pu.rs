//! The pool user side (spec §7.3, §7.6): handle resolution and endpoint unreachable
//! reports on one registrar connection, and [`PoolUser`], which adds the resolution
//! cache, selection by the pool policy, and retries and server hunt.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use trust::TrustStore;

use super::backoff::Backoff;
use super::{Connection, Error};
use crate::policy::{PolicyRegistry, PoolSelection};
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

/// MAX-REQUEST-RETRANSMIT (spec §10): retries of a request before the next registrar.
pub const MAX_REQUEST_RETRANSMIT: usize = 2;

/// How long a resolution is used before it is refreshed (spec §7.3, rsplib's
/// `asapStaleCacheValue`). Project default.
pub const DEFAULT_STALE: Duration = Duration::from_secs(5);

/// How many PEs a pool user asks for (option 0x803F): enough to fail over from the cache
/// without asking the registrar again.
pub const RESOLUTION_ITEMS: u32 = 32;

/// What a pool user uses, and with whom.
#[derive(Clone, Debug)]
pub struct PuConfig {
    /// The registrars, tried in order (server hunt, spec §7.7).
    pub registrars: Vec<SocketAddr>,
    /// The namespace (project parameter 0x8100); `None` for the identity's default.
    pub namespace: Option<Namespace>,
    /// The pool.
    pub pool_handle: PoolHandle,
    /// How long a resolution stays fresh; default [`DEFAULT_STALE`].
    pub stale: Duration,
    /// T1-ENRPrequest; default [`T1_REQUEST`].
    pub request_timeout: Duration,
}

impl PuConfig {
    /// The spec §10 defaults for `pool_handle` at `registrars`.
    pub fn new(registrars: Vec<SocketAddr>, pool_handle: PoolHandle) -> Self {
        Self {
            registrars,
            namespace: None,
            pool_handle,
            stale: DEFAULT_STALE,
            request_timeout: T1_REQUEST,
        }
    }
}

/// A pool user of one pool (spec §7.3, §7.6, draft-tuexen-rserpool-reqts §2.5.1): a
/// resolution cache refreshed after the stale time, selection from it with the pool's
/// policy, PEs reported unreachable and skipped, and T1 retries and server hunt with
/// jittered backoff toward the registrars.
///
/// Share it (`Arc`) between tasks: a caller that needs a resolution while another one is
/// outstanding waits for that one (one resolution in flight per pool, draft §2.5.1 step 3).
pub struct PoolUser {
    trust: Arc<TrustStore>,
    config: PuConfig,
    registry: PolicyRegistry,
    /// Held across a resolution: that is what makes concurrent callers wait for it.
    cache: tokio::sync::Mutex<Cache>,
    registrar: tokio::sync::Mutex<Registrar>,
}

impl std::fmt::Debug for PoolUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolUser")
            .field("pool_handle", &self.config.pool_handle)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cache {
    fetched: Option<Instant>,
    policy: Option<Policy>,
    entries: HashMap<PeId, PeEntry>,
    selection: PoolSelection,
    /// PEs this PU found unreachable, until when they stay out of the cache: the registrar
    /// may still return them for a while (spec §7.6 counts reports before removing).
    failed: HashMap<PeId, Instant>,
    resolutions: u64,
}

struct Registrar {
    conn: Option<Connection>,
    /// The registrar to try first at the next hunt.
    next: usize,
    backoff: Backoff,
}

impl PoolUser {
    /// A pool user presenting `trust`'s identity.
    pub fn new(trust: Arc<TrustStore>, config: PuConfig) -> Self {
        Self {
            trust,
            config,
            registry: PolicyRegistry::rfc5356(),
            cache: tokio::sync::Mutex::new(Cache::default()),
            registrar: tokio::sync::Mutex::new(Registrar {
                conn: None,
                next: 0,
                backoff: Backoff::new(seed()),
            }),
        }
    }

    /// The pool.
    pub fn pool_handle(&self) -> &PoolHandle {
        &self.config.pool_handle
    }

    /// How many resolutions this pool user has sent (for tests and statistics).
    pub async fn resolutions(&self) -> u64 {
        self.cache.lock().await.resolutions
    }

    /// One PE chosen by the pool's policy from the cache, which is refreshed first when
    /// empty or stale. A refresh that fails leaves a stale cache in use (better a PE that
    /// may have gone than none); with an empty cache the error is returned.
    pub async fn select(&self) -> Result<PeEntry, Error> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        cache.failed.retain(|_, until| *until > now);
        let fresh = cache
            .fetched
            .is_some_and(|t| now.duration_since(t) < self.config.stale);
        if !fresh || cache.selection.is_empty() {
            match self.resolve_with_retries().await {
                Ok(resolved) => self.fill(&mut cache, resolved, now),
                Err(e) if cache.selection.is_empty() => return Err(e),
                Err(_) => {}
            }
        }
        let Cache {
            selection, entries, ..
        } = &mut *cache;
        let mut rng = Xorshift::new(seed());
        let pe = selection.select_one(&mut rng).ok_or(Error::Rejected(0x9))?;
        Ok(entries
            .get(&pe)
            .expect("selection and entries agree")
            .clone())
    }

    fn fill(&self, cache: &mut Cache, resolved: Resolved, now: Instant) {
        cache.resolutions += 1;
        cache.fetched = Some(now);
        cache.policy = resolved.policy;
        cache.entries.clear();
        cache.selection = PoolSelection::new();
        for e in resolved.pool_elements {
            let id = e.pool_element.pe_id;
            if cache.failed.contains_key(&id) {
                continue;
            }
            // A PE whose policy does not fit the pool's cannot be selected (spec §5.3).
            if cache
                .selection
                .insert_or_update(&self.registry, id, &e.pool_element.policy)
                .is_ok()
            {
                cache.entries.insert(id, e);
            }
        }
    }

    /// Forgets `pe_id` for a stale time and reports it unreachable to the registrar
    /// (spec §7.6). The report is best effort and does not hunt: failing over must not
    /// wait for a registrar.
    pub async fn report_unreachable(&self, pe_id: PeId) {
        {
            let mut cache = self.cache.lock().await;
            cache.entries.remove(&pe_id);
            cache.selection.remove(pe_id);
            cache
                .failed
                .insert(pe_id, Instant::now() + self.config.stale);
        }
        let mut registrar = self.registrar.lock().await;
        if let Some(conn) = registrar.conn.as_mut() {
            let sent = tokio::time::timeout(
                Duration::from_millis(200),
                report_unreachable(
                    conn,
                    self.config.namespace.clone(),
                    &self.config.pool_handle,
                    pe_id,
                ),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                registrar.conn = None;
            }
        }
    }

    /// A fresh resolution: T1 per attempt, [`MAX_REQUEST_RETRANSMIT`] retries per
    /// registrar, then the next registrar (server hunt), with jittered pauses in between.
    pub async fn resolve_with_retries(&self) -> Result<Resolved, Error> {
        let mut registrar = self.registrar.lock().await;
        let n = self.config.registrars.len().max(1);
        let attempts = n * (1 + MAX_REQUEST_RETRANSMIT);
        let mut last = Error::NoRegistrar {
            tried: 0,
            last: "no registrar configured".into(),
        };
        for attempt in 0..attempts {
            if attempt > 0 {
                let pause = registrar.backoff.next();
                tokio::time::sleep(pause).await;
            }
            if registrar.conn.is_none() {
                match Connection::hunt(&self.trust, &self.config.registrars, registrar.next).await {
                    Ok((c, idx)) => {
                        registrar.conn = Some(c);
                        registrar.next = idx;
                    }
                    Err(e) => {
                        last = e;
                        continue;
                    }
                }
            }
            let conn = registrar.conn.as_mut().expect("connected above");
            let result = tokio::time::timeout(
                self.config.request_timeout,
                resolve(
                    conn,
                    self.config.namespace.clone(),
                    &self.config.pool_handle,
                    Some(RESOLUTION_ITEMS),
                ),
            )
            .await
            .unwrap_or(Err(Error::Closed));
            match result {
                Ok(r) => {
                    registrar.backoff.reset();
                    return Ok(r);
                }
                // A refusal is an answer, not a failure to retry (spec §7.3).
                Err(e @ Error::Rejected(_)) => return Err(e),
                Err(e) => {
                    last = e;
                    registrar.conn = None;
                    // After the retries of one registrar, prefer the next one.
                    if (attempt + 1) % (1 + MAX_REQUEST_RETRANSMIT) == 0 {
                        registrar.next = (registrar.next + 1) % n;
                    }
                }
            }
        }
        Err(last)
    }
}

/// A seed from the OS random source (selection and backoff; not secrets).
fn seed() -> u32 {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 4];
    // A failing OS source leaves a fixed seed: selection stays correct, only less spread.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_be_bytes(b)
}

/// xorshift64 for the random policies' draws at the pool user (not for secrets).
struct Xorshift(u64);

impl Xorshift {
    fn new(seed: u32) -> Self {
        Self((u64::from(seed) << 32 | u64::from(seed)) | 1)
    }
}

impl rand_core::TryRng for Xorshift {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok((self.try_next_u64()? >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Ok(self.0)
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_be_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}
