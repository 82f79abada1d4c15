//! Audit retention (issue 18 item 5; docs/SECURITY.md "Audit retention"): a prefix of the
//! chain moves into a compressed archive that verifies on its own, and the live log keeps
//! the link.
//!
//! [`archive`] writes rows `first..=last` (the rows after the previous archive, up to the
//! cut) as gzip'd JSON Lines: a header line ([`ArchiveHeader`]: format, server, range, the
//! hash the first row chains from, the last row's hash), then one line per row with every
//! column the hash covers ([`ArchiveLine`]), readable with `zcat FILE | jq`. The file is
//! written under a temporary name, fsynced, linked into place (never over an existing
//! file), its directory fsynced, read back and verified; only then, in one transaction,
//! the anchor row ([`Anchor`], table `audit_archives`) is written, the first
//! [`DELETE_CHUNK`] archived rows are deleted and the archive operation itself is appended
//! to the live log; the rest of the prefix is deleted a chunk per transaction, so that the
//! registrar's writer never waits long for the lock. A crash at any point leaves either
//! the rows in the live log or the verified file and its anchor (and perhaps archived rows
//! not yet deleted: verification starts after the anchor, and the next archive deletes
//! them first).
//!
//! [`super::verify`] starts from the latest anchor: the first remaining row must chain
//! from its hash. [`verify_archive`] checks a file alone; [`check_links`] that files and
//! anchors form one chain ending where the live log starts.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Chain, ChainRow, Columns, GENESIS, Hash, Record, chain_hash, head};
use crate::db::{Conn, Error, Result, Store, with_conn};
use identity::SpiffeId;

/// The format tag of an archive's header line.
pub const ARCHIVE_FORMAT: &str = "rsp-audit-archive/1";

/// The directory, inside the data directory, where the admin API writes archives.
pub const ARCHIVE_DIR: &str = "audit-archive";

/// Longest line [`verify_archive`] reads, in bytes: a detail is at most 4096 bytes, at most
/// 6 bytes each once escaped in JSON (`\u0000`), plus the other fields. A longer line is
/// not one [`archive`] wrote.
pub const MAX_LINE: u64 = 64 * 1024;

/// Rows read per query while archiving (bounds memory, as [`super::verify`] does).
const PAGE: i64 = 1000;

/// The first line of an archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ArchiveHeader {
    /// [`ARCHIVE_FORMAT`].
    pub format: String,
    /// The trust domain of the registrar whose log this is.
    pub trust_domain: Option<String>,
    /// The registrar's SPIFFE ID.
    pub server: Option<String>,
    /// The first row's id.
    pub first_id: u64,
    /// The last row's id.
    pub last_id: u64,
    /// Rows in the archive (`last_id - first_id + 1`).
    pub records: u64,
    /// The hash the first row chains from (hex; 64 zeros when `first_id` is 1).
    pub prev_hash: String,
    /// The last row's hash (hex): the live log's first remaining row chains from it.
    pub last_hash: String,
    /// When the archive was written, unix ms.
    pub created_ms: u64,
}

/// One archived row: every column the chain hash covers, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveLine {
    /// Row id.
    pub id: i64,
    /// Unix ms.
    pub time_ms: i64,
    /// SPIFFE ID.
    pub actor: Option<String>,
    /// Certificate serial, hex.
    pub serial: Option<String>,
    /// Remote address.
    pub remote: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Pool handle bytes, hex (a handle may hold any bytes).
    pub pool: Option<String>,
    /// PE ID.
    pub pe_id: Option<i64>,
    /// Action.
    pub action: String,
    /// Outcome.
    pub outcome: String,
    /// Detail.
    pub detail: Option<String>,
    /// The previous row's hash, hex.
    pub prev_hash: String,
    /// This row's hash, hex.
    pub hash: String,
}

/// An archive's anchor in the live database: what was archived where.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Anchor {
    /// The first archived row.
    pub first_id: u64,
    /// The last archived row.
    pub last_id: u64,
    /// The hash row `first_id` chains from.
    pub first_prev_hash: Hash,
    /// The hash of row `last_id`: the live log continues from it.
    pub last_hash: Hash,
    /// When it was archived, unix ms.
    pub time_ms: u64,
    /// The archive file, as written.
    pub file: String,
    /// SHA-256 of the file's bytes.
    pub sha256: Hash,
}

impl Anchor {
    /// The file name part of [`Anchor::file`].
    pub fn name(&self) -> &str {
        Path::new(&self.file)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(&self.file)
    }
}

#[derive(sqlx::FromRow)]
struct AnchorRow {
    first_id: i64,
    last_id: i64,
    first_prev_hash: Vec<u8>,
    last_hash: Vec<u8>,
    time_ms: i64,
    file: String,
    sha256: Vec<u8>,
}

impl TryFrom<AnchorRow> for Anchor {
    type Error = Error;
    fn try_from(r: AnchorRow) -> Result<Self> {
        let corrupt = |reason| Error::Corrupt {
            table: "audit_archives",
            id: r.last_id.to_string(),
            reason,
        };
        let hash = |bytes: &[u8]| Hash::try_from(bytes).map_err(|_| corrupt("hash not 32 bytes"));
        Ok(Self {
            first_id: u64::try_from(r.first_id).map_err(|_| corrupt("negative id"))?,
            last_id: u64::try_from(r.last_id).map_err(|_| corrupt("negative id"))?,
            first_prev_hash: hash(&r.first_prev_hash)?,
            last_hash: hash(&r.last_hash)?,
            time_ms: u64::try_from(r.time_ms).map_err(|_| corrupt("negative time"))?,
            sha256: hash(&r.sha256)?,
            file: r.file,
        })
    }
}

/// Every anchor of `chain`, oldest first (one per archive: a small table).
pub async fn anchors<C: Conn + ?Sized>(conn: &mut C, chain: &Chain) -> Result<Vec<Anchor>> {
    let rows: Vec<AnchorRow> = with_conn!(
        conn,
        "SELECT first_id, last_id, first_prev_hash, last_hash, time_ms, file, sha256
         FROM audit_archives WHERE chain = ?1 ORDER BY last_id",
        |c, sql| sqlx::query_as(sql).bind(chain.key()).fetch_all(c).await
    )?;
    rows.into_iter().map(Anchor::try_from).collect()
}

/// Every anchor of every chain, with its chain's stored key, oldest first.
pub(super) async fn all_anchors<C: Conn + ?Sized>(conn: &mut C) -> Result<Vec<(String, Anchor)>> {
    let rows: Vec<(String, AnchorRow)> = with_conn!(
        conn,
        "SELECT chain, first_id, last_id, first_prev_hash, last_hash, time_ms, file, sha256
         FROM audit_archives ORDER BY last_id",
        |c, sql| sqlx::query_as(sql).fetch_all(c).await
    )?
    .into_iter()
    .map(|r: ChainAnchorRow| (r.chain, r.anchor))
    .collect();
    rows.into_iter()
        .map(|(chain, row)| Ok((chain, Anchor::try_from(row)?)))
        .collect()
}

#[derive(sqlx::FromRow)]
struct ChainAnchorRow {
    chain: String,
    #[sqlx(flatten)]
    anchor: AnchorRow,
}

/// The latest anchor of `chain`: where its live rows start. `None` before its first
/// archive.
pub async fn latest_anchor<C: Conn + ?Sized>(
    conn: &mut C,
    chain: &Chain,
) -> Result<Option<Anchor>> {
    let row: Option<AnchorRow> = with_conn!(
        conn,
        "SELECT first_id, last_id, first_prev_hash, last_hash, time_ms, file, sha256
         FROM audit_archives WHERE chain = ?1 ORDER BY last_id DESC LIMIT 1",
        |c, sql| sqlx::query_as(sql)
            .bind(chain.key())
            .fetch_optional(c)
            .await
    )?;
    row.map(Anchor::try_from).transpose()
}

/// Where an archive ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The rows before the first row stamped at or after this time (unix ms). Times are
    /// the callers' clocks and need not grow with the id, so the cut is at the first row
    /// that is not older: the archive stays a prefix.
    Before(u64),
    /// The rows with an id below this one.
    BeforeId(u64),
}

/// Where [`archive`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// This file, which must not exist.
    File(PathBuf),
    /// A file named [`archive_name`] in this directory (created, mode 0700, if missing):
    /// the admin API's `<data>/audit-archive`.
    Dir(PathBuf),
}

/// The name of the archive of rows `first..=last` in a [`Target::Dir`].
pub fn archive_name(first: u64, last: u64) -> String {
    format!("audit-{first}-{last}.jsonl.gz")
}

/// Whether `name` is one [`archive_name`] makes (a plain file name: safe to join to the
/// archive directory).
pub fn is_archive_name(name: &str) -> bool {
    let Some(range) = name
        .strip_prefix("audit-")
        .and_then(|n| n.strip_suffix(".jsonl.gz"))
    else {
        return false;
    };
    let Some((first, last)) = range.split_once('-') else {
        return false;
    };
    let number = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    number(first) && number(last)
}

/// What [`archive`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Archived {
    /// The anchor it wrote (range, hashes, file, SHA-256).
    pub anchor: Anchor,
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The id of the audit record of the archive operation, in the live log.
    pub record_id: u64,
}

/// Parses an RFC 3339 time (`2026-12-01T00:00:00Z`) into unix ms.
pub fn parse_time(text: &str) -> Result<u64> {
    let invalid = |reason| Error::Invalid {
        what: "time",
        reason,
    };
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| invalid("not an RFC 3339 time such as 2026-12-01T00:00:00Z"))?;
    // Before 1970 is a valid time before every record: the cut then finds nothing to
    // archive (a conflict with the log, not bad input).
    Ok(u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

/// Moves the rows before `cut` (after the previous archive) into an archive at `target`
/// (see the module docs), and appends `record` (its detail extended with the range, the
/// file and its SHA-256) to the live log in the same transaction as the deletion.
/// `server` names the registrar in the header. `now_ms`: the time of the anchor and the
/// header; a [`Cut::Before`] later than it is refused.
///
/// Safe next to a running [`super::AuditLog`]: it only appends at the head, and the
/// deletion takes the write lock once, briefly. Refused with nothing changed: a cut in
/// the future or past the head, nothing to archive, a file that exists, a broken chain.
pub async fn archive(
    store: &Store,
    chain: &Chain,
    target: &Target,
    cut: Cut,
    server: Option<&SpiffeId>,
    mut record: Record,
    now_ms: u64,
) -> Result<Archived> {
    record.check()?;
    // Archives keep the local chain's format (contiguous ids, version 1 hashes): a
    // registrar's chain in a shared store is not archived yet (docs/STORE.md).
    if *chain != Chain::Local {
        return Err(Error::Conflict {
            what: "archive",
            reason: "a registrar's audit chain in a shared store is not archived yet \
                     (docs/STORE.md, \"The audit log in a fleet\")",
        });
    }
    if let Target::File(path) = target {
        refuse_existing(path)?;
    }
    let mut conn = store.acquire().await?;
    let previous = latest_anchor(&mut conn, chain).await?;
    if let Some(previous) = &previous {
        // Rows of the previous archive left by an interrupted deletion.
        purge_archived(store, previous.last_id).await?;
    }
    let first = previous.as_ref().map_or(1, |a| a.last_id + 1);
    let last = cut_end(&mut conn, first, cut, now_ms).await?;
    let path = match target {
        Target::File(path) => absolute(path)?,
        Target::Dir(dir) => {
            crate::db::create_private_dir(dir)?;
            absolute(dir)?.join(archive_name(first, last))
        }
    };
    refuse_existing(&path)?;
    let header = ArchiveHeader {
        format: ARCHIVE_FORMAT.to_owned(),
        trust_domain: server.map(|s| s.trust_domain().to_string()),
        server: server.map(|s| s.as_str().to_owned()),
        first_id: first,
        last_id: last,
        records: last - first + 1,
        prev_hash: hex::encode(previous.as_ref().map_or(GENESIS, |a| a.last_hash)),
        last_hash: hex::encode(row_hash(&mut conn, last).await?),
        created_ms: now_ms,
    };
    write_file(&mut conn, &path, &header).await?;
    drop(conn);
    // Read back what reached the disk: the rows are deleted only if it verifies.
    let summary = match verify_archive(&path, None) {
        Ok(s) if s.header == header => s,
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
            return Err(archive_error(
                &path,
                "reads back different from what was written",
            ));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    let anchor = Anchor {
        first_id: first,
        last_id: last,
        first_prev_hash: previous.as_ref().map_or(GENESIS, |a| a.last_hash),
        last_hash: summary.last_hash,
        time_ms: now_ms,
        file: path.display().to_string(),
        sha256: summary.sha256,
    };
    let detail = format!(
        "archived records {first}-{last} to {} (sha256 {})",
        anchor.file,
        hex::encode(anchor.sha256)
    );
    record.detail = Some(match record.detail.take() {
        Some(d) => format!("{d}: {detail}"),
        None => detail,
    });
    match commit(store, &anchor, previous.as_ref(), record).await {
        Ok(record_id) => Ok(Archived {
            anchor,
            bytes: summary.bytes,
            path,
            record_id,
        }),
        Err(e) => {
            // The rows are still in the live log: the file is only a copy.
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// `path` with its directory made absolute (the anchor names the file wherever the
/// registrar or a verifier runs from): a directory that does not exist is an error.
fn absolute(path: &Path) -> Result<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = dir.canonicalize().map_err(io_error(dir))?;
    match path.file_name() {
        Some(name) => Ok(dir.join(name)),
        None => Err(archive_error(path, "not a file name")),
    }
}

/// An archive never replaces a file (the final link also refuses to).
fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        return Err(Error::AlreadyExists {
            what: "archive file",
            key: path.display().to_string(),
        });
    }
    Ok(())
}

/// The last row of an archive starting at `first` and ending before `cut`.
async fn cut_end<C: Conn + ?Sized>(conn: &mut C, first: u64, cut: Cut, now_ms: u64) -> Result<u64> {
    let nothing = Error::Conflict {
        what: "archive",
        reason: "nothing to archive: no record before the cut that is not archived already",
    };
    let (head_id, _) = head(&mut *conn, &Chain::Local).await?;
    let head_id = u64::try_from(head_id).unwrap_or(0);
    let end = match cut {
        Cut::Before(ms) => {
            if ms > now_ms {
                return Err(Error::Conflict {
                    what: "before",
                    reason: "is in the future: records not yet written cannot be archived",
                });
            }
            let ms = crate::db::ms_to_i64(ms, "before")?;
            let at: Option<(i64,)> = with_conn!(
                conn,
                "SELECT id FROM audit_events WHERE chain = '' AND id >= ?1 AND time_ms >= ?2
                 ORDER BY id LIMIT 1",
                |c, sql| sqlx::query_as(sql)
                    .bind(i64::try_from(first).unwrap_or(i64::MAX))
                    .bind(ms)
                    .fetch_optional(c)
                    .await
            )?;
            match at {
                Some((id,)) => u64::try_from(id).unwrap_or(0).saturating_sub(1),
                None => head_id,
            }
        }
        Cut::BeforeId(id) => {
            if id > head_id + 1 {
                return Err(Error::Conflict {
                    what: "before-seq",
                    reason: "is beyond the head of the log",
                });
            }
            id.saturating_sub(1)
        }
    };
    if end < first {
        return Err(nothing);
    }
    Ok(end)
}

async fn row_hash<C: Conn + ?Sized>(conn: &mut C, id: u64) -> Result<Hash> {
    let (hash,): (Vec<u8>,) = with_conn!(
        conn,
        "SELECT hash FROM audit_events WHERE chain = '' AND id = ?1",
        |c, sql| sqlx::query_as(sql)
            .bind(i64::try_from(id).unwrap_or(i64::MAX))
            .fetch_one(c)
            .await
    )?;
    Hash::try_from(hash.as_slice()).map_err(|_| Error::Corrupt {
        table: "audit_events",
        id: id.to_string(),
        reason: "hash is not 32 bytes",
    })
}

fn archive_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Archive {
        file: path.display().to_string(),
        reason: reason.into(),
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| archive_error(path, e.to_string())
}

/// Writes the header and rows `header.first_id..=last_id` to a temporary file beside
/// `path`, checking the chain as it goes, then makes it durable and links it to `path`.
async fn write_file<C: Conn + ?Sized>(
    conn: &mut C,
    path: &Path,
    header: &ArchiveHeader,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| archive_error(path, "not a file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = write_rows(conn, &tmp, header).await.and_then(|()| {
        // A hard link fails if `path` exists (a rename would replace it).
        std::fs::hard_link(&tmp, path).map_err(io_error(path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&dir))
    });
    let _ = std::fs::remove_file(&tmp);
    result
}

async fn write_rows<C: Conn + ?Sized>(
    conn: &mut C,
    tmp: &Path,
    header: &ArchiveHeader,
) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    // Audit records name identities and addresses: readable by the registrar's user only,
    // like the database.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(tmp).map_err(io_error(tmp))?;
    let mut out = GzEncoder::new(BufWriter::new(file), Compression::default());
    let io = io_error(tmp);
    let mut line = serde_json::to_vec(header).map_err(|e| archive_error(tmp, e.to_string()))?;
    line.push(b'\n');
    out.write_all(&line).map_err(&io)?;
    let mut prev = unhex32(&header.prev_hash).unwrap_or(GENESIS);
    let mut next = header.first_id;
    while next <= header.last_id {
        let rows: Vec<ChainRow> = with_conn!(
            conn,
            "SELECT id, chain, time_ms, actor, serial, remote, namespace, pool, pe_id,
                 action, outcome, detail, prev_hash, hash
             FROM audit_events WHERE chain = '' AND id >= ?1 AND id <= ?2
             ORDER BY id LIMIT ?3",
            |c, sql| sqlx::query_as(sql)
                .bind(i64::try_from(next).unwrap_or(i64::MAX))
                .bind(i64::try_from(header.last_id).unwrap_or(i64::MAX))
                .bind(PAGE)
                .fetch_all(c)
                .await
        )?;
        if rows.is_empty() {
            return Err(broken(next, "missing"));
        }
        for row in rows {
            if u64::try_from(row.id).ok() != Some(next) {
                return Err(broken(next, "missing (id gap)"));
            }
            let hash = chain_hash(&prev, "", row.id, &row.columns);
            if row.prev_hash != prev || row.hash != hash {
                return Err(broken(next, "breaks the chain"));
            }
            prev = hash;
            let mut line = serde_json::to_vec(&ArchiveLine::from(row))
                .map_err(|e| archive_error(tmp, e.to_string()))?;
            line.push(b'\n');
            out.write_all(&line).map_err(&io)?;
            next += 1;
        }
    }
    let file = out
        .finish()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(&io)?;
    file.sync_all().map_err(&io)
}

/// The live log's chain is broken at `id`: nothing is archived (run `audit verify`).
fn broken(id: u64, reason: &'static str) -> Error {
    Error::Corrupt {
        table: "audit_events",
        id: id.to_string(),
        reason,
    }
}

impl From<ChainRow> for ArchiveLine {
    fn from(r: ChainRow) -> Self {
        let c = r.columns;
        Self {
            id: r.id,
            time_ms: c.time_ms,
            actor: c.actor,
            serial: c.serial,
            remote: c.remote,
            namespace: c.namespace,
            pool: c.pool.as_deref().map(hex::encode),
            pe_id: c.pe_id,
            action: c.action,
            outcome: c.outcome,
            detail: c.detail,
            prev_hash: hex::encode(&r.prev_hash),
            hash: hex::encode(&r.hash),
        }
    }
}

/// The anchor, the deletion and the audit record, in one transaction. Returns the
/// record's id.
async fn commit(
    store: &Store,
    anchor: &Anchor,
    previous: Option<&Anchor>,
    record: Record,
) -> Result<u64> {
    let mut tx = store.begin().await?;
    // Another archive since this one started would make the file overlap it.
    if latest_anchor(&mut tx, &Chain::Local)
        .await?
        .as_ref()
        .map(|a| a.last_id)
        != previous.map(|a| a.last_id)
    {
        return Err(Error::Invalid {
            what: "archive",
            reason: "another archive ran at the same time; nothing changed",
        });
    }
    let id = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    // The insert trigger checks the anchor against the rows; the delete trigger then lets
    // exactly the rows up to it go.
    with_conn!(
        &mut tx,
        "INSERT INTO audit_archives (first_id, last_id, first_prev_hash, last_hash, time_ms,
             file, sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        |c, sql| sqlx::query(sql)
            .bind(id(anchor.first_id))
            .bind(id(anchor.last_id))
            .bind(anchor.first_prev_hash.to_vec())
            .bind(anchor.last_hash.to_vec())
            .bind(id(anchor.time_ms))
            .bind(&anchor.file)
            .bind(anchor.sha256.to_vec())
            .execute(c)
            .await
            .map(drop)
    )?;
    delete_chunk(&mut tx, anchor.last_id).await?;
    let ids = super::append_in(&mut tx, &Chain::Local, &[record]).await?;
    tx.commit().await?;
    // Committed: the archive is made. What is left of the prefix goes in chunks; should
    // this stop (a crash), verification already starts after the anchor, and the next
    // archive finishes the deletion first.
    purge_archived(store, anchor.last_id).await?;
    Ok(ids.first().copied().unwrap_or_default())
}

/// Rows deleted per transaction. The registrar's audit writer waits for SQLite's write
/// lock at most its busy timeout (5 s); a whole prefix of a million rows in one
/// transaction would hold the lock for seconds. Measured with `benches/audit_growth.rs`:
/// a concurrent writer waits for one chunk at most (docs/SECURITY.md).
pub const DELETE_CHUNK: i64 = 5000;

/// Deletes up to [`DELETE_CHUNK`] of the oldest rows with an id up to `last_id` (the
/// delete trigger allows only rows an anchor covers). Returns how many.
async fn delete_chunk<C: Conn + ?Sized>(conn: &mut C, last_id: u64) -> Result<u64> {
    let done = with_conn!(
        conn,
        "DELETE FROM audit_events WHERE id IN
             (SELECT id FROM audit_events WHERE chain = '' AND id <= ?1 ORDER BY id LIMIT ?2)",
        |c, sql| sqlx::query(sql)
            .bind(i64::try_from(last_id).unwrap_or(i64::MAX))
            .bind(DELETE_CHUNK)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    )?;
    Ok(done)
}

/// Deletes the archived rows up to `last_id` still in the live log, a chunk per
/// transaction, letting other writers in between.
async fn purge_archived(store: &Store, last_id: u64) -> Result<()> {
    loop {
        let mut tx = store.begin().await?;
        let deleted = delete_chunk(&mut tx, last_id).await?;
        tx.commit().await?;
        if deleted == 0 {
            return Ok(());
        }
        // The registrar's writer polls for the lock; give it a turn.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Verification of archive files

/// What [`verify_archive`] found in an intact archive.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiveSummary {
    /// The file.
    pub path: PathBuf,
    /// Its header.
    pub header: ArchiveHeader,
    /// The hash the first row chains from.
    pub prev_hash: Hash,
    /// The last row's hash.
    pub last_hash: Hash,
    /// SHA-256 of the file's bytes.
    pub sha256: Hash,
    /// The file's size in bytes.
    pub bytes: u64,
    /// The hash of the row asked for with `probe`, if the archive holds it.
    pub probed: Option<Hash>,
}

/// Hashes what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Reads and checks an archive on its own: the header, every row's hash and link, ids
/// contiguous from `first_id` to `last_id`, a first archive chaining from the genesis, the
/// last hash the header's. `probe`: also return the hash of that row. Any fault is
/// [`Error::Archive`] naming the line.
pub fn verify_archive(path: &Path, probe: Option<u64>) -> Result<ArchiveSummary> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut hashing = Hashing {
        inner: BufReader::new(file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut reader = BufReader::new(GzDecoder::new(&mut hashing));
    let mut buf = String::new();
    let mut read_line = |n: u64, buf: &mut String| -> Result<bool> {
        buf.clear();
        let len = (&mut reader)
            .take(MAX_LINE + 1)
            .read_line(buf)
            .map_err(|e| archive_error(path, format!("line {n}: {e}")))?;
        if len as u64 > MAX_LINE {
            return Err(archive_error(
                path,
                format!("line {n}: longer than {MAX_LINE} bytes"),
            ));
        }
        Ok(len > 0)
    };
    if !read_line(1, &mut buf)? {
        return Err(archive_error(path, "empty: no header line"));
    }
    let header: ArchiveHeader = serde_json::from_str(&buf)
        .map_err(|e| archive_error(path, format!("line 1 is not an archive header: {e}")))?;
    if header.format != ARCHIVE_FORMAT {
        return Err(archive_error(
            path,
            format!("format {:?}, not {ARCHIVE_FORMAT}", header.format),
        ));
    }
    let prev_hash = unhex32(&header.prev_hash)
        .ok_or_else(|| archive_error(path, "header: prev_hash is not 32 bytes of hex"))?;
    let last_hash = unhex32(&header.last_hash)
        .ok_or_else(|| archive_error(path, "header: last_hash is not 32 bytes of hex"))?;
    // Record ids are SQLite rowids (at most i64::MAX): a larger id is no archive of ours,
    // and bounding it keeps `last_id + 1` below from overflowing.
    if header.first_id == 0
        || header.last_id < header.first_id
        || header.last_id > i64::MAX as u64
        || header.records != header.last_id - header.first_id + 1
    {
        return Err(archive_error(
            path,
            "header: the range and the record count disagree",
        ));
    }
    if header.first_id == 1 && prev_hash != GENESIS {
        return Err(archive_error(
            path,
            "header: record 1 chains from the genesis (zeros)",
        ));
    }
    let mut prev = prev_hash;
    let mut next = header.first_id;
    let mut probed = None;
    let mut n = 1;
    loop {
        n += 1;
        if !read_line(n, &mut buf)? {
            break;
        }
        let bad = |reason: &str| archive_error(path, format!("line {n}: {reason}"));
        let line: ArchiveLine =
            serde_json::from_str(&buf).map_err(|e| bad(&format!("not an archived record: {e}")))?;
        if next > header.last_id || u64::try_from(line.id).ok() != Some(next) {
            return Err(bad(&format!(
                "record {} where record {next} belongs",
                line.id
            )));
        }
        let (id, stated_prev, stated_hash, columns) = line
            .into_parts()
            .ok_or_else(|| bad("a hash or the pool is not hex"))?;
        if stated_prev != prev {
            return Err(bad(&format!(
                "record {id}: prev_hash does not match the previous record's hash"
            )));
        }
        let hash = chain_hash(&prev, "", id, &columns);
        if stated_hash != hash {
            return Err(bad(&format!(
                "record {id}: hash does not match the record's contents"
            )));
        }
        if probe == Some(next) {
            probed = Some(hash);
        }
        prev = hash;
        next += 1;
    }
    drop(reader);
    if next != header.last_id + 1 {
        return Err(archive_error(
            path,
            format!(
                "ends at record {}, the header says {}",
                next - 1,
                header.last_id
            ),
        ));
    }
    if prev != last_hash {
        return Err(archive_error(
            path,
            "the last record's hash is not the header's",
        ));
    }
    // Whatever follows the gzip member counts in the file's digest too.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io_error(path))?;
    Ok(ArchiveSummary {
        path: path.to_owned(),
        header,
        prev_hash,
        last_hash,
        sha256: hashing.hasher.finalize().into(),
        bytes: hashing.bytes,
        probed,
    })
}

impl ArchiveLine {
    /// Id, prev_hash, hash and the hashed columns; `None` if a hex field is not hex.
    fn into_parts(self) -> Option<(i64, Hash, Hash, Columns)> {
        let pool = match self.pool {
            Some(p) => Some(hex::decode(&p).ok()?),
            None => None,
        };
        Some((
            self.id,
            unhex32(&self.prev_hash)?,
            unhex32(&self.hash)?,
            Columns {
                time_ms: self.time_ms,
                actor: self.actor,
                serial: self.serial,
                remote: self.remote,
                namespace: self.namespace,
                pool,
                pe_id: self.pe_id,
                action: self.action,
                outcome: self.outcome,
                detail: self.detail,
            },
        ))
    }
}

fn unhex32(s: &str) -> Option<Hash> {
    hex::decode(s).ok()?.try_into().ok()
}

/// What [`check_links`] found when the archives given and the anchors form one chain.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Links {
    /// The first row the archives given cover (1: the whole chain from the genesis).
    pub from_id: u64,
    /// Archives whose file differs from the one archived (recompressed or rewritten)
    /// although its records verify and link: their names.
    pub sha256_differs: Vec<String>,
}

/// Checks that verified `archives` (any order) and the stored `anchors` form one chain
/// ending where the live log starts: each archive is an anchor's range with its hashes,
/// each links to the next, and the last one to the latest anchor. The archives given may
/// start at any archive (older ones then go unchecked: [`Links::from_id`]). `Err`: the
/// first link that fails, for the operator.
pub fn check_links(
    archives: &[ArchiveSummary],
    anchors: &[Anchor],
) -> std::result::Result<Links, String> {
    let mut sorted: Vec<&ArchiveSummary> = archives.iter().collect();
    sorted.sort_by_key(|a| a.header.first_id);
    let Some(latest) = anchors.last() else {
        return Err("no archive was made from this log (no anchor)".to_owned());
    };
    let mut sha256_differs = Vec::new();
    for (i, a) in sorted.iter().enumerate() {
        let name = a.path.display();
        let h = &a.header;
        let Some(anchor) = anchors.iter().find(|x| x.last_id == h.last_id) else {
            return Err(format!(
                "{name}: records {}-{} are not an archive of this log (no anchor ends at record {})",
                h.first_id, h.last_id, h.last_id
            ));
        };
        if anchor.first_id != h.first_id
            || anchor.first_prev_hash != a.prev_hash
            || anchor.last_hash != a.last_hash
        {
            return Err(format!(
                "{name}: does not match the anchor of records {}-{} (archived to {})",
                anchor.first_id, anchor.last_id, anchor.file
            ));
        }
        if anchor.sha256 != a.sha256 {
            sha256_differs.push(name.to_string());
        }
        let (next_id, next_prev, next_name) = match sorted.get(i + 1) {
            Some(n) => (n.header.first_id, n.prev_hash, n.path.display().to_string()),
            None => (
                latest.last_id + 1,
                latest.last_hash,
                "the live log".to_owned(),
            ),
        };
        if next_id != h.last_id + 1 {
            return Err(format!(
                "GAP: {name} ends at record {}, {next_name} starts at record {next_id}: \
                 the archive of records {}-{} is missing",
                h.last_id,
                h.last_id + 1,
                next_id.saturating_sub(1)
            ));
        }
        if next_prev != a.last_hash {
            return Err(format!(
                "{next_name} does not chain from {name} (record {next_id})"
            ));
        }
    }
    Ok(Links {
        from_id: sorted
            .first()
            .map_or(latest.last_id + 1, |a| a.header.first_id),
        sha256_differs,
    })
}

/// What [`check_archives`] found when every file verified and they link.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiveCheck {
    /// Each file, as verified, in the order given.
    pub archives: Vec<ArchiveSummary>,
    /// How they link to each other and to the live log.
    pub links: Links,
}

impl ArchiveCheck {
    /// The hash of row `id` if one of the archives holds it and it was the `probe`.
    pub fn probed(&self) -> Option<Hash> {
        self.archives.iter().find_map(|a| a.probed)
    }
}

/// `enrpd audit verify --archive FILE…`: verifies each file ([`verify_archive`], also
/// returning the hash of row `probe`: a checkpoint's) and that they link to the anchors
/// and the live log ([`check_links`]). The outer error is the database's; the inner one
/// the first finding, for the operator.
pub async fn check_archives<C: Conn + ?Sized>(
    conn: &mut C,
    files: &[PathBuf],
    probe: Option<u64>,
) -> Result<std::result::Result<ArchiveCheck, String>> {
    let anchors = anchors(conn, &Chain::Local).await?;
    let mut archives = Vec::with_capacity(files.len());
    for file in files {
        match verify_archive(file, probe) {
            Ok(summary) => archives.push(summary),
            Err(e @ Error::Archive { .. }) => return Ok(Err(e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok(check_links(&archives, &anchors).map(|links| ArchiveCheck { archives, links }))
}
