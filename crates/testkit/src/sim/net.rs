//! The simulated network: links as TCP connections (an ordered stream per direction with
//! a random delay per message, connect and handshake delays, `PeerUp`/`PeerDown` at each
//! end), closes and resets, delivery of frames to registrars, PEs and PUs, and hosts that
//! vanish without a word.

use super::*;

impl World {
    // ---- links ----

    pub(super) fn node_inc(&self, node: Node) -> Option<u32> {
        match node {
            Node::Reg(i) => self.regs[i].core.as_ref().map(|_| self.regs[i].inc),
            Node::Pe(i) => Some(self.pes[i].inc),
            Node::Pu(i) => Some(self.pus[i].inc),
        }
    }

    pub(super) fn end_alive(&self, link: &Link, side: usize) -> bool {
        let e = &link.ends[side];
        !e.down && self.node_inc(e.node) == Some(e.inc)
    }

    /// Opens a link from `a` (end 0, the dialer or ASAP client) to `b` (end 1): connect,
    /// then the handshake ends at the dialer and a little later at the acceptor.
    pub(super) fn connect(
        &mut self,
        a: Node,
        b: Node,
        enrp: bool,
        dialer: Option<(usize, u64)>,
    ) -> LinkId {
        let id = self.next_link;
        self.next_link += 1;
        let connected = self.now + self.delay() + self.delay();
        let up0 = connected + self.delay();
        let up1 = up0 + self.delay();
        let end = |w: &Self, node, up_at| End {
            node,
            inc: w.node_inc(node).unwrap_or(0),
            up_at,
            up: false,
            down: false,
        };
        let link = Link {
            enrp,
            ends: [end(self, a, up0), end(self, b, up1)],
            dirs: [Dir::default(), Dir::default()],
            stalled: false,
            dialer,
            created: self.now,
        };
        self.links.insert(id, link);
        for n in [a, b] {
            if let Node::Reg(i) = n {
                self.regs[i].links.insert(id);
            }
        }
        if let (Node::Reg(i), Node::Reg(j)) = (a, b) {
            self.pair_changed(i, j);
        }
        self.at(up0, Event::Up { link: id, side: 0 });
        self.at(up1, Event::Up { link: id, side: 1 });
        id
    }

    pub(super) fn pair_changed(&mut self, i: usize, j: usize) {
        self.pair_event.insert((i.min(j), i.max(j)), self.now);
    }

    pub(super) fn reg_pair(link: &Link) -> Option<(usize, usize)> {
        match (link.ends[0].node, link.ends[1].node) {
            (Node::Reg(i), Node::Reg(j)) => Some((i, j)),
            _ => None,
        }
    }

    pub(super) fn send(&mut self, id: LinkId, from: usize, bytes: Vec<u8>) {
        let d = self.delay();
        let now = self.now;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let dir = &mut link.dirs[from];
        if dir.closed || dir.discard || link.ends[from].down {
            return;
        }
        let ready = (now + d).max(dir.last).max(link.ends[1 - from].up_at);
        dir.last = ready;
        dir.queue.push_back((ready, Some(bytes)));
        if !dir.pumping && !link.stalled {
            dir.pumping = true;
            self.at(ready, Event::Pump { link: id, from });
        }
    }

    /// End `side` closes: what it queued goes out, then EOF; it reads no more.
    pub(super) fn close(&mut self, id: LinkId, side: usize) {
        let d = self.delay();
        let now = self.now;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        if link.ends[side].down || link.dirs[side].closed {
            return;
        }
        let out = &mut link.dirs[side];
        out.closed = true;
        let ready = (now + d).max(out.last);
        out.last = ready;
        out.queue.push_back((ready, None));
        let pump = !out.pumping && !link.stalled;
        if pump {
            out.pumping = true;
        }
        let back = &mut link.dirs[1 - side];
        back.discard = true;
        back.queue.clear();
        if let Some((i, j)) = Self::reg_pair(link) {
            self.pair_changed(i, j);
        }
        if pump {
            self.at(
                ready,
                Event::Pump {
                    link: id,
                    from: side,
                },
            );
        }
        // The closing end's task ends at once and tells its own side.
        self.at(
            now + Duration::from_micros(50),
            Event::Down { link: id, side },
        );
    }

    /// The connection breaks: what is in flight is lost, each live end hears of it.
    pub(super) fn reset(&mut self, id: LinkId) {
        let d = [self.delay(), self.delay()];
        let now = self.now;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        for dir in &mut link.dirs {
            dir.discard = true;
            dir.closed = true;
            dir.queue.clear();
        }
        if let Some((i, j)) = Self::reg_pair(link) {
            self.pair_changed(i, j);
        }
        for (side, d) in d.into_iter().enumerate() {
            self.at(now + d, Event::Down { link: id, side });
        }
    }

    pub(super) fn pump(&mut self, id: LinkId, from: usize) {
        loop {
            let now = self.now;
            let Some(link) = self.links.get_mut(&id) else {
                return;
            };
            let dir = &mut link.dirs[from];
            dir.pumping = false;
            if link.stalled || dir.discard {
                return;
            }
            let Some(&(ready, _)) = dir.queue.front() else {
                return;
            };
            if ready > now {
                dir.pumping = true;
                self.at(ready, Event::Pump { link: id, from });
                return;
            }
            let (_, frame) = dir.queue.pop_front().expect("front checked");
            let to = 1 - from;
            match frame {
                Some(bytes) => self.deliver(id, to, &bytes),
                None => self.link_down(id, to),
            }
        }
    }

    pub(super) fn link_up(&mut self, id: LinkId, side: usize) {
        let Some(link) = self.links.get(&id) else {
            return;
        };
        if !self.end_alive(link, side) {
            return;
        }
        if link.dirs[1 - side].discard {
            // The other end vanished mid-handshake: this end gives up at the handshake
            // timeout (`Settings::handshake_timeout`), as `daemon::connection` does.
            let at = link.created + HANDSHAKE_TIMEOUT;
            self.at(at, Event::Down { link: id, side });
            return;
        }
        let node = link.ends[side].node;
        let other = link.ends[1 - side].node;
        let enrp = link.enrp;
        if let Some(l) = self.links.get_mut(&id) {
            l.ends[side].up = true;
        }
        match node {
            Node::Reg(i) => {
                let (client, server_id) = self.client_of(other, side);
                let conn = ConnId(id);
                let input = if enrp {
                    self.log(format!("r{i} PeerUp {other:?} on link {id}"));
                    Input::PeerUp {
                        conn,
                        peer: client,
                        server_id: server_id.expect("a registrar"),
                        outbound: side == 0,
                    }
                } else {
                    // The simulated links are TCP-like: one address, the client's.
                    Input::Connected {
                        conn,
                        client,
                        addrs: Vec::new(),
                    }
                };
                if let Some((a, b)) = self.links.get(&id).and_then(Self::reg_pair) {
                    self.pair_changed(a, b);
                }
                self.feed(i, input);
            }
            Node::Pe(p) => self.pe_connected(p, id),
            Node::Pu(_) => {}
        }
    }

    /// The identity and address that end `side` of a link sees at its other end.
    pub(super) fn client_of(&mut self, other: Node, side: usize) -> (Remote, Option<ServerId>) {
        let port = self.rng.range(30_000, 60_000) as u16;
        let (id, ip, sid, serial) = match other {
            Node::Reg(j) => {
                let r = &self.regs[j];
                (
                    r.id.clone(),
                    r.ip,
                    Some(r.sid),
                    vec![1, j as u8, r.inc as u8],
                )
            }
            Node::Pe(p) => {
                let pe = &self.pes[p];
                (pe.id.clone(), pe.ip, None, vec![2, p as u8])
            }
            Node::Pu(u) => {
                let pu = &self.pus[u];
                (pu.id.clone(), pu.ip, None, vec![3, u as u8])
            }
        };
        // The dialer sees the acceptor's listening port; the acceptor an ephemeral one.
        let port = if side == 0 { 9902 } else { port };
        let client = Remote {
            id,
            serial: Serial::from_bytes(&serial),
            addr: SocketAddr::new(IpAddr::V4(ip), port),
        };
        (client, sid)
    }

    pub(super) fn link_down(&mut self, id: LinkId, side: usize) {
        let Some(link) = self.links.get(&id) else {
            return;
        };
        if link.ends[side].down {
            return;
        }
        let alive = self.end_alive(link, side);
        let was_up = link.ends[side].up;
        let node = link.ends[side].node;
        let enrp = link.enrp;
        let dialer = link.dialer;
        let created = link.created;
        let pair = Self::reg_pair(link);
        if let Some(l) = self.links.get_mut(&id) {
            l.ends[side].down = true;
            // Its reader is gone; whatever still travels to it is dropped.
            l.dirs[1 - side].discard = true;
            l.dirs[1 - side].queue.clear();
            l.dirs[side].closed = true;
        }
        if let Some((a, b)) = pair {
            self.pair_changed(a, b);
        }
        if self
            .links
            .get(&id)
            .is_some_and(|l| l.ends.iter().all(|e| e.down))
            && let Some(l) = self.links.remove(&id)
        {
            for e in &l.ends {
                if let Node::Reg(i) = e.node {
                    self.regs[i].links.remove(&id);
                }
            }
        }
        if !alive {
            return;
        }
        match node {
            Node::Reg(i) => {
                if was_up {
                    let conn = ConnId(id);
                    let input = if enrp {
                        self.log(format!("r{i} PeerDown link {id}"));
                        Input::PeerDown { conn }
                    } else {
                        Input::Closed { conn }
                    };
                    self.feed(i, input);
                }
                if side == 0
                    && let Some((reg, epoch)) = dialer
                {
                    let now = self.now;
                    self.redial(reg, pair.map_or(0, |p| p.1), epoch, created, now);
                }
            }
            Node::Pe(p) => self.pe_lost(p, id),
            Node::Pu(u) => {
                if self.pus[u].link == Some(id) {
                    self.pus[u].link = None;
                }
            }
        }
    }

    /// A frame reaches end `to` of a link.
    pub(super) fn deliver(&mut self, id: LinkId, to: usize, bytes: &[u8]) {
        let Some(link) = self.links.get(&id) else {
            return;
        };
        if !self.end_alive(link, to) || !link.ends[to].up {
            return;
        }
        let node = link.ends[to].node;
        let enrp = link.enrp;
        self.stats.messages += 1;
        let nanos = self.now.as_nanos() as u64;
        self.digest = fnv(self.digest, &nanos.to_be_bytes());
        self.digest = fnv(self.digest, &id.to_be_bytes());
        self.digest = fnv(self.digest, bytes);
        match node {
            Node::Reg(i) => {
                let conn = ConnId(id);
                if enrp {
                    match EnrpMsg::decode(bytes) {
                        Ok(msg) => self.feed_enrp(i, conn, msg),
                        Err(error) => {
                            self.fail(format!("r{i}: an ENRP message did not decode: {error}"));
                        }
                    }
                } else {
                    match AsapMsg::decode(bytes) {
                        Ok(msg) => self.feed(i, Input::Asap { conn, msg }),
                        Err(error) => {
                            self.fail(format!("r{i}: an ASAP message did not decode: {error}"));
                        }
                    }
                }
            }
            Node::Pe(p) => match AsapMsg::decode(bytes) {
                Ok(m) => self.pe_receive(p, id, m.msg),
                Err(e) => self.fail(format!("pe{p}: a message did not decode: {e}")),
            },
            Node::Pu(u) => match AsapMsg::decode(bytes) {
                Ok(m) => {
                    if !matches!(m.msg, AsapMsg::HandleResolutionResponse { .. }) {
                        self.fail(format!("pu{u}: unexpected {:?}", m.msg.name()));
                    }
                }
                Err(e) => self.fail(format!("pu{u}: a message did not decode: {e}")),
            },
        }
    }

    pub(super) fn side_of(&self, id: LinkId, node: Node) -> Option<usize> {
        let link = self.links.get(&id)?;
        (0..2).find(|s| link.ends[*s].node == node)
    }

    pub(super) fn send_from_reg(&mut self, reg: usize, id: LinkId, bytes: Vec<u8>) {
        if let Some(side) = self.side_of(id, Node::Reg(reg)) {
            self.send(id, side, bytes);
        }
    }

    /// The host at `dead` is gone without a word: nothing gets through any more, but a
    /// registrar at the other end hears nothing until its core gives up (PRESENCE
    /// timers, spec §9.5) and closes; a PE gives up after 3 keep-alive intervals of
    /// silence (spec §12.4), a PU after its request times out.
    pub(super) fn vanish(&mut self, id: LinkId, dead: Node) {
        let now = self.now;
        let silence = self.timing.keep_alive_interval * 3;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        for dir in &mut link.dirs {
            dir.discard = true;
            dir.queue.clear();
        }
        if let Some((i, j)) = Self::reg_pair(link) {
            self.pair_changed(i, j);
        }
        let Some(nodes) = self
            .links
            .get(&id)
            .map(|l| [l.ends[0].node, l.ends[1].node])
        else {
            return;
        };
        for (side, node) in nodes.into_iter().enumerate() {
            match node {
                n if n == dead => self.at(now, Event::Down { link: id, side }),
                Node::Reg(_) => {}
                Node::Pe(_) | Node::Pu(_) => self.at(now + silence, Event::Down { link: id, side }),
            }
        }
    }
}
