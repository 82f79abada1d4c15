//! Legacy peers (RSPLIB's `rspregistrar` over plain SCTP, issue 8): what they hear is the
//! legacy namespace only, without the project's parameters RSPLIB rejects, with a checksum
//! over that namespace and an SCTP Server Information; what they send is confined to that
//! namespace, its PEs known by address (`crate::registrar::legacy_registrant`). The
//! dispatch in `super` and the driver's sends (`Core::confine_legacy_sends`) pass through
//! here.

use std::net::SocketAddr;
use std::num::NonZeroU16;

use ::asap::addr::{Endpoint, TransportAddr};
use ::asap::wire::param::{
    Address, Namespace, PoolHandle, SctpAddresses, ServerId, ServerInformation, Transport,
    TransportUse,
};
use ::asap::wire::{EnrpBody, EnrpMsg, PeEntry, PoolEntries};

use crate::checksum::PeChecksum as Checksum;
use crate::registrar::{Action, ConnId, Core, PeKey, is_legacy};

impl Core {
    /// Whether `sid` is a legacy peer (RSPLIB): it speaks and hears only the legacy
    /// namespace, without the project's parameters.
    pub(super) fn is_legacy_peer_sid(&self, sid: ServerId) -> bool {
        self.peers
            .get(&sid)
            .is_some_and(|p| is_legacy(&p.remote.id))
    }

    /// The checksum of the PEs this registrar owns in the legacy namespace: what a legacy
    /// peer knows of ours. Computed from scratch, O(PEs of that namespace) per PRESENCE to
    /// a legacy peer (the handlespace keeps running sums per owner, not per namespace).
    pub(super) fn legacy_checksum(&self) -> u16 {
        let me = self.config.server_id.get();
        let Some(ns) = &self.config.legacy_namespace else {
            return Checksum::EMPTY;
        };
        Checksum::of(self.handlespace.pools(ns).flat_map(|(h, p)| {
            p.entries()
                .filter(move |e| e.pool_element.home_server_id == me)
                .map(move |e| (h, e.pool_element.pe_id))
        }))
        .value()
    }

    /// The legacy ENRP listener as a Server Information: SCTP, Transport Use data only
    /// (as RSPLIB sends its own), non-loopback addresses first.
    pub(super) fn legacy_server_info(&self) -> Option<ServerInformation> {
        let mut addrs: Vec<SocketAddr> = self
            .config
            .legacy_enrp_addrs
            .iter()
            .copied()
            .filter(|a| !a.ip().is_unspecified())
            .collect();
        addrs.sort_by_key(|a| a.ip().is_loopback());
        addrs.dedup();
        self.server_info(&TransportAddr::Sctp(Endpoint::new(addrs).ok()?))
    }

    /// What a legacy peer may hear of an ENRP body: only the legacy namespace's PEs,
    /// without the project parameters (0x8100 Namespace, 0x8101 Registrant Identity) that
    /// RSPLIB refuses (docs/RSPLIB.md §6). `None`: nothing to send it.
    pub(super) fn for_legacy_peer(&self, body: EnrpBody) -> Option<EnrpBody> {
        let legacy = self.config.legacy_namespace.as_ref();
        match body {
            EnrpBody::HandleUpdate {
                action,
                namespace,
                pool_handle,
                pool_element,
                ..
            } => (Some(&namespace) == legacy).then(|| EnrpBody::HandleUpdate {
                action,
                namespace: Namespace::default_namespace(),
                pool_element: self.with_registrator(&namespace, &pool_handle, pool_element),
                pool_handle,
                registrant: None,
            }),
            EnrpBody::HandleTableResponse {
                reject,
                more,
                pools,
            } => Some(EnrpBody::HandleTableResponse {
                reject,
                more,
                pools: pools
                    .into_iter()
                    .filter(|g| Some(&g.namespace) == legacy)
                    .map(|g| PoolEntries {
                        namespace: Namespace::default_namespace(),
                        entries: g
                            .entries
                            .into_iter()
                            .map(|e| PeEntry {
                                registrant: None,
                                pool_element: self.with_registrator(
                                    &g.namespace,
                                    &g.pool_handle,
                                    e.pool_element,
                                ),
                            })
                            .collect(),
                        pool_handle: g.pool_handle,
                    })
                    .collect(),
            }),
            // Its peers are RSPLIB's business: the others serve TLS it cannot speak.
            EnrpBody::ListResponse { reject, .. } => Some(EnrpBody::ListResponse {
                reject,
                servers: Vec::new(),
            }),
            other => Some(other),
        }
    }

    /// A PE as RSPLIB must get it in ENRP: with an ASAP (registrator) transport, which its
    /// parser reads whether or not it is there (without one it reads past the PE and
    /// rejects the message). That is the PE's ASAP association as this registrar sees it
    /// when it is connected here (SCTP, its source port, Transport Use data only, as
    /// RSPLIB sends them); else, lacking anything better, its user transport's addresses
    /// and port as SCTP. (RSPLIB uses it only to send the H=1 keep-alive of a takeover,
    /// which its 3.4.4 fails to send anyway: docs/RSPLIB.md §0.9.)
    pub(super) fn with_registrator(
        &self,
        ns: &Namespace,
        handle: &PoolHandle,
        mut pe: ::asap::wire::param::PoolElement,
    ) -> ::asap::wire::param::PoolElement {
        // RSPLIB knows no serving identity and loses its place at a parameter whose length
        // is not a multiple of 4 (as for the registrant, not sent to it either).
        pe.serving_identity = None;
        if pe.asap_transport.is_some() {
            return pe;
        }
        let key: PeKey = (ns.clone(), handle.clone(), pe.pe_id);
        let connected = self
            .owned
            .get(&key)
            .and_then(|o| o.conn)
            .and_then(|c| self.conns.get(&c))
            .map(|c| c.client.addr);
        let (port, ips) = match connected {
            Some(a) => (a.port(), vec![a.ip()]),
            None => (
                pe.user_transport.port().get(),
                pe.user_transport
                    .addresses()
                    .iter()
                    .map(|a| a.ip())
                    .collect(),
            ),
        };
        pe.asap_transport = NonZeroU16::new(port)
            .zip(SctpAddresses::new(ips.into_iter().map(Address::new)))
            .map(|(port, addrs)| Transport::Sctp {
                port,
                transport_use: TransportUse::DataOnly,
                addrs,
            });
        pe
    }

    /// Passes every ENRP message for a legacy peer's connection through
    /// [`Self::for_legacy_peer`], in place: the one gate between the core's messages and
    /// a legacy peer, whichever procedure made them.
    pub(in crate::registrar) fn confine_legacy_sends(&self, out: &mut Vec<Action>) {
        let legacy_conn = |conn: &ConnId| {
            self.peer_conns
                .get(conn)
                .is_some_and(|pc| is_legacy(&pc.remote.id))
        };
        if !out
            .iter()
            .any(|a| matches!(a, Action::SendEnrp { conn, .. } if legacy_conn(conn)))
        {
            return;
        }
        *out = std::mem::take(out)
            .into_iter()
            .filter_map(|a| match a {
                Action::SendEnrp { conn, msg } if legacy_conn(&conn) => {
                    let body = self.for_legacy_peer(msg.body)?;
                    Some(Action::SendEnrp {
                        conn,
                        msg: EnrpMsg { body, ..msg },
                    })
                }
                other => Some(other),
            })
            .collect();
    }

    /// Everything a legacy peer sends lands in the legacy namespace (it names none: RSPLIB
    /// knows no namespaces), and its PEs are known by address: their registrant is the
    /// legacy identity of their first address ([`crate::registrar::legacy_registrant`]), whatever the
    /// peer sent, so that they may re-register here and be dialed on a takeover.
    pub(super) fn confine_from_legacy_peer(&self, body: &mut EnrpBody) {
        let Some(legacy) = &self.config.legacy_namespace else {
            return;
        };
        match body {
            EnrpBody::HandleUpdate {
                namespace,
                registrant,
                pool_element,
                ..
            } => {
                *namespace = legacy.clone();
                *registrant = crate::registrar::legacy_registrant(pool_element);
            }
            EnrpBody::HandleTableResponse { pools, .. } => {
                for g in pools {
                    g.namespace = legacy.clone();
                    for e in &mut g.entries {
                        e.registrant = crate::registrar::legacy_registrant(&e.pool_element);
                    }
                }
            }
            _ => {}
        }
    }
}
