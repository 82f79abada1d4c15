//! Audit retention (issue 18 item 5; docs/SECURITY.md "Audit retention"): a prefix of the
//! chain moves into a compressed archive that verifies on its own, and the live log keeps
//! the link.
//!
//! [`archive`] writes one chain's rows `first..=last` (its rows after its previous
//! archive, up to the cut) as gzip'd JSON Lines: a header line ([`ArchiveHeader`]: format,
//! chain, server, range, the hash the first row chains from, the last row's hash), then
//! one line per row with every column the hash covers ([`ArchiveLine`]), readable with
//! `zcat FILE | jq`. Two formats (docs/STORE.md "Archives in a fleet"):
//! [`ARCHIVE_FORMAT`] for the local chain (contiguous ids, version-1 hashes, as every
//! archive before fleets) and [`ARCHIVE_FORMAT_CHAIN`] for a registrar's chain in a shared
//! store (the chain named in the header, ids increasing with gaps: the other registrars'
//! rows, version-2 hashes); [`verify_archive`] reads both. The file is
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

use super::{Chain, ChainRow, Columns, GENESIS, Hash, Record, chain_hash};
use crate::db::{Conn, Error, Result, Store, with_conn};
use identity::SpiffeId;

/// The format tag of an archive of the local chain (and of every archive made before
/// fleets): no `chain` in the header, ids contiguous.
pub const ARCHIVE_FORMAT: &str = "rsp-audit-archive/1";

/// The format tag of an archive of a registrar's chain in a shared store: the header's
/// `chain` names it (the hashes cover it), ids increase with gaps.
pub const ARCHIVE_FORMAT_CHAIN: &str = "rsp-audit-archive/2";

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
    /// [`ARCHIVE_FORMAT`] or [`ARCHIVE_FORMAT_CHAIN`].
    pub format: String,
    /// The chain's key, the registrar's SPIFFE ID ([`ARCHIVE_FORMAT_CHAIN`]); absent in
    /// an archive of the local chain, so that those stay as they were written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// The trust domain of the registrar whose log this is.
    pub trust_domain: Option<String>,
    /// The registrar's SPIFFE ID.
    pub server: Option<String>,
    /// The first row's id.
    pub first_id: u64,
    /// The last row's id.
    pub last_id: u64,
    /// Rows in the archive (`last_id - first_id + 1` on the local chain; fewer on a
    /// registrar's, whose ids have gaps).
    pub records: u64,
    /// The hash the first row chains from (hex; the chain's genesis for its first
    /// archive: 64 zeros on the local chain).
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
    /// Records archived (on a registrar's chain fewer than the range: the other
    /// registrars' rows are not its).
    pub records: u64,
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

/// Moves `chain`'s rows before `cut` (after its previous archive) into an archive at
/// `target` (see the module docs), and appends `record` (its detail extended with the
/// range, the file and its SHA-256) to `chain` in the same transaction as the deletion.
/// Other chains' rows are neither read nor deleted. `server` names the registrar in the
/// header. `now_ms`: the time of the anchor and the header; a [`Cut::Before`] later than
/// it is refused.
///
/// Safe next to running [`super::AuditLog`]s (this registrar's, and the other registrars'
/// of a shared store): it only appends at the head, and the deletion takes the write lock
/// once, briefly. Refused with nothing changed: a cut in the future or past the log's
/// head, nothing to archive, a file that exists, a broken chain.
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
    if let Target::File(path) = target {
        refuse_existing(path)?;
    }
    let mut conn = store.acquire().await?;
    let previous = latest_anchor(&mut conn, chain).await?;
    if let Some(previous) = &previous {
        // Rows of the previous archive left by an interrupted deletion.
        purge_archived(store, chain, previous.last_id).await?;
    }
    let after = previous.as_ref().map_or(0, |a| a.last_id);
    let (first, last, records) = cut_range(&mut conn, chain, after, cut, now_ms).await?;
    let path = match target {
        Target::File(path) => absolute(path)?,
        Target::Dir(dir) => {
            crate::db::create_private_dir(dir)?;
            absolute(dir)?.join(archive_name(first, last))
        }
    };
    refuse_existing(&path)?;
    let first_prev_hash = previous
        .as_ref()
        .map_or_else(|| chain.genesis(), |a| a.last_hash);
    let header = ArchiveHeader {
        format: match chain {
            Chain::Local => ARCHIVE_FORMAT,
            Chain::Registrar(_) => ARCHIVE_FORMAT_CHAIN,
        }
        .to_owned(),
        chain: chain.registrar().map(|id| id.as_str().to_owned()),
        trust_domain: server.map(|s| s.trust_domain().to_string()),
        server: server.map(|s| s.as_str().to_owned()),
        first_id: first,
        last_id: last,
        records,
        prev_hash: hex::encode(first_prev_hash),
        last_hash: hex::encode(row_hash(&mut conn, chain, last).await?),
        created_ms: now_ms,
    };
    write_file(&mut conn, chain, &path, &header).await?;
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
        first_prev_hash,
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
    match commit(store, chain, &anchor, previous.as_ref(), record).await {
        Ok(record_id) => Ok(Archived {
            anchor,
            records,
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

/// The range of `chain`'s next archive: its rows after `after` (its previous archive's
/// last row) and before `cut`. Returns the first and last row ids and how many rows of
/// the chain lie between them (on the local chain, `last - first + 1`; on a registrar's
/// chain the other registrars' rows fill the gaps).
async fn cut_range<C: Conn + ?Sized>(
    conn: &mut C,
    chain: &Chain,
    after: u64,
    cut: Cut,
    now_ms: u64,
) -> Result<(u64, u64, u64)> {
    let nothing = Error::Conflict {
        what: "archive",
        reason: "nothing to archive: no record before the cut that is not archived already",
    };
    // The local chain's ids are contiguous: its next archive starts right after the last
    // (the anchor trigger requires it). A registrar's starts at its next row, whatever
    // other chains wrote in between.
    let from = i64::try_from(after).unwrap_or(i64::MAX).saturating_add(1);
    // Rows not yet written cannot be archived: a cut past the log's next id (over every
    // chain: a registrar's sequence numbers are the table's) is refused.
    let (next_id, _) = super::append_point(&mut *conn, chain).await?;
    let below = match cut {
        Cut::Before(ms) => {
            if ms > now_ms {
                return Err(Error::Conflict {
                    what: "before",
                    reason: "is in the future: records not yet written cannot be archived",
                });
            }
            let ms = crate::db::ms_to_i64(ms, "before")?;
            // Times are the callers' clocks: the archive ends before the chain's first
            // row at or after the time, so that it stays a prefix.
            let at: (Option<i64>,) = with_conn!(
                conn,
                "SELECT min(id) FROM audit_events WHERE chain = ?1 AND id >= ?2 AND time_ms >= ?3",
                |c, sql| sqlx::query_as(sql)
                    .bind(chain.key())
                    .bind(from)
                    .bind(ms)
                    .fetch_one(c)
                    .await
            )?;
            at.0.unwrap_or(next_id)
        }
        Cut::BeforeId(id) => {
            if id > u64::try_from(next_id).unwrap_or(0) {
                return Err(Error::Conflict {
                    what: "before-seq",
                    reason: "is beyond the head of the log",
                });
            }
            i64::try_from(id).unwrap_or(i64::MAX)
        }
    };
    let (first, last, rows): (Option<i64>, Option<i64>, i64) = with_conn!(
        conn,
        "SELECT min(id), max(id), count(*) FROM audit_events
         WHERE chain = ?1 AND id >= ?2 AND id < ?3",
        |c, sql| sqlx::query_as(sql)
            .bind(chain.key())
            .bind(from)
            .bind(below)
            .fetch_one(c)
            .await
    )?;
    let (Some(first), Some(last)) = (first, last) else {
        return Err(nothing);
    };
    let id = |n: i64| u64::try_from(n).unwrap_or(0);
    let (first, last) = match chain {
        // A row missing at the start of the local chain is found by `write_rows`.
        Chain::Local => (after + 1, id(last)),
        Chain::Registrar(_) => (id(first), id(last)),
    };
    let records = match chain {
        Chain::Local => last - first + 1,
        Chain::Registrar(_) => id(rows),
    };
    Ok((first, last, records))
}

async fn row_hash<C: Conn + ?Sized>(conn: &mut C, chain: &Chain, id: u64) -> Result<Hash> {
    let (hash,): (Vec<u8>,) = with_conn!(
        conn,
        "SELECT hash FROM audit_events WHERE chain = ?1 AND id = ?2",
        |c, sql| sqlx::query_as(sql)
            .bind(chain.key())
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

/// Writes the header and `chain`'s rows `header.first_id..=last_id` to a temporary file
/// beside `path`, checking the chain as it goes, then makes it durable and links it to
/// `path`.
async fn write_file<C: Conn + ?Sized>(
    conn: &mut C,
    chain: &Chain,
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
    let result = write_rows(conn, chain, &tmp, header).await.and_then(|()| {
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
    chain: &Chain,
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
    let key = chain.key();
    let mut prev = unhex32(&header.prev_hash).unwrap_or(GENESIS);
    let mut next = header.first_id;
    let mut written = 0_u64;
    while next <= header.last_id {
        let rows: Vec<ChainRow> = with_conn!(
            conn,
            "SELECT id, chain, time_ms, actor, serial, remote, namespace, pool, pe_id,
                 action, outcome, detail, prev_hash, hash
             FROM audit_events WHERE chain = ?4 AND id >= ?1 AND id <= ?2
             ORDER BY id LIMIT ?3",
            |c, sql| sqlx::query_as(sql)
                .bind(i64::try_from(next).unwrap_or(i64::MAX))
                .bind(i64::try_from(header.last_id).unwrap_or(i64::MAX))
                .bind(PAGE)
                .bind(key)
                .fetch_all(c)
                .await
        )?;
        if rows.is_empty() {
            return Err(broken(next, "missing"));
        }
        for row in rows {
            let id = u64::try_from(row.id).unwrap_or(0);
            // Only the local chain's ids are contiguous; a registrar's has the others'
            // rows in between.
            let in_place = match chain {
                Chain::Local => id == next,
                Chain::Registrar(_) => id >= next && (written > 0 || id == header.first_id),
            };
            if !in_place {
                return Err(broken(next, "missing (id gap)"));
            }
            let hash = chain_hash(&prev, key, row.id, &row.columns);
            if row.prev_hash != prev || row.hash != hash {
                return Err(broken(next, "breaks the chain"));
            }
            prev = hash;
            let mut line = serde_json::to_vec(&ArchiveLine::from(row))
                .map_err(|e| archive_error(tmp, e.to_string()))?;
            line.push(b'\n');
            out.write_all(&line).map_err(&io)?;
            next = id + 1;
            written += 1;
        }
    }
    // Rows deleted meanwhile (another archive of this chain) would leave fewer.
    if written != header.records {
        return Err(broken(header.last_id, "changed while it was archived"));
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
    chain: &Chain,
    anchor: &Anchor,
    previous: Option<&Anchor>,
    record: Record,
) -> Result<u64> {
    let mut tx = store.begin().await?;
    // Another archive of this chain since this one started would make the file overlap it.
    if latest_anchor(&mut tx, chain)
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
        "INSERT INTO audit_archives (chain, first_id, last_id, first_prev_hash, last_hash,
             time_ms, file, sha256) VALUES (?8, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        |c, sql| sqlx::query(sql)
            .bind(id(anchor.first_id))
            .bind(id(anchor.last_id))
            .bind(anchor.first_prev_hash.to_vec())
            .bind(anchor.last_hash.to_vec())
            .bind(id(anchor.time_ms))
            .bind(&anchor.file)
            .bind(anchor.sha256.to_vec())
            .bind(chain.key())
            .execute(c)
            .await
            .map(drop)
    )?;
    delete_chunk(&mut tx, chain, anchor.last_id).await?;
    let ids = super::append_in(&mut tx, chain, &[record]).await?;
    tx.commit().await?;
    // Committed: the archive is made. What is left of the prefix goes in chunks; should
    // this stop (a crash), verification already starts after the anchor, and the next
    // archive finishes the deletion first.
    purge_archived(store, chain, anchor.last_id).await?;
    Ok(ids.first().copied().unwrap_or_default())
}

/// Rows deleted per transaction. The registrar's audit writer waits for SQLite's write
/// lock at most its busy timeout (5 s); a whole prefix of a million rows in one
/// transaction would hold the lock for seconds. Measured with `benches/audit_growth.rs`:
/// a concurrent writer waits for one chunk at most (docs/SECURITY.md).
pub const DELETE_CHUNK: i64 = 5000;

/// Deletes up to [`DELETE_CHUNK`] of `chain`'s oldest rows with an id up to `last_id`
/// (the delete trigger allows only rows an anchor of their chain covers). Returns how
/// many.
async fn delete_chunk<C: Conn + ?Sized>(conn: &mut C, chain: &Chain, last_id: u64) -> Result<u64> {
    let done = with_conn!(
        conn,
        "DELETE FROM audit_events WHERE id IN
             (SELECT id FROM audit_events WHERE chain = ?3 AND id <= ?1 ORDER BY id LIMIT ?2)",
        |c, sql| sqlx::query(sql)
            .bind(i64::try_from(last_id).unwrap_or(i64::MAX))
            .bind(DELETE_CHUNK)
            .bind(chain.key())
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    )?;
    Ok(done)
}

/// Deletes `chain`'s archived rows up to `last_id` still in the live log, a chunk per
/// transaction, letting other writers in between.
async fn purge_archived(store: &Store, chain: &Chain, last_id: u64) -> Result<()> {
    loop {
        let mut tx = store.begin().await?;
        let deleted = delete_chunk(&mut tx, chain, last_id).await?;
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
    /// The chain it is of: [`Chain::Local`] for [`ARCHIVE_FORMAT`], the header's for
    /// [`ARCHIVE_FORMAT_CHAIN`].
    pub chain: Chain,
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

/// Reads and checks an archive on its own, of either format: the header, every row's
/// hash (with the header's chain) and link, ids from `first_id` to `last_id` (contiguous
/// on the local chain, increasing on a registrar's), as many rows as the header says, a
/// local chain's first archive chaining from the genesis, the last hash the header's.
/// `probe`: also return the hash of that row. Any fault is [`Error::Archive`] naming the
/// line.
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
    let chain = match (header.format.as_str(), header.chain.as_deref()) {
        (ARCHIVE_FORMAT, None) => Chain::Local,
        (ARCHIVE_FORMAT_CHAIN, Some(key)) => match Chain::from_key(key) {
            Ok(chain @ Chain::Registrar(_)) => chain,
            _ => {
                return Err(archive_error(
                    path,
                    "header: chain is not a registrar's SPIFFE ID",
                ));
            }
        },
        (ARCHIVE_FORMAT, Some(_)) | (ARCHIVE_FORMAT_CHAIN, None) => {
            return Err(archive_error(
                path,
                format!("header: {ARCHIVE_FORMAT} has no chain, {ARCHIVE_FORMAT_CHAIN} names one"),
            ));
        }
        (other, _) => {
            return Err(archive_error(
                path,
                format!("format {other:?}, not {ARCHIVE_FORMAT} or {ARCHIVE_FORMAT_CHAIN}"),
            ));
        }
    };
    let contiguous = chain == Chain::Local;
    let prev_hash = unhex32(&header.prev_hash)
        .ok_or_else(|| archive_error(path, "header: prev_hash is not 32 bytes of hex"))?;
    let last_hash = unhex32(&header.last_hash)
        .ok_or_else(|| archive_error(path, "header: last_hash is not 32 bytes of hex"))?;
    // Record ids are SQLite rowids (at most i64::MAX): a larger id is no archive of ours,
    // and bounding it keeps `last_id + 1` below from overflowing.
    if header.first_id == 0
        || header.last_id < header.first_id
        || header.last_id > i64::MAX as u64
        || header.records == 0
        || header.records > header.last_id - header.first_id + 1
        || (contiguous && header.records != header.last_id - header.first_id + 1)
    {
        return Err(archive_error(
            path,
            "header: the range and the record count disagree",
        ));
    }
    // Record 1 is the first of its chain (zeros on the local chain).
    if header.first_id == 1 && prev_hash != chain.genesis() {
        return Err(archive_error(
            path,
            "header: record 1 chains from its chain's genesis",
        ));
    }
    let key = chain.key();
    let mut prev = prev_hash;
    let mut next = header.first_id;
    let mut records = 0_u64;
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
        let id = u64::try_from(line.id).unwrap_or(0);
        // The first row is `first_id`; then the local chain's ids follow one another, a
        // registrar's only grow (the other registrars' rows are not in its archive).
        let in_place = if contiguous || records == 0 {
            id == next
        } else {
            id >= next
        };
        if !in_place || id > header.last_id {
            let belongs = if contiguous || records == 0 {
                format!("record {next}")
            } else {
                format!("a record after {}", next - 1)
            };
            return Err(bad(&format!("record {} where {belongs} belongs", line.id)));
        }
        let (id, stated_prev, stated_hash, columns) = line
            .into_parts()
            .ok_or_else(|| bad("a hash or the pool is not hex"))?;
        if stated_prev != prev {
            return Err(bad(&format!(
                "record {id}: prev_hash does not match the previous record's hash"
            )));
        }
        let hash = chain_hash(&prev, key, id, &columns);
        if stated_hash != hash {
            return Err(bad(&format!(
                "record {id}: hash does not match the record's contents"
            )));
        }
        let id = u64::try_from(id).unwrap_or(0);
        if probe == Some(id) {
            probed = Some(hash);
        }
        prev = hash;
        next = id + 1;
        records += 1;
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
    if records != header.records {
        return Err(archive_error(
            path,
            format!(
                "holds {records} records, the header says {}",
                header.records
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
        chain,
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
    /// The chain the archives are of.
    pub chain: Chain,
    /// The first row the archives given cover.
    pub from_id: u64,
    /// Whether the first archive given starts at the chain's genesis: the whole chain,
    /// archives and live log, verifies (on the local chain: `from_id` is 1).
    pub from_genesis: bool,
    /// Archives whose file differs from the one archived (recompressed or rewritten)
    /// although its records verify and link: their names.
    pub sha256_differs: Vec<String>,
}

/// Checks that verified `archives` (any order, all of one chain) and that chain's stored
/// `anchors` form one chain ending where the live log starts: each archive is an anchor's
/// range with its hashes, each is followed by the next anchor's archive, and the last one
/// is the latest anchor's. The archives given may start at any archive (older ones then
/// go unchecked: [`Links::from_id`]). `Err`: the first link that fails, for the operator.
pub fn check_links(
    archives: &[ArchiveSummary],
    anchors: &[Anchor],
) -> std::result::Result<Links, String> {
    let mut sorted: Vec<&ArchiveSummary> = archives.iter().collect();
    sorted.sort_by_key(|a| a.header.first_id);
    let chain = sorted.first().map_or(Chain::Local, |a| a.chain.clone());
    if let Some(other) = sorted.iter().find(|a| a.chain != chain) {
        return Err(format!(
            "{}: an archive of chain {}, not of {chain}",
            other.path.display(),
            other.chain
        ));
    }
    let Some(latest) = anchors.last() else {
        return Err(format!(
            "no archive was made from this log's chain {chain} (no anchor)"
        ));
    };
    let mut sha256_differs = Vec::new();
    for (i, a) in sorted.iter().enumerate() {
        let name = a.path.display();
        let h = &a.header;
        let Some(at) = anchors.iter().position(|x| x.last_id == h.last_id) else {
            return Err(format!(
                "{name}: records {}-{} are not an archive of this log (no anchor ends at record {})",
                h.first_id, h.last_id, h.last_id
            ));
        };
        let anchor = &anchors[at];
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
        // What follows this archive: the next one given, or the live log (after the
        // latest anchor); it must be the next anchor's archive.
        let (next_at, next_id, next_prev, next_name) = match sorted.get(i + 1) {
            Some(n) => (
                anchors
                    .iter()
                    .position(|x| x.last_id == n.header.last_id)
                    .unwrap_or(anchors.len()),
                n.header.first_id,
                n.prev_hash,
                n.path.display().to_string(),
            ),
            None => (
                anchors.len(),
                latest.last_id + 1,
                latest.last_hash,
                "the live log".to_owned(),
            ),
        };
        if next_at != at + 1 {
            // The archives of anchors at+1..next_at are missing.
            let missing_to = anchors
                .get(next_at.saturating_sub(1))
                .map_or_else(|| next_id.saturating_sub(1), |x| x.last_id);
            return Err(format!(
                "GAP: {name} ends at record {}, {next_name} starts at record {next_id}: \
                 the archive of records {}-{missing_to} is missing",
                h.last_id,
                anchors.get(at + 1).map_or(h.last_id + 1, |x| x.first_id),
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
        from_genesis: sorted
            .first()
            .is_some_and(|a| a.prev_hash == chain.genesis()),
        chain,
        sha256_differs,
    })
}

/// What [`check_archives`] found when every file verified and they link.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiveCheck {
    /// Each file, as verified, in the order given.
    pub archives: Vec<ArchiveSummary>,
    /// How they link to each other and to the live log: one entry per chain the files
    /// are of (the local chain first, then by SPIFFE ID).
    pub links: Vec<Links>,
}

impl ArchiveCheck {
    /// The hash of row `id` if one of the archives holds it and it was the `probe`.
    pub fn probed(&self) -> Option<Hash> {
        self.archives.iter().find_map(|a| a.probed)
    }
}

/// `enrpd audit verify --archive FILE…`: verifies each file ([`verify_archive`], also
/// returning the hash of row `probe`: a checkpoint's) and that the files of each chain
/// (named in their headers: archives of several registrars of a fleet may be given
/// together) link to that chain's anchors and live log ([`check_links`]). The outer error
/// is the database's; the inner one the first finding, for the operator.
pub async fn check_archives<C: Conn + ?Sized>(
    conn: &mut C,
    files: &[PathBuf],
    probe: Option<u64>,
) -> Result<std::result::Result<ArchiveCheck, String>> {
    let mut archives = Vec::with_capacity(files.len());
    for file in files {
        match verify_archive(file, probe) {
            Ok(summary) => archives.push(summary),
            Err(e @ Error::Archive { .. }) => return Ok(Err(e.to_string())),
            Err(e) => return Err(e),
        }
    }
    let mut by_chain: std::collections::BTreeMap<Chain, Vec<ArchiveSummary>> =
        std::collections::BTreeMap::new();
    for a in &archives {
        by_chain.entry(a.chain.clone()).or_default().push(a.clone());
    }
    let mut links = Vec::with_capacity(by_chain.len());
    for (chain, of_chain) in by_chain {
        let anchors = anchors(&mut *conn, &chain).await?;
        match check_links(&of_chain, &anchors) {
            Ok(l) => links.push(l),
            Err(finding) => return Ok(Err(finding)),
        }
    }
    Ok(Ok(ArchiveCheck { archives, links }))
}
