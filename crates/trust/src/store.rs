//! The trust store: trust domains, CRLs and the deny-list, and the rustls configurations
//! built from them, swapped in on every change.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use identity::{IdentityPattern, RegistrarIds, Revocation, Serial, SpiffeId, TrustDomain};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, DistinguishedName, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::cert::Peer;
use crate::crl::CrlCheck;
use crate::registry::{ConnectionRegistry, LiveConnection};
use crate::verify::{
    DomainAnchors, Expected, Rejection, Snapshot, SpiffeClientVerifier, SpiffeServerVerifier,
    VerifiedChains,
};
use crate::{ALPN_ASAP, ALPN_ENRP, Error};

/// The two protocols, each with its own ALPN identifier and listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// ASAP (PE/PU ↔ registrar), ALPN `rserpool-asap/1`.
    Asap,
    /// ENRP (registrar ↔ registrar), ALPN `rserpool-enrp/1`.
    Enrp,
}

impl Protocol {
    /// The ALPN protocol identifier.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Self::Asap => ALPN_ASAP,
            Self::Enrp => ALPN_ENRP,
        }
    }

    /// Checks that a finished session negotiated this protocol's ALPN. rustls lets a
    /// client that offers no ALPN through; a listener that serves one protocol calls this
    /// so that no session of the other protocol (or of none) gets in.
    pub fn check_alpn(self, conn: &rustls::CommonState) -> Result<(), Error> {
        let expected = self.alpn();
        match conn.alpn_protocol() {
            Some(got) if got == expected => Ok(()),
            got => Err(Error::AlpnMismatch {
                expected: match self {
                    Self::Asap => "rserpool-asap/1",
                    Self::Enrp => "rserpool-enrp/1",
                },
                negotiated: got.map(|g| String::from_utf8_lossy(g).into_owned()),
            }),
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Asap => 0,
            Self::Enrp => 1,
        }
    }
}

/// The crypto provider of every configuration: ring, never a process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate from PEM text.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            what: "certificate",
            source,
        })?;
    if certs.is_empty() {
        return Err(Error::Empty {
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Reads every CRL from PEM text (none is fine: an empty file means no CRL).
pub fn crls_from_pem(pem: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            what: "CRL",
            source,
        })
}

/// The certificate chain and private key this side presents.
#[derive(Clone, Debug)]
pub struct LocalIdentity {
    key: Arc<CertifiedKey>,
    peer: Peer,
}

impl LocalIdentity {
    /// From a chain (leaf first) and its private key, in DER.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, Error> {
        let leaf = chain.first().ok_or(Error::Empty {
            what: "certificate",
        })?;
        let peer = Peer::from_certificate(leaf)?;
        let key = CertifiedKey::from_der(chain, key, &provider())?;
        Ok(Self {
            key: Arc::new(key),
            peer,
        })
    }

    /// From PEM text: the chain (leaf first) and a PKCS#8, SEC1 or PKCS#1 private key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        let chain = certs_from_pem(chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| Error::Pem {
            what: "private key",
            source,
        })?;
        Self::from_der(chain, key)
    }

    /// This side's SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        self.peer.id()
    }

    /// The identity as a peer sees it (ID, serial, validity).
    pub fn as_peer(&self) -> &Peer {
        &self.peer
    }
}

/// One trust domain: its root certificates and CRLs.
#[derive(Clone, Debug)]
pub struct DomainBundle {
    domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

impl DomainBundle {
    /// A bundle of root certificates (DER), no CRL.
    pub fn new(domain: TrustDomain, roots: Vec<CertificateDer<'static>>) -> Self {
        Self {
            domain,
            roots,
            crls: Vec::new(),
        }
    }

    /// A bundle from PEM text with one or more root certificates.
    pub fn from_pem(domain: TrustDomain, roots_pem: &[u8]) -> Result<Self, Error> {
        Ok(Self::new(domain, certs_from_pem(roots_pem)?))
    }

    /// Replaces the CRLs. With any CRL configured, revocation is checked for the whole
    /// chain and an unknown status or an expired CRL refuses the handshake: the domain
    /// must publish a CRL from its root covering intermediates as well as one from each
    /// issuing CA (`rsp-pki crl` writes both). The store refuses a CRL that names a root
    /// as its issuer but is not signed by it ([`Error::CrlSignature`]); an intermediate's
    /// CRL is verified in the first handshake through that intermediate.
    #[must_use]
    pub fn with_crls(mut self, crls: Vec<CertificateRevocationListDer<'static>>) -> Self {
        self.crls = crls;
        self
    }

    /// The trust domain.
    pub fn domain(&self) -> &TrustDomain {
        &self.domain
    }

    /// The root certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The CRLs.
    pub fn crls(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.crls
    }

    /// Checks that the store would accept this bundle: roots usable as trust anchors,
    /// CRLs parseable, and each CRL that names a root as its issuer signed by it.
    pub fn validate(&self) -> Result<(), Error> {
        self.anchors().map(|_| ())
    }

    fn anchors(&self) -> Result<(DomainAnchors, Vec<DistinguishedName>), Error> {
        if self.roots.is_empty() {
            return Err(Error::NoRoots(self.domain.clone()));
        }
        let mut roots = Vec::with_capacity(self.roots.len());
        let mut hints = Vec::with_capacity(self.roots.len());
        for der in &self.roots {
            let anchor = webpki::anchor_from_trusted_cert(der)
                .map_err(|source| Error::BadRoot {
                    domain: self.domain.clone(),
                    source,
                })?
                .to_owned();
            hints.push(DistinguishedName::in_sequence(anchor.subject.as_ref()));
            roots.push(anchor);
        }
        let revocation = CrlCheck::load(
            &self.domain,
            &roots,
            &self.crls,
            provider().signature_verification_algorithms.all,
        )?;
        Ok((DomainAnchors { roots, revocation }, hints))
    }
}

/// The serials a CRL (DER) lists, read so that live connections they name can be closed
/// and the registrar can remove what they registered.
pub fn crl_serials(der: &[u8]) -> Result<Vec<Serial>, Error> {
    let (_, crl) = CertificateRevocationList::from_der(der)
        .map_err(|_| Error::BadCrl(webpki::Error::BadDer))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|revoked| Serial::from_bytes(revoked.raw_serial()))
        .collect())
}

/// What one CRL revokes: its issuer's Name (DER) and the serials it lists.
type CrlListing = (Box<[u8]>, HashSet<Serial>);

fn crl_listing(der: &[u8]) -> Result<CrlListing, Error> {
    let (_, crl) = CertificateRevocationList::from_der(der)
        .map_err(|_| Error::BadCrl(webpki::Error::BadDer))?;
    let serials = crl
        .iter_revoked_certificates()
        .map(|revoked| Serial::from_bytes(revoked.raw_serial()))
        .collect();
    Ok((crl.issuer().as_raw().into(), serials))
}

/// A certificate's subject Name (DER); `None` if it does not parse (a root in a bundle
/// the store accepted always does).
fn subject_of(der: &[u8]) -> Option<Box<[u8]>> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.subject().as_raw().into())
}

#[derive(Clone, Default)]
struct State {
    domains: BTreeMap<TrustDomain, DomainBundle>,
    denied_serials: HashSet<(TrustDomain, Serial)>,
    denied_ids: HashSet<SpiffeId>,
    /// Whom the client configurations accept as a registrar.
    registrar_ids: RegistrarIds,
}

struct Configs {
    snapshot: Arc<Snapshot>,
    server: [Arc<ServerConfig>; 2],
    admin: Arc<ServerConfig>,
    client: [Arc<ClientConfig>; 2],
}

/// Trust domains (roots and CRLs) and the deny-list, with the rustls configurations built
/// from them.
///
/// Every change builds new configurations and swaps them in: a server reads
/// [`server_config`](Self::server_config) for each accepted connection, so new handshakes
/// see the change at once, without a restart; the live connections it revokes are told to
/// close through [`connections`](Self::connections).
///
/// The configurations are TLS 1.3 only, with the ring provider, client certificates
/// required (optional on the [admin listener](Self::admin_server_config)), and no session
/// resumption (a resumed session would skip the certificate checks, and so the
/// revocations).
pub struct TrustStore {
    // Replaced by `set_identity` (certificate renewal); its SPIFFE ID never changes.
    identity: RwLock<LocalIdentity>,
    state: Mutex<State>,
    current: RwLock<Arc<Configs>>,
    connections: Arc<ConnectionRegistry>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("identity", self.identity().id())
            .field("domains", &self.domains())
            .finish_non_exhaustive()
    }
}

impl TrustStore {
    /// A store that presents `identity` and trusts no domain yet.
    pub fn new(identity: LocalIdentity) -> Result<Self, Error> {
        let state = State::default();
        let configs = build(&identity, &state)?;
        Ok(Self {
            identity: RwLock::new(identity),
            state: Mutex::new(state),
            current: RwLock::new(Arc::new(configs)),
            connections: ConnectionRegistry::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Changes are applied to a copy and committed only when the configurations are
        // built, so a poisoned lock still guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self) -> Arc<Configs> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies `change` to a copy of the state, builds the configurations, then commits.
    fn update<T>(&self, change: impl FnOnce(&mut State) -> Result<T, Error>) -> Result<T, Error> {
        let mut state = self.lock();
        let mut next = state.clone();
        let out = change(&mut next)?;
        let configs = build(&self.identity(), &next)?;
        *state = next;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(configs);
        Ok(out)
    }

    /// The identity this store presents (a copy: [`set_identity`](Self::set_identity)
    /// may replace it).
    pub fn identity(&self) -> LocalIdentity {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Presents `identity` from now on (a renewed certificate, or a new key): new
    /// handshakes use it; live connections keep theirs. Refused, changing nothing, when
    /// its SPIFFE ID differs (peers know this side by it, and a registrar's Server ID
    /// derives from it) or its certificate has expired at `now`.
    pub fn set_identity(
        &self,
        identity: LocalIdentity,
        now: std::time::SystemTime,
    ) -> Result<(), Error> {
        let current = self.identity();
        if identity.id() != current.id() {
            return Err(Error::IdentityChanged {
                from: current.id().clone(),
                to: identity.id().clone(),
            });
        }
        if identity.as_peer().not_after() <= now {
            return Err(Error::BadCertificate {
                reason: "the new certificate has expired",
            });
        }
        // The state lock orders this against `update`, so neither builds configurations
        // from the other's stale half.
        let state = self.lock();
        let configs = build(&identity, &state)?;
        *self
            .identity
            .write()
            .unwrap_or_else(PoisonError::into_inner) = identity;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(configs);
        Ok(())
    }

    /// The live-connection registry that revocations close connections through.
    pub fn connections(&self) -> &Arc<ConnectionRegistry> {
        &self.connections
    }

    /// The trusted domains.
    pub fn domains(&self) -> Vec<TrustDomain> {
        self.lock().domains.keys().cloned().collect()
    }

    /// Whether `domain` is trusted.
    pub fn is_trusted(&self, domain: &TrustDomain) -> bool {
        self.lock().domains.contains_key(domain)
    }

    /// Trusts a new domain (local or federated). Refused if it is already trusted.
    pub fn add_domain(&self, bundle: DomainBundle) -> Result<(), Error> {
        self.update(|state| {
            if state.domains.contains_key(bundle.domain()) {
                return Err(Error::DuplicateTrustDomain(bundle.domain().clone()));
            }
            state.domains.insert(bundle.domain().clone(), bundle);
            Ok(())
        })
    }

    /// Replaces a trusted domain's bundle (roots rotated); returns how many live
    /// connections were told to close: those whose chain (leaf or intermediate) its new
    /// CRLs list, and those under a root the new bundle no longer has.
    pub fn replace_domain(&self, bundle: DomainBundle) -> Result<usize, Error> {
        let domain = bundle.domain().clone();
        let listings = bundle
            .crls()
            .iter()
            .map(|crl| crl_listing(crl))
            .collect::<Result<Vec<_>, _>>()?;
        let new_roots = bundle.roots.clone();
        // On error `update` commits nothing, so no unknown domain is inserted.
        let old = self.update(|state| {
            state
                .domains
                .insert(domain.clone(), bundle)
                .ok_or_else(|| Error::UnknownTrustDomain(domain.clone()))
        })?;
        let removed: Vec<Box<[u8]>> = old
            .roots
            .iter()
            .filter(|r| !new_roots.contains(r))
            .filter_map(|r| subject_of(r))
            .collect();
        Ok(self.close_listings(&domain, &listings)
            + removed
                .iter()
                .map(|subject| self.connections.close_under_root(&domain, subject))
                .sum::<usize>())
    }

    fn close_listings(&self, domain: &TrustDomain, listings: &[CrlListing]) -> usize {
        listings
            .iter()
            .map(|(issuer, serials)| self.connections.close_listed(domain, issuer, serials))
            .sum()
    }

    /// Stops trusting a domain (revokes it entirely); its live connections are told to
    /// close. Returns how many.
    pub fn remove_domain(&self, domain: &TrustDomain) -> Result<usize, Error> {
        self.update(|state| {
            state
                .domains
                .remove(domain)
                .map(|_| ())
                .ok_or_else(|| Error::UnknownTrustDomain(domain.clone()))
        })?;
        Ok(self.connections.close_domain(domain))
    }

    /// Replaces the CRLs of a trusted domain; live connections whose chain holds a
    /// certificate a CRL lists (the leaf, or an intermediate: every leaf under it) are
    /// told to close. Returns how many.
    pub fn set_crls(
        &self,
        domain: &TrustDomain,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<usize, Error> {
        let listings = crls
            .iter()
            .map(|crl| crl_listing(crl))
            .collect::<Result<Vec<_>, _>>()?;
        self.update(|state| {
            let bundle = state
                .domains
                .get_mut(domain)
                .ok_or_else(|| Error::UnknownTrustDomain(domain.clone()))?;
            bundle.crls = crls;
            Ok(())
        })?;
        Ok(self.close_listings(domain, &listings))
    }

    /// Checks CRLs offered for `domain` from outside (an admin upload) before they are
    /// applied with [`set_crls`](Self::set_crls): each must be signed by a root of the
    /// domain or by a known intermediate CA of it, one of `intermediates` (e.g.
    /// certificates uploaded with the CRLs) or of this store's own chain, that chains to a
    /// root ([`Error::CrlUnverified`] otherwise). Changes nothing.
    pub fn check_crl_signers(
        &self,
        domain: &TrustDomain,
        crls: &[CertificateRevocationListDer<'_>],
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), Error> {
        let roots = self
            .lock()
            .domains
            .get(domain)
            .ok_or_else(|| Error::UnknownTrustDomain(domain.clone()))?
            .roots
            .clone();
        let anchors = roots
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(der).map_err(|source| Error::BadRoot {
                    domain: domain.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let identity = self.identity();
        let own: &[CertificateDer<'static>] = if identity.id().trust_domain() == *domain {
            identity.key.cert.get(1..).unwrap_or_default()
        } else {
            &[]
        };
        let known: Vec<&[u8]> = intermediates
            .iter()
            .chain(own)
            .map(|c| c.as_ref())
            .collect();
        crate::crl::check_signers(
            domain,
            &anchors,
            &known,
            crls,
            provider().signature_verification_algorithms.all,
        )
    }

    /// When each trusted domain's CRLs stop being current: the earliest nextUpdate of its
    /// CRLs (domains without CRLs are not listed). Past it, every handshake that needs
    /// that CRL fails closed, so an operator must hear of it before (`rsp-pki crl`
    /// re-signs the CRL with a fresh nextUpdate).
    pub fn crl_next_updates(&self) -> Vec<(TrustDomain, std::time::SystemTime)> {
        let state = self.lock();
        state
            .domains
            .iter()
            .filter_map(|(domain, bundle)| {
                let earliest = bundle
                    .crls
                    .iter()
                    .filter_map(|der| {
                        let (_, crl) = CertificateRevocationList::from_der(der).ok()?;
                        let secs = crl.next_update()?.timestamp();
                        // Before 1970 only in a broken CRL: as expired as can be.
                        Some(
                            std::time::UNIX_EPOCH
                                + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0)),
                        )
                    })
                    .min()?;
                Some((domain.clone(), earliest))
            })
            .collect()
    }

    /// Denies a certificate serial of a domain (the domain need not be trusted yet);
    /// matching live connections are told to close. Returns how many.
    pub fn deny_serial(&self, domain: &TrustDomain, serial: Serial) -> Result<usize, Error> {
        self.update(|state| {
            state
                .denied_serials
                .insert((domain.clone(), serial.clone()));
            Ok(())
        })?;
        Ok(self.connections.close_serial(domain, &serial))
    }

    /// Denies a SPIFFE ID; its live connections are told to close. Returns how many.
    pub fn deny_identity(&self, id: SpiffeId) -> Result<usize, Error> {
        self.update(|state| {
            state.denied_ids.insert(id.clone());
            Ok(())
        })?;
        Ok(self.connections.close_identity(&id))
    }

    /// The TLS half of a revocation, whoever asks (admin API, SIGHUP, start-up): new
    /// handshakes of what it names fail and its live connections are told to close; a
    /// revoked trust domain is no longer trusted ([`TrustStore::forget_domain`]). A kind
    /// this layer does not know changes nothing. Returns how many connections close.
    pub fn revoke(&self, revocation: &Revocation) -> Result<usize, Error> {
        match revocation {
            Revocation::Serial { domain, serial } => self.deny_serial(domain, serial.clone()),
            Revocation::Identity(id) => self.deny_identity(id.clone()),
            Revocation::TrustDomain(domain) => self.forget_domain(domain),
            _ => Ok(0),
        }
    }

    /// [`TrustStore::remove_domain`] where a domain not trusted is no error: what an
    /// operator's removal or revocation of a domain means (it may be applied twice).
    pub fn forget_domain(&self, domain: &TrustDomain) -> Result<usize, Error> {
        match self.remove_domain(domain) {
            Err(Error::UnknownTrustDomain(_)) => Ok(0),
            other => other,
        }
    }

    /// Lifts a serial denial; returns whether it was denied.
    pub fn allow_serial(&self, domain: &TrustDomain, serial: &Serial) -> Result<bool, Error> {
        self.update(|state| {
            Ok(state
                .denied_serials
                .remove(&(domain.clone(), serial.clone())))
        })
    }

    /// Lifts an identity denial; returns whether it was denied.
    pub fn allow_identity(&self, id: &SpiffeId) -> Result<bool, Error> {
        self.update(|state| Ok(state.denied_ids.remove(id)))
    }

    /// Registers a connection whose handshake proved `peer`, so that revocations close
    /// it; refuses it if a revocation landed between its handshake and now.
    ///
    /// Use this rather than `connections().register(..)`: a revocation swaps the
    /// configurations and then closes matching connections, and this registers and then
    /// checks the current configuration, so a connection is either refused here or closed
    /// by the revocation; none slips between the two.
    pub fn register_connection(&self, peer: &Peer) -> Result<LiveConnection, Rejection> {
        let live = self.connections.register(peer);
        self.current().snapshot.still_trusted(peer)?;
        Ok(live)
    }

    /// The server configuration for new connections of `protocol` (read it per accept).
    pub fn server_config(&self, protocol: Protocol) -> Arc<ServerConfig> {
        self.current().server[protocol.index()].clone()
    }

    /// The server configuration of the admin HTTPS listener (read it per accept, like
    /// [`server_config`](Self::server_config)): TLS 1.3, this store's identity, ALPN `h2`
    /// and `http/1.1`, no resumption, and client certificates optional. A client that
    /// presents one is verified exactly as on the ASAP and ENRP listeners (trust domains,
    /// CRLs, deny-lists, SPIFFE ID); one that presents none completes the handshake
    /// unauthenticated and must then prove itself otherwise (a bearer token). Read the
    /// certificate's identity with [`Peer::from_tls_optional`].
    pub fn admin_server_config(&self) -> Arc<ServerConfig> {
        self.current().admin.clone()
    }

    /// The client configuration for new connections of `protocol` to a registrar (a PE,
    /// PU or gateway dialling its registrar over ASAP, a registrar dialling a peer over
    /// ENRP): the server must present a registrar identity of a trusted domain, by
    /// default `spiffe://<trusted domain>/registrar/*`, else what
    /// [`set_registrar_ids`](Self::set_registrar_ids) configured (spec §11.1, threats
    /// T-6/T-7: a PE certificate cannot pose as a registrar). Anything else fails the
    /// handshake with [`Rejection::UnexpectedIdentity`] naming the identity presented. To
    /// dial another role, use [`client_config_expecting`](Self::client_config_expecting).
    /// As SPIFFE intends, servers are authenticated by their SPIFFE ID: the TLS server
    /// name is not checked against DNS SANs.
    pub fn client_config(&self, protocol: Protocol) -> Arc<ClientConfig> {
        self.current().client[protocol.index()].clone()
    }

    /// Accepts as registrar only SPIFFE IDs matching one of `patterns` from the next
    /// handshake on (each confined to its trust domain, which must be trusted too); an
    /// empty list restores the default, `spiffe://<trusted domain>/registrar/*`.
    pub fn set_registrar_ids(&self, patterns: Vec<IdentityPattern>) -> Result<(), Error> {
        self.update(|state| {
            state.registrar_ids = RegistrarIds::patterns(patterns);
            Ok(())
        })
    }

    /// Who is accepted as a registrar (see [`client_config`](Self::client_config)).
    pub fn registrar_ids(&self) -> RegistrarIds {
        self.lock().registrar_ids.clone()
    }

    /// Whether `id`, a verified peer, is accepted as a registrar (e.g. by a PE's ASAP
    /// listener, where registrars dial the PE, spec §12.6).
    pub fn is_registrar(&self, id: &SpiffeId) -> bool {
        self.lock().registrar_ids.matches(id)
    }

    /// A client configuration that also requires the server's SPIFFE ID to match
    /// `expected` (built on each call: use it for one connection or cache it briefly).
    pub fn client_config_expecting(
        &self,
        protocol: Protocol,
        expected: IdentityPattern,
    ) -> Result<Arc<ClientConfig>, Error> {
        let snapshot = self.current().snapshot.clone();
        Ok(Arc::new(client_config(
            &self.identity(),
            snapshot,
            Expected::Pattern(expected),
            protocol,
        )?))
    }
}

fn build(identity: &LocalIdentity, state: &State) -> Result<Configs, Error> {
    let provider = provider();
    let mut domains = BTreeMap::new();
    let mut hints = Vec::new();
    for (name, bundle) in &state.domains {
        let (anchors, domain_hints) = bundle.anchors()?;
        hints.extend(domain_hints);
        domains.insert(name.clone(), anchors);
    }
    let mut crl_revoked = HashSet::new();
    for (name, bundle) in &state.domains {
        for crl in bundle.crls() {
            let (issuer, serials) = crl_listing(crl)?;
            for serial in serials {
                crl_revoked.insert((name.clone(), issuer.clone(), serial));
            }
        }
    }
    let snapshot = Arc::new(Snapshot {
        domains,
        crl_revoked,
        denied_serials: state.denied_serials.clone(),
        denied_ids: state.denied_ids.clone(),
        hints,
        algs: provider.signature_verification_algorithms,
        verified: VerifiedChains::default(),
    });
    let server = |protocol: Protocol| {
        server_config(
            identity,
            snapshot.clone(),
            true,
            vec![protocol.alpn().to_vec()],
        )
    };
    let registrar = Expected::Registrar(state.registrar_ids.clone());
    let client = |protocol| client_config(identity, snapshot.clone(), registrar.clone(), protocol);
    Ok(Configs {
        server: [
            Arc::new(server(Protocol::Asap)?),
            Arc::new(server(Protocol::Enrp)?),
        ],
        admin: Arc::new(server_config(
            identity,
            snapshot.clone(),
            false,
            ADMIN_ALPN.iter().map(|p| p.to_vec()).collect(),
        )?),
        client: [
            Arc::new(client(Protocol::Asap)?),
            Arc::new(client(Protocol::Enrp)?),
        ],
        snapshot,
    })
}

/// The admin listener's protocols, preferred first (rustls picks the server's order).
const ADMIN_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A server configuration; `mandatory` says whether clients must present a certificate.
fn server_config(
    identity: &LocalIdentity,
    snapshot: Arc<Snapshot>,
    mandatory: bool,
    alpn: Vec<Vec<u8>>,
) -> Result<ServerConfig, Error> {
    let verifier = SpiffeClientVerifier {
        snapshot,
        mandatory,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.key.clone())));
    config.alpn_protocols = alpn;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.key_log = crate::keylog::key_log();
    Ok(config)
}

fn client_config(
    identity: &LocalIdentity,
    snapshot: Arc<Snapshot>,
    expected: Expected,
    protocol: Protocol,
) -> Result<ClientConfig, Error> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier { snapshot, expected }))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.key.clone())));
    config.alpn_protocols = vec![protocol.alpn().to_vec()];
    config.resumption = Resumption::disabled();
    config.key_log = crate::keylog::key_log();
    Ok(config)
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::TestCa;
    use rustls::CertificateError;

    /// `revoke` is the one way every caller applies a revocation to the TLS layer: each
    /// kind refuses what it names and only that, and a trust domain revoked (or removed)
    /// twice is no error the second time.
    #[test]
    fn each_kind_of_revocation_refuses_what_it_names_and_only_that() {
        let ca = TestCa::new("acme.test");
        let store = TrustStore::new(ca.leaf("registrar/r1").issue().identity()).expect("store");
        store.add_domain(ca.bundle()).expect("domain");
        let peer = |path: &str| {
            let leaf = ca.leaf(path).issue();
            (
                Peer::from_certificate(&leaf.chain[0]).expect("peer"),
                leaf.serial,
            )
        };
        let (by_id, _) = peer("pe/by-id");
        let (by_serial, serial) = peer("pe/by-serial");
        let (other, _) = peer("pe/other");

        store
            .revoke(&Revocation::Identity(by_id.id().clone()))
            .expect("identity");
        store
            .revoke(&Revocation::Serial {
                domain: ca.domain().clone(),
                serial,
            })
            .expect("serial");
        assert!(store.register_connection(&by_id).is_err());
        assert!(store.register_connection(&by_serial).is_err());
        assert!(store.register_connection(&other).is_ok());

        let domain = Revocation::TrustDomain(ca.domain().clone());
        store.revoke(&domain).expect("domain");
        assert!(!store.is_trusted(ca.domain()));
        assert_eq!(store.revoke(&domain).expect("again"), 0);
        assert_eq!(store.forget_domain(ca.domain()).expect("and again"), 0);
    }

    /// Seconds from now, as the verifiers take the time.
    fn at(secs_from_now: i64) -> rustls_pki_types::UnixTime {
        let now = rustls_pki_types::UnixTime::now().as_secs();
        rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            now.saturating_add_signed(secs_from_now),
        ))
    }

    /// A chain verified once is remembered by the snapshot, but only while the same
    /// checks would pass: past its certificate's notAfter, or after a revocation (a new
    /// snapshot), the same chain is refused.
    #[test]
    fn a_remembered_chain_is_refused_once_expired_or_revoked() {
        use crate::verify::Usage;
        let ca = TestCa::new("acme.test");
        let store = TrustStore::new(ca.leaf("registrar/r1").issue().identity()).expect("store");
        store.add_domain(ca.bundle()).expect("domain");
        let leaf = ca
            .leaf("pu/again")
            .valid(time::Duration::hours(-1), time::Duration::hours(1))
            .issue();
        let snapshot = store.current().snapshot.clone();
        let verify = |now| snapshot.verify(&leaf.chain[0], &leaf.chain[1..], now, Usage::Client);
        assert_eq!(
            verify(at(0)).expect("valid").as_str(),
            "spiffe://acme.test/pu/again"
        );
        assert_eq!(snapshot.verified.len(), 1, "remembered");
        verify(at(1)).expect("still valid");
        let err = verify(at(2 * 3600)).expect_err("expired");
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{err:?}"
        );

        let id = Peer::from_certificate(&leaf.chain[0])
            .expect("peer")
            .id()
            .clone();
        store.revoke(&Revocation::Identity(id)).expect("revoke");
        let snapshot = store.current().snapshot.clone();
        let err = snapshot
            .verify(&leaf.chain[0], &leaf.chain[1..], at(0), Usage::Client)
            .expect_err("revoked");
        assert!(err.to_string().contains("revoked (deny-list)"), "{err}");
    }

    /// With CRLs, a remembered chain is good only until the CRLs' nextUpdate: past it the
    /// handshake fails closed, as without the cache.
    #[test]
    fn a_remembered_chain_is_refused_once_the_crl_expires() {
        use crate::verify::Usage;
        let ca = TestCa::new("acme.test");
        let store = TrustStore::new(ca.leaf("registrar/r1").issue().identity()).expect("store");
        store.add_domain(ca.bundle()).expect("domain");
        let next_update = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        store
            .set_crls(ca.domain(), vec![ca.crl_with_next_update(&[], next_update)])
            .expect("CRL");
        let leaf = ca
            .leaf("pu/again")
            .valid(time::Duration::hours(-1), time::Duration::days(30))
            .issue();
        let snapshot = store.current().snapshot.clone();
        let verify = |now| snapshot.verify(&leaf.chain[0], &leaf.chain[1..], now, Usage::Client);
        verify(at(0)).expect("valid");
        assert_eq!(snapshot.verified.len(), 1, "remembered");
        let err = verify(at(2 * 3600)).expect_err("CRL expired");
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::ExpiredRevocationListContext { .. }
                )
            ),
            "{err:?}"
        );
    }

    /// A connection that passed its handshake while its intermediate was good, and
    /// registers after a CRL revoked the intermediate, is refused; one whose leaf has the
    /// same serial as the revoked intermediate but another issuer is not (serials are
    /// unique per CA only).
    #[test]
    fn registration_after_an_intermediate_is_revoked_is_refused() {
        let ca = TestCa::new("acme.test");
        let store = TrustStore::new(ca.leaf("registrar/r1").issue().identity()).expect("store");
        store.add_domain(ca.bundle()).expect("domain");
        let inter = ca.intermediate();
        let leaf = inter.leaf("pe/under").issue();
        let peer = Peer::from_chain(&leaf.chain[0], &leaf.chain[1..]).expect("peer");
        store
            .set_crls(
                ca.domain(),
                vec![ca.crl(&[&inter.serial()]), inter.crl(&[])],
            )
            .expect("CRLs");
        let err = store.register_connection(&peer).expect_err("refused");
        assert!(
            err.to_string().contains(&format!(
                "serial {} of trust domain acme.test is revoked (CRL)",
                inter.serial()
            )),
            "{err}"
        );
        // The intermediate's CRL lists a serial equal to a direct leaf's: that leaf,
        // issued by the root, is not the one listed.
        let direct = ca.leaf("pe/direct").issue();
        store
            .set_crls(ca.domain(), vec![ca.crl(&[]), inter.crl(&[&direct.serial])])
            .expect("CRLs");
        let peer = Peer::from_certificate(&direct.chain[0]).expect("peer");
        assert!(store.register_connection(&peer).is_ok());
    }
}
