//! Archiving a registrar's chain in a shared store (issue 19; docs/STORE.md "Archives in a
//! fleet"), on both backends: the archive names its chain and holds that chain's rows
//! only, the other chains are untouched and keep verifying, the live chain verifies from
//! its anchor, and a tampered archive or row is found.

use super::super::archive::{self, Cut, Target, check_archives, check_links, verify_archive};
use super::super::tests::archive_tests::{appending, lines, write_lines};
use super::*;

on_both_backends!(file:
    a_registrars_chain_is_archived_alone_and_every_chain_verifies,
    archiving_a_chain_while_another_registrar_appends_loses_nothing,
    a_tampered_chain_archive_or_live_row_is_detected,
    bad_archive_requests_on_a_registrars_chain_change_nothing,
);

/// Later than every sample's time: the archive operation's record and the anchor.
const NOW: u64 = 1_800_000_000_000;

/// Archives `chain`'s records before `cut` to `path`, as that registrar would.
async fn archive_chain(
    store: &Store,
    chain: &Chain,
    path: &std::path::Path,
    cut: Cut,
) -> Result<archive::Archived> {
    archive::archive(
        store,
        chain,
        &Target::File(path.to_owned()),
        cut,
        chain.registrar(),
        Record::new(NOW, AuditAction::AuditArchive, Outcome::Ok),
        NOW,
    )
    .await
}

/// The ids of `chain`'s live rows, oldest first.
async fn chain_ids(store: &Store, chain: &Chain) -> Vec<u64> {
    let mut conn = store.acquire().await.expect("conn");
    let filter = AuditFilter {
        chain: Some(chain.clone()),
        order: Order::OldestFirst,
        limit: MAX_PAGE,
        ..AuditFilter::default()
    };
    query(&mut conn, &filter)
        .await
        .expect("query")
        .events
        .iter()
        .map(|e| e.id)
        .collect()
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).expect("a JSON line")
}

async fn a_registrars_chain_is_archived_alone_and_every_chain_verifies(db: &TestDb) {
    let store = db.store.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    // The chains interleave: A's ids have B's in between.
    let a1 = append(&store, &chain_a(), 0..3).await;
    let b1 = append(&store, &chain_b(), 3..5).await;
    let a2 = append(&store, &chain_a(), 5..8).await;
    let b2 = append(&store, &chain_b(), 8..10).await;
    let b_before = report(&verify_all(&store).await, &chain_b()).clone();

    // A's records below its last one: 1-3 and 6-7, five records.
    let first = dir.path().join("a-1.jsonl.gz");
    let done = archive_chain(&store, &chain_a(), &first, Cut::BeforeId(a2[2]))
        .await
        .expect("archive A");
    assert_eq!((done.anchor.first_id, done.anchor.last_id), (a1[0], a2[1]));
    assert_eq!(done.anchor.first_prev_hash, chain_a().genesis());

    // The file names its chain and holds A's rows only, with their ids.
    let text = lines(&first);
    let header = json(&text[0]);
    assert_eq!(header["format"], archive::ARCHIVE_FORMAT_CHAIN);
    assert_eq!(header["chain"], chain_a().key());
    assert_eq!(header["server"], chain_a().key());
    assert_eq!(header["records"], 5);
    assert_eq!(header["prev_hash"], hex::encode(chain_a().genesis()));
    let ids: Vec<u64> = text[1..]
        .iter()
        .map(|l| json(l)["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, [a1[0], a1[1], a1[2], a2[0], a2[1]]);
    let summary = verify_archive(&first, Some(a2[0])).expect("the archive verifies alone");
    assert_eq!(summary.chain, chain_a());
    assert_eq!(summary.sha256, done.anchor.sha256);
    assert!(summary.probed.is_some(), "record {} is in it", a2[0]);

    // A's archived rows left the live log, B's did not; the operation is audited on A.
    assert_eq!(chain_ids(&store, &chain_a()).await, [a2[2], done.record_id]);
    let b_ids: Vec<u64> = b1.iter().chain(&b2).copied().collect();
    assert_eq!(chain_ids(&store, &chain_b()).await, b_ids);
    let reports = verify_all(&store).await;
    let ra = report(&reports, &chain_a());
    assert!(ra.is_intact(), "{reports:?}");
    assert_eq!(ra.checked, 2, "A's live rows, from the anchor");
    assert_eq!(ra.anchor.as_ref().map(|x| x.last_id), Some(a2[1]));
    assert_eq!(report(&reports, &chain_b()), &b_before, "B untouched");
    let mut conn = store.acquire().await.expect("conn");
    let check = check_archives(&mut conn, std::slice::from_ref(&first), None)
        .await
        .expect("database")
        .expect("links");
    assert_eq!(check.links.len(), 1);
    assert_eq!(check.links[0].chain, chain_a());
    assert!(check.links[0].from_genesis);
    drop(conn);

    // More of both; A's second archive continues the first, across B's rows.
    let b3 = append(&store, &chain_b(), 10..12).await;
    let a3 = append(&store, &chain_a(), 100..102).await;
    let second = dir.path().join("a-2.jsonl.gz");
    let done2 = archive_chain(&store, &chain_a(), &second, Cut::BeforeId(a3[1]))
        .await
        .expect("second archive of A");
    assert_eq!(
        (done2.anchor.first_id, done2.anchor.last_id),
        (a2[2], a3[0])
    );
    assert_eq!(
        lines(&second).len(),
        1 + 3,
        "a2[2], the first archive's record, a3[0]"
    );
    // B archives its own chain too: the anchors of the two chains interleave.
    let b_file = dir.path().join("b-1.jsonl.gz");
    let done_b = archive_chain(&store, &chain_b(), &b_file, Cut::BeforeId(b3[0]))
        .await
        .expect("archive B");
    assert_eq!(
        (done_b.anchor.first_id, done_b.anchor.last_id),
        (b1[0], b2[1])
    );
    let reports = verify_all(&store).await;
    assert!(reports.iter().all(VerifyReport::is_intact), "{reports:?}");
    assert_eq!(report(&reports, &chain_b()).checked, 3, "b3 and B's record");

    let mut conn = store.acquire().await.expect("conn");
    let anchors_a = archive::anchors(&mut conn, &chain_a())
        .await
        .expect("anchors");
    assert_eq!(anchors_a.len(), 2);
    let (s1, s2) = (
        verify_archive(&first, None).expect("first"),
        verify_archive(&second, None).expect("second"),
    );
    let links = check_links(&[s2.clone(), s1], &anchors_a).expect("A's archives link");
    assert!(links.from_genesis && links.from_id == a1[0]);
    let newest = check_links(&[s2], &anchors_a).expect("the newest alone");
    assert!(!newest.from_genesis && newest.from_id == a2[2]);
    // Archives of both registrars at once: checked per chain.
    let check = check_archives(
        &mut conn,
        &[first.clone(), b_file.clone(), second.clone()],
        None,
    )
    .await
    .expect("database")
    .expect("both chains link");
    let chains: Vec<&Chain> = check.links.iter().map(|l| &l.chain).collect();
    assert_eq!(chains, [&chain_a(), &chain_b()]);
    // A's first archive alone: its second is missing before the live log.
    let gap = check_archives(&mut conn, std::slice::from_ref(&first), None)
        .await
        .expect("database")
        .expect_err("gap");
    assert!(gap.contains("GAP"), "{gap}");
}

/// Registrar B's writer appends all the while A archives: nothing of B's is lost or
/// blocked for long, and both chains verify.
async fn archiving_a_chain_while_another_registrar_appends_loses_nothing(db: &TestDb) {
    let store = db.store.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    append(&store, &chain_b(), 0..10).await;
    let a = append(&store, &chain_a(), 0..300).await;
    let config = AuditConfig {
        chain: chain_b(),
        ..AuditConfig::default()
    };
    let log = AuditLog::start(&store, config).await.expect("B's writer");
    let writer = appending(&log, 1000..1200);
    let done = archive_chain(
        &store,
        &chain_a(),
        &dir.path().join("a.jsonl.gz"),
        Cut::BeforeId(a[299] + 1),
    )
    .await
    .expect("archive A while B writes");
    writer.await.expect("writer task");
    log.shutdown().await.expect("shutdown");
    assert_eq!(log.stats().lost, 0);
    assert_eq!(done.anchor.last_id, a[299]);
    let reports = verify_all(&store).await;
    assert!(reports.iter().all(VerifyReport::is_intact), "{reports:?}");
    assert_eq!(report(&reports, &chain_b()).checked, 210);
    assert_eq!(
        report(&reports, &chain_a()).checked,
        1,
        "the archive's record"
    );
}

async fn a_tampered_chain_archive_or_live_row_is_detected(db: &TestDb) {
    let store = db.store.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let a1 = append(&store, &chain_a(), 0..4).await;
    append(&store, &chain_b(), 4..6).await;
    let a2 = append(&store, &chain_a(), 6..9).await;
    let file = dir.path().join("a.jsonl.gz");
    archive_chain(&store, &chain_a(), &file, Cut::BeforeId(a2[2]))
        .await
        .expect("archive");
    let original = lines(&file);
    assert_eq!(original.len(), 1 + 6);
    let forged = dir.path().join("forged.jsonl.gz");
    let refused = |edited: &[String], expect: &str| {
        write_lines(&forged, edited);
        let err = verify_archive(&forged, None).expect_err(expect);
        assert!(err.to_string().contains(expect), "{expect}: {err}");
    };
    // A record's detail edited.
    let mut edited = original.clone();
    edited[3] = edited[3].replace("\"n2\"", "\"n2 (edited)\"");
    assert_ne!(edited[3], original[3]);
    refused(&edited, "hash does not match");
    // The archive claimed for another registrar: its first record no longer chains from
    // that chain's genesis, and with the genesis changed too, from the header's.
    let mut header = json(&original[0]);
    header["chain"] = serde_json::json!(chain_b().key());
    let mut moved = original.clone();
    moved[0] = header.to_string();
    refused(&moved, "genesis");
    header["prev_hash"] = serde_json::json!(hex::encode(chain_b().genesis()));
    moved[0] = header.to_string();
    refused(&moved, "prev_hash does not match");
    // And with the first record's link changed as well: its hash covers its chain.
    let mut line = json(&moved[1]);
    line["prev_hash"] = serde_json::json!(hex::encode(chain_b().genesis()));
    moved[1] = line.to_string();
    refused(&moved, "hash does not match");
    // Passed off as a local-chain archive: its ids have gaps.
    let mut header = json(&original[0]);
    header["format"] = serde_json::json!(archive::ARCHIVE_FORMAT);
    header.as_object_mut().expect("object").remove("chain");
    let mut local = original.clone();
    local[0] = header.to_string();
    refused(&local, "range and the record count disagree");
    // A record dropped from the middle, the last one dropped, the count edited.
    let mut dropped = original.clone();
    dropped.remove(3);
    refused(&dropped, "prev_hash");
    refused(&original[..original.len() - 1], "ends at record");
    let mut header = json(&original[0]);
    header["records"] = serde_json::json!(5);
    let mut count = original.clone();
    count[0] = header.to_string();
    refused(&count, "holds 6 records");
    // Intact, it is A's and not B's: B's anchors do not take it.
    let summary = verify_archive(&file, None).expect("the original verifies");
    let mut conn = store.acquire().await.expect("conn");
    let anchors_b = archive::anchors(&mut conn, &chain_b())
        .await
        .expect("anchors");
    check_links(&[summary], &anchors_b).expect_err("not an archive of B");
    drop(conn);

    // A live row of A edited: A breaks there, B still verifies.
    tamper(
        &store,
        format!(
            "UPDATE audit_events SET detail = 'edited' WHERE id = {}",
            a2[2]
        ),
    )
    .await;
    let reports = verify_all(&store).await;
    let ra = report(&reports, &chain_a());
    assert_eq!(
        ra.broken.map(|b| (b.id, b.reason)),
        Some((i64::try_from(a2[2]).expect("id"), BreakReason::Hash)),
        "{reports:?}"
    );
    assert!(report(&reports, &chain_b()).is_intact());
    assert_eq!(a1.len(), 4);
}

async fn bad_archive_requests_on_a_registrars_chain_change_nothing(db: &TestDb) {
    let store = db.store.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let b = append(&store, &chain_b(), 0..3).await;
    let a = append(&store, &chain_a(), 3..6).await;
    let before = verify_all(&store).await;
    let file = dir.path().join("a.jsonl.gz");
    let refuse = |cut: Cut, chain: Chain| {
        let (store, file) = (store.clone(), file.clone());
        async move {
            archive_chain(&store, &chain, &file, cut)
                .await
                .expect_err("refused")
                .to_string()
        }
    };
    // Below A's first record there are only B's: nothing of A's to archive.
    let err = refuse(Cut::BeforeId(a[0]), chain_a()).await;
    assert!(err.contains("nothing to archive"), "{err}");
    let err = refuse(Cut::Before(1_000), chain_a()).await;
    assert!(err.contains("nothing to archive"), "{err}");
    let err = refuse(Cut::Before(NOW + 1), chain_a()).await;
    assert!(err.contains("in the future"), "{err}");
    // Past the next id of the whole log.
    let err = refuse(Cut::BeforeId(a[2] + 2), chain_a()).await;
    assert!(err.contains("beyond the head"), "{err}");
    // A registrar that never wrote.
    let c = Chain::Registrar(id("spiffe://acme.test/registrar/enrp-c"));
    let err = refuse(Cut::BeforeId(a[2] + 1), c).await;
    assert!(err.contains("nothing to archive"), "{err}");
    assert!(!file.exists());
    assert_eq!(verify_all(&store).await, before);
    let mut conn = store.acquire().await.expect("conn");
    for chain in [chain_a(), chain_b()] {
        assert!(
            archive::anchors(&mut conn, &chain)
                .await
                .expect("anchors")
                .is_empty()
        );
    }
    assert_eq!(b.len(), 3);
}
