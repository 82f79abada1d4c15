//! Issue 21, drain at the registrar: `PUT …/pool-elements/{pe_id}/drain` takes a PE out of
//! every resolution while it stays registered, its open sessions go on, and at the
//! deadline its home registrar deregisters it; the PE cannot undo the drain by
//! registering again. Who may drain, and every step, in the audit log.

use std::time::Duration;

use crate::admin::{api, new_token};
use crate::registrar::{accepted, registration, resolution, resolved};
use crate::restart::wait_line;
use crate::sidecar::{Draining, exchange, pool, until};
use crate::support::Asap;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The PEs of pool `pool` in the admin API (none when it has none).
fn entries(d: &Draining, pool: &str) -> Vec<serde_json::Value> {
    let (status, body) = api(
        &d.lab,
        &d.registrar,
        Some(&d.token),
        "GET",
        &format!("/v1/namespaces/default/pools/{pool}/pool-elements"),
        None,
    );
    match status {
        200 => json(&body).as_array().cloned().unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[test]
fn an_operators_drain_stops_new_sessions_the_open_one_completes_then_the_pe_goes() {
    // A sidecar PE forwarding pool `web` to a line echo server, a gateway, one session.
    let mut d = Draining::start_with(&[]);
    let (mut open, mut answers) = d.session();
    let pe = entries(&d, "web");
    assert_eq!(pe.len(), 1, "{pe:?}");
    let pe_id = pe[0]["pe_id"].as_str().expect("pe_id").to_owned();
    assert_eq!(pe[0]["draining"], false);
    let route = format!("/v1/namespaces/default/pools/web/pool-elements/{pe_id}/drain");

    // A wrong namespace is refused and changes nothing.
    let wrong = format!("/v1/namespaces/elsewhere/pools/web/pool-elements/{pe_id}/drain");
    let (status, body) = api(&d.lab, &d.registrar, Some(&d.token), "PUT", &wrong, None);
    assert_eq!(status, 404, "{body}");
    assert_eq!(pool(&d.lab, d.registrar.addr).len(), 1);

    let (status, body) = api(
        &d.lab,
        &d.registrar,
        Some(&d.token),
        "PUT",
        &route,
        Some(r#"{"deadline_secs": 4}"#),
    );
    assert_eq!(status, 200, "{body}");
    let deadline = json(&body)["drain_deadline_ms"].as_u64().expect("deadline");
    // Still registered, shown draining with its deadline, returned to nobody.
    let pe = entries(&d, "web");
    assert_eq!(pe[0]["draining"], true, "{pe:?}");
    assert_eq!(pe[0]["drain_deadline_ms"].as_u64(), Some(deadline));
    assert!(
        pool(&d.lab, d.registrar.addr).is_empty(),
        "the registrar still returns a draining PE"
    );
    // The open session goes on.
    assert_eq!(exchange(&mut open, &mut answers, "two"), "two\n");
    drop((open, answers));

    // At the deadline its home deregisters it, audited with the reason.
    assert!(
        until(Duration::from_secs(10), || entries(&d, "web").is_empty()).is_some(),
        "still registered after the deadline"
    );
    let (_, body) = api(
        &d.lab,
        &d.registrar,
        Some(&d.token),
        "GET",
        "/v1/audit?action=remove:drained",
        None,
    );
    assert!(body.contains(&pe_id), "no remove:drained record: {body}");
    let (_, body) = api(
        &d.lab,
        &d.registrar,
        Some(&d.token),
        "GET",
        "/v1/audit?action=admin:pe.drain",
        None,
    );
    assert!(
        body.contains("\"outcome\":\"ok\"") && body.contains("not-found"),
        "the drain and the refused one are on record: {body}"
    );
    // The PE notices its registrar went silent, registers again and is refused: the drain
    // is the operator's. It says so in one line and exits.
    wait_line(&d.lines, Duration::from_secs(30), |l| {
        l.contains("security rejection") || l.contains("0xa")
    })
    .unwrap_or_else(|seen| panic!("no refusal: {seen:?}"));
    assert!(d.exits(), "a drained PE ID is not taken back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pe_certificate_cannot_undo_a_drain_and_only_an_operator_lifts_it() {
    let d = Draining::start_with(&[]);
    let lab = &d.lab;
    let reg = &d.registrar;
    // A second PE of pool `web`, registered by hand with the PE's own certificate.
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), reg.addr)
        .await
        .expect("PE handshake");
    pe.send(&registration("web", 0x4242)).await;
    assert!(accepted(pe.recv_reply().await));
    let route = "/v1/namespaces/default/pools/web/pool-elements/0x4242/drain";

    // An auditor token may not drain (403, audited as a refused request).
    let auditor = new_token(lab, reg, &d.token, "reader", "auditor")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(api(lab, reg, Some(&auditor), "PUT", route, None).0, 403);
    assert_eq!(api(lab, reg, None, "PUT", route, None).0, 401);

    let (status, body) = api(lab, reg, Some(&d.token), "PUT", route, None);
    assert_eq!(status, 200, "{body}");
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), reg.addr)
        .await
        .expect("PU handshake");
    let ids = |r: Result<Vec<(u32, String)>, u16>| -> Vec<u32> {
        r.map(|v| v.into_iter().map(|(id, _)| id).collect())
            .unwrap_or_default()
    };
    pu.send(&resolution("web")).await;
    assert!(!ids(resolved(pu.recv_reply().await)).contains(&0x4242));

    // The PE registers again (as every PE does every few minutes), saying nothing of a
    // drain: accepted, still draining, and the audit says the drain was kept.
    pe.send(&registration("web", 0x4242)).await;
    assert!(accepted(pe.recv_reply().await));
    pu.send(&resolution("web")).await;
    assert!(!ids(resolved(pu.recv_reply().await)).contains(&0x4242));
    let (_, body) = api(
        lab,
        reg,
        Some(&d.token),
        "GET",
        "/v1/audit?action=reregister",
        None,
    );
    assert!(body.contains("kept"), "{body}");
    // The auditor cannot lift it either; the operator can.
    assert_eq!(api(lab, reg, Some(&auditor), "DELETE", route, None).0, 403);
    assert_eq!(api(lab, reg, Some(&d.token), "DELETE", route, None).0, 204);
    pu.send(&resolution("web")).await;
    assert!(ids(resolved(pu.recv_reply().await)).contains(&0x4242));
    // Nothing left to lift.
    assert_eq!(api(lab, reg, Some(&d.token), "DELETE", route, None).0, 404);
    let (_, body) = api(
        lab,
        reg,
        Some(&d.token),
        "GET",
        "/v1/audit?action=admin:request",
        None,
    );
    assert!(body.contains("forbidden"), "{body}");
}

#[test]
fn a_checked_pe_says_so_and_the_admin_api_shows_its_check_passing() {
    // Issue 21 item 2: the PE's entry says what check it runs (PE Status 0x8104); it is
    // registered only while the check passes (sidecar.rs shows it leaving when it fails).
    let d = Draining::start_with(&["--check", "tcp", "--check-interval", "200ms"]);
    let pe = entries(&d, "web");
    assert_eq!(pe.len(), 1, "{pe:?}");
    assert_eq!(
        pe[0]["check"],
        serde_json::json!({"kind": "tcp", "state": "passing"})
    );
    // Without --check there is no check to show.
    let d = Draining::start_with(&[]);
    assert_eq!(entries(&d, "web")[0]["check"], serde_json::Value::Null);
}

/// `rsp pe drain|status` against the control socket at `socket`, as `rsp` runs them.
fn control(d: &Draining, args: &[&str], socket: &std::path::Path) -> std::process::Command {
    let mut c = crate::endpoints::rsp(&d.lab, d.registrar.addr, "pe-echo-1");
    c.arg("pe").args(args).arg("--control").arg(socket);
    c
}

#[test]
fn rsp_pe_drain_over_the_control_socket_waits_for_the_open_session_then_the_pe_exits() {
    use std::io::BufRead as _;
    use std::os::unix::fs::PermissionsExt as _;
    // The socket in a directory anyone may enter: only the socket's own mode and the
    // peer check keep others out.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = dir.path().join("pe.sock");
    let socket_text = socket.to_str().expect("UTF-8 path");
    let mut d = Draining::start_with(&["--control", socket_text]);
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let out = control(&d, &["status"], &socket)
        .output()
        .expect("rsp pe status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.starts_with("pool web, PE 0x")
            && text.contains(": registered, serving; 0 open sessions"),
        "{text}"
    );
    let (mut open, mut answers) = d.session();
    let out = control(&d, &["status", "--json"], &socket)
        .output()
        .expect("rsp pe status --json");
    let status = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(status["registered"], true, "{status}");
    assert_eq!(status["phase"], "serving");
    assert_eq!(status["open_sessions"], 1);

    // Another user is refused: by the socket's mode, and, were the mode wrong, by the
    // peer check (only the PE's user or root), which the PE logs.
    if running_as_root() {
        let nobody = |c: &mut std::process::Command| {
            let mut s = std::process::Command::new("setpriv");
            s.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(c.get_program())
                .args(c.get_args());
            for (k, v) in c.get_envs() {
                if let Some(v) = v {
                    s.env(k, v);
                }
            }
            s.output().expect("setpriv")
        };
        let out = nobody(&mut control(&d, &["status"], &socket));
        assert!(!out.status.success(), "{out:?}");
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let out = nobody(&mut control(&d, &["drain"], &socket));
        assert!(!out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("refused"),
            "{out:?}"
        );
        wait_line(&d.lines, Duration::from_secs(10), |l| {
            l.contains("refused a client of uid 65534")
        })
        .unwrap_or_else(|seen| panic!("the refusal is not logged: {seen:?}"));
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(
            !pool(&d.lab, d.registrar.addr).is_empty(),
            "nobody drained it"
        );
    }

    // The operator drains: the PE deregisters, the open session goes on, the command
    // prints the sessions left and returns once the last one ended.
    let mut drain = control(&d, &["drain", "--deadline", "30s"], &socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("rsp pe drain");
    let (tx, progress) = std::sync::mpsc::channel();
    let stdout = drain.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    wait_line(&progress, Duration::from_secs(10), |l| {
        l.ends_with("not registered, draining; 1 open sessions")
    })
    .unwrap_or_else(|seen| panic!("no progress line: {seen:?}"));
    assert!(
        pool(&d.lab, d.registrar.addr).is_empty(),
        "the registrar still returns it"
    );
    assert_eq!(exchange(&mut open, &mut answers, "two"), "two\n");
    drop((open, answers));
    wait_line(&progress, Duration::from_secs(10), |l| {
        l.ends_with("not registered, drained; 0 open sessions")
    })
    .unwrap_or_else(|seen| panic!("no drained line: {seen:?}"));
    assert!(drain.wait().expect("wait").success());
    assert!(d.exits(), "the PE exits once drained");
    assert!(!socket.exists(), "the socket is removed on exit");
}

/// Whether this test runs as root (it can then run a command as another user).
fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The address in `rsp pe`'s first line (`… on 127.0.0.1:PORT as …`).
fn served_at(child: &mut std::process::Child) -> std::net::SocketAddr {
    use std::io::BufRead as _;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("rsp pe says where it serves");
    line.split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

#[test]
fn rsp_pe_advertise_registers_a_server_with_its_own_tls_and_a_foreign_identity_is_refused() {
    use std::io::{BufRead as _, Write as _};
    use std::process::Stdio;
    let lab = crate::support::Lab::new();
    lab.pki(&["issue", "gateway", "gw-1"]);
    let token = crate::admin::admin_token(&lab.init_registrar());
    let registrar = lab.start_registrar_with(300, 1000);
    let rsp = |cert: &str| crate::endpoints::rsp(&lab, registrar.addr, cert);
    // The existing server: TLS with its own certificate (echo-1's), on its own port; here
    // `rsp pe`'s echo service, registered in another pool.
    let mut server = rsp("pe-echo-1")
        .args(["pe", "--pool", "back", "--serve", "echo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the server");
    let at = served_at(&mut server);
    let _server = crate::endpoints::Pe(server);
    // The PE that advertises it in pool `web`: it serves nothing itself.
    let mut pe = rsp("pe-echo-1")
        .args(["pe", "--pool", "web", "--advertise", &at.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pe --advertise");
    let lines = crate::restart::lines(pe.stderr.take().expect("stderr"), "pe".into());
    let first = {
        let mut l = String::new();
        std::io::BufReader::new(pe.stdout.take().expect("stdout"))
            .read_line(&mut l)
            .expect("first line");
        l
    };
    assert!(
        first.contains(&format!("advertising the server at {at}")),
        "{first}"
    );
    let _pe = crate::endpoints::Pe(pe);
    wait_line(&lines, Duration::from_secs(20), |l| {
        l.starts_with("registered with")
    })
    .unwrap_or_else(|seen| panic!("never registered: {seen:?}"));
    let (status, body) = api(
        &lab,
        &registrar,
        Some(&token),
        "GET",
        "/v1/namespaces/default/pools/web/pool-elements",
        None,
    );
    assert_eq!(status, 200, "{body}");
    let entry = &json(&body)[0];
    assert_eq!(
        entry["serving_identity"], "spiffe://acme.test/pe/echo-1",
        "{body}"
    );
    assert_eq!(entry["transport"], format!("tcp {at}"));

    // A client through the pool reaches the server, which checked the gateway's
    // certificate itself, and the gateway checked the server's.
    let (_gw, gw) = crate::sidecar::gateway(&lab, registrar.addr, "gateway-gw-1", "web");
    let mut conn = std::net::TcpStream::connect(gw).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answers = std::io::BufReader::new(conn.try_clone().expect("clone"));
    writeln!(conn, "through the pool").expect("write");
    let mut line = String::new();
    answers.read_line(&mut line).expect("read");
    assert_eq!(line, "through the pool\n");

    // Another PE certificate may not advertise echo-1's server under echo-1's name: the
    // registrar refuses (0xA, audited), the PE says so and exits.
    let out = rsp("pe-echo-2")
        .args(["pe", "--pool", "web", "--advertise", &at.to_string()])
        .args(["--serving-identity", "spiffe://acme.test/pe/echo-1"])
        .output()
        .expect("rsp pe --advertise as echo-2");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cause 0xa"), "{stderr}");
    let (_, body) = api(
        &lab,
        &registrar,
        Some(&token),
        "GET",
        "/v1/audit?action=register&outcome=cause:0x000a",
        None,
    );
    assert!(
        body.contains("may not vouch for the serving identity spiffe://acme.test/pe/echo-1")
            && body.contains("spiffe://acme.test/pe/echo-2"),
        "{body}"
    );
    let (_, body) = api(
        &lab,
        &registrar,
        Some(&token),
        "GET",
        "/v1/namespaces/default/pools/web/pool-elements",
        None,
    );
    assert_eq!(json(&body).as_array().map(Vec::len), Some(1), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_at_the_home_reaches_its_peer_which_may_not_drain_it_itself() {
    use crate::peering::{has, unknown, wait_for};
    let lab = crate::support::Lab::new();
    let token_a = lab.init_peer("a", "data-a");
    let token_b = lab.init_peer("b", "data-b");
    let a = lab.start_peer("data-a", &[]);
    let b = lab.start_peer("data-b", &[a.enrp]);
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), a.registrar.addr)
        .await
        .expect("PE connects to A");
    let mut pu_b = Asap::connect(&lab.identity("pu-client-1"), b.registrar.addr)
        .await
        .expect("PU connects to B");
    pe.send(&registration("echo", 7)).await;
    assert!(accepted(pe.recv_reply().await));
    assert!(
        wait_for(&mut pu_b, "echo", has(7)).await.is_some(),
        "B never learnt A's PE"
    );
    let route = "/v1/namespaces/default/pools/echo/pool-elements/0x7/drain";
    // B is not the PE's home: it refuses (409, naming the home) and changes nothing.
    let (status, body) = api(&lab, &b.registrar, Some(&token_b), "PUT", route, None);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("drain it there"), "{body}");
    assert!(wait_for(&mut pu_b, "echo", has(7)).await.is_some());
    // A, its home, drains it: B stops returning it too (PE Status 0x8104 over ENRP).
    let (status, body) = api(&lab, &a.registrar, Some(&token_a), "PUT", route, None);
    assert_eq!(status, 200, "{body}");
    let took = wait_for(&mut pu_b, "echo", unknown)
        .await
        .expect("B still returns the draining PE");
    println!("drain at A seen at B after {} ms", took.as_millis());
    let (_, body) = api(
        &lab,
        &b.registrar,
        Some(&token_b),
        "GET",
        "/v1/namespaces/default/pools/echo/pool-elements",
        None,
    );
    assert_eq!(json(&body)[0]["draining"], true, "{body}");
    // Lifted at A: B returns it again.
    let (status, _) = api(&lab, &a.registrar, Some(&token_a), "DELETE", route, None);
    assert_eq!(status, 204);
    assert!(
        wait_for(&mut pu_b, "echo", has(7)).await.is_some(),
        "B never returned the PE again"
    );
}
