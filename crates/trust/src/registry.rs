//! Live connections by identity and serial, so that a revocation can close them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use identity::{Serial, SpiffeId, TrustDomain};
use tokio::sync::watch;

use crate::cert::{Link, Peer};

/// Why a live connection was told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Its SPIFFE ID was put on the deny-list.
    IdentityRevoked,
    /// Its certificate serial was put on the deny-list or a CRL.
    SerialRevoked,
    /// Its trust domain was removed from the store.
    TrustDomainRemoved,
    /// A CA certificate of its chain was revoked (a CRL lists an intermediate).
    IssuerRevoked,
    /// The root its chain ends at was removed from its trust domain's bundle.
    RootRemoved,
    /// Its leaf certificate reached its notAfter.
    CertificateExpired,
}

struct Entry {
    id: SpiffeId,
    domain: TrustDomain,
    serial: Serial,
    /// The chain as presented, leaf first.
    chain: Arc<[Link]>,
    tx: watch::Sender<Option<CloseReason>>,
}

/// The live connections of a server. Each connection registers after its handshake and
/// holds the returned [`LiveConnection`] for its lifetime; `close_*` tell the matching
/// ones to close (the connection's task waits on [`LiveConnection::closed`]).
#[derive(Default)]
pub struct ConnectionRegistry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    entries: HashMap<u64, Entry>,
}

impl ConnectionRegistry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves a consistent map (every
        // operation is a single insert or retain), so poisoning is not fatal.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection whose handshake proved `peer`.
    pub fn register(self: &Arc<Self>, peer: &Peer) -> LiveConnection {
        let (tx, rx) = watch::channel(None);
        let mut inner = self.lock();
        let key = inner.next;
        inner.next += 1;
        inner.entries.insert(
            key,
            Entry {
                id: peer.id().clone(),
                domain: peer.trust_domain(),
                serial: peer.serial().clone(),
                chain: peer.chain().clone(),
                tx,
            },
        );
        LiveConnection {
            registry: Arc::downgrade(self),
            key,
            rx,
            not_after: peer.not_after(),
        }
    }

    fn close_where(&self, reason: CloseReason, matches: impl Fn(&Entry) -> bool) -> usize {
        let mut inner = self.lock();
        let mut closed = 0;
        inner.entries.retain(|_, entry| {
            if matches(entry) {
                // A dropped receiver means the connection is already gone.
                let _ = entry.tx.send(Some(reason));
                closed += 1;
                false
            } else {
                true
            }
        });
        closed
    }

    /// Closes the connections of `id`; returns how many were told.
    pub fn close_identity(&self, id: &SpiffeId) -> usize {
        self.close_where(CloseReason::IdentityRevoked, |e| &e.id == id)
    }

    /// Closes the connections whose leaf has `serial` in `domain`.
    pub fn close_serial(&self, domain: &TrustDomain, serial: &Serial) -> usize {
        self.close_where(CloseReason::SerialRevoked, |e| {
            &e.domain == domain && &e.serial == serial
        })
    }

    /// Closes the connections of `domain` whose chain holds a certificate that `issuer`
    /// (a Name, DER) issued with one of `serials`: a CRL's effect on live connections.
    /// The leaf listed closes with [`CloseReason::SerialRevoked`], an intermediate with
    /// [`CloseReason::IssuerRevoked`]. Returns how many.
    pub(crate) fn close_listed(
        &self,
        domain: &TrustDomain,
        issuer: &[u8],
        serials: &HashSet<Serial>,
    ) -> usize {
        let listed = |l: &Link| *l.issuer == *issuer && serials.contains(&l.serial);
        let leaf = self.close_where(CloseReason::SerialRevoked, |e| {
            &e.domain == domain && e.chain.first().is_some_and(listed)
        });
        leaf + self.close_where(CloseReason::IssuerRevoked, |e| {
            &e.domain == domain && e.chain.iter().skip(1).any(listed)
        })
    }

    /// Closes the connections of `domain` whose chain ends at a certificate issued by a
    /// root named `subject` (a Name, DER): that root left the domain's bundle. A root
    /// that shares its name with one that stays (a rotation with the same name) closes
    /// the connections under both; those under the remaining root reconnect.
    pub(crate) fn close_under_root(&self, domain: &TrustDomain, subject: &[u8]) -> usize {
        self.close_where(CloseReason::RootRemoved, |e| {
            &e.domain == domain && e.chain.last().is_some_and(|l| *l.issuer == *subject)
        })
    }

    /// Closes every connection of `domain`.
    pub fn close_domain(&self, domain: &TrustDomain) -> usize {
        self.close_where(CloseReason::TrustDomainRemoved, |e| &e.domain == domain)
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The SPIFFE IDs and serials of the live connections.
    pub fn snapshot(&self) -> Vec<(SpiffeId, Serial)> {
        self.lock()
            .entries
            .values()
            .map(|e| (e.id.clone(), e.serial.clone()))
            .collect()
    }
}

impl std::fmt::Debug for ConnectionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRegistry")
            .field("live", &self.len())
            .finish()
    }
}

/// A registered connection. Dropping it unregisters the connection.
#[derive(Debug)]
pub struct LiveConnection {
    registry: Weak<ConnectionRegistry>,
    key: u64,
    rx: watch::Receiver<Option<CloseReason>>,
    /// When the peer's leaf certificate expires.
    not_after: SystemTime,
}

/// Longest single wait for a leaf's notAfter: the wait is on the monotonic clock and
/// certificates expire in wall-clock time, so a clock that was set meanwhile is caught
/// within this.
const EXPIRY_RECHECK: Duration = Duration::from_secs(60);

impl LiveConnection {
    /// Waits until the connection must close, and says why: it was told to (a
    /// revocation), or its peer's leaf certificate reached its notAfter
    /// ([`CloseReason::CertificateExpired`]; a handshake proves a certificate valid at
    /// its time, not for the life of the connection). Cancel-safe. If the registry is
    /// dropped nobody can revoke any more, and only expiry completes it.
    pub async fn closed(&mut self) -> CloseReason {
        let not_after = self.not_after;
        let expired = async move {
            loop {
                let left = until(not_after);
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(EXPIRY_RECHECK)).await;
            }
        };
        tokio::select! {
            reason = self.told() => reason,
            () = expired => CloseReason::CertificateExpired,
        }
    }

    /// Waits until the connection is told to close.
    async fn told(&mut self) -> CloseReason {
        let reason = match self.rx.wait_for(Option::is_some).await {
            Ok(reason) => *reason,
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// The close reason, if the connection was told to close.
    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.rx.borrow()
    }
}

/// How long until `t` on the wall clock (zero once past).
#[allow(clippy::disallowed_methods)] // the connection's driver: certificates expire in wall-clock time
fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.lock().entries.remove(&self.key);
        }
    }
}
