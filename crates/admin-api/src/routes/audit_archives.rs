//! `/v1/audit/archives`: audit retention through the API (issue 18 item 5; the same as
//! `enrpd audit archive`, store::audit::archive). An admin moves the old records of this
//! registrar's chain into a gzip'd JSON Lines archive in `<data>/audit-archive/`; admins
//! and auditors list the archives (their anchors in the live log) and download them. In a
//! store a fleet shares, each registrar archives, lists and serves its own chain only.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use identity::audit::AuditAction;
use serde::{Deserialize, Serialize};
use store::audit::archive::{self, Anchor, Cut, Target};
use tokio::io::{AsyncRead, ReadBuf};
use utoipa::ToSchema;

use crate::auth::{AdminOnly, Authorized, ReadAll};
use crate::extract::{ApiJson, ApiPath, whole_number};
use crate::problem::{ApiError, ProblemKind};
use crate::state::App;

/// The media type of an archive.
const GZIP: &str = "application/gzip";

/// What to archive: exactly one of `before` and `before_seq` (the document says so with
/// `oneOf`, so that generated clients never send both).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
// One example for the whole body: examples per field would make one body with both.
#[schema(example = json!({"before_seq": 2}))]
pub(crate) enum ArchiveRequest {
    /// By time.
    Before(ArchiveBefore),
    /// By sequence number.
    BeforeSeq(ArchiveBeforeSeq),
}

/// Archive by time.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArchiveBefore {
    /// Archive the records before this RFC 3339 time (up to the first record stamped at
    /// or after it); not in the future.
    #[schema(format = DateTime)]
    before: String,
}

/// Archive by sequence number.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArchiveBeforeSeq {
    /// Archive this registrar's records with a sequence number (id) below this one (in a
    /// shared store the other registrars' records stay).
    // Always present: without `serde(default)` a missing field is an error.
    #[serde(deserialize_with = "whole_number")]
    #[schema(value_type = u64, required = true, minimum = 2, maximum = 9_223_372_036_854_775_807_i64)]
    before_seq: Option<u64>,
}

/// An archive and its anchor in the live log.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ArchiveView {
    /// The file name (download it at `/v1/audit/archives/{name}`).
    name: String,
    /// The file as written (a path on the registrar's host).
    file: String,
    /// Whether `/v1/audit/archives/{name}` serves it: written through the API into the
    /// archive directory, and still there (`enrpd audit archive --to` writes elsewhere).
    downloadable: bool,
    /// The first archived record.
    first_id: u64,
    /// The last archived record.
    last_id: u64,
    /// The hash record `first_id` chains from, hex.
    first_prev_hash: String,
    /// The hash of record `last_id`, hex: the next record chains from it.
    last_hash: String,
    /// When it was archived, unix ms.
    time_ms: u64,
    /// SHA-256 of the file, hex.
    sha256: String,
}

/// The archives of this registrar's chain, oldest first, and where its live log starts.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ArchiveList {
    /// Every archive made of this registrar's chain (in a shared store, each registrar
    /// lists its own: docs/STORE.md "Archives in a fleet").
    archives: Vec<ArchiveView>,
    /// The live log holds this chain's records from this sequence number on (1 when
    /// nothing was archived).
    live_from: u64,
}

/// A new archive.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedArchive {
    /// The archive.
    #[serde(flatten)]
    archive: ArchiveView,
    /// Records archived.
    records: u64,
    /// The file's size in bytes.
    bytes: u64,
    /// The audit record of this operation, at the live log's head.
    record_id: u64,
}

impl App {
    /// `<data>/audit-archive`, when the host configured one.
    fn archive_dir(&self) -> Result<&PathBuf, ApiError> {
        self.state.archive_dir.as_ref().ok_or_else(|| {
            ApiError::new(
                ProblemKind::Conflict,
                "this registrar keeps no archive directory: use `enrpd audit archive`",
            )
        })
    }

    fn view(&self, anchor: Anchor) -> ArchiveView {
        let name = anchor.name().to_owned();
        let downloadable = self.served_path(&anchor).is_some();
        ArchiveView {
            downloadable,
            first_id: anchor.first_id,
            last_id: anchor.last_id,
            first_prev_hash: hex::encode(anchor.first_prev_hash),
            last_hash: hex::encode(anchor.last_hash),
            time_ms: anchor.time_ms,
            sha256: hex::encode(anchor.sha256),
            file: anchor.file,
            name,
        }
    }

    /// The file of `anchor` if it is in the archive directory under its own name.
    fn served_path(&self, anchor: &Anchor) -> Option<PathBuf> {
        let dir = self.state.archive_dir.as_ref()?;
        let path = dir.join(anchor.name());
        let same = |a: &std::path::Path| a.canonicalize().ok();
        (archive::is_archive_name(anchor.name())
            && path.is_file()
            && same(&path) == same(std::path::Path::new(&anchor.file)))
        .then_some(path)
    }
}

/// Moves this registrar's audit records before `before` (or below `before_seq`) into a
/// new archive in its archive directory, and deletes them from the live log, which keeps
/// the archived head as its anchor. In a shared store only this registrar's chain is
/// archived; the others' records stay. The operation is audited at the head of its chain.
#[utoipa::path(post, path = "/v1/audit/archives", tag = "audit",
    request_body = ArchiveRequest,
    responses(
        (status = 201, description = "Archived", body = CreatedArchive),
        (status = 409, description = "Not now: a time in the future, a sequence number \
            past the head, nothing to archive, the file exists already, or no archive \
            directory"),
        (status = 422, description = "Neither or both of `before` and `before_seq`, or a \
            value of the wrong shape"),
    ))]
pub(crate) async fn create(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<AdminOnly>,
    ApiJson(body): ApiJson<ArchiveRequest>,
) -> Result<Response, ApiError> {
    let now = app.now();
    let record = caller.record(now, AuditAction::AdminAuditArchive);
    let result = async {
        let cut = match body {
            ArchiveRequest::Before(b) => Cut::Before(archive::parse_time(&b.before)?),
            // Record 1 is the first: below 2 there is nothing, whatever the log holds
            // (the document's `minimum`).
            ArchiveRequest::BeforeSeq(ArchiveBeforeSeq {
                before_seq: Some(n),
            }) if n >= 2 => Cut::BeforeId(n),
            ArchiveRequest::BeforeSeq(_) => {
                return Err(ApiError::new(
                    ProblemKind::Invalid,
                    "give exactly one of `before` (an RFC 3339 time) and `before_seq` (2 or more)",
                ));
            }
        };
        let target = Target::Dir(app.archive_dir()?.clone());
        let server = app.trust().identity().id().clone();
        Ok(archive::archive(
            app.store(),
            app.audit_chain(),
            &target,
            cut,
            Some(&server),
            record.clone(),
            now,
        )
        .await?)
    }
    .await;
    let done = match result {
        Ok(done) => done,
        Err(err) => {
            app.audit_refusal(record, &err).await;
            return Err(err);
        }
    };
    let body = CreatedArchive {
        records: done.records,
        bytes: done.bytes,
        record_id: done.record_id,
        archive: app.view(done.anchor),
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// The archives made of this log (also by `enrpd audit archive`), oldest first.
#[utoipa::path(get, path = "/v1/audit/archives", tag = "audit",
    responses((status = 200, description = "The archives and where the live log starts", body = ArchiveList)))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
) -> Result<axum::Json<ArchiveList>, ApiError> {
    let mut conn = app.store().acquire().await?;
    let anchors = archive::anchors(&mut conn, app.audit_chain()).await?;
    let live_from = anchors.last().map_or(1, |a| a.last_id + 1);
    Ok(axum::Json(ArchiveList {
        archives: anchors.into_iter().map(|a| app.view(a)).collect(),
        live_from,
    }))
}

/// Downloads an archive written through the API (gzip'd JSON Lines: `zcat | jq`;
/// `enrpd audit verify --archive FILE` checks it).
#[utoipa::path(get, path = "/v1/audit/archives/{name}", tag = "audit",
    params(("name" = String, Path, description = "The archive's name",
        pattern = r"^audit-[0-9]{1,20}-[0-9]{1,20}\.jsonl\.gz$", example = "audit-1-1.jsonl.gz")),
    responses(
        (status = 200, description = "The archive", content_type = "application/gzip", body = ArchiveFile),
        (status = 404, description = "No such archive in the archive directory"),
    ))]
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(ProblemKind::NotFound, format!("no archive {name:?}"));
    // Only names the API makes, and only files an anchor names: never another path.
    if !archive::is_archive_name(&name) {
        return Err(not_found());
    }
    let mut conn = app.store().acquire().await?;
    let path = archive::anchors(&mut conn, app.audit_chain())
        .await?
        .iter()
        .find(|a| a.name() == name)
        .and_then(|a| app.served_path(a))
        .ok_or_else(not_found)?;
    drop(conn);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| not_found())?;
    let len = file.metadata().await.map_err(|_| not_found())?.len();
    let mut response = Body::new(FileBody { file }).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(GZIP));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// An archive's bytes (gzip), as the OpenAPI document describes them.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub(crate) struct ArchiveFile(#[allow(dead_code)] Vec<u8>);

/// Size of the chunks an archive is sent in: archives can be large, so they are streamed
/// from the file, never read into memory whole.
const CHUNK: usize = 64 * 1024;

/// A file as a response body.
struct FileBody {
    file: tokio::fs::File,
}

impl HttpBody for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        let mut chunk = vec![0; CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.file).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                chunk.truncate(n);
                Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(chunk)))))
            }
        }
    }
}
