//! The pool user side (spec §7.3, §7.6): handle resolution and endpoint unreachable
//! reports on one registrar connection, and [`PoolUser`], which adds the resolution
//! cache, selection by the pool policy, and retries and server hunt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use trust::TrustStore;

use super::backoff::Backoff;
use super::discovery::{self, Discovery};
use super::{Connection, Error};
use crate::addr::TransportAddr;
use crate::policy::{PolicyRegistry, PoolSelection};
use crate::wire::limits::MAX_RESOLUTION_PES;
use crate::wire::param::{
    HandleResolutionOption, Labels, Namespace, PeId, Policy, PolicyType, PoolElement, PoolHandle,
};
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
    resolve_hinted(conn, namespace, pool_handle, items, Labels::default()).await
}

/// [`resolve`] with hints for the pool's policy (project parameter 0x8103,
/// docs/PROTOCOL-EXTENSIONS.md; `rsp resolve --hint k=v`).
pub async fn resolve_hinted(
    conn: &mut Connection,
    namespace: Option<Namespace>,
    pool_handle: &PoolHandle,
    items: Option<u32>,
    hints: Labels,
) -> Result<Resolved, Error> {
    conn.send(&AsapMsg::HandleResolution {
        namespace,
        pool_handle: pool_handle.clone(),
        option: items.map(|items| HandleResolutionOption { items }),
        hints,
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

/// Most PEs a business card may list: as many as a resolution may (a longer card would
/// let a PE make the PU keep an unbounded list). A longer card is refused.
pub const MAX_CARD_PES: usize = MAX_RESOLUTION_PES;

/// Why a business card (spec §7.8) was refused; a refused card changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    /// The card names another pool than the one this PU resolved.
    #[error("the card is for pool {card}, but this session is with pool {ours}")]
    WrongPool {
        /// The card's pool.
        card: PoolHandle,
        /// This PU's pool.
        ours: PoolHandle,
    },
    /// No PE, or more than [`MAX_CARD_PES`].
    #[error("the card lists {len} PEs; 1 to {max} are allowed")]
    BadLength {
        /// How many it lists.
        len: usize,
        /// The cap.
        max: usize,
    },
}

/// What a pool user uses, and with whom.
#[derive(Clone, Debug)]
pub struct PuConfig {
    /// The registrars, tried in order (server hunt, spec §7.7). Whom it accepts as one is
    /// the trust store's, as for a PE ([`super::pe::PeConfig::registrars`]).
    pub registrars: Vec<TransportAddr>,
    /// Also hunt among the registrars announced by multicast, as for a PE
    /// ([`super::pe::PeConfig::discovery`]). Default `None`.
    pub discovery: Option<Discovery>,
    /// Talk to the registrars over plain SCTP, unauthenticated (legacy registrars such as
    /// RSPLIB's; see [`Connection::open`]). Default `false`.
    pub insecure_legacy: bool,
    /// The namespace (project parameter 0x8100); `None` for the identity's default.
    pub namespace: Option<Namespace>,
    /// The pool.
    pub pool_handle: PoolHandle,
    /// How long a resolution stays fresh; default [`DEFAULT_STALE`].
    pub stale: Duration,
    /// T1-ENRPrequest; default [`T1_REQUEST`].
    pub request_timeout: Duration,
    /// Hints sent with each resolution and given to the pool's policy when selecting from
    /// the cache (project parameter 0x8103, docs/PROTOCOL-EXTENSIONS.md). Default: none.
    pub hints: Labels,
}

impl PuConfig {
    /// The spec §10 defaults for `pool_handle` at `registrars`.
    pub fn new(
        registrars: impl IntoIterator<Item = impl Into<TransportAddr>>,
        pool_handle: PoolHandle,
    ) -> Self {
        Self {
            registrars: registrars.into_iter().map(Into::into).collect(),
            discovery: None,
            insecure_legacy: false,
            namespace: None,
            pool_handle,
            stale: DEFAULT_STALE,
            request_timeout: T1_REQUEST,
            hints: Labels::default(),
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
    /// Why the last refresh failed while the cache still had entries: selections then
    /// come from the older resolution, and [`PoolUser::staleness`] says so.
    refresh_failed: Option<String>,
}

/// The resolution cache is in use past its stale time because refreshing it failed
/// ([`PoolUser::staleness`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staleness {
    /// How old the resolution in use is.
    pub age: Duration,
    /// Why the last refresh failed.
    pub error: String,
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
            registry: PolicyRegistry::standard(),
            cache: tokio::sync::Mutex::new(Cache::default()),
            registrar: tokio::sync::Mutex::new(Registrar {
                conn: None,
                next: 0,
                backoff: Backoff::new(seed()),
            }),
        }
    }

    /// Selects from the cache with `registry`'s selectors instead of the nine RFC 5356
    /// policies alone: how a pool user gets a custom policy (examples/custom-policy). A
    /// private policy type it lacks is selected round robin.
    #[must_use]
    pub fn with_registry(mut self, registry: PolicyRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// The identity it presents and the trust it applies.
    pub fn trust(&self) -> &TrustStore {
        &self.trust
    }

    /// Whether it may reach legacy PEs and registrars in plain text
    /// ([`PuConfig::insecure_legacy`]).
    pub fn insecure_legacy(&self) -> bool {
        self.config.insecure_legacy
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
    /// empty or stale. A refresh that fails, transiently or not (a registrar that
    /// restarted may not know the pool again yet: 0x9), leaves a stale cache in use
    /// (better a PE that may have gone than none), marked so ([`PoolUser::staleness`]);
    /// with an empty cache the error is returned ([`Error::is_transient`] tells whether
    /// to try again later).
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
                Err(e) => cache.refresh_failed = Some(e.to_string()),
            }
        }
        let Cache {
            selection, entries, ..
        } = &mut *cache;
        let mut rng = Xorshift::new(seed());
        let mut one = Vec::with_capacity(1);
        selection.select_hinted(1, &self.config.hints, &mut rng, &mut one);
        let pe = one.pop().ok_or(Error::Rejected(0x9))?;
        Ok(entries
            .get(&pe)
            .expect("selection and entries agree")
            .clone())
    }

    /// The pool's policy type when this pool user has no selector for it and selects its
    /// cache round robin instead: a private type (docs/PROTOCOL-EXTENSIONS.md) missing
    /// from its registry ([`PoolUser::with_registry`]). `None` otherwise, and while the
    /// cache is empty. What a caller logs once, as a registrar audits it once per pool.
    pub async fn policy_fallback(&self) -> Option<PolicyType> {
        let cache = self.cache.lock().await;
        let ty = cache.selection.policy_type()?;
        self.registry.falls_back(ty).then_some(ty)
    }

    /// `Some` while selections come from a resolution past its stale time because the
    /// last refresh failed; `None` while the cache is fresh (or empty).
    pub async fn staleness(&self) -> Option<Staleness> {
        let cache = self.cache.lock().await;
        let error = cache.refresh_failed.clone()?;
        let age = cache.fetched.map(|t| t.elapsed()).unwrap_or_default();
        Some(Staleness { age, error })
    }

    fn fill(&self, cache: &mut Cache, resolved: Resolved, now: Instant) {
        cache.resolutions += 1;
        cache.refresh_failed = None;
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
                .insert_or_update_labeled(
                    &self.registry,
                    id,
                    &e.pool_element.policy,
                    &e.pool_element.labels,
                )
                .is_ok()
            {
                cache.entries.insert(id, e);
            }
        }
    }

    /// A session with affinity (draft-tuexen-rserpool-reqts §5): it keeps using the PE it
    /// first chose for as long as that PE is alive, and fails over only when it is
    /// reported failed (by this session or any other user of this `PoolUser`).
    pub fn session(&self) -> Affinity<'_> {
        Affinity {
            users: self,
            current: None,
            preferred: Vec::new(),
        }
    }

    /// The first of `preferred` that is in the resolution cache and not failed. Only
    /// cached PEs qualify: the cache entry carries the registrant identity the registrar
    /// vouched for, which a business card cannot.
    async fn first_cached(&self, preferred: &[PeId]) -> Option<PeEntry> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        cache.failed.retain(|_, until| *until > now);
        preferred
            .iter()
            .filter(|id| !cache.failed.contains_key(id))
            .find_map(|id| cache.entries.get(id).cloned())
    }

    async fn has_failed(&self, pe_id: PeId) -> bool {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        cache.failed.retain(|_, until| *until > now);
        cache.failed.contains_key(&pe_id)
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
    /// A transient refusal (0x6 Lack of Resources: a registrar still starting) moves on to
    /// the next registrar at once; a permanent one (0x9 unknown pool, 0xA, ...) is the
    /// answer and is returned.
    pub async fn resolve_with_retries(&self) -> Result<Resolved, Error> {
        let mut registrar = self.registrar.lock().await;
        let n = match &self.config.discovery {
            Some(d) => d.candidates(&self.config.registrars).len(),
            None => self.config.registrars.len(),
        }
        .max(1);
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
                match discovery::hunt(
                    &self.trust,
                    &self.config.registrars,
                    self.config.discovery.as_ref(),
                    registrar.next,
                    self.config.insecure_legacy,
                )
                .await
                {
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
                resolve_hinted(
                    conn,
                    self.config.namespace.clone(),
                    &self.config.pool_handle,
                    Some(RESOLUTION_ITEMS),
                    self.config.hints.clone(),
                ),
            )
            .await
            .unwrap_or(Err(Error::Closed));
            match result {
                Ok(r) => {
                    registrar.backoff.reset();
                    return Ok(r);
                }
                // A permanent refusal is an answer, not a failure to retry (spec §7.3).
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => {
                    // A registrar that refused for lack of resources will say so again
                    // for a while: the next one, at once.
                    let refused = matches!(e, Error::Rejected(_));
                    last = e;
                    registrar.conn = None;
                    // After the retries of one registrar, prefer the next one.
                    if refused || (attempt + 1) % (1 + MAX_REQUEST_RETRANSMIT) == 0 {
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

/// Session affinity (draft-tuexen-rserpool-reqts §5), from [`PoolUser::session`]: one PE
/// for as long as it is alive. Unlike [`PoolUser::select`], which follows the pool policy
/// at every call, [`Affinity::pe`] returns the same PE until [`Affinity::failed`] (or
/// another user of the pool reporting it unreachable) ends its use.
#[derive(Debug)]
pub struct Affinity<'a> {
    users: &'a PoolUser,
    current: Option<PeEntry>,
    /// The failover order of the last accepted business card.
    preferred: Vec<PeId>,
}

impl Affinity<'_> {
    /// The PE of this session: the one in use while it is alive, else (a failover) the
    /// first PE of the last business card that is in the resolution cache and not failed,
    /// else one chosen by the pool policy.
    pub async fn pe(&mut self) -> Result<PeEntry, Error> {
        if let Some(pe) = &self.current
            && !self.users.has_failed(pe.pool_element.pe_id).await
        {
            return Ok(pe.clone());
        }
        self.current = None;
        let pe = match self.users.first_cached(&self.preferred).await {
            Some(pe) => pe,
            None => self.users.select().await?,
        };
        self.current = Some(pe.clone());
        Ok(pe)
    }

    /// Takes a business card from the PE (spec §7.8): its PEs, in its order, become this
    /// session's failover preference, replacing any earlier card's. A card for another
    /// pool than the resolved one, or with no or too many PEs, is refused and changes
    /// nothing. Returns the preference.
    pub fn business_card(
        &mut self,
        pool_handle: &PoolHandle,
        pool_elements: &[PoolElement],
    ) -> Result<&[PeId], CardError> {
        let ours = self.users.pool_handle();
        if pool_handle != ours {
            return Err(CardError::WrongPool {
                card: pool_handle.clone(),
                ours: ours.clone(),
            });
        }
        if pool_elements.is_empty() || pool_elements.len() > MAX_CARD_PES {
            return Err(CardError::BadLength {
                len: pool_elements.len(),
                max: MAX_CARD_PES,
            });
        }
        self.preferred.clear();
        for pe in pool_elements {
            if !self.preferred.contains(&pe.pe_id) {
                self.preferred.push(pe.pe_id);
            }
        }
        Ok(&self.preferred)
    }

    /// The failover preference of the last accepted business card.
    pub fn preferred(&self) -> &[PeId] {
        &self.preferred
    }

    /// The PE in use, if one was chosen and not failed since.
    pub fn current(&self) -> Option<&PeEntry> {
        self.current.as_ref()
    }

    /// The PE in use failed: it is reported unreachable (spec §7.6) and the next
    /// [`Affinity::pe`] fails over. Returns its PE ID.
    pub async fn failed(&mut self) -> Option<PeId> {
        let pe_id = self.current.take()?.pool_element.pe_id;
        self.users.report_unreachable(pe_id).await;
        Some(pe_id)
    }
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::num::NonZeroU16;

    use super::*;
    use crate::wire::param::{Address, PoolElement, Transport, TransportUse};

    fn entry(id: u16) -> PeEntry {
        PeEntry {
            pool_element: PoolElement {
                pe_id: PeId::new(u32::from(id)).expect("non-zero"),
                home_server_id: 0,
                registration_life: 300_000,
                user_transport: Transport::Tcp {
                    port: NonZeroU16::new(7000 + id).expect("non-zero"),
                    transport_use: TransportUse::DataOnly,
                    addr: Address::new(Ipv4Addr::LOCALHOST),
                },
                policy: Policy::RoundRobin,
                asap_transport: None,
                labels: Default::default(),
                status: Default::default(),
                serving_identity: None,
            },
            registrant: None,
        }
    }

    /// A round-robin pool of three PEs in the cache, and no registrar.
    async fn pool_of_three() -> PoolUser {
        let ca = trust::testing::TestCa::new("acme.test");
        let store = TrustStore::new(ca.leaf("pu/client-1").issue().identity()).expect("store");
        let config = PuConfig::new(
            Vec::<std::net::SocketAddr>::new(),
            PoolHandle::new("echo").expect("pool"),
        );
        let users = PoolUser::new(Arc::new(store), config);
        let resolved = Resolved {
            policy: Some(Policy::RoundRobin),
            pool_elements: vec![entry(1), entry(2), entry(3)],
        };
        {
            let mut cache = users.cache.lock().await;
            users.fill(&mut cache, resolved, Instant::now());
        }
        users
    }

    async fn pe_of(s: &mut Affinity<'_>) -> PeId {
        s.pe().await.expect("a PE").pool_element.pe_id
    }

    #[tokio::test]
    async fn a_session_keeps_its_pe_while_it_lives_and_fails_over_when_it_dies() {
        // Draft-tuexen-rserpool-reqts §5: session affinity over a round-robin pool.
        let users = pool_of_three().await;
        let select = || async { users.select().await.expect("a PE").pool_element.pe_id };
        assert_ne!(select().await, select().await, "round robin moves on");
        let mut session = users.session();
        let first = pe_of(&mut session).await;
        for _ in 0..4 {
            select().await;
            assert_eq!(pe_of(&mut session).await, first, "the session stays");
        }
        // Its PE dies: one failover, then the session stays with the new PE.
        assert_eq!(session.failed().await, Some(first));
        assert!(session.current().is_none());
        let second = pe_of(&mut session).await;
        assert_ne!(second, first);
        for _ in 0..4 {
            assert_eq!(pe_of(&mut session).await, second);
        }
        // Another user of the pool found it dead: this session fails over too.
        users.report_unreachable(second).await;
        let third = pe_of(&mut session).await;
        assert!(third != first && third != second);
        assert_eq!(pe_of(&mut session).await, third);
    }

    /// A private policy type (docs/PROTOCOL-EXTENSIONS.md) the PU has no selector for:
    /// its cache is selected round robin and it says so; with one registered, it does not.
    #[tokio::test]
    async fn a_private_policy_without_a_selector_is_selected_round_robin_and_said() {
        let ty = PolicyType(0xFF00_0001);
        let private = Policy::private(ty, &[7]).expect("private");
        async fn fill(users: &PoolUser, private: Policy) {
            let entries = (1..=3)
                .map(|n| {
                    let mut e = entry(n);
                    e.pool_element.policy = private;
                    e
                })
                .collect();
            let resolved = Resolved {
                policy: Some(private),
                pool_elements: entries,
            };
            let mut cache = users.cache.lock().await;
            users.fill(&mut cache, resolved, Instant::now());
        }
        let users = pool_of_three().await;
        assert_eq!(users.policy_fallback().await, None, "round robin is served");
        fill(&users, private).await;
        assert_eq!(users.policy_fallback().await, Some(ty));
        let mut picked = Vec::new();
        for _ in 0..6 {
            picked.push(users.select().await.expect("a PE").pool_element.pe_id.get());
        }
        assert_eq!(picked, [1, 2, 3, 1, 2, 3]);
        let mut registry = PolicyRegistry::rfc5356();
        registry.register(ty, move || {
            Box::new(crate::policy::RoundRobinFallback::new(ty))
        });
        let served = pool_of_three().await.with_registry(registry);
        fill(&served, private).await;
        assert_eq!(served.policy_fallback().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_cache_answers_marked_stale_while_no_registrar_answers() {
        let users = pool_of_three().await;
        assert_eq!(users.staleness().await, None);
        // Past the stale time, the refresh finds no registrar (a transient failure, tried
        // with its retries and pauses): the cached PEs still answer, marked stale.
        tokio::time::advance(DEFAULT_STALE * 2).await;
        let pe = users.select().await.expect("a cached PE");
        assert!((1..=3).any(|n| id(n) == pe.pool_element.pe_id));
        let stale = users.staleness().await.expect("marked stale");
        assert!(stale.age >= DEFAULT_STALE * 2, "{stale:?}");
        assert!(stale.error.contains("no registrar reachable"), "{stale:?}");
        // With nothing cached the failure is the answer, and it says to try again.
        let empty = PoolUser::new(
            Arc::clone(&users.trust),
            PuConfig::new(
                Vec::<std::net::SocketAddr>::new(),
                PoolHandle::new("echo").expect("pool"),
            ),
        );
        let e = empty.select().await.expect_err("nothing cached");
        assert!(e.is_transient(), "{e}");
    }

    fn id(n: u16) -> PeId {
        PeId::new(u32::from(n)).expect("non-zero")
    }

    #[tokio::test]
    async fn a_business_card_sets_the_failover_order_and_one_for_another_pool_is_refused() {
        // Both orders, so that it is the card and not round robin that decides.
        for reverse in [false, true] {
            let users = pool_of_three().await;
            let mut session = users.session();
            let now = pe_of(&mut session).await;
            let first = (1..=3u16)
                .find(|&n| id(n) == now)
                .expect("one of the three");
            let mut order: Vec<u16> = (1..=3u16).filter(|&n| n != first).collect();
            if reverse {
                order.reverse();
            }
            let pool = users.pool_handle().clone();
            // PE 9 is not in the cache (no vouched identity): skipped. The sender lists
            // itself first, here twice: kept once.
            let card: Vec<PoolElement> = [9, first, order[0], first, order[1]]
                .into_iter()
                .map(|n| entry(n).pool_element)
                .collect();
            let preferred = session.business_card(&pool, &card).expect("accepted");
            assert_eq!(preferred, [id(9), id(first), id(order[0]), id(order[1])]);

            // Refused: another pool, no PE, too many PEs. The preference stays.
            let other = PoolHandle::new("other").expect("pool");
            let reversed: Vec<PoolElement> = card.iter().rev().cloned().collect();
            assert!(matches!(
                session.business_card(&other, &reversed),
                Err(CardError::WrongPool { .. })
            ));
            assert_eq!(
                session.business_card(&pool, &[]),
                Err(CardError::BadLength {
                    len: 0,
                    max: MAX_CARD_PES
                })
            );
            let huge = vec![entry(3).pool_element; MAX_CARD_PES + 1];
            assert!(matches!(
                session.business_card(&pool, &huge),
                Err(CardError::BadLength { .. })
            ));
            assert_eq!(session.preferred()[2], id(order[0]));

            // The sender dies: the card's next cached PEs, in the card's order.
            assert_eq!(session.failed().await, Some(id(first)));
            assert_eq!(pe_of(&mut session).await, id(order[0]));
            assert_eq!(session.failed().await, Some(id(order[0])));
            assert_eq!(pe_of(&mut session).await, id(order[1]));
        }
    }
}
