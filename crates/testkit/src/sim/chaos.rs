//! Chaos (faults) during the first part of a run: registrar crashes and restarts,
//! partitions (cut or stalled) and their heal, the Byzantine registrar's forged ENRP
//! messages (invariant 6), and the PEs' deregistrations, hangs, crashes and lost
//! connections.

use super::*;

impl World {
    // ---- chaos ----

    pub(super) fn live_regs(&self) -> Vec<usize> {
        (0..self.regs.len())
            .filter(|i| self.regs[*i].core.is_some())
            .collect()
    }

    pub(super) fn chaos(&mut self) {
        if self.chaos_over {
            return;
        }
        let roll = self.rng.range(0, 99);
        if roll < 2 && self.sc.crashes && self.sc.partitions && self.live_regs().len() > 1 {
            // The whole fleet (a power cut, an upgrade): every registrar crashes and comes
            // back after its own delay, in a random order; the first back starts with no
            // peer to mentor it and refuses PEs with 0x6 until its mentor timeout
            // (invariant 7). Only in runs that also partition: 3a is not checked there.
            self.stats.fleet_restarts += 1;
            self.log("the whole fleet crashes".to_owned());
            for reg in self.live_regs() {
                self.crash(reg);
                let back = self.rng.ms(100, 2500);
                self.at(self.now + back, Event::Restart { reg });
            }
        } else if roll < 12 && self.sc.crashes {
            let live = self.live_regs();
            // Crash-only runs crash one registrar at a time, so that 3a can be checked.
            let one_at_a_time = !self.sc.partitions;
            let down = self.regs.len() - live.len();
            if live.len() > 1
                && (!one_at_a_time || down == 0)
                && let Some(reg) = self.rng.pick(&live)
            {
                self.crash(reg);
                let back = self.rng.ms(100, 2500);
                self.at(self.now + back, Event::Restart { reg });
            }
        } else if roll < 22 && self.sc.partitions && self.partition.is_none() {
            self.split();
        } else if roll < 60 && self.sc.pe_churn {
            let pe = self.rng.range(0, self.pes.len() as u64 - 1) as usize;
            self.pe_chaos(pe);
        }
        if self.sc.byzantine && self.rng.chance(0.5) {
            self.forge();
        }
        let next = self.rng.ms(20, 300);
        self.at(self.now + next, Event::Chaos);
    }

    pub(super) fn split(&mut self) {
        let n = self.regs.len();
        let mut side: Vec<bool> = (0..n).map(|_| self.rng.chance(0.5)).collect();
        if side.iter().all(|s| *s) || side.iter().all(|s| !*s) {
            let i = self.rng.range(0, n as u64 - 1) as usize;
            side[i] = !side[i];
        }
        let stall = self.rng.chance(0.5);
        let id = self.next_partition;
        self.next_partition += 1;
        self.stats.partitions += 1;
        self.log(format!(
            "partition {id} {side:?} ({})",
            if stall { "stall" } else { "cut" }
        ));
        let crossing: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| Self::reg_pair(l).is_some_and(|(a, b)| side[a] != side[b]))
            .map(|(id, _)| *id)
            .collect();
        self.partition = Some(Partition { id, side });
        for l in crossing {
            if stall {
                if let Some(link) = self.links.get_mut(&l) {
                    link.stalled = true;
                }
                if let Some((a, b)) = self.links.get(&l).and_then(Self::reg_pair) {
                    self.pair_changed(a, b);
                }
            } else {
                self.reset(l);
            }
        }
        let d = self.rng.ms(300, 3000);
        self.disturbances.push((self.now, self.now + d, None));
        self.at(self.now + d, Event::Heal { id });
    }

    pub(super) fn heal(&mut self, id: u64) {
        if self.partition.as_ref().is_none_or(|p| p.id != id) {
            return;
        }
        self.partition = None;
        self.log(format!("partition {id} healed"));
        let stalled: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.stalled)
            .map(|(i, _)| *i)
            .collect();
        for l in stalled {
            if let Some(link) = self.links.get_mut(&l) {
                link.stalled = false;
                for dir in &mut link.dirs {
                    dir.pumping = false;
                }
            }
            if let Some((a, b)) = self.links.get(&l).and_then(Self::reg_pair) {
                self.pair_changed(a, b);
            }
            for from in [0, 1] {
                let ready = self
                    .links
                    .get(&l)
                    .and_then(|k| k.dirs[from].queue.front().map(|f| f.0));
                if let Some(ready) = ready {
                    if let Some(link) = self.links.get_mut(&l) {
                        link.dirs[from].pumping = true;
                    }
                    self.at(ready, Event::Pump { link: l, from });
                }
            }
        }
    }

    pub(super) fn end_chaos(&mut self) {
        self.chaos_over = true;
        self.log("chaos ends: heal, restart, quiet".to_owned());
        if let Some(id) = self.partition.as_ref().map(|p| p.id) {
            if let Some((_, end, _)) = self.disturbances.iter_mut().rev().find(|d| d.2.is_none()) {
                *end = self.now;
            }
            self.heal(id);
        }
        for reg in 0..self.regs.len() {
            self.restart(reg);
        }
        for pe in 0..self.pes.len() {
            self.pes[pe].may_restart = false;
            if self.pes[pe].state == PeState::Hung {
                self.pe_stop(pe, "killed after hanging");
            }
        }
    }

    /// The Byzantine registrar forges one message to an honest peer it has a link to.
    pub(super) fn forge(&mut self) {
        let Some(b) = self.byzantine() else { return };
        let Some(core) = &self.regs[b].core else {
            return;
        };
        let links: Vec<(LinkId, usize, usize)> = self.regs[b]
            .links
            .iter()
            .filter_map(|id| {
                let l = self.links.get(id)?;
                let side = (0..2).find(|s| l.ends[*s].node == Node::Reg(b))?;
                let Node::Reg(r) = l.ends[1 - side].node else {
                    return None;
                };
                (l.enrp && l.ends.iter().all(|e| e.up && !e.down)).then_some((*id, side, r))
            })
            .collect();
        let Some((link, side, r)) = self.rng.pick(&links) else {
            return;
        };
        let me = self.regs[b].sid;
        // Others' PEs as the Byzantine knows them, named its own.
        let mut theirs: Vec<(Namespace, PoolHandle, PeEntry)> = core
            .handlespace()
            .iter()
            .filter(|(_, _, e)| e.pool_element.home_server_id != me.get())
            .map(|(ns, h, e)| (ns.clone(), h.clone(), e.clone()))
            .collect();
        for (_, _, e) in &mut theirs {
            e.pool_element.home_server_id = me.get();
        }
        let others: Vec<ServerId> = (0..self.regs.len())
            .filter(|i| *i != b && *i != r)
            .map(|i| self.regs[i].sid)
            .collect();
        let target = self.rng.pick(&others).unwrap_or(self.regs[r].sid);
        // A list naming registrars at addresses a peer must never dial (loopback,
        // unspecified, multicast), and real ones (harmless): taken only in answer to a
        // request, and the bad addresses never dialed (docs/ENRP-TRUST.md §6).
        let bogus_list = EnrpBody::ListResponse {
            reject: false,
            servers: [
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::new(224, 0, 0, 9),
                self.regs[r].ip,
            ]
            .into_iter()
            .enumerate()
            .filter_map(|(i, ip)| {
                Some(asap::wire::param::ServerInformation {
                    server_id: ServerId::new(0x0bad_0000 + i as u32)?,
                    transport: Transport::Tcp {
                        port: NonZeroU16::new(9902)?,
                        transport_use: TransportUse::DataOnly,
                        addr: Address::new(ip),
                    },
                })
            })
            .collect(),
        };
        let pick = self.rng.range(0, 6);
        let bodies: Vec<EnrpBody> = match pick {
            0 => vec![EnrpBody::TakeoverServer { target }],
            1 => vec![
                EnrpBody::InitTakeover { target },
                EnrpBody::TakeoverServer { target },
            ],
            2 => theirs
                .iter()
                .take(1 + self.rng.range(0, 2) as usize)
                .map(|(ns, h, e)| EnrpBody::HandleUpdate {
                    action: UpdateAction::AddPe,
                    namespace: ns.clone(),
                    pool_handle: h.clone(),
                    pool_element: e.pool_element.clone(),
                    registrant: e.registrant.clone(),
                })
                .collect(),
            3 => {
                let mut pools: Vec<asap::wire::PoolEntries> = Vec::new();
                for (ns, h, e) in theirs.into_iter().take(20) {
                    match pools.last_mut() {
                        Some(g) if g.namespace == ns && g.pool_handle == h => g.entries.push(e),
                        _ => pools.push(asap::wire::PoolEntries {
                            namespace: ns,
                            pool_handle: h,
                            entries: vec![e],
                        }),
                    }
                }
                if self.rng.chance(0.3) {
                    pools.clear();
                }
                vec![EnrpBody::HandleTableResponse {
                    reject: false,
                    more: false,
                    pools,
                }]
            }
            4 => vec![bogus_list],
            _ => theirs
                .iter()
                .take(1)
                .map(|(ns, h, e)| EnrpBody::HandleUpdate {
                    action: UpdateAction::DelPe,
                    namespace: ns.clone(),
                    pool_handle: h.clone(),
                    pool_element: e.pool_element.clone(),
                    registrant: e.registrant.clone(),
                })
                .collect(),
        };
        for body in bodies {
            self.log(format!("r{b} forges to r{r}: {}", describe(&body)));
            let msg = EnrpMsg {
                sender: me,
                receiver: self.regs[r].sid.get(),
                body,
            };
            match msg.to_bytes() {
                Ok(bytes) => {
                    self.stats.forged += 1;
                    self.send(link, side, bytes);
                }
                Err(e) => self.fail(format!("r{b}: cannot encode a forgery: {e}")),
            }
        }
    }

    pub(super) fn pe_chaos(&mut self, pe: usize) {
        let state = self.pes[pe].state;
        let roll = self.rng.range(0, 99);
        match state {
            PeState::Registered if roll < 25 => {
                let (Some(pe_id), pool) = (self.pes[pe].pe_id, self.pes[pe].pool) else {
                    return;
                };
                self.log(format!("pe{pe} deregisters"));
                self.pes[pe].state = PeState::Deregistering;
                self.pes[pe].epoch += 1;
                let msg = AsapMsg::Deregistration {
                    namespace: None,
                    pool_handle: pool_handle(pool),
                    pe_id,
                };
                self.pe_send(pe, &msg);
            }
            PeState::Registered if roll < 45 => {
                self.stats.pe_deaths += 1;
                self.log(format!("pe{pe} hangs"));
                if let (Some(id), Some(at)) = (self.pes[pe].pe_id, self.pes[pe].registered_at) {
                    // The next keep-alive (up to an interval after the last answer, or
                    // after a re-registration in flight) and its timeout; if the
                    // connection closes first (the PE is killed), the connection grace
                    // from then (spec §12.6); and the one keep-alive timeout allowed.
                    let bound = self.sc.max_delay * 2
                        + self.timing.keep_alive_interval
                        + self.timing.keep_alive_timeout * 2
                        + self.timing.connection_grace;
                    self.gone.insert(
                        id,
                        Gone {
                            at: self.now,
                            bound,
                            registrar: at,
                            why: "hung",
                        },
                    );
                }
                self.pes[pe].state = PeState::Hung;
                self.pes[pe].epoch += 1;
                let epoch = self.pes[pe].epoch;
                let d = self.rng.ms(300, 2000);
                self.at(self.now + d, Event::PeKill { pe, epoch });
            }
            PeState::Registered if roll < 65 => {
                self.stats.pe_deaths += 1;
                self.pe_stop(pe, "crashed");
            }
            PeState::Registered | PeState::Registering => {
                // Reset, or half-open: the PE gives up on a silent registrar and hunts
                // another while the old one still believes the connection is up (until
                // its keep-alive times out).
                let silent = self.rng.chance(0.5);
                self.log(format!("pe{pe} loses its connection (silently: {silent})"));
                if let Some(link) = self.pes[pe].link {
                    if silent {
                        self.vanish(link, Node::Pe(pe));
                    } else {
                        self.reset(link);
                    }
                }
            }
            _ => {}
        }
    }
}
