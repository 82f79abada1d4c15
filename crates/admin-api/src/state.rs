//! The state every handler shares, and the one way handlers write: a change and its audit
//! record in one transaction ([`App::finish`]).

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use identity::TrustDomain;
use store::audit::{self, Outcome, Record};
use store::db::{Store, TokenHasher};
use trust::TrustStore;

use crate::problem::{ApiError, ProblemKind};
use crate::registrar::{DynRegistrar, Registrar};
use crate::serve::ServeCounters;

/// A write transaction (`BEGIN IMMEDIATE` on SQLite, the store's write lock on
/// PostgreSQL: `store::db::Store::begin`).
pub(crate) type Tx = store::db::StoreTx;

/// What the admin API needs from its host (`enrpd`): build it with [`AdminState::new`] and
/// hand it to [`crate::router`].
pub struct AdminState {
    pub(crate) store: Store,
    pub(crate) trust: Arc<TrustStore>,
    pub(crate) registrar: Arc<dyn DynRegistrar>,
    pub(crate) hasher: TokenHasher,
    pub(crate) clock: fn() -> u64,
    pub(crate) counters: Arc<ServeCounters>,
    pub(crate) archive_dir: Option<std::path::PathBuf>,
    /// Verified tokens and failed attempts ([`crate::auth::TokenGuard`]), shared with
    /// the host through [`AdminState::token_cache`].
    pub(crate) tokens: Arc<Mutex<crate::auth::TokenGuard>>,
    pub(crate) audit_chain: audit::Chain,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// The state of an admin API over `store` (migrated), applying trust changes to
    /// `trust` and driving `registrar`. New tokens are hashed with `hasher`
    /// ([`TokenHasher::default`] in production). `clock` gives the current time in unix
    /// milliseconds (`enrp::daemon::now_ms` in `enrpd`; a fixed or stepping clock in
    /// tests). The local trust domain, which cannot be removed or revoked, is the one of
    /// `trust`'s own identity.
    pub fn new<R: Registrar>(
        store: Store,
        trust: Arc<TrustStore>,
        registrar: Arc<R>,
        hasher: TokenHasher,
        clock: fn() -> u64,
    ) -> Self {
        Self {
            store,
            trust,
            registrar,
            hasher,
            clock,
            counters: Arc::new(ServeCounters::default()),
            archive_dir: None,
            tokens: Arc::default(),
            audit_chain: audit::Chain::Local,
        }
    }

    /// The audit chain this registrar appends its admin records to, archives and reports
    /// as its own: [`audit::Chain::Local`] (the default) in a store of its own, its
    /// [`audit::Chain::Registrar`] in a store a fleet shares (docs/STORE.md).
    #[must_use]
    pub fn with_audit_chain(mut self, chain: audit::Chain) -> Self {
        self.audit_chain = chain;
        self
    }

    /// Where `POST /v1/audit/archives` writes archives and `GET
    /// /v1/audit/archives/{name}` reads them: `<data>/audit-archive`
    /// (`store::audit::archive::ARCHIVE_DIR`) in `enrpd`. Without it, archiving through
    /// the API is refused (409) and listing still works.
    #[must_use]
    pub fn with_archive_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.archive_dir = Some(dir);
        self
    }

    /// The API's cache of verified tokens, for the host to drop tokens revoked elsewhere
    /// (another registrar of a fleet sharing the store) at once.
    pub fn token_cache(&self) -> crate::auth::TokenCache {
        crate::auth::TokenCache(Arc::clone(&self.tokens))
    }

    /// The counters [`crate::serve`] updates (handshake failures) and `/metrics` reports:
    /// pass them in [`crate::ServeOptions`].
    pub fn serve_counters(&self) -> Arc<ServeCounters> {
        self.counters.clone()
    }
}

/// Unauthenticated refusals audited per second at most; the rest are counted and the
/// next audited one says how many were skipped. An anonymous client could otherwise make
/// the registrar fsync one audit row per request it sends.
const UNAUTHENTICATED_AUDITS_PER_SECOND: u32 = 20;

#[derive(Debug, Default)]
struct RefusalLimiter {
    second: u64,
    audited: u32,
    skipped: u64,
}

/// The router's state: [`AdminState`] plus what the router adds.
pub(crate) struct App {
    pub(crate) state: AdminState,
    pub(crate) local_domain: TrustDomain,
    pub(crate) openapi: OnceLock<String>,
    limiter: Mutex<RefusalLimiter>,
    /// Open `/v1/watch/audit` streams (routes/watch.rs, `MAX_AUDIT_WATCHERS`).
    pub(crate) audit_watchers: Arc<std::sync::atomic::AtomicUsize>,
}

impl App {
    pub(crate) fn new(state: AdminState) -> Arc<Self> {
        let local_domain = state.trust.identity().id().trust_domain();
        Arc::new(Self {
            state,
            local_domain,
            openapi: OnceLock::new(),
            limiter: Mutex::new(RefusalLimiter::default()),
            audit_watchers: Arc::default(),
        })
    }

    /// The token cache and failure counts; held for a lookup, never across an await.
    pub(crate) fn tokens(&self) -> std::sync::MutexGuard<'_, crate::auth::TokenGuard> {
        self.state
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn now(&self) -> u64 {
        (self.state.clock)()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.state.store
    }

    /// This registrar's own audit chain ([`AdminState::with_audit_chain`]).
    pub(crate) fn audit_chain(&self) -> &audit::Chain {
        &self.state.audit_chain
    }

    pub(crate) fn trust(&self) -> &TrustStore {
        &self.state.trust
    }

    pub(crate) fn registrar(&self) -> &dyn DynRegistrar {
        &*self.state.registrar
    }

    pub(crate) async fn begin(&self) -> Result<Tx, ApiError> {
        Ok(self.state.store.begin().await?)
    }

    /// Ends a write: when `result` is `Ok`, appends `record` in `tx` and commits, so the
    /// change and its audit record are durable together (or neither is); otherwise rolls
    /// back and audits the refusal on its own.
    pub(crate) async fn finish<T>(
        &self,
        mut tx: Tx,
        record: Record,
        result: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match result {
            Ok(value) => {
                audit::append_in(&mut tx, &self.state.audit_chain, &[clipped(record)]).await?;
                tx.commit().await?;
                Ok(value)
            }
            Err(err) => {
                drop(tx); // rolls back
                self.audit_refusal(record, &err).await;
                Err(err)
            }
        }
    }

    /// Audits `record` in a transaction of its own (an admin action that changes nothing
    /// in the store, such as a forced deregistration, whose effect the registrar audits).
    pub(crate) async fn audit(&self, record: Record) -> Result<(), ApiError> {
        let mut tx = self.begin().await?;
        audit::append_in(&mut tx, &self.state.audit_chain, &[clipped(record)]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Audits a refused request (best effort: the refusal is answered whatever happens
    /// here, and a failure is logged).
    pub(crate) async fn audit_refusal(&self, mut record: Record, err: &ApiError) {
        let kind = err.kind();
        record.outcome = Outcome::Refused(kind.outcome().into());
        let detail = match (&record.detail, err.problem().detail) {
            (Some(ours), Some(why)) => format!("{ours}: {why}"),
            (None, Some(why)) => why,
            (ours, None) => ours.clone().unwrap_or_default(),
        };
        record.detail = Some(clip(&detail));
        if kind == ProblemKind::Unauthenticated && !self.admit_unauthenticated(&mut record) {
            return;
        }
        if let Err(e) = self.audit(record).await {
            tracing::error!(error = %e, "cannot audit a refused admin request");
        }
    }

    /// Rate limit of unauthenticated refusals (see [`UNAUTHENTICATED_AUDITS_PER_SECOND`]).
    fn admit_unauthenticated(&self, record: &mut Record) -> bool {
        let second = record.time_ms / 1000;
        let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        if limiter.second != second {
            limiter.second = second;
            limiter.audited = 0;
        }
        if limiter.audited >= UNAUTHENTICATED_AUDITS_PER_SECOND {
            limiter.skipped += 1;
            self.state.counters.unaudited_refusal();
            return false;
        }
        limiter.audited += 1;
        if limiter.skipped > 0 {
            let detail = record.detail.take().unwrap_or_default();
            record.detail = Some(clip(&format!(
                "{detail} ({} earlier unauthenticated requests not audited: rate limit)",
                limiter.skipped
            )));
            limiter.skipped = 0;
        }
        true
    }
}

/// `record` with its detail made acceptable to the audit log (details quote callers).
fn clipped(mut record: Record) -> Record {
    record.detail = record.detail.as_deref().map(clip);
    record
}

/// Free text fit for an audit detail: at most 4096 bytes, control and invisible formatting
/// characters replaced ([`identity::text::printable`]).
pub(crate) fn clip(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(store::db::MAX_TEXT_LEN));
    for c in text.chars().map(identity::text::printable) {
        if out.len() + c.len_utf8() > store::db::MAX_TEXT_LEN {
            break;
        }
        out.push(c);
    }
    out
}
