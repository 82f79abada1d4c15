//! The driver of the registrar cores, as `enrpd`'s `daemon` drives its one core: inputs
//! fed in (`feed`, `feed_enrp`), actions carried out in order (`execute`, with the audit
//! commit gate open at once), crashes and restarts of a registrar, and each registrar's
//! dial loop for its configured and discovered peers (`daemon/peer.rs`'s back-off).

use super::*;
use crate::invariants::DurableBeforeReply;

impl World {
    // ---- registrars ----

    pub(super) fn feed(&mut self, reg: usize, input: Input) {
        let now = self.instant();
        let Some(core) = self.regs[reg].core.as_mut() else {
            return;
        };
        let actions = core.handle(input, now);
        self.execute(reg, actions);
    }

    /// An ENRP message for registrar `reg`, noting the refreshes of peers' PEs it brings
    /// (for invariant 3b).
    pub(super) fn feed_enrp(&mut self, reg: usize, conn: ConnId, msg: Decoded<EnrpMsg>) {
        let sender = msg.msg.sender;
        if self.trace_messages {
            let from = self.regs.iter().position(|r| r.sid == sender);
            let line = format!("r{reg} <- r{from:?}: {}", describe(&msg.msg.body));
            self.log(line);
        }
        let mut offered: Vec<PeKey> = Vec::new();
        match &msg.msg.body {
            EnrpBody::HandleUpdate {
                action: UpdateAction::AddPe,
                namespace,
                pool_handle,
                pool_element,
                ..
            } => offered.push((namespace.clone(), pool_handle.clone(), pool_element.pe_id)),
            EnrpBody::HandleTableResponse { pools, .. } => {
                for g in pools {
                    for e in &g.entries {
                        offered.push((
                            g.namespace.clone(),
                            g.pool_handle.clone(),
                            e.pool_element.pe_id,
                        ));
                    }
                }
            }
            EnrpBody::TakeoverServer { target } => {
                // The target's PEs here get the sender as home: news about each of them.
                if let Some(core) = &self.regs[reg].core {
                    let target = target.get();
                    offered.extend(
                        core.handlespace()
                            .iter()
                            .filter(|(_, _, e)| e.pool_element.home_server_id == target)
                            .map(|(ns, h, e)| (ns.clone(), h.clone(), e.pool_element.pe_id)),
                    );
                }
            }
            _ => {}
        }
        let guarded = self.guarded_pes(reg, sender);
        self.feed(reg, Input::Enrp { conn, msg });
        let inc = self.regs[reg].inc;
        let from_byzantine = self.byzantine().is_some_and(|b| self.regs[b].sid == sender);
        for key in offered {
            if from_byzantine {
                self.byzantine_named.insert((reg, inc, key.2), self.now);
            }
            self.learned.insert((reg, inc, key.clone()), self.now);
            let home = self.regs[reg].core.as_ref().and_then(|c| {
                c.handlespace()
                    .pool(&key.0, &key.1)?
                    .entry(key.2)
                    .map(|e| e.pool_element.home_server_id)
            });
            if home == Some(sender.get()) {
                self.refreshed.insert((reg, inc, key), self.now);
            } else {
                self.claimed.insert((reg, inc, key, sender.get()), self.now);
            }
        }
        self.check_byzantine(reg, sender, &guarded);
    }

    /// Carries out a core's actions in order, like `daemon::execute`.
    pub(super) fn execute(&mut self, reg: usize, actions: Vec<Action>) {
        let inc = self.regs[reg].inc;
        // Invariant 5: what this batch recorded durably before replying.
        let mut durable = DurableBeforeReply::new();
        for action in actions {
            if let Err(pe_id) = durable.observe(&action) {
                let msg = format!(
                    "5: r{reg} acknowledged PE {} before a durable audit record",
                    pe_id.get()
                );
                self.fail(msg);
            }
            match action {
                Action::Audit { event, .. } => {
                    if matches!(
                        event.action,
                        AuditAction::PeerDead
                            | AuditAction::TakeoverStarted
                            | AuditAction::TakeoverAcked
                            | AuditAction::TakeoverAbandoned
                            | AuditAction::TakeoverApplied
                            | AuditAction::TakeoverRefused
                            | AuditAction::PeerUpdate
                            | AuditAction::PeerIgnored
                            | AuditAction::MentorDone
                            | AuditAction::MentorTimeout
                    ) {
                        let line = format!(
                            "r{reg} {}: {}",
                            event.action.as_str(),
                            event.detail.as_deref().unwrap_or("")
                        );
                        self.log(line);
                    }
                    if event.action == AuditAction::TakeoverCompleted {
                        self.note_takeover(reg, event.detail.as_deref().unwrap_or(""));
                    }
                    if matches!(
                        event.action,
                        AuditAction::Register | AuditAction::Reregister
                    ) && event.outcome.is_none()
                        && let (Some(ns), Some(h), Some(p)) =
                            (event.namespace, event.pool_handle, event.pe_id)
                    {
                        self.del_sent.remove(&(reg, inc, (ns, h, p)));
                    }
                }
                Action::Send { conn, msg } => {
                    if let AsapMsg::HandleResolutionResponse {
                        pool_handle,
                        result,
                    } = &msg
                    {
                        self.check_resolution(reg, pool_handle, result);
                    }
                    match msg.to_bytes() {
                        Ok(bytes) => self.send_from_reg(reg, conn.0, bytes),
                        Err(e) => self.fail(format!("r{reg}: cannot encode {}: {e}", msg.name())),
                    }
                }
                Action::SendEnrp { conn, msg } => {
                    if let EnrpBody::HandleUpdate {
                        action,
                        namespace,
                        pool_handle,
                        pool_element,
                        ..
                    } = &msg.body
                    {
                        let key = (namespace.clone(), pool_handle.clone(), pool_element.pe_id);
                        match action {
                            UpdateAction::DelPe => {
                                self.del_sent.insert((reg, inc, key), self.now);
                            }
                            UpdateAction::AddPe => {
                                self.del_sent.remove(&(reg, inc, key));
                            }
                        }
                    }
                    match msg.to_bytes() {
                        Ok(bytes) => self.send_from_reg(reg, conn.0, bytes),
                        Err(e) => self.fail(format!("r{reg}: cannot encode ENRP: {e}")),
                    }
                }
                Action::Close { conn, reason } => {
                    self.log(format!("r{reg} closes link {}: {reason}", conn.0));
                    if let Some(side) = self.side_of(conn.0, Node::Reg(reg)) {
                        self.close(conn.0, side);
                    }
                }
                Action::DialPeer { addr } => match addr {
                    asap::addr::TransportAddr::Tcp(addr) => self.dial_discovered(reg, addr),
                    // The simulated registrars advertise TLS/TCP only.
                    other => self.fail(format!("r{reg} was told to dial {other} over SCTP")),
                },
                // Bindings last as long as a core here (no store): a restarted registrar
                // keeps its identity, so it binds its peers' Server IDs again alike.
                Action::BindServerId { .. } => {}
                // The simulated PEs advertise no ASAP listener (spec §12.6), so no
                // registrar may ask to dial one.
                Action::DialPe { addr, .. } => {
                    self.fail(format!(
                        "r{reg} dials a PE listener {addr} nobody advertised"
                    ));
                }
            }
        }
    }

    pub(super) fn note_takeover(&mut self, by: usize, detail: &str) {
        let target = self.regs.iter().position(|r| {
            detail.starts_with(&format!("target {} ", r.sid))
                || detail.starts_with(&format!("target {}:", r.sid))
        });
        match target {
            Some(t) => {
                self.log(format!("r{by} completed the takeover of r{t}"));
                self.stats.takeovers += 1;
                self.takeovers.push((self.now, by, t));
            }
            None => self.fail(format!("r{by}: takeover of an unknown target: {detail}")),
        }
    }

    pub(super) fn restart(&mut self, reg: usize) {
        if self.regs[reg].core.is_some() {
            return;
        }
        let r = &mut self.regs[reg];
        r.inc += 1;
        let mut config = Config::new(r.sid);
        config.timing = self.timing;
        config.rng_seed = self.sc.seed ^ ((reg as u64) << 32) ^ u64::from(r.inc);
        config.enrp_addr = Some(SocketAddr::new(IpAddr::V4(r.ip), 9902));
        // Small handle table pages, so that the M-bit paging of spec §9.7 is exercised.
        config.handle_table_pes = 4;
        let mut core = Core::new(config, self.grants.clone());
        if !r.configured.is_empty() {
            core.begin_startup(self.base + self.now);
        }
        r.core = Some(core);
        if let Some(since) = r.down_since.take() {
            self.disturbances.push((since, self.now, Some(reg)));
            if let Some(e) = self.episodes.iter_mut().rev().find(|e| e.0 == reg) {
                e.2 = Some(self.now);
            }
        }
        self.log(format!(
            "r{reg} starts (incarnation {})",
            self.regs[reg].inc
        ));
        let configured = self.regs[reg].configured.clone();
        for target in configured {
            self.add_dialer(reg, target, true);
        }
    }

    pub(super) fn crash(&mut self, reg: usize) {
        if self.regs[reg].core.take().is_none() {
            return;
        }
        self.stats.crashes += 1;
        self.log(format!("r{reg} crashes"));
        self.regs[reg].down_since = Some(self.now);
        self.regs[reg].dialers.clear();
        let mesh = self.full_mesh();
        self.episodes.push((reg, self.now, None, mesh));
        // A process crash resets its connections (the kernel sends RST); a host crash
        // leaves them silent, and the other ends find out by their own timers.
        let silent = self.rng.chance(0.5);
        let links: Vec<LinkId> = std::mem::take(&mut self.regs[reg].links)
            .into_iter()
            .collect();
        for id in links {
            if silent {
                self.vanish(id, Node::Reg(reg));
            } else {
                self.reset(id);
            }
        }
    }

    /// Whether every two live registrars have a link up between them (not stalled).
    pub(super) fn full_mesh(&self) -> bool {
        let live = self.live_regs();
        let mut linked = BTreeSet::new();
        for l in self.links.values() {
            if let Some((a, b)) = Self::reg_pair(l)
                && !l.stalled
                && l.ends.iter().all(|e| e.up && !e.down)
            {
                linked.insert((a.min(b), a.max(b)));
            }
        }
        live.iter().all(|&a| {
            live.iter()
                .all(|&b| a >= b || linked.contains(&(b.min(a), b.max(a))))
        })
    }

    pub(super) fn add_dialer(&mut self, reg: usize, target: usize, configured: bool) {
        let epoch = self.rng.next_u64();
        self.regs[reg].dialers.insert(
            target,
            Dialer {
                epoch,
                delay: REDIAL_MIN,
                configured,
                answered: false,
            },
        );
        self.at(self.now, Event::Dial { reg, target, epoch });
    }

    pub(super) fn dial_discovered(&mut self, reg: usize, addr: SocketAddr) {
        let Some(target) = self
            .regs
            .iter()
            .position(|r| SocketAddr::new(IpAddr::V4(r.ip), 9902) == addr)
        else {
            self.fail(format!(
                "r{reg} was told to dial {addr}, which nobody advertised"
            ));
            return;
        };
        let r = &self.regs[reg];
        let discovered = r.dialers.values().filter(|d| !d.configured).count();
        if target == reg || r.dialers.contains_key(&target) || discovered >= MAX_DISCOVERED {
            return;
        }
        self.log(format!("r{reg} dials r{target}, learnt from a list"));
        self.add_dialer(reg, target, false);
    }

    pub(super) fn blocked(&self, a: usize, b: usize) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|p| p.side[a] != p.side[b])
    }

    pub(super) fn dial(&mut self, reg: usize, target: usize, epoch: u64) {
        if self.regs[reg]
            .dialers
            .get(&target)
            .is_none_or(|d| d.epoch != epoch)
        {
            return;
        }
        // `dial_loop`: no dial while the core has another connection to a peer that
        // answered here before; a learnt dialer then ends, a configured one looks again
        // after REDIAL_MAX.
        let answered = self.regs[reg]
            .dialers
            .get(&target)
            .is_some_and(|d| d.answered);
        let target_sid = self.regs[target].sid;
        let connected_otherwise = answered
            && self.regs[reg].core.as_ref().is_some_and(|c| {
                c.peers()
                    .iter()
                    .any(|p| p.server_id == target_sid && p.connected)
            });
        if connected_otherwise {
            let configured = self.regs[reg]
                .dialers
                .get(&target)
                .is_some_and(|d| d.configured);
            if configured {
                self.at(self.now + REDIAL_MAX, Event::Dial { reg, target, epoch });
            } else {
                self.regs[reg].dialers.remove(&target);
            }
            return;
        }
        if self.regs[target].core.is_some() && !self.blocked(reg, target) {
            if let Some(d) = self.regs[reg].dialers.get_mut(&target) {
                d.answered = true;
            }
            let link = self.connect(Node::Reg(reg), Node::Reg(target), true, Some((reg, epoch)));
            if self.trace_messages {
                self.log(format!("r{reg} dials r{target}: link {link}"));
            }
        } else {
            if self.trace_messages {
                self.log(format!("r{reg} dials r{target}: fails"));
            }
            // Refused or unreachable, after a short while; then the back-off.
            let failed = self.now + self.rng.ms(1, 20);
            self.redial(reg, target, epoch, self.now, failed);
        }
    }

    /// `dial_loop`: back to the minimum after a stable connection, else double.
    pub(super) fn redial(
        &mut self,
        reg: usize,
        target: usize,
        epoch: u64,
        started: Duration,
        now: Duration,
    ) {
        let Some(d) = self.regs[reg].dialers.get_mut(&target) else {
            return;
        };
        if d.epoch != epoch {
            return;
        }
        d.delay = if now.saturating_sub(started) >= STABLE {
            REDIAL_MIN
        } else {
            (d.delay * 2).min(REDIAL_MAX)
        };
        let at = now + d.delay;
        self.at(at, Event::Dial { reg, target, epoch });
    }
}
