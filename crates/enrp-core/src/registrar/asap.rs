//! The ASAP server procedures of a registrar (spec §7, §12): registration,
//! deregistration, handle resolution, endpoint keep-alive, endpoint unreachable, errors.

use std::sync::Arc;
use std::time::Instant;

use ::asap::wire::param::{
    ErrorCause, HandleResolutionOption, Labels, Namespace, OperationError, PeId, PoolElement,
    PoolHandle, RegistrantIdentity, UnknownParam,
};
use ::asap::wire::{AsapMsg, DecodeError, Decoded};
use identity::Action as Grantable;

use super::{Action, AuditAction, AuditEvent, ConnId, Core, Durability, PeKey, Remote, TimerKey};
use crate::handlespace::{Registered, Reject};

impl Core {
    pub(super) fn on_asap(
        &mut self,
        conn: ConnId,
        msg: Decoded<AsapMsg>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        // The driver announces every connection first; ignore stragglers, and anything
        // from a connection whose certificate was revoked (it is being closed).
        if self.conns.get(&conn).is_none_or(|c| c.view.revoked()) {
            return;
        }
        let Decoded { msg, unrecognized } = msg;
        match msg {
            AsapMsg::Registration {
                namespace,
                pool_handle,
                pool_element,
            } => self.on_registration(
                conn,
                namespace,
                pool_handle,
                pool_element,
                &unrecognized,
                now,
                out,
            ),
            AsapMsg::Deregistration {
                namespace,
                pool_handle,
                pe_id,
            } => self.on_deregistration(conn, namespace, pool_handle, pe_id, &unrecognized, out),
            AsapMsg::HandleResolution {
                namespace,
                pool_handle,
                option,
                hints,
            } => {
                self.on_resolution(conn, namespace, pool_handle, option, &hints, out);
                report_unrecognized(conn, &unrecognized, out);
            }
            AsapMsg::EndpointKeepAliveAck { pool_handle, pe_id } => {
                self.on_keep_alive_ack(conn, pool_handle, pe_id, now);
                report_unrecognized(conn, &unrecognized, out);
            }
            AsapMsg::EndpointUnreachable {
                namespace,
                pool_handle,
                pe_id,
            } => {
                self.on_unreachable(conn, namespace, pool_handle, pe_id, now, out);
                report_unrecognized(conn, &unrecognized, out);
            }
            // Nothing a PE or PU sends a registrar otherwise needs an answer; an error
            // message is never answered with an error (spec §3.4, no error loops).
            AsapMsg::RegistrationResponse { .. }
            | AsapMsg::DeregistrationResponse { .. }
            | AsapMsg::HandleResolutionResponse { .. }
            | AsapMsg::EndpointKeepAlive { .. }
            | AsapMsg::ServerAnnounce { .. }
            | AsapMsg::Cookie(_)
            | AsapMsg::CookieEcho(_)
            | AsapMsg::BusinessCard { .. }
            | AsapMsg::Error(_) => {}
        }
    }

    /// A frame that did not decode: answer with the spec's error cause when there is one
    /// (0x1, 0x2, 0x3 in an ASAP_ERROR), close the connection on a framing fault, and
    /// drop the message silently otherwise (an unknown parameter with action bits 00).
    pub(super) fn on_malformed(
        &mut self,
        conn: ConnId,
        error: &DecodeError,
        out: &mut Vec<Action>,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        out.push(Action::Audit {
            event: AuditEvent {
                actor: Some((c.client.id.clone(), c.client.serial.clone())),
                remote: Some(c.client.addr),
                namespace: None,
                pool_handle: None,
                pe_id: None,
                action: AuditAction::Malformed,
                outcome: error.cause().map(|c| c.code()),
                detail: Some(error.to_string()),
            },
            durability: Durability::Batched,
        });
        match error.cause() {
            Some(cause) => out.push(Action::Send {
                conn,
                msg: AsapMsg::Error(OperationError::single(cause)),
            }),
            // Spec §12.2: a framing fault ends the connection without reply.
            None if error.is_framing() => out.push(Action::Close {
                conn,
                reason: "framing fault",
            }),
            // Spec §3.3, action bits 00: the message is discarded silently.
            None => {}
        }
    }

    /// How many pools `creator` (namespace, identity) created that still exist; those gone
    /// are forgotten (the cost is at most [`Config::max_pools_per_identity`] lookups).
    fn pools_created(&mut self, creator: &(Namespace, identity::SpiffeId)) -> usize {
        let Some(pools) = self.pool_creators.get_mut(creator) else {
            return 0;
        };
        let hs = &self.handlespace;
        pools.retain(|h| hs.pool(&creator.0, h).is_some());
        let n = pools.len();
        if n == 0 {
            self.pool_creators.remove(creator);
        }
        n
    }

    /// ARCHITECTURE.md §3: without 0x8100 the connection's default namespace applies.
    fn namespace_of(&self, conn: ConnId, requested: Option<Namespace>) -> Namespace {
        requested
            .or_else(|| Some(self.conns.get(&conn)?.view.default_namespace()))
            .unwrap_or_else(Namespace::default_namespace)
    }

    fn allowed(&self, conn: ConnId, ns: &Namespace, pool: &PoolHandle, action: Grantable) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| self.permits(&c.client.id, ns, pool, action))
    }

    fn event(
        &self,
        conn: ConnId,
        ns: &Namespace,
        pool: &PoolHandle,
        pe_id: Option<PeId>,
        action: AuditAction,
        outcome: Option<u16>,
    ) -> AuditEvent {
        let client = self.conns.get(&conn).map(|c| &c.client);
        client_event(client, ns, pool, pe_id, action, outcome)
    }

    /// Spec §7.1, the registrar side, in the spec's order.
    #[allow(clippy::too_many_arguments)]
    fn on_registration(
        &mut self,
        conn: ConnId,
        namespace: Option<Namespace>,
        pool_handle: PoolHandle,
        mut pe: PoolElement,
        unrecognized: &[UnknownParam],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let ns = self.namespace_of(conn, namespace);
        let pe_id = pe.pe_id;
        let reject = |core: &Self, cause: ErrorCause, detail: &str, out: &mut Vec<Action>| {
            let mut event = core.event(
                conn,
                &ns,
                &pool_handle,
                Some(pe_id),
                AuditAction::Register,
                Some(cause.code()),
            );
            event.detail = Some(detail.to_owned());
            out.push(Action::Audit {
                event,
                durability: Durability::BeforeReply,
            });
            out.push(Action::Send {
                conn,
                msg: AsapMsg::RegistrationResponse {
                    reject: true,
                    pool_handle: pool_handle.clone(),
                    pe_id,
                    error: Some(OperationError::single(cause)),
                },
            });
        };
        // Spec §9.3 step 5 [P]: no service until the handlespace is synchronised.
        if self.starting {
            return reject(
                self,
                ErrorCause::LackOfResources,
                "registrar starting: handlespace not yet synchronised",
                out,
            );
        }
        // 1. Authorization (spec §11, D-6), labels included (issue 23).
        let refusal = match self.conns.get(&conn) {
            Some(c) => self.register_refusal(&c.client.id, &ns, &pool_handle, &pe.labels),
            None => Some("no register grant for this pool".to_owned()),
        };
        if let Some(detail) = refusal {
            return reject(self, ErrorCause::SecurityRejection, &detail, out);
        }
        // 2. Values the codec accepts but a registrar must not (spec §4.2, §4.4 [P]).
        if !pe.registration_life_valid() {
            return reject(
                self,
                ErrorCause::InvalidValues(tlv(&pe)),
                "registration life out of range",
                out,
            );
        }
        let addrs = pe.user_transport.addresses();
        if !addrs
            .iter()
            .all(|a| a.is_acceptable_user_address(self.config.allow_loopback))
        {
            return reject(
                self,
                ErrorCause::InvalidValues(tlv(&pe.user_transport)),
                "unacceptable user transport address",
                out,
            );
        }
        // 3. The advertised addresses must be the connection's (spec §7.1 step 3 [P]):
        //    every one of them, so that a multi-homed PE cannot slip in someone else's
        //    address next to its own and have PUs sent there. Over SCTP these are the
        //    association's peer addresses (the primary alone when the kernel did not tell
        //    them), over TCP the one remote address.
        let own = self
            .conns
            .get(&conn)
            .map_or(&[][..], |c| c.addrs.as_slice());
        if self.config.check_user_address
            && !addrs.iter().all(|a| own.contains(&a.ip().to_canonical()))
        {
            return reject(
                self,
                ErrorCause::SecurityRejection,
                "user transport address is not the connection's",
                out,
            );
        }
        // 3b. A server that terminates the PUs' TLS itself (`rsp pe --advertise`): pool
        //     users will insist on its serving identity (0x8105), so the PE's own identity
        //     must be able to vouch for it (itself or below its path, never another
        //     workload's: `SpiffeId::may_vouch_for`).
        if let Some(serving) = &pe.serving_identity {
            let vouches = self.conns.get(&conn).is_some_and(|c| {
                identity::SpiffeId::parse(serving.as_str())
                    .is_ok_and(|s| c.client.id.may_vouch_for(&s))
            });
            if !vouches {
                return reject(
                    self,
                    ErrorCause::SecurityRejection,
                    &format!("may not vouch for the serving identity {serving}"),
                    out,
                );
            }
        }
        // 4. What an operator declared for this pool (admin API): its policy type and
        //    its most PEs. A re-registration of a PE already in the pool is never
        //    refused for the count, so lowering a limit evicts nobody.
        if let Some(d) = self.declared.get(&(ns.clone(), pool_handle.clone())) {
            if d.policy.is_some_and(|t| t != pe.policy.policy_type()) {
                return reject(
                    self,
                    ErrorCause::InconsistentPolicy(tlv(&pe.policy)),
                    "the pool is declared with another policy",
                    out,
                );
            }
            let present = self.handlespace.pool(&ns, &pool_handle);
            let is_new = present.is_none_or(|p| p.entry(pe_id).is_none());
            let count = present.map_or(0, |p| p.len());
            if is_new && d.max_pes.is_some_and(|m| count >= m as usize) {
                return reject(
                    self,
                    ErrorCause::LackOfResources,
                    "the pool holds its declared maximum of PEs",
                    out,
                );
            }
        }
        // 4b. A new pool: one identity creates at most so many per namespace.
        let creator = self
            .conns
            .get(&conn)
            .map(|c| (ns.clone(), c.client.id.clone()));
        let new_pool = self.handlespace.pool(&ns, &pool_handle).is_none();
        if new_pool
            && let Some(creator) = &creator
            && self.pools_created(creator) >= self.config.max_pools_per_identity
        {
            return reject(
                self,
                ErrorCause::LackOfResources,
                "this identity has created its most pools in the namespace",
                out,
            );
        }
        // 4c. An operator's drain (`drain.rs`): a re-registration keeps it, whatever the
        //     PE says of itself; a drained PE ID stays out until the operator lifts it.
        let key: PeKey = (ns.clone(), pool_handle.clone(), pe_id);
        match self.drain_for_registration(&key) {
            Ok(deadline) => pe.status.drain_deadline_ms = deadline,
            Err(()) => {
                return reject(
                    self,
                    ErrorCause::SecurityRejection,
                    "drained by an operator: the drain must be lifted (DELETE …/drain)",
                    out,
                );
            }
        }
        // A PE whose home moved here keeps the drain its old home announced.
        if pe.status.drain_deadline_ms.is_none()
            && let Some(old) = self
                .handlespace
                .pool(&ns, &pool_handle)
                .and_then(|p| p.entry(pe_id))
        {
            pe.status.drain_deadline_ms = old.pool_element.status.drain_deadline_ms;
        }
        // 5.–7. Pool consistency, PE ID uniqueness, limits: the handlespace.
        pe.home_server_id = self.config.server_id.get();
        let registrant = self.registrant(conn, Some(&pe));
        let result = self
            .handlespace
            .register(&ns, &pool_handle, pe.clone(), registrant);
        let registered = match result {
            Ok(r) => r,
            Err(e) => {
                let cause = match &e {
                    Reject::InconsistentPolicy => ErrorCause::InconsistentPolicy(tlv(&pe.policy)),
                    Reject::InconsistentTransport => {
                        ErrorCause::InconsistentTransport(tlv(&pe.user_transport))
                    }
                    other => other.cause(),
                };
                return reject(self, cause, &e.to_string(), out);
            }
        };
        if new_pool && let Some(creator) = creator {
            self.pool_creators
                .entry(creator)
                .or_default()
                .push(pool_handle.clone());
        }
        // 8. Own it, bind it to this connection, start its keep-alives.
        let owned = self.owned.entry(key.clone()).or_default();
        if let Some(old) = owned.conn.replace(conn)
            && old != conn
            && let Some(c) = self.conns.get_mut(&old)
        {
            c.remove_pe(&key);
        }
        owned.reporters.clear();
        owned.taken_from = None;
        owned.rtt.abandon();
        owned.registered.get_or_insert(now);
        owned.restarted = Some(now);
        // A re-registration may have started the pool's selection state afresh (its only
        // PE); the round trip measured so far stays the PE's.
        let rtt = owned.rtt.srtt();
        if let Some(c) = self.conns.get_mut(&conn) {
            owned.serial = Some((c.client.id.trust_domain(), c.client.serial.clone()));
            c.add_pe(key.clone());
            // The entry as stored: the same PE again on this connection is acknowledged
            // by the connection task ([`super::ReadView::refresh`]).
            if let Some(entry) = self
                .handlespace
                .pool(&ns, &pool_handle)
                .and_then(|p| p.shared_entry(pe_id))
            {
                c.view.bind(Arc::clone(entry));
            }
        }
        if rtt.is_some() {
            self.handlespace
                .set_round_trip(&ns, &pool_handle, pe_id, rtt);
        }
        self.timers.stop(&TimerKey::Orphaned(key.clone()));
        self.timers.stop(&TimerKey::KeepAliveTimeout(key.clone()));
        // A PE that moved here from a peer (spec §12.6) is ours now: no expiry as a peer's.
        self.timers.stop(&TimerKey::PeerPeLife(key.clone()));
        self.timers.set(
            TimerKey::KeepAlive(key.clone()),
            now + self.config.timing.keep_alive_interval,
        );
        let action = match registered {
            Registered::New => AuditAction::Register,
            Registered::Updated { .. } => AuditAction::Reregister,
        };
        let mut event = self.event(conn, &ns, &pool_handle, Some(pe_id), action, None);
        // A private policy type this registrar has no selector for: said once per pool,
        // when its first PE creates it (docs/PROTOCOL-EXTENSIONS.md).
        let ty = pe.policy.policy_type();
        if new_pool && self.handlespace.registry().falls_back(ty) {
            event.detail = Some(format!(
                "policy {:#010x} has no selector here: the pool is selected round robin",
                ty.0
            ));
        }
        if let Some(ms) = pe.status.drain_deadline_ms {
            // The PE cannot undo an operator's drain by registering again: say so.
            event.detail = Some(format!("draining until {ms} (unix ms): kept"));
        }
        out.push(Action::Audit {
            event,
            durability: Durability::BeforeReply,
        });
        // Spec §9.4: every add and re-registration of an owned PE goes to every peer
        // (after the audit record, like the acknowledgement).
        self.announce_owned(&key, out);
        out.push(Action::Send {
            conn,
            msg: AsapMsg::RegistrationResponse {
                reject: false,
                pool_handle,
                pe_id,
                // Spec §3.3: skipped parameters are reported in the response.
                error: OperationError::new(unrecognized.iter().map(UnknownParam::cause).collect()),
            },
        });
    }

    /// Who `conn` (re-)registers or deregisters `pe` as: its certificate's identity; for
    /// a legacy client, the PE's legacy registrant ([`super::legacy_registrant`]) when
    /// the PE's first address is one of the connection's (for a registration, step 3
    /// checked them all), so that a legacy PE learnt from an RSPLIB registrar can
    /// re-register and deregister here.
    fn registrant(&self, conn: ConnId, pe: Option<&PoolElement>) -> Option<RegistrantIdentity> {
        let c = self.conns.get(&conn)?;
        if super::is_legacy(&c.client.id)
            && let Some(pe) = pe
            && pe
                .user_transport
                .addresses()
                .first()
                .is_some_and(|a| c.addrs.contains(&a.ip().to_canonical()))
        {
            return super::legacy_registrant(pe);
        }
        RegistrantIdentity::new(c.client.id.as_str())
    }

    /// Spec §7.2.
    fn on_deregistration(
        &mut self,
        conn: ConnId,
        namespace: Option<Namespace>,
        pool_handle: PoolHandle,
        pe_id: PeId,
        unrecognized: &[UnknownParam],
        out: &mut Vec<Action>,
    ) {
        let ns = self.namespace_of(conn, namespace);
        let mut causes: Vec<ErrorCause> = unrecognized.iter().map(UnknownParam::cause).collect();
        // Handle updates for peers, sent after the audit record.
        let mut updates = Vec::new();
        let outcome = if !self.allowed(conn, &ns, &pool_handle, Grantable::Register) {
            Err(ErrorCause::SecurityRejection)
        } else {
            let registered = self
                .handlespace
                .pool(&ns, &pool_handle)
                .and_then(|p| p.entry(pe_id))
                .map(|e| &e.pool_element);
            let registrant = self.registrant(conn, registered);
            let key: PeKey = (ns.clone(), pool_handle.clone(), pe_id);
            match self
                .handlespace
                .deregister(&ns, &pool_handle, pe_id, registrant.as_ref())
            {
                Ok(removed) => {
                    self.forget_owned(&key);
                    if let Some(removed) = removed {
                        // Peers hear of it (spec §9.4) when this registrar was its home.
                        self.after_removal(&removed, &mut updates);
                    }
                    Ok(())
                }
                Err(e) => Err(e.cause()),
            }
        };
        let code = outcome.as_ref().err().map(ErrorCause::code);
        if let Err(cause) = outcome {
            causes.insert(0, cause);
        }
        out.push(Action::Audit {
            event: self.event(
                conn,
                &ns,
                &pool_handle,
                Some(pe_id),
                AuditAction::Deregister,
                code,
            ),
            durability: Durability::BeforeReply,
        });
        out.append(&mut updates);
        out.push(Action::Send {
            conn,
            msg: AsapMsg::DeregistrationResponse {
                pool_handle,
                pe_id,
                error: OperationError::new(causes),
            },
        });
    }

    /// Spec §7.3, as the connection tasks answer it themselves ([`super::ReadView::resolve`],
    /// the one procedure for both): the core answers the resolutions they hand over (a
    /// connection not yet announced, or with requests in flight here).
    fn on_resolution(
        &mut self,
        conn: ConnId,
        namespace: Option<Namespace>,
        pool_handle: PoolHandle,
        option: Option<HandleResolutionOption>,
        hints: &Labels,
        out: &mut Vec<Action>,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(resolved) = self.view.resolve(
            &c.view,
            namespace,
            pool_handle,
            option,
            hints,
            &mut self.rng,
        ) else {
            return;
        };
        out.push(Action::Audit {
            event: resolved.event,
            durability: Durability::Batched,
        });
        out.push(Action::Send {
            conn,
            msg: resolved.response,
        });
    }

    /// Spec §7.5: an ACK counts only from the connection the PE registered on.
    fn on_keep_alive_ack(
        &mut self,
        conn: ConnId,
        pool_handle: PoolHandle,
        pe_id: PeId,
        now: Instant,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(key) = c.find_pe(&pool_handle, pe_id) else {
            return;
        };
        if self
            .timers
            .get(&TimerKey::KeepAliveTimeout(key.clone()))
            .is_none()
        {
            return; // Unsolicited: it changes nothing (threat T-14).
        }
        self.timers.stop(&TimerKey::KeepAliveTimeout(key.clone()));
        if let Some(o) = self.owned.get_mut(&key) {
            o.reporters.clear();
            if let Some(srtt) = o.rtt.acked(now) {
                self.handlespace
                    .set_round_trip(&key.0, &key.1, key.2, Some(srtt));
            }
        }
        self.timers.set(
            TimerKey::KeepAlive(key),
            now + self.config.timing.keep_alive_interval,
        );
    }

    /// Sends an endpoint keep-alive to an owned PE and arms its timeout.
    pub(super) fn send_keep_alive(
        &mut self,
        key: PeKey,
        home: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(owned) = self.owned.get_mut(&key) else {
            return;
        };
        let Some(conn) = owned.conn else {
            return;
        };
        owned.rtt.sent(now);
        out.push(Action::Send {
            conn,
            msg: AsapMsg::EndpointKeepAlive {
                home,
                server_id: self.config.server_id,
                pool_handle: key.1.clone(),
                pe_id: Some(key.2),
            },
        });
        self.timers.stop(&TimerKey::KeepAlive(key.clone()));
        let timeout = TimerKey::KeepAliveTimeout(key);
        if self.timers.get(&timeout).is_none() {
            self.timers
                .set(timeout, now + self.config.timing.keep_alive_timeout);
        }
    }

    /// Spec §7.6 with its [P] hardening: reports count only from distinct authorized PU
    /// identities, at most `max_reports_per_window` per connection and window; at the
    /// threshold the home registrar probes the PE and removes it only if the probe fails.
    fn on_unreachable(
        &mut self,
        conn: ConnId,
        namespace: Option<Namespace>,
        pool_handle: PoolHandle,
        pe_id: PeId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let ns = self.namespace_of(conn, namespace);
        let mut probe = Vec::new();
        let outcome = self.count_report(conn, &ns, &pool_handle, pe_id, now, &mut probe);
        let mut event = self.event(
            conn,
            &ns,
            &pool_handle,
            Some(pe_id),
            AuditAction::Report,
            outcome.err(),
        );
        if let Ok(detail) = outcome {
            event.detail = Some(detail.to_owned());
        }
        out.push(Action::Audit {
            event,
            durability: Durability::Batched,
        });
        out.append(&mut probe);
    }

    fn count_report(
        &mut self,
        conn: ConnId,
        ns: &Namespace,
        pool_handle: &PoolHandle,
        pe_id: PeId,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<&'static str, u16> {
        if !self.allowed(conn, ns, pool_handle, Grantable::Report) {
            return Err(ErrorCause::SecurityRejection.code());
        }
        let window = self.config.timing.report_window;
        let limit = self.config.max_reports_per_window;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Err(ErrorCause::SecurityRejection.code());
        };
        if c.reports >= limit {
            return Err(ErrorCause::LackOfResources.code());
        }
        c.reports += 1;
        if c.reports == 1 {
            self.timers.set(TimerKey::ReportWindow(conn), now + window);
        }
        let reporter = c.client.id.clone();
        let key: PeKey = (ns.clone(), pool_handle.clone(), pe_id);
        // Unknown PEs and PEs of other registrars: nothing to do (spec §7.6 [P]).
        let Some(owned) = self.owned.get_mut(&key) else {
            return Ok("not owned here");
        };
        owned.reporters.insert(reporter);
        if owned.reporters.len() < self.config.max_bad_pe_reports {
            return Ok("counted");
        }
        owned.reporters.clear();
        self.send_keep_alive(key, false, now, out);
        Ok("threshold reached: probing")
    }
}

/// An audit event of a request from `client` (the core's and the [`super::ReadView`]'s).
pub(super) fn client_event(
    client: Option<&Remote>,
    ns: &Namespace,
    pool: &PoolHandle,
    pe_id: Option<PeId>,
    action: AuditAction,
    outcome: Option<u16>,
) -> AuditEvent {
    AuditEvent {
        actor: client.map(|c| (c.id.clone(), c.serial.clone())),
        remote: client.map(|c| c.addr),
        namespace: Some(ns.clone()),
        pool_handle: Some(pool.clone()),
        pe_id,
        action,
        outcome,
        // ARCHITECTURE.md §4: whatever a legacy listener carries is marked so.
        detail: client
            .filter(|c| super::is_legacy(&c.id))
            .map(|_| "unauthenticated: legacy SCTP listener".to_owned()),
    }
}

fn tlv<P: ::asap::wire::param::Param>(p: &P) -> Vec<u8> {
    let mut v = Vec::with_capacity(p.encoded_len());
    p.encode(&mut v);
    v
}

/// Spec §3.3: skipped parameters of a message without a response are reported in an
/// ASAP_ERROR.
fn report_unrecognized(conn: ConnId, unrecognized: &[UnknownParam], out: &mut Vec<Action>) {
    if let Some(error) = OperationError::new(unrecognized.iter().map(UnknownParam::cause).collect())
    {
        out.push(Action::Send {
            conn,
            msg: AsapMsg::Error(error),
        });
    }
}
