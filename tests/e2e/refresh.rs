//! Unchanged re-registrations, acknowledged by the connection task that reads them (issue
//! 20; docs/SECURITY.md, "Re-registrations that change nothing"): the core still does
//! what a re-registration does, every one is in the audit log, and only the PE's own
//! connection gets one acknowledged there: anyone else's is judged by the core.

use std::time::{Duration, Instant};

use asap::wire::AsapMsg;

use crate::registrar::{accepted, registration, rejected_with, resolution, resolved};
use crate::support::{Asap, Lab};

/// The audit records of the lab's registrar (stopped): (action, actor, outcome, detail).
async fn audit(lab: &Lab) -> Vec<(String, Option<String>, String, Option<String>)> {
    let store = store::db::Store::open(&lab.path("data"), &Default::default())
        .await
        .expect("store");
    let mut conn = store.acquire().await.expect("connection");
    let mut filter = store::audit::AuditFilter::default();
    filter.limit = 1000;
    let page = store::audit::query(&mut conn, &filter)
        .await
        .expect("query");
    page.events
        .into_iter()
        .map(|e| {
            (
                e.record.action.to_string(),
                e.record.actor.map(|a| a.as_str().to_owned()),
                e.record.outcome.to_text().into_owned(),
                e.record.detail,
            )
        })
        .collect()
}

/// How many operations a record accounts for: the count an aggregate starts with, else 1.
fn operations(detail: Option<&str>) -> u64 {
    match detail {
        Some(d) if d.contains("aggregated") => d
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("an aggregate starts with its count"),
        _ => 1,
    }
}

const PE: &str = "spiffe://acme.test/pe/echo-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_re_registrations_keep_a_pe_alive_and_each_is_audited() {
    let lab = Lab::new();
    lab.init_registrar();
    // Keep-alives every second, answered within a second, or the PE is removed.
    let registrar = lab.start_registrar_with(1000, 1000);
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), registrar.addr)
        .await
        .expect("PE handshake");
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), registrar.addr)
        .await
        .expect("PU handshake");
    pe.send(&registration("echo", 7)).await;
    assert!(accepted(pe.recv_reply().await));

    // The PE never answers a keep-alive (`recv_reply` skips them); it re-registers,
    // unchanged, four times a second for four seconds. Each starts its keep-alive over at
    // the core, as a re-registration through the core does: it stays.
    let start = Instant::now();
    let mut unchanged = 0u64;
    while start.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        pe.send(&registration("echo", 7)).await;
        assert!(
            accepted(pe.recv_reply().await),
            "re-registration {unchanged}"
        );
        unchanged += 1;
    }
    pu.send(&resolution("echo")).await;
    assert_eq!(
        resolved(pu.recv_reply().await),
        Ok(vec![(7, PE.to_owned())]),
        "kept by its re-registrations"
    );

    // A changed one is the core's: accepted, with a record of its own.
    let AsapMsg::Registration {
        namespace,
        pool_handle,
        mut pool_element,
    } = registration("echo", 7)
    else {
        unreachable!("a registration");
    };
    pool_element.registration_life = 60_000;
    let changed = AsapMsg::Registration {
        namespace,
        pool_handle,
        pool_element,
    };
    pe.send(&changed).await;
    assert!(accepted(pe.recv_reply().await));

    // Silent now: removed after the keep-alive interval and timeout.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    pu.send(&resolution("echo")).await;
    assert_eq!(resolved(pu.recv_reply().await), Err(0x9), "timed out");

    drop((pe, pu));
    assert!(registrar.terminate().success());
    let verify = lab.verify_audit();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && text.contains("intact"), "{text}");

    let records = audit(&lab).await;
    let of_pe = |action: &str| {
        records
            .iter()
            .filter(|(a, who, o, _)| a == action && who.as_deref() == Some(PE) && o == "ok")
            .collect::<Vec<_>>()
    };
    assert_eq!(of_pe("register").len(), 1, "{records:#?}");
    let reregistered = of_pe("reregister");
    let counted: u64 = reregistered
        .iter()
        .map(|(_, _, _, d)| operations(d.as_deref()))
        .sum();
    assert_eq!(
        counted,
        unchanged + 1,
        "every re-registration is counted: {reregistered:#?}"
    );
    assert!(
        reregistered.iter().any(|(_, _, _, d)| d
            .as_deref()
            .is_some_and(|d| d.contains("unchanged") && d.contains("aggregated"))),
        "{reregistered:#?}"
    );
    assert!(
        records.iter().any(|(a, _, _, _)| a == "remove:timeout"),
        "{records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_else_gets_a_pes_re_registration_acknowledged_and_the_audit_shows_it() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with(10_000, 10_000);
    let mut a = Asap::connect(&lab.identity("pe-echo-1"), registrar.addr)
        .await
        .expect("PE handshake");
    a.send(&registration("echo", 5)).await;
    assert!(accepted(a.recv_reply().await));
    for _ in 0..3 {
        a.send(&registration("echo", 5)).await;
        assert!(accepted(a.recv_reply().await));
    }

    // Another PE's certificate, granted the same pool, sending the very same bytes: the
    // PE is not its own (0x4), however often it tries.
    let mut b = Asap::connect(&lab.identity("pe-echo-2"), registrar.addr)
        .await
        .expect("handshake");
    for _ in 0..3 {
        b.send(&registration("echo", 5)).await;
        assert_eq!(rejected_with(b.recv_reply().await), Some(0x4));
    }
    // A PU's certificate (no register grant): 0xA.
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), registrar.addr)
        .await
        .expect("handshake");
    pu.send(&registration("echo", 5)).await;
    assert_eq!(rejected_with(pu.recv_reply().await), Some(0xA));

    // The same identity on a second connection: the core moves the PE there; the first
    // connection's next re-registration goes to the core again and moves it back.
    let mut a2 = Asap::connect(&lab.identity("pe-echo-1"), registrar.addr)
        .await
        .expect("handshake");
    a2.send(&registration("echo", 5)).await;
    assert!(accepted(a2.recv_reply().await));
    a.send(&registration("echo", 5)).await;
    assert!(accepted(a.recv_reply().await));
    // Closing the second connection leaves the PE where it is, registered.
    drop(a2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    pu.send(&resolution("echo")).await;
    assert_eq!(
        resolved(pu.recv_reply().await),
        Ok(vec![(5, PE.to_owned())])
    );

    drop((a, b, pu));
    assert!(registrar.terminate().success());
    let records = audit(&lab).await;
    let refused = |who: &str, cause: &str| {
        records
            .iter()
            .filter(|(a, w, o, _)| a == "register" && w.as_deref() == Some(who) && o == cause)
            .map(|(_, _, _, d)| operations(d.as_deref()))
            .sum::<u64>()
    };
    assert_eq!(
        refused("spiffe://acme.test/pe/echo-2", "cause:0x0004"),
        3,
        "{records:#?}"
    );
    assert_eq!(
        refused("spiffe://acme.test/pu/client-1", "cause:0x000a"),
        1,
        "{records:#?}"
    );
}
