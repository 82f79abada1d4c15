//! What the core publishes so that a connection task can answer a handle resolution
//! itself (spec §7.3; issue 20, "reads where they arrive"), and the one resolution
//! procedure that the core ([`Core::handle`](super::Core::handle)) and the connection
//! tasks both run.
//!
//! The [`ReadView`] holds the handlespace's [`HandlespaceView`] (the pools, shared with
//! the core, see its module docs), the grants (an `Arc` swapped when
//! [`Input::Grants`](super::Input::Grants) arrives), the start-up flag (spec §9.3) and,
//! per announced connection, a [`ClientView`]: who it is, its default namespace and
//! whether it was revoked. The core changes each of them in the same `handle` step that
//! changes its own state, before it returns the step's actions: a resolution served after
//! a change's actions were carried out sees the change; one served while the step runs
//! sees the state before or after it, never a mix within one pool. So the view lags the
//! core by at most the step in progress, and the simulation's invariant (no resolution
//! returns a PE after its removal + detection + one keep-alive timeout) holds for the
//! fast path as for the core.
//!
//! A connection not yet announced to the core (its `Connected` still queued) has no
//! [`ClientView`]: its resolutions go through the core, in order.
//!
//! The same view answers an unchanged re-registration ([`ReadView::refresh`], issue 20):
//! the core binds each PE it registered to its connection's [`ClientView`] with the very
//! entry it stored, and a re-registration on that connection that would store the same
//! entry again is acknowledged here; the core applies it later ([`super::refresh`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use ::asap::wire::param::{
    ErrorCause, HandleResolutionOption, Labels, Namespace, OperationError, PeId, PoolElement,
    PoolHandle,
};
use ::asap::wire::{AsapMsg, PeEntry, Resolution};
use identity::Grant;
use identity::audit::AuditAction;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng as _};

use super::{
    AuditEvent, Config, ConnId, Remote, client_event, is_legacy, permits, register_refusal,
};
use crate::handlespace::{HandlespaceView, PoolView, Selected};

/// What a connection task reads to answer a resolution (module docs).
#[derive(Debug)]
pub struct ReadView {
    handlespace: Arc<HandlespaceView>,
    grants: RwLock<Arc<Vec<Grant>>>,
    starting: AtomicBool,
    clients: RwLock<crate::hash::HashMap<ConnId, Arc<ClientView>>>,
    legacy_namespace: Option<Namespace>,
    default_resolution_items: usize,
    max_resolution_items: usize,
    rng_seed: u64,
}

/// One announced connection as readers see it.
#[derive(Debug)]
pub struct ClientView {
    client: Remote,
    /// Where its requests without a Namespace parameter go (rules change at run time).
    default_namespace: RwLock<Namespace>,
    /// Its certificate is revoked: it is being closed and nothing it sends counts.
    revoked: AtomicBool,
    /// The entries the core stored for the PEs it registered on this connection, by PE
    /// ID ([`ReadView::refresh`]): at most the connection's PEs (the core unbinds a PE
    /// when it leaves the connection), a pointer each. One per PE ID: a PE ID registered
    /// in two pools on one connection keeps the later binding, and the other pool's
    /// re-registrations go to the core.
    bound: std::sync::Mutex<crate::hash::HashMap<PeId, Arc<PeEntry>>>,
}

/// A resolution's answer and its audit event (written [`Batched`](identity::audit::Durability::Batched)).
#[derive(Debug)]
pub struct Resolved {
    /// The HANDLE_RESOLUTION_RESPONSE.
    pub response: AsapMsg,
    /// What the audit log records of it.
    pub event: AuditEvent,
}

/// One connection's selection stream ([`ReadView::rng_for`]).
#[derive(Debug)]
pub struct ConnRng(ChaCha8Rng);

impl ConnRng {
    /// The stream, for [`ReadView::resolve`].
    pub fn rng(&mut self) -> &mut dyn Rng {
        &mut self.0
    }
}

impl ClientView {
    pub(super) fn new(client: Remote, default_namespace: Namespace, revoked: bool) -> Self {
        Self {
            client,
            default_namespace: RwLock::new(default_namespace),
            revoked: AtomicBool::new(revoked),
            bound: std::sync::Mutex::default(),
        }
    }

    fn bound(&self) -> std::sync::MutexGuard<'_, crate::hash::HashMap<PeId, Arc<PeEntry>>> {
        self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The core stored `entry` for a PE registered on this connection.
    pub(super) fn bind(&self, entry: Arc<PeEntry>) {
        self.bound().insert(entry.pool_element.pe_id, entry);
    }

    /// A PE with this ID left this connection (deregistered, removed, registered on
    /// another). A binding of the ID in another pool goes too: its next re-registration
    /// goes to the core, which binds it again.
    pub(super) fn unbind(&self, pe_id: PeId) {
        self.bound().remove(&pe_id);
    }

    /// Unbinds every PE: what an operator declared for a pool changed, and
    /// re-registrations must be judged against it by the core again (rare: no need to
    /// pick the pool's).
    pub(super) fn unbind_all(&self) {
        self.bound().clear();
    }

    /// The audit event of an unchanged re-registration of `pe_id` in `pool_handle` of `ns`
    /// on this connection ([`ReadView::refresh`]): the core's `reregister` event.
    pub fn refresh_event(
        &self,
        ns: &Namespace,
        pool_handle: &PoolHandle,
        pe_id: PeId,
    ) -> AuditEvent {
        client_event(
            Some(&self.client),
            ns,
            pool_handle,
            Some(pe_id),
            AuditAction::Reregister,
            None,
        )
    }

    /// The entry the core stored when it registered `pe_id` on this connection.
    fn bound_entry(&self, pe_id: PeId) -> Option<Arc<PeEntry>> {
        self.bound().get(&pe_id).cloned()
    }

    /// Who it is.
    pub fn client(&self) -> &Remote {
        &self.client
    }

    /// Where its requests without a Namespace parameter go (ARCHITECTURE.md §3).
    pub fn default_namespace(&self) -> Namespace {
        self.default_namespace
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn set_default_namespace(&self, ns: Namespace) {
        *self
            .default_namespace
            .write()
            .unwrap_or_else(PoisonError::into_inner) = ns;
    }

    /// Whether its certificate was revoked (nothing it sends is answered).
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    pub(super) fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }
}

impl ReadView {
    pub(super) fn new(
        config: &Config,
        handlespace: Arc<HandlespaceView>,
        grants: Arc<Vec<Grant>>,
    ) -> Self {
        Self {
            handlespace,
            grants: RwLock::new(grants),
            starting: AtomicBool::new(false),
            clients: RwLock::new(crate::hash::HashMap::default()),
            legacy_namespace: config.legacy_namespace.clone(),
            default_resolution_items: config.default_resolution_items,
            max_resolution_items: config.max_resolution_items,
            rng_seed: config.rng_seed,
        }
    }

    /// The connection `conn` once the core has it (after its `Connected`), until it closed.
    pub fn client(&self, conn: ConnId) -> Option<Arc<ClientView>> {
        let clients = self.clients.read().unwrap_or_else(PoisonError::into_inner);
        clients.get(&conn).cloned()
    }

    /// The selection RNG of connection `conn`'s own resolutions: a ChaCha8 stream seeded
    /// from the core's seed and the connection's number, so that runs replay from the seed
    /// and no two connections draw the same stream. (The core keeps its own stream.)
    pub fn rng_for(&self, conn: ConnId) -> ConnRng {
        // An odd multiplier spreads consecutive connection numbers over the seed space.
        let mix = conn.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ConnRng(ChaCha8Rng::seed_from_u64(self.rng_seed ^ mix))
    }

    /// Whether the registrar is still in its start-up phase (spec §9.3).
    pub fn starting(&self) -> bool {
        self.starting.load(Ordering::Acquire)
    }

    pub(super) fn set_starting(&self, starting: bool) {
        self.starting.store(starting, Ordering::Release);
    }

    pub(super) fn set_grants(&self, grants: Arc<Vec<Grant>>) {
        *self.grants.write().unwrap_or_else(PoisonError::into_inner) = grants;
    }

    pub(super) fn add_client(&self, conn: ConnId, client: Arc<ClientView>) {
        let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        clients.insert(conn, client);
    }

    pub(super) fn remove_client(&self, conn: ConnId) {
        let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        clients.remove(&conn);
    }

    fn may_resolve(&self, id: &identity::SpiffeId, ns: &Namespace, pool: &PoolHandle) -> bool {
        let grants = self.grants.read().unwrap_or_else(PoisonError::into_inner);
        let legacy = self.legacy_namespace.as_ref();
        // A PE granted to register in the pool may resolve it too (and no other pool
        // through that grant): it is a member, and its business card names the pool's
        // other PEs as failover candidates (spec §7.8, issue 25; docs/CLIENTS.md).
        permits(&grants, legacy, id, ns, pool, identity::Action::Resolve)
            || permits(&grants, legacy, id, ns, pool, identity::Action::Register)
    }

    /// The PEs `client` is answered with for `pool_handle` in `ns` (spec §7.3), or the
    /// refusal ([`Self::in_pool`]).
    fn select(
        &self,
        client: &ClientView,
        ns: &Namespace,
        pool_handle: &PoolHandle,
        option: Option<HandleResolutionOption>,
        hints: &Labels,
        rng: &mut dyn Rng,
    ) -> Result<Selected, (ErrorCause, Option<&'static str>)> {
        let n = self.items(option);
        self.in_pool(client, ns, pool_handle, |pool| pool.select(n, hints, rng))
    }

    /// `choose` applied to the pool `pool_handle` of `ns` if `client` may resolve it
    /// (`None` from `choose`: the pool has no PE), or the refusal: a pool the PU may not
    /// resolve answers 0x9 as if it did not exist; a registrar still starting answers 0x6
    /// (spec §9.3 step 5 [P]: an empty handlespace would answer "unknown pool" wrongly).
    /// The checks of both ways of answering a resolution ([`Self::select`],
    /// [`Self::resolve_into`]).
    fn in_pool<T>(
        &self,
        client: &ClientView,
        ns: &Namespace,
        pool_handle: &PoolHandle,
        choose: impl FnOnce(&PoolView) -> Option<T>,
    ) -> Result<T, (ErrorCause, Option<&'static str>)> {
        if self.starting() {
            return Err((
                ErrorCause::LackOfResources,
                Some("registrar starting: handlespace not yet synchronised"),
            ));
        }
        let found = if self.may_resolve(&client.client.id, ns, pool_handle) {
            self.handlespace
                .pool(ns, pool_handle)
                .and_then(|pool| choose(&pool))
        } else {
            None
        };
        found.ok_or((ErrorCause::UnknownPoolHandle, None))
    }

    /// What `client` is answered for `pool_handle` (in `namespace`, else its default one),
    /// not yet encoded: `None` when the client was revoked (nothing it sends is answered).
    fn choose(
        &self,
        client: &ClientView,
        namespace: Option<Namespace>,
        pool_handle: &PoolHandle,
        option: Option<HandleResolutionOption>,
        hints: &Labels,
        rng: &mut dyn Rng,
    ) -> Option<(Namespace, Choice)> {
        if client.revoked() {
            return None;
        }
        let ns = namespace.unwrap_or_else(|| client.default_namespace());
        let choice = match self.select(client, &ns, pool_handle, option, hints, rng) {
            Ok((policy, pes)) => {
                // A legacy client cannot check a registrant, and RSPLIB loses its place in
                // a message at a parameter whose length is not a multiple of 4: send none.
                let plain = is_legacy(&client.client.id);
                let n = fit_in_one_message(pool_handle, policy.as_ref(), &pes, plain);
                Choice::Found(Chosen {
                    policy,
                    pes,
                    n,
                    plain,
                })
            }
            Err((cause, detail)) => Choice::Refused(cause, detail),
        };
        Some((ns, choice))
    }

    /// Spec §7.3 for `client`: the answer and its audit event ([`Self::select`]).
    /// `None` when the client was revoked: nothing it sends is answered.
    pub fn resolve(
        &self,
        client: &ClientView,
        namespace: Option<Namespace>,
        pool_handle: PoolHandle,
        option: Option<HandleResolutionOption>,
        hints: &Labels,
        rng: &mut dyn Rng,
    ) -> Option<Resolved> {
        let (ns, choice) = self.choose(client, namespace, &pool_handle, option, hints, rng)?;
        let (answered, result) = match choice {
            Choice::Refused(cause, detail) => (
                Answered::refused(ns, pool_handle, &cause, detail),
                Resolution::Error(OperationError::single(cause)),
            ),
            Choice::Found(c) => (
                Answered::found(ns, pool_handle, c.n),
                Resolution::Found {
                    pool_elements: c.pes[..c.n].iter().map(|e| e.as_sent(c.plain)).collect(),
                    policy: c.policy,
                },
            ),
        };
        Some(Resolved {
            event: answered.event(client),
            response: AsapMsg::HandleResolutionResponse {
                pool_handle: answered.pool_handle,
                result,
            },
        })
    }

    /// [`Self::resolve`] with the answer encoded onto `out` from the handlespace's own
    /// entries, each PE's parameters encoded once and copied ([`PoolView::answer`]), and
    /// its audit event left to be made when it is needed ([`Answered::event`]): the
    /// connection tasks' resolutions, most of which are counted into a tally record made
    /// for the first of them (issue 20). The bytes are those of [`Self::resolve`]'s
    /// `response`, and the event is its `event`. `ids`: the caller's buffer for the
    /// chosen PE IDs.
    #[allow(clippy::too_many_arguments)] // resolve's, and where the answer goes
    pub fn resolve_into(
        &self,
        client: &ClientView,
        namespace: Option<Namespace>,
        pool_handle: PoolHandle,
        option: Option<HandleResolutionOption>,
        hints: &Labels,
        rng: &mut dyn Rng,
        ids: &mut Vec<PeId>,
        out: &mut Vec<u8>,
    ) -> Option<Answered> {
        if client.revoked() {
            return None;
        }
        let ns = namespace.unwrap_or_else(|| client.default_namespace());
        let n = self.items(option);
        let plain = is_legacy(&client.client.id);
        let found = self.in_pool(client, &ns, &pool_handle, |pool| {
            pool.answer(n, hints, rng, &pool_handle, plain, ids, out)
        });
        Some(match found {
            Ok(Ok(n)) => Answered::found(ns, pool_handle, n),
            Ok(Err(e)) => {
                let mut answered = Answered::found(ns, pool_handle, 0);
                answered.error = Some(e);
                answered
            }
            Err((cause, detail)) => {
                let written = AsapMsg::HandleResolutionResponse {
                    pool_handle: pool_handle.clone(),
                    result: Resolution::Error(OperationError::single(cause.clone())),
                }
                .encode(out);
                let mut answered = Answered::refused(ns, pool_handle, &cause, detail);
                answered.error = written.err();
                answered
            }
        })
    }

    /// How many PEs a resolution asks for (its option, else the default), within
    /// `1..=max_resolution_items`.
    fn items(&self, option: Option<HandleResolutionOption>) -> usize {
        let wanted = option.map_or(self.default_resolution_items, |o| {
            usize::try_from(o.items).unwrap_or(usize::MAX)
        });
        wanted.clamp(1, self.max_resolution_items.max(1))
    }
}

impl ReadView {
    /// Whether `pe`, re-registered by `client` in `pool_handle` (of `namespace`, else the
    /// client's default one), is an unchanged re-registration that may be acknowledged
    /// here (issue 20): the namespace it counts in, or `None` when the core must judge it.
    ///
    /// Yes only when everything the core would check comes out as when it last stored the
    /// PE for this connection, so that its answer would be the same acknowledgement:
    /// - the client is not revoked, and the registrar is not starting (spec §9.3);
    /// - the grants still let the client's identity register these labels in this pool
    ///   (the core's own check, [`register_refusal`]);
    /// - the PE is bound to this very connection ([`ClientView::bind`]: another
    ///   connection, even of the same identity, goes to the core) and the pool still
    ///   holds the entry the core stored then (the same `Arc`: any change since, by a
    ///   peer, an operator's drain, a removal or another registration, replaced it; so a
    ///   binding the core did not take back in time can only be of the current entry,
    ///   which this connection registered);
    /// - `pe` is that entry again ([`unchanged`]), and no drain is on it.
    ///
    /// What the core checks of the PE alone (its life, its addresses against the
    /// connection's, its serving identity) held for the same PE on the same connection;
    /// what an operator declared for the pool is covered by the core unbinding every
    /// connection's PEs when a declaration changes ([`ClientView::unbind_all`]).
    pub fn refresh(
        &self,
        client: &ClientView,
        namespace: Option<&Namespace>,
        pool_handle: &PoolHandle,
        pe: &PoolElement,
    ) -> Option<Namespace> {
        if client.revoked() || self.starting() {
            return None;
        }
        let ns = namespace.map_or_else(|| client.default_namespace(), Namespace::clone);
        // Read under the grants' lock, not a copy of their `Arc`; released before the
        // binding's and the pool's locks are taken.
        let refused = {
            let grants = self.grants.read().unwrap_or_else(PoisonError::into_inner);
            let legacy = self.legacy_namespace.as_ref();
            register_refusal(
                &grants,
                legacy,
                &client.client.id,
                &ns,
                pool_handle,
                &pe.labels,
            )
        };
        if refused.is_some() {
            return None;
        }
        // Bound in this pool: the pool's own entry for the PE ID is the one bound (an
        // entry of another pool is never this pool's).
        let stored = client.bound_entry(pe.pe_id)?;
        let pool = self.handlespace.pool(&ns, pool_handle)?;
        (pool.holds(&stored) && unchanged(&stored.pool_element, pe)).then_some(ns)
    }
}

/// Whether a PE registered as `pe` would be stored as `stored` again: equal in everything
/// but the home registrar's ID (the core sets its own), with no drain on it (a drain is
/// the core's to keep, [`super::drain`]). Every field is named, so that a new one is
/// compared or left out on purpose.
pub(super) fn unchanged(stored: &PoolElement, pe: &PoolElement) -> bool {
    let PoolElement {
        pe_id,
        home_server_id: _,
        registration_life,
        user_transport,
        policy,
        asap_transport,
        labels,
        status,
        serving_identity,
    } = pe;
    stored.status.drain_deadline_ms.is_none()
        && stored.pe_id == *pe_id
        && stored.registration_life == *registration_life
        && stored.user_transport == *user_transport
        && stored.policy == *policy
        && stored.asap_transport == *asap_transport
        && stored.labels == *labels
        && stored.status == *status
        && stored.serving_identity == *serving_identity
}

/// A resolution's answer before it is encoded ([`ReadView::choose`]).
enum Choice {
    /// Refused with this cause, and a reason when there is more to say.
    Refused(ErrorCause, Option<&'static str>),
    /// PEs found.
    Found(Chosen),
}

/// The PEs a resolution answers with: the first `n` of `pes` (what fits one message), with
/// the pool's policy; `plain`: without identities.
struct Chosen {
    policy: Option<::asap::wire::param::Policy>,
    pes: Vec<Arc<::asap::wire::PeEntry>>,
    n: usize,
    plain: bool,
}

/// A resolution answered by [`ReadView::resolve_into`]: what its audit event says, made
/// only when asked for ([`Self::event`]).
#[derive(Debug)]
pub struct Answered {
    /// The namespace resolved in.
    pub namespace: Namespace,
    /// The pool handle resolved.
    pub pool_handle: PoolHandle,
    /// `None`: PEs were found; else the spec §4.7 cause code of the refusal.
    pub outcome: Option<u16>,
    /// PEs in the answer.
    pub pes: usize,
    /// A refusal's reason, when there is more to say than its cause.
    detail: Option<&'static str>,
    /// The answer could not be encoded (a bug: nothing was written); it still counts.
    pub error: Option<::asap::wire::EncodeError>,
}

impl Answered {
    fn found(namespace: Namespace, pool_handle: PoolHandle, pes: usize) -> Self {
        Self {
            namespace,
            pool_handle,
            outcome: None,
            pes,
            detail: None,
            error: None,
        }
    }

    fn refused(
        namespace: Namespace,
        pool_handle: PoolHandle,
        cause: &ErrorCause,
        detail: Option<&'static str>,
    ) -> Self {
        Self {
            namespace,
            pool_handle,
            outcome: Some(cause.code()),
            pes: 0,
            detail,
            error: None,
        }
    }

    /// The audit event of this resolution by `client`: `{n} PEs` when found, the
    /// refusal's reason otherwise (after the legacy listener's mark, if any).
    pub fn event(&self, client: &ClientView) -> AuditEvent {
        let mut event = client_event(
            Some(&client.client),
            &self.namespace,
            &self.pool_handle,
            None,
            AuditAction::Resolve,
            self.outcome,
        );
        if self.outcome.is_none() {
            let count = self.pes;
            event.detail = Some(match event.detail.take() {
                Some(d) => format!("{count} PEs; {d}"),
                None => format!("{count} PEs"),
            });
        } else if let Some(d) = self.detail {
            event.detail = Some(d.to_owned());
        }
        event
    }
}

/// PEs that always fit one answer: a PE entry is at most about 6.5 KB (an SCTP user and
/// ASAP transport of 16 IPv6 addresses each, 2 × 328; a private policy, 20; 16 labels at
/// their bounds, 1,572; a PE status, 16; a serving identity, 2,052; a registrant
/// identity, 2,052; the PE's own fields, 16), and 9 of them stay below 65,532 bytes with
/// the header, pool handle and policy.
const ALWAYS_FIT: usize = 9;

/// How many of the PEs, from the first, fit one answer (spec §3.5, 65,532 bytes): PEs with labels (docs/PROTOCOL-EXTENSIONS.md) and long registrant
/// identities can make 128 PEs more than one message holds. The policy has selected
/// them already; the answer keeps its order. Only counted beyond [`ALWAYS_FIT`] PEs, so
/// the usual answers (3 PEs) cost nothing more. `plain`: sent without identities.
fn fit_in_one_message(
    pool_handle: &PoolHandle,
    policy: Option<&::asap::wire::param::Policy>,
    pool_elements: &[Arc<::asap::wire::PeEntry>],
    plain: bool,
) -> usize {
    use ::asap::wire::param::Param as _;
    if pool_elements.len() <= ALWAYS_FIT {
        return pool_elements.len();
    }
    let mut room = ::asap::wire::limits::MAX_MESSAGE_LEN
        - 4
        - pool_handle.encoded_len()
        - policy.map_or(0, |p| p.encoded_len());
    pool_elements
        .iter()
        .take_while(|e| {
            let len = e.encoded_len_as(plain);
            room.checked_sub(len).inspect(|left| room = *left).is_some()
        })
        .count()
}
