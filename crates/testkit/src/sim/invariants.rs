//! The invariants of the run (numbered as in the module doc of `world`), checked as the
//! run goes (4 at each resolution, 3b every 50 ms, 6 around each message of the
//! Byzantine) and after the quiet period (1, 2, 3a).

use super::*;
use crate::invariants;
use enrp_core::handlespace::Handlespace;

impl World {
    // ---- invariants ----

    /// Invariant 4, at the moment registrar `reg` answers a resolution.
    pub(super) fn check_resolution(
        &mut self,
        reg: usize,
        handle: &PoolHandle,
        result: &Resolution,
    ) {
        self.stats.resolutions += 1;
        let Resolution::Found { pool_elements, .. } = result else {
            return;
        };
        let inc = self.regs[reg].inc;
        let me = self.regs[reg].sid.get();
        let ka = self.timing.keep_alive_timeout;
        for PeEntry { pool_element, .. } in pool_elements {
            self.stats.returned_pes += 1;
            let pe_id = pool_element.pe_id;
            let home = pool_element.home_server_id;
            if home == me
                && let Some(g) = self.gone.get(&pe_id)
                && g.registrar == (reg, inc)
                && self.now > g.at + g.bound
                // The registrar removed it up to one message delay before `g.at` (when
                // the PE heard so).
                && self
                    .byzantine_named
                    .get(&(reg, inc, pe_id))
                    .is_none_or(|t| *t + self.sc.max_delay < g.at)
            {
                let msg = format!(
                    "4a: r{reg} returned PE {} {:.3}s after it {} (bound {:?})",
                    pe_id.get(),
                    (self.now - g.at).as_secs_f64(),
                    g.why,
                    g.bound
                );
                self.fail(msg);
                return;
            }
            let Some(h) = self.regs.iter().position(|r| r.sid.get() == home) else {
                self.fail(format!(
                    "r{reg} returned PE {} of unknown home {home:#x}",
                    pe_id.get()
                ));
                return;
            };
            if h == reg {
                continue;
            }
            // 3b for what is returned (the whole handlespace is checked every 50 ms).
            let key = (Namespace::default_namespace(), handle.clone(), pe_id);
            let life = Duration::from_millis(pool_element.registration_life as u64);
            match self.last_refresh(reg, inc, &key, home) {
                Some(t) if self.now <= t + life => {}
                t => {
                    let msg = format!(
                        "3b: r{reg} returned PE {} of r{h}, last refreshed at {t:?} (life {life:?})",
                        pe_id.get()
                    );
                    self.fail(msg);
                    return;
                }
            }
            if self.regs[h].core.is_none() {
                continue;
            }
            let hinc = self.regs[h].inc;
            let key = (Namespace::default_namespace(), handle.clone(), pe_id);
            // What the responder heard of the PE after the DEL_PE (it came back under
            // another home that then moved) is newer news, not a missed removal.
            let learned = self.learned.get(&(reg, inc, key.clone())).copied();
            if let Some(&t) = self.del_sent.get(&(h, hinc, key))
                && learned.is_none_or(|l| l < t)
            {
                let stable_since = self.pair_event.get(&(reg.min(h), reg.max(h))).copied();
                let linked = self.links.values().any(|l| {
                    Self::reg_pair(l).is_some_and(|(a, b)| (a, b) == (reg, h) || (a, b) == (h, reg))
                        && l.ends.iter().all(|e| e.up && !e.down)
                        && !l.stalled
                });
                if linked && stable_since.is_some_and(|s| s < t) {
                    self.stats.stale_checks_4b += 1;
                    if self.now > t + ka {
                        let msg = format!(
                            "4b: r{reg} returned PE {} {:.3}s after its home r{h} sent DEL_PE \
                             over a link up since {:.3}s",
                            pe_id.get(),
                            (self.now - t).as_secs_f64(),
                            stable_since.map_or(0.0, |s| s.as_secs_f64())
                        );
                        self.fail(msg);
                        return;
                    }
                }
            }
        }
    }

    /// Invariant 3b: a peer's PE is never kept past its registration life after its last
    /// refresh.
    pub(super) fn check_peer_pe_life(&mut self) {
        let mut bad = None;
        for (i, r) in self.regs.iter().enumerate() {
            let Some(core) = &r.core else { continue };
            for (ns, h, e) in core.handlespace().iter() {
                if e.pool_element.home_server_id == r.sid.get() {
                    continue;
                }
                let key = (ns.clone(), h.clone(), e.pool_element.pe_id);
                let life = Duration::from_millis(e.pool_element.registration_life as u64);
                match self.last_refresh(i, r.inc, &key, e.pool_element.home_server_id) {
                    None => {
                        bad = Some(format!(
                            "3b: r{i} holds PE {} of {:#x} that no peer ever sent it",
                            e.pool_element.pe_id.get(),
                            e.pool_element.home_server_id
                        ));
                    }
                    Some(t) if self.now > t + life => {
                        bad = Some(format!(
                            "3b: r{i} holds PE {} of {:#x} {:.3}s after its last refresh \
                             (registration life {life:?})",
                            e.pool_element.pe_id.get(),
                            e.pool_element.home_server_id,
                            (self.now - t).as_secs_f64()
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(msg) = bad {
            self.fail(msg);
        }
    }

    /// Invariant 3a over the whole run: at most one takeover completed per crash episode
    /// that nothing else disturbed. Only crashes that left the survivors a full mesh count:
    /// registrars that do not hear each other act as if partitioned (spec §9.8's tie-break
    /// only settles initiators that hear each other, and a third registrar acknowledges
    /// every initiator), and after a partition heals the mesh takes a redial back-off to
    /// close again (seed 623 crashes a registrar in that window).
    pub(super) fn check_takeovers(&mut self) {
        let end = self.now;
        let mut bad = None;
        let mut checked = 0;
        for &(reg, from, to, mesh) in &self.episodes {
            if !mesh {
                continue;
            }
            let to = to.unwrap_or(end);
            let done: Vec<&(Duration, usize, usize)> = self
                .takeovers
                .iter()
                .filter(|(t, _, target)| *target == reg && *t >= from && *t <= to)
                .collect();
            let last = done.last().map_or(from, |d| d.0);
            let disturbed = self
                .disturbances
                .iter()
                .any(|&(s, e, who)| who != Some(reg) && s <= last && e >= from)
                || self
                    .episodes
                    .iter()
                    .any(|&(r, s, e, _)| r != reg && s <= last && e.unwrap_or(end) >= from);
            if disturbed {
                continue;
            }
            checked += 1;
            if done.len() > 1 {
                bad = Some(format!(
                    "3a: r{reg} crashed at {:.3}s and was taken over {} times: {:?}",
                    from.as_secs_f64(),
                    done.len(),
                    done.iter()
                        .map(|d| (d.0.as_secs_f64(), d.1))
                        .collect::<Vec<_>>()
                ));
            }
        }
        self.stats.takeover_episodes_checked += checked;
        if let Some(b) = bad {
            self.fail(b);
        }
    }

    /// Invariants 1 and 2 after the quiet period, and 3 over the run.
    pub(super) fn final_check(&mut self) {
        self.check_peer_pe_life();
        self.check_takeovers();
        if self.failure.is_some() {
            return;
        }
        if self.regs.iter().all(|r| r.core.is_some()) {
            self.check_owners();
            if self.failure.is_some() {
                return;
            }
        }
        for (i, r) in self.regs.iter().enumerate() {
            let Some(core) = &r.core else {
                return self.fail(format!("1: r{i} is down after the quiet period"));
            };
            if core.starting() {
                return self.fail(format!("1: r{i} is still starting"));
            }
            let peers = core.peers();
            for (j, other) in self.regs.iter().enumerate() {
                if i == j {
                    continue;
                }
                let Some(p) = peers.iter().find(|p| p.server_id == other.sid) else {
                    return self.fail(format!("1: r{i} does not know r{j}"));
                };
                if p.state != PeerState::Active || !p.connected || p.checksum_match != Some(true) {
                    return self.fail(format!(
                        "1: r{i} sees r{j} {}, connected {}, checksum match {:?}",
                        p.state.as_str(),
                        p.connected,
                        p.checksum_match
                    ));
                }
            }
        }
        // The truth: each PE registered and alive, homed where it is connected.
        let mut truth: BTreeSet<(u32, u32)> = BTreeSet::new();
        for (p, pe) in self.pes.iter().enumerate() {
            match pe.state {
                PeState::Registered => {
                    let reg = pe.registrar.expect("registered somewhere");
                    truth.insert((pe.pe_id.expect("started").get(), self.regs[reg].sid.get()));
                }
                PeState::Off => {}
                s => return self.fail(format!("1: pe{p} is still {s:?} after the quiet period")),
            }
        }
        let hss: Vec<(ServerId, &Handlespace)> = self
            .regs
            .iter()
            .map(|r| (r.sid, r.core.as_ref().expect("checked").handlespace()))
            .collect();
        if let Err(msg) = invariants::handlespaces_agree(&hss) {
            return self.fail(format!("1: {msg}"));
        }
        // Each handlespace's own bookkeeping (counts, incremental checksums) agrees with
        // its entries, for every registrar as home.
        for (i, (_, hs)) in hss.iter().enumerate() {
            if let Err(msg) =
                invariants::handlespace_consistent(hs, self.regs.iter().map(|r| r.sid))
            {
                return self.fail(format!("1: r{i}: {msg}"));
            }
        }
        let held: BTreeSet<(u32, u32)> = hss[0]
            .1
            .iter()
            .map(|(_, _, e)| (e.pool_element.pe_id.get(), e.pool_element.home_server_id))
            .collect();
        if held != truth {
            self.fail(format!(
                "1: the handlespace {held:?} is not the registered PEs {truth:?}"
            ));
        }
    }

    /// Invariant 2: no PE has two registrars that each hold it as their own.
    pub(super) fn check_owners(&mut self) {
        let regs = self.regs.iter().enumerate();
        let live = regs.filter_map(|(i, r)| Some((i, r.sid, r.core.as_ref()?.handlespace())));
        if let Err(msg) = invariants::one_owner_each(live) {
            self.fail(format!("2: {msg}"));
        }
    }

    /// The Byzantine registrar's index, when this run has one.
    pub(super) fn byzantine(&self) -> Option<usize> {
        self.sc.byzantine.then(|| self.regs.len() - 1)
    }

    /// Invariant 6, before a message from `sender` reaches `reg`: when the sender is the
    /// Byzantine, the PEs at `reg` whose home is another registrar `reg` holds alive.
    pub(super) fn guarded_pes(&self, reg: usize, sender: ServerId) -> Vec<(PeKey, u32)> {
        let Some(b) = self.byzantine() else {
            return Vec::new();
        };
        if self.regs[b].sid != sender {
            return Vec::new();
        }
        let Some(core) = &self.regs[reg].core else {
            return Vec::new();
        };
        let me = self.regs[reg].sid.get();
        let alive: BTreeSet<u32> = core
            .peers()
            .iter()
            .filter(|p| p.state != PeerState::Dead && p.server_id != sender)
            .map(|p| p.server_id.get())
            .collect();
        core.handlespace()
            .iter()
            .filter(|(_, _, e)| {
                let home = e.pool_element.home_server_id;
                home != me && alive.contains(&home)
            })
            .map(|(ns, h, e)| {
                (
                    (ns.clone(), h.clone(), e.pool_element.pe_id),
                    e.pool_element.home_server_id,
                )
            })
            .collect()
    }

    /// Invariant 6, after the message: none of `guarded` was removed or re-homed to the
    /// Byzantine.
    pub(super) fn check_byzantine(
        &mut self,
        reg: usize,
        sender: ServerId,
        guarded: &[(PeKey, u32)],
    ) {
        let Some(core) = &self.regs[reg].core else {
            return;
        };
        for (key, home) in guarded {
            let now_home = core
                .handlespace()
                .pool(&key.0, &key.1)
                .and_then(|p| p.entry(key.2))
                .map(|e| e.pool_element.home_server_id);
            if now_home.is_none() || now_home == Some(sender.get()) {
                let msg = format!(
                    "6: a message of the Byzantine {sender} made r{reg} {} PE {} of live {home:#x}",
                    if now_home.is_none() {
                        "remove"
                    } else {
                        "re-home"
                    },
                    key.2.get()
                );
                self.fail(msg);
                return;
            }
        }
    }

    /// The refresh that lets registrar `reg` hold `key` with home `home`: its last ADD_PE
    /// or table entry with that home, or a re-home from `home` that waited (3b).
    pub(super) fn last_refresh(
        &self,
        reg: usize,
        inc: u32,
        key: &PeKey,
        home: u32,
    ) -> Option<Duration> {
        let refreshed = self.refreshed.get(&(reg, inc, key.clone())).copied();
        let claimed = self.claimed.get(&(reg, inc, key.clone(), home)).copied();
        refreshed.max(claimed)
    }
}
