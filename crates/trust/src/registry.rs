//! Live connections by identity and serial, so that a revocation can close them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::watch;

use crate::cert::{Peer, Serial};
use crate::spiffe::{SpiffeId, TrustDomain};

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
}

struct Entry {
    id: SpiffeId,
    domain: TrustDomain,
    serial: Serial,
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
                tx,
            },
        );
        LiveConnection {
            registry: Arc::downgrade(self),
            key,
            rx,
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
}

impl LiveConnection {
    /// Waits until the connection is told to close, and says why. Cancel-safe. If the
    /// registry is dropped nobody can revoke any more, and this never completes.
    pub async fn closed(&mut self) -> CloseReason {
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

impl Drop for LiveConnection {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.lock().entries.remove(&self.key);
        }
    }
}
