//! `GET /v1/watch/pools` and `GET /v1/watch/audit` (issue 22): a stream sees the registrar's changes in order, a
//! client that resumes with `Last-Event-ID` misses nothing, one whose id is too old or
//! unknown gets `reset` and a snapshot, and the roles are those of the pools' GET. The
//! changes are published into the real feed as `enrpd`'s driver publishes them; the
//! driver's side (a real `enrpd`, real PEs) is `tests/e2e/watch.rs`.

use std::time::Duration;

use axum::body::Body;

use super::*;
use crate::{ChangeKind, PeView, PoolChange};

on_both_backends!(
    a_watcher_sees_add_update_and_removal_in_order_and_resumes_without_a_gap,
    a_too_old_or_unknown_last_event_id_gets_a_reset_and_a_snapshot,
    watching_needs_a_reading_role_and_refusals_are_audited,
    the_most_watchers_are_served_and_the_next_is_refused,
    an_audit_watcher_sees_matching_records_as_committed_and_resumes_after_its_id,
    the_audit_stream_needs_the_audit_role_and_has_a_bound,
    metrics_count_pes_per_pool_folding_the_smallest_and_say_when_the_certificate_expires,
    a_watcher_whose_credential_goes_is_cut_off_within_a_second_and_audited,
);

/// One event as the stream sent it: (event, id, data).
type Sse = (String, Option<u64>, Value);

/// An open stream, read event by event.
struct Stream {
    body: Body,
    buffer: String,
}

impl Stream {
    /// The next event (comments skipped); panics after 10 s without one.
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (String::new(), None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().expect("a numeric id"));
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if name.is_empty() {
                    continue; // a comment
                }
                return (name, id, serde_json::from_str(&data).expect("JSON data"));
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .expect("a frame");
            if let Some(bytes) = frame.data_ref() {
                self.buffer
                    .push_str(std::str::from_utf8(bytes).expect("UTF-8"));
            }
        }
    }

    /// The stream ends (within 10 s) without another event.
    async fn ended(&mut self) {
        assert!(!self.buffer.contains("\n\n"), "{}", self.buffer);
        let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
            .await
            .expect("the end within 10 s");
        assert!(frame.is_none(), "more after the end: {frame:?}");
    }

    /// No event is ready now (what was published was filtered out).
    async fn nothing_pending(&mut self) {
        assert!(!self.buffer.contains("\n\n"), "{}", self.buffer);
        let more = tokio::time::timeout(Duration::from_millis(200), self.body.frame()).await;
        assert!(more.is_err(), "an unexpected event: {more:?}");
    }
}

impl Fixture {
    /// Opens `GET path` as the admin client certificate `peer`.
    async fn watch_as(&self, path: &str, peer: &Peer) -> Stream {
        let mut request = Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("a request");
        request.extensions_mut().insert(peer.clone());
        self.open(request).await
    }

    /// Opens `GET path` with `token` and `Last-Event-ID` `last`.
    async fn watch(&self, path: &str, token: &str, last: Option<&str>) -> Stream {
        let mut request = Request::builder()
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(id) = last {
            request = request.header("last-event-id", id);
        }
        self.open(request.body(Body::empty()).expect("a request"))
            .await
    }

    /// Sends `request`, which must open an event stream.
    async fn open(&self, request: Request<Body>) -> Stream {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        Stream {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    fn publish(&self, namespace: &str, pool: &str, pe: u32, change: ChangeKind) {
        let pool_element = (change != ChangeKind::Removed).then(|| PeView {
            pe_id: format!("{pe:#010x}"),
            registrant: Some("spiffe://acme.test/pe/echo-1".into()),
            home_registrar: "0x00000001".into(),
            transport: "tcp 127.0.0.1:7".into(),
            policy: if change == ChangeKind::Added {
                "lu:0"
            } else {
                "lu:40"
            }
            .into(),
            registration_life_ms: 300_000,
            labels: [("zone".to_owned(), "a1".to_owned())].into(),
            rtt_us: None,
            registered_ms: None,
            draining: false,
            drain_deadline_ms: None,
            serving_identity: None,
            check: None,
        });
        self.registrar.feed.publish(PoolChange {
            namespace: namespace.into(),
            pool: pool.into(),
            change,
            pe_id: format!("{pe:#010x}"),
            pool_element,
            reason: (change == ChangeKind::Removed).then(|| "remove:timeout".into()),
        });
    }
}

async fn a_watcher_sees_add_update_and_removal_in_order_and_resumes_without_a_gap(f: Fixture) {
    f.create_namespaces(&["lab"]).await;
    let first = f.registrar.feed.last_id();
    let mut s = f
        .watch("/v1/watch/pools?namespace=lab", &f.auditor, None)
        .await;
    let (name, id, data) = s.next().await;
    assert_eq!((name.as_str(), id), ("snapshot", Some(first)));
    assert_eq!(data, json!([]));

    f.publish("lab", "echo", 1, ChangeKind::Added);
    f.publish("other", "echo", 9, ChangeKind::Added); // another namespace: not this stream's
    f.publish("lab", "echo", 1, ChangeKind::Updated);
    f.publish("lab", "echo", 1, ChangeKind::Removed);
    let seen: Vec<Sse> = vec![s.next().await, s.next().await, s.next().await];
    let names: Vec<&str> = seen.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["added", "updated", "removed"]);
    let ids: Vec<u64> = seen.iter().map(|e| e.1.expect("an id")).collect();
    assert_eq!(ids, [first + 1, first + 3, first + 4]);
    assert_eq!(seen[0].2["pool_element"]["policy"], "lu:0");
    assert_eq!(seen[1].2["pool_element"]["policy"], "lu:40");
    // The PE's labels (issue 23) travel in the events as in the pools' GET.
    assert_eq!(seen[0].2["pool_element"]["labels"]["zone"], "a1");
    assert_eq!(seen[2].2["reason"], "remove:timeout");
    assert_eq!(seen[2].2["pool_element"], Value::Null);
    s.nothing_pending().await;

    // Reconnecting after the first change: the rest, without a snapshot, in order.
    let after = (first + 1).to_string();
    let mut again = f
        .watch("/v1/watch/pools?namespace=lab", &f.operator, Some(&after))
        .await;
    let (a, b) = (again.next().await, again.next().await);
    assert_eq!((a.0.as_str(), a.1), ("updated", Some(first + 3)));
    assert_eq!((b.0.as_str(), b.1), ("removed", Some(first + 4)));
    again.nothing_pending().await;

    // One pool only: changes of other pools of the namespace are not sent.
    let mut one = f
        .watch("/v1/watch/pools?namespace=lab&pool=echo", &f.admin, None)
        .await;
    assert_eq!(one.next().await.0, "snapshot");
    f.publish("lab", "other", 2, ChangeKind::Added);
    f.publish("lab", "echo", 3, ChangeKind::Added);
    let (name, _, data) = one.next().await;
    assert_eq!(
        (name.as_str(), data["pe_id"].as_str()),
        ("added", Some("0x00000003"))
    );
    // The first stream saw both.
    assert_eq!(s.next().await.2["pool"], "other");
    assert_eq!(s.next().await.2["pool"], "echo");
}

async fn a_too_old_or_unknown_last_event_id_gets_a_reset_and_a_snapshot(f: Fixture) {
    f.create_namespaces(&["lab"]).await;
    // The fixture's feed holds 16 changes: 20 push the first four out.
    for pe in 1..=20 {
        f.publish("lab", "echo", pe, ChangeKind::Added);
    }
    let last = f.registrar.feed.last_id();
    for stale in [last - 20, last - 17, last + 1, 3] {
        let mut s = f
            .watch(
                "/v1/watch/pools?namespace=lab",
                &f.auditor,
                Some(&stale.to_string()),
            )
            .await;
        let (name, _, data) = s.next().await;
        assert_eq!(name, "reset", "Last-Event-ID {stale}");
        assert!(
            data["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no longer held"))
        );
        let (name, id, _) = s.next().await;
        assert_eq!((name.as_str(), id), ("snapshot", Some(last)));
    }
    // The oldest still held: resumes.
    let mut s = f
        .watch(
            "/v1/watch/pools?namespace=lab",
            &f.auditor,
            Some(&(last - 16).to_string()),
        )
        .await;
    assert_eq!(s.next().await.1, Some(last - 15));

    // A stream that falls behind the live channel: reset and a snapshot, then live again.
    let mut slow = f
        .watch("/v1/watch/pools?namespace=lab", &f.auditor, None)
        .await;
    assert_eq!(slow.next().await.0, "snapshot");
    for pe in 0..(crate::changes::CHANNEL as u32 + 5) {
        f.publish("lab", "echo", pe, ChangeKind::Updated);
    }
    let (name, _, data) = slow.next().await;
    assert_eq!(name, "reset");
    assert!(
        data["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not read in time"))
    );
    assert_eq!(slow.next().await.0, "snapshot");
    f.publish("lab", "echo", 1, ChangeKind::Removed);
    assert_eq!(slow.next().await.0, "removed");
}

async fn watching_needs_a_reading_role_and_refusals_are_audited(f: Fixture) {
    f.create_namespaces(&["lab"]).await;
    let path = "/v1/watch/pools?namespace=lab";
    f.call("GET", path, None, None)
        .await
        .problem(401, "unauthenticated");
    f.call("GET", path, Some("rsp_0000_forged"), None)
        .await
        .problem(401, "unauthenticated");
    // A valid certificate of the domain without an admin grant: 403, audited with it.
    let leaf = f.ca.leaf("pe/echo-1").issue();
    let peer = Peer::from_certificate(&leaf.chain[0]).expect("a peer");
    let mut request = Request::builder()
        .uri(path)
        .body(Body::empty())
        .expect("a request");
    request.extensions_mut().insert(peer.clone());
    f.send(request).await.problem(403, "forbidden");
    let refused = f.audit("admin:request").await;
    assert!(
        refused
            .iter()
            .any(|e| e.record.actor.as_ref() == Some(peer.id())
                && e.record
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.contains("/v1/watch/pools"))),
        "{refused:?}"
    );
    assert_eq!(refused.len(), 3, "{refused:?}");
    // Bad input: a clear error, nothing opened.
    f.call(
        "GET",
        "/v1/watch/pools?namespace=nope",
        Some(&f.auditor),
        None,
    )
    .await
    .problem(404, "not-found");
    f.call(
        "GET",
        "/v1/watch/pools?namespace=lab&pool=hex:0",
        Some(&f.auditor),
        None,
    )
    .await
    .problem(422, "invalid");
    f.call("GET", "/v1/watch/pools", Some(&f.auditor), None)
        .await
        .problem(400, "bad-request");
    let mut request = Request::builder()
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {}", f.auditor))
        .header("last-event-id", "abc")
        .body(Body::empty())
        .expect("a request");
    request
        .extensions_mut()
        .insert(crate::auth::RemoteAddr(([127, 0, 0, 1], 1).into()));
    f.send(request).await.problem(400, "bad-request");
    assert_eq!(f.registrar.feed.watchers(), 0);
}

async fn the_most_watchers_are_served_and_the_next_is_refused(f: Fixture) {
    f.create_namespaces(&["lab"]).await;
    let path = "/v1/watch/pools?namespace=lab";
    // Streams are counted by their receivers: hold all but one.
    let held: Vec<_> = (1..crate::routes::watch::MAX_WATCHERS)
        .map(|_| f.registrar.feed.subscribe(None))
        .collect();
    let mut last = f.watch(path, &f.auditor, None).await;
    assert_eq!(last.next().await.0, "snapshot");
    f.call("GET", path, Some(&f.auditor), None)
        .await
        .problem(503, "unavailable");
    // One closes: the next is served.
    drop(last);
    let mut next = f.watch(path, &f.auditor, None).await;
    assert_eq!(next.next().await.0, "snapshot");
    drop(held);
}

/// Over real HTTPS: a stream is a request in flight for as long as it lasts, so the
/// server's idle timeout does not close its connection between events.
#[tokio::test]
async fn a_stream_outlives_the_connection_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fixture().await;
    f.create_namespaces(&["lab"]).await;
    let mut options = crate::ServeOptions::new(Arc::new(crate::ServeCounters::default()));
    options.idle_timeout = Duration::from_millis(500);
    let https = Https::start(&f, options).await;
    let mut tls = https
        .connect(std::net::Ipv4Addr::LOCALHOST)
        .await
        .expect("connected");
    let request = format!(
        "GET /v1/watch/pools?namespace=lab HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
        f.auditor
    );
    tls.write_all(request.as_bytes()).await.expect("sent");
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let mut read_until = async |tls: &mut tokio_rustls::client::TlsStream<_>, what: &str| {
        while !seen.contains(what) {
            let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
                .await
                .expect("within 10 s")
                .expect("read");
            assert!(n > 0, "the connection closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    read_until(&mut tls, "event: snapshot").await;
    // Four idle timeouts without an event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.publish("lab", "echo", 1, ChangeKind::Added);
    read_until(&mut tls, "event: added").await;
    https.stop().await;
}

async fn an_audit_watcher_sees_matching_records_as_committed_and_resumes_after_its_id(f: Fixture) {
    f.create_namespaces(&["before"]).await;
    let path = "/v1/watch/audit?action=admin:namespace.create";
    let mut s = f.watch(path, &f.auditor, None).await;
    let (name, head, data) = s.next().await;
    assert_eq!(name, "head");
    let head = head.expect("an id");
    assert_eq!(data["id"], head);
    // A record that does not match (a grant), then two that do.
    let grant = json!({"identity": "spiffe://acme.test/pe/x", "namespace": "*", "pools": "*", "actions": ["resolve"]});
    assert_eq!(
        f.call("POST", "/v1/grants", Some(&f.admin), Some(grant))
            .await
            .status,
        201
    );
    f.create_namespaces(&["one", "two"]).await;
    let first = s.next().await;
    let second = s.next().await;
    assert_eq!((first.0.as_str(), second.0.as_str()), ("audit", "audit"));
    assert_eq!(first.2["namespace"], "one", "{}", first.2);
    assert_eq!(first.2["action"], "admin:namespace.create");
    assert_eq!(second.2["namespace"], "two");
    let (a, b) = (first.1.expect("an id"), second.1.expect("an id"));
    assert!(head < a && a < b, "{head} < {a} < {b}");
    assert_eq!(first.2["id"], a);
    s.nothing_pending().await;

    // Reconnecting after the first: the second, without a head.
    let mut again = f.watch(path, &f.admin, Some(&a.to_string())).await;
    let (name, id, _) = again.next().await;
    assert_eq!((name.as_str(), id), ("audit", Some(b)));
    // Bad filters: the same answers as GET /v1/audit.
    f.call(
        "GET",
        "/v1/watch/audit?namespace=Bad!",
        Some(&f.auditor),
        None,
    )
    .await
    .problem(422, "invalid");
    f.call("GET", "/v1/watch/audit?limit=5", Some(&f.auditor), None)
        .await
        .problem(400, "bad-request");
}

async fn the_audit_stream_needs_the_audit_role_and_has_a_bound(f: Fixture) {
    let path = "/v1/watch/audit";
    f.call("GET", path, None, None)
        .await
        .problem(401, "unauthenticated");
    // An operator may watch pools, not read the audit log.
    f.call("GET", path, Some(&f.operator), None)
        .await
        .problem(403, "forbidden");
    let refused = f.audit("admin:request").await;
    assert!(
        refused
            .iter()
            .any(|e| e.record.outcome.to_string() == "forbidden"
                && e.record
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.contains("/v1/watch/audit"))),
        "{refused:?}"
    );
    let mut open = Vec::new();
    for _ in 0..crate::routes::watch::MAX_AUDIT_WATCHERS {
        let mut s = f.watch(path, &f.auditor, None).await;
        assert_eq!(s.next().await.0, "head");
        open.push(s);
    }
    f.call("GET", path, Some(&f.auditor), None)
        .await
        .problem(503, "unavailable");
    open.pop();
    let mut s = f.watch(path, &f.auditor, None).await;
    assert_eq!(s.next().await.0, "head");
}

async fn metrics_count_pes_per_pool_folding_the_smallest_and_say_when_the_certificate_expires(
    f: Fixture,
) {
    use crate::routes::health::MAX_POOL_SERIES;
    // A pool of 3 PEs, a pool of 2, and more pools of one PE than there are series.
    for pe in 1..=3 {
        f.publish("lab", "big", pe, ChangeKind::Added);
    }
    f.publish("lab", "two", 1, ChangeKind::Added);
    f.publish("lab", "two", 2, ChangeKind::Added);
    f.publish("lab", "two", 3, ChangeKind::Added);
    f.publish("lab", "two", 3, ChangeKind::Removed);
    let ones = MAX_POOL_SERIES + 5;
    for i in 0..ones {
        f.publish("lab", &format!("p{i:03}"), 1, ChangeKind::Added);
    }
    f.create_namespaces(&["lab"]).await;
    let _stream = f
        .watch("/v1/watch/pools?namespace=lab", &f.auditor, None)
        .await;
    let r = f.call("GET", "/metrics", Some(&f.auditor), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let series: Vec<&str> = r
        .text
        .lines()
        .filter(|l| l.starts_with("rsp_pool_pes{"))
        .collect();
    assert_eq!(series.len(), MAX_POOL_SERIES + 1, "{series:?}");
    assert_eq!(series[0], r#"rsp_pool_pes{namespace="lab",pool="big"} 3"#);
    assert_eq!(series[1], r#"rsp_pool_pes{namespace="lab",pool="two"} 2"#);
    // 2 series taken by big and two: of the one-PE pools, MAX - 2 have a series.
    let folded = ones - (MAX_POOL_SERIES - 2);
    assert_eq!(
        series[MAX_POOL_SERIES],
        format!(r#"rsp_pool_pes{{namespace="(other)",pool="(other)"}} {folded}"#)
    );
    assert!(
        r.text.contains("rsp_watch_streams{kind=\"pools\"} 1\n"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("rsp_watch_streams{kind=\"audit\"} 0\n"),
        "{}",
        r.text
    );
    // The fixture's registrar certificate is valid now (the fixed clock is in 2023).
    let left: i64 = r
        .text
        .lines()
        .find_map(|l| l.strip_prefix("rsp_certificate_expiry_seconds "))
        .expect("the expiry")
        .parse()
        .expect("seconds");
    let not_after = f.trust.identity().as_peer().not_after();
    let at = not_after
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert_eq!(left, at as i64 - (NOW / 1000) as i64);
    // Operators may not read metrics.
    f.call("GET", "/metrics", Some(&f.operator), None)
        .await
        .problem(403, "forbidden");
}

/// A stream's caller is checked again every second (`auth::RECHECK`), not only when it
/// connected: a token revoked in the store behind this API's back (as `enrpd token
/// revoke` or another registrar of a fleet does), a token revoked through the API, and an
/// admin certificate whose grant is withdrawn each get an `error` event within about a
/// second and the stream ends; each cut is audited as a refused request with the caller.
/// Without the re-check the streams would go on for `MAX_STREAM` (10 minutes).
async fn a_watcher_whose_credential_goes_is_cut_off_within_a_second_and_audited(f: Fixture) {
    f.create_namespaces(&["lab"]).await;
    let pools = "/v1/watch/pools?namespace=lab";
    let new_auditor = || async {
        let mut conn = f.store.acquire().await.expect("a connection");
        let hasher = TokenHasher::insecure_fast_for_tests();
        db::create_token(&mut conn, &hasher, "watcher", Role::Auditor, None, NOW)
            .await
            .expect("a token")
    };
    let cut_off = |stream: Stream, why: &'static str| async move {
        let mut stream = stream;
        #[allow(clippy::disallowed_methods)] // the bound under test is in real time
        let start = std::time::Instant::now();
        let (event, _, data) = stream.next().await;
        let took = start.elapsed();
        assert_eq!(event, "error", "{data}");
        assert!(
            data["detail"].as_str().is_some_and(|d| d.contains(why)),
            "{data}"
        );
        assert!(took < Duration::from_secs(3), "cut off after {took:?}");
        stream.ended().await;
    };

    // (1) Revoked in the store, this API's token cache not told.
    let one = new_auditor().await;
    let mut s = f.watch(pools, &one.token, None).await;
    assert_eq!(s.next().await.0, "snapshot");
    {
        let mut conn = f.store.acquire().await.expect("a connection");
        db::revoke_token(&mut conn, &one.info.id, NOW)
            .await
            .expect("revoked");
    }
    cut_off(s, "revoked").await;

    // (2) The audit stream; the token revoked through the API.
    let two = new_auditor().await;
    let mut s = f.watch("/v1/watch/audit", &two.token, None).await;
    assert_eq!(s.next().await.0, "head");
    let r = f
        .call(
            "DELETE",
            &format!("/v1/tokens/{}", two.info.id),
            Some(&f.admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    cut_off(s, "revoked").await;

    // (3) An admin certificate whose grant is withdrawn.
    let leaf = f.ca.leaf("admin/ops").issue();
    let peer = Peer::from_certificate(&leaf.chain[0]).expect("a peer");
    let r = f
        .call("POST", "/v1/grants", Some(&f.admin), Some(json!({"identity": "spiffe://acme.test/admin/ops", "namespace": "*", "pools": "*", "actions": ["admin:read"]})))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let grant = serde_json::from_str::<Value>(&r.text).expect("JSON")["id"].clone();
    let mut s = f.watch_as(pools, &peer).await;
    assert_eq!(s.next().await.0, "snapshot");
    let r = f
        .call(
            "DELETE",
            &format!("/v1/grants/{grant}"),
            Some(&f.admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    cut_off(s, "no longer has").await;

    // Each cut in the audit log, with who and which stream.
    let refused = f.audit("admin:request").await;
    let cut = |actor: &str, path: &str| {
        refused.iter().any(|e| {
            e.record
                .actor
                .as_ref()
                .is_some_and(|a| a.to_string() == actor)
                && e.record.detail.as_deref().is_some_and(|d| d.contains(path))
        })
    };
    let token_actor = |id: &str| format!("spiffe://acme.test/token/{id}");
    assert!(
        cut(&token_actor(&one.info.id), "/v1/watch/pools"),
        "{refused:?}"
    );
    assert!(
        cut(&token_actor(&two.info.id), "/v1/watch/audit"),
        "{refused:?}"
    );
    assert!(
        cut("spiffe://acme.test/admin/ops", "/v1/watch/pools"),
        "{refused:?}"
    );
    // A watcher whose credential stays is not cut off meanwhile.
    let mut s = f.watch(pools, &f.auditor, None).await;
    assert_eq!(s.next().await.0, "snapshot");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.nothing_pending().await;
}
