//! The identities of legacy (RSPLIB) clients and peers over plain SCTP (issue 8): they
//! have no certificate, so the driver names them by address, under the reserved trust
//! domain [`LEGACY_TRUST_DOMAIN`] (ARCHITECTURE.md §4). The ENRP side of legacy peers is
//! in `enrp/legacy.rs`.

use ::asap::wire::param::ServerId;
use identity::SpiffeId;

use identity::LEGACY_TRUST_DOMAIN;

/// `spiffe://legacy.invalid/KIND/IP[/...]`, an IPv6 address's `:` written `-`.
pub(super) fn legacy_id(kind: &str, addr: std::net::IpAddr, rest: &str) -> SpiffeId {
    let ip = addr.to_canonical().to_string().replace(':', "-");
    SpiffeId::parse(&format!("spiffe://{LEGACY_TRUST_DOMAIN}/{kind}/{ip}{rest}"))
        .expect("an IP address and a Server ID are valid SPIFFE path segments")
}

/// The identity of a legacy client: its address (`spiffe://legacy.invalid/sctp/IP`).
/// Legacy PEs re-registering from another port of the same host are the same registrant.
pub fn legacy_identity(addr: std::net::IpAddr) -> SpiffeId {
    legacy_id("sctp", addr, "")
}

/// Whether `id` is a legacy identity: a legacy client's or a legacy peer's.
pub fn is_legacy(id: &SpiffeId) -> bool {
    id.is_legacy()
}

/// The registrant of a PE in the legacy namespace, whether it registered through the
/// legacy listener or was learnt from a legacy peer (which sends no registrants): the
/// legacy identity of its user transport's first address. Legacy PEs are known by address
/// (ARCHITECTURE.md §4), and registration step 3 (spec §7.1 [P]) proved that address is
/// its association's; so one PE is one registrant whichever of its addresses, or which
/// registrar, it came through, and can move between RSPLIB's registrars and this one.
pub fn legacy_registrant(
    pe: &::asap::wire::param::PoolElement,
) -> Option<::asap::wire::param::RegistrantIdentity> {
    let ip = pe.user_transport.addresses().first()?.ip();
    ::asap::wire::param::RegistrantIdentity::new(legacy_identity(ip).as_str())
}

/// The identity of a legacy ENRP peer (RSPLIB's `rspregistrar`): its address and its
/// configured Server ID (`spiffe://legacy.invalid/enrp/IP/0x11111111`). The driver
/// announces one only for an association with a configured legacy peer's address whose
/// messages carry that peer's configured Server ID; a legacy client's identity
/// (`/sctp/IP`) is never a peer's.
pub fn legacy_peer_identity(addr: std::net::IpAddr, server_id: ServerId) -> SpiffeId {
    legacy_id("enrp", addr, &format!("/{server_id}"))
}

/// Whether `id` is a legacy ENRP peer's identity ([`legacy_peer_identity`]).
pub fn is_legacy_peer(id: &SpiffeId) -> bool {
    id.is_legacy() && id.path().starts_with("/enrp/")
}
