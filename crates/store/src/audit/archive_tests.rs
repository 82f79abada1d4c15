//! Tests of audit retention (archive.rs): real SQLite files and real gzip files in
//! temporary directories.

use std::io::{BufRead as _, Write as _};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use super::archive::{self, Cut, Target, check_links, verify_archive};
use super::*;
use crate::db::test_db::sqlite_conn;

// Archives on both backends (the archive files in a temporary directory either way).
on_both_backends!(file:
    an_archive_verifies_alone_and_the_live_log_continues_from_its_head,
    a_tampered_or_cut_archive_is_detected,
    a_gap_between_archives_and_the_live_log_is_detected,
    deletes_stay_refused_except_the_archived_prefix,
    bad_archive_requests_change_nothing,
    archiving_next_to_a_running_writer_keeps_one_chain,
    the_local_chain_is_archived_in_format_1_as_before_fleets,
);

/// The record of an archive operation, as `enrpd audit archive` makes it.
fn op(now: u64) -> Record {
    Record::new(now, AuditAction::AuditArchive, Outcome::Ok)
}

/// Later than every sample's time.
const NOW: u64 = 1_800_000_000_000;

async fn archive_to(store: &Store, path: &Path, cut: Cut) -> Result<archive::Archived> {
    let server = id("spiffe://acme.test/registrar/enrp-1");
    archive::archive(
        store,
        &Chain::Local,
        &Target::File(path.to_owned()),
        cut,
        Some(&server),
        op(NOW),
        NOW,
    )
    .await
}

pub(in crate::audit) fn lines(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).expect("archive");
    std::io::BufReader::new(GzDecoder::new(file))
        .lines()
        .collect::<std::io::Result<_>>()
        .expect("gzip'd lines")
}

pub(in crate::audit) fn write_lines(path: &Path, lines: &[String]) {
    write_lines_at(path, lines, flate2::Compression::default());
}

fn write_lines_at(path: &Path, lines: &[String], level: flate2::Compression) {
    let mut out = GzEncoder::new(std::fs::File::create(path).expect("create"), level);
    for line in lines {
        writeln!(out, "{line}").expect("write");
    }
    out.finish().expect("finish");
}

async fn live_ids(store: &Store) -> Vec<i64> {
    let mut conn = store.acquire().await.expect("conn");
    let ids: Vec<(i64,)> = with_conn!(
        &mut conn,
        "SELECT id FROM audit_events ORDER BY id",
        |c, sql| sqlx::query_as(sql).fetch_all(c).await.expect("ids")
    );
    ids.into_iter().map(|(id,)| id).collect()
}

/// A task appending samples `range` through `log`, each acknowledged after its commit (as
/// a registration is), while the test archives.
pub(in crate::audit) fn appending(
    log: &AuditLog,
    range: std::ops::Range<u64>,
) -> tokio::task::JoinHandle<()> {
    let log = log.clone();
    tokio::spawn(async move {
        for i in range {
            log.append(sample(i), Durability::BeforeReply)
                .await
                .expect("append");
        }
    })
}

async fn an_archive_verifies_alone_and_the_live_log_continues_from_its_head(db: &TestDb) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = db.store.clone();
    append_samples(&store, 0..10).await;
    let before = verify_store(&store).await;

    let file = tmp.path().join("a.jsonl.gz");
    let done = archive_to(&store, &file, Cut::BeforeId(6))
        .await
        .expect("archive");
    assert_eq!((done.anchor.first_id, done.anchor.last_id), (1, 5));
    assert_eq!(
        done.record_id, 11,
        "the archive operation is audited at the head"
    );
    // Rows 1-5 left the live log; 6-10 and the archive's own record remain.
    assert_eq!(live_ids(&store).await, (6..=11).collect::<Vec<_>>());

    // The file alone: header, then one JSON object per record (zcat | jq readable).
    let text = lines(&file);
    assert_eq!(text.len(), 6);
    let header: serde_json::Value = serde_json::from_str(&text[0]).expect("JSON header");
    assert_eq!(header["format"], "rsp-audit-archive/1");
    // The local chain's archives stay as before fleets: no `chain` (docs/STORE.md).
    assert!(header.get("chain").is_none(), "{header}");
    assert_eq!(header["trust_domain"], "acme.test");
    assert_eq!(header["prev_hash"], hex::encode(GENESIS));
    let row: serde_json::Value = serde_json::from_str(&text[1]).expect("JSON record");
    assert_eq!(row["id"], 1);
    assert_eq!(row["pool"], hex::encode(b"echo"));
    assert_eq!(row["action"], "register");
    let summary = verify_archive(&file, Some(3)).expect("the archive verifies");
    assert_eq!(summary.sha256, done.anchor.sha256);
    assert_eq!(summary.header.records, 5);

    // The live chain verifies from the anchor; the head moved on by one record.
    let after = verify_store(&store).await;
    assert!(after.is_intact(), "{:?}", after.broken);
    assert_eq!(after.checked, 6);
    assert_eq!(after.anchor.as_ref().map(|a| a.last_id), Some(5));
    assert_eq!(after.last_id, before.last_id + 1);
    assert!(summary.probed.is_some(), "record 3 is in the archive");

    // New records chain from the head; a second archive by time continues the first.
    append_samples(&store, 100..103).await;
    let second = tmp.path().join("b.jsonl.gz");
    let done2 = archive_to(&store, &second, Cut::Before(1_700_000_000_100))
        .await
        .expect("second archive");
    // Row 11 (the first archive's own record) is stamped NOW: the cut falls before it.
    assert_eq!((done2.anchor.first_id, done2.anchor.last_id), (6, 10));
    assert!(verify_store(&store).await.is_intact());
    let a = verify_archive(&file, None).expect("first");
    let b = verify_archive(&second, None).expect("second");
    let mut conn = store.acquire().await.expect("conn");
    let anchors = archive::anchors(&mut conn, &Chain::Local)
        .await
        .expect("anchors");
    let links = check_links(&[b.clone(), a], &anchors).expect("they link, in any order");
    assert_eq!(links.from_id, 1);
    assert!(links.sha256_differs.is_empty());
    // Only the newest archive: fine, the older records are simply not checked.
    assert_eq!(check_links(&[b], &anchors).expect("a suffix").from_id, 6);
}

/// An archive of the local chain is written, header line byte for byte, as rsp wrote
/// archives before chains existed (format 1, the fields docs/SECURITY.md lists, no
/// `chain`; the last hash is the head of these three samples pinned by
/// `encoding_and_chain_hashes_are_those_of_earlier_versions`), so that archives made
/// then and now read the same way.
async fn the_local_chain_is_archived_in_format_1_as_before_fleets(db: &TestDb) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = db.store.clone();
    append_samples(&store, 1..4).await;
    let file = tmp.path().join("a.jsonl.gz");
    archive_to(&store, &file, Cut::BeforeId(4))
        .await
        .expect("archive");
    let text = lines(&file);
    assert_eq!(
        text[0],
        format!(
            "{{\"format\":\"rsp-audit-archive/1\",\"trust_domain\":\"acme.test\",\
             \"server\":\"spiffe://acme.test/registrar/enrp-1\",\"first_id\":1,\"last_id\":3,\
             \"records\":3,\"prev_hash\":\"{}\",\"last_hash\":\
             \"fced2a42eaedb1af6c145b7047771aee459bfce166ed59c542f5ff6195337fb1\",\
             \"created_ms\":{NOW}}}",
            "0".repeat(64)
        )
    );
    let row: serde_json::Value = serde_json::from_str(&text[1]).expect("JSON record");
    let keys: Vec<&str> = row
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "action",
        "actor",
        "detail",
        "hash",
        "id",
        "namespace",
        "outcome",
        "pe_id",
        "pool",
        "prev_hash",
        "remote",
        "serial",
        "time_ms",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected, "the columns the hash covers, as before");
    let summary = verify_archive(&file, None).expect("verifies");
    assert_eq!(summary.chain, Chain::Local);
}

async fn a_tampered_or_cut_archive_is_detected(db: &TestDb) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = db.store.clone();
    append_samples(&store, 0..8).await;
    let file = tmp.path().join("a.jsonl.gz");
    archive_to(&store, &file, Cut::BeforeId(8))
        .await
        .expect("archive");
    let original = lines(&file);

    // One record's detail edited.
    let mut edited = original.clone();
    edited[3] = edited[3].replace("\"n2\"", "\"n2 (edited)\"");
    assert_ne!(edited[3], original[3]);
    let forged = tmp.path().join("edited.jsonl.gz");
    write_lines(&forged, &edited);
    let err = verify_archive(&forged, None).expect_err("edited");
    assert!(
        err.to_string().contains("line 4") && err.to_string().contains("hash"),
        "{err}"
    );

    // A record dropped from the middle, and the last one dropped.
    for (name, drop_at) in [
        ("dropped.jsonl.gz", 2),
        ("short.jsonl.gz", original.len() - 1),
    ] {
        let mut cut = original.clone();
        cut.remove(drop_at);
        let path = tmp.path().join(name);
        write_lines(&path, &cut);
        let err = verify_archive(&path, None).expect_err(name);
        assert!(matches!(err, Error::Archive { .. }), "{err}");
    }

    // A header edited to cover the truth: the genesis link no longer holds.
    let mut header: serde_json::Value = serde_json::from_str(&original[0]).expect("header");
    header["prev_hash"] = serde_json::json!("11".repeat(32));
    let mut rehead = original.clone();
    rehead[0] = header.to_string();
    let path = tmp.path().join("rehead.jsonl.gz");
    write_lines(&path, &rehead);
    assert!(verify_archive(&path, None).is_err());

    // A header whose range no log can hold (ids past i64::MAX): refused, not a panic.
    let mut header: serde_json::Value = serde_json::from_str(&original[0]).expect("header");
    header["first_id"] = serde_json::json!(1);
    header["last_id"] = serde_json::json!(u64::MAX);
    header["records"] = serde_json::json!(u64::MAX);
    let path = tmp.path().join("huge.jsonl.gz");
    write_lines(&path, &[header.to_string()]);
    let err = verify_archive(&path, None).expect_err("range past i64::MAX");
    assert!(err.to_string().contains("range"), "{err}");

    // Not gzip at all.
    let path = tmp.path().join("plain.jsonl.gz");
    std::fs::write(&path, original.join("\n")).expect("write");
    assert!(verify_archive(&path, None).is_err());

    // Recompressed, records intact: verifies, and the SHA-256 shows it is another file.
    let path = tmp.path().join("recompressed.jsonl.gz");
    write_lines_at(&path, &original, flate2::Compression::fast());
    let summary = verify_archive(&path, None).expect("intact records");
    let mut conn = store.acquire().await.expect("conn");
    let anchors = archive::anchors(&mut conn, &Chain::Local)
        .await
        .expect("anchors");
    let links = check_links(&[summary], &anchors).expect("links");
    assert_eq!(links.sha256_differs.len(), 1);
}

async fn a_gap_between_archives_and_the_live_log_is_detected(db: &TestDb) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = db.store.clone();
    append_samples(&store, 0..10).await;
    let a = tmp.path().join("a.jsonl.gz");
    let b = tmp.path().join("b.jsonl.gz");
    archive_to(&store, &a, Cut::BeforeId(4)).await.expect("a");
    archive_to(&store, &b, Cut::BeforeId(9)).await.expect("b");
    let mut conn = store.acquire().await.expect("conn");
    let anchors = archive::anchors(&mut conn, &Chain::Local)
        .await
        .expect("anchors");
    let a = verify_archive(&a, None).expect("a verifies");
    let b = verify_archive(&b, None).expect("b verifies");
    // The middle archive missing: a gap between the first and the live log.
    let err = check_links(std::slice::from_ref(&a), &anchors).expect_err("gap");
    assert!(err.contains("GAP") && err.contains("records 4-8"), "{err}");
    check_links(&[a, b], &anchors).expect("both link");

    // The live log's first row deleted behind the triggers' back: the chain no longer
    // starts where the anchor says.
    assert_first_row_deleted_is_a_gap(&mut conn, 9).await;
}

async fn deletes_stay_refused_except_the_archived_prefix(db: &TestDb) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = db.store.clone();
    append_samples(&store, 0..6).await;
    let mut conn = store.acquire().await.expect("conn");
    let refused = |r: sqlx::Result<()>| {
        let err = r.expect_err("refused");
        assert!(
            err.to_string().contains("append-only") || err.to_string().contains("audit archive"),
            "{err}"
        );
    };
    refused(exec(&mut conn, "DELETE FROM audit_events WHERE id = 1").await);
    // An anchor that does not match the chain cannot be made up to excuse a delete.
    refused(
        exec(&mut conn, "INSERT INTO audit_archives (first_id, last_id, first_prev_hash, last_hash,
                 time_ms, file, sha256) VALUES (1, 3, zeroblob(32), zeroblob(32), 0, 'x', zeroblob(32))").await,
    );
    drop(conn);
    archive_to(&store, &tmp.path().join("a.jsonl.gz"), Cut::BeforeId(4))
        .await
        .expect("archive");
    let mut conn = store.acquire().await.expect("conn");
    // After the archive: a plain DELETE of any live row, of all rows, an update, and
    // touching the anchors are all refused.
    refused(exec(&mut conn, "DELETE FROM audit_events WHERE id = 4").await);
    refused(exec(&mut conn, "DELETE FROM audit_events").await);
    refused(
        exec(
            &mut conn,
            "UPDATE audit_events SET detail = 'x' WHERE id = 5",
        )
        .await,
    );
    refused(exec(&mut conn, "DELETE FROM audit_archives").await);
    refused(exec(&mut conn, "UPDATE audit_archives SET file = 'y'").await);
    assert_eq!(live_ids(&store).await, (4..=7).collect::<Vec<_>>());
    assert!(
        verify_chain(&mut conn, &Chain::Local)
            .await
            .expect("verify")
            .is_intact()
    );
}

async fn bad_archive_requests_change_nothing(db: &TestDb) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = db.store.clone();
    append_samples(&store, 0..5).await;
    let file = tmp.path().join("a.jsonl.gz");
    let unchanged = |store: Store| async move {
        assert_eq!(live_ids(&store).await, (1..=5).collect::<Vec<_>>());
        let mut conn = store.acquire().await.expect("conn");
        assert!(
            archive::anchors(&mut conn, &Chain::Local)
                .await
                .expect("anchors")
                .is_empty()
        );
    };
    // In the future; past the head; before every record.
    let err = archive_to(&store, &file, Cut::Before(NOW + 1))
        .await
        .expect_err("future");
    assert!(
        matches!(err, Error::Conflict { what: "before", .. }),
        "{err}"
    );
    let err = archive_to(&store, &file, Cut::BeforeId(7))
        .await
        .expect_err("past head");
    assert!(
        matches!(
            err,
            Error::Conflict {
                what: "before-seq",
                ..
            }
        ),
        "{err}"
    );
    let err = archive_to(&store, &file, Cut::Before(1_000))
        .await
        .expect_err("nothing");
    assert!(err.to_string().contains("nothing to archive"), "{err}");
    let err = archive_to(&store, &file, Cut::BeforeId(1))
        .await
        .expect_err("nothing");
    assert!(err.to_string().contains("nothing to archive"), "{err}");
    // The file exists: left as it was.
    std::fs::write(&file, b"keep me").expect("write");
    let err = archive_to(&store, &file, Cut::BeforeId(3))
        .await
        .expect_err("exists");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
    // A directory that does not exist (or cannot be written).
    let err = archive_to(
        &store,
        &tmp.path().join("no/such/dir/a.gz"),
        Cut::BeforeId(3),
    )
    .await
    .expect_err("no directory");
    assert!(matches!(err, Error::Archive { .. }), "{err}");
    assert!(archive::parse_time("yesterday").is_err());
    assert_eq!(
        archive::parse_time("1970-01-01T00:00:01.5Z").expect("time"),
        1_500
    );
    unchanged(store).await;
}

async fn archiving_next_to_a_running_writer_keeps_one_chain(db: &TestDb) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = db.store.clone();
    append_samples(&store, 0..50).await;
    let log = AuditLog::start(&store, AuditConfig::default())
        .await
        .expect("writer");
    let writer = appending(&log, 1000..1200);
    archive_to(&store, &tmp.path().join("a.jsonl.gz"), Cut::BeforeId(40))
        .await
        .expect("archive while writing");
    writer.await.expect("writer task");
    log.shutdown().await.expect("shutdown");
    let report = verify_store(&store).await;
    assert!(report.is_intact(), "{:?}", report.broken);
    // 50 samples, 200 appended, 1 archive record; 39 archived.
    assert_eq!(report.last_id, 251);
    assert_eq!(report.checked, 251 - 39);
}

#[tokio::test]
async fn a_long_prefix_goes_in_chunks_and_an_interrupted_deletion_is_finished_later() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path()).await;
    let n = u64::try_from(archive::DELETE_CHUNK).expect("positive") * 2 + 100;
    for start in (0..n).step_by(1000) {
        append_samples(&store, start..(start + 1000).min(n)).await;
    }
    archive_to(&store, &tmp.path().join("a.jsonl.gz"), Cut::BeforeId(n))
        .await
        .expect("archive");
    assert_eq!(
        live_ids(&store).await,
        vec![
            i64::try_from(n).expect("id"),
            i64::try_from(n + 1).expect("id")
        ]
    );

    // An anchor written, its rows not yet deleted (a crash right after the commit):
    // the chain verifies from the anchor, and the next archive deletes them first.
    append_samples(&store, 0..10).await;
    let mut conn = store.acquire().await.expect("conn");
    let row = |id: u64| {
        sqlx::query_as::<_, (Vec<u8>, Vec<u8>)>(
            "SELECT prev_hash, hash FROM audit_events WHERE id = ?1",
        )
        .bind(i64::try_from(id).expect("id"))
    };
    let (first_prev, _) = row(n)
        .fetch_one(sqlite_conn(&mut conn))
        .await
        .expect("first");
    let (_, last_hash) = row(n + 5)
        .fetch_one(sqlite_conn(&mut conn))
        .await
        .expect("last");
    sqlx::query(
        "INSERT INTO audit_archives (first_id, last_id, first_prev_hash, last_hash, time_ms,
             file, sha256) VALUES (?1, ?2, ?3, ?4, 0, 'b.jsonl.gz', zeroblob(32))",
    )
    .bind(i64::try_from(n).expect("id"))
    .bind(i64::try_from(n + 5).expect("id"))
    .bind(first_prev)
    .bind(last_hash)
    .execute(sqlite_conn(&mut conn))
    .await
    .expect("an anchor matching the chain");
    let report = verify_chain(&mut conn, &Chain::Local)
        .await
        .expect("verify");
    assert!(report.is_intact(), "{:?}", report.broken);
    assert_eq!(report.checked, 6, "rows after the anchor only");
    drop(conn);
    archive_to(&store, &tmp.path().join("c.jsonl.gz"), Cut::BeforeId(n + 8))
        .await
        .expect("next archive");
    let ids = live_ids(&store).await;
    assert_eq!(
        ids.first().copied(),
        Some(i64::try_from(n + 8).expect("id"))
    );
    assert!(verify_store(&store).await.is_intact());
}
