//! Unchanged re-registrations, acknowledged where they arrive (issue 20).
//!
//! A PE re-registers periodically with the same parameters; RSPLIB's PEs do every few
//! seconds. Such a re-registration changes nothing in the handlespace, so the connection
//! task acknowledges it itself when the [`ReadView`](super::ReadView) shows that the core
//! would ([`ReadView::refresh`](super::ReadView::refresh)), counts it in the connection's
//! audit tally (docs/SECURITY.md, "Re-registrations that change nothing") and hands it to
//! the core in a batch ([`Input::Refreshed`](super::Input::Refreshed)), within 100 ms
//! (the connection task's `REFRESH_DELAY`) and before anything else the connection sends.
//!
//! The core then does what a re-registration does besides storing the PE
//! ([`Core::on_refreshed`]): its keep-alive starts over, the unreachable reports against it
//! are forgotten, and peers hear of it (spec §9.4). If the PE left this connection in
//! between (a keep-alive timeout, an operator, another registration), the acknowledgement
//! was already given: the core registers it again as a registration of its own would
//! (checked and audited, durable before anything that follows it), without a second
//! answer, so that nothing acknowledged is lost.

use std::time::Instant;

use ::asap::wire::AsapMsg;
use ::asap::wire::param::{Namespace, PoolElement, PoolHandle};

use super::read_view::unchanged;
use super::{Action, ConnId, Core, PeKey, TimerKey};

/// An unchanged re-registration a connection task acknowledged ([`Input::Refreshed`](super::Input::Refreshed)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refresh {
    /// The namespace it counted in (the request's, else the connection's default).
    pub namespace: Namespace,
    /// The pool handle.
    pub pool_handle: PoolHandle,
    /// The PE as it was sent.
    pub pool_element: PoolElement,
}

impl Core {
    /// Applies one acknowledged re-registration of `conn` (module docs).
    pub(super) fn on_refreshed(
        &mut self,
        conn: ConnId,
        refresh: Refresh,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Refresh {
            namespace,
            pool_handle,
            pool_element,
        } = refresh;
        let pe_id = pool_element.pe_id;
        let key: PeKey = (namespace, pool_handle, pe_id);
        let still = self.owned.get(&key).is_some_and(|o| o.conn == Some(conn))
            && self
                .handlespace
                .pool(&key.0, &key.1)
                .and_then(|p| p.entry(pe_id))
                .is_some_and(|e| unchanged(&e.pool_element, &pool_element));
        if !still {
            let (namespace, pool_handle, _) = key;
            let mut step = Vec::new();
            self.on_asap(
                conn,
                ::asap::wire::Decoded {
                    msg: AsapMsg::Registration {
                        namespace: Some(namespace),
                        pool_handle,
                        pool_element,
                    },
                    unrecognized: Vec::new(),
                },
                now,
                &mut step,
            );
            for action in step {
                match action {
                    // The client had its answer.
                    Action::Send {
                        conn: c,
                        msg: AsapMsg::RegistrationResponse { .. },
                    } if c == conn => {}
                    Action::Audit {
                        mut event,
                        durability,
                    } => {
                        let said = "acknowledged as unchanged, then found gone: registered again";
                        event.detail = Some(match event.detail.take() {
                            Some(d) => format!("{said}; {d}"),
                            None => said.to_owned(),
                        });
                        out.push(Action::Audit { event, durability });
                    }
                    other => out.push(other),
                }
            }
            return;
        }
        // What `on_registration` does for a PE it stores again (step 8 there): the
        // unreachable reports are forgotten, an unanswered keep-alive stands answered,
        // and the keep-alive starts over. Only when it is due to: a PE that re-registers
        // more often than every half interval would otherwise move its timer on each
        // (the timer set, a key cloned and a B-tree entry moved, ~4 % of a
        // re-registration's CPU in the guest); left as it is, the next keep-alive is due
        // within half an interval to an interval from now, as after an answered one.
        let interval = self.config.timing.keep_alive_interval;
        let Some(owned) = self.owned.get_mut(&key) else {
            return;
        };
        owned.reporters.clear();
        let outstanding = owned.rtt.outstanding();
        owned.rtt.abandon();
        let recent = owned.restarted.is_some_and(|t| now < t + interval / 2);
        if outstanding || !recent {
            owned.restarted = Some(now);
            if outstanding {
                self.timers.stop(&TimerKey::KeepAliveTimeout(key.clone()));
            }
            self.timers
                .set(TimerKey::KeepAlive(key.clone()), now + interval);
        }
        self.announce_owned(&key, out);
    }
}
