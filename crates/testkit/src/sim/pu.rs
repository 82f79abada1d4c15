//! The PU model: resolve random pools on a registrar, reconnect elsewhere when it goes.

use super::*;

impl World {
    // ---- PUs ----

    pub(super) fn pu_tick(&mut self, pu: usize) {
        let up = self.pus[pu]
            .link
            .and_then(|l| self.links.get(&l))
            .map(|l| l.ends[0].up && !l.ends[0].down);
        match up {
            None => {
                self.pus[pu].link = None;
                let live = self.live_regs();
                if let Some(reg) = self.rng.pick(&live) {
                    let link = self.connect(Node::Pu(pu), Node::Reg(reg), false, None);
                    self.pus[pu].link = Some(link);
                }
            }
            Some(true) => {
                let pool = self.rng.range(0, self.sc.pools as u64 - 1) as usize;
                let msg = AsapMsg::HandleResolution {
                    namespace: None,
                    pool_handle: pool_handle(pool),
                    option: Some(HandleResolutionOption { items: 128 }),
                    hints: Default::default(),
                };
                if let (Some(link), Ok(bytes)) = (self.pus[pu].link, msg.to_bytes()) {
                    self.send(link, 0, bytes);
                }
            }
            Some(false) => {}
        }
        let d = self.rng.ms(10, 150);
        self.at(self.now + d, Event::PuTick { pu });
    }
}
