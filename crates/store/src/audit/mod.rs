//! The audit log: append-only and hash-chained, in the store's `audit_events` table
//! (ARCHITECTURE.md §5, §6; issue 4 "Audit log").
//!
//! Row `n` carries `prev_hash` (the `hash` of row `n - 1`, 32 zero bytes for row 1) and
//! `hash = SHA-256(prev_hash ‖ canonical encoding of row n)`, where the encoding covers the
//! row id and every column:
//!
//! ```text
//! "rsp-audit-v1" 0x00 ‖ id i64 BE ‖ time_ms i64 BE ‖ actor ‖ serial ‖ remote ‖ namespace
//!   ‖ pool ‖ pe_id ‖ action ‖ outcome ‖ detail
//! each field: 0x00 for NULL, or 0x01 ‖ length u32 BE ‖ bytes (pe_id as i64 BE)
//! ```
//!
//! Ids are contiguous from 1. Editing,
//! deleting, inserting or reordering rows therefore breaks the chain at the first row
//! touched, which [`verify`] reports. Removing rows at the end cannot be seen from inside
//! the database: keep [`VerifyReport::head`] somewhere else (a log line, a peer) to detect
//! it.
//!
//! Writing goes through [`AuditLog`], a writer task with group commit: many records per
//! SQLite transaction, [`Durability::BeforeReply`] records acknowledged only after their
//! transaction committed, [`Durability::Batched`] records committed within a bounded delay,
//! and a bounded queue that makes callers wait rather than drop records. A change that must
//! be audited in its own transaction (admin API writes) uses [`append_in`] instead.
//!
//! No clock here: the caller stamps each [`Record`] with its time.

pub mod archive;
mod latency;
mod writer;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::LazyLock;

use sha2::{Digest, Sha256};

use crate::db::{Conn, Error, Result, check_text, with_conn};
use identity::{Namespace, PeId, PoolHandle, Serial, SpiffeId};

pub use latency::{BUCKETS_MICROS, LatencyHistogram};
pub use writer::{AuditConfig, AuditLog, AuditStats, CommitIndex, Queued};

/// A SHA-256 digest of the chain.
pub type Hash = [u8; 32];

/// `prev_hash` of the first row.
pub const GENESIS: Hash = [0; 32];

/// The hash chain a record belongs to (issue 19 item 3; docs/STORE.md "The audit log in a
/// fleet"): every registrar appends to its own chain, so that N registrars sharing one
/// store (PostgreSQL) interleave in one table without forking anyone's chain.
///
/// Stored in the `chain` column as `''` ([`Chain::Local`]) or the SPIFFE ID. Records of the
/// local chain hash as they always did (version 1, from [`GENESIS`]); records of a
/// registrar's chain hash its key too (version 2, from [`Chain::genesis`]), so a record
/// moved to another chain, or a chain's first record put at the start of another, breaks
/// the chain it lands in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chain {
    /// The chain of a store that belongs to one registrar (every SQLite store), and of
    /// every record written before chains existed. Shown as `local`.
    Local,
    /// The chain of the registrar with this SPIFFE ID, in a store several registrars share.
    Registrar(SpiffeId),
}

impl Chain {
    /// The stored key: `''` or the SPIFFE ID.
    pub fn key(&self) -> &str {
        match self {
            Self::Local => "",
            Self::Registrar(id) => id.as_str(),
        }
    }

    /// The chain of a stored key.
    pub fn from_key(key: &str) -> Result<Self> {
        match key {
            "" => Ok(Self::Local),
            _ => Self::registrar_or(
                key,
                "audit chain",
                "must be empty (the local chain) or a SPIFFE ID",
            ),
        }
    }

    /// The chain of the registrar `id`, or [`Error::Invalid`] with `what` and `reason`.
    fn registrar_or(id: &str, what: &'static str, reason: &'static str) -> Result<Self> {
        SpiffeId::parse(id)
            .map(Self::Registrar)
            .map_err(|_| Error::Invalid { what, reason })
    }

    /// The registrar whose chain this is; `None` for the local chain.
    pub fn registrar(&self) -> Option<&SpiffeId> {
        match self {
            Self::Local => None,
            Self::Registrar(id) => Some(id),
        }
    }

    /// The `prev_hash` of the chain's first record: [`GENESIS`] for the local chain,
    /// `SHA-256("rsp-audit-genesis-v2" 0x00 ‖ key)` for a registrar's. Distinct per chain,
    /// so `prev_hash` stays unique over the whole table (migrations/0006).
    pub fn genesis(&self) -> Hash {
        genesis_of(self.key())
    }
}

fn genesis_of(key: &str) -> Hash {
    if key.is_empty() {
        return GENESIS;
    }
    let mut hasher = Sha256::new();
    hasher.update(b"rsp-audit-genesis-v2\0");
    hasher.update(key.as_bytes());
    hasher.finalize().into()
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local => f.write_str("local"),
            Self::Registrar(id) => f.write_str(id.as_str()),
        }
    }
}

/// `local` or a SPIFFE ID (the `registrar` filter of `GET /v1/audit`).
impl FromStr for Chain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "local" => Ok(Self::Local),
            _ => Self::registrar_or(s, "registrar", "must be `local` or a SPIFFE ID"),
        }
    }
}

/// Longest action name, in bytes.
pub const MAX_ACTION_LEN: usize = 64;

use identity::audit::{AuditAction, AuditEvent, Durability};

/// The result of the audited operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// It succeeded. Stored as `ok`.
    Ok,
    /// It was refused with this spec error cause code (spec §4.7). Stored as `cause:0x000a`.
    Cause(u16),
    /// It was refused for a reason without a cause code (admin API `unauthorized`,
    /// `forbidden`, a TLS failure...). Stored as given: 1–64 bytes of `a-z 0-9 . _ : -`,
    /// neither `ok` nor starting with `cause:`.
    Refused(Cow<'static, str>),
}

impl Outcome {
    /// The stored text.
    pub fn to_text(&self) -> Cow<'_, str> {
        match self {
            Self::Ok => Cow::Borrowed("ok"),
            Self::Cause(code) => Cow::Owned(format!("cause:0x{code:04x}")),
            Self::Refused(reason) => Cow::Borrowed(reason),
        }
    }

    fn check(&self) -> Result<()> {
        if let Self::Refused(reason) = self
            && (!is_token(reason) || reason == "ok" || reason.starts_with("cause:"))
        {
            return Err(Error::Invalid {
                what: "outcome",
                reason: "must be 1-64 bytes of a-z 0-9 . _ : -, not `ok` or `cause:...`",
            });
        }
        Ok(())
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl FromStr for Outcome {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "ok" {
            return Ok(Self::Ok);
        }
        if let Some(digits) = s.strip_prefix("cause:0x") {
            return match u16::from_str_radix(digits, 16) {
                Ok(code)
                    if digits.len() == 4
                        && digits
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
                {
                    Ok(Self::Cause(code))
                }
                _ => Err(Error::Invalid {
                    what: "outcome",
                    reason: "a cause is written cause:0x followed by 4 hex digits",
                }),
            };
        }
        let outcome = Self::Refused(Cow::Owned(s.to_owned()));
        outcome.check()?;
        Ok(outcome)
    }
}

/// Whether `s` can be a stored action name (`register`, `admin:grant.create`, ...): the
/// rule [`Record::check`] applies, for filters that must refuse what no record can hold.
pub fn is_action_name(s: &str) -> bool {
    is_token(s)
}

/// 1–64 bytes of `a-z 0-9 . _ : -`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ACTION_LEN
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b':' | b'-')
        })
}

/// One audit record, as the caller describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// When it happened, unix milliseconds (the caller's clock).
    pub time_ms: u64,
    /// Who: the authenticated SPIFFE ID; `None` for unauthenticated requests (legacy
    /// plaintext listeners, refused handshakes, bad tokens).
    pub actor: Option<SpiffeId>,
    /// The serial of the certificate that authenticated `actor`.
    pub serial: Option<Serial>,
    /// The remote transport address.
    pub remote: Option<SocketAddr>,
    /// The namespace (stored as its name).
    pub namespace: Option<Namespace>,
    /// The pool handle (stored as its bytes).
    pub pool: Option<PoolHandle>,
    /// The pool element identifier (stored as an integer).
    pub pe_id: Option<PeId>,
    /// What was attempted: 1–64 bytes of `a-z 0-9 . _ : -`, e.g. `register`, `resolve`,
    /// `remove:timeout`, `admin:grant.create`. Written from an [`AuditAction`] (`Record::new`
    /// takes only that); kept as its stored name so that a log written by another version, whose
    /// actions this one may not know, still reads and verifies ([`Record::action_kind`]).
    pub action: Cow<'static, str>,
    /// How it ended.
    pub outcome: Outcome,
    /// Free text (at most 4096 bytes, no control characters except tab and newline).
    pub detail: Option<String>,
}

impl Record {
    /// A record of `action` with `outcome` at `time_ms`, all other fields empty. Only a
    /// typed [`AuditAction`] is written (issue 24): a name this version does not know
    /// comes only from reading a stored row.
    ///
    /// ```
    /// use identity::audit::AuditAction;
    /// use store::audit::{Outcome, Record};
    /// let record = Record::new(1, AuditAction::AdminGrantCreate, Outcome::Ok);
    /// assert_eq!(record.action, "admin:grant.create");
    /// ```
    /// An action given as text does not compile:
    /// ```compile_fail
    /// use store::audit::{Outcome, Record};
    /// let record = Record::new(1, "admin:grant.create", Outcome::Ok);
    /// ```
    pub fn new(time_ms: u64, action: AuditAction, outcome: Outcome) -> Self {
        Self {
            time_ms,
            actor: None,
            serial: None,
            remote: None,
            namespace: None,
            pool: None,
            pe_id: None,
            action: Cow::Borrowed(action.as_str()),
            outcome,
            detail: None,
        }
    }

    /// The record of the registrar core's `event` at `time_ms`: the same typed subjects
    /// (issue 24: one audit event type from the core to the log), the cause code as
    /// [`Outcome::Cause`]. The detail is taken as it is: [`Record::check`] still refuses
    /// control characters in it.
    pub fn from_event(time_ms: u64, event: AuditEvent) -> Self {
        let outcome = event.outcome.map_or(Outcome::Ok, Outcome::Cause);
        let (actor, serial) = event.actor.unzip();
        Self {
            actor,
            serial,
            remote: event.remote,
            namespace: event.namespace,
            pool: event.pool_handle,
            pe_id: event.pe_id,
            detail: event.detail,
            ..Self::new(time_ms, event.action, outcome)
        }
    }

    /// The action as one this version knows, `None` for a name it does not.
    pub fn action_kind(&self) -> Option<AuditAction> {
        AuditAction::from_name(&self.action)
    }

    /// Sets the actor and serial of an authenticated peer (`trust::Peer`'s `id()` and
    /// `serial()`; the store names no TLS type, so it sits beside `trust`, not above it).
    #[must_use]
    pub fn peer(mut self, id: &SpiffeId, serial: &Serial) -> Self {
        self.actor = Some(id.clone());
        self.serial = Some(serial.clone());
        self
    }

    /// Sets the actor (without a certificate serial: token-authenticated admin calls).
    #[must_use]
    pub fn actor(mut self, actor: SpiffeId) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Sets the remote address.
    #[must_use]
    pub fn remote(mut self, remote: SocketAddr) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = Some(namespace);
        self
    }

    /// Sets the pool handle.
    #[must_use]
    pub fn pool(mut self, pool: PoolHandle) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Sets the pool element identifier.
    #[must_use]
    pub fn pe_id(mut self, pe_id: PeId) -> Self {
        self.pe_id = Some(pe_id);
        self
    }

    /// Sets the detail text.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Checks every field; [`AuditLog::append`] and [`append_in`] call it before queueing.
    /// The namespace, pool handle and PE ID are valid by their types.
    pub fn check(&self) -> Result<()> {
        if i64::try_from(self.time_ms).is_err() {
            return Err(Error::Invalid {
                what: "time",
                reason: "past the year 292 million",
            });
        }
        if !is_token(&self.action) {
            return Err(Error::Invalid {
                what: "action",
                reason: "must be 1-64 bytes of a-z 0-9 . _ : -",
            });
        }
        self.outcome.check()?;
        if let Some(detail) = &self.detail {
            check_text(detail, "detail")?;
        }
        Ok(())
    }

    fn to_columns(&self) -> Columns {
        Columns {
            // `check` ran: the time fits.
            time_ms: i64::try_from(self.time_ms).unwrap_or(i64::MAX),
            actor: self.actor.as_ref().map(|a| a.as_str().to_owned()),
            serial: self.serial.as_ref().map(Serial::to_hex),
            remote: self.remote.map(|r| r.to_string()),
            namespace: self.namespace.as_ref().map(|n| n.as_str().to_owned()),
            pool: self.pool.as_ref().map(|p| p.as_bytes().to_vec()),
            pe_id: self.pe_id.map(|id| i64::from(id.get())),
            action: self.action.to_string(),
            outcome: self.outcome.to_text().into_owned(),
            detail: self.detail.clone(),
        }
    }
}

/// The stored columns of a row other than id and hashes, exactly as SQLite returns them:
/// the chain is computed over these, so that [`verify`] needs no parsing.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
struct Columns {
    time_ms: i64,
    actor: Option<String>,
    serial: Option<String>,
    remote: Option<String>,
    namespace: Option<String>,
    pool: Option<Vec<u8>>,
    pe_id: Option<i64>,
    action: String,
    outcome: String,
    detail: Option<String>,
}

/// The bytes hashed for one row (version 1):
///
/// ```text
/// "rsp-audit-v1" 0x00
/// id       u64 big-endian
/// time_ms  i64 big-endian
/// then, in this order, actor, serial, remote, namespace, pool, pe_id, action, outcome,
/// detail, each as 0x00 (NULL) or 0x01 ‖ length u32 big-endian ‖ bytes
/// (text as UTF-8, pool as its bytes, pe_id as i64 big-endian)
/// ```
///
/// Every field is length-prefixed, so no two different rows have the same encoding.
///
/// A record of a registrar's chain (`chain` not empty) is encoded as version 2: the same
/// with `"rsp-audit-v2" 0x00 ‖ 0x01 ‖ length u32 ‖ chain` in place of the tag, so that its
/// hash binds it to its registrar. The local chain keeps version 1: the hashes of records
/// written before chains existed do not change.
fn canonical_encoding(chain: &str, id: i64, c: &Columns) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            None => out.push(0),
            Some(bytes) => {
                out.push(1);
                // Every column is bounded far below 4 GiB by `Record::check`; a longer value
                // (written outside rsp) saturates and then fails verification, never panics.
                let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
    let mut out = Vec::with_capacity(128 + chain.len());
    if chain.is_empty() {
        out.extend_from_slice(b"rsp-audit-v1\0");
    } else {
        out.extend_from_slice(b"rsp-audit-v2\0");
        field(&mut out, Some(chain.as_bytes()));
    }
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&c.time_ms.to_be_bytes());
    field(&mut out, c.actor.as_deref().map(str::as_bytes));
    field(&mut out, c.serial.as_deref().map(str::as_bytes));
    field(&mut out, c.remote.as_deref().map(str::as_bytes));
    field(&mut out, c.namespace.as_deref().map(str::as_bytes));
    field(&mut out, c.pool.as_deref());
    let pe_id = c.pe_id.map(i64::to_be_bytes);
    field(&mut out, pe_id.as_ref().map(<[u8; 8]>::as_slice));
    field(&mut out, Some(c.action.as_bytes()));
    field(&mut out, Some(c.outcome.as_bytes()));
    field(&mut out, c.detail.as_deref().map(str::as_bytes));
    out
}

/// `SHA-256(prev ‖ canonical_encoding(chain, id, columns))`; `chain`: the stored key.
fn chain_hash(prev: &Hash, chain: &str, id: i64, columns: &Columns) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(canonical_encoding(chain, id, columns));
    hasher.finalize().into()
}

/// The last row of `chain`: its id and hash, or, when the chain has no live row, its latest
/// archive's anchor, or `(0, chain.genesis())` for a chain never written: the head as
/// stored, read without walking the chain (checkpoints; [`verify`] checks the chain).
pub async fn head<C: Conn + ?Sized>(conn: &mut C, chain: &Chain) -> Result<(i64, Hash)> {
    let row: Option<(i64, Vec<u8>)> = with_conn!(
        conn,
        "SELECT id, hash FROM audit_events WHERE chain = ?1 ORDER BY id DESC LIMIT 1",
        |c, sql| sqlx::query_as(sql)
            .bind(chain.key())
            .fetch_optional(c)
            .await
    )?;
    match row {
        None => anchored_head(conn, chain).await,
        Some((id, hash)) => Ok((id, stored_hash(id, &hash)?)),
    }
}

/// The head of a chain without live rows: its latest anchor, or its genesis.
async fn anchored_head<C: Conn + ?Sized>(conn: &mut C, chain: &Chain) -> Result<(i64, Hash)> {
    Ok(match archive::latest_anchor(conn, chain).await? {
        Some(a) => (i64::try_from(a.last_id).unwrap_or(i64::MAX), a.last_hash),
        None => (0, chain.genesis()),
    })
}

fn stored_hash(id: i64, hash: &[u8]) -> Result<Hash> {
    Hash::try_from(hash).map_err(|_| Error::Corrupt {
        table: "audit_events",
        id: id.to_string(),
        reason: "hash is not 32 bytes",
    })
}

/// Where the next record of `chain` goes: the next id (ids are global: one past every id
/// of every chain, archived ones included, so they are never reused and grow in commit
/// order) and the hash it chains from. One round trip: the writer reads it per commit,
/// under the store's write lock.
async fn append_point<C: Conn + ?Sized>(conn: &mut C, chain: &Chain) -> Result<(i64, Hash)> {
    let (max_id, max_archived, head_id, head_hash): (
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<Vec<u8>>,
    ) = with_conn!(
        conn,
        "SELECT (SELECT max(id) FROM audit_events), (SELECT max(last_id) FROM audit_archives),
                h.id, h.hash
         FROM (SELECT 1 AS one) AS o
         LEFT JOIN (SELECT id, hash FROM audit_events WHERE chain = ?1
                    ORDER BY id DESC LIMIT 1) AS h ON true",
        |c, sql| sqlx::query_as(sql).bind(chain.key()).fetch_one(c).await
    )?;
    let next = max_id.unwrap_or(0).max(max_archived.unwrap_or(0)) + 1;
    let prev = match (head_id, head_hash) {
        (Some(id), Some(hash)) => stored_hash(id, &hash)?,
        _ => anchored_head(conn, chain).await?.1,
    };
    Ok((next, prev))
}

/// Appends `records`, in order, to `chain` on `conn`, which should be a transaction of
/// [`crate::db::Store::begin`] (holding the store's write lock) so that the change being
/// audited and its record commit together. Reads the chain head inside that transaction,
/// so it is safe next to a running [`AuditLog`] (of this registrar or of another one
/// sharing the store). Returns the new rows' ids. Checks every record before writing any.
pub async fn append_in<C: Conn + ?Sized>(
    conn: &mut C,
    chain: &Chain,
    records: &[Record],
) -> Result<Vec<u64>> {
    for record in records {
        record.check()?;
    }
    let records: Vec<&Record> = records.iter().collect();
    insert_checked(conn, chain, &records).await
}

/// [`append_in`] for records already checked.
async fn insert_checked<C: Conn + ?Sized>(
    conn: &mut C,
    chain: &Chain,
    records: &[&Record],
) -> Result<Vec<u64>> {
    Ok(insert_at_head(conn, chain, records).await?.0)
}

/// Reads the append point of `chain` and inserts `records` there; returns the new rows'
/// ids and where the chain then ends.
async fn insert_at_head<C: Conn + ?Sized>(
    conn: &mut C,
    chain: &Chain,
    records: &[&Record],
) -> Result<(Vec<u64>, AppendPoint)> {
    let (next, prev) = append_point(&mut *conn, chain).await?;
    let (rows, end) = chain_rows(chain, records, AppendPoint { next, prev });
    // Ids start at 1 and only grow.
    let ids = rows
        .iter()
        .map(|(id, ..)| u64::try_from(*id).unwrap_or_default())
        .collect();
    insert_rows(conn, chain, rows).await?;
    Ok((ids, end))
}

/// Where the next record of a chain goes: its id and the hash it chains from. The audit
/// writer remembers where its last commit left its chain, so that the next commit need not
/// read it back ([`commit_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AppendPoint {
    next: i64,
    prev: Hash,
}

/// One row to insert: id, columns, prev_hash, hash.
type Row = (i64, Columns, Hash, Hash);

/// The rows of `records` chained from `at`, and where they leave the chain.
fn chain_rows(chain: &Chain, records: &[&Record], at: AppendPoint) -> (Vec<Row>, AppendPoint) {
    let key = chain.key();
    let AppendPoint {
        next: mut id,
        mut prev,
    } = at;
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        let columns = record.to_columns();
        let hash = chain_hash(&prev, key, id, &columns);
        rows.push((id, columns, prev, hash));
        prev = hash;
        id += 1;
    }
    (rows, AppendPoint { next: id, prev })
}

/// Most records [`commit_at`] commits in its one round trip (one statement text per
/// count, kept prepared on the writer's connection: sqlx keeps 100 per connection).
pub(crate) const COMMIT_AT_MAX: usize = INSERT_WIDE_ROWS;

/// The audit writer's commit on SQLite when it knows where its chain ends (`at`: where its
/// previous commit left it): one multi-row `INSERT` in autocommit mode, i.e. one
/// statement and one round trip to sqlx's SQLite thread instead of one per statement
/// (begin, head read, inserts, commit: ~12 for 30 records, each a wake-up of that thread
/// and of the writer's task; issue 20). SQLite runs a lone statement as its own
/// transaction: it takes the write lock before it reads (a writing statement's
/// transaction starts as `BEGIN IMMEDIATE` does, waiting out the busy timeout), commits
/// with the same `fsync` as a `COMMIT`, and an error anywhere, a trigger's `RAISE(ABORT)`
/// included, leaves none of its rows. (`BEGIN IMMEDIATE; INSERT; COMMIT` did the same in
/// three statements: three results for sqlx's thread to send back, each a wake-up of the
/// writer's task.) At most [`COMMIT_AT_MAX`] records.
///
/// `at` is not trusted: if anyone else appended since (the admin API's [`append_in`],
/// another process), the fork guard (migrations/0008, `audit_events_append_at_head`)
/// refuses the first row, since its id is no longer past every id or its `prev_hash` is
/// no longer the head's, and nothing is inserted. The caller then reads the head
/// ([`insert_at_head`]). Returns where the chain ends.
pub(crate) async fn commit_at(
    conn: &mut sqlx::SqliteConnection,
    chain: &Chain,
    records: &[&Record],
    at: AppendPoint,
) -> Result<AppendPoint> {
    debug_assert!(!records.is_empty() && records.len() <= COMMIT_AT_MAX);
    // The insert commits by itself only outside a transaction: inside one, it would be
    // acknowledged before it is durable. The writer's connection opens none of its own
    // but through sqlx, which counts them; the caller takes the slow path instead.
    if sqlx::Connection::is_in_transaction(&*conn) {
        return Err(Error::Conflict {
            what: "audit commit",
            reason: "the writer's connection is inside a transaction",
        });
    }
    let (rows, end) = chain_rows(chain, records, at);
    let key = chain.key();
    let mut query = sqlx::query(insert_stmt(rows.len()));
    for (id, cols, prev, hash) in rows {
        query = bind_row!(query, id, key, cols, &prev, &hash);
    }
    sqlx::Executor::execute(&mut *conn, query).await?;
    Ok(end)
}

/// Inserts chained rows, few statements per batch: every statement is a round trip to
/// sqlx's SQLite thread, which costs more than the insert itself.
async fn insert_rows<C: Conn + ?Sized>(conn: &mut C, chain: &Chain, rows: Vec<Row>) -> Result<()> {
    let key = chain.key();
    let mut rows = rows.into_iter();
    let mut left = rows.len();
    while left > 0 {
        let (n, sql) = if left >= INSERT_WIDE_ROWS {
            (INSERT_WIDE_ROWS, insert_stmt(INSERT_WIDE_ROWS))
        } else if left >= INSERT_MID_ROWS {
            (INSERT_MID_ROWS, insert_stmt(INSERT_MID_ROWS))
        } else {
            (1, insert_stmt(1))
        };
        with_conn!(&mut *conn, sql, |c, sql| {
            let mut query = sqlx::query(sql);
            for (id, cols, prev, hash) in rows.by_ref().take(n) {
                query = bind_row!(query, id, key, cols, &prev, &hash);
            }
            query.execute(c).await.map(drop)
        })?;
        left -= n;
    }
    Ok(())
}

/// Binds one row's 14 values, in the order of [`insert_sql`]'s columns, to a query of
/// either backend.
macro_rules! bind_row {
    ($query:expr, $id:expr, $chain:expr, $c:expr, $prev:expr, $hash:expr) => {{
        bind_columns!($query.bind($id).bind($chain), $c)
            .bind($prev.to_vec())
            .bind($hash.to_vec())
    }};
}
use bind_row;

/// Binds the 10 [`Columns`] of a row, in their order.
macro_rules! bind_columns {
    ($query:expr, $c:expr) => {{
        let c = $c;
        $query
            .bind(c.time_ms)
            .bind(c.actor)
            .bind(c.serial)
            .bind(c.remote)
            .bind(c.namespace)
            .bind(c.pool)
            .bind(c.pe_id)
            .bind(c.action)
            .bind(c.outcome)
            .bind(c.detail)
    }};
}
use bind_columns;

/// Rows per statement of the widest insert (14 parameters a row: 896 parameters, far
/// below SQLite's limit of 32766).
const INSERT_WIDE_ROWS: usize = 64;
/// Rows per statement of the middle insert.
const INSERT_MID_ROWS: usize = 8;

/// `INSERT INTO audit_events ... VALUES (14 placeholders) × rows`. Built once from
/// constants, never from data.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO audit_events (id, chain, time_ms, actor, serial, remote, namespace, \
         pool, pe_id, action, outcome, detail, prev_hash, hash) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    }
    sql
}

/// [`insert_sql`] for every count of rows up to [`INSERT_WIDE_ROWS`], built once.
static INSERTS: LazyLock<Vec<String>> =
    LazyLock::new(|| (1..=INSERT_WIDE_ROWS).map(insert_sql).collect());

/// The insert of `rows` rows (1 ..= [`INSERT_WIDE_ROWS`]). [`insert_rows`] uses three of
/// them (64, 8, 1 rows: few statements kept prepared per connection, PostgreSQL's
/// included); the writer's [`commit_at`] any, on its one SQLite connection.
fn insert_stmt(rows: usize) -> &'static str {
    INSERTS[rows.clamp(1, INSERT_WIDE_ROWS) - 1].as_str()
}

// ---------------------------------------------------------------------------------------
// Verification

/// Why a row breaks the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakReason {
    /// The row's id is not the previous id + 1: rows were deleted (or inserted with a
    /// chosen id) before it. Only on the local chain, whose ids are contiguous (ids of
    /// another chain in between are no gap); a registrar's chain shares the ids with the
    /// other registrars', so there `prev_hash` finds a deleted row.
    IdGap {
        /// The id the row should have had.
        expected: u64,
    },
    /// `prev_hash` is not the previous row's hash: rows were reordered, deleted or
    /// inserted before it, or moved to this chain from another one.
    PrevHash,
    /// `hash` does not match the row's contents: the row was edited (or, on a
    /// registrar's chain, moved to it from another chain).
    Hash,
    /// The archive anchors do not continue one another (`audit_archives` edited): the
    /// id is the last row of the first anchor that does not.
    Anchor,
}

impl fmt::Display for BreakReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IdGap { expected } => write!(f, "id gap: expected row {expected}"),
            Self::PrevHash => f.write_str("prev_hash does not match the previous row's hash"),
            Self::Hash => f.write_str("hash does not match the row's contents"),
            Self::Anchor => f.write_str("archive anchor does not continue the previous one"),
        }
    }
}

/// The first broken link of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokenLink {
    /// The id of the first row that fails.
    pub id: i64,
    /// Why.
    pub reason: BreakReason,
}

/// What [`verify`] found in one chain.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The chain.
    pub chain: Chain,
    /// Rows checked (all of them when the chain is intact; up to the broken link
    /// otherwise, that row included).
    pub checked: u64,
    /// The id of the last intact row (0 if none).
    pub last_id: u64,
    /// The hash of the last intact row (the chain's genesis, [`Chain::genesis`], if
    /// none): record it elsewhere to detect truncation later.
    pub head: Hash,
    /// The first broken link, or `None` if the chain is intact.
    pub broken: Option<BrokenLink>,
    /// The latest archive's anchor, where the live rows start (`None`: nothing archived,
    /// the chain starts at its first row). `checked` counts live rows only.
    pub anchor: Option<archive::Anchor>,
}

impl VerifyReport {
    /// The report of a chain with no row and no anchor (never written).
    pub fn empty(chain: Chain) -> Self {
        Self {
            head: chain.genesis(),
            chain,
            checked: 0,
            last_id: 0,
            broken: None,
            anchor: None,
        }
    }

    /// Whether the whole chain is intact.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }

    /// [`VerifyReport::head`] in hex.
    pub fn head_hex(&self) -> String {
        hex::encode(self.head)
    }
}

#[derive(sqlx::FromRow)]
struct ChainRow {
    id: i64,
    chain: String,
    #[sqlx(flatten)]
    columns: Columns,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

/// Rows read per query while verifying (bounds memory).
const VERIFY_PAGE: i64 = 1000;

/// Walks every chain, in one pass over the table in id order, and reports the first
/// broken link of each: one report per chain that has a row or an anchor, the local
/// chain first, then by SPIFFE ID. A break in one chain leaves the others' reports
/// intact. Reads in pages, so memory stays bounded whatever the log's size (one state per
/// chain). After archives, a chain starts from its latest anchor: its first live row must
/// chain from the anchor's hash, and its anchors must continue one another (the archive
/// files themselves are checked by [`archive::verify_archive`] and
/// [`archive::check_links`]).
pub async fn verify<C: Conn + ?Sized>(conn: &mut C) -> Result<Vec<VerifyReport>> {
    let mut chains = BTreeMap::new();
    for (key, anchor) in archive::all_anchors(&mut *conn).await? {
        let report = chain_report(&mut chains, &key)?;
        if report.broken.is_some() {
            continue;
        }
        let continues = if key.is_empty() {
            anchor.first_id == report.last_id + 1
        } else {
            anchor.first_id > report.last_id
        };
        if !continues || anchor.first_prev_hash != report.head {
            report.broken = Some(BrokenLink {
                id: i64::try_from(anchor.last_id).unwrap_or(i64::MAX),
                reason: BreakReason::Anchor,
            });
            continue;
        }
        report.last_id = anchor.last_id;
        report.head = anchor.last_hash;
        report.anchor = Some(anchor);
    }
    // Ids the pass saw without a hole from `run_start` to the previous row: a gap in the
    // local chain filled by other chains' rows is no gap.
    let (mut previous, mut run_start) = (0_i64, 1_i64);
    let mut last = 0_i64;
    loop {
        let rows: Vec<ChainRow> = with_conn!(
            conn,
            "SELECT id, chain, time_ms, actor, serial, remote, namespace, pool, pe_id, action,
                 outcome, detail, prev_hash, hash
             FROM audit_events WHERE id > ?1 ORDER BY id LIMIT ?2",
            |c, sql| sqlx::query_as(sql)
                .bind(last)
                .bind(VERIFY_PAGE)
                .fetch_all(c)
                .await
        )?;
        let Some(page_last) = rows.last().map(|r| r.id) else {
            return Ok(chains.into_values().collect());
        };
        for row in rows {
            if row.id != previous + 1 {
                run_start = row.id;
            }
            previous = row.id;
            let report = chain_report(&mut chains, &row.chain)?;
            let archived = report.anchor.as_ref().map_or(0, |a| a.last_id);
            // Rows an interrupted archive left behind are not part of the live chain.
            if report.broken.is_some() || u64::try_from(row.id).unwrap_or(0) <= archived {
                continue;
            }
            report.checked += 1;
            let expected = report.last_id + 1;
            let gap = row.chain.is_empty()
                && u64::try_from(row.id).ok() != Some(expected)
                && u64::try_from(run_start).unwrap_or(0) > expected;
            let reason = if gap {
                Some(BreakReason::IdGap { expected })
            } else if row.prev_hash != report.head {
                Some(BreakReason::PrevHash)
            } else if row.hash != chain_hash(&report.head, &row.chain, row.id, &row.columns) {
                Some(BreakReason::Hash)
            } else {
                None
            };
            if let Some(reason) = reason {
                report.broken = Some(BrokenLink { id: row.id, reason });
                continue;
            }
            report.last_id = u64::try_from(row.id).unwrap_or(0);
            // Checked equal to a 32-byte value just above.
            report.head = Hash::try_from(row.hash.as_slice()).unwrap_or(GENESIS);
        }
        last = page_last;
    }
}

/// The report of the chain stored as `key`, added when first seen.
fn chain_report<'a>(
    chains: &'a mut BTreeMap<String, VerifyReport>,
    key: &str,
) -> Result<&'a mut VerifyReport> {
    use std::collections::btree_map::Entry;
    // One small allocation per row; hashing the row costs far more.
    Ok(match chains.entry(key.to_owned()) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(v) => {
            let chain = Chain::from_key(key).map_err(|_| Error::Corrupt {
                table: "audit_events",
                id: String::new(),
                reason: "a chain is neither empty nor a SPIFFE ID",
            })?;
            v.insert(VerifyReport::empty(chain))
        }
    })
}

/// [`verify`]'s report of one chain (a chain never written is intact and empty).
pub async fn verify_chain<C: Conn + ?Sized>(conn: &mut C, chain: &Chain) -> Result<VerifyReport> {
    Ok(verify(conn)
        .await?
        .into_iter()
        .find(|r| r.chain == *chain)
        .unwrap_or_else(|| VerifyReport::empty(chain.clone())))
}

// ---------------------------------------------------------------------------------------
// Queries

/// A stored audit record: the [`Record`] with its place in the hash chain.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChainedRecord {
    /// Row id: ids grow over the whole table (every chain), from 1; the pagination cursor.
    pub id: u64,
    /// The chain it belongs to: the registrar that appended it.
    pub chain: Chain,
    /// The record.
    pub record: Record,
    /// The previous row's hash.
    pub prev_hash: Hash,
    /// This row's hash.
    pub hash: Hash,
    /// Stored subjects the record's types refuse, as stored (usually none).
    pub unparsed: Unparsed,
}

/// The stored namespace, pool handle or PE ID of a row that this version's types refuse
/// (a row written by another version, or outside rsp): the record's typed field is then
/// `None` and the stored value is here, as stored. Such a row still reads, and verifies:
/// the chain is computed over the stored columns, never over the typed record. Every row
/// this version writes has typed subjects, so this is empty for them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unparsed {
    /// A namespace that is not 1–63 bytes of `a-z 0-9 - .`.
    pub namespace: Option<String>,
    /// A pool handle that is empty or longer than 32 bytes.
    pub pool: Option<Vec<u8>>,
    /// A PE ID that is 0 or not 32 bits.
    pub pe_id: Option<i64>,
}

impl Unparsed {
    /// True when every stored subject had its type.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A stored value as its type, or, when the type refuses it, `None` and the value in
/// `unparsed` (see [`Unparsed`]).
fn typed<S, T>(
    stored: Option<S>,
    parse: impl FnOnce(&S) -> Option<T>,
    unparsed: &mut Option<S>,
) -> Option<T> {
    let stored = stored?;
    let value = parse(&stored);
    if value.is_none() {
        *unparsed = Some(stored);
    }
    value
}

impl TryFrom<ChainRow> for ChainedRecord {
    type Error = Error;
    fn try_from(row: ChainRow) -> Result<Self> {
        let corrupt = |reason| Error::Corrupt {
            table: "audit_events",
            id: row.id.to_string(),
            reason,
        };
        let c = row.columns;
        let mut unparsed = Unparsed::default();
        let record = Record {
            time_ms: u64::try_from(c.time_ms).map_err(|_| corrupt("negative time"))?,
            actor: c
                .actor
                .as_deref()
                .map(SpiffeId::parse)
                .transpose()
                .map_err(|_| corrupt("invalid actor"))?,
            serial: c
                .serial
                .as_deref()
                .map(Serial::from_str)
                .transpose()
                .map_err(|_| corrupt("invalid serial"))?,
            remote: c
                .remote
                .as_deref()
                .map(SocketAddr::from_str)
                .transpose()
                .map_err(|_| corrupt("invalid remote address"))?,
            namespace: typed(c.namespace, |n| Namespace::new(n), &mut unparsed.namespace),
            pool: typed(c.pool, |p| PoolHandle::new(p), &mut unparsed.pool),
            pe_id: typed(
                c.pe_id,
                |&id| u32::try_from(id).ok().and_then(PeId::new),
                &mut unparsed.pe_id,
            ),
            action: Cow::Owned(c.action),
            outcome: Outcome::from_str(&c.outcome).map_err(|_| corrupt("invalid outcome"))?,
            detail: c.detail,
        };
        Ok(Self {
            id: u64::try_from(row.id).map_err(|_| corrupt("negative id"))?,
            chain: Chain::from_key(&row.chain).map_err(|_| corrupt("invalid chain"))?,
            record,
            prev_hash: Hash::try_from(row.prev_hash.as_slice())
                .map_err(|_| corrupt("prev_hash is not 32 bytes"))?,
            hash: Hash::try_from(row.hash.as_slice())
                .map_err(|_| corrupt("hash is not 32 bytes"))?,
            unparsed,
        })
    }
}

/// Which way [`query`] pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// Newest first; the cursor is an id to stay below. The default.
    #[default]
    NewestFirst,
    /// Oldest first; the cursor is an id to stay above.
    OldestFirst,
}

/// Largest page [`query`] returns.
pub const MAX_PAGE: u32 = 1000;

/// Filters of [`query`]; every `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditFilter {
    /// Records at or after this time (unix ms).
    pub since_ms: Option<u64>,
    /// Records before this time (unix ms).
    pub until_ms: Option<u64>,
    /// Records of this actor (exact SPIFFE ID).
    pub actor: Option<SpiffeId>,
    /// Records in this namespace.
    pub namespace: Option<Namespace>,
    /// Records about this pool handle.
    pub pool: Option<PoolHandle>,
    /// Records of this action.
    pub action: Option<String>,
    /// Records with this outcome.
    pub outcome: Option<Outcome>,
    /// Records of this chain (appended by this registrar).
    pub chain: Option<Chain>,
    /// Page direction.
    pub order: Order,
    /// Continue after this cursor ([`AuditPage::next`] of the previous page).
    pub cursor: Option<u64>,
    /// Page size, 1..=[`MAX_PAGE`]; 0 means 100.
    pub limit: u32,
}

/// One page of [`query`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditPage {
    /// The records, in the requested order.
    pub events: Vec<ChainedRecord>,
    /// The cursor of the next page, or `None` if this was the last.
    pub next: Option<u64>,
}

/// Reads one page of audit records matching `filter`.
pub async fn query<C: Conn + ?Sized>(conn: &mut C, filter: &AuditFilter) -> Result<AuditPage> {
    let limit = match filter.limit {
        0 => 100,
        n if n > MAX_PAGE => {
            return Err(Error::Invalid {
                what: "limit",
                reason: "at most 1000 records per page",
            });
        }
        n => n,
    };
    let to_i64 = |ms: u64| {
        i64::try_from(ms).map_err(|_| Error::Invalid {
            what: "time",
            reason: "past the year 292 million",
        })
    };
    let since = filter.since_ms.map(to_i64).transpose()?;
    let until = filter.until_ms.map(to_i64).transpose()?;
    let cursor = filter
        .cursor
        .map(|c| {
            i64::try_from(c).map_err(|_| Error::Invalid {
                what: "cursor",
                reason: "out of range",
            })
        })
        .transpose()?;
    // The SQL is static: a NULL parameter disables its condition.
    let sql = match filter.order {
        Order::NewestFirst => {
            "SELECT id, chain, time_ms, actor, serial, remote, namespace, pool, pe_id,
                 action, outcome, detail, prev_hash, hash
             FROM audit_events
             WHERE (?1 IS NULL OR time_ms >= ?1) AND (?2 IS NULL OR time_ms < ?2)
               AND (?3 IS NULL OR actor = ?3) AND (?4 IS NULL OR namespace = ?4)
               AND (?5 IS NULL OR pool = ?5) AND (?6 IS NULL OR action = ?6)
               AND (?7 IS NULL OR outcome = ?7) AND (?8 IS NULL OR id < ?8)
               AND (?10 IS NULL OR chain = ?10)
             ORDER BY id DESC LIMIT ?9"
        }
        Order::OldestFirst => {
            "SELECT id, chain, time_ms, actor, serial, remote, namespace, pool, pe_id,
                 action, outcome, detail, prev_hash, hash
             FROM audit_events
             WHERE (?1 IS NULL OR time_ms >= ?1) AND (?2 IS NULL OR time_ms < ?2)
               AND (?3 IS NULL OR actor = ?3) AND (?4 IS NULL OR namespace = ?4)
               AND (?5 IS NULL OR pool = ?5) AND (?6 IS NULL OR action = ?6)
               AND (?7 IS NULL OR outcome = ?7) AND (?8 IS NULL OR id > ?8)
               AND (?10 IS NULL OR chain = ?10)
             ORDER BY id ASC LIMIT ?9"
        }
    };
    // One more than the page, to know whether another page follows.
    let rows: Vec<ChainRow> = with_conn!(conn, sql, |c, sql| sqlx::query_as(sql)
        .bind(since)
        .bind(until)
        .bind(filter.actor.as_ref().map(|a| a.as_str().to_owned()))
        .bind(filter.namespace.as_ref().map(|n| n.as_str().to_owned()))
        .bind(filter.pool.as_ref().map(|p| p.as_bytes().to_vec()))
        .bind(filter.action.clone())
        .bind(filter.outcome.as_ref().map(|o| o.to_text().into_owned()))
        .bind(cursor)
        .bind(i64::from(limit) + 1)
        .bind(filter.chain.as_ref().map(|c| c.key().to_owned()))
        .fetch_all(c)
        .await)?;
    let more = rows.len() > limit as usize;
    let events = rows
        .into_iter()
        .take(limit as usize)
        .map(ChainedRecord::try_from)
        .collect::<Result<Vec<_>>>()?;
    let next = if more {
        events.last().map(|e| e.id)
    } else {
        None
    };
    Ok(AuditPage { events, next })
}

/// Number of rows in the log.
pub async fn count<C: Conn + ?Sized>(conn: &mut C) -> Result<u64> {
    let (n,): (i64,) = with_conn!(conn, "SELECT count(*) FROM audit_events", |c, sql| {
        sqlx::query_as(sql).fetch_one(c).await
    })?;
    Ok(u64::try_from(n).unwrap_or_default())
}

#[cfg(test)]
mod chain_tests;
#[cfg(test)]
mod tests;
