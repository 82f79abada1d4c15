//! The PE model, after `asap::client::pe`: hunt a registrar, register, answer
//! keep-alives, re-register every T4, and hunt another registrar (same PE ID) when the
//! connection is lost or a registration is refused for a transient cause.

use super::*;

impl World {
    // ---- PEs ----

    pub(super) fn pe_element(&self, pe: usize) -> Option<PoolElement> {
        let p = &self.pes[pe];
        Some(PoolElement {
            pe_id: p.pe_id?,
            home_server_id: 0,
            registration_life: REGISTRATION_LIFE.as_millis() as i32,
            user_transport: Transport::Tcp {
                port: NonZeroU16::new(7000 + pe as u16).expect("non-zero"),
                transport_use: TransportUse::DataOnly,
                addr: Address::new(IpAddr::V4(p.ip)),
            },
            policy: policy(p.pool),
            asap_transport: None,
            labels: Default::default(),
            status: Default::default(),
            serving_identity: None,
        })
    }

    pub(super) fn pe_send(&mut self, pe: usize, msg: &AsapMsg) {
        let Some(link) = self.pes[pe].link else {
            return;
        };
        match msg.to_bytes() {
            Ok(b) => self.send(link, 0, b),
            Err(e) => self.fail(format!("pe{pe}: cannot encode {}: {e}", msg.name())),
        }
    }

    pub(super) fn pe_timer(&mut self, pe: usize, after: Duration) {
        self.pes[pe].epoch += 1;
        let epoch = self.pes[pe].epoch;
        self.at(self.now + after, Event::PeTick { pe, epoch });
    }

    pub(super) fn pe_tick(&mut self, pe: usize, epoch: u64) {
        if self.pes[pe].epoch != epoch {
            return;
        }
        match self.pes[pe].state {
            PeState::Off => {
                if !self.pes[pe].may_restart && self.pes[pe].pe_id.is_some() {
                    return;
                }
                let id = PeId::new(self.next_pe_id).expect("non-zero");
                self.next_pe_id += 1;
                self.pes[pe].pe_id = Some(id);
                self.log(format!("pe{pe} starts as PE {}", id.get()));
                self.pes[pe].state = PeState::Hunting;
                self.pe_hunt(pe);
            }
            PeState::Hunting => self.pe_hunt(pe),
            PeState::Registered => {
                // T4: re-register with the same PE ID.
                if let Some(element) = self.pe_element(pe) {
                    let msg = AsapMsg::Registration {
                        namespace: None,
                        pool_handle: pool_handle(self.pes[pe].pool),
                        pool_element: element,
                    };
                    self.pe_send(pe, &msg);
                }
                self.pe_timer(pe, REREGISTRATION);
            }
            _ => {}
        }
    }

    /// Spec §12.6: another registrar than the last one, if there is one.
    pub(super) fn pe_hunt(&mut self, pe: usize) {
        let live = self.live_regs();
        let others: Vec<usize> = live
            .iter()
            .copied()
            .filter(|r| Some(*r) != self.pes[pe].last_registrar)
            .collect();
        let choice = if others.is_empty() {
            self.rng.pick(&live)
        } else {
            self.rng.pick(&others)
        };
        let Some(reg) = choice else {
            let d = self.rng.ms(100, 500);
            self.pe_timer(pe, d);
            return;
        };
        self.pes[pe].epoch += 1;
        self.pes[pe].state = PeState::Connecting;
        self.pes[pe].registrar = Some(reg);
        self.pes[pe].last_registrar = Some(reg);
        let link = self.connect(Node::Pe(pe), Node::Reg(reg), false, None);
        self.pes[pe].link = Some(link);
    }

    pub(super) fn pe_connected(&mut self, pe: usize, link: LinkId) {
        if self.pes[pe].link != Some(link) || self.pes[pe].state != PeState::Connecting {
            return;
        }
        self.pes[pe].state = PeState::Registering;
        if let Some(element) = self.pe_element(pe) {
            let msg = AsapMsg::Registration {
                namespace: None,
                pool_handle: pool_handle(self.pes[pe].pool),
                pool_element: element,
            };
            self.pe_send(pe, &msg);
        }
    }

    pub(super) fn pe_receive(&mut self, pe: usize, link: LinkId, msg: AsapMsg) {
        if self.pes[pe].link != Some(link) {
            return;
        }
        let state = self.pes[pe].state;
        match msg {
            AsapMsg::RegistrationResponse {
                reject,
                pe_id,
                error,
                ..
            } => {
                if Some(pe_id) != self.pes[pe].pe_id {
                    self.fail(format!("pe{pe}: a response for PE {}", pe_id.get()));
                    return;
                }
                if reject {
                    // As asap::client::pe decides: a transient refusal is ridden out, a
                    // permanent one ends the PE, which no scenario here may cause.
                    let code = error
                        .as_ref()
                        .and_then(|e| e.causes().first())
                        .map_or(0, |c| c.code());
                    if !ErrorCause::from_parts(code, &[]).is_transient() {
                        self.fail(format!(
                            "6: pe{pe} gave up: refused by r{:?} with cause {code:#x}",
                            self.pes[pe].registrar
                        ));
                        return;
                    }
                    self.stats.refusals_0x6 += 1;
                    // Refused (a registrar still starting): try another, a bit later.
                    if matches!(state, PeState::Registering | PeState::Registered) {
                        self.log(format!("pe{pe} refused by r{:?}", self.pes[pe].registrar));
                        self.pes[pe].registered_at = None;
                        self.close(link, 0);
                        self.pes[pe].link = None;
                        self.pes[pe].state = PeState::Hunting;
                        let d = self.rng.ms(50, 400);
                        self.pe_timer(pe, d);
                    }
                } else if state == PeState::Registering {
                    let reg = self.pes[pe].registrar.expect("connected to one");
                    self.pes[pe].state = PeState::Registered;
                    self.pes[pe].registered_at = Some((reg, self.regs[reg].inc));
                    self.pe_timer(pe, REREGISTRATION);
                }
            }
            AsapMsg::EndpointKeepAlive { pool_handle, .. } => {
                if matches!(
                    state,
                    PeState::Registered | PeState::Registering | PeState::Deregistering
                ) && let Some(pe_id) = self.pes[pe].pe_id
                {
                    self.pe_send(pe, &AsapMsg::EndpointKeepAliveAck { pool_handle, pe_id });
                }
            }
            AsapMsg::DeregistrationResponse { error, .. } => {
                if state == PeState::Deregistering {
                    if let Some(e) = error {
                        self.fail(format!("pe{pe}: deregistration refused: {e:?}"));
                        return;
                    }
                    if let (Some(id), Some(at)) = (self.pes[pe].pe_id, self.pes[pe].registered_at) {
                        let bound = self.timing.keep_alive_timeout;
                        self.gone.insert(
                            id,
                            Gone {
                                at: self.now,
                                bound,
                                registrar: at,
                                why: "deregistered",
                            },
                        );
                    }
                    self.close(link, 0);
                    self.pe_off(pe);
                }
            }
            other => self.fail(format!("pe{pe}: unexpected {}", other.name())),
        }
    }

    pub(super) fn pe_lost(&mut self, pe: usize, link: LinkId) {
        if self.pes[pe].link != Some(link) {
            return;
        }
        self.pes[pe].link = None;
        self.pes[pe].registered_at = None;
        match self.pes[pe].state {
            PeState::Deregistering | PeState::Hung => self.pe_off(pe),
            PeState::Off => {}
            _ => {
                self.pes[pe].state = PeState::Hunting;
                let d = self.rng.ms(50, 400);
                self.pe_timer(pe, d);
            }
        }
    }

    pub(super) fn pe_off(&mut self, pe: usize) {
        self.pes[pe].state = PeState::Off;
        self.pes[pe].link = None;
        self.pes[pe].registered_at = None;
        self.pes[pe].pe_id = self.pes[pe].pe_id.filter(|_| !self.pes[pe].may_restart);
        if self.pes[pe].may_restart {
            let d = self.rng.ms(200, 2000);
            self.pe_timer(pe, d);
        } else {
            self.pes[pe].epoch += 1;
        }
    }

    /// The PE process ends: its connection resets.
    pub(super) fn pe_stop(&mut self, pe: usize, why: &'static str) {
        let reg_at = self.pes[pe].registered_at;
        if let (Some(id), Some(at)) = (self.pes[pe].pe_id, reg_at)
            && self.pes[pe].state != PeState::Hung
        {
            let bound =
                self.sc.max_delay + self.timing.connection_grace + self.timing.keep_alive_timeout;
            self.gone.insert(
                id,
                Gone {
                    at: self.now,
                    bound,
                    registrar: at,
                    why,
                },
            );
        }
        self.log(format!("pe{pe} stops: {why}"));
        if let Some(link) = self.pes[pe].link.take() {
            self.reset(link);
        }
        self.pes[pe].inc += 1;
        self.pe_off(pe);
    }
}
