//! The shared control plane (issue 19, docs/STORE.md "The shared control plane"): what a
//! registrar of a fleet reads to apply the changes other registrars made.
//!
//! [`Store::snapshot`] reads the whole control plane in one transaction, on either
//! backend. [`Store::change_feed`] is, on PostgreSQL, a listener on [`CONTROL_CHANNEL`],
//! which migration 0005's triggers notify at the commit of any write to a control-plane
//! table; on SQLite there is none (one registrar, which applies its changes as it makes
//! them).

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::{
    DefaultNamespaceRow, GrantRow, Namespace, Pool, PoolDecl, Result, RevocationRecord, Store,
    StoreTx, TrustDomainRow,
};

/// The PostgreSQL channel migration 0005's triggers notify (payload: the table's name).
pub const CONTROL_CHANNEL: &str = "rsp_control";

/// Reconnection backoff of the change feed: doubles from the first to the last value.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// See [`BACKOFF_FIRST`]. Capped at the store's ping interval, so that a registrar listens
/// again (and re-reads what it missed) within about a second of PostgreSQL coming back,
/// the fleet's budget for a change; an attempt against a server that is down costs one
/// refused connection.
const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// How long the listener's connection may take to open (TLS to a remote server included).
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The control plane as stored, read in one transaction ([`Store::snapshot`]). Every list
/// is in a stable order (by name or id), so two snapshots of the same state are equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The namespaces, by name.
    pub namespaces: Vec<Namespace>,
    /// The pool declarations, by namespace and handle.
    pub pools: Vec<PoolDecl>,
    /// The trust domains with their roots and CRLs (local first, then by name).
    pub trust_domains: Vec<TrustDomainRow>,
    /// The grants, by id.
    pub grants: Vec<GrantRow>,
    /// The default-namespace rules, by id.
    pub default_namespaces: Vec<DefaultNamespaceRow>,
    /// The revocations, oldest first.
    pub revocations: Vec<RevocationRecord>,
    /// The ids of the revoked admin tokens, sorted: a registrar's cache of verified tokens
    /// drops these.
    pub revoked_tokens: Vec<String>,
}

impl Store {
    /// The whole control plane, read in one transaction: `REPEATABLE READ` on PostgreSQL
    /// (every statement sees the same committed state), a read transaction on SQLite (WAL
    /// gives it one snapshot).
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut tx = match &self.pool {
            Pool::Sqlite(pool) => StoreTx::Sqlite(pool.begin().await?),
            Pool::Postgres(pool) => StoreTx::Postgres(
                pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?,
            ),
        };
        let mut revoked_tokens: Vec<String> = super::list_tokens(&mut tx)
            .await?
            .into_iter()
            .filter(|t| t.revoked_ms.is_some())
            .map(|t| t.id)
            .collect();
        revoked_tokens.sort();
        let snapshot = Snapshot {
            namespaces: super::list_namespaces(&mut tx).await?,
            pools: super::list_all_pools(&mut tx).await?,
            trust_domains: super::list_trust_domains(&mut tx).await?,
            grants: super::list_grants(&mut tx).await?,
            default_namespaces: super::list_default_namespaces(&mut tx).await?,
            revocations: super::list_revocations(&mut tx).await?,
            revoked_tokens,
        };
        tx.rollback().await?;
        Ok(snapshot)
    }

    /// The change feed of a shared (PostgreSQL) store, listening already when this
    /// returns: a change committed after it is reported. `None` on SQLite, whose control
    /// plane is local.
    pub async fn change_feed(&self) -> Result<Option<ChangeFeed>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        // A connection of its own, outside the store's pool: a listener holds it for
        // good, and the store's connections stay for queries.
        let own = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(LISTEN_CONNECT_TIMEOUT)
            .connect_lazy_with((*pool.connect_options()).clone());
        let listener = listen(&own).await?;
        Ok(Some(ChangeFeed {
            pool: own,
            listener: Some(listener),
            backoff: BACKOFF_FIRST,
        }))
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection is reported (`Ok(None)`), not silently re-established: notices
    // may have been missed, and the caller must re-read ([`Change::Resync`]).
    listener.eager_reconnect(false);
    listener.listen(CONTROL_CHANNEL).await?;
    Ok(listener)
}

/// What [`ChangeFeed::next`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Something in the control plane was committed (one or more notices, coalesced).
    Changed,
    /// The listener lost its connection, or could not listen again (why): notices are
    /// missed until [`Change::Resync`]. The next call retries after a backoff.
    Lost(String),
    /// The feed lost its connection and has it back: notices may have been missed, so
    /// re-read everything.
    Resync,
}

/// A PostgreSQL listener on [`CONTROL_CHANNEL`] that reconnects by itself (backoff from
/// 100 ms, capped at 1 s) and says when it did ([`Store::change_feed`]).
#[derive(Debug)]
pub struct ChangeFeed {
    pool: PgPool,
    listener: Option<PgListener>,
    backoff: Duration,
}

impl ChangeFeed {
    /// Waits for the next change. When the connection is lost, or listening again fails,
    /// it returns [`Change::Lost`] (for the caller to log; the next call waits out the
    /// backoff and tries again), and [`Change::Resync`] once it listens again. Not
    /// cancel-safe: run it in a task of its own and forward what it returns.
    pub async fn next(&mut self) -> Change {
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(self.backoff).await;
            self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
            return match listen(&self.pool).await {
                Ok(listener) => {
                    self.listener = Some(listener);
                    self.backoff = BACKOFF_FIRST;
                    Change::Resync
                }
                Err(e) => Change::Lost(e.to_string()),
            };
        };
        let lost = match listener.try_recv().await {
            Ok(Some(_)) => {
                // A burst (one notice per table and transaction, many writers) is one
                // change: the caller re-reads the whole snapshot anyway.
                while listener.next_buffered().is_some() {}
                return Change::Changed;
            }
            Ok(None) => "connection closed".to_owned(),
            Err(e) => e.to_string(),
        };
        self.listener = None;
        Change::Lost(lost)
    }
}

#[cfg(test)]
mod tests;
