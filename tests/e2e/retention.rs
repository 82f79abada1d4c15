//! Audit retention (issue 18 item 5, docs/SECURITY.md "Audit retention"): `enrpd audit
//! archive` next to a running `enrpd`, `enrpd audit verify --archive`, and checkpoints
//! before and after an archive.

use std::path::Path;

use crate::registrar::{accepted, registration};
use crate::support::{Asap, Lab, Registrar, enrpd_audit};

/// Registers PEs `ids` in pool `echo` on one connection.
async fn register(registrar: &Registrar, lab: &Lab, ids: std::ops::Range<u32>) {
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), registrar.addr)
        .await
        .expect("PE");
    for id in ids {
        pe.send(&registration("echo", id)).await;
        assert!(accepted(pe.recv_reply().await), "PE {id} registered");
    }
}

/// A signed checkpoint of the current head in `file`; returns the record id it names.
fn checkpoint(lab: &Lab, file: &Path) -> u64 {
    let (ok, text) = enrpd_audit(lab, &["checkpoint", "--to", path(file)]);
    assert!(ok, "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("checkpoint")).expect("JSON");
    json["id"].as_u64().expect("id")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_next_to_a_running_registrar_verifies_and_the_chain_goes_on() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with(60_000, 60_000);
    register(&registrar, &lab, 1..6).await;
    let early = lab.path("early.json");
    let early_id = checkpoint(&lab, &early);
    register(&registrar, &lab, 6..11).await;
    let cut = checkpoint(&lab, &lab.path("cut.json"));
    assert!(cut > early_id);

    // Bad input changes nothing.
    let archive = lab.path("audit-1.jsonl.gz");
    let a = path(&archive);
    let (ok, text) = enrpd_audit(
        &lab,
        &["archive", "--before", "2999-01-01T00:00:00Z", "--to", a],
    );
    assert!(!ok && text.contains("in the future"), "{text}");
    let (ok, text) = enrpd_audit(
        &lab,
        &["archive", "--before", "1970-01-02T00:00:00Z", "--to", a],
    );
    assert!(!ok && text.contains("nothing to archive"), "{text}");
    let (ok, text) = enrpd_audit(&lab, &["archive", "--before", "last week", "--to", a]);
    assert!(!ok && text.contains("RFC 3339"), "{text}");
    assert!(!archive.exists());

    // Archive everything up to the second checkpoint while enrpd runs.
    let (ok, text) = enrpd_audit(
        &lab,
        &["archive", "--before-seq", &(cut + 1).to_string(), "--to", a],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("archived records 1-{cut}")),
        "{text}"
    );
    let (ok, text) = enrpd_audit(&lab, &["archive", "--before-seq", "2", "--to", a]);
    assert!(!ok && text.contains("already exists"), "{text}");

    // The registrar goes on; its records chain from the archived head.
    register(&registrar, &lab, 11..14).await;
    let (ok, text) = enrpd_audit(&lab, &["verify"]);
    assert!(
        ok && text.contains("intact") && text.contains(&format!("after archived record {cut}")),
        "{text}"
    );
    let (ok, text) = enrpd_audit(&lab, &["verify", "--archive", a]);
    assert!(
        ok && text.contains("the whole chain from record 1 verifies"),
        "{text}"
    );

    // A second archive by time, as an operator types it (RFC 3339): the records since.
    let now = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%3NZ"])
        .output()
        .expect("date");
    let now = String::from_utf8_lossy(&now.stdout).trim().to_owned();
    let second = lab.path("audit-2.jsonl.gz");
    let b = path(&second);
    let (ok, text) = enrpd_audit(&lab, &["archive", "--before", &now, "--to", b]);
    assert!(
        ok && text.contains(&format!("archived records {}-", cut + 1)),
        "{text}"
    );
    register(&registrar, &lab, 14..16).await;
    let (ok, text) = enrpd_audit(&lab, &["verify", "--archive", b, "--archive", a]);
    assert!(
        ok && text.contains("the whole chain from record 1 verifies"),
        "{text}"
    );
    // The newer archive alone: fine, older records unchecked; the older alone: a gap.
    let (ok, text) = enrpd_audit(&lab, &["verify", "--archive", b]);
    assert!(ok && text.contains("not checked"), "{text}");
    let (ok, text) = enrpd_audit(&lab, &["verify", "--archive", a]);
    assert!(!ok && text.contains("GAP"), "{text}");

    // A checkpoint from before the archive: its record is now in the archive.
    let (ok, text) = enrpd_audit(&lab, &["verify", "--checkpoint", path(&early)]);
    assert!(!ok && text.contains("is archived"), "{text}");
    let (ok, text) = enrpd_audit(
        &lab,
        &[
            "verify",
            "--checkpoint",
            path(&early),
            "--archive",
            a,
            "--archive",
            b,
        ],
    );
    assert!(
        ok && text.contains(&format!("checkpoint holds: record {early_id}")),
        "{text}"
    );
    // At the anchor itself the database keeps the hash.
    let (ok, text) = enrpd_audit(
        &lab,
        &["verify", "--checkpoint", path(&lab.path("cut.json"))],
    );
    assert!(ok && text.contains("checkpoint holds"), "{text}");

    // A later checkpoint, then the tail cut off behind the triggers' back: caught.
    let late = lab.path("late.json");
    checkpoint(&lab, &late);
    drop(registrar);
    let store = store::db::Store::open(&lab.path("data"), &Default::default())
        .await
        .expect("store");
    let mut conn = store.acquire().await.expect("connection");
    // A plain delete of a live record is refused, as before any archive.
    let err = sqlx::query("DELETE FROM audit_events WHERE id = (SELECT MAX(id) FROM audit_events)")
        .execute(conn.sqlite().expect("SQLite"))
        .await
        .expect_err("append-only");
    assert!(err.to_string().contains("append-only"), "{err}");
    drop(conn);
    store.close().await;
    crate::support::cut_audit_tail(&lab).await;
    let (ok, text) = enrpd_audit(&lab, &["verify", "--archive", a, "--archive", b]);
    assert!(ok, "the chain alone looks intact: {text}");
    let (ok, text) = enrpd_audit(
        &lab,
        &[
            "verify",
            "--checkpoint",
            path(&late),
            "--archive",
            a,
            "--archive",
            b,
        ],
    );
    assert!(!ok && text.contains("TRUNCATED"), "{text}");

    // The archive cut short on disk: caught.
    let bytes = std::fs::read(&archive).expect("archive");
    std::fs::write(&archive, &bytes[..bytes.len() / 2]).expect("truncate");
    let (ok, text) = enrpd_audit(&lab, &["verify", "--archive", a]);
    assert!(!ok && text.contains("archives:"), "{text}");
}
