//! `/metrics` of a real `enrpd` (issue 22, item 3): registrations, resolutions and
//! refusals by namespace and cause, peers' state and checksum agreement, the audit commit
//! latency histogram; and every metric the Grafana dashboard in `contrib/grafana/rsp.json`
//! queries is one a registrar serves.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use asap::wire::AsapMsg;
use asap::wire::param::Namespace;

use asap::wire::param::{PeChecksum, ServerId};
use asap::wire::{EnrpBody, EnrpMsg};

use crate::admin::api;
use crate::peering::Enrp;
use crate::registrar::{accepted, registration, resolution, resolved};
use crate::support::{Asap, Lab, Registrar};

fn in_namespace(mut msg: AsapMsg, ns: &str) -> AsapMsg {
    let ns = Some(Namespace::new(ns).expect("namespace"));
    match &mut msg {
        AsapMsg::Registration { namespace, .. } | AsapMsg::HandleResolution { namespace, .. } => {
            *namespace = ns;
        }
        _ => unreachable!("a registration or a resolution"),
    }
    msg
}

fn scrape(lab: &Lab, reg: &Registrar, token: &str) -> String {
    let (status, text) = api(lab, reg, Some(token), "GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of the sample `series` (name and labels as written), if served.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The metric names (`# TYPE` lines) of a scrape, with a histogram's series names.
fn served(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_owned());
        }
    }
    names
}

/// Every `rsp_…` name in the queries of a Grafana dashboard (its panels' `expr` and its
/// variables' `query`), with the number of queries.
fn dashboard_metrics(dashboard: &serde_json::Value) -> (BTreeSet<String>, usize) {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(q)) => out.push(q.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    walk(dashboard, &mut queries);
    let mut names = BTreeSet::new();
    for q in &queries {
        let mut rest = q.as_str();
        while let Some(at) = rest.find("rsp_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    (names, queries.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_by_namespace_and_cause_show_peers_and_serve_every_dashboard_query() {
    let lab = Lab::new();
    let token = lab.init_peer("a", "data-a");
    lab.init_peer("b", "data-b");
    let a = lab.start_peer("data-a", &[]);
    let _b = lab.start_peer("data-b", &[a.enrp]);
    let reg = &a.registrar;
    for (path, body) in [
        ("/v1/namespaces", r#"{"name":"lab"}"#),
        (
            "/v1/grants",
            r#"{"identity":"spiffe://acme.test/pe/echo-1","namespace":"lab","pools":"*","actions":["register"]}"#,
        ),
        (
            "/v1/grants",
            r#"{"identity":"spiffe://acme.test/pu/client-1","namespace":"lab","pools":"*","actions":["resolve"]}"#,
        ),
    ] {
        let (status, answer) = api(&lab, reg, Some(&token), "POST", path, Some(body));
        assert_eq!(status, 201, "{path}: {answer}");
    }

    // A PE in two namespaces; a PU resolves in both, and is refused three times.
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), reg.addr)
        .await
        .expect("PE handshake");
    pe.send(&registration("echo", 1)).await;
    assert!(accepted(pe.recv_reply().await));
    pe.send(&in_namespace(registration("echo", 2), "lab")).await;
    assert!(accepted(pe.recv_reply().await));
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), reg.addr)
        .await
        .expect("PU handshake");
    for _ in 0..3 {
        pu.send(&in_namespace(resolution("echo"), "lab")).await;
        assert!(resolved(pu.recv_reply().await).is_ok());
    }
    pu.send(&resolution("echo")).await;
    assert!(resolved(pu.recv_reply().await).is_ok());
    pu.send(&resolution("missing")).await;
    assert_eq!(resolved(pu.recv_reply().await), Err(0x9));
    // A namespace the PU may not use: refused, and it takes no series of its own (a
    // client cannot push the operator's namespaces out by probing others).
    for ns in ["probe-1", "probe-2"] {
        pu.send(&in_namespace(resolution("echo"), ns)).await;
        assert!(resolved(pu.recv_reply().await).is_err());
    }

    // Peers: A sees B up, and B's checksum of its (no) PEs agrees, within a few seconds.
    let peer = "{peer=\"spiffe://acme.test/registrar/b\",server_id=";
    let started = Instant::now();
    let text = loop {
        let text = scrape(&lab, reg, &token);
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}{peer}")))
                .map(str::to_owned)
        };
        let up = line("rsp_peer_up").is_some_and(|l| l.ends_with(" 1"));
        let agrees = line("rsp_peer_checksum_agreement").is_some_and(|l| l.ends_with(" 1"));
        let heard = line("rsp_peer_last_heard_seconds").is_some();
        if up && agrees && heard {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "peer B not up and agreeing at A:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // By namespace and cause.
    let at = |series: &str| sample(&text, series);
    assert_eq!(
        at("rsp_registrations_total{namespace=\"default\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        at("rsp_registrations_total{namespace=\"lab\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        at("rsp_resolutions_total{namespace=\"lab\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        at("rsp_resolutions_total{namespace=\"default\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        at("rsp_rejections_total{namespace=\"default\",cause=\"0x0009\"}"),
        Some(1.0),
        "{text}"
    );
    let other: f64 = text
        .lines()
        .filter(|l| l.starts_with("rsp_rejections_total{namespace=\"(other)\","))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(other, 2.0, "the probes fold into (other): {text}");
    assert!(!text.contains("probe-"), "{text}");

    // The audit commit latency histogram: the registrations were committed before their
    // answers, so it counted them; its buckets are cumulative up to the count.
    let count = at("rsp_audit_commit_seconds_count").expect("a histogram count");
    assert!(count >= 2.0, "{text}");
    assert_eq!(
        at("rsp_audit_commit_seconds_bucket{le=\"+Inf\"}"),
        Some(count)
    );
    assert!(at("rsp_audit_commit_seconds_bucket{le=\"0.0005\"}").is_some_and(|n| n <= count));
    assert!(
        at("rsp_audit_commit_seconds_sum").is_some_and(|s| s > 0.0),
        "{text}"
    );
    // Without the admin token nothing is served.
    let (status, _) = api(&lab, reg, None, "GET", "/metrics", None);
    assert_eq!(status, 401);

    // The dashboard: well-formed JSON whose every rsp_ metric is served above.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/rsp.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard"))
            .expect("the dashboard is JSON");
    let (names, queries) = dashboard_metrics(&dashboard);
    assert!(queries >= 15 && names.len() >= 15, "{names:?}");
    let served = served(&text);
    let missing: Vec<_> = names.difference(&served).collect();
    assert!(missing.is_empty(), "queried, not served: {missing:?}");
}

/// A peer whose announced checksum of its PEs does not match what the registrar holds
/// for it (spec §9.6) shows as 0 in `rsp_peer_checksum_agreement`, named by the identity
/// its certificate proved, while it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_announcing_a_checksum_that_does_not_match_shows_as_disagreeing() {
    let lab = Lab::new();
    let token = lab.init_peer("a", "data-a");
    lab.pki(&["issue", "registrar", "e", "--dns", "localhost"]);
    let a = lab.start_peer("data-a", &[]);
    let mut peer = Enrp::connect(&lab, "registrar-e", a.enrp).await;
    let hello = peer.recv().await.expect("A greets a registrar identity");
    let me = ServerId::new(hello.receiver).expect("A names our Server ID");
    // E owns no PEs at A: their checksum is that of none, 0xFFFF (spec §9.6;
    // `enrp_core::checksum::PeChecksum::EMPTY`). A wrong one first, then the right one.
    let key = "{peer=\"spiffe://acme.test/registrar/e\",server_id=";
    for (checksum, agrees) in [(0x1234, 0), (0xFFFF, 1)] {
        peer.send(&EnrpMsg {
            sender: me,
            receiver: hello.sender.get(),
            body: EnrpBody::Presence {
                reply_required: false,
                checksum: PeChecksum(checksum),
                server_info: None,
            },
        })
        .await;
        let started = Instant::now();
        loop {
            let text = scrape(&lab, &a.registrar, &token);
            let value = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(&format!("{name}{key}")))
                    .and_then(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            };
            if value("rsp_peer_up") == Some(1)
                && value("rsp_peer_last_heard_seconds").is_some()
                && value("rsp_peer_checksum_agreement") == Some(agrees)
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "peer E not up with checksum agreement {agrees} after {checksum:#x}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
