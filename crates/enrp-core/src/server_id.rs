//! A registrar's ENRP Server ID, derived from its identity.

use asap::wire::param::ServerId;
use identity::SpiffeId;
use sha2::{Digest as _, Sha256};

/// The registrar's ENRP Server ID: the first four bytes of the SHA-256 of its SPIFFE ID,
/// big-endian, with 0 mapped to 1 (ARCHITECTURE.md §3), so every peer can check it.
pub fn server_id_of(id: &SpiffeId) -> ServerId {
    let digest = Sha256::digest(id.as_str().as_bytes());
    let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    ServerId::new(n.max(1)).expect("n.max(1) is never 0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_id_is_the_first_four_bytes_of_the_sha256() {
        let id: SpiffeId = "spiffe://acme.test/registrar/enrp-1"
            .parse()
            .expect("valid");
        let d = Sha256::digest(b"spiffe://acme.test/registrar/enrp-1");
        let want = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        assert_eq!(server_id_of(&id).get(), want.max(1));
    }
}
